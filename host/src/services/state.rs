//! What is persisted per service: the current version, earlier versions, a canary and
//! a scale override. One JSON file per service, written atomically.

use serde::{Deserialize, Serialize};

use super::limiter::Scale;
use crate::data_dir::VersionRecord;

/// Versions kept for rollback besides the current one.
pub const HISTORY_LIMIT: usize = 10;

/// The persisted state of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    /// The version taking the traffic.
    pub current: VersionRecord,
    /// Earlier versions, newest first.
    #[serde(default)]
    pub history: Vec<VersionRecord>,
    /// A version taking a share of the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryState>,
    /// Concurrency set with `shoal scale` (overrides the manifest's limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<Scale>,
}

/// A persisted canary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryState {
    /// The canary version.
    pub record: VersionRecord,
    /// Percentage of traffic.
    pub weight: u8,
    /// Automatic rollback rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<AutoRollback>,
}

/// Roll a canary back when its failure (5xx) ratio over a window exceeds a threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoRollback {
    /// Failure ratio (0–1) that triggers the rollback.
    pub max_error_rate: f64,
    /// Window length.
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    /// Canary requests needed in the window before the ratio counts.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
}

fn default_window_ms() -> u64 {
    30_000
}

fn default_min_requests() -> u32 {
    20
}

impl AutoRollback {
    /// Check the values.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.max_error_rate >= 0.0 && self.max_error_rate < 1.0) {
            return Err("`max_error_rate` must be in [0, 1)".into());
        }
        if !(100..=3_600_000).contains(&self.window_ms) {
            return Err("`window_ms` must be between 100 and 3600000".into());
        }
        if self.min_requests == 0 {
            return Err("`min_requests` must be at least 1".into());
        }
        Ok(())
    }
}

impl ServiceState {
    /// Make `record` current, pushing the current one into the (bounded) history.
    pub fn promote(&mut self, record: VersionRecord) {
        let previous = std::mem::replace(&mut self.current, record);
        let same =
            |a: &VersionRecord, b: &VersionRecord| a.digest == b.digest && a.manifest == b.manifest;
        let current = &self.current;
        self.history
            .retain(|r| !same(r, &previous) && !same(r, current));
        if !same(&previous, current) {
            self.history.insert(0, previous);
        }
        self.history.truncate(HISTORY_LIMIT);
    }

    /// Take the version to roll back to: `version`, or the newest earlier one.
    pub fn take_rollback_target(&mut self, version: Option<&str>) -> Option<VersionRecord> {
        let index = match version {
            Some(version) => self.history.iter().position(|r| r.version == version)?,
            None => (!self.history.is_empty()).then_some(0)?,
        };
        Some(self.history.remove(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    fn record(version: &str) -> VersionRecord {
        VersionRecord {
            name: "s".into(),
            version: version.into(),
            digest: format!("digest-{version}"),
            deployed_at: "2026-01-01T00:00:00Z".into(),
            manifest: Manifest::default(),
        }
    }

    #[test]
    fn history_is_newest_first_and_bounded() {
        let mut state = ServiceState {
            current: record("0"),
            history: vec![],
            canary: None,
            scale: None,
        };
        for i in 1..=15 {
            state.promote(record(&i.to_string()));
        }
        assert_eq!(state.current.version, "15");
        assert_eq!(state.history.len(), HISTORY_LIMIT);
        assert_eq!(state.history[0].version, "14");
        assert_eq!(state.history[HISTORY_LIMIT - 1].version, "5");
    }

    #[test]
    fn rollback_targets() {
        let mut state = ServiceState {
            current: record("3"),
            history: vec![record("2"), record("1")],
            canary: None,
            scale: None,
        };
        assert_eq!(
            state.take_rollback_target(Some("1")).map(|r| r.version),
            Some("1".into())
        );
        assert_eq!(state.take_rollback_target(Some("9")), None);
        assert_eq!(
            state.take_rollback_target(None).map(|r| r.version),
            Some("2".into())
        );
        assert_eq!(state.take_rollback_target(None), None);
    }

    #[test]
    fn redeploying_the_same_version_does_not_duplicate_history() {
        let mut state = ServiceState {
            current: record("1"),
            history: vec![],
            canary: None,
            scale: None,
        };
        state.promote(record("2"));
        state.promote(record("1"));
        state.promote(record("2"));
        let versions: Vec<&str> = state.history.iter().map(|r| r.version.as_str()).collect();
        assert_eq!(versions, ["1"]);
    }

    #[test]
    fn auto_rollback_is_checked() {
        let rule = |rate: f64, window_ms: u64, min_requests: u32| AutoRollback {
            max_error_rate: rate,
            window_ms,
            min_requests,
        };
        assert!(rule(0.1, 30_000, 20).validate().is_ok());
        assert!(rule(1.5, 30_000, 20).validate().is_err());
        assert!(rule(0.1, 1, 20).validate().is_err());
        assert!(rule(0.1, 30_000, 0).validate().is_err());
    }
}
