//! Round robin: each new connection goes to the next backend of the class, in config order.
//!
//! Hot path, O(1) in the common case (O(n) only while skipping unavailable or tried backends).
//! Invariant: the cursor is this worker's own (`Selector`), so workers rotate independently;
//! their different seeds give different starting points, so N workers starting together do not
//! all send their first connection to backend 0.

use std::sync::Arc;

use crate::backend::Backend;

use super::{eligible, ring, ring_next, ring_start};

/// The next eligible member at or after `*cursor`; moves the cursor past it.
#[inline]
pub(super) fn pick(
    cursor: &mut usize,
    backends: &[Arc<Backend>],
    members: &[usize],
    tried: &[u16],
) -> Option<usize> {
    let n = members.len();
    let pos =
        ring(ring_start(*cursor, n), n).find(|&pos| eligible(backends, members[pos], tried))?;
    *cursor = ring_next(pos, n);
    Some(members[pos])
}

#[cfg(test)]
mod tests {
    use crate::backend::BackendState;
    use crate::balancer::test_util::*;
    use crate::balancer::{Algorithm, Pool, Selector};

    #[test]
    fn rotates_in_order_from_the_seed() {
        let pool = Pool::new(Algorithm::RoundRobin, equal(3));
        assert_eq!(
            sequence(&pool, &mut Selector::new(0), 6),
            [0, 1, 2, 0, 1, 2]
        );
        assert_eq!(
            sequence(&pool, &mut Selector::new(1), 6),
            [1, 2, 0, 1, 2, 0]
        );
        assert_eq!(sequence(&pool, &mut Selector::new(5), 3), [2, 0, 1]);
    }

    #[test]
    fn ignores_weights() {
        let pool = Pool::new(Algorithm::RoundRobin, backends(&[(5, false), (1, false)]));
        assert_eq!(sequence(&pool, &mut Selector::new(0), 4), [0, 1, 0, 1]);
    }

    #[test]
    fn skips_unavailable_and_tried_and_keeps_rotating() {
        let pool = Pool::new(Algorithm::RoundRobin, equal(4));
        pool.backends()[1].set_state(BackendState::Down);
        let mut sel = Selector::new(0);
        assert_eq!(sequence(&pool, &mut sel, 6), [0, 2, 3, 0, 2, 3]);
        // A retry skips the failed backend but continues the rotation after the pick.
        assert_eq!(sel.pick(&pool, &any_key(), &[0]), Some(2));
        assert_eq!(sel.pick(&pool, &any_key(), &[]), Some(3));
        pool.backends()[1].set_state(BackendState::Up);
        assert_eq!(sequence(&pool, &mut sel, 4), [0, 1, 2, 3]);
    }
}
