//! The clocks and random numbers of an instance, through its request's journal: a
//! recorded request keeps what the guest read, a replay reads the recorded values.
//! An instance serves one request after another (reuse), so the journal is looked
//! up at each reading, in a slot the instance's state points at the current request.

use arc_swap::ArcSwapOption;
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

use crate::recording::journal::Journal;

/// The journal of the request an instance serves now, if it is recorded or replayed.
/// Read at every clock reading and random draw: lock-free, and free of reference
/// counting when the request is not recorded.
#[derive(Clone, Default)]
pub struct JournalSlot(Arc<ArcSwapOption<Journal>>);

impl JournalSlot {
    /// Point the slot at `journal` (the next request's).
    pub fn set(&self, journal: Option<Arc<Journal>>) {
        self.0.store(journal);
    }

    fn current(&self) -> Option<Arc<Journal>> {
        self.0.load_full()
    }
}

/// `wasi:clocks/wall-clock` through the journal.
pub struct WallClock {
    slot: JournalSlot,
    live: wasmtime_wasi::clocks::WallClock,
}

impl WallClock {
    /// The host's wall clock, through `slot`'s journal.
    pub fn new(slot: JournalSlot) -> Self {
        Self {
            slot,
            live: wasmtime_wasi::clocks::WallClock::new(),
        }
    }
}

impl HostWallClock for WallClock {
    fn resolution(&self) -> Duration {
        self.live.resolution()
    }

    fn now(&self) -> Duration {
        match self.slot.current() {
            None => self.live.now(),
            Some(journal) => Duration::from_nanos(
                journal
                    .wall_clock(|| u64::try_from(self.live.now().as_nanos()).unwrap_or(u64::MAX)),
            ),
        }
    }
}

/// `wasi:clocks/monotonic-clock` through the journal.
pub struct MonotonicClock {
    slot: JournalSlot,
    live: wasmtime_wasi::clocks::MonotonicClock,
}

impl MonotonicClock {
    /// A monotonic clock from now, through `slot`'s journal.
    pub fn new(slot: JournalSlot) -> Self {
        Self {
            slot,
            live: wasmtime_wasi::clocks::MonotonicClock::new(),
        }
    }
}

impl HostMonotonicClock for MonotonicClock {
    fn resolution(&self) -> u64 {
        self.live.resolution()
    }

    fn now(&self) -> u64 {
        match self.slot.current() {
            None => self.live.now(),
            Some(journal) => journal.monotonic_clock(|| self.live.now()),
        }
    }
}

/// `wasi:random` (secure and insecure) through the journal; live bytes come from the
/// operating system's generator (through the thread's generator).
pub struct Random {
    slot: JournalSlot,
}

impl Random {
    /// Random bytes through `slot`'s journal.
    pub fn new(slot: JournalSlot) -> Self {
        Self { slot }
    }

    fn fill(&mut self, buffer: &mut [u8]) {
        use rand::RngCore as _;
        match self.slot.current() {
            None => rand::rng().fill_bytes(buffer),
            Some(journal) => journal.random(buffer, |buffer| rand::rng().fill_bytes(buffer)),
        }
    }
}

impl rand_core::TryRng for Random {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut bytes = [0u8; 4];
        self.fill(&mut bytes);
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut bytes = [0u8; 8];
        self.fill(&mut bytes);
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, buffer: &mut [u8]) -> Result<(), Self::Error> {
        self.fill(buffer);
        Ok(())
    }
}
