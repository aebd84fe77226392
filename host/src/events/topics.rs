//! Who may publish to a topic and who may receive it: policy, pure.
//!
//! A service publishes only to the topics its manifest declares under
//! `[events] publishes` (exact topics, or a prefix ending in `*`). The services that
//! declare a topic own it: a deploy may not declare a topic another service owns,
//! unless its deployer may change that service too. A service receives a topic's
//! events only if the publisher consents: its `[events] subscribers` names the
//! subscriber (service name patterns), or the subscriber is the publisher itself.

use crate::events::validate_topic;
use crate::policy::glob::glob_matches;

/// A topic a service declares it publishes: one topic, or every topic that starts
/// with a prefix (`order.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPattern {
    /// Exactly this topic.
    Exact(String),
    /// Every topic that starts with this (possibly empty) prefix.
    Prefix(String),
}

impl TopicPattern {
    /// Parse a declaration: a valid topic, optionally ending in one `*`.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "invalid topic pattern `{}`: use a topic (1 to 128 of a-z, 0-9, `.`, `-`, `_`), \
                 or a prefix of one followed by `*`",
                pattern.chars().take(130).collect::<String>()
            )
        };
        match pattern.strip_suffix('*') {
            Some("") => Ok(Self::Prefix(String::new())),
            Some(prefix) => {
                validate_topic(prefix).map_err(|_| invalid())?;
                Ok(Self::Prefix(prefix.to_owned()))
            }
            None => {
                validate_topic(pattern).map_err(|_| invalid())?;
                Ok(Self::Exact(pattern.to_owned()))
            }
        }
    }

    /// Whether `topic` falls under this declaration.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == topic,
            Self::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        }
    }

    /// Whether some topic falls under both declarations.
    pub fn overlaps(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Exact(topic), Self::Prefix(prefix))
            | (Self::Prefix(prefix), Self::Exact(topic)) => topic.starts_with(prefix.as_str()),
            (Self::Prefix(a), Self::Prefix(b)) => {
                a.starts_with(b.as_str()) || b.starts_with(a.as_str())
            }
        }
    }
}

impl std::fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(topic) => f.write_str(topic),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// A service's topic rules, parsed from its manifest's `[events]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicRules {
    /// What it may publish.
    pub publishes: Vec<TopicPattern>,
    /// Services (name patterns) that may receive what it publishes.
    pub subscribers: Vec<String>,
}

impl TopicRules {
    /// The rules of a manifest's `[events]`: its `publishes` and `subscribers`
    /// (validated with the manifest; an invalid declaration grants nothing).
    pub fn new(publishes: &[String], subscribers: &[String]) -> Self {
        Self {
            publishes: publishes
                .iter()
                .filter_map(|pattern| TopicPattern::parse(pattern).ok())
                .collect(),
            subscribers: subscribers.to_vec(),
        }
    }

    /// Whether the service may publish to `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publishes.iter().any(|pattern| pattern.matches(topic))
    }

    /// Whether `subscriber` may receive this service's events (`publisher` is this
    /// service's own name: a service always receives its own).
    pub fn shares_with(&self, publisher: &str, subscriber: &str) -> bool {
        publisher == subscriber
            || self
                .subscribers
                .iter()
                .any(|pattern| glob_matches(pattern, subscriber))
    }
}

/// Why a deploy's topics are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicRefusal {
    /// It declares a topic another service owns.
    Owned {
        /// The declaration.
        topic: String,
        /// The service that owns (some of) it.
        owner: String,
    },
    /// It subscribes to a topic whose publisher does not share it with this service.
    NotShared {
        /// The topic.
        topic: String,
        /// The publisher.
        owner: String,
    },
}

/// Check the topics of `name`'s new version against every other service's rules
/// (`others`: name and rules, one entry per version that runs): its declarations may
/// not overlap another service's unless `may_change` that service, and each topic it
/// subscribes to must be shared with it by the services that publish it. A topic
/// nobody publishes yet may be subscribed to: its events flow once a publisher
/// shares them.
pub fn check_deploy(
    name: &str,
    rules: &TopicRules,
    subscribed: &[&str],
    others: &[(String, TopicRules)],
    may_change: impl Fn(&str) -> bool,
) -> Result<(), TopicRefusal> {
    for (owner, theirs) in others.iter().filter(|(owner, _)| owner != name) {
        for pattern in &rules.publishes {
            if theirs.publishes.iter().any(|their| their.overlaps(pattern)) && !may_change(owner) {
                return Err(TopicRefusal::Owned {
                    topic: pattern.to_string(),
                    owner: owner.clone(),
                });
            }
        }
    }
    for topic in subscribed {
        if rules.may_publish(topic) {
            continue;
        }
        let publishers = others
            .iter()
            .filter(|(owner, theirs)| owner != name && theirs.may_publish(topic));
        let mut shared = false;
        let mut refusing = None;
        for (owner, theirs) in publishers {
            if theirs.shares_with(owner, name) {
                shared = true;
            } else {
                refusing.get_or_insert(owner);
            }
        }
        if let (false, Some(owner)) = (shared, refusing) {
            return Err(TopicRefusal::NotShared {
                topic: (*topic).to_owned(),
                owner: owner.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(publishes: &[&str], subscribers: &[&str]) -> TopicRules {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        TopicRules::new(&strings(publishes), &strings(subscribers))
    }

    #[test]
    fn patterns_parse_match_and_overlap() {
        let exact = TopicPattern::parse("order.created").expect("a pattern");
        let prefix = TopicPattern::parse("order.*").expect("a pattern");
        let other = TopicPattern::parse("payment.*").expect("a pattern");
        let everything = TopicPattern::parse("*").expect("a pattern");
        assert!(exact.matches("order.created") && !exact.matches("order.created2"));
        assert!(prefix.matches("order.x") && !prefix.matches("orders.x"));
        assert!(exact.overlaps(&prefix) && prefix.overlaps(&exact));
        assert!(!prefix.overlaps(&other) && !exact.overlaps(&other));
        assert!(everything.overlaps(&other) && other.overlaps(&everything));
        assert!(
            TopicPattern::parse("ord*")
                .expect("a pattern")
                .overlaps(&TopicPattern::parse("order.*").expect("a pattern"))
        );
        for bad in ["", "Order", "a b", "a*b", "a**", &"t".repeat(129)] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(prefix.to_string(), "order.*");
    }

    #[test]
    fn a_service_publishes_only_what_it_declares() {
        let orders = rules(&["order.created", "audit.*"], &[]);
        assert!(orders.may_publish("order.created"));
        assert!(orders.may_publish("audit.login"));
        assert!(!orders.may_publish("order.cancelled"));
        assert!(!rules(&[], &[]).may_publish("order.created"));
    }

    #[test]
    fn a_publisher_shares_its_events_by_name_pattern() {
        let orders = rules(&["order.created"], &["inventory", "shop-*"]);
        assert!(orders.shares_with("orders", "inventory"));
        assert!(orders.shares_with("orders", "shop-mail"));
        assert!(orders.shares_with("orders", "orders"), "its own events");
        assert!(!orders.shares_with("orders", "spy"));
        assert!(rules(&["x"], &["*"]).shares_with("a", "anyone"));
    }

    #[test]
    fn a_topic_has_owners() {
        let others = vec![("orders".to_owned(), rules(&["order.*"], &["inventory"]))];
        let nobody = |_: &str| false;
        let taken = check_deploy("spy", &rules(&["order.created"], &[]), &[], &others, nobody);
        assert_eq!(
            taken,
            Err(TopicRefusal::Owned {
                topic: "order.created".into(),
                owner: "orders".into()
            })
        );
        // A deployer who may change the owner may share its topics.
        let team = |owner: &str| owner == "orders";
        assert!(
            check_deploy(
                "orders-v2",
                &rules(&["order.created"], &[]),
                &[],
                &others,
                team
            )
            .is_ok()
        );
        // Redeploying the owner itself is no conflict.
        assert!(check_deploy("orders", &rules(&["order.*"], &[]), &[], &others, nobody).is_ok());
        assert!(check_deploy("pay", &rules(&["payment.*"], &[]), &[], &others, nobody).is_ok());
    }

    #[test]
    fn a_subscription_needs_the_publisher_s_consent() {
        let others = vec![("orders".to_owned(), rules(&["order.*"], &["inventory"]))];
        let nobody = |_: &str| false;
        let none = TopicRules::default();
        assert!(check_deploy("inventory", &none, &["order.created"], &others, nobody).is_ok());
        assert_eq!(
            check_deploy("spy", &none, &["order.created"], &others, nobody),
            Err(TopicRefusal::NotShared {
                topic: "order.created".into(),
                owner: "orders".into()
            })
        );
        // Nobody publishes it yet: accepted, its events flow once a publisher shares.
        assert!(check_deploy("spy", &none, &["other.topic"], &others, nobody).is_ok());
        // Its own topic.
        let own = rules(&["order.timeout"], &[]);
        let others = vec![("shipping".to_owned(), rules(&["ship.*"], &[]))];
        assert!(check_deploy("orders", &own, &["order.timeout"], &others, nobody).is_ok());
    }
}
