//! Power of two random choices (Mitzenmacher): draw two different eligible backends at random
//! and take the one with fewer active connections. Nearly as even as least_conn, but O(1) and
//! without every worker herding onto the same "least loaded" backend between count updates.
//!
//! Hot path, O(1) in the common case: a few random draws find an eligible backend; only when
//! most of the class is ineligible does a bounded linear scan (O(n)) take over. The RNG is
//! [`WyRand`] (Wang Yi's wyrand), one per `Selector`, seeded per worker: not cryptographic,
//! just fast and well mixed; no external crate, no shared state.
//! Invariant: the two candidates are distinct, so the busier of the two is never chosen
//! (ties go to the first draw, itself random).

use std::sync::Arc;

use crate::backend::Backend;

use super::{eligible, ring, Clock};

/// Random draws before falling back to a scan. With a fraction `p` of the class eligible, all
/// draws miss with probability `(1-p)^4`: 6% at p = 0.5; the scan keeps the worst case bounded.
const DRAWS: usize = 4;

/// wyrand: a 64-bit state advanced by a constant, output mixed by a 128-bit multiply.
#[derive(Debug, Clone)]
pub(super) struct WyRand(u64);

impl WyRand {
    pub(super) fn new(seed: u64) -> WyRand {
        // Spread small seeds (worker 0, 1, 2, ...) over the state space.
        WyRand(crate::hash::mix64(seed ^ 0x2d35_8dcc_aa6c_78a5))
    }

    #[inline]
    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below n / 2^64), `n > 0`.
    #[inline]
    pub(super) fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[inline]
pub(super) fn pick(
    rng: &mut WyRand,
    backends: &[Arc<Backend>],
    members: &[usize],
    tried: &[u16],
    clock: Clock,
) -> Option<usize> {
    let first = draw(rng, backends, members, tried, usize::MAX)?;
    let Some(second) = draw(rng, backends, members, tried, first) else {
        return Some(first);
    };
    // (active + 1) / ramp compared by cross-multiplying: plain active counts without a ramp.
    let load = |i: usize| u64::from(backends[i].active()) + 1;
    if load(second) * clock.ramp(&backends[first]) < load(first) * clock.ramp(&backends[second]) {
        Some(second)
    } else {
        Some(first)
    }
}

/// A random eligible member other than `exclude`.
#[inline]
fn draw(
    rng: &mut WyRand,
    backends: &[Arc<Backend>],
    members: &[usize],
    tried: &[u16],
    exclude: usize,
) -> Option<usize> {
    let n = members.len();
    if n == 0 {
        return None;
    }
    for _ in 0..DRAWS {
        let i = members[rng.below(n)];
        if i != exclude && eligible(backends, i, tried) {
            return Some(i);
        }
    }
    ring(rng.below(n), n)
        .map(|pos| members[pos])
        .find(|&i| i != exclude && eligible(backends, i, tried))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::WyRand;
    use crate::backend::BackendState;
    use crate::balancer::test_util::*;
    use crate::balancer::{Algorithm, Pool, Selector};

    #[test]
    fn never_picks_the_busier_of_two() {
        let pool = Pool::new(Algorithm::RandomTwo, equal(2));
        set_active(&pool, &[5, 1]);
        let mut sel = Selector::new(0);
        for _ in 0..200 {
            assert_eq!(sel.pick(&pool, &any_key(), &[]), Some(1));
        }
        // With more backends, the single busiest one can never win a pair.
        let pool = Pool::new(Algorithm::RandomTwo, equal(5));
        set_active(&pool, &[1, 2, 9, 3, 4]);
        let mut seen = [0usize; 5];
        for _ in 0..2000 {
            seen[sel.pick(&pool, &any_key(), &[]).unwrap()] += 1;
        }
        assert_eq!(seen[2], 0);
        // The least loaded wins every pair it is in (4 of the 10 pairs: ~800 picks), and even
        // the second busiest wins its pair with the busiest.
        assert!(seen[0] > 600, "{seen:?}");
        assert!(
            seen.iter().enumerate().all(|(i, &c)| i == 2 || c > 0),
            "{seen:?}"
        );
    }

    #[test]
    fn spreads_evenly_under_load() {
        let pool = Pool::new(Algorithm::RandomTwo, equal(4));
        let mut sel = Selector::new(3);
        for _ in 0..4000 {
            let i = sel.pick(&pool, &any_key(), &[]).unwrap();
            pool.backends()[i].active.fetch_add(1, Ordering::Relaxed);
        }
        for b in pool.backends() {
            // Two choices keep the spread tiny (a single random choice would be ~ +-60).
            assert!((990..=1010).contains(&b.active()), "{}", b.active());
        }
    }

    #[test]
    fn finds_the_last_eligible_backend() {
        let pool = Pool::new(Algorithm::RandomTwo, equal(64));
        for b in &pool.backends()[..63] {
            b.set_state(BackendState::Down);
        }
        let mut sel = Selector::new(0);
        for _ in 0..50 {
            assert_eq!(sel.pick(&pool, &any_key(), &[]), Some(63));
        }
        assert_eq!(sel.pick(&pool, &any_key(), &[63]), None);
    }

    #[test]
    fn rng_is_seeded_and_uniform() {
        let (mut a, mut b) = (WyRand::new(1), WyRand::new(1));
        assert!((0..10).all(|_| a.next_u64() == b.next_u64()));
        assert_ne!(WyRand::new(1).next_u64(), WyRand::new(2).next_u64());
        let mut c = [0usize; 8];
        for _ in 0..80_000 {
            c[a.below(8)] += 1;
        }
        assert!(c.iter().all(|&x| (9_500..10_500).contains(&x)), "{c:?}");
    }
}
