//! The monotonic microsecond clock that workers and control threads share for per-backend
//! timestamps (connect-time samples and their decay, the start of a slow-start ramp).
//!
//! Hot path: one `clock_gettime(CLOCK_MONOTONIC)` (a vDSO call, no syscall) per read, taken
//! only where a timestamp must agree across threads; the workers' per-loop-turn millisecond
//! clock (`SharedState::now_ms`) is too coarse for loopback connect times (tens of µs).
//! Invariant: never returns 0, so 0 can mean "never" in the atomics that store it.

use nix::time::{clock_gettime, ClockId};

/// Microseconds of `CLOCK_MONOTONIC` (time since boot, not counting suspend); at least 1.
#[inline]
pub fn monotonic_us() -> u64 {
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => {
            let us = (ts.tv_sec() as u64)
                .saturating_mul(1_000_000)
                .saturating_add(ts.tv_nsec() as u64 / 1_000);
            us.max(1)
        }
        // CLOCK_MONOTONIC cannot fail on Linux; should it, time stands still (no ramp moves,
        // no sample decays) rather than anything panicking on the data path.
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_monotonic_and_never_zero() {
        let a = super::monotonic_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::monotonic_us();
        assert!(a >= 1 && b >= a + 1_000, "{a} {b}");
    }
}
