//! CPU time of a guest's task: the thread CPU clock read around every poll of the
//! future that runs the guest, so time spent on other tasks of the same worker thread
//! is never counted, and a guest waiting on I/O costs nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::capabilities::ServiceContext;

fn thread_cpu_now() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        now.tv_sec.max(0) as u64,
        now.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// `inner` (pinned by the caller), with the CPU time of each poll added to the
/// service's meter.
pub struct CpuMetered<F> {
    inner: F,
    service: Arc<ServiceContext>,
}

impl<F: Future + Unpin> CpuMetered<F> {
    /// Meter `inner` for `service`.
    pub fn new(inner: F, service: Arc<ServiceContext>) -> Self {
        Self { inner, service }
    }
}

impl<F: Future + Unpin> Future for CpuMetered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let started = thread_cpu_now();
        let result = Pin::new(&mut self.inner).poll(cx);
        self.service
            .meter
            .add_cpu(thread_cpu_now().saturating_sub(started));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_clock_counts_work_not_waiting() {
        let started = thread_cpu_now();
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_cpu_now().saturating_sub(started);
        let started = thread_cpu_now();
        let mut x = 0u64;
        while thread_cpu_now().saturating_sub(started) < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let worked = thread_cpu_now().saturating_sub(started);
        assert!(slept < Duration::from_millis(10), "{slept:?}");
        assert!(worked >= Duration::from_millis(20), "{worked:?}");
    }
}
