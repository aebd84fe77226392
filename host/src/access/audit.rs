//! The audit log: every admin action that changes something, and every refused
//! attempt, appended as one JSON line to `audit.log` in the data directory and
//! flushed to disk before the answer goes out, so it survives `kill -9`.
//!
//! Refused attempts are logged at most [`REFUSED_BURST`] at once and
//! [`REFUSED_PER_SECOND`] after that, so a client hammering the API without a valid
//! token cannot fill the disk or tie it up with flushes; the next entry logged says
//! how many were left out. The file is rotated once it passes [`MAX_FILE_BYTES`]
//! (one older file, `audit.log.1`, is kept).

use anyhow::{Context as _, Result};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::policy::rate::TokenBucket;

/// File in the data directory.
pub const AUDIT_FILE: &str = "audit.log";
/// Size past which the file is rotated.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Refused attempts logged at once.
pub const REFUSED_BURST: u64 = 100;
/// Refused attempts logged per second after the burst.
pub const REFUSED_PER_SECOND: u64 = 10;

/// How an audited request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused: no or a wrong token, a scope too narrow, or a bad request.
    Refused,
    /// Accepted but failed on the host's side.
    Failed,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When (RFC 3339, milliseconds).
    pub at: String,
    /// The token used (`operator` for the operator's token); none when no known
    /// token was presented.
    pub token_id: Option<String>,
    /// What was attempted: `deploy`, `remove`, `scale`, `canary`, `rollback`, …
    pub action: String,
    /// What it was attempted on (a service, token or dead letter), if anything.
    pub target: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// The HTTP status answered.
    pub status: u16,
    /// The deployed component's SHA-256, for deploys.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub digest: Option<String>,
    /// Why it was refused or failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// Refused attempts left out of the log just before this one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refused_not_logged: Option<u64>,
}

struct Writer {
    file: File,
    bytes: u64,
    refused: TokenBucket,
    not_logged: u64,
}

/// The audit log of one host.
pub struct AuditLog {
    path: PathBuf,
    writer: Mutex<Writer>,
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

impl AuditLog {
    /// The log in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(AUDIT_FILE);
        let file = open_append(&path)?;
        let bytes = file.metadata()?.len();
        Ok(Self {
            path,
            writer: Mutex::new(Writer {
                file,
                bytes,
                refused: TokenBucket::new(REFUSED_BURST, REFUSED_PER_SECOND, Instant::now()),
                not_logged: 0,
            }),
        })
    }

    /// Append `entry` and flush it to disk. A refused attempt beyond the rate is
    /// counted instead. An error means the entry may not be on disk.
    pub fn append(&self, mut entry: Entry) -> Result<()> {
        let mut writer = self.writer.lock();
        if entry.outcome == Outcome::Refused && !writer.refused.try_take(1, Instant::now()) {
            writer.not_logged += 1;
            return Ok(());
        }
        if writer.not_logged > 0 {
            entry.refused_not_logged = Some(std::mem::take(&mut writer.not_logged));
        }
        let mut line = serde_json::to_vec(&entry)?;
        line.push(b'\n');
        if writer.bytes + line.len() as u64 > MAX_FILE_BYTES {
            self.rotate(&mut writer)?;
        }
        writer.file.write_all(&line)?;
        writer.file.sync_data()?;
        writer.bytes += line.len() as u64;
        Ok(())
    }

    fn rotate(&self, writer: &mut Writer) -> Result<()> {
        let older = self.path.with_extension("log.1");
        std::fs::rename(&self.path, &older)
            .with_context(|| format!("rotating {}", self.path.display()))?;
        writer.file = open_append(&self.path)?;
        writer.bytes = 0;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The last `limit` entries, oldest first. Lines that do not parse (a torn
    /// write at a crash) are skipped.
    pub fn recent(&self, limit: usize) -> Result<Vec<Entry>> {
        let _writer = self.writer.lock();
        let mut kept = VecDeque::with_capacity(limit.min(10_000));
        for path in [self.path.with_extension("log.1"), self.path.clone()] {
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => {
                    return Err(error).with_context(|| format!("reading {}", path.display()));
                }
            };
            for line in BufReader::new(file).lines() {
                let Ok(entry) = serde_json::from_str::<Entry>(&line?) else {
                    continue;
                };
                if kept.len() == limit {
                    kept.pop_front();
                }
                if limit > 0 {
                    kept.push_back(entry);
                }
            }
        }
        Ok(kept.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str, outcome: Outcome) -> Entry {
        Entry {
            at: "2026-12-01T00:00:00.000Z".into(),
            token_id: Some("operator".into()),
            action: action.into(),
            target: Some("hello".into()),
            outcome,
            status: 200,
            digest: None,
            reason: None,
            refused_not_logged: None,
        }
    }

    #[test]
    fn entries_are_kept_in_order_across_reopening() {
        let dir = tempfile::tempdir().expect("dir");
        let log = AuditLog::open(dir.path()).expect("open");
        log.append(entry("deploy", Outcome::Ok)).expect("append");
        log.append(entry("remove", Outcome::Failed))
            .expect("append");
        drop(log);
        let log = AuditLog::open(dir.path()).expect("reopen");
        log.append(entry("scale", Outcome::Ok)).expect("append");
        let actions: Vec<String> = log
            .recent(10)
            .expect("read")
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(actions, ["deploy", "remove", "scale"]);
        let last: Vec<String> = log
            .recent(2)
            .expect("read")
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(last, ["remove", "scale"]);
    }

    #[test]
    fn a_flood_of_refused_attempts_is_counted_not_written() {
        let dir = tempfile::tempdir().expect("dir");
        let log = AuditLog::open(dir.path()).expect("open");
        for _ in 0..(REFUSED_BURST + 50) {
            log.append(entry("list", Outcome::Refused)).expect("append");
        }
        log.append(entry("deploy", Outcome::Ok)).expect("append");
        let entries = log.recent(1000).expect("read");
        assert!(
            entries.len() <= REFUSED_BURST as usize + 10,
            "{}",
            entries.len()
        );
        let last = entries.last().expect("last");
        assert_eq!(last.action, "deploy");
        assert!(last.refused_not_logged.unwrap_or(0) >= 40, "{last:?}");
    }
}
