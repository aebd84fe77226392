//! The embedded store backend: one SQLite database per service, in
//! `<data dir>/stores/<service>.sqlite3`.
//!
//! Why SQLite: it is embedded (no server to run), its commits are atomic and durable
//! (`journal_mode=WAL`, `synchronous=FULL`: a commit that returned survives `kill -9`
//! and power loss), and one file per service makes isolation structural: a service's
//! calls only ever reach its own file, whatever its keys look like.
//!
//! Keys are stored as bytes so a prefix is an index range; every row carries the
//! sequence number of the commit that wrote it, which optimistic transactions check.
//!
//! A connection costs about 150 KiB (page cache, lookaside, the WAL index mapping),
//! so a store holds one only while it is used: it opens on first use and closes
//! after [`IDLE_CLOSE`] without a call. Ten thousand idle services hold none.

use parking_lot::{MappedMutexGuard, Mutex, MutexGuard};
use rusqlite::{Connection, OptionalExtension as _, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{
    Commit, OutboxEvent, ServiceStore, Snapshot, StoreBackend, StoreError, Versioned, successor,
};

/// A store's connection is closed after this long without a call.
const IDLE_CLOSE: Duration = Duration::from_secs(30);
/// How often idle connections are looked for.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// The stores handed out, by service (a store lives as long as its deployments).
type OpenStores = Arc<OpenStoresInner>;
type OpenStoresInner = Mutex<HashMap<String, Weak<SqliteStore>>>;

/// Stores of every service, one SQLite file each.
pub struct SqliteBackend {
    dir: PathBuf,
    open: OpenStores,
}

impl SqliteBackend {
    /// Keep stores in `dir` (created if needed). A thread closes the connections of
    /// idle stores until the backend is dropped.
    pub fn new(dir: PathBuf) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir)
            .map_err(|error| StoreError::Backend(format!("creating {}: {error}", dir.display())))?;
        let open = OpenStores::default();
        let weak = Arc::downgrade(&open);
        std::thread::Builder::new()
            .name("shoal-store-idle".into())
            .spawn(move || close_idle_connections(weak))
            .map_err(|error| StoreError::Backend(format!("starting the idle closer: {error}")))?;
        Ok(Self { dir, open })
    }

    fn path(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.sqlite3"))
    }
}

impl StoreBackend for SqliteBackend {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    fn purge(&self, service: &str) -> Result<(), StoreError> {
        crate::registry::validate_name(service)
            .map_err(|error| StoreError::Backend(error.to_string()))?;
        self.open.lock().remove(service);
        let path = self.path(service);
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(StoreError::Backend(format!(
                        "removing {}: {error}",
                        file.display()
                    )));
                }
            }
        }
        Ok(())
    }

    fn open(&self, service: &str, quota: u64) -> Result<Arc<dyn ServiceStore>, StoreError> {
        crate::registry::validate_name(service)
            .map_err(|error| StoreError::Backend(error.to_string()))?;
        // A store already open keeps the quota in force: the version that opens it
        // again applies its own only once it serves (`set_quota`), so a deploy that
        // is refused changes nothing.
        if let Some(store) = self.open.lock().get(service).and_then(Weak::upgrade) {
            return Ok(store);
        }
        // Opened (file I/O, schema) without the lock every other service's open
        // takes; should two open it at once, the first to finish is kept.
        let opened = Arc::new(SqliteStore::open(self.path(service), quota)?);
        let mut open = self.open.lock();
        if let Some(store) = open.get(service).and_then(Weak::upgrade) {
            return Ok(store);
        }
        open.retain(|_, store| store.strong_count() > 0);
        open.insert(service.to_owned(), Arc::downgrade(&opened));
        Ok(opened)
    }
}

/// Close the connections of stores idle for [`IDLE_CLOSE`], every [`IDLE_CHECK`],
/// until the backend is gone.
fn close_idle_connections(open: Weak<OpenStoresInner>) {
    loop {
        std::thread::sleep(IDLE_CHECK);
        let Some(open) = open.upgrade() else {
            return;
        };
        let stores: Vec<Arc<SqliteStore>> =
            open.lock().values().filter_map(Weak::upgrade).collect();
        drop(open);
        for store in stores {
            store.close_if_idle(IDLE_CLOSE);
        }
    }
}

/// One service's database.
pub struct SqliteStore {
    path: PathBuf,
    connection: Mutex<Lazy>,
    quota: Mutex<u64>,
    /// The outbox was seen empty and nothing was published since: the event router
    /// need not open the store to look.
    outbox_empty: AtomicBool,
    /// The inbox was seen empty and nothing was marked handled since: pruning need
    /// not open the store.
    inbox_empty: AtomicBool,
    /// Bytes stored, as of the last commit: the admin view reads it without opening
    /// the store.
    bytes: AtomicU64,
    /// Bytes of its events the bus holds: counted against the quota too.
    elsewhere: AtomicU64,
}

/// A connection opened on first use.
struct Lazy {
    connection: Option<Connection>,
    last_used: Instant,
}

fn backend(error: rusqlite::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

impl SqliteStore {
    /// Create or migrate the database at `path`, note whether its outbox holds
    /// events, and close it until it is used.
    fn open(path: PathBuf, quota: u64) -> Result<Self, StoreError> {
        let connection = crate::data_dir::open_sqlite(
            &path,
            "CREATE TABLE IF NOT EXISTS kv (
                     key BLOB PRIMARY KEY,
                     value BLOB NOT NULL,
                     version INTEGER NOT NULL
                 ) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS meta (
                     name TEXT PRIMARY KEY,
                     value INTEGER NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS outbox (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     id TEXT NOT NULL UNIQUE,
                     topic TEXT NOT NULL,
                     payload BLOB NOT NULL,
                     traceparent TEXT,
                     published_ms INTEGER NOT NULL DEFAULT 0
                 );
                 CREATE TABLE IF NOT EXISTS inbox (
                     id TEXT PRIMARY KEY
                 ) WITHOUT ROWID;
                 INSERT OR IGNORE INTO meta VALUES ('sequence', 0), ('bytes', 0);",
        )
        .map_err(backend)?;
        crate::data_dir::ensure_column(
            &connection,
            "outbox",
            "deliver_at_ms",
            "INTEGER NOT NULL DEFAULT 0",
        )
        .map_err(backend)?;
        crate::data_dir::ensure_column(
            &connection,
            "inbox",
            "handled_ms",
            "INTEGER NOT NULL DEFAULT 0",
        )
        .map_err(backend)?;
        // Ids handled before their time was kept: their retention starts now.
        connection
            .execute(
                "UPDATE inbox SET handled_ms = ?1 WHERE handled_ms = 0",
                [crate::events::now_ms() as i64],
            )
            .map_err(backend)?;
        let inbox_empty = connection
            .query_row("SELECT 1 FROM inbox LIMIT 1", [], |_| Ok(()))
            .optional()
            .map_err(backend)?
            .is_none();
        let outbox_empty = connection
            .query_row("SELECT 1 FROM outbox LIMIT 1", [], |_| Ok(()))
            .optional()
            .map_err(backend)?
            .is_none();
        let bytes = Self::meta(&connection, "bytes")?.max(0) as u64;
        Ok(Self {
            path,
            connection: Mutex::new(Lazy {
                connection: None,
                last_used: Instant::now(),
            }),
            quota: Mutex::new(quota),
            outbox_empty: AtomicBool::new(outbox_empty),
            inbox_empty: AtomicBool::new(inbox_empty),
            bytes: AtomicU64::new(bytes),
            elsewhere: AtomicU64::new(0),
        })
    }

    /// The connection, opened if it was closed. Held until the guard is dropped.
    fn connection(&self) -> Result<MappedMutexGuard<'_, Connection>, StoreError> {
        let mut lazy = self.connection.lock();
        if lazy.connection.is_none() {
            lazy.connection = Some(connect(&self.path)?);
        }
        lazy.last_used = Instant::now();
        MutexGuard::try_map(lazy, |lazy| lazy.connection.as_mut())
            .map_err(|_| StoreError::Backend("the store's connection is closed".into()))
    }

    /// Close the connection if no call used it for `idle`; the next call reopens it.
    fn close_if_idle(&self, idle: Duration) {
        let mut lazy = self.connection.lock();
        if lazy.connection.is_some() && lazy.last_used.elapsed() >= idle {
            lazy.connection = None;
        }
    }

    /// Whether the connection is open now.
    #[cfg(test)]
    fn is_connected(&self) -> bool {
        self.connection.lock().connection.is_some()
    }

    fn list_in(
        connection: &Connection,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let low = prefix.as_bytes();
        let rows = match successor(low) {
            Some(high) => {
                let mut statement = connection
                    .prepare_cached(
                        "SELECT key, version FROM kv WHERE key >= ?1 AND key < ?2 \
                         ORDER BY key LIMIT ?3",
                    )
                    .map_err(backend)?;
                let rows = statement
                    .query_map(params![low, high, limit], |row| {
                        Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?))
                    })
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)?
            }
            None => {
                let mut statement = connection
                    .prepare_cached(
                        "SELECT key, version FROM kv WHERE key >= ?1 ORDER BY key LIMIT ?2",
                    )
                    .map_err(backend)?;
                let rows = statement
                    .query_map(params![low, limit], |row| {
                        Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?))
                    })
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(key, version)| (String::from_utf8_lossy(&key).into_owned(), version as u64))
            .collect())
    }

    fn meta(connection: &Connection, name: &str) -> Result<i64, StoreError> {
        connection
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |row| {
                row.get(0)
            })
            .map_err(backend)
    }
}

/// Open an existing store's database (its schema was made when it was created).
fn connect(path: &Path) -> Result<Connection, StoreError> {
    crate::data_dir::open_sqlite(path, "").map_err(backend)
}

/// Add `events` to the outbox, in `transaction`.
fn insert_outbox(transaction: &Connection, events: &[OutboxEvent]) -> Result<(), StoreError> {
    let mut insert = transaction
        .prepare_cached(
            "INSERT INTO outbox (id, topic, payload, traceparent, published_ms, deliver_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(backend)?;
    for event in events {
        insert
            .execute(params![
                event.id,
                event.topic,
                event.payload,
                event.traceparent,
                event.published_ms as i64,
                event.deliver_at_ms as i64,
            ])
            .map_err(backend)?;
    }
    Ok(())
}

/// Take `removed` bytes off the store's count (never below 0: events an older host
/// put in the outbox were not counted), in `transaction`. Answers the count left.
fn give_back_bytes(transaction: &Connection, removed: i64) -> Result<i64, StoreError> {
    transaction
        .query_row(
            "UPDATE meta SET value = MAX(0, value - ?1) WHERE name = 'bytes' RETURNING value",
            [removed],
            |row| row.get(0),
        )
        .map_err(backend)
}

/// An outbox row, selected as `id, topic, payload, traceparent, published_ms,
/// deliver_at_ms`.
fn outbox_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEvent> {
    Ok(OutboxEvent {
        id: row.get(0)?,
        topic: row.get(1)?,
        payload: row.get(2)?,
        traceparent: row.get(3)?,
        published_ms: row.get::<_, i64>(4)? as u64,
        deliver_at_ms: row.get::<_, i64>(5)? as u64,
    })
}

impl ServiceStore for SqliteStore {
    fn quota(&self) -> u64 {
        *self.quota.lock()
    }

    fn set_quota(&self, bytes: u64) {
        *self.quota.lock() = bytes;
    }

    fn engine(&self) -> &'static str {
        "sqlite"
    }

    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let connection = self.connection()?;
        let mut statement = connection
            .prepare_cached("SELECT value, version FROM kv WHERE key = ?1")
            .map_err(backend)?;
        statement
            .query_row([key.as_bytes()], |row| {
                Ok(Versioned {
                    value: row.get(0)?,
                    version: row.get::<_, i64>(1)? as u64,
                })
            })
            .optional()
            .map_err(backend)
    }

    fn list(&self, prefix: &str, limit: u32) -> Result<Vec<(String, u64)>, StoreError> {
        let connection = self.connection()?;
        Self::list_in(&connection, prefix, limit)
    }

    fn keys_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<String>, StoreError> {
        let connection = self.connection()?;
        let mut statement = connection
            .prepare_cached("SELECT key FROM kv WHERE key > ?1 ORDER BY key LIMIT ?2")
            .map_err(backend)?;
        // Every key is at least one byte, so the empty string is below them all.
        let after = after.unwrap_or("").as_bytes();
        let rows = statement
            .query_map(params![after, limit], |row| row.get::<_, Vec<u8>>(0))
            .map_err(backend)?;
        rows.map(|key| {
            key.map(|key| String::from_utf8_lossy(&key).into_owned())
                .map_err(backend)
        })
        .collect()
    }

    fn commit(&self, commit: &Commit) -> Result<(), StoreError> {
        let quota = *self.quota.lock();
        let mut connection = self.connection()?;
        // A read-only transaction is checked in a read snapshot: it takes no write
        // lock, so it never waits for (or holds up) writers.
        let behavior = if commit.writes_anything() {
            rusqlite::TransactionBehavior::Immediate
        } else {
            rusqlite::TransactionBehavior::Deferred
        };
        let transaction = connection
            .transaction_with_behavior(behavior)
            .map_err(backend)?;
        // Validate: everything read is as it was.
        {
            let mut version_of = transaction
                .prepare_cached("SELECT version FROM kv WHERE key = ?1")
                .map_err(backend)?;
            for (key, seen) in &commit.reads {
                let now: Option<i64> = version_of
                    .query_row([key.as_bytes()], |row| row.get(0))
                    .optional()
                    .map_err(backend)?;
                if now.map(|v| v as u64) != *seen {
                    return Err(StoreError::Conflict);
                }
            }
        }
        for listed in &commit.listed {
            if Self::list_in(&transaction, &listed.prefix, listed.limit)? != listed.seen {
                return Err(StoreError::Conflict);
            }
        }
        if !commit.writes_anything() {
            return Ok(());
        }
        // Events waiting in the outbox and handled ids count against the quota, so
        // neither can grow without bound.
        let mut event_bytes = 0i64;
        {
            insert_outbox(&transaction, &commit.events)?;
            event_bytes += commit
                .events
                .iter()
                .map(|event| (event.id.len() + event.topic.len() + event.payload.len()) as i64)
                .sum::<i64>();
            let mut inbox = transaction
                .prepare_cached("INSERT OR IGNORE INTO inbox (id, handled_ms) VALUES (?1, ?2)")
                .map_err(backend)?;
            let now = crate::events::now_ms() as i64;
            for id in &commit.handled {
                if inbox.execute(params![id, now]).map_err(backend)? > 0 {
                    event_bytes += id.len() as i64;
                }
            }
        }
        // Apply, within the quota.
        let mut bytes = Self::meta(&transaction, "bytes")? + event_bytes;
        let sequence = Self::meta(&transaction, "sequence")? + 1;
        {
            let mut size_of = transaction
                .prepare_cached("SELECT length(key) + length(value) FROM kv WHERE key = ?1")
                .map_err(backend)?;
            let mut upsert = transaction
                .prepare_cached(
                    "INSERT INTO kv (key, value, version) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                     version = excluded.version",
                )
                .map_err(backend)?;
            let mut delete = transaction
                .prepare_cached("DELETE FROM kv WHERE key = ?1")
                .map_err(backend)?;
            for (key, value) in &commit.writes {
                let old: Option<i64> = size_of
                    .query_row([key.as_bytes()], |row| row.get(0))
                    .optional()
                    .map_err(backend)?;
                bytes -= old.unwrap_or(0);
                match value {
                    Some(value) => {
                        bytes += (key.len() + value.len()) as i64;
                        upsert
                            .execute(params![key.as_bytes(), value, sequence])
                            .map_err(backend)?;
                    }
                    None => {
                        delete.execute([key.as_bytes()]).map_err(backend)?;
                    }
                }
            }
        }
        let before = Self::meta(&transaction, "bytes")?;
        let elsewhere = self.elsewhere.load(Ordering::SeqCst);
        if bytes > before && (bytes as u64).saturating_add(elsewhere) > quota {
            // Dropping the transaction rolls it back.
            return Err(StoreError::QuotaExceeded);
        }
        transaction
            .execute(
                "UPDATE meta SET value = CASE name WHEN 'bytes' THEN ?1 ELSE ?2 END \
                 WHERE name IN ('bytes', 'sequence')",
                params![bytes, sequence],
            )
            .map_err(backend)?;
        transaction.commit().map_err(backend)?;
        self.bytes.store(bytes.max(0) as u64, Ordering::SeqCst);
        if !commit.events.is_empty() {
            // Under the connection's lock, so a concurrent look at the outbox that
            // found it empty cannot overwrite this.
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
        let connection = self.connection()?;
        let mut statement = connection
            .prepare_cached(
                "SELECT id, topic, payload, traceparent, published_ms, deliver_at_ms FROM outbox \
                 ORDER BY seq LIMIT ?1",
            )
            .map_err(backend)?;
        let rows = statement
            .query_map([limit], outbox_event)
            .map_err(backend)?;
        let events = rows.collect::<Result<Vec<_>, _>>().map_err(backend)?;
        if events.is_empty() {
            self.outbox_empty.store(true, Ordering::SeqCst);
        }
        Ok(events)
    }

    fn outbox_may_hold_events(&self) -> bool {
        !self.outbox_empty.load(Ordering::SeqCst)
    }

    fn remove_from_outbox(&self, ids: &[String]) -> Result<(), StoreError> {
        let mut connection = self.connection()?;
        let transaction = connection.transaction().map_err(backend)?;
        let mut removed = 0i64;
        {
            let mut delete = transaction
                .prepare_cached(
                    "DELETE FROM outbox WHERE id = ?1 \
                     RETURNING length(id) + length(topic) + length(payload)",
                )
                .map_err(backend)?;
            for id in ids {
                let bytes: Option<i64> = delete
                    .query_row([id], |row| row.get(0))
                    .optional()
                    .map_err(backend)?;
                removed += bytes.unwrap_or(0);
            }
        }
        let bytes = give_back_bytes(&transaction, removed)?;
        transaction.commit().map_err(backend)?;
        self.bytes.store(bytes.max(0) as u64, Ordering::SeqCst);
        Ok(())
    }

    fn prune_inbox(&self, handled_before_ms: u64) -> Result<u64, StoreError> {
        if self.inbox_empty.load(Ordering::SeqCst) {
            return Ok(0);
        }
        let mut connection = self.connection()?;
        let transaction = connection.transaction().map_err(backend)?;
        let (removed, removed_bytes): (i64, i64) = transaction
            .query_row(
                "SELECT count(*), COALESCE(SUM(length(id)), 0) FROM inbox WHERE handled_ms < ?1",
                [handled_before_ms as i64],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(backend)?;
        transaction
            .execute(
                "DELETE FROM inbox WHERE handled_ms < ?1",
                [handled_before_ms as i64],
            )
            .map_err(backend)?;
        let bytes = give_back_bytes(&transaction, removed_bytes)?;
        let empty = transaction
            .query_row("SELECT 1 FROM inbox LIMIT 1", [], |_| Ok(()))
            .optional()
            .map_err(backend)?
            .is_none();
        transaction.commit().map_err(backend)?;
        self.bytes.store(bytes.max(0) as u64, Ordering::SeqCst);
        if empty {
            // Under the connection's lock: a commit marking an id waits for it.
            self.inbox_empty.store(true, Ordering::SeqCst);
        }
        Ok(removed.max(0) as u64)
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Versioned>>, StoreError> {
        let mut connection = self.connection()?;
        // One read transaction: one consistent snapshot, no write lock, no conflict.
        let transaction = connection.transaction().map_err(backend)?;
        let mut found = Vec::with_capacity(keys.len());
        {
            let mut select = transaction
                .prepare_cached("SELECT value, version FROM kv WHERE key = ?1")
                .map_err(backend)?;
            for key in keys {
                let row = select
                    .query_row([key.as_bytes()], |row| {
                        Ok(Versioned {
                            value: row.get(0)?,
                            version: row.get::<_, i64>(1)? as u64,
                        })
                    })
                    .optional()
                    .map_err(backend)?;
                found.push(row);
            }
        }
        transaction.commit().map_err(backend)?;
        Ok(found)
    }

    fn set_held_elsewhere(&self, bytes: u64) {
        self.elsewhere.store(bytes, Ordering::SeqCst);
    }

    fn export(&self) -> Result<Snapshot, StoreError> {
        let mut connection = self.connection()?;
        // One read transaction: one consistent snapshot.
        let transaction = connection.transaction().map_err(backend)?;
        let mut snapshot = Snapshot {
            sequence: Self::meta(&transaction, "sequence")?.max(0) as u64,
            ..Snapshot::default()
        };
        {
            let mut entries = transaction
                .prepare("SELECT key, value, version FROM kv ORDER BY key")
                .map_err(backend)?;
            let rows = entries
                .query_map([], |row| {
                    let key: Vec<u8> = row.get(0)?;
                    Ok((
                        String::from_utf8_lossy(&key).into_owned(),
                        row.get::<_, Vec<u8>>(1)?,
                        row.get::<_, i64>(2)? as u64,
                    ))
                })
                .map_err(backend)?;
            snapshot.entries = rows.collect::<Result<_, _>>().map_err(backend)?;
            let mut outbox = transaction
                .prepare(
                    "SELECT id, topic, payload, traceparent, published_ms, deliver_at_ms \
                     FROM outbox ORDER BY seq",
                )
                .map_err(backend)?;
            let rows = outbox.query_map([], outbox_event).map_err(backend)?;
            snapshot.outbox = rows.collect::<Result<_, _>>().map_err(backend)?;
            let mut inbox = transaction
                .prepare("SELECT id, handled_ms FROM inbox ORDER BY id")
                .map_err(backend)?;
            let rows = inbox
                .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))
                .map_err(backend)?;
            snapshot.inbox = rows.collect::<Result<_, _>>().map_err(backend)?;
        }
        transaction.commit().map_err(backend)?;
        Ok(snapshot)
    }

    fn import(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let bytes = snapshot.bytes();
        if bytes > *self.quota.lock() {
            return Err(StoreError::QuotaExceeded);
        }
        let mut connection = self.connection()?;
        let transaction = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(backend)?;
        let holds_anything = transaction
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM kv) OR EXISTS (SELECT 1 FROM outbox) \
                 OR EXISTS (SELECT 1 FROM inbox)",
                [],
                |row| row.get::<_, bool>(0),
            )
            .map_err(backend)?;
        if holds_anything {
            return Err(StoreError::Conflict);
        }
        {
            let mut entry = transaction
                .prepare("INSERT INTO kv (key, value, version) VALUES (?1, ?2, ?3)")
                .map_err(backend)?;
            for (key, value, version) in &snapshot.entries {
                crate::store::check_key(key)?;
                crate::store::check_value(value)?;
                entry
                    .execute(params![key.as_bytes(), value, *version as i64])
                    .map_err(backend)?;
            }
            insert_outbox(&transaction, &snapshot.outbox)?;
            let mut inbox = transaction
                .prepare("INSERT INTO inbox (id, handled_ms) VALUES (?1, ?2)")
                .map_err(backend)?;
            for (id, handled_ms) in &snapshot.inbox {
                inbox
                    .execute(params![id, *handled_ms as i64])
                    .map_err(backend)?;
            }
        }
        transaction
            .execute(
                "UPDATE meta SET value = CASE name WHEN 'bytes' THEN ?1 ELSE ?2 END \
                 WHERE name IN ('bytes', 'sequence')",
                params![bytes as i64, snapshot.next_sequence() as i64],
            )
            .map_err(backend)?;
        transaction.commit().map_err(backend)?;
        self.bytes.store(bytes, Ordering::SeqCst);
        self.outbox_empty
            .store(snapshot.outbox.is_empty(), Ordering::SeqCst);
        self.inbox_empty
            .store(snapshot.inbox.is_empty(), Ordering::SeqCst);
        Ok(())
    }

    fn is_handled(&self, id: &str) -> Result<bool, StoreError> {
        let connection = self.connection()?;
        connection
            .query_row("SELECT 1 FROM inbox WHERE id = ?1", [id], |_| Ok(()))
            .optional()
            .map(|found| found.is_some())
            .map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Transaction;

    fn store(dir: &tempfile::TempDir, service: &str, quota: u64) -> Arc<dyn ServiceStore> {
        SqliteBackend::new(dir.path().to_path_buf())
            .expect("backend")
            .open(service, quota)
            .expect("open")
    }

    #[test]
    fn prefixes_have_an_upper_bound_unless_all_ones() {
        assert_eq!(successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(successor(b"\xff\xff"), None);
        assert_eq!(successor(b""), None);
    }

    #[test]
    fn transactions_commit_atomically_and_conflicts_lose_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir, "s", 1 << 20);
        let mut first = Transaction::default();
        let mut second = Transaction::default();
        assert_eq!(first.get(&*store, "n").expect("get"), None);
        assert_eq!(second.get(&*store, "n").expect("get"), None);
        first.put("n", Some(b"1".to_vec())).expect("put");
        first.put("m", Some(b"x".to_vec())).expect("put");
        second.put("n", Some(b"2".to_vec())).expect("put");
        first.commit(&*store).expect("first commits");
        assert_eq!(second.commit(&*store), Err(StoreError::Conflict));
        assert_eq!(
            store.get("n").expect("get").map(|v| v.value),
            Some(b"1".to_vec())
        );
        assert_eq!(second.commit(&*store), Err(StoreError::Closed));
    }

    #[test]
    fn a_page_short_of_the_transaction_s_own_deletes_is_not_the_end() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir, "s", 1 << 20);
        let mut setup = Transaction::default();
        for n in 1..=5 {
            setup
                .put(&format!("k/{n}"), Some(b"x".to_vec()))
                .expect("put");
        }
        setup.commit(&*store).expect("commit");
        let mut tx = Transaction::default();
        tx.put("k/1", None).expect("delete");
        tx.put("k/2", None).expect("delete");
        assert_eq!(
            tx.list(&*store, "k/", 2).expect("list"),
            ["k/3", "k/4"],
            "a full page of what is left"
        );
        // The listing still guards the commit: unchanged, it commits.
        tx.commit(&*store).expect("commit");
    }

    #[test]
    fn a_listed_prefix_that_changed_is_a_conflict() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir, "s", 1 << 20);
        let mut listing = Transaction::default();
        assert!(
            listing
                .list(&*store, "order/", 100)
                .expect("list")
                .is_empty()
        );
        let mut other = Transaction::default();
        other.put("order/1", Some(b"x".to_vec())).expect("put");
        other.commit(&*store).expect("commit");
        listing
            .put("summary", Some(b"0 orders".to_vec()))
            .expect("put");
        assert_eq!(listing.commit(&*store), Err(StoreError::Conflict));
    }

    #[test]
    fn reads_see_own_writes_and_listing_merges_them() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir, "s", 1 << 20);
        let mut setup = Transaction::default();
        setup.put("a/1", Some(b"x".to_vec())).expect("put");
        setup.put("a/2", Some(b"y".to_vec())).expect("put");
        setup.commit(&*store).expect("commit");
        let mut tx = Transaction::default();
        tx.put("a/3", Some(b"z".to_vec())).expect("put");
        tx.put("a/1", None).expect("delete");
        assert_eq!(tx.get(&*store, "a/1").expect("get"), None);
        assert_eq!(tx.list(&*store, "a/", 10).expect("list"), ["a/2", "a/3"]);
    }

    #[test]
    fn the_quota_refuses_growth_but_allows_shrinking() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir, "s", 100);
        let mut big = Transaction::default();
        big.put("k", Some(vec![0; 200])).expect("put");
        assert_eq!(big.commit(&*store), Err(StoreError::QuotaExceeded));
        assert_eq!(store.size().expect("size"), 0, "nothing was written");
        let mut fits = Transaction::default();
        fits.put("k", Some(vec![0; 50])).expect("put");
        fits.commit(&*store).expect("fits");
        assert_eq!(store.size().expect("size"), 51);
        let mut shrink = Transaction::default();
        shrink.put("k", None).expect("delete");
        shrink.commit(&*store).expect("shrinks");
        assert_eq!(store.size().expect("size"), 0);
    }

    #[test]
    fn waiting_events_count_against_the_quota_in_the_outbox_and_on_the_bus() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir, "s", 1000);
        let publish = |id: &str, bytes: usize| {
            let mut tx = Transaction::default();
            let mut event = event(id);
            event.payload = vec![b'p'; bytes];
            tx.publish(event).expect("publish");
            tx.commit(&*store)
        };
        publish("e1", 600).expect("fits");
        assert_eq!(
            store.size().expect("size"),
            600 + 2 + 1,
            "id, topic and payload"
        );
        assert_eq!(publish("e2", 600), Err(StoreError::QuotaExceeded));
        // Moved to the bus: out of the outbox, but the bus still holds it for this
        // service.
        store.remove_from_outbox(&["e1".into()]).expect("moved");
        assert_eq!(store.size().expect("size"), 0);
        store.set_held_elsewhere(603);
        assert_eq!(publish("e2", 600), Err(StoreError::QuotaExceeded));
        let mut write = Transaction::default();
        write.put("k", Some(vec![0; 500])).expect("put");
        assert_eq!(write.commit(&*store), Err(StoreError::QuotaExceeded));
        // Delivered: room again.
        store.set_held_elsewhere(0);
        publish("e2", 600).expect("fits again");
    }

    #[test]
    fn a_snapshot_carries_keys_outbox_and_inbox_into_an_empty_store_only() {
        let dir = tempfile::tempdir().expect("dir");
        let from = store(&dir, "from", 1 << 20);
        let mut tx = Transaction::default();
        tx.put("a", Some(vec![0, 159, 255])).expect("put");
        tx.publish(event("e1")).expect("publish");
        tx.mark_handled("seen-1").expect("mark");
        tx.commit(&*from).expect("commit");
        let snapshot = from.export().expect("export");
        assert_eq!(snapshot.entries, [("a".to_owned(), vec![0, 159, 255], 1)]);
        assert_eq!(snapshot.outbox, [event("e1")]);
        assert_eq!(snapshot.inbox.len(), 1);
        assert_eq!(snapshot.sequence, 1);

        let to = store(&dir, "to", 1 << 20);
        to.import(&snapshot).expect("import");
        assert_eq!(to.export().expect("export"), snapshot);
        assert_eq!(to.size().expect("size"), from.size().expect("size"));
        assert!(to.is_handled("seen-1").expect("inbox"));
        assert!(to.outbox_may_hold_events());
        assert_eq!(to.outbox(10).expect("outbox"), [event("e1")]);
        // Commits go on after the imported versions.
        let mut next = Transaction::default();
        next.put("b", Some(b"x".to_vec())).expect("put");
        next.commit(&*to).expect("commit");
        assert!(
            to.get("b")
                .expect("get")
                .is_some_and(|found| found.version > 1)
        );
        // Into an empty store only; nor past the quota.
        assert_eq!(to.import(&snapshot), Err(StoreError::Conflict));
        let small = store(&dir, "small", 4);
        assert_eq!(small.import(&snapshot), Err(StoreError::QuotaExceeded));
        assert!(
            small.export().expect("export").entries.is_empty(),
            "nothing written"
        );
    }

    #[test]
    fn handled_ids_expire_after_their_retention() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir, "s", 1 << 20);
        assert_eq!(
            store.prune_inbox(u64::MAX).expect("prune"),
            0,
            "nothing to prune"
        );
        let mut tx = Transaction::default();
        tx.mark_handled("event-1").expect("mark");
        tx.commit(&*store).expect("commit");
        assert_eq!(store.size().expect("size"), 7);
        let marked_at = crate::events::now_ms();
        assert_eq!(
            store.prune_inbox(marked_at - 60_000).expect("prune"),
            0,
            "still kept"
        );
        assert!(store.is_handled("event-1").expect("read"));
        assert_eq!(store.prune_inbox(marked_at + 1).expect("prune"), 1);
        assert!(!store.is_handled("event-1").expect("read"));
        assert_eq!(store.size().expect("size"), 0, "its bytes are given back");
    }

    #[test]
    fn data_survives_reopening_and_services_have_separate_files() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let a = store(&dir, "a", 1 << 20);
            let mut tx = Transaction::default();
            tx.put("secret", Some(b"a's".to_vec())).expect("put");
            tx.commit(&*a).expect("commit");
        }
        let a = store(&dir, "a", 1 << 20);
        assert_eq!(
            a.get("secret").expect("get").map(|v| v.value),
            Some(b"a's".to_vec())
        );
        let b = store(&dir, "b", 1 << 20);
        assert_eq!(b.get("secret").expect("get"), None);
        assert!(b.list("", 100).expect("list").is_empty());
    }

    #[test]
    fn events_commit_with_the_writes_and_never_without_them() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir, "s", 1 << 20);
        // Rolled back (conflict): neither the write nor the event.
        let mut stale = Transaction::default();
        stale.get(&*store, "k").expect("get");
        let mut winner = Transaction::default();
        winner.put("k", Some(b"1".to_vec())).expect("put");
        winner.commit(&*store).expect("commit");
        stale.put("k", Some(b"2".to_vec())).expect("put");
        stale.publish(event("lost")).expect("publish");
        assert_eq!(stale.commit(&*store), Err(StoreError::Conflict));
        assert!(store.outbox(10).expect("outbox").is_empty());
        // Committed: both, and a handled mark.
        let mut tx = Transaction::default();
        tx.put("k", Some(b"3".to_vec())).expect("put");
        tx.publish(event("e1")).expect("publish");
        tx.mark_handled("incoming-1").expect("mark");
        tx.commit(&*store).expect("commit");
        assert_eq!(store.outbox(10).expect("outbox"), [event("e1")]);
        assert!(store.is_handled("incoming-1").expect("inbox"));
        assert!(!store.is_handled("incoming-2").expect("inbox"));
        store.remove_from_outbox(&["e1".into()]).expect("remove");
        assert!(store.outbox(10).expect("outbox").is_empty());
    }

    fn event(id: &str) -> crate::store::OutboxEvent {
        crate::store::OutboxEvent {
            id: id.into(),
            topic: "t".into(),
            payload: b"p".to_vec(),
            traceparent: None,
            published_ms: 0,
            deliver_at_ms: 0,
        }
    }

    #[test]
    fn an_idle_store_closes_its_connection_and_reopens_on_use() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(dir.path().join("s.sqlite3"), 1 << 20).expect("open");
        assert!(!store.is_connected(), "a new store holds no connection");
        let mut tx = Transaction::default();
        tx.put("k", Some(b"v".to_vec())).expect("put");
        tx.commit(&store).expect("commit");
        assert!(store.is_connected());
        store.close_if_idle(Duration::from_secs(3600));
        assert!(
            store.is_connected(),
            "a recently used store keeps its connection"
        );
        store.close_if_idle(Duration::ZERO);
        assert!(!store.is_connected());
        assert_eq!(
            store.get("k").expect("get").map(|v| v.value),
            Some(b"v".to_vec())
        );
        assert_eq!(store.size().expect("size"), 2);
    }

    #[test]
    fn the_outbox_is_looked_at_only_when_it_may_hold_events() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.sqlite3");
        let store = SqliteStore::open(path.clone(), 1 << 20).expect("open");
        assert!(
            !store.outbox_may_hold_events(),
            "a new store's outbox is empty"
        );
        let mut tx = Transaction::default();
        tx.put("k", Some(b"v".to_vec())).expect("put");
        tx.commit(&store).expect("commit");
        assert!(!store.outbox_may_hold_events(), "no event was published");
        let mut tx = Transaction::default();
        tx.publish(event("e1")).expect("publish");
        tx.put("k", Some(b"w".to_vec())).expect("put");
        tx.commit(&store).expect("commit");
        assert!(store.outbox_may_hold_events());
        drop(store);
        // Reopened (a restart): the event waiting in the outbox is known at once.
        let store = SqliteStore::open(path, 1 << 20).expect("reopen");
        assert!(store.outbox_may_hold_events());
        assert_eq!(store.outbox(10).expect("outbox"), [event("e1")]);
        store.remove_from_outbox(&["e1".into()]).expect("remove");
        assert!(store.outbox_may_hold_events(), "not looked at since");
        assert!(store.outbox(10).expect("outbox").is_empty());
        assert!(!store.outbox_may_hold_events());
    }
}
