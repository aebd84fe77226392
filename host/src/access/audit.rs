//! The audit log: every admin action that changes something, and every refused
//! attempt, appended as one JSON line to `audit.log` in the data directory and
//! flushed to disk before the answer goes out, so it survives `kill -9`.
//!
//! - **Fails closed**: a change is recorded as `started` before it runs; when that
//!   entry cannot be written the change is refused (the caller answers 503).
//! - **Refusals are rate-limited by who is refused**: anonymous refusals (no or an
//!   unknown token) and refusals of known tokens each have their own budget, so a
//!   flood of the first cannot hide the second. The next entry logged says how many
//!   of each were left out.
//! - **Bounded, configurable history**: the file is rotated past `--audit-file-mb`,
//!   and `--audit-files` files are kept (`audit.log`, `audit.log.1`, …).
//! - **Tamper-evident**: each entry carries `prev`, the hash of the entry before it,
//!   and `hash`, the SHA-256 of `prev` and its own JSON. Editing, removing or
//!   reordering an entry breaks the chain, and a log that ends before the last entry
//!   this host wrote is caught while the host runs; [`verify`] checks all of it.

use anyhow::{Context as _, Result};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::policy::rate::TokenBucket;

/// File in the data directory.
pub const AUDIT_FILE: &str = "audit.log";
/// Refused attempts logged at once, for each kind of refusal.
pub const REFUSED_BURST: u64 = 100;
/// Refused attempts logged per second after the burst, for each kind of refusal.
pub const REFUSED_PER_SECOND: u64 = 10;
/// The `prev` of the first entry ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How much audit history a host keeps.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditSettings {
    /// Size of one audit log file, in MiB, past which it is rotated.
    #[arg(long, env = "SHOAL_AUDIT_FILE_MB", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub audit_file_mb: u64,

    /// Audit log files kept, the current one included (the oldest is deleted past it).
    #[arg(long, env = "SHOAL_AUDIT_FILES", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub audit_files: u32,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            audit_file_mb: 16,
            audit_files: 8,
        }
    }
}

/// How an audited request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Allowed and about to run: written before the change, which is refused if this
    /// cannot be written. Its outcome follows in another entry.
    Started,
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
    /// The HTTP status answered (none for `started`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<u16>,
    /// The deployed component's SHA-256, for deploys.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub digest: Option<String>,
    /// Why it was refused or failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// Refusals of known tokens left out of the log just before this one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refused_not_logged: Option<u64>,
    /// Anonymous refusals left out of the log just before this one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub anonymous_not_logged: Option<u64>,
    /// The hash of the entry before this one ([`GENESIS`] for the first).
    #[serde(default)]
    pub prev: String,
    /// SHA-256 (hex) of `prev`, a newline and the line up to this field.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hash: Option<String>,
}

impl Entry {
    /// A new entry, its chain fields left to [`AuditLog::append`].
    pub fn new(
        token_id: Option<String>,
        action: &str,
        target: Option<String>,
        outcome: Outcome,
    ) -> Self {
        Self {
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            token_id,
            action: action.to_owned(),
            target,
            outcome,
            status: None,
            digest: None,
            reason: None,
            refused_not_logged: None,
            anonymous_not_logged: None,
            prev: String::new(),
            hash: None,
        }
    }
}

/// The hash of an entry whose JSON without its `hash` is `body`, chained to `prev`.
fn chain_hash(prev: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev.as_bytes());
    hasher.update(b"\n");
    hasher.update(body);
    hex::encode(hasher.finalize())
}

/// Split a written line into its body (the JSON it was hashed as) and its hash.
fn split_line(line: &str) -> Option<(String, &str)> {
    const FIELD: &str = ",\"hash\":\"";
    let rest = line.strip_suffix("\"}")?;
    let at = rest.rfind(FIELD)?;
    let hash = &rest[at + FIELD.len()..];
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| (format!("{}}}", &rest[..at]), hash))
}

/// The line of `entry` chained to `prev`, and its hash.
fn chained_line(entry: &mut Entry, prev: &str) -> Result<(Vec<u8>, String)> {
    entry.prev = prev.to_owned();
    entry.hash = None;
    let body = serde_json::to_string(&*entry)?;
    let hash = chain_hash(prev, body.as_bytes());
    let mut line = body.into_bytes();
    line.pop(); // the closing brace
    line.extend_from_slice(format!(",\"hash\":\"{hash}\"}}\n").as_bytes());
    entry.hash = Some(hash.clone());
    Ok((line, hash))
}

struct Writer {
    file: File,
    bytes: u64,
    /// Budget of refusals of known tokens.
    refused: TokenBucket,
    /// Budget of anonymous refusals.
    anonymous: TokenBucket,
    refused_not_logged: u64,
    anonymous_not_logged: u64,
    /// The hash of the last entry written.
    head: String,
}

/// The audit log of one host.
pub struct AuditLog {
    path: PathBuf,
    settings: AuditSettings,
    writer: Mutex<Writer>,
}

fn open_append(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// The last line of a regular file (none if empty), after cutting off a line torn by
/// a crash (it was never acknowledged: the answer waits for the flush).
fn repair_and_read_last_line(path: &Path) -> Result<Option<String>> {
    let Ok(metadata) = std::fs::metadata(path) else {
        return Ok(None);
    };
    if !metadata.is_file() || metadata.len() == 0 {
        return Ok(None);
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    let complete = text
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    if complete < text.len() {
        tracing::warn!(path = %path.display(), "cutting off a torn last line of the audit log");
        file.set_len(complete as u64)?;
        file.sync_all()?;
        text.truncate(complete);
    }
    let last = text[..complete.saturating_sub(1)]
        .rsplit(|&b| b == b'\n')
        .next()
        .filter(|line| !line.is_empty());
    Ok(last.map(|line| String::from_utf8_lossy(line).into_owned()))
}

impl AuditLog {
    /// The log in `data_dir`, keeping the history `settings` say.
    pub fn open(data_dir: &Path, settings: AuditSettings) -> Result<Self> {
        let path = data_dir.join(AUDIT_FILE);
        let mut head = GENESIS.to_owned();
        // The chain continues from the newest entry, in the current file or, right
        // after a rotation, in the newest older one.
        for candidate in std::iter::once(path.clone())
            .chain((1..settings.audit_files).map(|n| rotated(&path, n)))
        {
            if let Some(line) = repair_and_read_last_line(&candidate)? {
                if let Some((_, hash)) = split_line(&line) {
                    head = hash.to_owned();
                }
                break;
            }
        }
        let file = open_append(&path)?;
        let bytes = file.metadata()?.len();
        let now = Instant::now();
        Ok(Self {
            path,
            settings,
            writer: Mutex::new(Writer {
                file,
                bytes,
                refused: TokenBucket::new(REFUSED_BURST, REFUSED_PER_SECOND, now),
                anonymous: TokenBucket::new(REFUSED_BURST, REFUSED_PER_SECOND, now),
                refused_not_logged: 0,
                anonymous_not_logged: 0,
                head,
            }),
        })
    }

    /// Append `entry`, chained to the last one, and flush it to disk. A refused
    /// attempt beyond its kind's rate is counted instead. An error means the entry
    /// may not be on disk.
    pub fn append(&self, mut entry: Entry) -> Result<()> {
        let mut writer = self.writer.lock();
        if entry.outcome == Outcome::Refused {
            let now = Instant::now();
            let writer = &mut *writer;
            let (bucket, skipped) = if entry.token_id.is_none() {
                (&mut writer.anonymous, &mut writer.anonymous_not_logged)
            } else {
                (&mut writer.refused, &mut writer.refused_not_logged)
            };
            if !bucket.try_take(1, now) {
                *skipped += 1;
                return Ok(());
            }
        }
        let skipped = |count: u64| (count > 0).then_some(count);
        entry.refused_not_logged = skipped(writer.refused_not_logged);
        entry.anonymous_not_logged = skipped(writer.anonymous_not_logged);
        let (line, hash) = chained_line(&mut entry, &writer.head)?;
        if writer.bytes + line.len() as u64 > self.settings.audit_file_mb * 1024 * 1024 {
            self.rotate(&mut writer)?;
        }
        let written = writer
            .file
            .write_all(&line)
            .and_then(|()| writer.file.sync_data());
        if let Err(error) = written {
            // Whatever part reached the file is cut off when the log is next opened
            // (a torn line), and the chain goes on from the last complete entry.
            return Err(error).context("writing the audit log");
        }
        writer.bytes += line.len() as u64;
        writer.head = hash;
        writer.refused_not_logged = 0;
        writer.anonymous_not_logged = 0;
        Ok(())
    }

    fn rotate(&self, writer: &mut Writer) -> Result<()> {
        let keep = self.settings.audit_files;
        if keep <= 1 {
            // Only the current file is kept: start it over.
            writer.file.set_len(0)?;
            writer.bytes = 0;
            return Ok(());
        }
        let oldest = rotated(&self.path, keep - 1);
        match std::fs::remove_file(&oldest) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("removing {}", oldest.display()));
            }
        }
        for n in (1..keep - 1).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1))
                    .with_context(|| format!("rotating {}", from.display()))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))
            .with_context(|| format!("rotating {}", self.path.display()))?;
        writer.file = open_append(&self.path)?;
        writer.bytes = 0;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The files of the log, oldest first.
    fn files(&self) -> Vec<PathBuf> {
        files_of(&self.path, self.settings.audit_files)
    }

    /// The last `limit` entries, oldest first. Lines that do not parse are skipped
    /// (`verify` reports them).
    pub fn recent(&self, limit: usize) -> Result<Vec<Entry>> {
        let _writer = self.writer.lock();
        let mut kept = VecDeque::with_capacity(limit.min(10_000));
        for_each_line(&self.files(), |_, line| {
            if let Ok(entry) = serde_json::from_str::<Entry>(line) {
                if kept.len() == limit {
                    kept.pop_front();
                }
                if limit > 0 {
                    kept.push_back(entry);
                }
            }
        })?;
        Ok(kept.into())
    }

    /// Check the chain of every entry kept, and that it ends at the last entry this
    /// host wrote.
    pub fn verify(&self) -> Result<Verification> {
        let writer = self.writer.lock();
        let mut verification = verify_files(&self.files())?;
        if verification.head != writer.head {
            verification.problems.push(format!(
                "the log ends at entry {} but this host last wrote entry {}: entries were \
                 removed from its end, or it was rewritten",
                short(&verification.head),
                short(&writer.head)
            ));
        }
        Ok(verification)
    }
}

/// `audit.log.N`.
fn rotated(path: &Path, n: u32) -> PathBuf {
    path.with_extension(format!("log.{n}"))
}

/// The files of the log at `path` (`files` of them at most), oldest first.
fn files_of(path: &Path, files: u32) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = (1..files).rev().map(|n| rotated(path, n)).collect();
    paths.push(path.to_owned());
    paths
}

/// Call `each` with every line of `files` in order, and the file it is in; missing
/// files are skipped.
fn for_each_line(files: &[PathBuf], mut each: impl FnMut(&Path, &str)) -> Result<()> {
    for path in files {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", path.display()));
            }
        };
        if !file.metadata().is_ok_and(|metadata| metadata.is_file()) {
            continue;
        }
        let mut reader = BufReader::new(file);
        reader.seek(SeekFrom::Start(0))?;
        for line in reader.lines() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            each(path, &line);
        }
    }
    Ok(())
}

/// What checking the chain found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// Entries checked.
    pub entries: u64,
    /// When the first kept entry was written.
    pub first_at: Option<String>,
    /// Whether older entries were rotated out (the first kept one is not the first).
    pub rotated_out: bool,
    /// The hash of the last entry.
    pub head: String,
    /// What is wrong; empty when the chain is intact.
    pub problems: Vec<String>,
}

impl From<Entry> for shoal_api::access::AuditEntry {
    fn from(entry: Entry) -> Self {
        use shoal_api::access::Outcome as Api;
        Self {
            at: entry.at,
            token_id: entry.token_id,
            action: entry.action,
            target: entry.target,
            outcome: match entry.outcome {
                Outcome::Started => Api::Started,
                Outcome::Ok => Api::Ok,
                Outcome::Refused => Api::Refused,
                Outcome::Failed => Api::Failed,
            },
            status: entry.status,
            digest: entry.digest,
            reason: entry.reason,
            refused_not_logged: entry.refused_not_logged,
            anonymous_not_logged: entry.anonymous_not_logged,
            prev: entry.prev,
            hash: entry.hash,
            host: None,
        }
    }
}

impl From<Verification> for shoal_api::access::AuditVerification {
    fn from(found: Verification) -> Self {
        Self {
            intact: found.problems.is_empty(),
            entries: found.entries,
            first_at: found.first_at,
            rotated_out: found.rotated_out,
            head: found.head,
            problems: found.problems,
        }
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// Check the chain through `files` (oldest first), as `shoal audit verify` does on a
/// data directory.
pub fn verify_files(files: &[PathBuf]) -> Result<Verification> {
    let mut verification = Verification {
        head: GENESIS.to_owned(),
        ..Default::default()
    };
    let mut previous: Option<String> = None;
    for_each_line(files, |path, line| {
        let at = || {
            format!(
                "{} entry {}",
                path.file_name()
                    .map_or_else(Default::default, |n| n.to_string_lossy()),
                verification.entries + 1
            )
        };
        let Some((body, hash)) = split_line(line) else {
            verification
                .problems
                .push(format!("{}: not a chained entry", at()));
            verification.entries += 1;
            return;
        };
        let Ok(entry) = serde_json::from_str::<Entry>(&body) else {
            verification
                .problems
                .push(format!("{}: does not parse", at()));
            verification.entries += 1;
            return;
        };
        match &previous {
            None => {
                verification.first_at = Some(entry.at.clone());
                verification.rotated_out = entry.prev != GENESIS;
            }
            Some(previous) if *previous != entry.prev => {
                verification.problems.push(format!(
                    "{}: follows entry {} but the entry before it is {} (an entry was removed \
                     or reordered)",
                    at(),
                    short(&entry.prev),
                    short(previous)
                ));
            }
            Some(_) => {}
        }
        if chain_hash(&entry.prev, body.as_bytes()) != hash {
            verification.problems.push(format!(
                "{}: its content does not match its hash (it was edited)",
                at()
            ));
        }
        previous = Some(hash.to_owned());
        verification.head = hash.to_owned();
        verification.entries += 1;
    })?;
    Ok(verification)
}

/// The files of the audit log in `data_dir`, oldest first, for offline checks: every
/// `audit.log.N` there, whatever the host's `--audit-files`.
pub fn files_in(data_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut numbered: Vec<(u32, PathBuf)> = Vec::new();
    for entry in
        std::fs::read_dir(data_dir).with_context(|| format!("reading {}", data_dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|name| name.strip_prefix("audit.log."))
            .and_then(|n| n.parse::<u32>().ok())
        {
            numbered.push((n, entry.path()));
        }
    }
    numbered.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut files: Vec<PathBuf> = numbered.into_iter().map(|(_, path)| path).collect();
    files.push(data_dir.join(AUDIT_FILE));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str, outcome: Outcome) -> Entry {
        Entry::new(
            Some("operator".into()),
            action,
            Some("hello".into()),
            outcome,
        )
    }

    fn anonymous(action: &str) -> Entry {
        Entry::new(None, action, None, Outcome::Refused)
    }

    fn open(dir: &Path) -> AuditLog {
        AuditLog::open(dir, AuditSettings::default()).expect("open")
    }

    #[test]
    fn entries_are_kept_in_order_across_reopening() {
        let dir = tempfile::tempdir().expect("dir");
        let log = open(dir.path());
        log.append(entry("deploy", Outcome::Ok)).expect("append");
        log.append(entry("remove", Outcome::Failed))
            .expect("append");
        drop(log);
        let log = open(dir.path());
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
        let verification = log.verify().expect("verify");
        assert!(verification.problems.is_empty(), "{verification:?}");
        assert_eq!(verification.entries, 3);
        assert!(!verification.rotated_out);
    }

    #[test]
    fn a_flood_of_anonymous_refusals_does_not_hide_a_known_token_s() {
        let dir = tempfile::tempdir().expect("dir");
        let log = open(dir.path());
        for _ in 0..(REFUSED_BURST + 50) {
            log.append(anonymous("list")).expect("append");
        }
        log.append(entry("deploy", Outcome::Refused))
            .expect("append");
        log.append(entry("deploy", Outcome::Ok)).expect("append");
        let entries = log.recent(1000).expect("read");
        assert!(
            entries.len() <= REFUSED_BURST as usize + 10,
            "{}",
            entries.len()
        );
        let insider = &entries[entries.len() - 2];
        assert_eq!(insider.outcome, Outcome::Refused);
        assert_eq!(insider.token_id.as_deref(), Some("operator"));
        assert!(
            insider.anonymous_not_logged.unwrap_or(0) >= 40,
            "{insider:?}"
        );
        assert_eq!(entries.last().expect("last").anonymous_not_logged, None);
    }

    #[test]
    fn history_is_rotated_over_the_files_kept_and_stays_chained() {
        let dir = tempfile::tempdir().expect("dir");
        let settings = AuditSettings {
            audit_file_mb: 1,
            audit_files: 3,
        };
        let log = AuditLog::open(dir.path(), settings.clone()).expect("open");
        let reason = "x".repeat(400);
        for n in 0..8000 {
            let mut e = entry("deploy", Outcome::Ok);
            e.target = Some(format!("s{n}"));
            e.reason = Some(reason.clone());
            log.append(e).expect("append");
        }
        assert!(rotated(&dir.path().join(AUDIT_FILE), 2).exists());
        assert!(
            !rotated(&dir.path().join(AUDIT_FILE), 3).exists(),
            "3 files kept"
        );
        let verification = log.verify().expect("verify");
        assert!(verification.problems.is_empty(), "{verification:?}");
        assert!(verification.rotated_out);
        // Reopened, the chain goes on from the newest entry.
        drop(log);
        let log = AuditLog::open(dir.path(), settings).expect("reopen");
        log.append(entry("scale", Outcome::Ok)).expect("append");
        let verification = log.verify().expect("verify");
        assert!(verification.problems.is_empty(), "{verification:?}");
        let offline = verify_files(&files_in(dir.path()).expect("files")).expect("verify");
        assert_eq!(offline, verification);
    }

    #[test]
    fn an_edited_removed_or_cut_off_entry_breaks_the_chain() {
        let dir = tempfile::tempdir().expect("dir");
        let log = open(dir.path());
        for action in ["deploy", "scale", "remove", "rollback"] {
            log.append(entry(action, Outcome::Ok)).expect("append");
        }
        let path = dir.path().join(AUDIT_FILE);
        let original = std::fs::read_to_string(&path).expect("read");
        let check = |text: &str| {
            std::fs::write(&path, text).expect("write");
            log.verify().expect("verify").problems
        };
        assert!(check(&original).is_empty());
        let edited = original.replacen("\"scale\"", "\"deplo\"", 1);
        assert!(
            check(&edited).iter().any(|p| p.contains("was edited")),
            "{:?}",
            check(&edited)
        );
        let lines: Vec<&str> = original.lines().collect();
        let removed = format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3]);
        assert!(
            check(&removed)
                .iter()
                .any(|p| p.contains("removed or reordered"))
        );
        let cut = format!("{}\n{}\n{}\n", lines[0], lines[1], lines[2]);
        assert!(
            check(&cut)
                .iter()
                .any(|p| p.contains("removed from its end"))
        );
        std::fs::write(&path, &original).expect("restore");
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().expect("dir");
        let log = open(dir.path());
        log.append(entry("deploy", Outcome::Ok)).expect("append");
        drop(log);
        let path = dir.path().join(AUDIT_FILE);
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(b"{\"at\":\"2026").expect("tear");
        drop(file);
        let log = open(dir.path());
        log.append(entry("scale", Outcome::Ok)).expect("append");
        let verification = log.verify().expect("verify");
        assert!(verification.problems.is_empty(), "{verification:?}");
        assert_eq!(verification.entries, 2);
    }

    #[test]
    fn a_log_that_cannot_be_written_says_so() {
        let dir = tempfile::tempdir().expect("dir");
        std::os::unix::fs::symlink("/dev/full", dir.path().join(AUDIT_FILE)).expect("link");
        let log = open(dir.path());
        assert!(log.append(entry("deploy", Outcome::Started)).is_err());
    }
}
