//! Placement: which hosts of a cluster run which services, as pure code.
//!
//! The elected leader calls [`place`] with what it sees (hosts, what each service
//! asks for, where replicas are now and which of them serve) and writes the result.
//! The rules, in order:
//! - a replica stays where it is while its host is up and still matches the service's
//!   labels (no needless moves);
//! - replicas on a host that is gone are dropped at once (they serve nothing);
//! - a replica on a draining host, or one whose labels no longer match, stays until
//!   enough replicas serve elsewhere, so a drain never leaves a service with fewer
//!   serving replicas than it had;
//! - missing replicas go to distinct eligible hosts with room, the least loaded
//!   first (fewest replicas, then least memory promised, then id);
//! - replicas beyond what is asked leave the most loaded hosts first.

use std::collections::BTreeMap;

/// Whether a host takes new replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// Takes replicas.
    Up,
    /// Keeps what it runs until replicas elsewhere serve, takes nothing new.
    Draining,
}

/// A live member of the cluster, as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCapacity {
    /// Host id.
    pub id: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Up or draining.
    pub state: HostState,
    /// Memory it may promise to services, MiB.
    pub budget_mb: u64,
}

/// What one service asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// Service name.
    pub service: String,
    /// Hosts that should run it.
    pub replicas: u32,
    /// Labels a host must carry (all of them, same values).
    pub labels: BTreeMap<String, String>,
    /// Memory one replica may hold at most, MiB.
    pub memory_mb: u64,
}

/// Service → the hosts that run it (sorted).
pub type Placements = BTreeMap<String, Vec<String>>;

/// Why a service has fewer replicas than asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// The service.
    pub service: String,
    /// Replicas asked.
    pub wanted: u32,
    /// Replicas placed on up hosts.
    pub placed: u32,
}

/// The placements that satisfy `demands` on `hosts`, moving as little as possible from
/// `current`; `serving(service, host)` says whether a replica already serves there.
/// Services with no demand lose their placements.
pub fn place(
    hosts: &[HostCapacity],
    demands: &[Demand],
    current: &Placements,
    serving: &dyn Fn(&str, &str) -> bool,
) -> (Placements, Vec<Shortfall>) {
    let by_id: BTreeMap<&str, &HostCapacity> = hosts.iter().map(|h| (h.id.as_str(), h)).collect();
    let memory_of: BTreeMap<&str, u64> = demands
        .iter()
        .map(|d| (d.service.as_str(), d.memory_mb))
        .collect();
    // Load of every host from what stays where it is.
    let mut load: BTreeMap<&str, (u32, u64)> =
        hosts.iter().map(|h| (h.id.as_str(), (0, 0))).collect();
    let mut kept: BTreeMap<&str, (Vec<&str>, Vec<&str>)> = BTreeMap::new();
    for demand in demands {
        let mut staying = Vec::new();
        let mut leaving = Vec::new();
        for host in current.get(&demand.service).into_iter().flatten() {
            let Some(capacity) = by_id.get(host.as_str()) else {
                continue; // gone: its replica serves nothing
            };
            if capacity.state == HostState::Up && matches(capacity, demand) {
                staying.push(capacity.id.as_str());
            } else {
                leaving.push(capacity.id.as_str());
            }
        }
        // Replicas beyond what is asked leave the most loaded hosts: decided below,
        // once every kept replica is counted.
        for host in staying.iter().chain(&leaving) {
            let entry = load.entry(host).or_default();
            entry.0 += 1;
            entry.1 += memory_of.get(demand.service.as_str()).copied().unwrap_or(0);
        }
        kept.insert(demand.service.as_str(), (staying, leaving));
    }
    let mut placements = Placements::new();
    let mut shortfalls = Vec::new();
    for demand in demands {
        let (mut staying, leaving) = kept.remove(demand.service.as_str()).unwrap_or_default();
        let wanted = demand.replicas as usize;
        while staying.len() > wanted {
            let Some((index, _)) = staying
                .iter()
                .enumerate()
                .max_by_key(|(_, host)| (load[**host], std::cmp::Reverse(**host)))
            else {
                break;
            };
            let host = staying.remove(index);
            release(&mut load, host, demand.memory_mb);
        }
        while staying.len() < wanted {
            let candidate = hosts
                .iter()
                .filter(|h| h.state == HostState::Up && matches(h, demand))
                .filter(|h| !staying.contains(&h.id.as_str()) && !leaving.contains(&h.id.as_str()))
                .filter(|h| load[h.id.as_str()].1 + demand.memory_mb <= h.budget_mb)
                .min_by_key(|h| (load[h.id.as_str()], h.id.as_str()));
            let Some(host) = candidate else {
                break;
            };
            let entry = load.entry(host.id.as_str()).or_default();
            entry.0 += 1;
            entry.1 += demand.memory_mb;
            staying.push(host.id.as_str());
        }
        if staying.len() < wanted {
            shortfalls.push(Shortfall {
                service: demand.service.clone(),
                wanted: demand.replicas,
                placed: staying.len() as u32,
            });
        }
        // A leaving replica goes once as many replicas serve elsewhere as are asked
        // (or as can be placed at all); until then it keeps serving.
        let serving_elsewhere = staying
            .iter()
            .filter(|host| serving(&demand.service, host))
            .count();
        let enough = serving_elsewhere >= wanted.min(staying.len().max(1)) && !staying.is_empty();
        let mut hosts_of: Vec<String> = staying.iter().map(|h| (*h).to_owned()).collect();
        if !enough {
            hosts_of.extend(leaving.iter().map(|h| (*h).to_owned()));
        }
        hosts_of.sort();
        if !hosts_of.is_empty() {
            placements.insert(demand.service.clone(), hosts_of);
        }
    }
    (placements, shortfalls)
}

/// Check one label: keys and values of 1 to 63 letters, digits, `.`, `-`, `_`.
pub fn validate_label(key: &str, value: &str) -> Result<(), String> {
    let valid = |text: &str| {
        (1..=63).contains(&text.len())
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    if !valid(key) || !valid(value) {
        return Err(format!(
            "label `{key}={value}`: keys and values are 1 to 63 letters, digits, `.`, `-` or `_`"
        ));
    }
    Ok(())
}

/// Parse `k=v,k=v` (the `--labels` flag).
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("label `{pair}` is not `key=value`"))?;
        validate_label(key, value)?;
        if labels.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(format!("label `{key}` is given twice"));
        }
    }
    Ok(labels)
}

fn matches(host: &HostCapacity, demand: &Demand) -> bool {
    demand
        .labels
        .iter()
        .all(|(key, value)| host.labels.get(key) == Some(value))
}

fn release(load: &mut BTreeMap<&str, (u32, u64)>, host: &str, memory_mb: u64) {
    if let Some(entry) = load.get_mut(host) {
        entry.0 = entry.0.saturating_sub(1);
        entry.1 = entry.1.saturating_sub(memory_mb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, state: HostState, labels: &[(&str, &str)]) -> HostCapacity {
        HostCapacity {
            id: id.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            state,
            budget_mb: 1024,
        }
    }

    fn demand(service: &str, replicas: u32, labels: &[(&str, &str)]) -> Demand {
        Demand {
            service: service.into(),
            replicas,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            memory_mb: 100,
        }
    }

    fn three() -> Vec<HostCapacity> {
        vec![
            host("a", HostState::Up, &[("zone", "1")]),
            host("b", HostState::Up, &[("zone", "2")]),
            host("c", HostState::Up, &[("zone", "2")]),
        ]
    }

    fn all_serving(_: &str, _: &str) -> bool {
        true
    }

    #[test]
    fn labels_parse_and_bad_ones_are_named() {
        let labels = parse_labels("zone=eu-1, disk=ssd").expect("labels");
        assert_eq!(labels["zone"], "eu-1");
        assert_eq!(labels["disk"], "ssd");
        assert!(parse_labels("").expect("none").is_empty());
        assert!(
            parse_labels("zone")
                .expect_err("refused")
                .contains("key=value")
        );
        assert!(
            parse_labels("a=1,a=2")
                .expect_err("refused")
                .contains("twice")
        );
        assert!(
            parse_labels("a=b c")
                .expect_err("refused")
                .contains("`a=b c`")
        );
    }

    #[test]
    fn replicas_land_on_distinct_hosts_and_spread_services() {
        let (placed, short) = place(
            &three(),
            &[
                demand("s", 2, &[]),
                demand("t", 2, &[]),
                demand("u", 1, &[]),
            ],
            &Placements::new(),
            &all_serving,
        );
        assert!(short.is_empty());
        assert_eq!(placed["s"], ["a", "b"]);
        // The least loaded first: c is empty, then a (ids break ties).
        assert_eq!(placed["t"], ["a", "c"]);
        assert_eq!(placed["u"], ["b"]);
    }

    #[test]
    fn nothing_moves_while_hosts_stay_up() {
        let current: Placements = [("s".to_owned(), vec!["b".to_owned(), "c".to_owned()])].into();
        let (placed, _) = place(&three(), &[demand("s", 2, &[])], &current, &all_serving);
        assert_eq!(placed, current);
    }

    #[test]
    fn a_gone_host_is_replaced_at_once() {
        let current: Placements = [("s".to_owned(), vec!["a".to_owned(), "b".to_owned()])].into();
        let hosts = &three()[1..];
        let (placed, short) = place(hosts, &[demand("s", 2, &[])], &current, &all_serving);
        assert_eq!(placed["s"], ["b", "c"]);
        assert!(short.is_empty());
    }

    #[test]
    fn a_draining_host_keeps_its_replica_until_the_replacement_serves() {
        let mut hosts = three();
        hosts[0].state = HostState::Draining;
        let current: Placements = [("s".to_owned(), vec!["a".to_owned()])].into();
        let not_yet = |_: &str, _: &str| false;
        let (placed, _) = place(&hosts, &[demand("s", 1, &[])], &current, &not_yet);
        assert_eq!(
            placed["s"],
            ["a", "b"],
            "replacement added, the old one kept"
        );
        let serves_on_b = |_: &str, host: &str| host == "b";
        let (placed, _) = place(&hosts, &[demand("s", 1, &[])], &placed, &serves_on_b);
        assert_eq!(placed["s"], ["b"], "then the draining host lets go");
        // A draining host with nowhere to go keeps serving.
        let lonely = vec![host("a", HostState::Draining, &[])];
        let (placed, short) = place(&lonely, &[demand("s", 1, &[])], &current, &not_yet);
        assert_eq!(placed["s"], ["a"]);
        assert_eq!(short.len(), 1);
    }

    #[test]
    fn labels_restrict_where_replicas_go() {
        let (placed, short) = place(
            &three(),
            &[demand("s", 3, &[("zone", "2")])],
            &Placements::new(),
            &all_serving,
        );
        assert_eq!(placed["s"], ["b", "c"]);
        assert_eq!(
            short,
            [Shortfall {
                service: "s".into(),
                wanted: 3,
                placed: 2
            }]
        );
    }

    #[test]
    fn memory_budgets_bound_what_a_host_takes() {
        let mut hosts = three();
        for h in &mut hosts {
            h.budget_mb = 150;
        }
        let (placed, short) = place(
            &hosts,
            &[demand("s", 2, &[]), demand("t", 2, &[])],
            &Placements::new(),
            &all_serving,
        );
        assert_eq!(placed["s"], ["a", "b"]);
        assert_eq!(placed["t"], ["c"]);
        assert_eq!(short.len(), 1);
    }

    #[test]
    fn scaling_down_leaves_the_most_loaded_host_and_removed_services_go() {
        let current: Placements = [
            (
                "s".to_owned(),
                vec!["a".to_owned(), "b".to_owned(), "c".to_owned()],
            ),
            ("t".to_owned(), vec!["c".to_owned()]),
            ("gone".to_owned(), vec!["a".to_owned()]),
        ]
        .into();
        let (placed, _) = place(
            &three(),
            &[demand("s", 2, &[]), demand("t", 1, &[])],
            &current,
            &all_serving,
        );
        assert_eq!(placed["s"], ["a", "b"]);
        assert_eq!(placed["t"], ["c"]);
        assert!(!placed.contains_key("gone"));
    }
}
