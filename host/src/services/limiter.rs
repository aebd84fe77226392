//! Per-service admission: at most `max_concurrency` requests run at once, at most
//! `queue` wait (first come, first served), everyone else is refused at once.
//!
//! Each service has its own limiter, so one overloaded service never queues or blocks
//! another. Limits change live (`shoal scale`): raising them admits waiters at once;
//! lowering them lets running requests finish and admits no one until the count is
//! below the new limit.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Concurrency settings of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scale {
    /// Requests that may run at once.
    pub max_concurrency: u32,
    /// Requests that may wait for a slot.
    pub queue: u32,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot is busy and the queue is full.
    Overloaded,
}

#[derive(Debug)]
struct State {
    scale: Scale,
    running: u32,
    /// Waiters in arrival order; some may have given up (closed) and are skipped.
    waiters: VecDeque<oneshot::Sender<()>>,
    /// Waiters still waiting (the queue's real length).
    live: u32,
}

/// A service's admission control.
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<State>,
}

/// A running slot; freeing it admits the next waiter.
#[derive(Debug)]
pub struct Slot {
    limiter: Arc<Limiter>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.release();
    }
}

impl Limiter {
    /// A limiter with `scale`.
    pub fn new(scale: Scale) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                scale,
                running: 0,
                waiters: VecDeque::new(),
                live: 0,
            }),
        })
    }

    /// Current settings.
    pub fn scale(&self) -> Scale {
        self.state.lock().scale
    }

    /// (running, queued) right now.
    pub fn load(&self) -> (u32, u32) {
        let state = self.state.lock();
        (state.running, state.live)
    }

    /// Change the settings live.
    pub fn rescale(&self, scale: Scale) {
        let mut state = self.state.lock();
        state.scale = scale;
        // Waiters beyond the new queue length are refused (their receivers see the
        // sender dropped) — oldest stay.
        while state.live > scale.queue {
            let Some(waiter) = state.waiters.pop_back() else {
                break;
            };
            if !waiter.is_closed() {
                state.live -= 1;
            }
        }
        Self::admit_waiters(&mut state);
    }

    /// Take a slot, waiting in the queue if all are busy; refused at once when the
    /// queue is full too. Cancel-safe: a waiter that gives up frees its place.
    pub async fn acquire(self: &Arc<Self>) -> Result<Slot, Refused> {
        let receiver = {
            let mut state = self.state.lock();
            if state.running < state.scale.max_concurrency && state.waiters.is_empty() {
                state.running += 1;
                return Ok(self.slot());
            }
            if state.live >= state.scale.queue {
                return Err(Refused::Overloaded);
            }
            let (sender, receiver) = oneshot::channel();
            state.waiters.push_back(sender);
            state.live += 1;
            receiver
        };
        let mut guard = WaitGuard {
            limiter: self,
            receiver: Some(receiver),
        };
        let admitted = guard.receiver.as_mut().map(|r| async { r.await.is_ok() });
        let admitted = match admitted {
            Some(future) => future.await,
            None => false,
        };
        guard.receiver = None;
        if admitted {
            Ok(self.slot())
        } else {
            Err(Refused::Overloaded)
        }
    }

    fn slot(self: &Arc<Self>) -> Slot {
        Slot {
            limiter: self.clone(),
        }
    }

    fn release(&self) {
        let mut state = self.state.lock();
        state.running = state.running.saturating_sub(1);
        Self::admit_waiters(&mut state);
    }

    /// Hand free slots to waiters in order, skipping ones that gave up.
    fn admit_waiters(state: &mut State) {
        while state.running < state.scale.max_concurrency {
            let Some(waiter) = state.waiters.pop_front() else {
                break;
            };
            // A send fails when the waiter gave up (it already left the count); its
            // slot goes to the next one.
            if waiter.send(()).is_ok() {
                state.running += 1;
                state.live -= 1;
            }
        }
    }
}

/// Removes a waiter that gives up (its future dropped) and returns a slot that was
/// granted but never taken.
struct WaitGuard<'a> {
    limiter: &'a Arc<Limiter>,
    receiver: Option<oneshot::Receiver<()>>,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let Some(mut receiver) = self.receiver.take() else {
            return;
        };
        receiver.close();
        if receiver.try_recv().is_ok() {
            // Granted after all: give the slot back.
            self.limiter.release();
        } else {
            // O(1): leave the closed entry where it is (admission skips it), and only
            // compact the queue once dead entries outnumber live ones.
            let mut state = self.limiter.state.lock();
            state.live = state.live.saturating_sub(1);
            if state.waiters.len() > 2 * state.live as usize + 16 {
                state.waiters.retain(|waiter| !waiter.is_closed());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn scale(max_concurrency: u32, queue: u32) -> Scale {
        Scale {
            max_concurrency,
            queue,
        }
    }

    #[tokio::test]
    async fn waiters_that_give_up_free_their_place_cheaply() {
        let limiter = Limiter::new(scale(1, 10_000));
        let _running = limiter.acquire().await.expect("running");
        let waiting: Vec<_> = (0..10_000)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move { limiter.acquire().await })
            })
            .collect();
        while limiter.load().1 < 10_000 {
            tokio::task::yield_now().await;
        }
        for waiter in &waiting {
            waiter.abort();
        }
        for waiter in waiting {
            let _ = waiter.await;
        }
        assert_eq!(limiter.load(), (1, 0), "every place is free again");
        // The queue takes new waiters up to its length again.
        let again = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire().await }
        });
        while limiter.load().1 < 1 {
            tokio::task::yield_now().await;
        }
        drop(_running);
        assert!(again.await.expect("join").is_ok());
    }

    #[tokio::test]
    async fn admits_queues_then_refuses() {
        let limiter = Limiter::new(scale(2, 1));
        let a = limiter.acquire().await.expect("a");
        let _b = limiter.acquire().await.expect("b");
        let queued = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(limiter.load(), (2, 1));
        assert_eq!(limiter.acquire().await.err(), Some(Refused::Overloaded));
        drop(a);
        let c = queued
            .await
            .expect("join")
            .expect("admitted from the queue");
        assert_eq!(limiter.load(), (2, 0));
        drop(c);
        assert_eq!(limiter.load(), (1, 0));
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_frees_its_place() {
        let limiter = Limiter::new(scale(1, 1));
        let held = limiter.acquire().await.expect("held");
        let gave_up = tokio::time::timeout(Duration::from_millis(20), limiter.acquire()).await;
        assert!(gave_up.is_err());
        assert_eq!(
            limiter.load(),
            (1, 0),
            "the abandoned waiter left the queue"
        );
        drop(held);
        assert_eq!(limiter.load(), (0, 0));
        let _again = limiter.acquire().await.expect("free again");
    }

    #[tokio::test]
    async fn rescale_up_admits_waiters_and_down_drains() {
        let limiter = Limiter::new(scale(1, 10));
        let first = limiter.acquire().await.expect("first");
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move { limiter.acquire().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(limiter.load(), (1, 3));
        limiter.rescale(scale(4, 10));
        let mut slots = Vec::new();
        for waiter in waiting {
            slots.push(waiter.await.expect("join").expect("admitted"));
        }
        assert_eq!(limiter.load(), (4, 0));
        // Down to 1: running requests finish, nobody new until below the limit.
        limiter.rescale(scale(1, 0));
        assert_eq!(limiter.acquire().await.err(), Some(Refused::Overloaded));
        drop(slots);
        drop(first);
        assert_eq!(limiter.load(), (0, 0));
        let _one = limiter.acquire().await.expect("one");
        assert_eq!(limiter.acquire().await.err(), Some(Refused::Overloaded));
    }

    #[tokio::test]
    async fn many_tasks_never_exceed_the_limit() {
        let limiter = Limiter::new(scale(3, 1000));
        let peak = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let running = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (limiter, peak, running) = (limiter.clone(), peak.clone(), running.clone());
                tokio::spawn(async move {
                    let _slot = limiter.acquire().await.expect("queued");
                    let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 3);
        assert_eq!(limiter.load(), (0, 0));
    }
}
