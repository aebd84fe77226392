//! The leader: one host, elected through etcd's election API on its lease, computes
//! placements ([`crate::policy::placement`]) whenever the cluster changes and writes
//! them in transactions fenced on its election key: once another host leads (or this
//! host's lease expired), the key's revision differs and nothing is written.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Cluster;
use super::view::ClusterView;
use crate::policy::placement::{self, Demand, HostCapacity, HostState, Placements};
use crate::registry::Registry as _;
use crate::registry::etcd::Etcd;
use crate::services::spec::DeploymentSpec;

/// How often a leader looks again without news (replicas that began serving).
const TICK: Duration = Duration::from_millis(500);

/// Campaign while the host lives; lead while elected.
pub async fn run(cluster: Weak<Cluster>) {
    loop {
        let Some(this) = cluster.upgrade() else {
            return;
        };
        let mut lease = this.lease.clone();
        let Some(lease_id) = *lease.borrow_and_update() else {
            drop(this);
            if lease.changed().await.is_err() {
                return;
            }
            continue;
        };
        let mut client = this.etcd.client();
        let name = this
            .etcd
            .key(&format!("election/{}", this.etcd.cluster_key().tag()));
        let campaign = client.campaign(name, this.host_id.clone(), lease_id);
        let elected = tokio::select! {
            answer = campaign => answer,
            _ = lease.changed() => continue,
        };
        let leader_key = match elected {
            Ok(answer) => answer.leader().cloned(),
            Err(error) => {
                tracing::warn!(%error, "campaigning for leadership failed; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(leader_key) = leader_key else {
            continue;
        };
        tracing::info!(host = %this.host_id, "elected leader of the cluster");
        this.lead(&leader_key, lease_id).await;
        tracing::info!(host = %this.host_id, "no longer the leader");
    }
}

/// Memory a replica of `record` asks of its host, MiB: one instance's linear memory
/// (its manifest's `limits.memory_mb`). What it uses beyond that under load is
/// bounded at run time by the host's budget (`--max-total-memory-mb`), as Kubernetes
/// places pods by their requests, not their limits.
pub fn memory_demand(
    record: &super::records::ServiceRecord,
    defaults: &crate::services::ServiceDefaults,
) -> u64 {
    u64::from(DeploymentSpec::resolve(&record.state.current, defaults).memory_mb)
}

impl Cluster {
    /// Place replicas until leadership (or the lease it hangs on) is lost.
    async fn lead(self: &Arc<Self>, leader_key: &etcd_client::LeaderKey, lease_id: i64) {
        let mut view = self.view.clone();
        let mut lease = self.lease.clone();
        loop {
            if *lease.borrow_and_update() != Some(lease_id) {
                return;
            }
            let snapshot = view.borrow_and_update().clone();
            if snapshot.loaded {
                match self.write_placements(&snapshot, leader_key).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(error) => tracing::warn!(%error, "cannot write placements; will retry"),
                }
                self.judge_canaries(&snapshot).await;
            }
            tokio::select! {
                _ = view.changed() => {}
                _ = lease.changed() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Roll back every canary whose automatic-rollback rule the outcomes of all the
    /// hosts that run it, summed, break (each host also judges its own share alone).
    async fn judge_canaries(&self, view: &ClusterView) {
        use crate::services::ServiceDirectory as _;
        let Some(services) = self.services.upgrade() else {
            return;
        };
        for (name, (record, _)) in &view.services {
            let Some(canary) = &record.state.canary else {
                continue;
            };
            let Some(rule) = &canary.auto_rollback else {
                continue;
            };
            let version = &canary.record.version;
            let mut calls = 0u32;
            let mut failures = 0u32;
            for host in view.placements.get(name).into_iter().flatten() {
                let window = if *host == self.host_id {
                    services.canary_window(name)
                } else {
                    match view.hosts.get(host) {
                        Some(peer) => self.peer_canary_window(peer.peer_address(), name).await,
                        None => None,
                    }
                };
                if let Some((seen, host_calls, host_failures)) = window
                    && seen == *version
                {
                    calls = calls.saturating_add(host_calls);
                    failures = failures.saturating_add(host_failures);
                }
            }
            if crate::policy::error_rate::exceeds(
                calls,
                failures,
                rule.max_error_rate,
                rule.min_requests,
            ) {
                let reason = format!(
                    "canary {version} failed {failures} of {calls} requests over every host, above its threshold"
                );
                if let Err(error) = self.roll_back_canary(name, version, &reason).await {
                    tracing::warn!(service = %name, %error, "cannot roll the canary back; will retry");
                }
            }
        }
    }

    /// A peer's share of `service`'s canary outcomes: (version, calls, failures).
    async fn peer_canary_window(&self, address: &str, service: &str) -> Option<(String, u32, u32)> {
        use http_body_util::BodyExt as _;
        let uri = self.peers.url(
            address,
            &format!("{}canary/{service}", super::peers::PEER_PATH),
        );
        let request = http::Request::get(uri)
            .body(
                http_body_util::Empty::<bytes::Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .ok()?;
        let read = async {
            let response = self.peers.send(request).await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let body = http_body_util::Limited::new(response.into_body(), 4096)
                .collect()
                .await
                .ok()?
                .to_bytes();
            let window: serde_json::Value = serde_json::from_slice(&body).ok()?;
            Some((
                window["version"].as_str()?.to_owned(),
                u32::try_from(window["calls"].as_u64()?).ok()?,
                u32::try_from(window["failures"].as_u64()?).ok()?,
            ))
        };
        tokio::time::timeout(Duration::from_secs(1), read)
            .await
            .ok()
            .flatten()
    }

    /// Compute and write placements; `Ok(false)` when the fence says another leads.
    async fn write_placements(
        &self,
        view: &ClusterView,
        leader_key: &etcd_client::LeaderKey,
    ) -> Result<bool, crate::registry::etcd::EtcdError> {
        let Some(services) = self.services.upgrade() else {
            return Ok(true);
        };
        let hosts: Vec<HostCapacity> = view
            .hosts
            .values()
            .map(|host| HostCapacity {
                id: host.id.clone(),
                labels: host.labels.clone(),
                state: if view.drains.contains_key(&host.id) {
                    HostState::Draining
                } else {
                    HostState::Up
                },
                budget_mb: host.memory_budget_mb,
            })
            .collect();
        let demands: Vec<Demand> = view
            .services
            .iter()
            .map(|(name, (record, _))| Demand {
                service: name.clone(),
                replicas: record.replicas(),
                labels: record.labels().clone(),
                memory_mb: memory_demand(record, services.defaults()),
            })
            .collect();
        let mut serving: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in view.services.keys() {
            let instances = self.registry.instances(name).await.unwrap_or_default();
            let hosts = instances
                .iter()
                .filter(|i| i.health == crate::registry::Health::Serving)
                .filter_map(|i| i.id.split_once('/').map(|(host, _)| host.to_owned()))
                .collect();
            serving.insert(name.clone(), hosts);
        }
        let is_serving = |service: &str, host: &str| {
            serving
                .get(service)
                .is_some_and(|hosts| hosts.iter().any(|h| h == host))
        };
        let current: Placements = view.placements.clone();
        let (wanted, shortfalls) = placement::place(&hosts, &demands, &current, &is_serving);
        let mut operations = Vec::new();
        // Every service gets a record, an empty one when no host can take it, so its
        // shortfall shows; services that are gone lose theirs.
        for demand in &demands {
            let service = &demand.service;
            let hosts = wanted.get(service).cloned().unwrap_or_default();
            let unchanged = current.get(service) == Some(&hosts)
                && view.wanted.get(service) == Some(&demand.replicas);
            if !unchanged {
                let key = self.placement_key(service);
                let value = self.seal_placement(&key, &hosts, demand.replicas);
                operations.push(etcd_client::TxnOp::put(key, value, None));
            }
        }
        for service in current
            .keys()
            .filter(|s| !demands.iter().any(|d| d.service == **s))
        {
            operations.push(etcd_client::TxnOp::delete(
                self.placement_key(service),
                None,
            ));
        }
        if operations.is_empty() {
            return Ok(true);
        }
        let fence = etcd_client::Compare::create_revision(
            leader_key.key().to_vec(),
            etcd_client::CompareOp::Equal,
            leader_key.rev(),
        );
        let txn = etcd_client::Txn::new().when([fence]).and_then(operations);
        let mut client = self.etcd.client();
        let answer = Etcd::bounded(client.txn(txn)).await?;
        if answer.succeeded() {
            for shortfall in shortfalls {
                tracing::warn!(
                    service = %shortfall.service,
                    wanted = shortfall.wanted,
                    placed = shortfall.placed,
                    "not enough hosts with room and matching labels for every replica"
                );
            }
            tracing::info!(placements = ?wanted, "placements written");
        }
        Ok(answer.succeeded())
    }
}
