//! `shoal serve`: wire the data directory, runtime, platform, services, gateway and admin API
//! together from each part's settings ([`ServeConfig`]).

use anyhow::{Context as _, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use crate::admin::{self, AdminSettings, AdminState};
use crate::caller::transport::LocalDispatch;
use crate::config::ServeConfig;
use crate::data_dir::DataDir;
use crate::gateway::TrustedPeers;
use crate::listener;
use crate::platform::Platform;
use crate::policy::redact::Redactor;
use crate::registry::Registry;
use crate::registry::external::ExternalServices;
use crate::registry::health::HealthChecker;
use crate::runtime::Runtime;
use crate::secrets::{Secrets, SecretsSettings};
use crate::services::Services;
use crate::serving_threads::ServingThreads;
use crate::telemetry::Telemetry;
use hyper_util::service::TowerToHyperService;

/// How often leases of local and external registrations are renewed.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often the secrets directory is read again.
const SECRETS_DIR_CHECK: Duration = Duration::from_secs(1);

/// A host that is built and bound but not yet serving: what [`build`] makes and
/// [`serve`] runs, so embedders and tests can bind port 0 and choose the shutdown.
pub struct Host {
    /// The services this host runs.
    pub services: Arc<Services>,
    /// Operator-registered external services.
    pub external: Arc<ExternalServices>,
    telemetry: Arc<Telemetry>,
    admin: axum::Router,
    gateway: listener::Bound,
    admin_listener: listener::Bound,
    trusted: TrustedPeers,
    drain: Duration,
    /// The cluster this host is a member of.
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// With mutual TLS between hosts: the port they reach this one on.
    cluster_listener: Option<listener::Bound>,
}

impl Host {
    /// Where the gateway listens.
    pub fn gateway_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.gateway.local_addr()
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.admin_listener.local_addr()
    }
}

/// Run a host until SIGTERM or SIGINT, then drain and return.
pub async fn run(config: ServeConfig) -> Result<()> {
    let host = build(config).await?;
    let scheme = |tls: bool| if tls { "https" } else { "http" };
    println!(
        "gateway listening on {}://{}",
        scheme(host.gateway.tls.is_some()),
        host.gateway_addr()?
    );
    println!(
        "admin API listening on {}://{}",
        scheme(host.admin_listener.tls.is_some()),
        host.admin_addr()?
    );
    serve(host, wait_for_signal()).await
}

/// Open the data directory, build the runtime and the platform, and bind both
/// listeners. What was deployed is restored once serving starts ([`serve`]), so the
/// listeners answer (`/healthz`, `/readyz` 503) while it loads.
pub async fn build(config: ServeConfig) -> Result<Host> {
    let defaults = config
        .services
        .defaults(&config.runtime)
        .map_err(anyhow::Error::msg)?;
    let data_dir = DataDir::open(&config.data_dir)?;
    let token = admin_token(&config.admin, &data_dir)?;
    let runtime = Runtime::new(&config.runtime.options(data_dir.root().join("cache")))?;
    let secrets = open_secrets(&config.secrets, &data_dir)?;
    let telemetry = Arc::new(Telemetry::from_env(!config.telemetry.no_telemetry)?);
    if telemetry.tracing.exporting() {
        tracing::info!("exporting traces over OTLP");
    }
    if config.bus.inbox_retention < Duration::from_secs(3600) {
        tracing::warn!(
            retention = %humantime::format_duration(config.bus.inbox_retention),
            "--inbox-retention is shorter than an event's redeliveries may last (about 50 \
             minutes): a late redelivery may be handled twice"
        );
    }
    let mut platform = Platform::builder(data_dir.root());
    if config.store.store_url.is_some() {
        let postgres = crate::store::postgres::PostgresBackend::new(
            &config.store,
            tokio::runtime::Handle::current(),
        )
        .context("the PostgreSQL store")?;
        platform = platform.stores(Arc::new(postgres));
    }
    let host_id = match &config.cluster.host_id {
        Some(id) => {
            crate::registry::validate_name(id)
                .map_err(|_| anyhow::anyhow!("--host-id `{id}`: 1 to 63 lower-case letters, digits or `-`, starting with a letter"))?;
            id.clone()
        }
        None => data_dir.host_id()?,
    };
    let joining = if config.cluster.enabled() {
        let advertise = config
            .cluster
            .advertise
            .clone()
            .unwrap_or_else(|| config.gateway.listen.to_string());
        let joining = crate::cluster::Joining::connect(&config.cluster, host_id.clone(), advertise)
            .await
            .context("joining the cluster")?;
        platform = platform.registry(joining.registry.clone());
        if config.store.store_url.is_none() {
            tracing::warn!(
                "in a cluster without --store, each host keeps the data of the services it \
                 runs to itself: a replica elsewhere, or a replacement, starts empty"
            );
        }
        if config.bus.bus_url.is_none() {
            tracing::warn!(
                "in a cluster without --bus, events reach only subscribers on the host \
                 that published them: share a NATS JetStream bus between the hosts"
            );
        }
        Some(joining)
    } else {
        None
    };
    if let Some(url) = &config.bus.bus_url {
        let nats = crate::events::nats::NatsBus::connect(
            &config.bus,
            url,
            &format!("shoal {host_id}"),
            tokio::runtime::Handle::current(),
        )
        .await
        .context("the NATS event bus")?;
        platform = platform.bus(Arc::new(nats));
    }
    let platform = platform
        .host_id(host_id.clone())
        .telemetry(telemetry.clone())
        .secrets(secrets.clone())
        .bus_limit(config.bus.max_bus_mb * 1024 * 1024)
        .inbox_retention(config.bus.inbox_retention)
        .recordings(
            usize::try_from(config.recordings.max_recordings).unwrap_or(usize::MAX),
            config.recordings.max_recordings_mb * 1024 * 1024,
        )
        .build()?;
    let registry = platform.registry.clone();
    let caller = platform.caller.clone();
    if let Some(joining) = &joining {
        caller.set_peer_credential(joining.credential.clone());
    }
    let services = Services::new(Arc::new(runtime), data_dir.clone(), defaults, platform);
    let local: Arc<dyn LocalDispatch> = services.clone();
    caller.set_local(Arc::downgrade(&local));
    let external = Arc::new(ExternalServices::new(
        registry.clone(),
        HealthChecker::new(registry.clone()),
        data_dir.root().join("external"),
    )?);
    tokio::spawn(reread_secrets_dir(Arc::downgrade(&secrets)));
    tokio::spawn(heartbeat(
        Arc::downgrade(&services),
        Arc::downgrade(&external),
        registry,
    ));

    let settings = &config.gateway;
    let gateway_threads = ServingThreads::start("shoal-gateway", settings.serving_threads())
        .context("starting the gateway's serving threads")?;
    let gateway = listener::Bound::bind(
        "gateway",
        settings.listen,
        config.connections.limits(settings.max_connections),
        tls_acceptor(settings.tls_cert.as_deref(), settings.tls_key.as_deref())
            .context("the gateway's TLS certificate")?,
    )
    .await?
    .on(Arc::new(gateway_threads));
    let settings = &config.admin;
    let admin_listener = listener::Bound::bind(
        "admin API",
        settings.admin_listen,
        config.connections.limits(settings.admin_max_connections),
        tls_acceptor(
            settings.admin_tls_cert.as_deref(),
            settings.admin_tls_key.as_deref(),
        )
        .context("the admin API's TLS certificate")?,
    )
    .await?;
    caller.set_own_listeners(vec![gateway.local_addr()?, admin_listener.local_addr()?]);
    let mut cluster_listener = None;
    let cluster = match joining {
        Some(joining) => {
            // Port 0 is known now: peers reach the gateway where it is bound.
            let advertise = config
                .cluster
                .advertise
                .clone()
                .unwrap_or(gateway.local_addr()?.to_string());
            // With mutual TLS, the hosts reach each other on a port of their own that
            // completes a handshake only with a certificate of the cluster's CA.
            let peer_address = match (
                &joining.peer_tls,
                config.cluster.cluster_listen,
                &config.cluster.cluster_tls_cert,
                &config.cluster.cluster_tls_key,
                &config.cluster.cluster_ca,
            ) {
                (Some(tls), Some(listen), Some(cert), Some(key), Some(ca)) => {
                    let acceptor = crate::tls::CertFiles::open(cert, key)?
                        .acceptor_for_peers(ca)
                        .context("the cluster port's TLS")?;
                    let bound = listener::Bound::bind(
                        "cluster port",
                        listen,
                        config.connections.limits(config.gateway.max_connections),
                        Some(acceptor),
                    )
                    .await?;
                    let address = config
                        .cluster
                        .cluster_advertise
                        .clone()
                        .unwrap_or(bound.local_addr()?.to_string());
                    println!("cluster port listening on https://{}", bound.local_addr()?);
                    cluster_listener = Some(bound);
                    caller.set_peer_tls(tls.clone());
                    Some(address)
                }
                _ => None,
            };
            joining
                .registry
                .set_advertise(peer_address.clone().unwrap_or(advertise.clone()));
            telemetry.metrics.set_host(&host_id);
            let cluster = crate::cluster::Cluster::start(
                joining,
                &services,
                advertise,
                peer_address,
                admin_listener.local_addr()?.to_string(),
                config.admin.max_upload_bytes,
            )?;
            services.join_cluster(cluster.clone());
            Some(cluster)
        }
        None => None,
    };
    tracing::info!(
        gateway_addr = %gateway.local_addr()?,
        admin_addr = %admin_listener.local_addr()?,
        data_dir = %data_dir.root().display(),
        "shoal is listening; restoring services"
    );
    let tokens = Arc::new(
        crate::access::tokens::TokenStore::open(data_dir.root(), &token)
            .context("opening the admin tokens")?,
    );
    let audit = Arc::new(
        crate::access::audit::AuditLog::open(data_dir.root(), config.audit.clone())
            .context("opening the audit log")?,
    );
    if let Some(cluster) = &cluster {
        cluster.set_audit(audit.clone());
        tokio::spawn(crate::cluster::shared::follow(
            Arc::downgrade(cluster),
            tokens.clone(),
            secrets.clone(),
        ));
    }
    let admin = admin::router(AdminState::new(
        services.clone(),
        cluster.clone(),
        external.clone(),
        tokens,
        audit,
        settings.max_upload_bytes,
    ));
    Ok(Host {
        services,
        external,
        telemetry,
        admin,
        gateway,
        admin_listener,
        trusted: TrustedPeers::new(config.gateway.trusted_proxies.clone()),
        drain: config.connections.drain(),
        cluster,
        cluster_listener,
    })
}

/// The operator's token, or the one saved in the data directory (created and printed
/// once on first start).
fn admin_token(config: &AdminSettings, data_dir: &DataDir) -> Result<String> {
    match &config.admin_token {
        Some(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
        Some(_) => anyhow::bail!("--admin-token / SHOAL_ADMIN_TOKEN is empty"),
        None => {
            let (token, created) = admin::load_or_create_token(data_dir.root())?;
            if created {
                println!(
                    "admin token (saved to {}): {token}",
                    data_dir.root().join(admin::TOKEN_FILE).display()
                );
            }
            Ok(token)
        }
    }
}

/// A TLS acceptor for a listener given a certificate and key, or none.
fn tls_acceptor(
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<Option<tokio_rustls::TlsAcceptor>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::CertFiles::open(cert, key)?.acceptor()?)),
        _ => Ok(None),
    }
}

/// Serve the gateway and the admin API until `shutdown` resolves, then stop accepting,
/// drain in-flight requests (up to the drain time) and return.
pub async fn serve(host: Host, shutdown: impl Future<Output = Result<()>>) -> Result<()> {
    let Host {
        services,
        external,
        telemetry,
        admin,
        gateway,
        admin_listener,
        trusted,
        drain,
        cluster,
        cluster_listener,
    } = host;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let peers = match (cluster_listener, &cluster) {
        (Some(bound), Some(cluster)) => Some(tokio::spawn(crate::gateway::serve_peers(
            bound,
            services.clone(),
            cluster.clone(),
            stopped(stop_rx.clone()),
            drain,
        ))),
        _ => None,
    };
    let gateway = tokio::spawn(crate::gateway::serve(
        gateway,
        services.clone(),
        cluster,
        trusted,
        stopped(stop_rx.clone()),
        drain,
    ));
    let admin_service = move |_peer| TowerToHyperService::new(admin.clone());
    let admin_server = tokio::spawn(listener::serve(
        admin_listener,
        admin_service,
        stopped(stop_rx.clone()),
        drain,
    ));

    let restoring = tokio::spawn(restore(services.clone(), external.clone()));
    shutdown.await?;
    restoring.abort();
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    telemetry.guest_logs.close();
    let _ = stop_tx.send(true);
    let _ = gateway.await;
    if let Some(peers) = peers {
        let _ = peers.await;
    }
    if let Err(error) = admin_server.await {
        tracing::warn!(%error, "admin API task failed");
    }
    telemetry.tracing.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// Restore deployed and external services, then mark the host ready. A service that
/// cannot be restored stays listed as failed; the host is ready all the same.
async fn restore(services: Arc<Services>, external: Arc<ExternalServices>) {
    let started = std::time::Instant::now();
    let restored = match services.restore().await {
        Ok(restored) => restored,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "cannot read the services to restore");
            0
        }
    };
    let restored_external = match external.restore().await {
        Ok(restored) => restored,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "cannot read the external services");
            0
        }
    };
    services.mark_ready();
    // Deliveries start once every subscriber is back.
    tokio::spawn(crate::services::delivery::run(Arc::downgrade(&services)));
    tracing::info!(
        restored,
        restored_external,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shoal is ready"
    );
}

/// The host's secrets: sealed in the data directory, from `SHOAL_SECRET_*` and from
/// `--secrets-dir`, masked through the process's redactor (the log and the span
/// exporter use it).
fn open_secrets(config: &SecretsSettings, data_dir: &DataDir) -> Result<Arc<Secrets>> {
    let key = config
        .secrets_key_file
        .clone()
        .unwrap_or_else(|| data_dir.root().join(crate::secrets::sealed::KEY_FILE));
    let backend = crate::secrets::sealed::SealedFile::open(data_dir.root(), &key)
        .context("opening the sealed secrets")?;
    let secrets = Secrets::open(
        Box::new(backend),
        // Only UTF-8 variables can be secrets; `vars()` would panic on another one.
        std::env::vars_os()
            .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?))),
        config.secrets_dir.clone(),
        Redactor::process(),
    )
    .context("loading the secrets")?;
    Ok(Arc::new(secrets))
}

/// Pick up changes in the secrets directory (a rotated mounted secret).
async fn reread_secrets_dir(secrets: std::sync::Weak<Secrets>) {
    let mut tick = tokio::time::interval(SECRETS_DIR_CHECK);
    loop {
        tick.tick().await;
        let Some(secrets) = secrets.upgrade() else {
            break;
        };
        if tokio::task::spawn_blocking(move || secrets.refresh_dir())
            .await
            .is_err()
        {
            break;
        }
    }
}

/// Keep every registration's lease alive while the host runs.
async fn heartbeat(
    services: std::sync::Weak<Services>,
    external: std::sync::Weak<ExternalServices>,
    registry: Arc<dyn Registry>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        let (Some(services), Some(external)) = (services.upgrade(), external.upgrade()) else {
            break;
        };
        services.renew_leases().await;
        for id in external.instance_ids() {
            if registry.renew(&id).await.is_err() {
                external.reregister(&id).await;
            }
        }
    }
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args as _, FromArgMatches as _};
    use http_body_util::BodyExt as _;

    /// A host's settings from `shoal serve` flags (no environment variable is read for
    /// a flag given here).
    fn settings(flags: &[&str]) -> ServeConfig {
        let command = ServeConfig::augment_args(clap::Command::new("serve"));
        let matches = command
            .try_get_matches_from(std::iter::once("serve").chain(flags.iter().copied()))
            .expect("valid flags");
        ServeConfig::from_arg_matches(&matches).expect("settings")
    }

    async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connects");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(connection);
        let request = http::Request::get(path)
            .header(http::header::HOST, "localhost")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("a request");
        let response = sender.send_request(request).await.expect("an answer");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_host_built_on_port_0_serves_restores_and_stops_when_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().to_string_lossy().into_owned();
        let host = build(settings(&[
            "--data-dir",
            &data_dir,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token",
            "t",
            "--no-pooling",
            "--max-instances",
            "4",
            "--gateway-threads",
            "1",
        ]))
        .await
        .expect("built");
        let (gateway, admin) = (
            host.gateway_addr().expect("bound"),
            host.admin_addr().expect("bound"),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(serve(host, async move {
            let _ = stopped.await;
            Ok(())
        }));
        assert_eq!(get(admin, "/healthz").await, (200, "ok\n".to_owned()));
        // Nothing to restore: ready at once.
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while get(admin, "/readyz").await.0 != 200 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "never ready");
        let (status, body) = get(gateway, "/nothing").await;
        assert_eq!(status, 404, "{body}");
        assert!(
            body.contains("no service is routed at `/nothing`"),
            "{body}"
        );
        let _ = stop.send(());
        let stopped = tokio::time::timeout(Duration::from_secs(30), serving).await;
        assert!(
            matches!(stopped, Ok(Ok(Ok(())))),
            "the host did not stop cleanly"
        );
        // Once it has stopped, its data directory is free for the next host.
        assert!(DataDir::open(dir.path()).is_ok());
    }

    #[tokio::test]
    async fn a_default_memory_above_the_ceiling_is_refused_with_both_flags_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().to_string_lossy().into_owned();
        let refused = build(settings(&[
            "--data-dir",
            &data_dir,
            "--default-memory-mb",
            "2048",
            "--max-memory-mb",
            "1024",
        ]))
        .await;
        let Err(error) = refused else {
            panic!("built with a default above the ceiling");
        };
        let message = format!("{error:#}");
        assert!(
            message.contains("--default-memory-mb") && message.contains("--max-memory-mb"),
            "{message}"
        );
    }
}
