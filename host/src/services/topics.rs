//! Topic ownership applied to the running services: the rules of every version that
//! runs (or failed to restore), checked when a version is deployed.

use super::table::Versions;
use super::{ServiceError, Services};
use crate::access::{Action, Grant};
use crate::events::topics::{self, TopicRefusal, TopicRules};

/// Refuse `manifest` of service `name`, deployed by `grant`, if it declares a topic
/// one of `others` owns (and the grant may not change that service), or subscribes to
/// a topic whose publisher does not share it.
pub fn check_manifest_topics(
    name: &str,
    manifest: &crate::manifest::Manifest,
    grant: &Grant,
    others: &[(String, TopicRules)],
) -> Result<(), ServiceError> {
    let rules = manifest.events.rules();
    let subscribed: Vec<&str> = manifest
        .subscriptions
        .iter()
        .map(|subscription| subscription.topic.as_str())
        .collect();
    let may_change = |owner: &str| {
        grant
            .permits(&Action::ChangeService(owner.to_owned()))
            .is_ok()
    };
    topics::check_deploy(name, &rules, &subscribed, others, may_change).map_err(|refusal| {
        match refusal {
            TopicRefusal::Owned { topic, owner } => ServiceError::TopicOwned { topic, owner },
            TopicRefusal::NotShared { topic, owner } => {
                ServiceError::TopicNotShared { topic, owner }
            }
        }
    })
}

impl Services {
    /// The topic rules of every version that runs, and of services that failed to
    /// restore (they keep their claims): one entry per version.
    pub(super) fn topic_rules(&self) -> Vec<(String, TopicRules)> {
        let running = self.table.services().into_iter().flat_map(|service| {
            let versions = service.versions();
            let name = service.name().to_owned();
            versions
                .manifests()
                .map(|manifest| (name.clone(), manifest.events.rules()))
                .collect::<Vec<_>>()
        });
        let failed = self.failed().into_iter().map(|(name, failed)| {
            let rules = failed.state.current.manifest.events.rules();
            (name, rules)
        });
        running.chain(failed).collect()
    }

    /// Refuse `versions` of a deploy by `grant` if a version declares a topic another
    /// service owns (and the grant may not change that service), or subscribes to a
    /// topic whose publisher does not share it.
    pub(super) fn check_topics(
        &self,
        versions: &Versions,
        grant: &Grant,
    ) -> Result<(), ServiceError> {
        let others = self.topic_rules();
        for manifest in versions.manifests() {
            check_manifest_topics(versions.name(), manifest, grant, &others)?;
        }
        Ok(())
    }

    /// Whether `subscriber` may receive events `publisher` publishes: some running
    /// version of the publisher shares its events with it (in a cluster, wherever it
    /// runs).
    pub(super) fn shares_events(&self, publisher: &str, subscriber: &str) -> bool {
        if let Some(directory) = self.directory.get() {
            return directory
                .manifests(publisher)
                .iter()
                .any(|manifest| manifest.events.rules().shares_with(publisher, subscriber));
        }
        self.table.versions(publisher).is_some_and(|versions| {
            versions
                .manifests()
                .any(|manifest| manifest.events.rules().shares_with(publisher, subscriber))
        })
    }
}
