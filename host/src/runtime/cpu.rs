//! Time a guest's task spends running: the wall time of every poll of the future that
//! runs the guest. A poll never waits (waiting on I/O, timers or other services
//! happens between polls, while the task is parked), so this is the time the guest
//! and the host calls it makes inline keep a worker thread busy, which is what an
//! operator means by "who uses the CPU". It costs two reads of the monotonic clock
//! (vDSO) per poll; the thread CPU clock would be a system call each time, measured
//! at about 750 ns here.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::telemetry::metering::ServiceMeter;

/// `inner` (pinned by the caller), with the time of each poll added to `meter`.
pub struct CpuMetered<'a, F> {
    inner: F,
    meter: &'a ServiceMeter,
}

impl<'a, F: Future + Unpin> CpuMetered<'a, F> {
    /// Meter `inner` for the service whose meter is `meter`.
    pub fn new(inner: F, meter: &'a ServiceMeter) -> Self {
        Self { inner, meter }
    }
}

impl<F: Future + Unpin> Future for CpuMetered<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let started = Instant::now();
        let result = Pin::new(&mut self.inner).poll(cx);
        self.meter.add_cpu(started.elapsed());
        result
    }
}

/// Nice value of background compiles: the scheduler gives a thread at nice 10 about
/// a tenth of the time of one at 0 when both want the same core.
const BACKGROUND_NICE: libc::c_int = 10;

/// Lower the scheduling priority of the calling thread (Linux keeps a nice value per
/// thread) for work nobody waits for. Best effort: a failure leaves it as it was.
#[allow(unsafe_code)]
pub fn lower_this_thread_priority() {
    // SAFETY: setpriority has no memory effects; `who = 0` names the calling thread.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE) };
    if result != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the priority of a background compile"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Metrics;
    use std::time::Duration;

    /// Busy for 20 ms, then parked for 100 ms, then done.
    async fn work_then_wait() {
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(20) {
            std::hint::black_box(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    #[tokio::test]
    async fn running_counts_and_waiting_does_not() {
        let metrics = Metrics::new(true).expect("metrics");
        let meter = ServiceMeter::new(&metrics, "a");
        let work = std::pin::pin!(work_then_wait());
        CpuMetered::new(work, &meter).await;
        let busy = meter.usage().cpu_seconds;
        assert!((0.020..0.080).contains(&busy), "{busy}");
    }
}
