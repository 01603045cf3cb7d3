//! Least latency (Finagle's and linkerd's peak-EWMA balancer): the eligible backend with the
//! lowest `cost x (active + 1)`, where `cost` is the peak-EWMA of its connect times
//! (`backend::latency`, decayed to now) and `active` its open connections. A backend that is
//! slow to accept, or already busy, looks expensive; one without any sample yet costs 0 and is
//! tried first (once: while that first connect is in flight it counts as very expensive, as in
//! Finagle, so a backend that hangs does not swallow every new connection).
//!
//! Hot path, O(n) per pick with one `exp` per candidate (the decay). A backend in its
//! slow-start ramp has its score divided by the ramp. Ties (e.g. several unsampled, idle
//! backends) go to the first in a rotating scan, as in `least_conn`.

use std::sync::Arc;

use crate::backend::slow_start::FULL;
use crate::backend::Backend;

use super::{rotating_scan, Clock};

/// Score of a backend with no sample yet but a connect in flight: larger than any real cost
/// (µs x connections), so it waits for its first sample unless every candidate is in that
/// state, and then the one with the fewest in flight wins.
const UNSAMPLED_BUSY: f64 = 1e15;

#[inline]
pub(super) fn pick(
    cursor: &mut usize,
    backends: &[Arc<Backend>],
    members: &[usize],
    tried: &[u16],
    clock: Clock,
) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for i in rotating_scan(cursor, backends, members, tried) {
        let b = &backends[i];
        let active = f64::from(b.active());
        let score = match b.latency.cost(clock.now_us) {
            Some(cost) => cost * (active + 1.0),
            None if active == 0.0 => 0.0,
            None => UNSAMPLED_BUSY + active,
        };
        let score = score * FULL as f64 / clock.ramp(b) as f64;
        if best.is_none_or(|(_, s)| score < s) {
            best = Some((i, score));
            if score == 0.0 {
                break; // an idle backend never sampled: nothing beats it
            }
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use crate::balancer::test_util::*;
    use crate::balancer::{Algorithm, Pool, Selector};
    use crate::clock::monotonic_us;

    #[test]
    fn unsampled_first_then_the_fastest() {
        let pool = Pool::new(Algorithm::LeastLatency, equal(3));
        let mut sel = Selector::new(0);
        let now = monotonic_us();
        pool.backends()[0].latency.observe(100, now);
        pool.backends()[1].latency.observe(25_000, now);
        // 2 has no sample: it goes first.
        assert_eq!(sel.pick(&pool, &any_key(), &[]), Some(2));
        // In flight without a sample: everyone else is cheaper.
        pool.backends()[2].active.store(1, Ordering::Relaxed);
        assert_eq!(sel.pick(&pool, &any_key(), &[]), Some(0));
        pool.backends()[2].latency.observe(50, now);
        pool.backends()[2].active.store(0, Ordering::Relaxed);
        assert_eq!(sel.pick(&pool, &any_key(), &[]), Some(2));
        assert_eq!(sel.pick(&pool, &any_key(), &[2]), Some(0));
        assert_eq!(sel.pick(&pool, &any_key(), &[2, 0]), Some(1));
    }

    #[test]
    fn load_multiplies_the_cost() {
        let pool = Pool::new(Algorithm::LeastLatency, equal(2));
        let mut sel = Selector::new(0);
        let now = monotonic_us();
        pool.backends()[0].latency.observe(100, now);
        pool.backends()[1].latency.observe(1_000, now);
        // 0 at 100 us x (9 + 1) = 1000 loses to 1 at 1000 us x 1 only once it has 10 open.
        set_active(&pool, &[8, 0]);
        assert_eq!(sel.pick(&pool, &any_key(), &[]), Some(0));
        set_active(&pool, &[10, 0]);
        assert_eq!(sel.pick(&pool, &any_key(), &[]), Some(1));
    }

    /// A slow backend (25 ms against 0.1 ms) gets nothing while its peers stay lightly loaded,
    /// and the fast ones share the load.
    #[test]
    fn a_slow_backend_gets_a_small_share() {
        let pool = Pool::new(Algorithm::LeastLatency, equal(3));
        let mut sel = Selector::new(1);
        let now = monotonic_us();
        for (b, rtt) in pool.backends().iter().zip([100, 120, 25_000]) {
            b.latency.observe(rtt, now);
        }
        let mut counts = [0usize; 3];
        for _ in 0..300 {
            let i = sel.pick(&pool, &any_key(), &[]).unwrap();
            counts[i] += 1;
            // Up to 50 connections open per fast backend: still cheaper than the slow one.
            let b = &pool.backends()[i];
            if b.active() < 50 {
                b.active.fetch_add(1, Ordering::Relaxed);
            } else {
                b.active.store(0, Ordering::Relaxed);
            }
        }
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0] > 30 && counts[1] > 30, "{counts:?}");
    }
}
