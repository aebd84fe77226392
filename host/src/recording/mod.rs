//! Recorded requests, for debugging a service: what a request brought (head and
//! body), what the service answered, and its fault, kept for the requests a
//! service's recording mode picks (`[debug] record` in its manifest, or set live).
//! Each service's recordings are a bounded ring in the data directory (a file each,
//! the oldest dropped and counted), written off the serving path. Header values that
//! carry credentials and the operator's secret values are masked before anything is
//! written.

pub mod journal;

pub use shoal_api::recordings::{Body, Listing, Message, Received, Recording, Summary};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Most bytes of a request or response body kept in a recording.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Recordings being written at once; beyond it, new ones are dropped (and counted).
const MAX_PENDING_WRITES: usize = 64;
/// Words that mark a header as carrying a credential: its value is never written.
const CREDENTIAL_WORDS: &[&str] = &[
    "auth", "cookie", "token", "key", "secret", "session", "password",
];

/// Whether the header `name` (lower case) carries a credential.
pub fn is_credential_header(name: &str) -> bool {
    CREDENTIAL_WORDS.iter().any(|word| name.contains(word))
}

/// How much each service's recordings may hold (`shoal serve` flags).
#[derive(Debug, Clone, clap::Args)]
pub struct RecordingSettings {
    /// Most recorded requests one service keeps; older ones are dropped (and counted).
    #[arg(long, env = "SHOAL_MAX_RECORDINGS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_recordings: u64,
    /// Most MiB of recorded requests one service keeps.
    #[arg(long, env = "SHOAL_MAX_RECORDINGS_MB", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_recordings_mb: u64,
}

/// Which requests of a service are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Mode {
    /// None (the default): recording costs one check per request.
    #[default]
    Off,
    /// Those that failed: a 5xx, a fault, or a gRPC server-failure status.
    Failed,
    /// That share of all requests (0 < ratio ≤ 1), failed or not.
    Ratio(f64),
}

impl Mode {
    /// The mode a manifest or the admin API names: `off`, `failed`, or a ratio.
    pub fn parse(text: &str) -> Result<Mode, String> {
        match text {
            "off" => Ok(Mode::Off),
            "failed" => Ok(Mode::Failed),
            ratio => match ratio.parse::<f64>() {
                Ok(value) => Mode::ratio(value),
                Err(_) => Err(format!(
                    "`{ratio}` is not a recording mode: `off`, `failed`, or a ratio in (0, 1]"
                )),
            },
        }
    }

    /// A sampling ratio in (0, 1] (0 is `off`).
    pub fn ratio(value: f64) -> Result<Mode, String> {
        if value == 0.0 {
            return Ok(Mode::Off);
        }
        if !(value > 0.0 && value <= 1.0) {
            return Err(format!("a recording ratio is in (0, 1], not {value}"));
        }
        Ok(Mode::Ratio(value))
    }

    /// Whether a request that `failed` is kept, `draw` a uniform number in [0, 1).
    pub fn keeps(self, failed: bool, draw: f64) -> bool {
        match self {
            Mode::Off => false,
            Mode::Failed => failed,
            Mode::Ratio(ratio) => draw < ratio,
        }
    }

    /// Its name, as [`Mode::parse`] reads it.
    pub fn name(self) -> String {
        match self {
            Mode::Off => "off".to_owned(),
            Mode::Failed => "failed".to_owned(),
            Mode::Ratio(ratio) => ratio.to_string(),
        }
    }
}

/// `bytes` as a recorded body, secret values masked.
pub fn body_of(bytes: &[u8], redactor: &crate::policy::redact::Redactor) -> Body {
    let masked = redactor.redact_bytes(bytes);
    match std::str::from_utf8(&masked) {
        Ok(text) => Body::Text(text.to_owned()),
        Err(_) => {
            use base64::Engine as _;
            Body::Base64(base64::engine::general_purpose::STANDARD.encode(&masked))
        }
    }
}

/// A recorded body's bytes (`None`: base64 that does not decode).
pub fn bytes_of(body: &Body) -> Option<Vec<u8>> {
    use base64::Engine as _;
    match body {
        Body::Text(text) => Some(text.clone().into_bytes()),
        Body::Base64(text) => base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .ok(),
    }
}

/// `headers` as recorded: credentials masked, secret values masked.
pub fn headers_of(
    headers: &http::HeaderMap,
    redactor: &crate::policy::redact::Redactor,
) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = if is_credential_header(name.as_str()) {
                crate::policy::redact::MASK.to_owned()
            } else {
                String::from_utf8_lossy(&redactor.redact_bytes(value.as_bytes())).into_owned()
            };
            (name.as_str().to_owned(), value)
        })
        .collect()
}

/// What a listing shows of `recording`.
pub fn summary_of(recording: &Recording) -> Summary {
    Summary {
        id: recording.id.clone(),
        at: recording.at.clone(),
        version: recording.version.clone(),
        request_id: recording.request_id.clone(),
        method: recording.request.method.clone(),
        path: recording.request.path.clone(),
        status: recording.response.status,
        fault: recording.fault.clone(),
    }
}

/// The host's recordings: a ring per service under one directory.
pub struct Recordings {
    root: PathBuf,
    /// Most recordings a service keeps.
    max_count: usize,
    /// Most bytes of recordings a service keeps.
    max_bytes: u64,
    /// Writes not yet done.
    pending: AtomicUsize,
    /// Recordings dropped because too many writes were pending.
    pub dropped_writes: AtomicU64,
    /// Serialises ring changes (writes are rare: only kept requests).
    lock: parking_lot::Mutex<()>,
}

impl Recordings {
    /// Rings under `root`, each keeping at most `max_count` recordings and
    /// `max_bytes` bytes.
    pub fn new(root: PathBuf, max_count: usize, max_bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            root,
            max_count: max_count.max(1),
            max_bytes: max_bytes.max(1),
            pending: AtomicUsize::new(0),
            dropped_writes: AtomicU64::new(0),
            lock: parking_lot::Mutex::new(()),
        })
    }

    /// Keep `recording`, written in the background; dropped (and counted) when too
    /// many writes are pending, so a storm of failures cannot queue without bound.
    /// `wanted` is asked again, under the ring's lock, just before the write: a
    /// recording of a service removed meanwhile is not written.
    pub fn submit(
        self: &Arc<Self>,
        recording: Recording,
        wanted: impl Fn() -> bool + Send + 'static,
    ) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_WRITES {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.dropped_writes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let this = self.clone();
        let write = move || {
            if let Err(error) = this.push_if(&recording, wanted) {
                tracing::warn!(service = %recording.service, %error, "cannot keep a recording");
            }
            this.pending.fetch_sub(1, Ordering::AcqRel);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(write);
            }
            Err(_) => write(),
        }
    }

    fn dir(&self, service: &str) -> PathBuf {
        self.root.join(service)
    }

    /// Write `recording` into its service's ring and trim the ring to its bounds.
    pub fn push(&self, recording: &Recording) -> std::io::Result<()> {
        self.push_if(recording, || true)
    }

    /// [`Recordings::push`], if `wanted` still says so under the ring's lock.
    fn push_if(&self, recording: &Recording, wanted: impl Fn() -> bool) -> std::io::Result<()> {
        let _guard = self.lock.lock();
        if !wanted() {
            return Ok(());
        }
        let dir = self.dir(&recording.service);
        std::fs::create_dir_all(&dir)?;
        let bytes = serde_json::to_vec(recording).map_err(std::io::Error::other)?;
        let temporary = dir.join(format!(".{}.json.tmp", recording.id));
        let written = std::fs::write(&temporary, &bytes)
            .and_then(|()| std::fs::rename(&temporary, dir.join(format!("{}.json", recording.id))));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(error);
        }
        self.trim(&dir)
    }

    /// Drop the oldest recordings of `dir` until it is within the bounds.
    fn trim(&self, dir: &Path) -> std::io::Result<()> {
        let mut files = entries(dir)?;
        let mut total: u64 = files.iter().map(|(_, _, size)| size).sum();
        let mut dropped = 0u64;
        // Oldest first: ids start with the time they were made.
        files.sort();
        let mut index = 0;
        while files.len() - index > self.max_count
            || (total > self.max_bytes && files.len() - index > 1)
        {
            let (_, path, size) = &files[index];
            std::fs::remove_file(path)?;
            total -= size;
            dropped += 1;
            index += 1;
        }
        if dropped > 0 {
            let counter = dir.join("dropped");
            let before: u64 = std::fs::read_to_string(&counter)
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .unwrap_or(0);
            std::fs::write(counter, (before + dropped).to_string())?;
        }
        Ok(())
    }

    /// `service`'s recordings, newest first, with `mode` as the listing's mode.
    pub fn list(&self, service: &str, mode: Mode) -> std::io::Result<Listing> {
        let dir = self.dir(service);
        let mut files = match entries(&dir) {
            Ok(files) => files,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error),
        };
        files.sort();
        files.reverse();
        let recordings = files
            .iter()
            .filter_map(|(_, path, _)| read(path).ok())
            .map(|recording| summary_of(&recording))
            .collect();
        let dropped = std::fs::read_to_string(dir.join("dropped"))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        Ok(Listing {
            recordings,
            dropped,
            record: mode.name(),
        })
    }

    /// One recording of `service`, if it is still kept.
    pub fn get(&self, service: &str, id: &str) -> std::io::Result<Option<Recording>> {
        if !valid_id(id) {
            return Ok(None);
        }
        match read(&self.dir(service).join(format!("{id}.json"))) {
            Ok(recording) => Ok(Some(recording)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Forget `service`'s recordings (it was removed).
    pub fn forget(&self, service: &str) {
        let _guard = self.lock.lock();
        let _ = std::fs::remove_dir_all(self.dir(service));
    }
}

/// A new recording id: the time in microseconds (so ids sort oldest first) and
/// random bits.
pub fn new_id() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros());
    format!("{micros:016x}-{:08x}", rand::random::<u32>())
}

/// Whether `id` is one [`new_id`] could have made (and so names no other file).
fn valid_id(id: &str) -> bool {
    id.len() == 25
        && id.as_bytes()[16] == b'-'
        && id
            .bytes()
            .enumerate()
            .all(|(index, byte)| index == 16 || byte.is_ascii_hexdigit())
}

/// The recordings of `dir`: (id, path, size).
fn entries(dir: &Path) -> std::io::Result<Vec<(String, PathBuf, u64)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(".json")
            && valid_id(id)
        {
            files.push((id.to_owned(), entry.path(), entry.metadata()?.len()));
        }
    }
    Ok(files)
}

fn read(path: &Path) -> std::io::Result<Recording> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recording(service: &str, body: &str) -> Recording {
        let message = |status| Message {
            method: String::new(),
            path: String::new(),
            status,
            headers: Vec::new(),
            body: Body::Text(body.to_owned()),
            truncated: false,
        };
        Recording {
            id: new_id(),
            service: service.to_owned(),
            version: "1".to_owned(),
            request_id: "r".to_owned(),
            at: "2026-12-07T00:00:00Z".to_owned(),
            duration_ms: 1.0,
            request: message(0),
            response: message(500),
            fault: Some("trap".to_owned()),
            grpc_status: None,
            received: Default::default(),
        }
    }

    #[test]
    fn modes_parse_and_pick_requests() {
        assert_eq!(Mode::parse("off"), Ok(Mode::Off));
        assert_eq!(Mode::parse("failed"), Ok(Mode::Failed));
        assert_eq!(Mode::parse("0.25"), Ok(Mode::Ratio(0.25)));
        assert_eq!(Mode::parse("0"), Ok(Mode::Off));
        for bad in ["1.5", "-0.1", "NaN", "all", ""] {
            assert!(Mode::parse(bad).is_err(), "{bad}");
        }
        assert!(Mode::Failed.keeps(true, 0.9));
        assert!(!Mode::Failed.keeps(false, 0.0));
        assert!(Mode::Ratio(0.25).keeps(false, 0.2));
        assert!(!Mode::Ratio(0.25).keeps(true, 0.3));
        assert!(!Mode::Off.keeps(true, 0.0));
    }

    #[test]
    fn a_ring_keeps_the_newest_within_its_bounds_and_counts_the_rest() {
        let root = tempfile::tempdir().expect("temp dir");
        let ring = Recordings::new(root.path().to_path_buf(), 3, 1 << 20);
        let mut ids = Vec::new();
        for index in 0..5 {
            let recording = recording("svc", &format!("body {index}"));
            ids.push(recording.id.clone());
            ring.push(&recording).expect("push");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let listing = ring.list("svc", Mode::Failed).expect("list");
        let kept: Vec<&str> = listing.recordings.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(kept, [&ids[4], &ids[3], &ids[2]]);
        assert_eq!(listing.dropped, 2);
        assert!(ring.get("svc", &ids[0]).expect("get").is_none());
        assert_eq!(
            ring.get("svc", &ids[4])
                .expect("get")
                .map(|r| r.request.body),
            Some(Body::Text("body 4".to_owned()))
        );
        // A recording of a service removed meanwhile is not written.
        ring.push_if(&recording("gone", "late"), || false)
            .expect("push");
        assert!(
            ring.list("gone", Mode::Off)
                .expect("list")
                .recordings
                .is_empty()
        );
        assert!(!root.path().join("gone").exists());
        // Ids that are not the ring's own name no file.
        assert!(ring.get("svc", "../../etc/passwd").expect("get").is_none());
        assert!(
            ring.list("other", Mode::Off)
                .expect("list")
                .recordings
                .is_empty()
        );
        // Bytes bound: one big recording leaves only itself.
        let small = Recordings::new(root.path().join("small"), 10, 600);
        small.push(&recording("svc", "a")).expect("push");
        small
            .push(&recording("svc", &"b".repeat(500)))
            .expect("push");
        assert_eq!(
            small
                .list("svc", Mode::Failed)
                .expect("list")
                .recordings
                .len(),
            1
        );
    }

    #[test]
    fn credentials_and_secrets_are_masked() {
        let redactor = crate::policy::redact::Redactor::default();
        redactor.set_values(["s3cr3t-value-1"]);
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer abc".parse().expect("value"));
        headers.insert("x-api-key", "k-123".parse().expect("value"));
        headers.insert("x-note", "has s3cr3t-value-1 in it".parse().expect("value"));
        let recorded = headers_of(&headers, &redactor);
        assert!(recorded.contains(&("authorization".into(), crate::policy::redact::MASK.into())));
        assert!(recorded.contains(&("x-api-key".into(), crate::policy::redact::MASK.into())));
        assert!(recorded.iter().all(|(_, value)| !value.contains("s3cr3t")));
        assert_eq!(
            body_of(b"token=s3cr3t-value-1", &redactor),
            Body::Text(format!("token={}", crate::policy::redact::MASK))
        );
        assert!(matches!(body_of(&[0xff, 0xfe], &redactor), Body::Base64(_)));
    }
}
