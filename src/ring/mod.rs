//! The rings between pipeline threads, how a blocked thread waits, and core pinning.

pub mod spsc;

use std::time::Duration;

/// Waiting on an empty or full ring: spin briefly (the other side is usually
/// microseconds away), then yield, then sleep in short naps so that an idle
/// pipeline does not burn a core that another stage needs. Syscalls happen
/// only while a thread has nothing to do.
#[derive(Default)]
pub struct Idle {
    step: u32,
}

impl Idle {
    #[inline]
    pub fn reset(&mut self) {
        self.step = 0;
    }

    pub fn wait(&mut self) {
        if self.step < 64 {
            std::hint::spin_loop();
        } else if self.step < 96 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
        self.step = self.step.saturating_add(1);
    }
}

/// Pins the calling thread to `core` (an index into the OS's core list).
/// Returns false where pinning is not possible; the pipeline runs unpinned then.
pub fn pin_current(core: usize) -> bool {
    core_affinity::get_core_ids()
        .and_then(|ids| ids.into_iter().find(|id| id.id == core))
        .map(core_affinity::set_for_current)
        .unwrap_or(false)
}
