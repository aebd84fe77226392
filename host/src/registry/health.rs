//! Active HTTP health checks of external endpoints.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Health, Registry};

/// An HTTP health check, like Consul's: `GET http://<endpoint><path>` must answer 2xx
/// within the timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path to probe.
    #[serde(default = "default_path")]
    pub path: String,
    /// Time between probes of one endpoint.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Time a probe may take.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Failed probes in a row before an endpoint is marked not serving.
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: u32,
    /// Good probes in a row before it serves again.
    #[serde(default = "default_healthy")]
    pub healthy_threshold: u32,
}

fn default_path() -> String {
    "/health".into()
}
fn default_interval() -> u64 {
    1000
}
fn default_timeout() -> u64 {
    500
}
fn default_unhealthy() -> u32 {
    2
}
fn default_healthy() -> u32 {
    1
}

/// Consecutive-result thresholds turned into a health verdict; pure, so it is tested
/// without a network.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    unhealthy_threshold: u32,
    healthy_threshold: u32,
    failures: u32,
    successes: u32,
    health: Health,
}

impl HealthTracker {
    /// A tracker that starts serving.
    pub fn new(unhealthy_threshold: u32, healthy_threshold: u32) -> Self {
        Self {
            unhealthy_threshold: unhealthy_threshold.max(1),
            healthy_threshold: healthy_threshold.max(1),
            failures: 0,
            successes: 0,
            health: Health::Serving,
        }
    }

    /// The current verdict.
    pub fn current(&self) -> Health {
        self.health
    }

    /// Record one probe; returns the new health when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<Health> {
        self.observe_health(if ok {
            Health::Serving
        } else {
            Health::NotServing
        })
    }

    /// Record one reported health: `not-serving` counts as a failure; `serving` and
    /// `degraded` as successes at that level. Moving between serving and degraded is
    /// immediate; leaving not-serving takes `healthy_threshold` successes in a row.
    pub fn observe_health(&mut self, reported: Health) -> Option<Health> {
        if reported != Health::NotServing {
            self.failures = 0;
            self.successes += 1;
            let recovered =
                self.health != Health::NotServing || self.successes >= self.healthy_threshold;
            if self.health != reported && recovered {
                self.health = reported;
                return Some(reported);
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.health != Health::NotServing && self.failures >= self.unhealthy_threshold {
                self.health = Health::NotServing;
                return Some(Health::NotServing);
            }
        }
        None
    }
}

/// Runs health-check loops; each loop ends when its handle is aborted. Remembers the
/// last verdict of every endpoint, so a registration renewed after a lost lease keeps
/// it instead of starting as serving.
#[derive(Clone)]
pub struct HealthChecker {
    registry: Arc<dyn Registry>,
    client: Client<HttpConnector, Empty<Bytes>>,
    verdicts: Arc<parking_lot::Mutex<std::collections::HashMap<String, Health>>>,
}

impl HealthChecker {
    /// A checker that reports to `registry`.
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Self {
            registry,
            client: Client::builder(TokioExecutor::new()).build(connector),
            verdicts: Arc::default(),
        }
    }

    /// The last verdict on `instance_id`, if it has been checked.
    pub fn last_verdict(&self, instance_id: &str) -> Option<Health> {
        self.verdicts.lock().get(instance_id).copied()
    }

    /// Record a verdict as a probe loop would (for tests of what depends on it).
    #[cfg(test)]
    pub(super) fn record(&self, instance_id: &str, health: Health) {
        self.verdicts.lock().insert(instance_id.to_owned(), health);
    }

    /// Forget `instance_id` (its registration is gone).
    pub fn forget(&self, instance_id: &str) {
        self.verdicts.lock().remove(instance_id);
    }

    /// Probe `endpoint` every interval and report the verdicts for `instance_id`.
    pub fn spawn(
        &self,
        instance_id: String,
        endpoint: String,
        check: HealthCheck,
    ) -> tokio::task::JoinHandle<()> {
        let checker = self.clone();
        tokio::spawn(async move {
            let mut tracker =
                HealthTracker::new(check.unhealthy_threshold, check.healthy_threshold);
            let mut tick = tokio::time::interval(Duration::from_millis(check.interval_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let url = format!("http://{endpoint}{}", check.path);
            loop {
                tick.tick().await;
                let ok = checker
                    .probe(&url, Duration::from_millis(check.timeout_ms))
                    .await;
                if let Some(health) = tracker.observe(ok) {
                    checker.verdicts.lock().insert(instance_id.clone(), health);
                    tracing::info!(instance = %instance_id, ?health, "health check verdict changed");
                    let _ = checker.registry.set_health(&instance_id, health).await;
                }
            }
        })
    }

    async fn probe(&self, url: &str, timeout: Duration) -> bool {
        let Ok(uri) = url.parse::<http::Uri>() else {
            return false;
        };
        let request = async {
            let response = self.client.get(uri).await.ok()?;
            let ok = response.status().is_success();
            // Drain the body so the connection can be reused.
            let _ = response.into_body().collect().await;
            Some(ok)
        };
        matches!(tokio::time::timeout(timeout, request).await, Ok(Some(true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_flip_health_once() {
        let mut tracker = HealthTracker::new(2, 2);
        assert_eq!(tracker.observe(false), None);
        assert_eq!(tracker.observe(false), Some(Health::NotServing));
        assert_eq!(tracker.observe(false), None);
        assert_eq!(tracker.observe(true), None);
        assert_eq!(tracker.observe(false), None, "a success resets the streak");
        assert_eq!(tracker.observe(true), None);
        assert_eq!(tracker.observe(true), Some(Health::Serving));
        assert_eq!(tracker.observe(true), None);
    }

    #[test]
    fn degraded_is_immediate_but_recovery_from_down_needs_the_threshold() {
        let mut tracker = HealthTracker::new(1, 2);
        assert_eq!(
            tracker.observe_health(Health::Degraded),
            Some(Health::Degraded)
        );
        assert_eq!(
            tracker.observe_health(Health::Serving),
            Some(Health::Serving)
        );
        assert_eq!(
            tracker.observe_health(Health::NotServing),
            Some(Health::NotServing)
        );
        assert_eq!(tracker.observe_health(Health::Degraded), None);
        assert_eq!(
            tracker.observe_health(Health::Degraded),
            Some(Health::Degraded)
        );
    }
}
