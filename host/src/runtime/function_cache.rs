//! Cranelift's incremental compilation cache, on disk: compiled functions keyed by
//! the hash of their intermediate code and the target.
//!
//! Components built by one toolchain share most of their code: every componentize-py
//! service carries the same CPython, every componentize-js one the same
//! SpiderMonkey. With this cache, the first such component compiles everything and
//! each later one compiles only what is new to it, so a large component deploys in a
//! fraction of the time. It is a cache: entries are written without waiting for the
//! disk, a lost or unreadable entry is compiled again, and it stops growing at its
//! size limit.

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension as _, params};
use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::CacheStore;

/// Compiled functions by key, in one SQLite file.
pub struct FunctionCache {
    connection: Mutex<Connection>,
    /// Bytes of values stored.
    bytes: AtomicU64,
    /// Bytes it may hold; inserts beyond it are refused.
    limit: u64,
}

impl std::fmt::Debug for FunctionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionCache")
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .field("limit", &self.limit)
            .finish()
    }
}

impl FunctionCache {
    /// Open (or create) the cache at `path`, holding at most `limit` bytes.
    pub fn open(path: &Path, limit: u64) -> rusqlite::Result<Self> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        // A cache: no fsync. A crash may lose recent entries; they compile again.
        connection.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = OFF;
             CREATE TABLE IF NOT EXISTS functions (
                 key BLOB PRIMARY KEY,
                 value BLOB NOT NULL
             ) WITHOUT ROWID;",
        )?;
        let bytes: i64 = connection.query_row(
            "SELECT COALESCE(SUM(LENGTH(value)), 0) FROM functions",
            [],
            |row| row.get(0),
        )?;
        Ok(Self {
            connection: Mutex::new(connection),
            bytes: AtomicU64::new(bytes.max(0) as u64),
            limit,
        })
    }

    /// Bytes of compiled code it holds.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let connection = self.connection.lock();
        let mut statement = connection
            .prepare_cached("SELECT value FROM functions WHERE key = ?1")
            .ok()?;
        let value: Option<Vec<u8>> = statement
            .query_row([key], |row| row.get(0))
            .optional()
            .ok()?;
        value.map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let size = value.len() as u64;
        if self.bytes.load(Ordering::Relaxed) + size > self.limit {
            return false;
        }
        let connection = self.connection.lock();
        let inserted = connection
            .prepare_cached("INSERT OR IGNORE INTO functions (key, value) VALUES (?1, ?2)")
            .and_then(|mut statement| statement.execute(params![key, value]));
        match inserted {
            Ok(1) => {
                self.bytes.fetch_add(size, Ordering::Relaxed);
                true
            }
            Ok(_) => true,
            Err(error) => {
                tracing::debug!(%error, "function cache insert failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopening_and_the_size_limit_holds() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("functions.sqlite3");
        let cache = FunctionCache::open(&path, 150).expect("open");
        assert!(cache.get(b"a").is_none());
        assert!(cache.insert(b"a", vec![1; 60]));
        assert!(
            cache.insert(b"a", vec![1; 60]),
            "a second insert is a no-op"
        );
        assert_eq!(cache.bytes(), 60, "counted once");
        assert!(!cache.insert(b"b", vec![2; 100]), "over the limit");
        assert_eq!(cache.bytes(), 60);
        drop(cache);
        let cache = FunctionCache::open(&path, 150).expect("reopen");
        assert_eq!(cache.get(b"a").as_deref(), Some(&[1u8; 60][..]));
        assert!(cache.get(b"b").is_none());
        assert_eq!(cache.bytes(), 60);
    }
}
