//! Smooth weighted round robin (nginx's `ngx_http_upstream_get_peer`): on each pick every
//! eligible backend adds its weight to its current weight, the largest current weight wins and
//! gives back the total. Weights 5,1,1 give `a a b a c a a`: the heavy backend's turns are
//! spread out instead of sent in a burst. A backend in its slow-start ramp adds its effective
//! weight (weight x ramp, in thousandths: `backend::slow_start`).
//!
//! Hot path, O(n) per pick (the algorithm has to look at every backend; n is the class size).
//! Weights are read from the backends' atomics on every pick, so an admin weight change applies
//! to the next pick. Invariants: `current` is this worker's own and indexed by backend index
//! (sized by `Selector` when it adopts a pool generation, never here); skipped backends neither
//! gain nor lose current weight, as in nginx; values stay within +-(sum of weights) * n.

use std::sync::Arc;

use crate::backend::Backend;

use super::{eligible, Clock};

#[inline]
pub(super) fn pick(
    current: &mut [i64],
    backends: &[Arc<Backend>],
    members: &[usize],
    tried: &[u16],
    clock: Clock,
) -> Option<usize> {
    let mut total: i64 = 0;
    let mut best: Option<(usize, i64)> = None;
    for &i in members {
        if !eligible(backends, i, tried) {
            continue;
        }
        let Some(c) = current.get_mut(i) else {
            continue;
        };
        // In thousandths, so a slow-start ramp scales it without losing precision.
        let w = i64::from(backends[i].weight()) * clock.ramp(&backends[i]) as i64;
        *c += w;
        total += w;
        // Strictly greater: ties go to the earlier backend, as in nginx.
        if best.is_none_or(|(_, bc)| *c > bc) {
            best = Some((i, *c));
        }
    }
    let (i, _) = best?;
    current[i] -= total;
    Some(i)
}

#[cfg(test)]
mod tests {
    use crate::backend::BackendState;
    use crate::balancer::test_util::*;
    use crate::balancer::{Algorithm, Pool, Selector};

    #[test]
    fn nginx_sequence_for_5_1_1() {
        let pool = Pool::new(
            Algorithm::WeightedRoundRobin,
            backends(&[(5, false), (1, false), (1, false)]),
        );
        let mut sel = Selector::new(0);
        // a a b a c a a, twice: the cycle repeats every sum-of-weights picks.
        let cycle = [0, 0, 1, 0, 2, 0, 0];
        assert_eq!(sequence(&pool, &mut sel, 7), cycle);
        assert_eq!(sequence(&pool, &mut sel, 7), cycle);
    }

    #[test]
    fn shares_follow_weights_without_bursts() {
        let pool = Pool::new(
            Algorithm::WeightedRoundRobin,
            backends(&[(3, false), (2, false), (1, false)]),
        );
        let seq = sequence(&pool, &mut Selector::new(0), 600);
        let count = |b| seq.iter().filter(|&&x| x == b).count();
        assert_eq!((count(0), count(1), count(2)), (300, 200, 100));
        // Smooth: never the same backend 3 times in a row with these weights.
        assert!(seq.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])));
    }

    #[test]
    fn reads_live_weights() {
        let pool = Pool::new(Algorithm::WeightedRoundRobin, equal(2));
        let mut sel = Selector::new(0);
        assert_eq!(sequence(&pool, &mut sel, 4), [0, 1, 0, 1]);
        pool.backends()[1].set_weight(3);
        let seq = sequence(&pool, &mut sel, 400);
        let ones = seq.iter().filter(|&&x| x == 1).count();
        assert!((295..=305).contains(&ones), "{ones}");
    }

    #[test]
    fn skips_unavailable_and_tried() {
        let pool = Pool::new(
            Algorithm::WeightedRoundRobin,
            backends(&[(5, false), (1, false), (1, false)]),
        );
        pool.backends()[0].set_state(BackendState::Drain);
        let mut sel = Selector::new(0);
        assert_eq!(sequence(&pool, &mut sel, 4), [1, 2, 1, 2]);
        assert_eq!(sel.pick(&pool, &any_key(), &[1]), Some(2));
    }

    #[test]
    fn state_survives_a_rebuild_and_resets_on_a_new_backend_set() {
        let pool = Pool::new(
            Algorithm::WeightedRoundRobin,
            backends(&[(5, false), (1, false), (1, false)]),
        );
        let mut sel = Selector::new(0);
        assert_eq!(sequence(&pool, &mut sel, 3), [0, 0, 1]);
        let rebuilt = pool.rebuilt();
        assert_eq!(sequence(&rebuilt, &mut sel, 4), [0, 2, 0, 0]);
        let other = Pool::new(
            Algorithm::WeightedRoundRobin,
            backends(&[(2, false), (1, false)]),
        );
        assert_eq!(sequence(&other, &mut sel, 3), [0, 1, 0]);
    }
}
