//! What one request received from outside, in order: kept while a recorded request
//! runs, and played back in its place when the request is replayed.
//!
//! A host call that brings a value in from outside the guest (a store read, a
//! caller response, an outgoing `wasi:http` response, a clock reading, random
//! bytes) goes through [`call`]: with no journal it runs as always; recording, it runs
//! and its result is kept; replaying, it does not run at all and the recorded result
//! is returned instead. A replay that asks for a call the recording does not have at
//! that place has *diverged*: the call traps, and the replay reports where.

use base64::Engine as _;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shoal_api::recordings::{Divergence, ImportCall, Received};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use thiserror::Error;

use crate::policy::redact::Redactor;

/// The place of a call among a request's calls, whose result comes later.
#[derive(Debug, Clone, Copy)]
pub struct Slot(usize);

/// Most bytes of values one recording keeps: its calls' results, clock readings and
/// random bytes together. Past it, nothing more is kept and the recording is marked
/// truncated.
pub const MAX_RECEIVED_BYTES: usize = 1024 * 1024;
/// Most bytes all requests being recorded hold at once, host-wide: with many requests
/// in flight (every one of a service that records its failures is journaled until its
/// answer shows it did not fail), the rest are recorded truncated.
pub const MAX_HELD_BYTES: usize = 64 * 1024 * 1024;

/// Bytes all recording journals hold now.
static HELD_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A request's journal: recording what it receives, or answering from a recording.
pub struct Journal(Mutex<State>);

enum State {
    Recording(Recorder),
    Replaying(Box<Player>),
}

struct Recorder {
    /// What all journals that share its bound hold, and that bound.
    held: &'static AtomicUsize,
    held_limit: usize,
    insecure_seed: Option<u128>,
    calls: Vec<Entry>,
    wall_clock: Vec<u64>,
    monotonic_clock: Vec<u64>,
    random: Vec<u8>,
    bytes: usize,
    truncated: bool,
}

struct Entry {
    import: &'static str,
    key: String,
    result: Kept,
}

/// A kept result: a value, or a response whose body was still arriving when the
/// guest got its head (read into the shared copy as the guest reads it).
enum Kept {
    /// A call whose result has not come yet (an outgoing request still on its way).
    Pending,
    Value(Value),
    Response {
        head: Value,
        body: Arc<Mutex<BodyCopy>>,
    },
}

/// The first bytes of a body, as the guest read them.
#[derive(Debug, Default)]
pub struct BodyCopy {
    /// What was kept.
    pub bytes: Vec<u8>,
    /// Whether the body went on past it.
    pub truncated: bool,
    /// Its trailers, if it ended with some (a gRPC status is there).
    pub trailers: Vec<(String, Vec<u8>)>,
}

impl BodyCopy {
    /// Keep what fits of `data` within `limit` bytes.
    pub fn add(&mut self, data: &[u8], limit: usize) {
        let room = limit.saturating_sub(self.bytes.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// A recording played back.
struct Player {
    insecure_seed: Option<u128>,
    redactor: Arc<Redactor>,
    notes: Vec<String>,
    calls: VecDeque<ImportCall>,
    asked: u32,
    wall_clock: VecDeque<u64>,
    last_wall: u64,
    monotonic_clock: VecDeque<u64>,
    last_monotonic: u64,
    random: Vec<u8>,
    random_at: usize,
    fallback: rand::rngs::StdRng,
    truncated: bool,
    divergence: Option<Divergence>,
    extra_clock_reads: u32,
    extra_random_bytes: u64,
}

/// Which clock a reading is of.
#[derive(Clone, Copy)]
enum Clock {
    Wall,
    Monotonic,
}

/// A replay asked for something the recording does not have where it asked: the
/// call traps with this error.
#[derive(Debug, Error, Clone)]
#[error(
    "the replay diverged from the recording at call {}: the code asked for `{}`, the recording has {}",
    .0.call,
    .0.asked,
    .0.recorded.as_deref().map_or("no more calls".to_owned(), |recorded| format!("`{recorded}`"))
)]
pub struct Diverged(pub Divergence);

/// How a replay used its recording, once it has ended.
#[derive(Debug, Default)]
pub struct Playback {
    /// Where it diverged, if it did.
    pub divergence: Option<Divergence>,
    /// Recorded calls it never asked for.
    pub unused_calls: u32,
    /// Clock readings past the recorded ones.
    pub extra_clock_reads: u32,
    /// Random bytes past the recorded ones.
    pub extra_random_bytes: u64,
    /// What else a reader of the replay should know (values the recording cut).
    pub notes: Vec<String>,
}

impl Journal {
    /// A journal that keeps what the request receives.
    pub fn recording() -> Arc<Journal> {
        Self::recording_within(&HELD_BYTES, MAX_HELD_BYTES)
    }

    /// A recording journal that, with all others sharing `held`, holds at most `limit`
    /// bytes.
    fn recording_within(held: &'static AtomicUsize, limit: usize) -> Arc<Journal> {
        Arc::new(Journal(Mutex::new(State::Recording(Recorder::new(
            held, limit,
        )))))
    }

    /// A journal that answers from `received`; `seed` seeds the random bytes drawn
    /// past the recorded ones (the recording's id: the same replay twice draws the
    /// same).
    pub fn replaying(received: Received, seed: &str, redactor: Arc<Redactor>) -> Arc<Journal> {
        use rand::SeedableRng as _;
        use std::hash::{DefaultHasher, Hash as _, Hasher as _};
        let mut hasher = DefaultHasher::new();
        seed.hash(&mut hasher);
        let random = base64::engine::general_purpose::STANDARD
            .decode(received.random.as_bytes())
            .unwrap_or_default();
        let player = Player {
            insecure_seed: received
                .insecure_seed
                .as_deref()
                .and_then(|hex| u128::from_str_radix(hex, 16).ok()),
            redactor,
            notes: Vec::new(),
            calls: received.calls.into(),
            asked: 0,
            last_wall: received.wall_clock.first().copied().unwrap_or(0),
            wall_clock: received.wall_clock.into(),
            last_monotonic: received.monotonic_clock.first().copied().unwrap_or(0),
            monotonic_clock: received.monotonic_clock.into(),
            random,
            random_at: 0,
            fallback: rand::rngs::StdRng::seed_from_u64(hasher.finish()),
            truncated: received.truncated,
            divergence: None,
            extra_clock_reads: 0,
            extra_random_bytes: 0,
        };
        Arc::new(Journal(Mutex::new(State::Replaying(Box::new(player)))))
    }

    /// Whether calls are answered from a recording (and must not run).
    pub fn is_replaying(&self) -> bool {
        matches!(&*self.0.lock(), State::Replaying(_))
    }

    /// Keep `result` of the call `import` about `key`.
    pub fn record<T: Serialize>(&self, import: &'static str, key: String, result: &T) {
        let mut state = self.0.lock();
        let State::Recording(recorder) = &mut *state else {
            return;
        };
        if recorder.truncated {
            return;
        }
        let value = serde_json::to_value(result).unwrap_or(Value::Null);
        let size = approximate_size(&value) + key.len() + import.len();
        if recorder.take(size) {
            recorder.calls.push(Entry {
                import,
                key,
                result: Kept::Value(value),
            });
        }
    }

    /// Take the next place among the calls for `import` about `key`, whose result
    /// comes later ([`Journal::fill`], [`Journal::fill_response`]); `None` once the
    /// recording is full.
    pub fn reserve(&self, import: &'static str, key: String) -> Option<Slot> {
        let mut state = self.0.lock();
        let State::Recording(recorder) = &mut *state else {
            return None;
        };
        if !recorder.take(key.len() + import.len()) {
            return None;
        }
        recorder.calls.push(Entry {
            import,
            key,
            result: Kept::Pending,
        });
        Some(Slot(recorder.calls.len() - 1))
    }

    /// The result of the call at `slot`.
    pub fn fill<T: Serialize>(&self, slot: Slot, result: &T) {
        let value = serde_json::to_value(result).unwrap_or(Value::Null);
        self.fill_with(slot, approximate_size(&value), Kept::Value(value));
    }

    /// A response at `slot` whose body the guest has yet to read: its `head` now,
    /// the body as it is read into the returned copy (kept up to `limit` bytes).
    pub fn fill_response<T: Serialize>(
        &self,
        slot: Slot,
        head: &T,
        limit: usize,
    ) -> Arc<Mutex<BodyCopy>> {
        let head = serde_json::to_value(head).unwrap_or(Value::Null);
        let size = approximate_size(&head) + limit;
        let body = Arc::new(Mutex::new(BodyCopy::default()));
        let kept = Kept::Response {
            head,
            body: body.clone(),
        };
        self.fill_with(slot, size, kept);
        body
    }

    fn fill_with(&self, slot: Slot, size: usize, kept: Kept) {
        let mut state = self.0.lock();
        let State::Recording(recorder) = &mut *state else {
            return;
        };
        // Over the limit, the call stays without its result (the replay says so).
        if recorder.take_more(size)
            && let Some(entry) = recorder.calls.get_mut(slot.0)
        {
            entry.result = kept;
        }
    }

    /// Forget what was recorded and record nothing more (the recording was kept, or
    /// is not wanted).
    pub fn discard(&self) {
        if let State::Recording(recorder) = &mut *self.0.lock() {
            let mut emptied = Recorder::new(recorder.held, recorder.held_limit);
            emptied.truncated = true;
            *recorder = emptied;
        }
    }

    /// The `wasi:random/insecure-seed` of the instance serving the request.
    pub fn set_insecure_seed(&self, seed: u128) {
        if let State::Recording(recorder) = &mut *self.0.lock() {
            recorder.insecure_seed = Some(seed);
        }
    }

    /// The recorded instance's `wasi:random/insecure-seed`, for a replay's instance.
    pub fn insecure_seed(&self) -> Option<u128> {
        match &*self.0.lock() {
            State::Replaying(player) => player.insecure_seed,
            State::Recording(_) => None,
        }
    }

    /// The recorded result of the next call, which must be `import` about `key`;
    /// a trap ([`Diverged`]) when the recording has another call there, or none.
    pub fn replayed<T: DeserializeOwned>(&self, import: &str, key: &str) -> wasmtime::Result<T> {
        let mut state = self.0.lock();
        let State::Replaying(player) = &mut *state else {
            return Err(wasmtime::Error::msg("the journal is not replaying"));
        };
        if let Some(divergence) = &player.divergence {
            return Err(wasmtime::Error::new(Diverged(divergence.clone())));
        }
        player.asked += 1;
        // Keys were masked when recorded: compared, and reported, masked.
        let key = player.redactor.redact(key).into_owned();
        let asked = format!("{import} {key}");
        let next = player.calls.front();
        let matches = next.is_some_and(|call| call.import == import && call.key == key);
        let decoded = match next {
            Some(call) if matches => {
                serde_json::from_value::<T>(untag_bytes(call.result.clone())).ok()
            }
            _ => None,
        };
        if let Some(value) = decoded {
            if let Some(call) = player.calls.pop_front()
                && call.result.get("truncated") == Some(&Value::Bool(true))
            {
                player.notes.push(format!(
                    "the body of `{} {}` was cut at the recording's limit: the code read it cut",
                    call.import, call.key
                ));
            }
            return Ok(value);
        }
        let recorded = next.map(|call| {
            if matches {
                format!(
                    "{} {} (whose result no longer fits the call)",
                    call.import, call.key
                )
            } else {
                format!("{} {}", call.import, call.key)
            }
        });
        let recorded = match (recorded, player.truncated) {
            (None, true) => Some("nothing more: the recording was truncated".to_owned()),
            (recorded, _) => recorded,
        };
        let divergence = Divergence {
            call: player.asked,
            asked,
            recorded,
        };
        player.divergence = Some(divergence.clone());
        Err(wasmtime::Error::new(Diverged(divergence)))
    }

    /// A wall-clock reading (nanoseconds since the epoch): `live` when recording (and
    /// kept), the next recorded one when replaying.
    pub fn wall_clock(&self, live: impl FnOnce() -> u64) -> u64 {
        self.clock(Clock::Wall, live)
    }

    /// A monotonic-clock reading, as [`Journal::wall_clock`].
    pub fn monotonic_clock(&self, live: impl FnOnce() -> u64) -> u64 {
        self.clock(Clock::Monotonic, live)
    }

    fn clock(&self, clock: Clock, live: impl FnOnce() -> u64) -> u64 {
        let mut state = self.0.lock();
        match &mut *state {
            State::Recording(recorder) => {
                let now = live();
                if recorder.take(8) {
                    match clock {
                        Clock::Wall => recorder.wall_clock.push(now),
                        Clock::Monotonic => recorder.monotonic_clock.push(now),
                    }
                }
                now
            }
            State::Replaying(player) => {
                let player = &mut **player;
                let (recorded, last) = match clock {
                    Clock::Wall => (&mut player.wall_clock, &mut player.last_wall),
                    Clock::Monotonic => (&mut player.monotonic_clock, &mut player.last_monotonic),
                };
                match recorded.pop_front() {
                    Some(now) => {
                        *last = now;
                        now
                    }
                    None => {
                        player.extra_clock_reads += 1;
                        *last
                    }
                }
            }
        }
    }

    /// Fill `buffer` with random bytes: from `live` when recording (and kept), the
    /// recorded ones when replaying (then from the seeded generator).
    pub fn random(&self, buffer: &mut [u8], live: impl FnOnce(&mut [u8])) {
        let mut state = self.0.lock();
        match &mut *state {
            State::Recording(recorder) => {
                live(buffer);
                if recorder.take(buffer.len()) {
                    recorder.random.extend_from_slice(buffer);
                }
            }
            State::Replaying(player) => {
                let recorded = &player.random[player.random_at..];
                let from_recording = recorded.len().min(buffer.len());
                buffer[..from_recording].copy_from_slice(&recorded[..from_recording]);
                player.random_at += from_recording;
                let rest = &mut buffer[from_recording..];
                if !rest.is_empty() {
                    use rand::RngCore as _;
                    player.fallback.fill_bytes(rest);
                    player.extra_random_bytes += rest.len() as u64;
                }
            }
        }
    }

    /// What was received, for a recording: bytes as text or base64, every string
    /// passed through `mask` (which hides secret values).
    pub fn received(&self, redactor: &Redactor) -> Received {
        let state = self.0.lock();
        let State::Recording(recorder) = &*state else {
            return Received::default();
        };
        let calls = recorder
            .calls
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let result = match &entry.result {
                    Kept::Pending => {
                        serde_json::json!({ "error": "no result came while the request ran" })
                    }
                    Kept::Value(value) => value.clone(),
                    Kept::Response { head, body } => {
                        let body = body.lock();
                        with_body(head.clone(), &body)
                    }
                };
                ImportCall {
                    n: u32::try_from(index + 1).unwrap_or(u32::MAX),
                    import: entry.import.to_owned(),
                    key: redactor.redact(&entry.key).into_owned(),
                    result: tag_bytes(result, redactor),
                }
            })
            .collect();
        Received {
            calls,
            wall_clock: recorder.wall_clock.clone(),
            monotonic_clock: recorder.monotonic_clock.clone(),
            random: base64::engine::general_purpose::STANDARD.encode(&recorder.random),
            truncated: recorder.truncated,
            insecure_seed: recorder.insecure_seed.map(|seed| format!("{seed:032x}")),
        }
    }

    /// How a replay used its recording.
    pub fn playback(&self) -> Playback {
        let state = self.0.lock();
        let State::Replaying(player) = &*state else {
            return Playback::default();
        };
        Playback {
            divergence: player.divergence.clone(),
            unused_calls: u32::try_from(player.calls.len()).unwrap_or(u32::MAX),
            extra_clock_reads: player.extra_clock_reads,
            extra_random_bytes: player.extra_random_bytes,
            notes: player.notes.clone(),
        }
    }
}

impl Recorder {
    fn new(held: &'static AtomicUsize, held_limit: usize) -> Self {
        Self {
            held,
            held_limit,
            insecure_seed: None,
            calls: Vec::new(),
            wall_clock: Vec::new(),
            monotonic_clock: Vec::new(),
            random: Vec::new(),
            bytes: 0,
            truncated: false,
        }
    }

    /// Whether `bytes` more fit in the recording; once one does not, nothing more is
    /// kept (a later, smaller value would leave a hole in the order).
    fn take(&mut self, bytes: usize) -> bool {
        if self.truncated {
            return false;
        }
        self.take_more(bytes)
    }

    /// [`Recorder::take`] for the result of a call already in the recording (its
    /// place is kept even when later calls were cut).
    fn take_more(&mut self, bytes: usize) -> bool {
        let limit = self.held_limit;
        let within_host = || {
            self.held
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                    (held + bytes <= limit).then_some(held + bytes)
                })
                .is_ok()
        };
        if self.bytes + bytes > MAX_RECEIVED_BYTES || !within_host() {
            self.truncated = true;
            return false;
        }
        self.bytes += bytes;
        true
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Run the host call `import` through `journal`: as always with no journal; run and
/// kept when recording; not run, and answered from the recording, when replaying.
/// `key` says what the call is about (`None` only when there is no journal).
pub async fn call<T: Serialize + DeserializeOwned>(
    journal: Option<&Journal>,
    import: &'static str,
    key: Option<String>,
    live: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let Some(journal) = journal else {
        return live.await;
    };
    let key = key.unwrap_or_default();
    if journal.is_replaying() {
        return journal.replayed(import, &key);
    }
    let result = live.await?;
    journal.record(import, key, &result);
    Ok(result)
}

/// `about()`, only when there is a journal to say it to (so that a request that is
/// not recorded pays nothing for it).
pub fn about(journal: Option<&Journal>, about: impl FnOnce() -> String) -> Option<String> {
    journal.map(|_| about())
}

/// A response head's JSON with its body.
fn with_body(mut head: Value, body: &BodyCopy) -> Value {
    if let Value::Object(fields) = &mut head {
        fields.insert(
            "body".to_owned(),
            Value::Array(body.bytes.iter().map(|&byte| Value::from(byte)).collect()),
        );
        fields.insert("truncated".to_owned(), Value::Bool(body.truncated));
        if !body.trailers.is_empty() {
            fields.insert(
                "trailers".to_owned(),
                serde_json::to_value(&body.trailers).unwrap_or(Value::Null),
            );
        }
    }
    head
}

/// A rough size of `value` in bytes, to bound what a recording keeps.
fn approximate_size(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::String(text) => text.len() + 2,
        Value::Array(items) => items.iter().map(approximate_size).sum::<usize>() + 2,
        Value::Object(fields) => fields
            .iter()
            .map(|(name, value)| name.len() + approximate_size(value))
            .sum::<usize>()
            .saturating_add(2),
    }
}

/// The key that marks bytes that are UTF-8 text.
const TEXT: &str = "$text";
/// The key that marks other bytes, base64.
const BASE64: &str = "$base64";

/// `value` with each byte list (an array of integers 0–255: in Shoal's WIT every
/// integer list is `list<u8>`) as `{"$text": …}` or `{"$base64": …}`, secret values
/// masked in every string and byte list.
pub fn tag_bytes(value: Value, redactor: &Redactor) -> Value {
    match value {
        Value::String(text) => Value::String(redactor.redact_owned(text)),
        Value::Array(items) if is_byte_list(&items) => {
            let bytes: Vec<u8> = items
                .iter()
                .filter_map(|item| item.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect();
            let bytes = redactor.redact_bytes(&bytes).into_owned();
            match String::from_utf8(bytes) {
                Ok(text) => single(TEXT, Value::String(text)),
                Err(error) => single(
                    BASE64,
                    Value::String(
                        base64::engine::general_purpose::STANDARD.encode(error.as_bytes()),
                    ),
                ),
            }
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| tag_bytes(item, redactor))
                .collect(),
        ),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(name, value)| (name, tag_bytes(value, redactor)))
                .collect(),
        ),
        other => other,
    }
}

/// [`tag_bytes`] undone: tagged bytes back to arrays of integers.
pub fn untag_bytes(value: Value) -> Value {
    match value {
        Value::Object(fields) if fields.len() == 1 => {
            let (name, inner) = fields.into_iter().next().unwrap_or_default();
            match (name.as_str(), inner) {
                (TEXT, Value::String(text)) => byte_array(text.as_bytes()),
                (BASE64, Value::String(text)) => byte_array(
                    &base64::engine::general_purpose::STANDARD
                        .decode(text.as_bytes())
                        .unwrap_or_default(),
                ),
                (_, inner) => single(&name, untag_bytes(inner)),
            }
        }
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(name, value)| (name, untag_bytes(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(untag_bytes).collect()),
        other => other,
    }
}

fn is_byte_list(items: &[Value]) -> bool {
    !items.is_empty()
        && items
            .iter()
            .all(|item| item.as_u64().is_some_and(|n| n <= 255))
}

fn byte_array(bytes: &[u8]) -> Value {
    Value::Array(bytes.iter().map(|&byte| Value::from(byte)).collect())
}

fn single(name: &str, value: Value) -> Value {
    let mut fields = serde_json::Map::new();
    fields.insert(name.to_owned(), value);
    Value::Object(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_mask() -> Redactor {
        Redactor::default()
    }

    fn replay_of(journal: &Journal) -> Arc<Journal> {
        Journal::replaying(journal.received(&no_mask()), "seed", Arc::default())
    }

    #[test]
    fn a_recording_answers_its_replay_in_order_and_bytes_read_as_text() {
        let journal = Journal::recording();
        let found: Result<Option<Vec<u8>>, String> = Ok(Some(b"{\"stock\":3}".to_vec()));
        journal.record("store.get", "items/1".into(), &found);
        journal.record(
            "store.get",
            "items/2".into(),
            &Ok::<_, String>(Some(vec![0xff, 0])),
        );
        let received = journal.received(&no_mask());
        assert_eq!(received.calls.len(), 2);
        assert_eq!(
            received.calls[0].result,
            serde_json::json!({"Ok": {"$text": "{\"stock\":3}"}})
        );
        assert_eq!(
            received.calls[1].result,
            serde_json::json!({"Ok": {"$base64": "/wA="}})
        );

        let replay = replay_of(&journal);
        assert!(replay.is_replaying());
        let first: Result<Option<Vec<u8>>, String> =
            replay.replayed("store.get", "items/1").expect("first");
        assert_eq!(first, found);
        let second: Result<Option<Vec<u8>>, String> =
            replay.replayed("store.get", "items/2").expect("second");
        assert_eq!(second, Ok(Some(vec![0xff, 0])));
        let playback = replay.playback();
        assert_eq!(playback.unused_calls, 0);
        assert!(playback.divergence.is_none());
    }

    #[test]
    fn a_call_the_recording_lacks_is_a_divergence_naming_the_call() {
        let journal = Journal::recording();
        journal.record(
            "store.get",
            "a".into(),
            &Ok::<Option<Vec<u8>>, String>(None),
        );
        journal.record(
            "caller.call",
            "payment POST /charge".into(),
            &Ok::<u16, String>(200),
        );
        let replay = replay_of(&journal);
        let _: Result<Option<Vec<u8>>, String> = replay.replayed("store.get", "a").expect("a");
        let error = replay
            .replayed::<Result<u16, String>>("caller.call", "audit POST /log")
            .expect_err("diverges");
        let diverged = error.downcast_ref::<Diverged>().expect("a divergence");
        assert_eq!(diverged.0.call, 2);
        assert_eq!(diverged.0.asked, "caller.call audit POST /log");
        assert_eq!(
            diverged.0.recorded.as_deref(),
            Some("caller.call payment POST /charge")
        );
        // Past the end of the recording.
        let replay = replay_of(&journal);
        let _: Result<Option<Vec<u8>>, String> = replay.replayed("store.get", "a").expect("a");
        let _: Result<u16, String> = replay
            .replayed("caller.call", "payment POST /charge")
            .expect("b");
        let error = replay
            .replayed::<Result<u16, String>>("store.get", "b")
            .expect_err("no more");
        assert!(error.to_string().contains("no more calls"), "{error}");
        assert_eq!(replay.playback().divergence.map(|d| d.call), Some(3));
    }

    #[test]
    fn clocks_and_random_replay_as_recorded_then_stand_still_or_come_from_the_seed() {
        let journal = Journal::recording();
        assert_eq!(journal.wall_clock(|| 10), 10);
        assert_eq!(journal.wall_clock(|| 20), 20);
        assert_eq!(journal.monotonic_clock(|| 5), 5);
        let mut drawn = [0u8; 4];
        journal.random(&mut drawn, |buffer| buffer.copy_from_slice(&[1, 2, 3, 4]));
        let replay = replay_of(&journal);
        assert_eq!(replay.wall_clock(|| 999), 10);
        assert_eq!(replay.wall_clock(|| 999), 20);
        assert_eq!(
            replay.wall_clock(|| 999),
            20,
            "stands still after the recording"
        );
        assert_eq!(replay.monotonic_clock(|| 999), 5);
        let mut replayed = [0u8; 6];
        replay.random(&mut replayed, |_| panic!("a replay draws nothing live"));
        assert_eq!(&replayed[..4], &[1, 2, 3, 4]);
        let playback = replay.playback();
        assert_eq!(playback.extra_clock_reads, 1);
        assert_eq!(playback.extra_random_bytes, 2);
        // The same seed draws the same past the recording.
        let again = replay_of(&journal);
        let mut twice = [0u8; 6];
        again.random(&mut twice, |_| ());
        assert_eq!(twice, replayed);
    }

    #[test]
    fn all_journals_together_are_bounded_and_give_back_what_they_held() {
        // A bound of its own, so that other tests' journals take none of it.
        let held: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        let big = "x".repeat(1000);
        let kept = |journal: &Journal| !journal.received(&no_mask()).calls.is_empty();
        let full: Vec<Arc<Journal>> = (0..12)
            .map(|_| {
                let journal = Journal::recording_within(held, 10_000);
                journal.record("store.get", "k".into(), &big);
                journal
            })
            .collect();
        assert!(kept(&full[0]));
        assert!(!kept(full.last().expect("one")), "past the host-wide bound");
        assert!(full.last().expect("one").received(&no_mask()).truncated);
        drop(full);
        assert_eq!(held.load(Ordering::Acquire), 0);
        let after = Journal::recording_within(held, 10_000);
        after.record("store.get", "k".into(), &big);
        assert!(kept(&after), "what ended journals held was given back");
        after.discard();
        after.record("store.get", "k".into(), &big);
        assert!(!kept(&after), "nothing after a discard");
    }

    #[test]
    fn secrets_are_masked_and_recordings_are_bounded() {
        let journal = Journal::recording();
        journal.record(
            "caller.call",
            "x".into(),
            &Ok::<Vec<u8>, String>(b"key=hunter2-value".to_vec()),
        );
        let redactor = Redactor::default();
        redactor.set_values(["hunter2-value"]);
        let masked = journal.received(&redactor);
        assert_eq!(
            masked.calls[0].result,
            serde_json::json!({"Ok": {"$text": "key=[redacted]"}})
        );
        let big = vec![7u8; MAX_RECEIVED_BYTES / 4];
        for index in 0..8 {
            journal.record("store.get", format!("k{index}"), &big);
        }
        let received = journal.received(&no_mask());
        assert!(received.truncated);
        assert!(received.calls.len() < 9);
        // A replay that runs past a truncated recording says so.
        let replay = Journal::replaying(received.clone(), "s", Arc::default());
        for call in &received.calls {
            let _: Value = replay.replayed(&call.import, &call.key).expect("recorded");
        }
        let error = replay
            .replayed::<Value>("store.get", "k8")
            .expect_err("truncated");
        assert!(error.to_string().contains("truncated"), "{error}");
    }

    #[test]
    fn a_response_body_read_later_is_kept_in_the_place_of_its_request() {
        let journal = Journal::recording();
        let slot = journal
            .reserve("http.send", "GET example.com/".into())
            .expect("a place");
        // A call made while the response was on its way comes after it.
        journal.record("config.get", "k".into(), &Some("v"));
        let copy = journal.fill_response(slot, &serde_json::json!({"status": 200}), 4);
        copy.lock().add(b"hello", 4);
        let received = journal.received(&no_mask());
        assert_eq!(received.calls[0].import, "http.send");
        assert_eq!(
            received.calls[0].result,
            serde_json::json!({"status": 200, "body": {"$text": "hell"}, "truncated": true})
        );
        assert_eq!(received.calls[1].import, "config.get");
        // A replay reading the cut body says so.
        let replay = replay_of(&journal);
        let _: Value = replay
            .replayed("http.send", "GET example.com/")
            .expect("sent");
        assert_eq!(replay.playback().notes.len(), 1);
        // A request whose answer never came is recorded as such.
        let unanswered = Journal::recording();
        unanswered.reserve("http.send", "GET x/".into());
        assert!(unanswered.received(&no_mask()).calls[0].result["error"].is_string());
    }
}
