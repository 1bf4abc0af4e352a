//! The rings between pipeline threads, how a blocked thread waits, and core pinning.

pub mod spsc;

use std::time::Duration;

/// Waiting on an empty or full ring: spin briefly (the other side is usually
/// microseconds away), then yield, then sleep in short naps so that an idle
/// pipeline does not burn a core that another stage needs. Syscalls happen
/// only while a thread has nothing to do. A waiter that can afford to be
/// late (`with_max_nap`) doubles its naps up to that bound: each wake-up
/// costs a few microseconds of a core the shards may share.
pub struct Idle {
    step: u32,
    nap: Duration,
    max_nap: Duration,
}

const FIRST_NAP: Duration = Duration::from_micros(50);

impl Default for Idle {
    fn default() -> Idle {
        Idle::with_max_nap(FIRST_NAP)
    }
}

impl Idle {
    pub fn with_max_nap(max_nap: Duration) -> Idle {
        Idle { step: 0, nap: FIRST_NAP.min(max_nap), max_nap }
    }

    #[inline]
    pub fn reset(&mut self) {
        self.step = 0;
        self.nap = FIRST_NAP.min(self.max_nap);
    }

    pub fn wait(&mut self) {
        if self.step < 64 {
            std::hint::spin_loop();
        } else if self.step < 96 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(self.nap);
            self.nap = (self.nap * 2).min(self.max_nap);
        }
        self.step = self.step.saturating_add(1);
    }

    /// The nap the next sleeping `wait` takes.
    #[cfg(test)]
    fn next_nap(&self) -> Duration {
        self.nap
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

#[cfg(test)]
mod tests {
    use super::Idle;
    use std::time::Duration;

    #[test]
    fn naps_double_up_to_the_bound_and_start_over_on_reset() {
        let mut idle = Idle::with_max_nap(Duration::from_micros(300));
        for _ in 0..96 {
            idle.wait(); // spins and yields
        }
        let naps: Vec<u64> = (0..5)
            .map(|_| {
                let nap = idle.next_nap().as_micros() as u64;
                idle.wait();
                nap
            })
            .collect();
        assert_eq!(naps, [50, 100, 200, 300, 300]);
        idle.reset();
        assert_eq!(idle.next_nap(), Duration::from_micros(50));
        let mut plain = Idle::default();
        for _ in 0..100 {
            plain.wait();
        }
        assert_eq!(plain.next_nap(), Duration::from_micros(50), "the default never grows its nap");
    }
}
