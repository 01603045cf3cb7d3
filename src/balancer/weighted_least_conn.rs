//! Weighted least connections: the eligible backend with the smallest `(active + 1) / weight`,
//! i.e. the one whose load relative to its weight is lowest once it takes this connection.
//! Counting the new connection (`+ 1`, as the spec's `active/weight` after the pick) makes the
//! heavier backend win when all are idle, instead of a tie. The weight is the effective one
//! (weight x slow-start ramp).
//!
//! Hot path, O(n) per pick. Ratios are compared by cross-multiplication in `u64`
//! (`(a_i + 1) * w_j < (a_j + 1) * w_i`; both factors fit in 32 bits), so no floats and no
//! division. Weights and active counts are read live from the backends' atomics. Ties are
//! broken by a rotating scan start, as in `least_conn`.

use std::sync::Arc;

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
    // (index, active + 1, weight)
    let mut best: Option<(usize, u64, u64)> = None;
    for i in rotating_scan(cursor, backends, members, tried) {
        let b = &backends[i];
        let load = u64::from(b.active()) + 1;
        // Effective weight in thousandths (slow start); still fits 42 bits.
        let weight = u64::from(b.weight()) * clock.ramp(b);
        // A weight that raced to 0 since `eligible` never wins (its ratio is infinite).
        let better = match best {
            None => true,
            Some((_, bl, bw)) => load * bw < bl * weight,
        };
        if better {
            best = Some((i, load, weight));
        }
    }
    best.map(|(i, _, _)| i)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use crate::balancer::test_util::*;
    use crate::balancer::{Algorithm, Pool, Selector};

    #[test]
    fn respects_weights() {
        let pool = Pool::new(
            Algorithm::WeightedLeastConn,
            backends(&[(1, false), (4, false)]),
        );
        let mut sel = Selector::new(0);
        // Idle: the heavier backend first.
        assert_eq!(sel.pick(&pool, &any_key(), &[]), Some(1));
        // 2/1 vs 7/4: backend 1 still has the lower ratio despite more connections.
        set_active(&pool, &[1, 6]);
        assert_eq!(sel.pick(&pool, &any_key(), &[]), Some(1));
        // 2/1 vs 9/4: backend 0.
        set_active(&pool, &[1, 8]);
        assert_eq!(sel.pick(&pool, &any_key(), &[]), Some(0));
        assert_eq!(sel.pick(&pool, &any_key(), &[0]), Some(1));
    }

    /// Simulated load: each pick opens a connection; the counts end in proportion 3:2:1.
    #[test]
    fn load_follows_weights() {
        let pool = Pool::new(
            Algorithm::WeightedLeastConn,
            backends(&[(3, false), (2, false), (1, false)]),
        );
        let mut sel = Selector::new(1);
        for _ in 0..600 {
            let i = sel.pick(&pool, &any_key(), &[]).unwrap();
            pool.backends()[i].active.fetch_add(1, Ordering::Relaxed);
        }
        let active: Vec<u32> = pool.backends().iter().map(|b| b.active()).collect();
        assert_eq!(active, [300, 200, 100]);
        // Live weights: backend 2 becomes the heaviest and takes the next connections.
        pool.backends()[2].set_weight(10);
        for _ in 0..5 {
            assert_eq!(sel.pick(&pool, &any_key(), &[]), Some(2));
        }
    }

    #[test]
    fn ties_rotate() {
        let pool = Pool::new(Algorithm::WeightedLeastConn, equal(3));
        set_active(&pool, &[2, 2, 2]);
        let mut sel = Selector::new(0);
        assert_eq!(sequence(&pool, &mut sel, 6), [0, 1, 2, 0, 1, 2]);
    }
}
