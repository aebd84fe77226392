//! The gateway's serving threads: each runs an event loop of its own (a
//! single-threaded tokio runtime) and serves the connections handed to it from their
//! first byte to their close.
//!
//! A request, the guest task that serves it and the writes of its response then all
//! happen on one thread: no task is handed to another thread and no other thread is
//! woken for it. On a shared work-stealing runtime a WASIp3 instance's task and the
//! connection it answers sit on different threads about half of the time, and every
//! hand-over between them costs a wake-up across cores. A WASIp3 service therefore
//! keeps instances per serving thread ([`lane`]): requests arriving on one thread are
//! served by that thread's instances.
//!
//! Idle reusable WASIp2 instances are kept per lane the same way ([`LaneStacks`]).
//!
//! The price is that load is balanced per connection, not per request: a new
//! connection goes to the thread with the fewest open ones, and stays there.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::Handle;

/// Most serving threads a host runs.
pub const MAX_THREADS: usize = 64;

thread_local! {
    /// The index of the serving thread this is, on a serving thread.
    static SERVING_THREAD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Which lane the calling thread belongs to: 0 off the serving threads (the host's
/// shared runtime: admin API, health checks, deliveries), `1 + index` on one. Always
/// below `MAX_THREADS + 1`.
pub fn lane() -> usize {
    SERVING_THREAD.with(Cell::get).map_or(0, |index| index + 1)
}

/// A stack of items per lane, each behind a lock of its own: what a thread puts back
/// it takes again (its memory is warm in that core's cache), and threads never wait
/// on each other's lock.
pub struct LaneStacks<T> {
    lanes: Box<[parking_lot::Mutex<Vec<T>>]>,
    /// Most items one lane keeps.
    per_lane: usize,
}

impl<T> LaneStacks<T> {
    /// Stacks that keep at most `per_lane` items each.
    pub fn new(per_lane: usize) -> Self {
        Self {
            lanes: (0..=MAX_THREADS).map(|_| Default::default()).collect(),
            per_lane,
        }
    }

    /// The item the calling thread's lane put back last, if any.
    pub fn pop(&self) -> Option<T> {
        self.lanes[lane()].lock().pop()
    }

    /// Keep `item` in the calling thread's lane; handed back when the lane is full.
    pub fn push(&self, item: T) -> Result<(), T> {
        let mut stack = self.lanes[lane()].lock();
        if stack.len() >= self.per_lane {
            return Err(item);
        }
        stack.push(item);
        Ok(())
    }

    /// Drop every item of every lane; returns how many there were.
    pub fn clear(&self) -> usize {
        self.lanes
            .iter()
            .map(|stack| std::mem::take(&mut *stack.lock()).len())
            .sum()
    }

    /// Items kept, in all lanes.
    pub fn len(&self) -> usize {
        self.lanes.iter().map(|stack| stack.lock().len()).sum()
    }

    /// Whether no lane keeps anything.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Threads that each serve the connections handed to them.
pub struct ServingThreads {
    threads: Vec<ServingThread>,
}

struct ServingThread {
    runtime: Handle,
    /// Connections it serves now.
    open: Arc<AtomicUsize>,
    /// Dropped to stop it.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ServingThreads {
    /// Start `count` serving threads (at least one, at most [`MAX_THREADS`]), named
    /// `{name}-{index}`.
    pub fn start(name: &str, count: usize) -> std::io::Result<Self> {
        let threads = (0..count.clamp(1, MAX_THREADS))
            .map(|index| ServingThread::start(name, index))
            .collect::<std::io::Result<_>>()?;
        Ok(Self { threads })
    }

    /// Serve `connection` on the thread with the fewest open connections; it counts
    /// there until it ends.
    pub fn spawn<F>(&self, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let open: Vec<usize> = self
            .threads
            .iter()
            .map(|thread| thread.open.load(Ordering::Relaxed))
            .collect();
        let thread = &self.threads[least_loaded(&open)];
        thread.open.fetch_add(1, Ordering::Relaxed);
        let counted = Open(thread.open.clone());
        thread.runtime.spawn(async move {
            let _counted = counted;
            connection.await;
        });
    }
}

/// Takes one off a thread's open connections when the connection ends.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ServingThread {
    fn start(name: &str, index: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("{name}-{index}"))
            .spawn(move || {
                SERVING_THREAD.with(|thread| thread.set(Some(index)));
                // Runs the connections' tasks until the threads are dropped.
                let _ = runtime.block_on(stopped);
                // Whatever is still open ends here; blocking work is not waited for.
                runtime.shutdown_background();
            })?;
        Ok(Self {
            runtime: handle,
            open: Arc::new(AtomicUsize::new(0)),
            _stop: stop,
        })
    }
}

/// The index of the smallest count (the first of equals).
fn least_loaded(open: &[usize]) -> usize {
    open.iter()
        .enumerate()
        .min_by_key(|&(index, count)| (*count, index))
        .map_or(0, |(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_thread_with_fewest_connections_takes_the_next_the_first_of_equals() {
        assert_eq!(least_loaded(&[0, 0, 0]), 0);
        assert_eq!(least_loaded(&[1, 0, 0]), 1);
        assert_eq!(least_loaded(&[2, 3, 1]), 2);
        assert_eq!(least_loaded(&[5]), 0);
        assert_eq!(least_loaded(&[]), 0);
    }

    #[test]
    fn connections_spread_over_the_threads_and_each_runs_in_its_threads_lane() {
        let threads = ServingThreads::start("test-serving", 2).expect("threads start");
        assert_eq!(threads.threads.len(), 2);
        assert_eq!(lane(), 0, "a thread that is not serving is lane 0");
        let (release, released) = tokio::sync::watch::channel(false);
        let (report, reports) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let report = report.clone();
            let mut released = released.clone();
            threads.spawn(async move {
                report.send(lane()).expect("report");
                let _ = released.wait_for(|go| *go).await;
            });
        }
        let mut lanes: Vec<usize> = (0..4)
            .map(|_| {
                reports
                    .recv_timeout(Duration::from_secs(10))
                    .expect("each connection runs")
            })
            .collect();
        lanes.sort_unstable();
        assert_eq!(lanes, [1, 1, 2, 2], "two open connections on each thread");
        release.send_replace(true);
        // Once they have ended, the first thread takes the next one again.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while threads
            .threads
            .iter()
            .any(|t| t.open.load(Ordering::Relaxed) > 0)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "connections never ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let report = report.clone();
        threads.spawn(async move {
            report.send(lane()).expect("report");
        });
        assert_eq!(reports.recv_timeout(Duration::from_secs(10)), Ok(1));
    }

    #[test]
    fn each_lane_takes_back_what_it_put_and_keeps_at_most_its_share() {
        let stacks = Arc::new(LaneStacks::new(2));
        assert_eq!(stacks.push(1), Ok(()));
        assert_eq!(stacks.push(2), Ok(()));
        assert_eq!(stacks.push(3), Err(3), "a full lane hands the item back");
        let threads = ServingThreads::start("test-lanes", 1).expect("threads start");
        let (report, reports) = std::sync::mpsc::channel();
        let on_thread = stacks.clone();
        threads.spawn(async move {
            // A serving thread's lane is empty though lane 0 holds two.
            let found = on_thread.pop();
            let kept = on_thread.push(7);
            report.send((found, kept, on_thread.pop())).expect("report");
        });
        let seen = reports.recv_timeout(Duration::from_secs(10));
        assert_eq!(seen, Ok((None, Ok(()), Some(7))));
        assert_eq!(stacks.len(), 2);
        assert_eq!(stacks.pop(), Some(2), "the last one put back comes first");
        assert_eq!(stacks.clear(), 1);
        assert!(stacks.is_empty());
    }

    #[test]
    fn the_thread_count_is_at_least_one_and_at_most_the_cap() {
        assert_eq!(
            ServingThreads::start("t", 0).expect("start").threads.len(),
            1
        );
        assert_eq!(
            ServingThreads::start("t", MAX_THREADS + 5)
                .expect("start")
                .threads
                .len(),
            MAX_THREADS
        );
    }
}
