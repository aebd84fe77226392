//! The recent log lines of each service (its log import, stdout and stderr), kept in
//! a bounded ring in the host so an operator can read and follow them
//! (`GET /v1/services/{name}/logs`, `shoal logs -f`) without the host's stderr.
//!
//! Each ring holds at most [`MAX_LINES`] lines and [`MAX_RING_BYTES`]; all rings
//! together hold at most [`MAX_TOTAL_BYTES`], past which a ring makes room only from
//! its own oldest lines. Followers get new lines through a bounded channel: one that
//! falls behind is told how many it missed, and never slows the guest down.

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::broadcast;

/// Lines one ring keeps.
pub const MAX_LINES: usize = 1000;
/// Bytes one ring keeps.
pub const MAX_RING_BYTES: usize = 256 * 1024;
/// Bytes all rings keep together.
pub const MAX_TOTAL_BYTES: usize = 64 * 1024 * 1024;
/// Lines a follower may fall behind before it misses some.
const FOLLOW_BUFFER: usize = 512;

/// One guest log line.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Its number in the service's ring (increasing; gaps mean lines left out).
    pub seq: u64,
    /// When it was written (RFC 3339).
    pub at: String,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// `log`, `stdout` or `stderr`.
    pub source: &'static str,
    /// The version that wrote it.
    pub version: String,
    /// The request it belongs to.
    pub request_id: String,
    /// The message, escaped and with secrets masked.
    pub message: String,
    /// `key="value"` fields.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fields: String,
}

impl LogLine {
    fn bytes(&self) -> usize {
        self.message.len() + self.fields.len() + self.request_id.len() + self.version.len() + 64
    }
}

/// The rank of a level name (for "at least this level"); `None` for an unknown name.
pub fn level_rank(level: &str) -> Option<u8> {
    match level {
        "trace" => Some(0),
        "debug" => Some(1),
        "info" => Some(2),
        "warn" => Some(3),
        "error" => Some(4),
        _ => None,
    }
}

/// One service's ring.
#[derive(Debug)]
pub struct ServiceLogs {
    state: Mutex<Ring>,
    followers: broadcast::Sender<Arc<LogLine>>,
    total: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<Arc<LogLine>>,
    bytes: usize,
    next_seq: u64,
}

impl ServiceLogs {
    fn new(total: Arc<AtomicUsize>) -> Self {
        Self {
            state: Mutex::default(),
            followers: broadcast::channel(FOLLOW_BUFFER).0,
            total,
        }
    }

    /// Keep `line` (its `seq` is set here) and hand it to every follower.
    pub fn push(&self, mut line: LogLine) {
        let size = line.bytes();
        let mut ring = self.state.lock();
        line.seq = ring.next_seq;
        ring.next_seq += 1;
        let line = Arc::new(line);
        ring.lines.push_back(line.clone());
        ring.bytes += size;
        self.total.fetch_add(size, Ordering::Relaxed);
        while ring.lines.len() > MAX_LINES
            || ring.bytes > MAX_RING_BYTES
            || (self.total.load(Ordering::Relaxed) > MAX_TOTAL_BYTES && ring.lines.len() > 1)
        {
            let Some(oldest) = ring.lines.pop_front() else {
                break;
            };
            let freed = oldest.bytes();
            ring.bytes -= freed;
            self.total.fetch_sub(freed, Ordering::Relaxed);
        }
        // Sent under the lock (it never blocks), so followers get lines in `seq`
        // order and one subscribing now never sees this line twice. No follower
        // is not an error.
        let _ = self.followers.send(line);
    }

    /// The last `limit` kept lines that `keep` accepts, oldest first.
    pub fn recent(&self, limit: usize, keep: impl Fn(&LogLine) -> bool) -> Vec<Arc<LogLine>> {
        self.state.lock().last(limit, keep)
    }

    /// The kept lines and a receiver of every line after them, taken together so
    /// that none is missed or seen twice.
    pub fn follow(
        &self,
        limit: usize,
        keep: impl Fn(&LogLine) -> bool,
    ) -> (Vec<Arc<LogLine>>, broadcast::Receiver<Arc<LogLine>>) {
        let ring = self.state.lock();
        let receiver = self.followers.subscribe();
        (ring.last(limit, keep), receiver)
    }
}

impl Ring {
    fn last(&self, limit: usize, keep: impl Fn(&LogLine) -> bool) -> Vec<Arc<LogLine>> {
        let mut lines: Vec<Arc<LogLine>> = self
            .lines
            .iter()
            .rev()
            .filter(|line| keep(line))
            .take(limit)
            .cloned()
            .collect();
        lines.reverse();
        lines
    }
}

impl Default for ServiceLogs {
    /// A ring counted on its own (for tools and tests).
    fn default() -> Self {
        Self::new(Arc::default())
    }
}

impl Drop for ServiceLogs {
    fn drop(&mut self) {
        self.total
            .fetch_sub(self.state.get_mut().bytes, Ordering::Relaxed);
    }
}

/// Every service's ring.
#[derive(Debug)]
pub struct GuestLogs {
    rings: Mutex<HashMap<String, Arc<ServiceLogs>>>,
    total: Arc<AtomicUsize>,
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for GuestLogs {
    fn default() -> Self {
        Self {
            rings: Mutex::default(),
            total: Arc::default(),
            closing: tokio::sync::watch::channel(false).0,
        }
    }
}

impl GuestLogs {
    /// The host is shutting down: every follower's stream ends.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Becomes true when the host shuts down.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// The ring of `service`, made on first use; every version shares it.
    pub fn service(&self, service: &str) -> Arc<ServiceLogs> {
        self.rings
            .lock()
            .entry(service.to_owned())
            .or_insert_with(|| Arc::new(ServiceLogs::new(self.total.clone())))
            .clone()
    }

    /// The ring of `service`, if it has one.
    pub fn get(&self, service: &str) -> Option<Arc<ServiceLogs>> {
        self.rings.lock().get(service).cloned()
    }

    /// Forget `service`'s lines (it was removed); its followers' streams end once the
    /// last running version is gone.
    pub fn forget(&self, service: &str) {
        self.rings.lock().remove(service);
    }

    /// Bytes kept by all rings.
    pub fn bytes(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(message: &str, level: &'static str) -> LogLine {
        LogLine {
            seq: 0,
            at: "now".into(),
            level,
            source: "log",
            version: "1".into(),
            request_id: "r".into(),
            message: message.into(),
            fields: String::new(),
        }
    }

    #[test]
    fn rings_are_bounded_and_followers_see_what_comes_after() {
        let logs = GuestLogs::default();
        let ring = logs.service("a");
        for i in 0..(MAX_LINES + 10) {
            ring.push(line(&format!("m{i}"), "info"));
        }
        let recent = ring.recent(usize::MAX, |_| true);
        assert_eq!(recent.len(), MAX_LINES);
        assert_eq!(recent[0].seq, 10);
        ring.push(line(&"x".repeat(200 * 1024), "warn"));
        ring.push(line(&"y".repeat(200 * 1024), "error"));
        let kept = ring.recent(usize::MAX, |_| true);
        assert!(kept.iter().map(|l| l.bytes()).sum::<usize>() <= MAX_RING_BYTES);
        let (tail, mut receiver) = ring.follow(1, |l| l.level == "error");
        assert_eq!(tail.len(), 1);
        ring.push(line("after", "info"));
        let next = receiver.try_recv().expect("followed");
        assert_eq!(next.message, "after");
        assert!(next.seq > tail[0].seq);
        drop(ring);
        logs.forget("a");
        assert!(logs.get("a").is_none());
        assert_eq!(logs.bytes(), 0, "a forgotten ring gives its bytes back");
    }

    #[test]
    fn levels_rank() {
        assert!(level_rank("warn") > level_rank("info"));
        assert_eq!(level_rank("loud"), None);
    }
}
