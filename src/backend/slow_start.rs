//! Slow start (`slow_start_s`): a backend that comes up (recovered, enabled by the operator,
//! or added by a reload) takes a share that rises linearly from a small floor to its full
//! weight over the period, so a cold cache or a JIT that just restarted is not handed a full
//! share of new connections at once (HAProxy's `slowstart`, nginx's `slow_start`).
//!
//! Pure arithmetic, hot path: [`ramp_permille`] runs once per candidate per pick of a
//! listener with `slow_start_s > 0`. The weighted algorithms multiply a weight by the ramp,
//! `least_conn`, `random_two` and `least_latency` divide their load by it. The hashes ignore
//! it: a ramp would move a recovering backend's keys to other backends and back again as it
//! rises (each key moving twice, with its sessions' state), which is worse than moving them
//! once when the backend comes up.

/// Full weight, in thousandths.
pub const FULL: u64 = 1000;

/// The ramp's starting point: 1% of the weight, so a backend that just came up takes a trickle
/// of connections at once (its first real traffic shows whether it really works) rather than
/// none until the ramp has run for a while.
pub const FLOOR_PERMILLE: u64 = 10;

/// How much of its weight a backend that came up at `up_since_us` (0 = up since the start, no
/// ramp) has at `now_us`, in thousandths: linear from [`FLOOR_PERMILLE`] to [`FULL`] over
/// `period_us` (0 = slow start off).
#[inline]
pub fn ramp_permille(up_since_us: u64, now_us: u64, period_us: u64) -> u64 {
    if period_us == 0 || up_since_us == 0 {
        return FULL;
    }
    let elapsed = now_us.saturating_sub(up_since_us);
    if elapsed >= period_us {
        return FULL;
    }
    // elapsed < period_us, so this is below FULL and the product cannot overflow for any
    // period that fits the config (at most hours, in µs).
    (elapsed.saturating_mul(FULL) / period_us).max(FLOOR_PERMILLE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn linear_from_the_floor_to_full() {
        assert_eq!(ramp_permille(0, 5, 10), FULL);
        assert_eq!(ramp_permille(100, 200, 0), FULL);
        assert_eq!(ramp_permille(1_000, 1_000, 10_000), FLOOR_PERMILLE);
        assert_eq!(ramp_permille(1_000, 3_500, 10_000), 250);
        assert_eq!(ramp_permille(1_000, 6_000, 10_000), 500);
        assert_eq!(ramp_permille(1_000, 11_000, 10_000), FULL);
        assert_eq!(ramp_permille(1_000, 999, 10_000), FLOOR_PERMILLE);
    }

    proptest! {
        #[test]
        fn monotonic_and_bounded(since in 1u64..1u64 << 50, a in 0u64..1u64 << 40, b in 0u64..1u64 << 40, period in 1u64..1u64 << 40) {
            let (lo, hi) = (a.min(b), a.max(b));
            let x = ramp_permille(since, since + lo, period);
            let y = ramp_permille(since, since + hi, period);
            prop_assert!(x <= y);
            prop_assert!((FLOOR_PERMILLE..=FULL).contains(&x));
        }
    }
}
