//! etcd as the registry of a cluster: the connection every cluster part shares
//! ([`Etcd`]), the host's lease ([`HostLease`]) and the registry backend
//! ([`EtcdRegistry`]).
//!
//! - Every record is sealed with the cluster token ([`ClusterKey`]): etcd may be
//!   reachable by more than the cluster, and a record without a valid MAC is ignored
//!   (and logged), never believed.
//! - Every call is bounded ([`CALL_TIMEOUT`]); the gRPC channel pings etcd (HTTP/2
//!   keep-alive), so a connection that hangs without failing is noticed, not waited on.
//! - Discovery answers from a local cache ([`EmbeddedRegistry`]) that a watch keeps
//!   current: no call's path waits on etcd. This host's own registrations are written
//!   behind, on the host's lease, and written again whenever the lease is new.

use parking_lot::Mutex;
use serde::{Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

use super::embedded::EmbeddedRegistry;
use super::{Endpoint, Health, Instance, InstanceWatch, Registry, RegistryError};
use crate::trust::ClusterKey;

/// Longest wait for one etcd call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a remote instance stays in the cache without news: the watch removes it
/// (its host's lease expired), so this only bounds a cache cut off from etcd.
const REMOTE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Pause before a failed watch or lease is tried again.
const RETRY: Duration = Duration::from_millis(500);

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// `http://host:port` or `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// CA certificates (PEM) that sign etcd's server certificates.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), when etcd asks for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// etcd user and password.
    pub user: Option<(String, String)>,
    /// Every key of this cluster starts with it (several clusters may share etcd).
    pub prefix: String,
    /// The host lease's TTL: also how often the channel pings etcd.
    pub lease_ttl: Duration,
}

/// The cluster's connection to etcd, with its key prefix and its record seal.
#[derive(Clone)]
pub struct Etcd {
    client: etcd_client::Client,
    prefix: String,
    key: ClusterKey,
}

/// What etcd or a record said that the caller cannot use.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// etcd did not answer in time, or refused the call.
    #[error("etcd is unavailable: {0}")]
    Unavailable(String),
    /// A record failed its MAC: written by something without the cluster token.
    #[error("record `{0}` is not signed with this cluster's token; ignored")]
    Forged(String),
    /// A record that verifies but does not parse (a newer host's format).
    #[error("record `{key}` cannot be read: {reason}")]
    Unreadable {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

impl From<EtcdError> for RegistryError {
    fn from(error: EtcdError) -> Self {
        RegistryError::Unavailable(error.to_string())
    }
}

impl Etcd {
    /// Connect to `options.endpoints`; `key` seals and checks every record.
    pub async fn connect(options: &EtcdOptions, key: ClusterKey) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let ping = (options.lease_ttl / 3).max(Duration::from_millis(500));
        let mut connect = etcd_client::ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_keep_alive(ping, ping)
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &options.user {
            // etcd's tokens expire (5 minutes by default): take a new one when it does.
            connect = connect
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        let wants_tls = options.ca_file.is_some()
            || options.client_cert.is_some()
            || options.endpoints.iter().any(|e| e.starts_with("https://"));
        if wants_tls {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &options.ca_file {
                let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = &options.client_cert {
                let cert_pem =
                    std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
                let key_pem =
                    std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
                tls = tls.identity(etcd_client::Identity::from_pem(cert_pem, key_pem));
            }
            connect = connect.with_tls(tls);
        }
        let client = tokio::time::timeout(
            CALL_TIMEOUT * 2,
            etcd_client::Client::connect(&options.endpoints, Some(connect)),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer in {:?}", CALL_TIMEOUT * 2))
        .and_then(|connected| connected.map_err(anyhow::Error::from))
        .with_context(|| format!("connecting to etcd at {}", options.endpoints.join(",")))?;
        Ok(Self {
            client,
            prefix: options.prefix.trim_end_matches('/').to_owned(),
            key,
        })
    }

    /// The full key of `relative` (`hosts/a` → `/shoal/hosts/a`).
    pub fn key(&self, relative: &str) -> String {
        format!("{}/{relative}", self.prefix)
    }

    /// A client to make calls with (cheap: it shares the channel).
    pub fn client(&self) -> etcd_client::Client {
        self.client.clone()
    }

    /// The cluster token's key.
    pub fn cluster_key(&self) -> &ClusterKey {
        &self.key
    }

    /// `value` as stored under `key`: its MAC, a newline, its JSON.
    pub fn seal<T: Serialize>(&self, key: &str, value: &T) -> Vec<u8> {
        let json = serde_json::to_vec(value).unwrap_or_default();
        let mac = self.key.sign_record(key.as_bytes(), &json);
        let mut sealed = Vec::with_capacity(mac.len() + 1 + json.len());
        sealed.extend_from_slice(mac.as_bytes());
        sealed.push(b'\n');
        sealed.extend_from_slice(&json);
        sealed
    }

    /// The record stored as `value` under `key`, if its MAC holds.
    pub fn open<T: DeserializeOwned>(&self, key: &[u8], value: &[u8]) -> Result<T, EtcdError> {
        let name = || String::from_utf8_lossy(key).into_owned();
        let Some(split) = value.iter().position(|b| *b == b'\n') else {
            return Err(EtcdError::Forged(name()));
        };
        let (mac, json) = (&value[..split], &value[split + 1..]);
        let mac = std::str::from_utf8(mac).map_err(|_| EtcdError::Forged(name()))?;
        if !self.key.verify_record(key, json, mac) {
            return Err(EtcdError::Forged(name()));
        }
        serde_json::from_slice(json).map_err(|error| EtcdError::Unreadable {
            key: name(),
            reason: error.to_string(),
        })
    }

    /// Run one etcd call, bounded by [`CALL_TIMEOUT`].
    pub async fn bounded<T>(
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(EtcdError::Unavailable(error.to_string())),
            Err(_) => Err(EtcdError::Unavailable(format!(
                "no answer in {}",
                humantime::format_duration(CALL_TIMEOUT)
            ))),
        }
    }

    /// Every record under `relative` that verifies, with the store's revision; forged
    /// or unreadable ones are logged and left out.
    pub async fn list<T: DeserializeOwned>(
        &self,
        relative: &str,
    ) -> Result<(Vec<(String, T, i64)>, i64), EtcdError> {
        let mut client = self.client();
        let prefix = self.key(relative);
        let options = etcd_client::GetOptions::new().with_prefix();
        let answer = Self::bounded(client.get(prefix, Some(options))).await?;
        let revision = answer.header().map_or(0, |h| h.revision());
        let mut records = Vec::new();
        for kv in answer.kvs() {
            match self.open::<T>(kv.key(), kv.value()) {
                Ok(record) => records.push((
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    record,
                    kv.mod_revision(),
                )),
                Err(error) => tracing::warn!(%error, "ignoring an etcd record"),
            }
        }
        Ok((records, revision))
    }
}

/// A watch on every key below a prefix.
pub struct PrefixWatch(etcd_client::WatchStream);

impl PrefixWatch {
    /// The next batch of changes; an error once the watch broke (list and watch
    /// again then).
    pub async fn next(&mut self) -> Result<etcd_client::WatchResponse, EtcdError> {
        let Some(answer) = self
            .0
            .message()
            .await
            .map_err(|error| EtcdError::Unavailable(error.to_string()))?
        else {
            return Err(EtcdError::Unavailable("the watch ended".into()));
        };
        if answer.canceled() {
            return Err(EtcdError::Unavailable(format!(
                "the watch was cancelled: {}",
                answer.cancel_reason()
            )));
        }
        Ok(answer)
    }
}

impl Etcd {
    /// Watch every key below `relative` from `revision` on.
    pub async fn watch(&self, relative: &str, revision: i64) -> Result<PrefixWatch, EtcdError> {
        let mut client = self.client();
        let options = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        let stream = Self::bounded(client.watch(self.key(relative), Some(options))).await?;
        Ok(PrefixWatch(stream))
    }
}

/// The host's lease in etcd: granted, kept alive at a third of its TTL, granted anew
/// when lost. Its id (or `None` while there is none) is watched by everything that
/// hangs keys on it.
pub struct HostLease;

impl HostLease {
    /// Keep a lease of `ttl` for as long as the returned receiver (or a clone) lives.
    pub fn start(etcd: Etcd, ttl: Duration) -> watch::Receiver<Option<i64>> {
        let (sender, receiver) = watch::channel(None);
        tokio::spawn(async move {
            while !sender.is_closed() {
                match keep_lease(&etcd, ttl, &sender).await {
                    Ok(()) => {}
                    Err(error) => {
                        tracing::warn!(%error, "the host's etcd lease is lost; granting a new one")
                    }
                }
                sender.send_replace(None);
                tokio::time::sleep(RETRY).await;
            }
        });
        receiver
    }
}

/// Grant a lease and keep it alive until it is lost (or nobody watches it).
async fn keep_lease(
    etcd: &Etcd,
    ttl: Duration,
    sender: &watch::Sender<Option<i64>>,
) -> Result<(), EtcdError> {
    let mut client = etcd.client();
    let seconds = ttl.as_secs().max(2) as i64;
    let granted = Etcd::bounded(client.lease_grant(seconds, None)).await?;
    let id = granted.id();
    let mut alive_until = Instant::now() + Duration::from_secs(granted.ttl().max(1) as u64);
    sender.send_replace(Some(id));
    tracing::info!(lease = id, ttl_s = seconds, "holding a lease in etcd");
    let every = ttl / 3;
    'stream: while !sender.is_closed() {
        let (mut keeper, mut answers) = match Etcd::bounded(client.lease_keep_alive(id)).await {
            Ok(pair) => pair,
            Err(error) => {
                if Instant::now() >= alive_until {
                    return Err(error);
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        loop {
            if sender.is_closed() {
                let _ = Etcd::bounded(client.lease_revoke(id)).await;
                return Ok(());
            }
            let sent = Etcd::bounded(keeper.keep_alive()).await;
            // The watchdog: an answer must come within the keep-alive period, or the
            // stream is taken for hung and opened again.
            let answer = match sent {
                Ok(()) => {
                    tokio::time::timeout(every.max(Duration::from_millis(300)), answers.message())
                        .await
                }
                Err(_) => Ok(Err(etcd_client::Error::InvalidArgs(
                    "keep-alive not sent".into(),
                ))),
            };
            match answer {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                    alive_until = Instant::now() + Duration::from_secs(answer.ttl() as u64);
                }
                Ok(Ok(Some(_))) => {
                    return Err(EtcdError::Unavailable(format!("lease {id} expired")));
                }
                _ => {
                    if Instant::now() >= alive_until {
                        return Err(EtcdError::Unavailable(format!(
                            "lease {id} was not renewed within its TTL"
                        )));
                    }
                    tokio::time::sleep(RETRY).await;
                    continue 'stream;
                }
            }
            tokio::time::sleep(every).await;
        }
    }
    Ok(())
}

/// An instance record in etcd: the instance as other hosts reach it, and its host.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct InstanceRecord {
    host: String,
    instance: Instance,
}

/// The registry of a cluster host.
pub struct EtcdRegistry {
    etcd: Etcd,
    host_id: String,
    /// This host's gateway, as peers reach it (known once the gateway is bound).
    advertise: parking_lot::RwLock<String>,
    cache: Arc<EmbeddedRegistry>,
    /// This host's own registrations (endpoint `Local`), by id.
    mine: Mutex<BTreeMap<String, Instance>>,
    /// Ids in the cache that came from etcd.
    remote: Mutex<BTreeMap<String, Instance>>,
    /// Something of `mine` changed: write it.
    dirty: Notify,
}

impl EtcdRegistry {
    /// The registry of host `host_id` (reached by peers at `advertise`), writing on
    /// the lease `lease` and watching every host's instances.
    pub fn start(
        etcd: Etcd,
        host_id: String,
        advertise: String,
        lease: watch::Receiver<Option<i64>>,
    ) -> Arc<Self> {
        let registry = Arc::new(Self {
            etcd,
            host_id,
            advertise: parking_lot::RwLock::new(advertise),
            cache: EmbeddedRegistry::start(Duration::from_secs(1)),
            mine: Mutex::new(BTreeMap::new()),
            remote: Mutex::new(BTreeMap::new()),
            dirty: Notify::new(),
        });
        tokio::spawn(write_mine(Arc::downgrade(&registry), lease));
        tokio::spawn(follow_remote(Arc::downgrade(&registry)));
        registry
    }

    /// The gateway address peers reach this host at, once it is bound.
    pub fn set_advertise(&self, address: String) {
        *self.advertise.write() = address;
        self.dirty.notify_one();
    }

    fn record_key(&self, instance: &Instance) -> String {
        self.etcd
            .key(&format!("instances/{}/{}", instance.service, instance.id))
    }

    /// Every instance of every service this host knows of (for the cluster view).
    pub fn remote_instances(&self) -> Vec<Instance> {
        self.remote.lock().values().cloned().collect()
    }

    /// Apply one watched put (`Some`) or delete of an instance record to the cache, in
    /// the order the watch gave them.
    async fn apply_remote(&self, key: &[u8], value: Option<&[u8]>) {
        let Some(value) = value else {
            // A delete: the key names the instance.
            let key = String::from_utf8_lossy(key);
            let removed: Vec<Instance> = {
                let mut remote = self.remote.lock();
                let ids: Vec<String> = remote
                    .values()
                    .filter(|i| self.record_key(i) == key)
                    .map(|i| i.id.clone())
                    .collect();
                ids.iter().filter_map(|id| remote.remove(id)).collect()
            };
            for instance in removed {
                let _ = self.cache.deregister(&instance.id).await;
            }
            return;
        };
        match self.etcd.open::<InstanceRecord>(key, value) {
            Ok(record) if record.host != self.host_id => {
                let instance = record.instance;
                self.remote
                    .lock()
                    .insert(instance.id.clone(), instance.clone());
                let _ = self.cache.register(instance, REMOTE_TTL).await;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "ignoring an instance record"),
        }
    }
}

/// Write this host's registrations on the current lease, again whenever the lease is
/// new or they change; remove the ones that went.
async fn write_mine(registry: Weak<EtcdRegistry>, mut lease: watch::Receiver<Option<i64>>) {
    // What is in etcd now: id → (lease, record key, instance).
    let mut written: BTreeMap<String, (i64, String, Instance)> = BTreeMap::new();
    loop {
        let Some(registry_now) = registry.upgrade() else {
            return;
        };
        let current = *lease.borrow_and_update();
        let mut failed = false;
        if let Some(lease_id) = current {
            let mine = registry_now.mine.lock().clone();
            let mut client = registry_now.etcd.client();
            for (id, instance) in &mine {
                let mut published = instance.clone();
                published.endpoint = Endpoint::Peer(registry_now.advertise.read().clone());
                let unchanged = written
                    .get(id)
                    .is_some_and(|(l, _, i)| *l == lease_id && *i == published);
                if unchanged {
                    continue;
                }
                let key = registry_now.record_key(instance);
                let record = InstanceRecord {
                    host: registry_now.host_id.clone(),
                    instance: published.clone(),
                };
                let value = registry_now.etcd.seal(&key, &record);
                let options = etcd_client::PutOptions::new().with_lease(lease_id);
                match Etcd::bounded(client.put(key.clone(), value, Some(options))).await {
                    Ok(_) => {
                        written.insert(id.clone(), (lease_id, key, published));
                    }
                    Err(error) => {
                        tracing::warn!(%error, instance = %id, "cannot register in etcd; will retry");
                        failed = true;
                    }
                }
            }
            let gone: Vec<String> = written
                .keys()
                .filter(|id| !mine.contains_key(*id))
                .cloned()
                .collect();
            for id in gone {
                let Some((_, key, _)) = written.get(&id).cloned() else {
                    continue;
                };
                match Etcd::bounded(client.delete(key, None)).await {
                    Ok(_) => {
                        written.remove(&id);
                    }
                    Err(_) => failed = true,
                }
            }
        }
        let dirty = registry_now.clone();
        drop(registry_now);
        tokio::select! {
            _ = dirty.dirty.notified() => {}
            changed = lease.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RETRY), if failed => {}
        }
    }
}

/// Keep the cache's remote instances equal to etcd's: list, then watch from there;
/// list again after any break.
async fn follow_remote(registry: Weak<EtcdRegistry>) {
    loop {
        let Some(registry_now) = registry.upgrade() else {
            return;
        };
        if let Err(error) = follow_once(&registry_now).await {
            tracing::warn!(%error, "lost the watch on etcd's instances; listing them again");
        }
        drop(registry_now);
        tokio::time::sleep(RETRY).await;
    }
}

async fn follow_once(registry: &Arc<EtcdRegistry>) -> Result<(), EtcdError> {
    let (records, revision) = registry.etcd.list::<InstanceRecord>("instances/").await?;
    let listed: BTreeMap<String, Instance> = records
        .into_iter()
        .filter(|(_, record, _)| record.host != registry.host_id)
        .map(|(_, record, _)| (record.instance.id.clone(), record.instance))
        .collect();
    let stale: Vec<String> = registry
        .remote
        .lock()
        .keys()
        .filter(|id| !listed.contains_key(*id))
        .cloned()
        .collect();
    for id in stale {
        registry.remote.lock().remove(&id);
        let _ = registry.cache.deregister(&id).await;
    }
    for instance in listed.into_values() {
        registry
            .remote
            .lock()
            .insert(instance.id.clone(), instance.clone());
        let _ = registry.cache.register(instance, REMOTE_TTL).await;
    }
    let mut watch = registry.etcd.watch("instances/", revision + 1).await?;
    loop {
        let answer = watch.next().await?;
        for event in answer.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                etcd_client::EventType::Put => {
                    registry.apply_remote(kv.key(), Some(kv.value())).await
                }
                etcd_client::EventType::Delete => registry.apply_remote(kv.key(), None).await,
            }
        }
    }
}

#[async_trait::async_trait]
impl Registry for EtcdRegistry {
    async fn register(&self, instance: Instance, ttl: Duration) -> Result<(), RegistryError> {
        self.cache.register(instance.clone(), ttl).await?;
        self.mine.lock().insert(instance.id.clone(), instance);
        self.dirty.notify_one();
        Ok(())
    }

    async fn renew(&self, id: &str) -> Result<(), RegistryError> {
        // etcd keeps the record alive through the host's lease.
        self.cache.renew(id).await
    }

    async fn deregister(&self, id: &str) -> Result<(), RegistryError> {
        let result = self.cache.deregister(id).await;
        if self.mine.lock().remove(id).is_some() {
            self.dirty.notify_one();
        }
        result
    }

    async fn set_health(&self, id: &str, health: Health) -> Result<(), RegistryError> {
        self.cache.set_health(id, health).await?;
        if let Some(instance) = self.mine.lock().get_mut(id) {
            instance.health = health;
        }
        self.dirty.notify_one();
        Ok(())
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>, RegistryError> {
        self.cache.instances(service).await
    }

    async fn watch(&self, service: &str) -> Result<InstanceWatch, RegistryError> {
        self.cache.watch(service).await
    }
}
