//! The PostgreSQL store backend (`shoal serve --store postgres://…`): each service's
//! keys live in a schema of its own, created on first use; the guest never sends SQL,
//! so no service reaches another's data whatever its keys look like.
//!
//! - **Optimistic transactions across hosts**: a writing commit first locks its
//!   service's sequence row (`SELECT … FOR UPDATE`), so writing commits to one
//!   service run one at a time whichever host makes them; it then checks what the
//!   transaction read and applies the writes, the outbox and the inbox in the same
//!   database transaction. A read-only transaction is checked in one REPEATABLE READ
//!   snapshot without a lock.
//! - **A misbehaving database never takes the host with it**: one bounded pool of
//!   connections for the whole host; every call is bounded in time (waiting for a
//!   connection, and the statement itself); a call that cannot reach the database
//!   fails with [`StoreError::Unavailable`] at once, and the pool reconnects by itself
//!   when the database is back.
//!
//! The trait is blocking (store calls run on the blocking pool): each call drives its
//! query on the host's runtime from there.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_postgres::types::ToSql;

use super::{Commit, OutboxEvent, ServiceStore, Snapshot, StoreBackend, StoreError, Versioned};

/// How long a call waits for a free connection when all are busy, or for a new one
/// to be made (a database that refuses connections fails a call at once).
const CONNECTION_WAIT: Duration = Duration::from_secs(5);
/// How long one call (its statements together) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach PostgreSQL.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreSettings {
    /// Keep services' stores in PostgreSQL (`postgres://USER@HOST:PORT/DB`; add
    /// `?sslmode=require` for TLS) instead of SQLite files in the data directory.
    /// The password comes from --store-password-file or PGPASSWORD, never the URL.
    #[arg(long = "store", env = "SHOAL_STORE_URL")]
    pub store_url: Option<String>,

    /// A file holding the database password (its first line).
    #[arg(long, env = "SHOAL_STORE_PASSWORD_FILE")]
    pub store_password_file: Option<std::path::PathBuf>,

    /// A PEM file of the certificate authorities that sign the database's
    /// certificate (with `?sslmode=require`), instead of the public web's roots.
    #[arg(long, env = "SHOAL_STORE_CA_FILE", value_name = "FILE")]
    pub store_ca_file: Option<std::path::PathBuf>,

    /// Connections to PostgreSQL the host keeps at most, for all services together.
    #[arg(long, env = "SHOAL_STORE_MAX_CONNECTIONS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub store_max_connections: u32,
}

/// Services' stores in one PostgreSQL database.
pub struct PostgresBackend {
    pool: Pool,
    runtime: tokio::runtime::Handle,
    open: Mutex<HashMap<String, Weak<PostgresStore>>>,
}

/// Which engine a URL names, and the error for one Shoal cannot use.
fn parse_url(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|error| anyhow::anyhow!("--store `{}`: {error}", redact_url(url)))?;
    if config.get_password().is_some() {
        anyhow::bail!(
            "--store must not carry a password (it would show in the process list): put it \
             in --store-password-file or PGPASSWORD"
        );
    }
    Ok(config)
}

/// A URL with anything after `:` in its user part cut, for error messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            let user = user.split(':').next().unwrap_or_default();
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl PostgresBackend {
    /// A pool on the database `settings` name; connections are made when first used,
    /// so a database that is down at start is reached once it is up.
    pub fn new(settings: &StoreSettings, runtime: tokio::runtime::Handle) -> anyhow::Result<Self> {
        let url = settings
            .store_url
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("no --store URL"))?;
        let mut config = parse_url(url)?;
        let password = match &settings.store_password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|error| anyhow::anyhow!("reading {}: {error}", path.display()))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            None => std::env::var("PGPASSWORD").ok(),
        };
        if let Some(password) = password {
            config.password(password);
        }
        config.application_name("shoal");
        config.connect_timeout(CONNECTION_WAIT);
        config.options(format!(
            "-c statement_timeout={} -c lock_timeout={}",
            CALL_TIMEOUT.as_millis(),
            CALL_TIMEOUT.as_millis()
        ));
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
            Manager::from_config(config, tokio_postgres::NoTls, manager_config)
        } else {
            Manager::from_config(
                config,
                tls_connector(settings.store_ca_file.as_deref())?,
                manager_config,
            )
        };
        let pool = Pool::builder(manager)
            .max_size(settings.store_max_connections as usize)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECTION_WAIT))
            .create_timeout(Some(CONNECTION_WAIT))
            .recycle_timeout(Some(CONNECTION_WAIT))
            .build()
            .map_err(|error| anyhow::anyhow!("the PostgreSQL pool: {error}"))?;
        Ok(Self {
            pool,
            runtime,
            open: Mutex::new(HashMap::new()),
        })
    }
}

/// TLS to the database, trusting `ca_file`'s authorities or the public web's roots.
fn tls_connector(
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let config = crate::trust::client_config(ca_file)
        .map_err(|error| anyhow::anyhow!("TLS to PostgreSQL: {error:#}"))?;
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The schema of `service`: readable, and unique (service names have no `_`, and a
/// name too long for PostgreSQL's 63-byte identifiers ends in a hash of it).
pub fn schema_of(service: &str) -> String {
    let readable = service.replace('-', "_");
    if readable.len() <= 61 {
        format!("s_{readable}")
    } else {
        let hash = &crate::data_dir::sha256_hex(service.as_bytes())[..16];
        format!("s_{}_{hash}", &readable[..44])
    }
}

impl StoreBackend for PostgresBackend {
    fn engine(&self) -> &'static str {
        "postgresql"
    }

    fn purge(&self, service: &str) -> Result<(), StoreError> {
        crate::registry::validate_name(service)
            .map_err(|error| StoreError::Backend(error.to_string()))?;
        self.open.lock().remove(service);
        let schema = schema_of(service);
        self.runtime.block_on(async {
            let client = self.pool.get().await.map_err(|error| {
                StoreError::Unavailable(format!("no connection to the store's database: {error}"))
            })?;
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .await
                .map_err(failure)
        })
    }

    fn open(&self, service: &str, quota: u64) -> Result<Arc<dyn ServiceStore>, StoreError> {
        crate::registry::validate_name(service)
            .map_err(|error| StoreError::Backend(error.to_string()))?;
        if let Some(store) = self.open.lock().get(service).and_then(Weak::upgrade) {
            return Ok(store);
        }
        let store = Arc::new(PostgresStore {
            pool: self.pool.clone(),
            runtime: self.runtime.clone(),
            schema: schema_of(service),
            quota: AtomicU64::new(quota),
            bytes: AtomicU64::new(0),
            elsewhere: AtomicU64::new(0),
            outbox_empty: AtomicBool::new(false),
            inbox_empty: AtomicBool::new(false),
            ready: AtomicBool::new(false),
        });
        // Made now if the database is there; otherwise on the first call that
        // reaches it (a host starts while its database is down).
        if let Err(error) = store.ensure_schema() {
            tracing::warn!(service, %error, "the service's store is not reachable yet");
        }
        let mut open = self.open.lock();
        if let Some(existing) = open.get(service).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        open.retain(|_, store| store.strong_count() > 0);
        open.insert(service.to_owned(), Arc::downgrade(&store));
        Ok(store)
    }
}

/// One service's store: its schema in the shared database.
pub struct PostgresStore {
    pool: Pool,
    runtime: tokio::runtime::Handle,
    schema: String,
    quota: AtomicU64,
    /// Bytes stored, as of this host's last look.
    bytes: AtomicU64,
    elsewhere: AtomicU64,
    outbox_empty: AtomicBool,
    inbox_empty: AtomicBool,
    /// The schema exists.
    ready: AtomicBool,
}

/// A database failure as the guest sees it: unreachable or timed out is
/// `Unavailable`; a serialization failure is a `Conflict`; anything else the
/// backend's.
fn failure(error: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    let error = match error.as_db_error() {
        Some(db) => {
            let text = format!("{}: {}", db.code().code(), db.message());
            return classify(db.code(), text);
        }
        None => error,
    };
    let _ = SqlState::SUCCESSFUL_COMPLETION;
    StoreError::Unavailable(format!("the store's database: {error}"))
}

/// A database error by its SQLSTATE.
fn classify(code: &tokio_postgres::error::SqlState, text: String) -> StoreError {
    use tokio_postgres::error::SqlState;
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        return StoreError::Conflict;
    }
    if *code == SqlState::QUERY_CANCELED || *code == SqlState::LOCK_NOT_AVAILABLE {
        return StoreError::Unavailable(format!("the store did not answer in time ({text})"));
    }
    // Connection exceptions, and an operator or a shutdown ending the session.
    if code.code().starts_with("08") || code.code().starts_with("57") {
        return StoreError::Unavailable(format!("the store's database: {text}"));
    }
    StoreError::Backend(format!("the store's database: {text}"))
}

type Client = deadpool_postgres::Object;

/// A read-only transaction over one snapshot of the database.
async fn read_snapshot(
    client: &mut Client,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(failure)
}

/// Add `events` to `schema`'s outbox, in `tx`.
async fn insert_outbox(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    events: &[OutboxEvent],
) -> Result<(), StoreError> {
    let insert = tx
        .prepare_cached(&format!(
            "INSERT INTO {schema}.outbox \
             (id, topic, payload, traceparent, published_ms, deliver_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .await
        .map_err(failure)?;
    for event in events {
        let (published, deliver_at) = (event.published_ms as i64, event.deliver_at_ms as i64);
        let params: [&(dyn ToSql + Sync); 6] = [
            &event.id,
            &event.topic,
            &event.payload,
            &event.traceparent,
            &published,
            &deliver_at,
        ];
        tx.execute(&insert, &params).await.map_err(failure)?;
    }
    Ok(())
}

/// Take `removed` bytes off `schema`'s count (never below 0: events an older host
/// put in the outbox were not counted), in `tx`. Answers the count left.
async fn give_back_bytes(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    removed: i64,
) -> Result<i64, StoreError> {
    Ok(tx
        .query_one(
            &format!(
                "UPDATE {schema}.meta SET value = GREATEST(0, value - $1) \
                 WHERE name = 'bytes' RETURNING value"
            ),
            &[&removed],
        )
        .await
        .map_err(failure)?
        .get(0))
}

/// An outbox row, selected as `id, topic, payload, traceparent, published_ms,
/// deliver_at_ms`.
fn outbox_event(row: &tokio_postgres::Row) -> OutboxEvent {
    OutboxEvent {
        id: row.get(0),
        topic: row.get(1),
        payload: row.get(2),
        traceparent: row.get(3),
        published_ms: row.get::<_, i64>(4) as u64,
        deliver_at_ms: row.get::<_, i64>(5) as u64,
    }
}

impl PostgresStore {
    /// Run `work` with a connection, bounded in time, from the blocking pool.
    fn call<T, F>(&self, work: impl FnOnce(Client) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        // Within the store's own bound, and the request's deadline when the call
        // has one.
        let limit = super::bounded::call_deadline().map_or(CALL_TIMEOUT, |deadline| {
            deadline
                .saturating_duration_since(std::time::Instant::now())
                .min(CALL_TIMEOUT)
        });
        self.runtime.block_on(async {
            let bounded = async {
                let client = self.pool.get().await.map_err(|error| {
                    StoreError::Unavailable(format!(
                        "no connection to the store's database: {error}"
                    ))
                })?;
                work(client).await
            };
            match tokio::time::timeout(limit, bounded).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unavailable(
                    "the store's database did not answer within the request's time".into(),
                )),
            }
        })
    }

    /// Run `work` once the schema exists.
    fn with_schema<T, F>(&self, work: impl FnOnce(Client) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        if !self.ready.load(Ordering::Acquire) {
            self.ensure_schema()?;
        }
        self.call(work)
    }

    /// Create the schema and its tables if they are missing (hosts racing to make
    /// them take turns on an advisory lock), and read what this host tracks.
    fn ensure_schema(&self) -> Result<(), StoreError> {
        let schema = self.schema.clone();
        let (bytes, outbox_empty, inbox_empty) = self.call(|mut client| async move {
            let tx = client.transaction().await.map_err(failure)?;
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&schema])
                .await
                .map_err(failure)?;
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE IF NOT EXISTS {schema}.kv (
                     key BYTEA PRIMARY KEY,
                     value BYTEA NOT NULL,
                     version BIGINT NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS {schema}.meta (
                     name TEXT PRIMARY KEY,
                     value BIGINT NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS {schema}.outbox (
                     seq BIGSERIAL PRIMARY KEY,
                     id TEXT NOT NULL UNIQUE,
                     topic TEXT NOT NULL,
                     payload BYTEA NOT NULL,
                     traceparent TEXT,
                     published_ms BIGINT NOT NULL,
                     deliver_at_ms BIGINT NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS {schema}.inbox (
                     id TEXT PRIMARY KEY,
                     handled_ms BIGINT NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS inbox_handled ON {schema}.inbox (handled_ms);
                 INSERT INTO {schema}.meta VALUES ('sequence', 0), ('bytes', 0)
                     ON CONFLICT (name) DO NOTHING;"
            ))
            .await
            .map_err(failure)?;
            let bytes: i64 = tx
                .query_one(
                    &format!("SELECT value FROM {schema}.meta WHERE name = 'bytes'"),
                    &[],
                )
                .await
                .map_err(failure)?
                .get(0);
            let outbox = tx
                .query_opt(&format!("SELECT 1 FROM {schema}.outbox LIMIT 1"), &[])
                .await
                .map_err(failure)?;
            let inbox = tx
                .query_opt(&format!("SELECT 1 FROM {schema}.inbox LIMIT 1"), &[])
                .await
                .map_err(failure)?;
            tx.commit().await.map_err(failure)?;
            Ok((bytes, outbox.is_none(), inbox.is_none()))
        })?;
        self.bytes.store(bytes.max(0) as u64, Ordering::SeqCst);
        self.outbox_empty.store(outbox_empty, Ordering::SeqCst);
        self.inbox_empty.store(inbox_empty, Ordering::SeqCst);
        self.ready.store(true, Ordering::Release);
        Ok(())
    }
}

/// Keys with `prefix`, in order, at most `limit`, with their versions.
async fn list_in(
    client: &impl deadpool_postgres::GenericClient,
    schema: &str,
    prefix: &[u8],
    limit: u32,
) -> Result<Vec<(String, u64)>, StoreError> {
    let rows =
        match super::successor(prefix) {
            Some(high) => {
                client
                    .query(
                        &format!(
                            "SELECT key, version FROM {schema}.kv WHERE key >= $1 AND key < $2 \
                         ORDER BY key LIMIT $3"
                        ),
                        &[&prefix, &high, &i64::from(limit)],
                    )
                    .await
            }
            None => client
                .query(
                    &format!(
                        "SELECT key, version FROM {schema}.kv WHERE key >= $1 ORDER BY key LIMIT $2"
                    ),
                    &[&prefix, &i64::from(limit)],
                )
                .await,
        }
        .map_err(failure)?;
    Ok(rows
        .iter()
        .map(|row| {
            let key: Vec<u8> = row.get(0);
            let version: i64 = row.get(1);
            (String::from_utf8_lossy(&key).into_owned(), version as u64)
        })
        .collect())
}

impl ServiceStore for PostgresStore {
    fn engine(&self) -> &'static str {
        "postgresql"
    }

    fn quota(&self) -> u64 {
        self.quota.load(Ordering::SeqCst)
    }

    fn set_quota(&self, bytes: u64) {
        self.quota.store(bytes, Ordering::SeqCst);
    }

    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let schema = &self.schema;
        self.with_schema(|client| async move {
            let row = client
                .query_opt(
                    &format!("SELECT value, version FROM {schema}.kv WHERE key = $1"),
                    &[&key.as_bytes()],
                )
                .await
                .map_err(failure)?;
            Ok(row.map(|row| Versioned {
                value: row.get(0),
                version: row.get::<_, i64>(1) as u64,
            }))
        })
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Versioned>>, StoreError> {
        let schema = &self.schema;
        self.with_schema(|mut client| async move {
            // One snapshot for all of them.
            let tx = read_snapshot(&mut client).await?;
            let statement = tx
                .prepare_cached(&format!(
                    "SELECT value, version FROM {schema}.kv WHERE key = $1"
                ))
                .await
                .map_err(failure)?;
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                let row = tx
                    .query_opt(&statement, &[&key.as_bytes()])
                    .await
                    .map_err(failure)?;
                found.push(row.map(|row| Versioned {
                    value: row.get(0),
                    version: row.get::<_, i64>(1) as u64,
                }));
            }
            tx.commit().await.map_err(failure)?;
            Ok(found)
        })
    }

    fn list(&self, prefix: &str, limit: u32) -> Result<Vec<(String, u64)>, StoreError> {
        let schema = &self.schema;
        self.with_schema(|client| async move {
            list_in(&client, schema, prefix.as_bytes(), limit).await
        })
    }

    fn keys_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<String>, StoreError> {
        let schema = &self.schema;
        self.with_schema(|client| async move {
            let rows =
                match after {
                    Some(after) => client
                        .query(
                            &format!(
                                "SELECT key FROM {schema}.kv WHERE key > $1 ORDER BY key LIMIT $2"
                            ),
                            &[&after.as_bytes(), &i64::from(limit)],
                        )
                        .await,
                    None => {
                        client
                            .query(
                                &format!("SELECT key FROM {schema}.kv ORDER BY key LIMIT $1"),
                                &[&i64::from(limit)],
                            )
                            .await
                    }
                }
                .map_err(failure)?;
            Ok(rows
                .iter()
                .map(|row| String::from_utf8_lossy(&row.get::<_, Vec<u8>>(0)).into_owned())
                .collect())
        })
    }

    fn commit(&self, commit: &Commit) -> Result<(), StoreError> {
        let schema = &self.schema;
        let quota = self.quota();
        let elsewhere = self.elsewhere.load(Ordering::SeqCst);
        let writes = commit.writes_anything();
        let bytes = self.with_schema(|mut client| async move {
            let tx = if writes {
                client.transaction().await.map_err(failure)?
            } else {
                read_snapshot(&mut client).await?
            };
            // Writing commits to this service take turns, on every host: each
            // sees everything committed before it.
            let (sequence, before) = if writes {
                let sequence: i64 = tx
                    .query_one(
                        &format!(
                            "SELECT value FROM {schema}.meta WHERE name = 'sequence' FOR UPDATE"
                        ),
                        &[],
                    )
                    .await
                    .map_err(failure)?
                    .get(0);
                let bytes: i64 = tx
                    .query_one(
                        &format!("SELECT value FROM {schema}.meta WHERE name = 'bytes'"),
                        &[],
                    )
                    .await
                    .map_err(failure)?
                    .get(0);
                (sequence + 1, bytes)
            } else {
                (0, 0)
            };
            // Everything read is as it was.
            let version_of = tx
                .prepare_cached(&format!("SELECT version FROM {schema}.kv WHERE key = $1"))
                .await
                .map_err(failure)?;
            for (key, seen) in &commit.reads {
                let now = tx
                    .query_opt(&version_of, &[&key.as_bytes()])
                    .await
                    .map_err(failure)?
                    .map(|row| row.get::<_, i64>(0) as u64);
                if now != *seen {
                    return Err(StoreError::Conflict);
                }
            }
            for listed in &commit.listed {
                let now = list_in(&tx, schema, listed.prefix.as_bytes(), listed.limit).await?;
                if now != listed.seen {
                    return Err(StoreError::Conflict);
                }
            }
            if !writes {
                tx.commit().await.map_err(failure)?;
                return Ok(None);
            }
            let mut bytes = before;
            insert_outbox(&tx, schema, &commit.events).await?;
            bytes += commit
                .events
                .iter()
                .map(|event| (event.id.len() + event.topic.len() + event.payload.len()) as i64)
                .sum::<i64>();
            let inbox = tx
                .prepare_cached(&format!(
                    "INSERT INTO {schema}.inbox (id, handled_ms) VALUES ($1, $2) \
                     ON CONFLICT (id) DO NOTHING"
                ))
                .await
                .map_err(failure)?;
            let now = crate::events::now_ms() as i64;
            for id in &commit.handled {
                let params: [&(dyn ToSql + Sync); 2] = [id, &now];
                if tx.execute(&inbox, &params).await.map_err(failure)? > 0 {
                    bytes += id.len() as i64;
                }
            }
            let size_of = tx
                .prepare_cached(&format!(
                    "SELECT length(key) + length(value) FROM {schema}.kv WHERE key = $1"
                ))
                .await
                .map_err(failure)?;
            let upsert = tx
                .prepare_cached(&format!(
                    "INSERT INTO {schema}.kv (key, value, version) VALUES ($1, $2, $3) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                     version = excluded.version"
                ))
                .await
                .map_err(failure)?;
            let delete = tx
                .prepare_cached(&format!("DELETE FROM {schema}.kv WHERE key = $1"))
                .await
                .map_err(failure)?;
            for (key, value) in &commit.writes {
                let old: Option<i32> = tx
                    .query_opt(&size_of, &[&key.as_bytes()])
                    .await
                    .map_err(failure)?
                    .map(|row| row.get(0));
                bytes -= i64::from(old.unwrap_or(0));
                match value {
                    Some(value) => {
                        bytes += (key.len() + value.len()) as i64;
                        let key = key.as_bytes();
                        let params: [&(dyn ToSql + Sync); 3] = [&key, value, &sequence];
                        tx.execute(&upsert, &params).await.map_err(failure)?;
                    }
                    None => {
                        tx.execute(&delete, &[&key.as_bytes()])
                            .await
                            .map_err(failure)?;
                    }
                }
            }
            if bytes > before && (bytes.max(0) as u64).saturating_add(elsewhere) > quota {
                // Dropping the transaction rolls it back.
                return Err(StoreError::QuotaExceeded);
            }
            tx.execute(
                &format!(
                    "UPDATE {schema}.meta SET value = CASE name WHEN 'bytes' THEN $1::BIGINT ELSE $2::BIGINT END \
                     WHERE name IN ('bytes', 'sequence')"
                ),
                &[&bytes, &sequence],
            )
            .await
            .map_err(failure)?;
            tx.commit().await.map_err(failure)?;
            Ok(Some(bytes))
        })?;
        if let Some(bytes) = bytes {
            self.bytes.store(bytes.max(0) as u64, Ordering::SeqCst);
        }
        if !commit.events.is_empty() {
            self.outbox_empty.store(false, Ordering::SeqCst);
        }
        if !commit.handled.is_empty() {
            self.inbox_empty.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    fn size(&self) -> Result<u64, StoreError> {
        Ok(self.bytes.load(Ordering::SeqCst))
    }

    fn outbox(&self, limit: u32) -> Result<Vec<OutboxEvent>, StoreError> {
        let schema = &self.schema;
        let events = self.with_schema(|client| async move {
            let rows = client
                .query(
                    &format!(
                        "SELECT id, topic, payload, traceparent, published_ms, deliver_at_ms \
                         FROM {schema}.outbox ORDER BY seq LIMIT $1"
                    ),
                    &[&i64::from(limit)],
                )
                .await
                .map_err(failure)?;
            Ok(rows.iter().map(outbox_event).collect::<Vec<_>>())
        })?;
        if events.is_empty() {
            self.outbox_empty.store(true, Ordering::SeqCst);
        }
        Ok(events)
    }

    fn outbox_may_hold_events(&self) -> bool {
        !self.outbox_empty.load(Ordering::SeqCst)
    }

    fn remove_from_outbox(&self, ids: &[String]) -> Result<(), StoreError> {
        let schema = &self.schema;
        let bytes = self.with_schema(|mut client| async move {
            let tx = client.transaction().await.map_err(failure)?;
            let removed: i64 = tx
                .query_one(
                    &format!(
                        "WITH gone AS (DELETE FROM {schema}.outbox WHERE id = ANY($1) \
                         RETURNING length(id) + length(topic) + length(payload) AS bytes) \
                         SELECT COALESCE(SUM(bytes), 0)::BIGINT FROM gone"
                    ),
                    &[&ids],
                )
                .await
                .map_err(failure)?
                .get(0);
            let bytes = give_back_bytes(&tx, schema, removed).await?;
            tx.commit().await.map_err(failure)?;
            Ok(bytes)
        })?;
        self.bytes.store(bytes.max(0) as u64, Ordering::SeqCst);
        Ok(())
    }

    fn is_handled(&self, id: &str) -> Result<bool, StoreError> {
        let schema = &self.schema;
        self.with_schema(|client| async move {
            let row = client
                .query_opt(
                    &format!("SELECT 1 FROM {schema}.inbox WHERE id = $1"),
                    &[&id],
                )
                .await
                .map_err(failure)?;
            Ok(row.is_some())
        })
    }

    fn prune_inbox(&self, handled_before_ms: u64) -> Result<u64, StoreError> {
        if self.inbox_empty.load(Ordering::SeqCst) {
            return Ok(0);
        }
        let schema = &self.schema;
        let cutoff = handled_before_ms as i64;
        let (removed, bytes, empty) = self.with_schema(|mut client| async move {
            let tx = client.transaction().await.map_err(failure)?;
            let row = tx
                .query_one(
                    &format!(
                        "WITH gone AS (DELETE FROM {schema}.inbox WHERE handled_ms < $1 \
                         RETURNING length(id) AS bytes) \
                         SELECT count(*), COALESCE(SUM(bytes), 0)::BIGINT FROM gone"
                    ),
                    &[&cutoff],
                )
                .await
                .map_err(failure)?;
            let (removed, removed_bytes): (i64, i64) = (row.get(0), row.get(1));
            let bytes = give_back_bytes(&tx, schema, removed_bytes).await?;
            let left = tx
                .query_opt(&format!("SELECT 1 FROM {schema}.inbox LIMIT 1"), &[])
                .await
                .map_err(failure)?;
            tx.commit().await.map_err(failure)?;
            Ok((removed, bytes, left.is_none()))
        })?;
        self.bytes.store(bytes.max(0) as u64, Ordering::SeqCst);
        if empty {
            self.inbox_empty.store(true, Ordering::SeqCst);
        }
        Ok(removed.max(0) as u64)
    }

    fn set_held_elsewhere(&self, bytes: u64) {
        self.elsewhere.store(bytes, Ordering::SeqCst);
    }

    fn export(&self) -> Result<Snapshot, StoreError> {
        let schema = &self.schema;
        self.with_schema(|mut client| async move {
            let tx = read_snapshot(&mut client).await?;
            let sequence: i64 = tx
                .query_one(
                    &format!("SELECT value FROM {schema}.meta WHERE name = 'sequence'"),
                    &[],
                )
                .await
                .map_err(failure)?
                .get(0);
            let entries = tx
                .query(
                    &format!("SELECT key, value, version FROM {schema}.kv ORDER BY key"),
                    &[],
                )
                .await
                .map_err(failure)?
                .iter()
                .map(|row| {
                    let key: Vec<u8> = row.get(0);
                    (
                        String::from_utf8_lossy(&key).into_owned(),
                        row.get::<_, Vec<u8>>(1),
                        row.get::<_, i64>(2) as u64,
                    )
                })
                .collect();
            let outbox = tx
                .query(
                    &format!(
                        "SELECT id, topic, payload, traceparent, published_ms, deliver_at_ms \
                         FROM {schema}.outbox ORDER BY seq"
                    ),
                    &[],
                )
                .await
                .map_err(failure)?
                .iter()
                .map(outbox_event)
                .collect();
            let inbox = tx
                .query(
                    &format!("SELECT id, handled_ms FROM {schema}.inbox ORDER BY id"),
                    &[],
                )
                .await
                .map_err(failure)?
                .iter()
                .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1) as u64))
                .collect();
            tx.commit().await.map_err(failure)?;
            Ok(Snapshot {
                entries,
                outbox,
                inbox,
                sequence: sequence.max(0) as u64,
            })
        })
    }

    fn import(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let bytes = snapshot.bytes();
        if bytes > self.quota() {
            return Err(StoreError::QuotaExceeded);
        }
        for (key, value, _) in &snapshot.entries {
            super::check_key(key)?;
            super::check_value(value)?;
        }
        let schema = &self.schema;
        self.with_schema(|mut client| async move {
            let tx = client.transaction().await.map_err(failure)?;
            tx.query_one(
                &format!("SELECT value FROM {schema}.meta WHERE name = 'sequence' FOR UPDATE"),
                &[],
            )
            .await
            .map_err(failure)?;
            let holds_anything: bool = tx
                .query_one(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM {schema}.kv) \
                         OR EXISTS (SELECT 1 FROM {schema}.outbox) \
                         OR EXISTS (SELECT 1 FROM {schema}.inbox)"
                    ),
                    &[],
                )
                .await
                .map_err(failure)?
                .get(0);
            if holds_anything {
                return Err(StoreError::Conflict);
            }
            let entry = tx
                .prepare(&format!(
                    "INSERT INTO {schema}.kv (key, value, version) VALUES ($1, $2, $3)"
                ))
                .await
                .map_err(failure)?;
            for (key, value, version) in &snapshot.entries {
                let (key, version) = (key.as_bytes(), *version as i64);
                let params: [&(dyn ToSql + Sync); 3] = [&key, value, &version];
                tx.execute(&entry, &params).await.map_err(failure)?;
            }
            insert_outbox(&tx, schema, &snapshot.outbox).await?;
            let inbox = tx
                .prepare(&format!(
                    "INSERT INTO {schema}.inbox (id, handled_ms) VALUES ($1, $2)"
                ))
                .await
                .map_err(failure)?;
            for (id, handled_ms) in &snapshot.inbox {
                let handled_ms = *handled_ms as i64;
                let params: [&(dyn ToSql + Sync); 2] = [id, &handled_ms];
                tx.execute(&inbox, &params).await.map_err(failure)?;
            }
            let (bytes, sequence) = (bytes as i64, snapshot.next_sequence() as i64);
            tx.execute(
                &format!(
                    "UPDATE {schema}.meta SET value = CASE name WHEN 'bytes' THEN $1::BIGINT \
                     ELSE $2::BIGINT END WHERE name IN ('bytes', 'sequence')"
                ),
                &[&bytes, &sequence],
            )
            .await
            .map_err(failure)?;
            tx.commit().await.map_err(failure)?;
            Ok(())
        })?;
        self.bytes.store(bytes, Ordering::SeqCst);
        self.outbox_empty
            .store(snapshot.outbox.is_empty(), Ordering::SeqCst);
        self.inbox_empty
            .store(snapshot.inbox.is_empty(), Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_readable_unique_and_fit_postgresql() {
        assert_eq!(schema_of("orders"), "s_orders");
        assert_eq!(schema_of("shop-orders"), "s_shop_orders");
        let long = format!("a{}", "-b".repeat(31));
        let other = format!("a{}c", "-b".repeat(30));
        assert!(schema_of(&long).len() <= 63);
        assert_ne!(schema_of(&long), schema_of(&other));
    }

    #[test]
    fn a_password_never_comes_from_the_url() {
        assert!(parse_url("postgres://shoal@db:5432/shoal").is_ok());
        let error = parse_url("postgres://shoal:hunter2@db/shoal").expect_err("refused");
        assert!(!format!("{error:#}").contains("hunter2"), "{error:#}");
        assert_eq!(
            redact_url("postgres://shoal:hunter2@db/x"),
            "postgres://shoal@db/x"
        );
    }
}
