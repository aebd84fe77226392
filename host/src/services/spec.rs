//! A deployment's settings, resolved once from its manifest and the host's defaults.
//!
//! Everything a deployment's manifest leaves unset takes its value here, and nowhere
//! else, from the one table of defaults ([`crate::manifest::defaults`]) or the
//! host-wide flags that start from it; a test checks that the README's manifest
//! reference names the same values.

use std::time::Duration;

use super::Invalid;
use super::limiter::Scale;
use crate::data_dir::VersionRecord;
use crate::manifest::defaults;
use crate::runtime::RuntimeSettings;
use crate::runtime::concurrent::Concurrency;
use crate::runtime::executor::ExecutionSpec;

/// Host-wide values for what a manifest leaves unset, and the ceilings it may not pass.
#[derive(Debug, Clone)]
pub struct ServiceDefaults {
    /// Linear memory per instance, in MiB.
    pub memory_mb: u32,
    /// Ceiling a manifest may ask for, in MiB.
    pub max_memory_mb: u32,
    /// Deadline per request.
    pub timeout: Duration,
    /// Concurrency and queue per service.
    pub scale: Scale,
    /// Instances one service may run at once (its `max_concurrency` ceiling), well
    /// under the host's pool so no service can take every slot.
    pub max_instances_per_service: u32,
    /// Elements per table of an instance.
    pub table_elements: u32,
    /// Whether any deployer may nest a route inside another service's.
    pub allow_nested_routes: bool,
}

impl Default for ServiceDefaults {
    fn default() -> Self {
        let defaults = ServiceSettings::default().defaults(&RuntimeSettings::default());
        // The defaults of both are consistent (a test says so).
        defaults.unwrap_or(Self {
            memory_mb: 1,
            max_memory_mb: 1,
            timeout: Duration::from_secs(1),
            scale: Scale {
                max_concurrency: 1,
                queue: 0,
            },
            max_instances_per_service: 1,
            table_elements: 1,
            allow_nested_routes: false,
        })
    }
}

/// The services' part of the `shoal serve` flags: what a manifest leaves unset, and
/// how much of the host one service may take.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ServiceSettings {
    /// Linear memory per instance when a manifest sets none, in MiB.
    #[arg(long, env = "SHOAL_DEFAULT_MEMORY_MB", default_value_t = defaults::MEMORY_MB)]
    pub default_memory_mb: u32,

    /// Deadline per request when a manifest sets none, in milliseconds.
    #[arg(long, env = "SHOAL_DEFAULT_TIMEOUT_MS", default_value_t = defaults::TIMEOUT_MS)]
    pub default_timeout_ms: u64,

    /// Requests a service may run at once when its manifest sets no limit.
    #[arg(long, env = "SHOAL_DEFAULT_MAX_CONCURRENCY", default_value_t = defaults::MAX_CONCURRENCY)]
    pub default_max_concurrency: u32,

    /// Requests that may wait per service when its manifest sets no limit.
    #[arg(long, env = "SHOAL_DEFAULT_QUEUE", default_value_t = defaults::QUEUE)]
    pub default_queue: u32,

    /// Instances one service may run at once (0: half of --max-instances); a service
    /// whose manifest asks for more concurrency is refused, the default is lowered.
    #[arg(long, env = "SHOAL_MAX_INSTANCES_PER_SERVICE", default_value_t = 0)]
    pub max_instances_per_service: u32,

    /// Let any deployer put a route inside another service's route (which takes that
    /// service's traffic below it). Without it, only a deployer who may change that
    /// service can.
    #[arg(long, env = "SHOAL_ALLOW_NESTED_ROUTES")]
    pub allow_nested_routes: bool,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            default_memory_mb: defaults::MEMORY_MB,
            default_timeout_ms: defaults::TIMEOUT_MS,
            default_max_concurrency: defaults::MAX_CONCURRENCY,
            default_queue: defaults::QUEUE,
            max_instances_per_service: 0,
            allow_nested_routes: false,
        }
    }
}

impl ServiceSettings {
    /// The defaults services get on a host whose runtime has `runtime`'s settings;
    /// refused when the default memory is not within the host's ceiling.
    pub fn defaults(&self, runtime: &RuntimeSettings) -> Result<ServiceDefaults, String> {
        if self.default_memory_mb == 0 || self.default_memory_mb > runtime.max_memory_mb {
            return Err(format!(
                "--default-memory-mb ({}) must be between 1 and --max-memory-mb ({})",
                self.default_memory_mb, runtime.max_memory_mb
            ));
        }
        let max_instances_per_service = match self.max_instances_per_service {
            0 => (runtime.max_instances / 2).max(1),
            cap => cap.min(runtime.max_instances),
        };
        Ok(ServiceDefaults {
            memory_mb: self.default_memory_mb,
            max_memory_mb: runtime.max_memory_mb,
            timeout: Duration::from_millis(self.default_timeout_ms),
            scale: Scale {
                max_concurrency: self.default_max_concurrency,
                queue: self.default_queue,
            },
            max_instances_per_service,
            table_elements: runtime.max_table_elements,
            allow_nested_routes: self.allow_nested_routes,
        })
    }
}

/// Everything about how one deployment runs, resolved from its manifest and the
/// host's defaults in one place ([`DeploymentSpec::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentSpec {
    /// Gateway path prefix.
    pub route: String,
    /// Requests running at once and waiting, as the manifest sets them (a `shoal
    /// scale` override, persisted with the service, takes their place).
    pub scale: Scale,
    /// Linear memory per instance, in MiB.
    pub memory_mb: u32,
    /// Size quota of the service's store, in bytes.
    pub store_quota_bytes: u64,
    /// How its instances are bounded and how many requests each takes.
    pub execution: ExecutionSpec,
}

impl DeploymentSpec {
    /// The settings of `record`'s deployment on a host with `defaults`.
    pub fn resolve(record: &VersionRecord, defaults: &ServiceDefaults) -> Self {
        let limits = &record.manifest.limits;
        let memory_mb = limits.memory_mb.unwrap_or(defaults.memory_mb);
        let cap = defaults.max_instances_per_service;
        Self {
            route: record
                .manifest
                .route
                .clone()
                .unwrap_or_else(|| format!("/{}", record.name)),
            scale: Scale {
                max_concurrency: limits
                    .max_concurrency
                    .unwrap_or(defaults.scale.max_concurrency.min(cap)),
                queue: limits.queue.unwrap_or(defaults.scale.queue),
            },
            memory_mb,
            store_quota_bytes: u64::from(limits.store_mb.unwrap_or(defaults::STORE_MB))
                * 1024
                * 1024,
            execution: ExecutionSpec {
                memory_bytes: memory_mb as usize * 1024 * 1024,
                table_elements: limits.table_elements.unwrap_or(defaults.table_elements) as usize,
                timeout: limits
                    .timeout_ms
                    .map_or(defaults.timeout, Duration::from_millis),
                sequential_reuse: limits.instance_reuse.unwrap_or(defaults::INSTANCE_REUSE),
                concurrency: Concurrency {
                    per_instance: limits
                        .instance_concurrency
                        .unwrap_or(defaults::INSTANCE_CONCURRENCY)
                        as usize,
                    requests_per_instance: limits
                        .instance_reuse
                        .unwrap_or(defaults::INSTANCE_REUSE_WASIP3)
                        as usize,
                },
                asks_concurrency: limits.instance_concurrency.is_some_and(|n| n > 1),
            },
        }
    }

    /// A request's time limit.
    pub fn timeout(&self) -> Duration {
        self.execution.timeout
    }
}

/// Whether a service running `concurrency` requests at once, each instance with
/// `memory_mb`, fits the host: no more instances than one service may run, and its
/// worst case (every slot busy, every instance at its memory limit) within the
/// host's memory budget.
pub fn check_fits(
    memory_mb: u32,
    concurrency: u32,
    defaults: &ServiceDefaults,
    memory_budget_bytes: usize,
) -> Result<(), Invalid> {
    let cap = defaults.max_instances_per_service;
    if concurrency > cap {
        return Err(Invalid::InstanceCap {
            asked: concurrency,
            cap,
        });
    }
    let need_mb = u64::from(memory_mb) * u64::from(concurrency);
    let budget_mb = (memory_budget_bytes / (1024 * 1024)) as u64;
    if need_mb > budget_mb {
        return Err(Invalid::MemoryBudget {
            memory_mb: u64::from(memory_mb),
            concurrency: u64::from(concurrency),
            need_mb,
            budget_mb,
        });
    }
    Ok(())
}

/// A scale `shoal scale` may set.
pub fn check_scale(scale: Scale) -> Result<(), Invalid> {
    if !(1..=100_000).contains(&scale.max_concurrency) || scale.queue > 1_000_000 {
        return Err(Invalid::Scale);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    fn record(manifest: &str) -> VersionRecord {
        VersionRecord {
            name: "orders".into(),
            version: "1".into(),
            digest: "d".into(),
            deployed_at: "2026-01-01T00:00:00Z".into(),
            manifest: Manifest::from_toml(manifest).expect("a manifest"),
        }
    }

    #[test]
    fn the_settings_default_to_the_flags_defaults_and_agree() {
        use clap::{Args as _, FromArgMatches as _};
        let command = ServiceSettings::augment_args(RuntimeSettings::augment_args(
            clap::Command::new("serve"),
        ));
        let matches = command.get_matches_from(["serve"]);
        assert_eq!(
            ServiceSettings::from_arg_matches(&matches).expect("parsed"),
            ServiceSettings::default()
        );
        assert_eq!(
            RuntimeSettings::from_arg_matches(&matches).expect("parsed"),
            RuntimeSettings::default()
        );
        let defaults = ServiceSettings::default()
            .defaults(&RuntimeSettings::default())
            .expect("consistent");
        assert_eq!(defaults.memory_mb, defaults::MEMORY_MB);
        assert_eq!(defaults.max_instances_per_service, 500);
        let refused = ServiceSettings {
            default_memory_mb: 2048,
            ..ServiceSettings::default()
        }
        .defaults(&RuntimeSettings::default());
        assert!(refused.is_err());
    }

    #[test]
    fn an_empty_manifest_takes_every_default() {
        let spec = DeploymentSpec::resolve(&record(""), &ServiceDefaults::default());
        assert_eq!(spec.route, "/orders");
        assert_eq!(spec.memory_mb, defaults::MEMORY_MB);
        assert_eq!(spec.timeout(), Duration::from_millis(defaults::TIMEOUT_MS));
        assert_eq!(
            spec.scale,
            Scale {
                max_concurrency: defaults::MAX_CONCURRENCY,
                queue: defaults::QUEUE
            }
        );
        assert_eq!(spec.store_quota_bytes, 64 * 1024 * 1024);
        let execution = &spec.execution;
        assert_eq!(execution.memory_bytes, 128 * 1024 * 1024);
        assert_eq!(
            execution.table_elements,
            defaults::TABLE_ELEMENTS as usize,
            "the documented default, which the instance pool reserves"
        );
        assert_eq!(execution.sequential_reuse, 1);
        assert_eq!(execution.concurrency.per_instance, 16);
        assert_eq!(execution.concurrency.requests_per_instance, 128);
        assert!(!execution.asks_concurrency);
    }

    #[test]
    fn the_manifest_overrides_each_default() {
        let spec = DeploymentSpec::resolve(
            &record(
                r#"
                route = "/api"
                [limits]
                memory_mb = 32
                timeout_ms = 5000
                table_elements = 1000
                instance_reuse = 7
                instance_concurrency = 4
                max_concurrency = 3
                queue = 9
                store_mb = 2
                "#,
            ),
            &ServiceDefaults::default(),
        );
        assert_eq!(spec.route, "/api");
        assert_eq!(spec.memory_mb, 32);
        assert_eq!(spec.timeout(), Duration::from_secs(5));
        assert_eq!(
            spec.scale,
            Scale {
                max_concurrency: 3,
                queue: 9
            }
        );
        assert_eq!(spec.store_quota_bytes, 2 * 1024 * 1024);
        assert_eq!(spec.execution.table_elements, 1000);
        assert_eq!(spec.execution.sequential_reuse, 7);
        assert_eq!(spec.execution.concurrency.per_instance, 4);
        assert_eq!(spec.execution.concurrency.requests_per_instance, 7);
        assert!(spec.execution.asks_concurrency);
    }

    #[test]
    fn the_host_defaults_apply_and_the_default_concurrency_stays_under_the_instance_cap() {
        let defaults = ServiceDefaults {
            memory_mb: 16,
            timeout: Duration::from_secs(2),
            max_instances_per_service: 8,
            ..ServiceDefaults::default()
        };
        let spec = DeploymentSpec::resolve(&record(""), &defaults);
        assert_eq!(spec.memory_mb, 16);
        assert_eq!(spec.timeout(), Duration::from_secs(2));
        assert_eq!(spec.scale.max_concurrency, 8, "64 lowered to the cap");
    }

    #[test]
    fn a_service_must_fit_the_instance_cap_and_the_memory_budget() {
        let defaults = ServiceDefaults {
            max_instances_per_service: 10,
            ..ServiceDefaults::default()
        };
        let budget = 1024 * 1024 * 1024;
        assert_eq!(check_fits(64, 10, &defaults, budget), Ok(()));
        assert_eq!(
            check_fits(64, 11, &defaults, budget),
            Err(Invalid::InstanceCap { asked: 11, cap: 10 })
        );
        assert_eq!(check_fits(128, 8, &defaults, budget), Ok(()));
        assert!(matches!(
            check_fits(129, 8, &defaults, budget),
            Err(Invalid::MemoryBudget { need_mb: 1032, .. })
        ));
    }

    #[test]
    fn a_scale_is_bounded() {
        let scale = |max_concurrency, queue| Scale {
            max_concurrency,
            queue,
        };
        assert_eq!(check_scale(scale(1, 0)), Ok(()));
        assert_eq!(check_scale(scale(100_000, 1_000_000)), Ok(()));
        assert_eq!(check_scale(scale(0, 0)), Err(Invalid::Scale));
        assert_eq!(check_scale(scale(100_001, 0)), Err(Invalid::Scale));
        assert_eq!(check_scale(scale(1, 1_000_001)), Err(Invalid::Scale));
    }

    /// The `[limits]` lines of the README's manifest reference, by key.
    fn readme_limits() -> std::collections::BTreeMap<String, String> {
        let readme = include_str!("../../../README.md");
        let reference = readme
            .split("### Manifest")
            .nth(1)
            .and_then(|section| section.split("```toml").nth(1))
            .and_then(|block| block.split("```").next())
            .expect("the README has a manifest reference");
        let limits = reference
            .split("[limits]")
            .nth(1)
            .and_then(|rest| rest.split("\n\n").next())
            .expect("the reference has a [limits] table");
        limits
            .lines()
            .filter_map(|line| {
                let (key, _) = line.split_once('=')?;
                Some((key.trim().to_owned(), line.to_owned()))
            })
            .collect()
    }

    #[test]
    fn the_readme_manifest_reference_names_the_real_defaults() {
        let lines = readme_limits();
        let documented = [
            (
                "memory_mb",
                format!("default --default-memory-mb, {}", defaults::MEMORY_MB),
            ),
            (
                "timeout_ms",
                format!("default --default-timeout-ms, {}", defaults::TIMEOUT_MS),
            ),
            (
                "table_elements",
                format!("default --max-table-elements, {}", defaults::TABLE_ELEMENTS),
            ),
            (
                "instance_reuse",
                format!(
                    "default {}: fresh each; WASIp3: {}",
                    defaults::INSTANCE_REUSE,
                    defaults::INSTANCE_REUSE_WASIP3
                ),
            ),
            (
                "instance_concurrency",
                format!("default {}", defaults::INSTANCE_CONCURRENCY),
            ),
            (
                "max_concurrency",
                format!(
                    "default --default-max-concurrency, {}",
                    defaults::MAX_CONCURRENCY
                ),
            ),
            (
                "queue",
                format!("default --default-queue, {}", defaults::QUEUE),
            ),
            ("store_mb", format!("default {}", defaults::STORE_MB)),
        ];
        for (key, default) in &documented {
            let line = lines
                .get(*key)
                .unwrap_or_else(|| panic!("the README's [limits] has no `{key}`"));
            assert!(
                line.contains(&format!("({default})")),
                "README: `{line}` should say ({default})"
            );
        }
        assert_eq!(
            lines.len(),
            documented.len(),
            "every documented limit has its default checked: {:?}",
            lines.keys()
        );
    }
}
