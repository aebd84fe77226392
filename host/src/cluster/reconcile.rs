//! Each host's reconcile loop: make what runs here match what the cluster placed here.
//! A service placed here runs its desired state (components fetched by digest from
//! the hosts that hold them, checked, then announced); a service no longer placed
//! here, or gone from the cluster, is removed here (its requests in flight finish).
//! Runs on every change of the cluster's records, and every few seconds besides, so a
//! step that failed (a peer unreachable) is tried again.

use std::sync::Weak;
use std::time::Duration;

use super::Cluster;
use super::view::ClusterView;
use crate::services::Services;

/// Pause between rounds without news.
const ROUND: Duration = Duration::from_secs(2);

/// Reconcile for as long as the cluster and the services live.
pub async fn run(cluster: Weak<Cluster>) {
    let Some(mut view) = cluster.upgrade().map(|c| c.view.clone()) else {
        return;
    };
    loop {
        {
            let (Some(this), Some(services)) = (
                cluster.upgrade(),
                cluster.upgrade().and_then(|c| c.services.upgrade()),
            ) else {
                return;
            };
            let snapshot = view.borrow_and_update().clone();
            if snapshot.loaded && services.is_ready() {
                this.reconcile(&services, &snapshot).await;
            }
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(ROUND) => {}
        }
    }
}

impl Cluster {
    async fn reconcile(&self, services: &Services, view: &ClusterView) {
        for (name, (record, _)) in &view.services {
            let placed_here = view
                .placements
                .get(name)
                .is_some_and(|hosts| hosts.contains(&self.host_id));
            if !placed_here {
                self.remove_here(services, name).await;
                continue;
            }
            let live = services.table().versions(name).map(|v| v.state());
            if live.as_ref() == Some(&record.state) {
                continue;
            }
            let digests = std::iter::once(&record.state.current)
                .chain(record.state.canary.as_ref().map(|c| &c.record))
                .map(|r| r.digest.clone());
            let mut missing = false;
            for digest in digests {
                if let Err(error) = self.ensure_artifact(services, view, &digest).await {
                    tracing::warn!(service = %name, %digest, error = %format!("{error:#}"), "cannot fetch the component; will retry");
                    missing = true;
                }
            }
            if missing {
                continue;
            }
            if let Err(error) = services.apply(record.state.clone()).await {
                tracing::warn!(service = %name, %error, "cannot run the cluster's desired state here; will retry");
            }
        }
        let here: Vec<String> = services
            .table()
            .services()
            .iter()
            .map(|s| s.name().to_owned())
            .chain(services.failed().into_iter().map(|(name, _)| name))
            .collect();
        for name in here {
            if !view.services.contains_key(&name) {
                self.remove_here(services, &name).await;
            }
        }
    }

    async fn remove_here(&self, services: &Services, name: &str) {
        if services.table().get(name).is_none() && services.failed_service(name).is_none() {
            return;
        }
        match services.remove(name).await {
            Ok(()) => tracing::info!(service = %name, "no longer placed on this host"),
            Err(error) => tracing::warn!(service = %name, %error, "cannot remove; will retry"),
        }
    }

    /// Have component `digest` stored here: fetched from a live host that holds it.
    async fn ensure_artifact(
        &self,
        services: &Services,
        view: &ClusterView,
        digest: &str,
    ) -> anyhow::Result<()> {
        if services.read_blob(digest).await.is_some() {
            return Ok(());
        }
        let holders: Vec<&super::records::HostRecord> = view
            .artifacts
            .get(digest)
            .into_iter()
            .flatten()
            .filter(|host| **host != self.host_id)
            .filter_map(|host| view.hosts.get(host))
            .collect();
        let mut last_error = anyhow::anyhow!("no live host holds it");
        for holder in holders {
            match self.peers.fetch(holder.peer_address(), digest).await {
                Ok(bytes) => {
                    let size = bytes.len() as u64;
                    services
                        .store_blob(digest, bytes)
                        .await
                        .map_err(|error| anyhow::anyhow!("{error}"))?;
                    if let Err(error) = self.announce_artifact(digest, size).await {
                        tracing::warn!(%error, "cannot announce a stored component");
                    }
                    return Ok(());
                }
                Err(error) => last_error = error.context(format!("from {}", holder.id)),
            }
        }
        Err(last_error)
    }
}
