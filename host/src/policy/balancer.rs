//! Load balancing over a target's eligible endpoints.
//!
//! Power of two choices (the default) picks two distinct endpoints at random and
//! sends to the one with fewer requests outstanding: near-optimal spread without
//! global coordination, and it never herds onto "the first instance". Round robin is
//! available for targets that want strict rotation.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How to choose among endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Fewer outstanding requests of two random picks.
    #[default]
    PowerOfTwoChoices,
    /// Strict rotation.
    RoundRobin,
}

/// What the balancer needs to know about one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Requests currently in flight to it.
    pub outstanding: u32,
    /// Whether it may be picked (healthy, not ejected, breaker not open).
    pub eligible: bool,
}

/// A balancer for one target; cheap to share.
#[derive(Debug, Default)]
pub struct Balancer {
    strategy: Strategy,
    next: AtomicUsize,
}

impl Balancer {
    /// A balancer with `strategy`.
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            next: AtomicUsize::new(0),
        }
    }

    /// Index of the endpoint to use, or none if no endpoint is eligible.
    /// `random` yields uniformly distributed numbers (injected for testability).
    pub fn pick(&self, endpoints: &[Load], mut random: impl FnMut() -> u64) -> Option<usize> {
        let eligible: Vec<usize> = endpoints
            .iter()
            .enumerate()
            .filter(|(_, load)| load.eligible)
            .map(|(index, _)| index)
            .collect();
        match eligible.len() {
            0 => None,
            1 => Some(eligible[0]),
            n => match self.strategy {
                Strategy::RoundRobin => {
                    let turn = self.next.fetch_add(1, Ordering::Relaxed);
                    Some(eligible[turn % n])
                }
                Strategy::PowerOfTwoChoices => {
                    let first = (random() % n as u64) as usize;
                    // A second, distinct pick: offset by 1..n-1.
                    let second = (first + 1 + (random() % (n as u64 - 1)) as usize) % n;
                    let (a, b) = (eligible[first], eligible[second]);
                    Some(if endpoints[b].outstanding < endpoints[a].outstanding {
                        b
                    } else {
                        a
                    })
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed;
        move || {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    fn idle(n: usize) -> Vec<Load> {
        vec![
            Load {
                outstanding: 0,
                eligible: true
            };
            n
        ]
    }

    #[test]
    fn nothing_eligible_means_no_pick() {
        let balancer = Balancer::default();
        assert_eq!(balancer.pick(&[], rng(1)), None);
        let loads = [Load {
            outstanding: 0,
            eligible: false,
        }];
        assert_eq!(balancer.pick(&loads, rng(1)), None);
    }

    #[test]
    fn round_robin_rotates_over_eligible_only() {
        let balancer = Balancer::new(Strategy::RoundRobin);
        let mut loads = idle(4);
        loads[1].eligible = false;
        let picks: Vec<usize> = (0..6)
            .filter_map(|_| balancer.pick(&loads, rng(1)))
            .collect();
        assert_eq!(picks, [0, 2, 3, 0, 2, 3]);
    }

    #[test]
    fn p2c_spreads_evenly_over_idle_endpoints() {
        let balancer = Balancer::default();
        let loads = idle(3);
        let mut counts = [0u32; 3];
        let mut random = rng(7);
        for _ in 0..30_000 {
            let pick = balancer.pick(&loads, &mut random).expect("pick");
            counts[pick] += 1;
        }
        for count in counts {
            assert!((9_000..=11_000).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn p2c_prefers_the_less_loaded_and_never_the_ineligible() {
        let balancer = Balancer::default();
        let mut loads = idle(3);
        loads[0].outstanding = 50;
        loads[2].eligible = false;
        let mut random = rng(3);
        for _ in 0..1000 {
            assert_eq!(balancer.pick(&loads, &mut random), Some(1));
        }
    }

    #[test]
    fn p2c_balances_outstanding_load_when_requests_stick() {
        // Simulate requests that never finish: outstanding counts must stay level.
        let balancer = Balancer::default();
        let mut loads = idle(5);
        let mut random = rng(11);
        for _ in 0..5_000 {
            let pick = balancer.pick(&loads, &mut random).expect("pick");
            loads[pick].outstanding += 1;
        }
        let max = loads.iter().map(|l| l.outstanding).max().unwrap_or(0);
        let min = loads.iter().map(|l| l.outstanding).min().unwrap_or(0);
        assert!(max - min <= 3, "{loads:?}");
    }
}
