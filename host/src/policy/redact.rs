//! Masking secret values wherever the host writes text it did not choose: its log,
//! exported spans, guest metric labels and fault records. The set of values changes
//! when the operator sets or removes a secret; every reader sees the new set at once.
//!
//! Values shorter than [`MIN_SECRET_BYTES`] are refused where secrets are set, so
//! masking them never eats ordinary words.

use aho_corasick::{AhoCorasick, MatchKind};
use parking_lot::RwLock;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

/// What a masked value is replaced with.
pub const MASK: &str = "[redacted]";
/// Shortest secret value accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 8;

/// The secret values to mask, swapped whole when they change.
#[derive(Default)]
pub struct Redactor {
    matcher: RwLock<Option<Arc<AhoCorasick>>>,
    /// Length of the longest form of a value masked (0 when none).
    longest: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("active", &self.matcher.read().is_some())
            .finish()
    }
}

static PROCESS: OnceLock<Arc<Redactor>> = OnceLock::new();

/// The values long enough to mask, owned.
fn values_in<I, S>(values: I) -> Vec<Vec<u8>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<[u8]>,
{
    values
        .into_iter()
        .filter(|value| value.as_ref().len() >= MIN_SECRET_BYTES)
        .map(|value| value.as_ref().to_vec())
        .collect()
}

impl Redactor {
    /// The redactor of this process: the log writer masks with it, and the host's
    /// secrets keep it up to date.
    pub fn process() -> Arc<Redactor> {
        PROCESS.get_or_init(Default::default).clone()
    }

    /// Mask exactly `values` from now on (values shorter than [`MIN_SECRET_BYTES`]
    /// are ignored).
    pub fn set_values<I, S>(&self, values: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        // Each value also as the JSON log format and `Debug` fields write it (quotes,
        // backslashes and control characters escaped), where that differs.
        let given = values_in(values);
        let mut values: Vec<Vec<u8>> = Vec::with_capacity(given.len());
        for value in given {
            if let Ok(text) = std::str::from_utf8(&value) {
                let json = serde_json::to_string(text).unwrap_or_default();
                let debug = format!("{text:?}");
                for escaped in [json, debug] {
                    let inner = escaped
                        .strip_prefix('"')
                        .and_then(|e| e.strip_suffix('"'))
                        .unwrap_or_default();
                    if inner.as_bytes() != value.as_slice() && !inner.is_empty() {
                        values.push(inner.as_bytes().to_vec());
                    }
                }
            }
            values.push(value);
        }
        if values.is_empty() {
            *self.matcher.write() = None;
            self.longest.store(0, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let longest = values.iter().map(Vec::len).max().unwrap_or(0);
        // The longest match wins, so a secret that contains another is masked whole.
        // Should the matcher fail to build, the one in use stays: masking never stops.
        if let Ok(matcher) = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&values)
        {
            *self.matcher.write() = Some(Arc::new(matcher));
            self.longest
                .store(longest, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The length of the longest value masked, in bytes (0 when none): text cut into
    /// pieces must look this far minus one past a cut to mask a value across it.
    pub fn longest(&self) -> usize {
        self.longest.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where to cut `bytes` near `at` so that no value masked in them is split: `at`,
    /// or the start of a value that runs across it, or its end when it starts at 0.
    pub fn cut_point(&self, bytes: &[u8], at: usize) -> usize {
        let Some(matcher) = self.current() else {
            return at;
        };
        let crossing = matcher
            .find_iter(bytes)
            .take_while(|found| found.start() < at)
            .find(|found| found.end() > at);
        match crossing {
            Some(found) if found.start() > 0 => found.start(),
            Some(found) => found.end(),
            None => at,
        }
    }

    fn current(&self) -> Option<Arc<AhoCorasick>> {
        self.matcher.read().clone()
    }

    /// `text` with every secret value replaced by [`MASK`].
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.current() {
            Some(matcher) if matcher.is_match(text) => {
                let masks = vec![MASK; matcher.patterns_len()];
                Cow::Owned(matcher.replace_all(text, &masks))
            }
            _ => Cow::Borrowed(text),
        }
    }

    /// [`Redactor::redact`] for an owned string, returning it unchanged when clean.
    pub fn redact_owned(&self, text: String) -> String {
        match self.redact(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(masked) => masked,
        }
    }

    /// `bytes` with every secret value replaced by [`MASK`].
    pub fn redact_bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        match self.current() {
            Some(matcher) if matcher.is_match(bytes) => {
                let masks = vec![MASK.as_bytes(); matcher.patterns_len()];
                Cow::Owned(matcher.replace_all_bytes(bytes, &masks))
            }
            _ => Cow::Borrowed(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_value_and_leaves_clean_text_alone() {
        let redactor = Redactor::default();
        assert_eq!(redactor.redact("nothing set"), "nothing set");
        redactor.set_values(["hunter2-password", "api-key-123456", "short"]);
        let masked = redactor.redact("a hunter2-password and api-key-123456, short stays");
        assert_eq!(masked, "a [redacted] and [redacted], short stays");
        assert!(matches!(redactor.redact("clean"), Cow::Borrowed(_)));
        assert_eq!(
            &*redactor.redact_bytes(b"x=hunter2-password\n"),
            b"x=[redacted]\n"
        );
    }

    #[test]
    fn the_longest_value_wins_and_a_new_set_replaces_the_old() {
        let redactor = Redactor::default();
        redactor.set_values(["abcdefgh", "abcdefgh-ijkl"]);
        assert_eq!(redactor.redact("abcdefgh-ijkl!"), "[redacted]!");
        redactor.set_values(["zzzzzzzzzz"]);
        assert_eq!(redactor.redact("abcdefgh"), "abcdefgh");
        redactor.set_values(Vec::<String>::new());
        assert_eq!(redactor.redact("zzzzzzzzzz"), "zzzzzzzzzz");
    }

    #[test]
    fn a_cut_never_splits_a_value() {
        let redactor = Redactor::default();
        assert_eq!(redactor.cut_point(b"abcdefgh", 4), 4);
        redactor.set_values(["secret-value"]);
        assert_eq!(redactor.longest(), 12);
        assert_eq!(redactor.cut_point(b"xx secret-value yy", 6), 3, "before it");
        assert_eq!(
            redactor.cut_point(b"xx secret-value yy", 16),
            16,
            "after it"
        );
        assert_eq!(
            redactor.cut_point(b"secret-value yy", 4),
            12,
            "longer than the cut"
        );
    }

    #[test]
    fn escaped_forms_are_masked_too() {
        let redactor = Redactor::default();
        redactor.set_values(["quote\"and\\slash"]);
        let json = serde_json::to_string("x quote\"and\\slash y").expect("json");
        assert_eq!(redactor.redact(&json), "\"x [redacted] y\"");
        let debug = format!("{:?}", "quote\"and\\slash");
        assert_eq!(redactor.redact(&debug), "\"[redacted]\"");
    }
}
