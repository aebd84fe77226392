//! The data directory: durable state of the host ("the store" is a service's own
//! key-value store, [`crate::store`]; wasmtime's `Store` is an instance's).
//!
//! ```text
//! <data-dir>/blobs/<sha256>.wasm     uploaded components, content-addressed
//! <data-dir>/services/<name>.json    one file per service: current version, history,
//!                                    canary, scale
//! <data-dir>/cache/<engine>/...      compiled code (see runtime::compile)
//! <data-dir>/admin-token             generated admin token (mode 0600)
//! ```
//!
//! Every write goes to a temporary file that is fsynced and then renamed into place,
//! and the directory is fsynced after the rename: a crash leaves either the old or
//! the new file, never a torn one. A deploy writes the blob before the record, so a
//! record never points at a missing blob.

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::manifest::Manifest;

/// What is persisted about one deployed version of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Service name.
    pub name: String,
    /// Version label (from the manifest, or derived from the digest).
    pub version: String,
    /// SHA-256 of the component, lower-case hex.
    pub digest: String,
    /// When this version was deployed, RFC 3339.
    pub deployed_at: String,
    /// The manifest it was deployed with.
    pub manifest: Manifest,
}

/// A record file that could not be read, and why.
pub type BrokenRecord = (PathBuf, anyhow::Error);

/// The data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    /// The open lock file: one host per data directory, for as long as it runs.
    _lock: Arc<File>,
}

impl DataDir {
    /// Open (creating if needed) the data directory at `root`, and clear temporary
    /// files left by an interrupted write. The directory is the host's alone (mode
    /// 0700), and so is every file in it: the process's umask becomes 077, so what
    /// the host creates from now on (stores and their journals, the bus, blobs, the
    /// tokens, the audit log, sealed secrets) is 0600, and files an older host left
    /// readable to others are made 0600.
    pub fn open(root: &Path) -> Result<Self> {
        make_new_files_private();
        for dir in [
            root.to_path_buf(),
            root.join("blobs"),
            root.join("services"),
        ] {
            fs::create_dir_all(&dir)
                .with_context(|| format!("creating data directory {}", dir.display()))?;
        }
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(root, fs::Permissions::from_mode(0o700)).with_context(|| {
                format!(
                    "making the data directory {} the host's alone",
                    root.display()
                )
            })?;
        }
        make_private(root, 3)
            .with_context(|| format!("making the files in {} the host's alone", root.display()))?;
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        if let Err(error) = lock.try_lock() {
            bail!(
                "the data directory {} is in use by another `shoal serve` ({error}); \
                 stop it, or pass another --data-dir",
                root.display()
            );
        }
        let storage = Self {
            root: root.to_path_buf(),
            _lock: Arc::new(lock),
        };
        for dir in ["blobs", "services"] {
            for entry in fs::read_dir(root.join(dir))? {
                let path = entry?.path();
                if path.extension().is_some_and(|ext| ext == "tmp") {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(storage)
    }

    /// The data directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This host's stable identity, generated on first start.
    pub fn host_id(&self) -> Result<String> {
        let path = self.root.join("host-id");
        if let Ok(id) = fs::read_to_string(&path)
            && !id.trim().is_empty()
        {
            return Ok(id.trim().to_owned());
        }
        let id = format!("host-{:016x}", rand::random::<u64>());
        write_durably(&path, id.as_bytes())?;
        Ok(id)
    }

    /// Store a component by digest. A blob already stored is kept only when its
    /// content still matches the digest; a damaged one is rewritten.
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let path = self.blob_path(digest);
        match fs::read(&path) {
            Ok(stored) if sha256_hex(&stored) == digest => return Ok(()),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "stored component is damaged; rewriting it")
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "stored component is unreadable; rewriting it")
            }
        }
        write_durably(&path, bytes)
    }

    /// Read a component back, checking that its content still matches its digest.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let actual = sha256_hex(&bytes);
        if actual != digest {
            bail!("{} is corrupt: its digest is {actual}", path.display());
        }
        Ok(bytes)
    }

    /// Persist the state of service `name`, replacing the previous one.
    pub fn put_service<T: Serialize>(&self, name: &str, state: &T) -> Result<()> {
        let json = serde_json::to_vec_pretty(state)?;
        write_durably(&self.record_path(name), &json)
    }

    /// Delete a service record. Returns whether one existed.
    pub fn remove_record(&self, name: &str) -> Result<bool> {
        remove_durably(&self.record_path(name))
    }

    /// Every persisted service state, with the files that could not be read reported
    /// apart.
    pub fn services<T: serde::de::DeserializeOwned>(&self) -> Result<(Vec<T>, Vec<BrokenRecord>)> {
        let mut records = Vec::new();
        let mut broken = Vec::new();
        for entry in fs::read_dir(self.root.join("services"))? {
            let path = entry?.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let parsed = fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| Ok(serde_json::from_slice::<T>(&bytes)?));
            match parsed {
                Ok(record) => records.push(record),
                Err(error) => broken.push((path, error)),
            }
        }
        Ok((records, broken))
    }

    /// The directory of stored components.
    pub fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{digest}.wasm"))
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.root.join("services").join(format!("{name}.json"))
    }
}

/// Open (or create) a SQLite database for durable state: WAL journal, synchronous
/// commits (a commit that returned survives a crash or power loss), and a wait for
/// the lock instead of an immediate "busy". Runs `schema` once opened.
pub fn open_sqlite(path: &Path, schema: &str) -> rusqlite::Result<rusqlite::Connection> {
    let connection = rusqlite::Connection::open(path)?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    connection.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
    connection.execute_batch(schema)?;
    Ok(connection)
}

/// Add `column` (with its SQL declaration) to `table` unless it is there: a database
/// written by an earlier version gains the columns a later one reads.
pub fn ensure_column(
    connection: &rusqlite::Connection,
    table: &str,
    column: &str,
    declaration: &str,
) -> rusqlite::Result<()> {
    let mut statement = connection.prepare(&format!("PRAGMA table_info({table})"))?;
    let mut names = statement.query_map([], |row| row.get::<_, String>(1))?;
    if names.any(|name| name.is_ok_and(|name| name == column)) {
        return Ok(());
    }
    connection.execute_batch(&format!(
        "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
    ))
}

/// SHA-256 of `bytes` as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Atomically replace `path` with `bytes`: temp file, fsync, rename, fsync directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.{:016x}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        rand::random::<u64>()
    ));
    let result = (|| -> Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Delete `path` and fsync its directory, so the removal survives a crash. Returns
/// whether it existed.
pub fn remove_durably(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
            Ok(true)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error).with_context(|| format!("removing {}", path.display())),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Files and directories this process creates are its user's alone (umask 077).
#[allow(unsafe_code)]
fn make_new_files_private() {
    // SAFETY: umask only sets the process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Take group and other permissions off the regular files and directories under
/// `dir`, `depth` levels down. Links are left alone (a link's target is not the
/// host's to change).
fn make_private(dir: &Path, depth: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let metadata = entry.path().symlink_metadata()?;
        let mode = metadata.permissions().mode();
        if metadata.is_file() && mode & 0o077 != 0 {
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode & 0o700))?;
        } else if metadata.is_dir() {
            if mode & 0o077 != 0 {
                fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode & 0o700))?;
            }
            if depth > 1 {
                make_private(&entry.path(), depth - 1)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_directory_is_the_host_s_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        std::fs::create_dir(&root).expect("made");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let old_file = root.join("services").join("old.json");
        std::fs::create_dir(root.join("services")).expect("made");
        std::fs::write(&old_file, b"{}").expect("written");
        std::fs::set_permissions(&old_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let _data_dir = DataDir::open(&root).expect("opens");
        let mode =
            |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&old_file), 0o600, "an older host's file");
        let new_file = root.join("new");
        std::fs::write(&new_file, b"x").expect("written");
        assert_eq!(mode(&new_file), 0o600, "a new file");
    }

    fn record(name: &str) -> VersionRecord {
        VersionRecord {
            name: name.into(),
            version: "1".into(),
            digest: sha256_hex(b"x"),
            deployed_at: "2026-01-01T00:00:00Z".into(),
            manifest: Manifest::default(),
        }
    }

    #[test]
    fn a_damaged_blob_is_rewritten_when_the_same_bytes_are_stored_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = DataDir::open(dir.path()).expect("open");
        let bytes = b"component bytes".to_vec();
        let digest = sha256_hex(&bytes);
        storage.put_blob(&digest, &bytes).expect("put");
        let path = storage.blob_path(&digest);
        let mut damaged = bytes.clone();
        damaged[0] ^= 0xff;
        fs::write(&path, &damaged).expect("damage");
        assert!(storage.read_blob(&digest).is_err(), "damage is detected");
        storage.put_blob(&digest, &bytes).expect("put again");
        assert_eq!(storage.read_blob(&digest).expect("repaired"), bytes);
    }

    #[test]
    fn one_host_per_data_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDir::open(dir.path()).expect("open");
        let second = DataDir::open(dir.path()).expect_err("in use");
        assert!(second.to_string().contains("in use"), "{second}");
        drop(first);
        DataDir::open(dir.path()).expect("free again once the first is gone");
    }

    #[test]
    fn records_round_trip_and_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = DataDir::open(dir.path()).expect("open");
        storage.put_service("b", &record("b")).expect("put b");
        storage.put_service("a", &record("a")).expect("put a");
        let (mut records, broken) = storage.services::<VersionRecord>().expect("list");
        assert!(broken.is_empty());
        records.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            records.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(storage.remove_record("a").expect("remove"));
        assert!(!storage.remove_record("a").expect("remove again"));
        assert_eq!(
            storage.services::<VersionRecord>().expect("list").0.len(),
            1
        );
    }

    #[test]
    fn corrupt_blob_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = DataDir::open(dir.path()).expect("open");
        let digest = sha256_hex(b"component");
        storage.put_blob(&digest, b"component").expect("put");
        assert_eq!(storage.read_blob(&digest).expect("read"), b"component");
        fs::write(
            dir.path().join("blobs").join(format!("{digest}.wasm")),
            b"evil",
        )
        .expect("tamper");
        assert!(storage.read_blob(&digest).is_err());
    }

    #[test]
    fn broken_records_and_leftover_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("services")).expect("mkdir");
        fs::write(dir.path().join("services/.x.json.1.tmp"), b"partial").expect("tmp");
        fs::write(dir.path().join("services/bad.json"), b"{").expect("bad");
        let storage = DataDir::open(dir.path()).expect("open");
        assert!(!dir.path().join("services/.x.json.1.tmp").exists());
        let (records, broken) = storage.services::<VersionRecord>().expect("list");
        assert!(records.is_empty());
        assert_eq!(broken.len(), 1);
    }
}
