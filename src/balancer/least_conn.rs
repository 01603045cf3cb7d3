//! Least connections: the eligible backend with the fewest active connections (connecting or
//! established, `Backend::active`, shared by all workers).
//!
//! Hot path, O(n) per pick. Ties are broken by scanning from a start that rotates on every pick
//! (the worker's cursor), so with equal counts, e.g. all idle or short-lived connections that
//! finish before the next accept, load still spreads instead of piling onto the first backend.
//! Weights are ignored except that weight 0 takes nothing (see `weighted_least_conn`); a
//! backend in its slow-start ramp counts as `(active + 1) / ramp` (it looks busier).

use std::sync::Arc;

use crate::backend::slow_start::FULL;
use crate::backend::Backend;

use super::{rotating_scan, Clock};

#[inline]
pub(super) fn pick(
    cursor: &mut usize,
    backends: &[Arc<Backend>],
    members: &[usize],
    tried: &[u16],
    clock: Clock,
) -> Option<usize> {
    // (index, active + 1, ramp): load compared as (active + 1) / ramp by cross-multiplying;
    // without a ramp (1000 everywhere) that is just the smallest active count.
    let mut best: Option<(usize, u64, u64)> = None;
    for i in rotating_scan(cursor, backends, members, tried) {
        let load = u64::from(backends[i].active()) + 1;
        let ramp = clock.ramp(&backends[i]);
        if best.is_none_or(|(_, bl, br)| load * br < bl * ramp) {
            best = Some((i, load, ramp));
            if load == 1 && ramp == FULL {
                break; // nothing beats an idle backend at full weight
            }
        }
    }
    best.map(|(i, _, _)| i)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use crate::backend::BackendState;
    use crate::balancer::test_util::*;
    use crate::balancer::{Algorithm, Pool, Selector};

    #[test]
    fn picks_the_least_active() {
        let pool = Pool::new(Algorithm::LeastConn, equal(4));
        set_active(&pool, &[5, 2, 7, 3]);
        let mut sel = Selector::new(0);
        for _ in 0..10 {
            assert_eq!(sel.pick(&pool, &any_key(), &[]), Some(1));
        }
        assert_eq!(sel.pick(&pool, &any_key(), &[1]), Some(3));
        pool.backends()[3].set_state(BackendState::Down);
        assert_eq!(sel.pick(&pool, &any_key(), &[1]), Some(0));
    }

    #[test]
    fn ties_rotate() {
        let pool = Pool::new(Algorithm::LeastConn, equal(3));
        set_active(&pool, &[4, 4, 4]);
        let mut sel = Selector::new(0);
        assert_eq!(sequence(&pool, &mut sel, 6), [0, 1, 2, 0, 1, 2]);
    }

    /// Simulated load: each pick opens a connection; the counts stay level.
    #[test]
    fn keeps_counts_level_under_load() {
        let pool = Pool::new(
            Algorithm::LeastConn,
            backends(&[(1, false), (9, false), (1, false)]),
        );
        let mut sel = Selector::new(2);
        for _ in 0..300 {
            let i = sel.pick(&pool, &any_key(), &[]).unwrap();
            pool.backends()[i].active.fetch_add(1, Ordering::Relaxed);
        }
        for b in pool.backends() {
            assert_eq!(b.active(), 100);
        }
    }
}
