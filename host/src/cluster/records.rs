//! What a cluster keeps in etcd, and the changes to a service's desired state as pure
//! functions (each host's admin API computes one, then writes it in one transaction).
//!
//! Keys, below the cluster's prefix:
//! - `hosts/{id}` → [`HostRecord`], on the host's lease: a member is up while it is
//!   there;
//! - `members/{id}` → [`HostRecord`], kept: every host that ever joined;
//! - `drains/{id}` → [`DrainRecord`]: the host is draining;
//! - `services/{name}` → [`ServiceRecord`]: the desired state of a service;
//! - `placements/{name}` → [`PlacementRecord`]: which hosts run it, written by the
//!   leader only;
//! - `artifacts/{digest}/{host}` → [`ArtifactRecord`]: that host stores the component;
//! - `tokens/{id}` → a scoped admin token (the hash of its secret), and
//!   `secrets/{name}` → a secret, its value encrypted ([`super::shared`]);
//! - `instances/{service}/{id}`: registry records ([`crate::registry::etcd`]);
//! - `election/{tag}`: the leader election, `tag` derived from the cluster token, so
//!   a host with another token never campaigns in this one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::data_dir::VersionRecord;
use crate::services::limiter::Scale;
use crate::services::state::{AutoRollback, CanaryState, ServiceState};
use crate::services::{Conflict, ServiceError};

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Host id.
    pub id: String,
    /// Its gateway, as peers reach it (`host:port`).
    pub address: String,
    /// Its admin API (`host:port`), for operators.
    pub admin_address: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Memory it may promise to services, MiB.
    pub memory_budget_mb: u64,
    /// Shoal version it runs.
    pub shoal_version: String,
    /// Where the other hosts reach it when they speak mutual TLS (its cluster port);
    /// none: at `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<String>,
}

impl HostRecord {
    /// Where the other hosts send it their requests.
    pub fn peer_address(&self) -> &str {
        self.peer_address.as_deref().unwrap_or(&self.address)
    }
}

/// A draining host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    /// When the drain was asked for, RFC 3339.
    pub since: String,
}

/// A service's desired state in the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Versions, canary and scale, as one host persists them.
    pub state: ServiceState,
    /// Hosts that should run it (`shoal scale --replicas` overrides the manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_override: Option<u32>,
}

impl ServiceRecord {
    /// How many hosts should run it.
    pub fn replicas(&self) -> u32 {
        self.replicas_override
            .or(self.state.current.manifest.replicas)
            .unwrap_or(1)
    }

    /// Labels a host must carry to run it.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.state.current.manifest.placement.labels
    }

    /// The route it serves.
    pub fn route(&self) -> String {
        route_of(&self.state.current)
    }

    /// The gRPC services it serves.
    pub fn grpc(&self) -> &[String] {
        &self.state.current.manifest.grpc
    }

    /// Every path prefix it owns: its route, and one per gRPC service.
    pub fn routes(&self) -> Vec<String> {
        routes_of(&self.state.current)
    }
}

/// Every path prefix a version owns: its route, and one per gRPC service.
pub fn routes_of(record: &VersionRecord) -> Vec<String> {
    std::iter::once(route_of(record))
        .chain(
            record
                .manifest
                .grpc
                .iter()
                .map(|service| crate::manifest::grpc_route(service)),
        )
        .collect()
}

/// The route a version serves.
pub fn route_of(record: &VersionRecord) -> String {
    record
        .manifest
        .route
        .clone()
        .unwrap_or_else(|| format!("/{}", record.name))
}

/// Which hosts run a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRecord {
    /// Host ids, sorted.
    pub hosts: Vec<String>,
    /// The replicas the leader placed for (more than `hosts` when it found too few
    /// hosts with room and matching labels).
    #[serde(default)]
    pub wanted: u32,
}

/// A host stores a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// Its size in bytes.
    pub bytes: u64,
}

/// How a deploy takes traffic (the cluster's copy of the admin API's choice).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new version replaces the current one.
    Deploy(VersionRecord),
    /// A new version runs beside the current one.
    Canary(VersionRecord, u8, Option<AutoRollback>),
    /// Back to an earlier version.
    Rollback(Option<String>),
    /// The canary's weight.
    CanaryWeight(u8),
    /// The canary becomes current.
    Promote,
    /// The canary goes.
    AbortCanary,
    /// Concurrency and queue on each host.
    Scale(Scale),
    /// How many hosts run it.
    Replicas(u32),
}

/// The desired state after `change` of service `name`, now `current` (`None`: new);
/// `routes` maps every other service's route to its name.
pub fn apply(
    name: &str,
    current: Option<&ServiceRecord>,
    change: Change,
    routes: &BTreeMap<String, String>,
) -> Result<ServiceRecord, ServiceError> {
    let conflict = |reason| ServiceError::Conflict {
        service: name.to_owned(),
        reason,
    };
    let running = || {
        current
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(name.to_owned()))
    };
    let record = match change {
        Change::Deploy(version) => {
            for route in routes_of(&version) {
                if let Some(owner) = routes.get(&route).filter(|owner| *owner != name) {
                    return Err(ServiceError::RouteConflict {
                        route,
                        owner: owner.clone(),
                    });
                }
            }
            match current {
                Some(current) => {
                    let mut record = current.clone();
                    record.state.promote(version);
                    record.state.canary = None;
                    record
                }
                None => ServiceRecord {
                    state: ServiceState {
                        current: version,
                        history: Vec::new(),
                        canary: None,
                        scale: None,
                    },
                    replicas_override: None,
                },
            }
        }
        Change::Canary(version, weight, auto_rollback) => {
            let Some(current) = current else {
                return Err(conflict(Conflict::NothingToShareWith));
            };
            let (stable, asked) = (current.routes().join(", "), routes_of(&version).join(", "));
            if stable != asked {
                return Err(conflict(Conflict::CanaryRoute { stable, asked }));
            }
            let mut record = current.clone();
            record.state.canary = Some(CanaryState {
                record: version,
                weight,
                auto_rollback,
            });
            record
        }
        Change::Rollback(version) => {
            let mut record = running()?;
            let target = record
                .state
                .take_rollback_target(version.as_deref())
                .ok_or_else(|| conflict(Conflict::NoEarlierVersion(version.clone())))?;
            record.state.promote(target);
            record.state.canary = None;
            record
        }
        Change::CanaryWeight(weight) => {
            let mut record = running()?;
            let canary = record
                .state
                .canary
                .as_mut()
                .ok_or_else(|| conflict(Conflict::NoCanary))?;
            canary.weight = weight;
            record
        }
        Change::Promote => {
            let mut record = running()?;
            let canary = record
                .state
                .canary
                .take()
                .ok_or_else(|| conflict(Conflict::NoCanary))?;
            record.state.promote(canary.record);
            record
        }
        Change::AbortCanary => {
            let mut record = running()?;
            record
                .state
                .canary
                .take()
                .ok_or_else(|| conflict(Conflict::NoCanary))?;
            record
        }
        Change::Scale(scale) => {
            let mut record = running()?;
            record.state.scale = Some(scale);
            record
        }
        Change::Replicas(replicas) => {
            let mut record = running()?;
            record.replicas_override = Some(replicas);
            record
        }
    };
    Ok(record)
}

/// The service (other than `name`) whose route `route` sits inside, if any: the
/// nearest parent route in `routes` (route → owner).
pub fn nested_inside(route: &str, name: &str, routes: &BTreeMap<String, String>) -> Option<String> {
    let mut candidate = route.trim_end_matches('/');
    loop {
        candidate = &candidate[..candidate.rfind('/')?];
        let parent = if candidate.is_empty() { "/" } else { candidate };
        if let Some(owner) = routes.get(parent) {
            return (owner != name).then(|| owner.clone());
        }
        if candidate.is_empty() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    fn version(name: &str, version: &str) -> VersionRecord {
        VersionRecord {
            name: name.into(),
            version: version.into(),
            digest: format!("digest-{version}"),
            deployed_at: "2026-12-07T00:00:00Z".into(),
            manifest: Manifest {
                version: Some(version.into()),
                ..Manifest::default()
            },
        }
    }

    fn no_routes() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn a_route_inside_another_services_route_names_it() {
        let routes: BTreeMap<String, String> = [
            ("/api".to_owned(), "api".to_owned()),
            ("/".to_owned(), "root".to_owned()),
        ]
        .into();
        assert_eq!(
            nested_inside("/api/orders", "orders", &routes).as_deref(),
            Some("api")
        );
        assert_eq!(
            nested_inside("/shop", "shop", &routes).as_deref(),
            Some("root")
        );
        assert_eq!(nested_inside("/api/x", "api", &routes), None);
        assert_eq!(nested_inside("/", "root", &BTreeMap::new()), None);
    }

    #[test]
    fn deploys_keep_history_and_rollback_goes_back() {
        let one = apply("s", None, Change::Deploy(version("s", "1")), &no_routes()).expect("new");
        assert_eq!(one.replicas(), 1);
        let two = apply(
            "s",
            Some(&one),
            Change::Deploy(version("s", "2")),
            &no_routes(),
        )
        .expect("replace");
        assert_eq!(two.state.current.version, "2");
        assert_eq!(two.state.history[0].version, "1");
        let back = apply("s", Some(&two), Change::Rollback(None), &no_routes()).expect("rollback");
        assert_eq!(back.state.current.version, "1");
        let error = apply("s", Some(&one), Change::Rollback(None), &no_routes())
            .expect_err("nothing earlier");
        assert!(error.to_string().contains("no earlier version"), "{error}");
    }

    #[test]
    fn canaries_share_the_route_and_promote_or_go() {
        let one = apply("s", None, Change::Deploy(version("s", "1")), &no_routes()).expect("new");
        let error = apply(
            "s",
            None,
            Change::Canary(version("s", "2"), 20, None),
            &no_routes(),
        )
        .expect_err("nothing to share with");
        assert!(matches!(error, ServiceError::Conflict { .. }));
        let canary = apply(
            "s",
            Some(&one),
            Change::Canary(version("s", "2"), 20, None),
            &no_routes(),
        )
        .expect("canary");
        let weighted =
            apply("s", Some(&canary), Change::CanaryWeight(50), &no_routes()).expect("weight");
        assert_eq!(weighted.state.canary.as_ref().map(|c| c.weight), Some(50));
        let promoted = apply("s", Some(&weighted), Change::Promote, &no_routes()).expect("promote");
        assert_eq!(promoted.state.current.version, "2");
        assert!(promoted.state.canary.is_none());
        let aborted = apply("s", Some(&canary), Change::AbortCanary, &no_routes()).expect("abort");
        assert_eq!(aborted.state.current.version, "1");
        assert!(apply("s", Some(&aborted), Change::AbortCanary, &no_routes()).is_err());
    }

    #[test]
    fn a_route_of_another_service_is_refused_and_replicas_override_the_manifest() {
        let routes: BTreeMap<String, String> = [("/s".to_owned(), "other".to_owned())].into();
        let error =
            apply("s", None, Change::Deploy(version("s", "1")), &routes).expect_err("taken");
        assert!(
            matches!(error, ServiceError::RouteConflict { .. }),
            "{error}"
        );
        let mut manifest_two = version("t", "1");
        manifest_two.manifest.replicas = Some(2);
        let two = apply("t", None, Change::Deploy(manifest_two), &no_routes()).expect("new");
        assert_eq!(two.replicas(), 2);
        let three = apply("t", Some(&two), Change::Replicas(3), &no_routes()).expect("scaled");
        assert_eq!(three.replicas(), 3);
        assert!(matches!(
            apply("u", None, Change::Replicas(3), &no_routes()),
            Err(ServiceError::NotFound(_))
        ));
    }
}
