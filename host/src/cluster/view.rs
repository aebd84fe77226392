//! The cluster as this host sees it: members, drains, desired states, placements,
//! artifact holders and the election, kept current by one etcd watch over the
//! cluster's prefix (listed again after any break). Readers take a snapshot; nothing
//! on a request's path calls etcd.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::watch;

use super::records::{ArtifactRecord, DrainRecord, HostRecord, PlacementRecord, ServiceRecord};
use crate::registry::etcd::{Etcd, EtcdError};

/// A snapshot of the cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Whether etcd has been read once (until then, nothing is decided from it).
    pub loaded: bool,
    /// Live members (holding their lease), by id.
    pub hosts: BTreeMap<String, HostRecord>,
    /// Every host that ever joined, by id (live or not).
    pub members: BTreeMap<String, HostRecord>,
    /// Draining hosts.
    pub drains: BTreeMap<String, DrainRecord>,
    /// Desired states, by service, with their `mod_revision`.
    pub services: BTreeMap<String, (ServiceRecord, i64)>,
    /// Placements, by service.
    pub placements: BTreeMap<String, Vec<String>>,
    /// The replicas each placement was made for.
    pub wanted: BTreeMap<String, u32>,
    /// Digest → hosts that store it.
    pub artifacts: BTreeMap<String, BTreeSet<String>>,
    /// Election candidates: key → (create revision, host id); the lowest revision
    /// leads.
    pub candidates: BTreeMap<String, (i64, String)>,
    /// Scoped admin tokens shared by every host, by id.
    pub tokens: BTreeMap<String, crate::access::tokens::StoredToken>,
    /// Secrets shared by every host, by name, with their revision.
    pub secrets: BTreeMap<String, (super::shared::SecretRecord, i64)>,
    /// Route → service, rebuilt whenever the services change (read on every
    /// gateway request).
    pub routes: BTreeMap<String, String>,
    /// gRPC service → the service that serves it, rebuilt with `routes`.
    pub grpc: BTreeMap<String, String>,
    /// The store's revision this view reflects.
    pub revision: i64,
}

impl ClusterView {
    /// The leader's host id.
    pub fn leader(&self) -> Option<&str> {
        self.candidates
            .values()
            .min_by_key(|(revision, _)| *revision)
            .map(|(_, host)| host.as_str())
    }

    /// Rebuild the route index from the services.
    fn index_routes(&mut self) {
        self.routes = self
            .services
            .iter()
            .map(|(name, (record, _))| (record.route(), name.clone()))
            .collect();
        self.grpc = self
            .services
            .iter()
            .flat_map(|(name, (record, _))| {
                record
                    .grpc()
                    .iter()
                    .map(|service| (service.clone(), name.clone()))
            })
            .collect();
    }

    /// The service that serves gRPC service `name`.
    pub fn resolve_grpc(&self, name: &str) -> Option<&str> {
        self.grpc.get(name).map(String::as_str)
    }

    /// The service whose route holds `path`, and the route's length (the longest
    /// route that is `path` or a parent of it): a lookup per prefix of the path.
    pub fn resolve(&self, path: &str) -> Option<(String, usize)> {
        if self.routes.is_empty() {
            return None;
        }
        let mut candidate = path.trim_end_matches('/');
        loop {
            if !candidate.is_empty()
                && let Some(name) = self.routes.get(candidate)
            {
                return Some((name.clone(), candidate.len()));
            }
            match candidate.rfind('/') {
                Some(index) => candidate = &candidate[..index],
                None => break,
            }
        }
        self.routes.get("/").map(|name| (name.clone(), 0))
    }
}

/// One record, by where it sits below the prefix.
enum Entry {
    Host(String, HostRecord),
    Member(String, HostRecord),
    Drain(String, DrainRecord),
    Service(String, Box<ServiceRecord>),
    Placement(String, PlacementRecord),
    Artifact(String, String),
    Token(String, Box<crate::access::tokens::StoredToken>),
    Secret(String, super::shared::SecretRecord),
    Candidate(String, String),
    Other,
}

/// Follow the cluster's records into `sender`, for as long as anybody watches.
pub async fn follow(etcd: Etcd, sender: watch::Sender<Arc<ClusterView>>) {
    while !sender.is_closed() {
        if let Err(error) = follow_once(&etcd, &sender).await {
            tracing::warn!(%error, "lost the watch on the cluster's records; reading them again");
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

async fn follow_once(
    etcd: &Etcd,
    sender: &watch::Sender<Arc<ClusterView>>,
) -> Result<(), EtcdError> {
    let mut client = etcd.client();
    let prefix = etcd.key("");
    let answer = Etcd::bounded(client.get(
        prefix.clone(),
        Some(etcd_client::GetOptions::new().with_prefix()),
    ))
    .await?;
    let mut view = ClusterView {
        loaded: true,
        revision: answer.header().map_or(0, |h| h.revision()),
        ..ClusterView::default()
    };
    for kv in answer.kvs() {
        apply(
            etcd,
            &mut view,
            kv.key(),
            Some((kv.value(), kv.mod_revision(), kv.create_revision())),
        );
    }
    view.index_routes();
    sender.send_replace(Arc::new(view.clone()));
    let mut watch = etcd.watch("", view.revision + 1).await?;
    loop {
        let answer = watch.next().await?;
        let mut changed = false;
        for event in answer.events() {
            let Some(kv) = event.kv() else { continue };
            let value = match event.event_type() {
                etcd_client::EventType::Put => {
                    Some((kv.value(), kv.mod_revision(), kv.create_revision()))
                }
                etcd_client::EventType::Delete => None,
            };
            changed |= apply(etcd, &mut view, kv.key(), value);
            view.revision = view.revision.max(kv.mod_revision());
        }
        if changed {
            view.index_routes();
            sender.send_replace(Arc::new(view.clone()));
        }
        if sender.is_closed() {
            return Ok(());
        }
    }
}

/// Apply one put (`Some`) or delete (`None`) to `view`; returns whether it mattered.
fn apply(
    etcd: &Etcd,
    view: &mut ClusterView,
    key: &[u8],
    value: Option<(&[u8], i64, i64)>,
) -> bool {
    let full = String::from_utf8_lossy(key).into_owned();
    let Some(relative) = full.strip_prefix(&etcd.key("")) else {
        return false;
    };
    let relative = relative.to_owned();
    let Some((value, mod_revision, create_revision)) = value else {
        return remove(view, &relative);
    };
    let parsed = parse(etcd, key, &relative, value);
    let entry = match parsed {
        Ok(entry) => entry,
        Err(error) => {
            tracing::warn!(%error, "ignoring a cluster record");
            return false;
        }
    };
    match entry {
        Entry::Host(id, record) => {
            if record.id != id {
                tracing::warn!(key = %full, "a host record names another host; ignored");
                return false;
            }
            view.hosts.insert(id, record);
        }
        Entry::Member(id, record) => {
            if record.id != id {
                tracing::warn!(key = %full, "a member record names another host; ignored");
                return false;
            }
            view.members.insert(id, record);
        }
        Entry::Drain(id, record) => {
            view.drains.insert(id, record);
        }
        Entry::Service(name, record) => {
            view.services.insert(name, (*record, mod_revision));
        }
        Entry::Placement(name, record) => {
            view.wanted.insert(name.clone(), record.wanted);
            view.placements.insert(name, record.hosts);
        }
        Entry::Artifact(digest, host) => {
            view.artifacts.entry(digest).or_default().insert(host);
        }
        Entry::Token(id, token) => {
            view.tokens.insert(id, *token);
        }
        Entry::Secret(name, record) => {
            view.secrets.insert(name, (record, mod_revision));
        }
        Entry::Candidate(key, host) => {
            view.candidates.insert(key, (create_revision, host));
        }
        Entry::Other => return false,
    }
    true
}

fn parse(etcd: &Etcd, key: &[u8], relative: &str, value: &[u8]) -> Result<Entry, EtcdError> {
    let (kind, rest) = relative.split_once('/').unwrap_or((relative, ""));
    Ok(match kind {
        "hosts" => Entry::Host(rest.to_owned(), etcd.open(key, value)?),
        "members" => Entry::Member(rest.to_owned(), etcd.open(key, value)?),
        "tokens" => Entry::Token(rest.to_owned(), Box::new(etcd.open(key, value)?)),
        "secrets" => Entry::Secret(rest.to_owned(), etcd.open(key, value)?),
        "drains" => Entry::Drain(rest.to_owned(), etcd.open(key, value)?),
        "services" => Entry::Service(rest.to_owned(), Box::new(etcd.open(key, value)?)),
        "placements" => Entry::Placement(rest.to_owned(), etcd.open(key, value)?),
        "artifacts" => {
            let _: ArtifactRecord = etcd.open(key, value)?;
            let (digest, host) = rest.split_once('/').unwrap_or((rest, ""));
            Entry::Artifact(digest.to_owned(), host.to_owned())
        }
        // The election's keys hold the candidate's host id as etcd's election API
        // writes it (unsigned): shown to operators, never used to authorise a write,
        // which the leader fences on its own key instead.
        "election" if rest.starts_with(&format!("{}/", etcd.cluster_key().tag())) => {
            Entry::Candidate(rest.to_owned(), String::from_utf8_lossy(value).into_owned())
        }
        _ => Entry::Other,
    })
}

fn remove(view: &mut ClusterView, relative: &str) -> bool {
    let (kind, rest) = relative.split_once('/').unwrap_or((relative, ""));
    match kind {
        "hosts" => view.hosts.remove(rest).is_some(),
        "members" => view.members.remove(rest).is_some(),
        "tokens" => view.tokens.remove(rest).is_some(),
        "secrets" => view.secrets.remove(rest).is_some(),
        "drains" => view.drains.remove(rest).is_some(),
        "services" => view.services.remove(rest).is_some(),
        "placements" => {
            view.wanted.remove(rest);
            view.placements.remove(rest).is_some()
        }
        "artifacts" => {
            let (digest, host) = rest.split_once('/').unwrap_or((rest, ""));
            let removed = view
                .artifacts
                .get_mut(digest)
                .is_some_and(|holders| holders.remove(host));
            if view.artifacts.get(digest).is_some_and(BTreeSet::is_empty) {
                view.artifacts.remove(digest);
            }
            removed
        }
        "election" => view.candidates.remove(rest).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(routes: &[(&str, &str)]) -> ClusterView {
        ClusterView {
            routes: routes
                .iter()
                .map(|(route, name)| ((*route).to_owned(), (*name).to_owned()))
                .collect(),
            ..ClusterView::default()
        }
    }

    #[test]
    fn the_longest_route_holding_the_path_wins() {
        let view = routed(&[("/api", "api"), ("/api/orders", "orders"), ("/", "root")]);
        let found = |path: &str| view.resolve(path);
        assert_eq!(found("/api/orders/7"), Some(("orders".into(), 11)));
        assert_eq!(found("/api/ordersx"), Some(("api".into(), 4)));
        assert_eq!(found("/api"), Some(("api".into(), 4)));
        assert_eq!(found("/apix"), Some(("root".into(), 0)));
        assert_eq!(found("/"), Some(("root".into(), 0)));
        let no_root = routed(&[("/api", "api")]);
        assert_eq!(no_root.resolve("/other"), None);
        assert_eq!(ClusterView::default().resolve("/api"), None);
    }
}
