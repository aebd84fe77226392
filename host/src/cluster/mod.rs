//! Many hosts as one platform, on etcd.
//!
//! - Membership: each host holds a lease ([`HostLease`]) and a signed host record on
//!   it; a host whose lease expires is down.
//! - Desired state: every service's versions, canary, scale and replicas live in etcd
//!   ([`records`]); a change through any host's admin API is one transaction that
//!   fails with 409 when the service changed meanwhile.
//! - Placement: one host, elected through etcd's election API, decides which hosts run
//!   which services ([`leader`], by [`crate::policy::placement`]) and writes it fenced
//!   on its election key, so a deposed leader writes nothing.
//! - Reconciliation: each host makes what it runs match what is placed on it
//!   ([`reconcile`]), fetching components by digest from the hosts that hold them.
//! - Traffic: the gateway serves every service: a local replica in process, otherwise
//!   one hop to a host that runs it ([`peers`]).
//!
//! Without `--etcd` none of this runs: one host, embedded everything.

pub mod leader;
pub mod peers;
pub mod reconcile;
pub mod records;
pub mod shared;
pub mod view;

use anyhow::Context as _;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

use crate::data_dir::VersionRecord;
use crate::registry::etcd::{Etcd, EtcdError, EtcdOptions, EtcdRegistry, HostLease};
use crate::services::{DeployMode, ServiceError, Services};
use crate::trust::ClusterKey;
use records::{ArtifactRecord, Change, DrainRecord, HostRecord, PlacementRecord, ServiceRecord};
use view::ClusterView;

/// The cluster's part of the `shoal serve` flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ClusterSettings {
    /// etcd endpoints (`http://H:P`, comma-separated): join the cluster they hold.
    #[arg(long, env = "SHOAL_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,

    /// File holding the cluster token (at least 16 bytes), the same on every host:
    /// it signs the cluster's records and the hosts' requests to each other.
    #[arg(long, env = "SHOAL_CLUSTER_TOKEN_FILE", requires = "etcd")]
    pub cluster_token_file: Option<PathBuf>,

    /// The gateway address other hosts reach this one at (default: --listen).
    #[arg(long, env = "SHOAL_ADVERTISE", requires = "etcd")]
    pub advertise: Option<String>,

    /// This host's id in the cluster (default: one kept in the data directory).
    #[arg(long, env = "SHOAL_HOST_ID", requires = "etcd")]
    pub host_id: Option<String>,

    /// Labels of this host (`k=v,k=v`), which manifests' `placement.labels` select.
    #[arg(long, env = "SHOAL_LABELS", default_value = "")]
    pub labels: String,

    /// TTL of the host's lease in etcd, seconds: a host silent this long is down and
    /// its replicas move.
    #[arg(long, env = "SHOAL_LEASE_TTL_S", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_ttl_s: u64,

    /// Prefix of the cluster's keys in etcd (clusters sharing an etcd need their own).
    #[arg(long, env = "SHOAL_CLUSTER_PREFIX", default_value = "/shoal")]
    pub cluster_prefix: String,

    /// CA certificates (PEM) of etcd's server certificates.
    #[arg(long, env = "SHOAL_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for etcd.
    #[arg(long, env = "SHOAL_ETCD_CERT_FILE", requires = "etcd_key_file")]
    pub etcd_cert_file: Option<PathBuf>,

    /// Client key (PEM) for etcd.
    #[arg(long, env = "SHOAL_ETCD_KEY_FILE", requires = "etcd_cert_file")]
    pub etcd_key_file: Option<PathBuf>,

    /// etcd user name.
    #[arg(long, env = "SHOAL_ETCD_USER", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,

    /// File holding the etcd user's password.
    #[arg(long, env = "SHOAL_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,

    /// PEM certificate this host shows the other hosts: with it, the hosts speak
    /// mutual TLS to each other, on a port of their own (--cluster-listen).
    #[arg(long, env = "SHOAL_CLUSTER_TLS_CERT",
          requires_all = ["cluster_tls_key", "cluster_ca", "cluster_listen"])]
    pub cluster_tls_cert: Option<PathBuf>,

    /// PEM private key of --cluster-tls-cert.
    #[arg(long, env = "SHOAL_CLUSTER_TLS_KEY", requires = "cluster_tls_cert")]
    pub cluster_tls_key: Option<PathBuf>,

    /// PEM certificates of the CA that signs every host's cluster certificate.
    #[arg(long, env = "SHOAL_CLUSTER_CA", requires = "cluster_tls_cert")]
    pub cluster_ca: Option<PathBuf>,

    /// Address of the port the other hosts reach this one on, over mutual TLS.
    #[arg(long, env = "SHOAL_CLUSTER_LISTEN", requires = "cluster_tls_cert")]
    pub cluster_listen: Option<std::net::SocketAddr>,

    /// That port as the other hosts reach it (default: --cluster-listen as bound).
    #[arg(long, env = "SHOAL_CLUSTER_ADVERTISE", requires = "cluster_listen")]
    pub cluster_advertise: Option<String>,
}

impl ClusterSettings {
    /// Whether this host joins a cluster.
    pub fn enabled(&self) -> bool {
        !self.etcd.is_empty()
    }

    /// The lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_s)
    }
}

/// How long a change through the admin API waits for the hosts placed to run it.
const ROLLOUT_WAIT: Duration = Duration::from_secs(30);

/// What a cluster host connects before the rest of the host is built: etcd, the
/// lease and the registry on it.
pub struct Joining {
    etcd: Etcd,
    host_id: String,
    labels: BTreeMap<String, String>,
    lease: watch::Receiver<Option<i64>>,
    /// The registry backend to build the platform on.
    pub registry: Arc<EtcdRegistry>,
    /// The credential this host presents to its peers.
    pub credential: http::HeaderValue,
    /// With mutual TLS between hosts: this host's client configuration.
    pub peer_tls: Option<rustls::ClientConfig>,
}

impl Joining {
    /// Connect to etcd as host `host_id`, reached by peers at `advertise`.
    pub async fn connect(
        settings: &ClusterSettings,
        host_id: String,
        advertise: String,
    ) -> anyhow::Result<Self> {
        let token_file = settings.cluster_token_file.as_deref().context(
            "--etcd needs --cluster-token-file: the token every host of the cluster shares",
        )?;
        let key = ClusterKey::from_file(token_file)?;
        let labels = crate::policy::placement::parse_labels(&settings.labels)
            .map_err(|reason| anyhow::anyhow!("--labels: {reason}"))?;
        let user = match (&settings.etcd_user, &settings.etcd_password_file) {
            (Some(user), Some(file)) => {
                let password = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                Some((user.clone(), password.trim().to_owned()))
            }
            _ => None,
        };
        let options = EtcdOptions {
            endpoints: settings.etcd.clone(),
            ca_file: settings.etcd_ca_file.clone(),
            client_cert: settings
                .etcd_cert_file
                .clone()
                .zip(settings.etcd_key_file.clone()),
            user,
            prefix: settings.cluster_prefix.clone(),
            lease_ttl: settings.lease_ttl(),
        };
        let credential = http::HeaderValue::from_str(&key.peer_credential(&host_id))
            .context("the host id must be printable ASCII")?;
        let peer_tls = match (
            &settings.cluster_ca,
            &settings.cluster_tls_cert,
            &settings.cluster_tls_key,
        ) {
            (Some(ca), Some(cert), Some(key)) => Some(
                crate::trust::peer_client_config(ca, cert, key)
                    .context("the cluster's TLS certificate")?,
            ),
            _ => None,
        };
        let etcd = Etcd::connect(&options, key).await?;
        let lease = HostLease::start(etcd.clone(), settings.lease_ttl());
        let registry = EtcdRegistry::start(etcd.clone(), host_id.clone(), advertise, lease.clone());
        Ok(Self {
            etcd,
            host_id,
            labels,
            lease,
            registry,
            credential,
            peer_tls,
        })
    }
}

/// This host's membership of a cluster, and the cluster's change path.
pub struct Cluster {
    etcd: Etcd,
    host_id: String,
    record: HostRecord,
    lease: watch::Receiver<Option<i64>>,
    view: watch::Receiver<Arc<ClusterView>>,
    registry: Arc<EtcdRegistry>,
    peers: peers::Peers,
    services: Weak<Services>,
    /// Serialises this host's changes to the desired state.
    changes: tokio::sync::Mutex<()>,
    /// Turns of the round robin over hosts forwarded to.
    turn: std::sync::atomic::AtomicUsize,
    /// This host's audit log, which the other hosts read.
    audit: std::sync::OnceLock<Arc<crate::access::audit::AuditLog>>,
}

/// Why a cluster change failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The service's own checks refused it.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// etcd could not be reached: nothing changed.
    #[error("the cluster's etcd is unavailable, nothing was changed: {0}")]
    Unavailable(String),
    /// The component could not be stored in two places.
    #[error("the component could not be stored on a second host: {0}")]
    NotDurable(String),
}

impl From<EtcdError> for ClusterError {
    fn from(error: EtcdError) -> Self {
        ClusterError::Unavailable(error.to_string())
    }
}

impl Cluster {
    /// Join: write this host's record, follow the cluster, campaign for leadership
    /// and reconcile what runs here with what is placed here.
    pub fn start(
        joining: Joining,
        services: &Arc<Services>,
        address: String,
        peer_address: Option<String>,
        admin_address: String,
        max_component: usize,
    ) -> anyhow::Result<Arc<Self>> {
        let record = HostRecord {
            id: joining.host_id.clone(),
            address,
            admin_address,
            labels: joining.labels.clone(),
            memory_budget_mb: (services.memory_budget().limit() / (1024 * 1024)) as u64,
            shoal_version: env!("CARGO_PKG_VERSION").to_owned(),
            peer_address,
        };
        let peers = peers::Peers::new(joining.credential.clone(), max_component, joining.peer_tls)?;
        let (view_tx, view) = watch::channel(Arc::new(ClusterView::default()));
        tokio::spawn(view::follow(joining.etcd.clone(), view_tx));
        let cluster = Arc::new(Self {
            peers,
            etcd: joining.etcd,
            host_id: joining.host_id,
            record,
            lease: joining.lease,
            view,
            registry: joining.registry,
            services: Arc::downgrade(services),
            changes: tokio::sync::Mutex::new(()),
            turn: std::sync::atomic::AtomicUsize::new(0),
            audit: std::sync::OnceLock::new(),
        });
        tokio::spawn(hold_membership(Arc::downgrade(&cluster)));
        tokio::spawn(leader::run(Arc::downgrade(&cluster)));
        tokio::spawn(reconcile::run(Arc::downgrade(&cluster)));
        Ok(cluster)
    }

    /// This host's id.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The cluster as last seen.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    /// The client to the other hosts.
    pub fn peers(&self) -> &peers::Peers {
        &self.peers
    }

    /// The cluster token's key (to check peers' credentials).
    pub fn key(&self) -> &ClusterKey {
        self.etcd.cluster_key()
    }

    /// The registry (discovery of every host's instances).
    pub fn registry(&self) -> &Arc<EtcdRegistry> {
        &self.registry
    }

    /// Whether this host holds its lease now.
    pub fn has_lease(&self) -> bool {
        self.lease.borrow().is_some()
    }

    /// Deploy a new version through the cluster: checked and compiled here, its
    /// component stored here and on a second host, then written as the service's
    /// desired state. Waits (bounded) until the hosts placed to run it serve it.
    pub async fn deploy(
        &self,
        name: &str,
        component: Bytes,
        manifest: crate::manifest::Manifest,
        mode: DeployMode,
        grant: &crate::access::Grant,
        if_match: Option<i64>,
    ) -> Result<bool, ClusterError> {
        let services = self
            .services
            .upgrade()
            .ok_or_else(|| ClusterError::Unavailable("the host is shutting down".into()))?;
        self.check_trust(&services, name, &manifest, grant)?;
        let record = services
            .prepare(name, component.clone(), manifest, &mode)
            .await?;
        self.store_durably(&record, component).await?;
        let change = match mode {
            DeployMode::Replace => Change::Deploy(record.clone()),
            DeployMode::Canary {
                weight,
                auto_rollback,
            } => Change::Canary(record.clone(), weight, auto_rollback),
        };
        let created = self.change(name, if_match, change).await?;
        Ok(created)
    }

    /// The checks a deploy by `grant` passes on one host, made against the whole
    /// cluster: its route may not sit inside a route of a service the grant may not
    /// change, nor claim or receive topics it may not.
    fn check_trust(
        &self,
        services: &Services,
        name: &str,
        manifest: &crate::manifest::Manifest,
        grant: &crate::access::Grant,
    ) -> Result<(), ServiceError> {
        use crate::access::Action;
        let view = self.view();
        let routes = &view.routes;
        let route = manifest.route.clone().unwrap_or_else(|| format!("/{name}"));
        let grpc_routes = manifest
            .grpc
            .iter()
            .map(|service| crate::manifest::grpc_route(service));
        for route in std::iter::once(route).chain(grpc_routes) {
            if let Some(owner) = records::nested_inside(&route, name, routes)
                && !services.defaults().allow_nested_routes
                && grant
                    .permits(&Action::ChangeService(owner.clone()))
                    .is_err()
            {
                return Err(ServiceError::RouteNested { route, owner });
            }
        }
        let others: Vec<(String, crate::events::topics::TopicRules)> = view
            .services
            .iter()
            .filter(|(other, _)| *other != name)
            .flat_map(|(other, (record, _))| {
                std::iter::once(&record.state.current)
                    .chain(record.state.canary.as_ref().map(|c| &c.record))
                    .map(|version| (other.clone(), version.manifest.events.rules()))
                    .collect::<Vec<_>>()
            })
            .collect();
        crate::services::topics::check_manifest_topics(name, manifest, grant, &others)
    }

    /// Change the desired state of `name` (rollback, canary, scale, replicas) in one
    /// transaction, refused (409) if the service changed since `if_match` (a revision)
    /// or while the change was computed; returns whether the service is new.
    pub async fn change(
        &self,
        name: &str,
        if_match: Option<i64>,
        change: Change,
    ) -> Result<bool, ClusterError> {
        crate::registry::validate_name(name).map_err(ServiceError::from)?;
        let _guard = self.changes.lock().await;
        let desired = self.desired().await?;
        let current = desired.get(name);
        if let Some(expected) = if_match
            && current.map(|(_, revision)| *revision) != Some(expected)
        {
            return Err(ServiceError::Conflict {
                service: name.to_owned(),
                reason: crate::services::Conflict::ChangedMeanwhile,
            }
            .into());
        }
        let routes: BTreeMap<String, String> = desired
            .iter()
            .filter(|(other, _)| *other != name)
            .flat_map(|(other, (record, _))| {
                record
                    .routes()
                    .into_iter()
                    .map(|route| (route, other.clone()))
            })
            .collect();
        let record = records::apply(name, current.map(|(r, _)| r), change, &routes)?;
        let key = self.etcd.key(&format!("services/{name}"));
        let guard = match current {
            Some((_, revision)) => etcd_client::Compare::mod_revision(
                key.clone(),
                etcd_client::CompareOp::Equal,
                *revision,
            ),
            None => {
                etcd_client::Compare::create_revision(key.clone(), etcd_client::CompareOp::Equal, 0)
            }
        };
        let txn = etcd_client::Txn::new()
            .when([guard])
            .and_then([etcd_client::TxnOp::put(
                key.clone(),
                self.etcd.seal(&key, &record),
                None,
            )]);
        let mut client = self.etcd.client();
        let answer = Etcd::bounded(client.txn(txn)).await?;
        if !answer.succeeded() {
            return Err(ServiceError::Conflict {
                service: name.to_owned(),
                reason: crate::services::Conflict::ChangedMeanwhile,
            }
            .into());
        }
        tracing::info!(service = name, version = %record.state.current.version, "desired state changed in the cluster");
        self.wait_for_rollout(name, &record).await;
        Ok(current.is_none())
    }

    /// Remove `name` from the cluster.
    pub async fn remove(&self, name: &str) -> Result<(), ClusterError> {
        crate::registry::validate_name(name).map_err(ServiceError::from)?;
        let _guard = self.changes.lock().await;
        if !self.desired().await?.contains_key(name) {
            return Err(ServiceError::NotFound(name.to_owned()).into());
        }
        let mut client = self.etcd.client();
        Etcd::bounded(client.delete(self.etcd.key(&format!("services/{name}")), None)).await?;
        tracing::info!(service = name, "removed from the cluster");
        Ok(())
    }

    /// Mark host `id` draining (or not): the leader moves its replicas away.
    pub async fn set_draining(&self, id: &str, draining: bool) -> Result<(), ClusterError> {
        let key = self.etcd.key(&format!("drains/{id}"));
        let mut client = self.etcd.client();
        if draining {
            let record = DrainRecord {
                since: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            };
            Etcd::bounded(client.put(key.clone(), self.etcd.seal(&key, &record), None)).await?;
        } else {
            Etcd::bounded(client.delete(key, None)).await?;
        }
        Ok(())
    }

    /// Every service's desired state and revision, read from etcd now (a change
    /// decides on current data, not on the watch's view), or `Unavailable`.
    async fn desired(&self) -> Result<BTreeMap<String, (ServiceRecord, i64)>, ClusterError> {
        let (records, _) = self.etcd.list::<ServiceRecord>("services/").await?;
        let prefix = self.etcd.key("services/");
        Ok(records
            .into_iter()
            .filter_map(|(key, record, revision)| {
                Some((key.strip_prefix(&prefix)?.to_owned(), (record, revision)))
            })
            .collect())
    }

    /// Store `record`'s component here and on one more up host (when there is one),
    /// and say so in etcd.
    async fn store_durably(
        &self,
        record: &VersionRecord,
        component: Bytes,
    ) -> Result<(), ClusterError> {
        let view = self.view();
        let others: Vec<&HostRecord> = view
            .hosts
            .values()
            .filter(|h| h.id != self.host_id)
            .collect();
        let mut stored_on = vec![self.host_id.clone()];
        let mut last_error = None;
        if view.artifacts.get(&record.digest).is_some_and(|holders| {
            holders
                .iter()
                .any(|h| *h != self.host_id && view.hosts.contains_key(h))
        }) {
            // Another live host holds it already.
        } else {
            for host in &others {
                match self
                    .peers
                    .push(host.peer_address(), &record.digest, component.clone())
                    .await
                {
                    Ok(()) => {
                        stored_on.push(host.id.clone());
                        break;
                    }
                    Err(error) => last_error = Some(format!("{}: {error:#}", host.id)),
                }
            }
            if stored_on.len() < 2 && !others.is_empty() {
                return Err(ClusterError::NotDurable(last_error.unwrap_or_default()));
            }
        }
        let artifact = ArtifactRecord {
            bytes: component.len() as u64,
        };
        let mut client = self.etcd.client();
        for host in stored_on {
            let key = self
                .etcd
                .key(&format!("artifacts/{}/{host}", record.digest));
            Etcd::bounded(client.put(key.clone(), self.etcd.seal(&key, &artifact), None)).await?;
        }
        Ok(())
    }

    /// Say in etcd that this host stores component `digest`.
    pub async fn announce_artifact(&self, digest: &str, bytes: u64) -> Result<(), EtcdError> {
        let key = self
            .etcd
            .key(&format!("artifacts/{digest}/{}", self.host_id));
        let mut client = self.etcd.client();
        Etcd::bounded(client.put(
            key.clone(),
            self.etcd.seal(&key, &ArtifactRecord { bytes }),
            None,
        ))
        .await?;
        Ok(())
    }

    /// Wait until every host placed to run `name` serves `record`'s version (or the
    /// wait runs out: the change stands either way).
    async fn wait_for_rollout(&self, name: &str, record: &ServiceRecord) {
        let want = &record.state.current.version;
        let deadline = tokio::time::Instant::now() + ROLLOUT_WAIT;
        let mut view = self.view.clone();
        loop {
            // Once the leader has placed it (on no host at all, when none can take
            // it), the placed hosts are waited for.
            let (placed, decided) = {
                let view = view.borrow();
                (
                    view.placements.get(name).cloned().unwrap_or_default(),
                    view.wanted.get(name) == Some(&record.replicas()),
                )
            };
            let instances = self.registry_instances(name).await;
            let serving = decided
                && placed.iter().all(|host| {
                    instances
                        .iter()
                        .any(|i| i.id.starts_with(&format!("{host}/")) && i.version == *want)
                });
            if serving || tokio::time::Instant::now() >= deadline {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), view.changed()).await;
        }
    }

    /// The gateways of the other hosts that serve `name` now, starting with the next
    /// in turn (a round robin over requests).
    pub async fn hosts_serving(&self, name: &str) -> Vec<String> {
        let instances = self.registry_instances(name).await;
        let mut addresses: Vec<String> = crate::registry::routable(&instances)
            .into_iter()
            .filter_map(|instance| match instance.endpoint {
                crate::registry::Endpoint::Peer(address) => Some(address),
                _ => None,
            })
            .collect();
        addresses.sort();
        addresses.dedup();
        if !addresses.is_empty() {
            let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let count = addresses.len();
            addresses.rotate_left(turn % count);
        }
        addresses
    }

    async fn registry_instances(&self, name: &str) -> Vec<crate::registry::Instance> {
        use crate::registry::Registry as _;
        self.registry.instances(name).await.unwrap_or_default()
    }

    /// Memory each service's replica may hold, MiB (what placement counts).
    pub fn memory_demands(&self) -> BTreeMap<String, u64> {
        let Some(services) = self.services.upgrade() else {
            return BTreeMap::new();
        };
        self.view()
            .services
            .iter()
            .map(|(name, (record, _))| {
                (
                    name.clone(),
                    leader::memory_demand(record, services.defaults()),
                )
            })
            .collect()
    }

    /// The placements of `name` as the API shows them: host, address, state.
    pub fn placements_of(&self, name: &str) -> Vec<(String, String, &'static str)> {
        let view = self.view();
        view.placements
            .get(name)
            .into_iter()
            .flatten()
            .map(|host| {
                let (address, state) = match view.hosts.get(host) {
                    Some(record) if view.drains.contains_key(host) => {
                        (record.address.clone(), "draining")
                    }
                    Some(record) => (record.address.clone(), "up"),
                    None => (String::new(), "down"),
                };
                (host.clone(), address, state)
            })
            .collect()
    }

    /// The placement record key of `service` (the leader writes it).
    fn placement_key(&self, service: &str) -> String {
        self.etcd.key(&format!("placements/{service}"))
    }

    fn seal_placement(&self, key: &str, hosts: &[String], wanted: u32) -> Vec<u8> {
        self.etcd.seal(
            key,
            &PlacementRecord {
                hosts: hosts.to_vec(),
                wanted,
            },
        )
    }

    /// Why `name` has fewer replicas placed than it asks for, if it has.
    pub fn shortfall(&self, name: &str) -> Option<String> {
        let view = self.view();
        let wanted = *view.wanted.get(name)?;
        let placed = view.placements.get(name).map_or(0, Vec::len) as u32;
        (placed < wanted).then(|| {
            format!(
                "{placed} of {wanted} replicas placed: not enough hosts up with room and \
                 matching labels"
            )
        })
    }
}

#[async_trait::async_trait]
impl crate::services::ServiceDirectory for Cluster {
    async fn roll_back_canary(
        &self,
        service: &str,
        version: &str,
        reason: &str,
    ) -> Result<(), String> {
        let desired = self.desired().await.map_err(|error| error.to_string())?;
        let Some((record, revision)) = desired.get(service) else {
            return Ok(());
        };
        if record
            .state
            .canary
            .as_ref()
            .map(|c| c.record.version.as_str())
            != Some(version)
        {
            return Ok(()); // a newer canary, or none: nothing to undo
        }
        self.change(service, Some(*revision), Change::AbortCanary)
            .await
            .map_err(|error| error.to_string())?;
        tracing::warn!(service, version, reason, "canary rolled back on every host");
        Ok(())
    }

    fn manifests(&self, service: &str) -> Vec<crate::manifest::Manifest> {
        let view = self.view();
        let Some((record, _)) = view.services.get(service) else {
            return Vec::new();
        };
        std::iter::once(&record.state.current)
            .chain(record.state.canary.as_ref().map(|canary| &canary.record))
            .map(|version| version.manifest.clone())
            .collect()
    }

    fn subscriptions(&self) -> Vec<(String, crate::manifest::Subscription)> {
        self.view()
            .services
            .iter()
            .flat_map(|(name, (record, _))| {
                record
                    .state
                    .current
                    .manifest
                    .subscriptions
                    .iter()
                    .map(move |subscription| (name.clone(), subscription.clone()))
            })
            .collect()
    }
}

/// Keep this host's record in etcd on its current lease.
async fn hold_membership(cluster: Weak<Cluster>) {
    let Some(mut lease) = cluster.upgrade().map(|c| c.lease.clone()) else {
        return;
    };
    loop {
        let current = *lease.borrow_and_update();
        let mut written = false;
        if let Some(lease_id) = current {
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            let key = cluster.etcd.key(&format!("hosts/{}", cluster.host_id));
            let value = cluster.etcd.seal(&key, &cluster.record);
            let member_key = cluster.etcd.key(&format!("members/{}", cluster.host_id));
            let member = cluster.etcd.seal(&member_key, &cluster.record);
            let mut client = cluster.etcd.client();
            let options = etcd_client::PutOptions::new().with_lease(lease_id);
            let txn = etcd_client::Txn::new().and_then([
                etcd_client::TxnOp::put(member_key, member, None),
                etcd_client::TxnOp::put(key, value, Some(options)),
            ]);
            match Etcd::bounded(client.txn(txn)).await {
                Ok(_) => {
                    written = true;
                    tracing::info!(host = %cluster.host_id, lease = lease_id, "joined the cluster");
                }
                Err(error) => tracing::warn!(%error, "cannot write this host's record; will retry"),
            }
        }
        tokio::select! {
            changed = lease.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(500)), if current.is_some() && !written => {}
        }
    }
}
