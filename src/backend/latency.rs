//! Peak-EWMA of a backend's connect time, the signal of `least_latency` (Finagle's and
//! linkerd's `PeakEwma`): a sample above the current cost replaces it at once (peak
//! sensitive: a backend that turns slow is noticed on its first slow connect), a lower one is
//! blended in with a weight that decays with the time since the previous sample, and a
//! reader sees the cost decayed towards 0 by the time since the last sample, so a backend
//! that stopped being picked because it was slow is tried again once its cost has faded.
//!
//! Hot path: one `observe` per completed TCP connect (UDP: per session's first reply) of a
//! `least_latency` listener, one `cost` per candidate per pick. Two relaxed atomics, no lock:
//! two workers observing the same backend at the same instant may lose one of the two
//! samples (last store wins), which only makes the average a little less smooth.
//! Invariant: `stamp_us == 0` means "no sample yet" (the clock never returns 0).

use std::sync::atomic::{AtomicU64, Ordering};

/// The decay time constant, 10 s (Finagle's and linkerd2's default). A sample's weight falls
/// to 1/e after 10 s: long enough that at any useful connection rate many connects are
/// averaged and one lucky fast connect does not hide a slow backend; short enough that a
/// backend that was slow once (whose cost also decays while it is not picked) is probed
/// again within tens of seconds: a 25 ms peak against 0.1 ms peers decays to their level
/// after 10 s x ln(250), about 55 s, and much sooner once the peers carry some load, since
/// the cost is multiplied by (active + 1).
pub const DECAY_US: f64 = 10_000_000.0;

/// Connect-time samples and their peak-EWMA, in microseconds.
#[derive(Debug, Default)]
pub struct PeakEwma {
    /// f64 bits of the cost in µs as of `stamp_us`.
    cost_bits: AtomicU64,
    /// `clock::monotonic_us` of the last sample; 0 = none yet.
    stamp_us: AtomicU64,
}

impl PeakEwma {
    /// Record one connect time of `rtt_us` measured at `now_us`.
    #[inline]
    pub fn observe(&self, rtt_us: u64, now_us: u64) {
        let rtt = rtt_us.max(1) as f64;
        let stamp = self.stamp_us.load(Ordering::Relaxed);
        let cost = if stamp == 0 {
            rtt
        } else {
            let prev = f64::from_bits(self.cost_bits.load(Ordering::Relaxed));
            if rtt > prev {
                rtt
            } else {
                let w = decay_weight(now_us.saturating_sub(stamp));
                prev * w + rtt * (1.0 - w)
            }
        };
        self.cost_bits.store(cost.to_bits(), Ordering::Relaxed);
        self.stamp_us.store(now_us.max(1), Ordering::Relaxed);
    }

    /// The cost at `now_us` (decayed towards 0 since the last sample); `None` before the first
    /// sample.
    #[inline]
    pub fn cost(&self, now_us: u64) -> Option<f64> {
        let stamp = self.stamp_us.load(Ordering::Relaxed);
        if stamp == 0 {
            return None;
        }
        let cost = f64::from_bits(self.cost_bits.load(Ordering::Relaxed));
        Some(cost * decay_weight(now_us.saturating_sub(stamp)))
    }

    /// Forget every sample (a backend whose address a reload changed is a new backend).
    pub fn reset(&self) {
        self.stamp_us.store(0, Ordering::Relaxed);
    }
}

#[inline]
fn decay_weight(elapsed_us: u64) -> f64 {
    (-(elapsed_us as f64) / DECAY_US).exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_sample_then_peak_then_blend() {
        let e = PeakEwma::default();
        assert_eq!(e.cost(5), None);
        e.observe(100, 1_000);
        assert_eq!(e.cost(1_000), Some(100.0));
        // A higher sample replaces the cost at once.
        e.observe(25_000, 2_000);
        assert_eq!(e.cost(2_000), Some(25_000.0));
        // A lower one right after barely moves it; one 10 s later moves it by 1 - 1/e.
        e.observe(100, 2_001);
        assert!(e.cost(2_001).unwrap() > 24_000.0);
        let e = PeakEwma::default();
        e.observe(1_000, 1);
        e.observe(0, 1 + DECAY_US as u64);
        let c = e.cost(1 + DECAY_US as u64).unwrap();
        assert!(
            (c - (1_000.0 / std::f64::consts::E + 1.0 * (1.0 - 1.0 / std::f64::consts::E))).abs()
                < 1.0,
            "{c}"
        );
    }

    #[test]
    fn the_cost_fades_while_no_sample_comes() {
        let e = PeakEwma::default();
        e.observe(25_000, 1);
        let later = e.cost(1 + 3 * DECAY_US as u64).unwrap();
        assert!(later < 25_000.0 / 19.0 && later > 0.0, "{later}");
        e.reset();
        assert_eq!(e.cost(10), None);
    }

    proptest! {
        /// The cost stays within the range of what was observed (never above the largest
        /// sample, never negative), whatever the order and spacing of samples.
        #[test]
        fn cost_is_bounded_by_the_samples(samples in prop::collection::vec((1u64..100_000, 0u64..30_000_000), 1..50)) {
            let e = PeakEwma::default();
            let mut now = 1;
            let mut max = 0;
            for (rtt, gap) in samples {
                now += gap;
                e.observe(rtt, now);
                max = max.max(rtt);
                let c = e.cost(now).unwrap();
                prop_assert!(c >= 0.0 && c <= max as f64 + 1e-6, "{} > {}", c, max);
            }
        }
    }
}
