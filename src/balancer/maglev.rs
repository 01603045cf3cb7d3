//! Weighted Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016) as pure functions, plus the weighted rendezvous hashing
//! that reassigns the slots of unavailable backends.
//!
//! Control path: [`build`] and [`reassign`] run when a pool is built or rebuilt (startup, health
//! or admin state change, weight change, reload). Hot path: [`slot`] and, only when the table's
//! backend cannot take the connection, [`rendezvous`].
//!
//! ## Two layers, so that a backend leaving moves only its own keys
//! Plain Maglev rebuilt without a backend moves a few keys between *other* backends too (the
//! paper measures this disruption; it is small but not zero). The pool therefore keeps two
//! tables per class (primaries, backups):
//! 1. the **base table**, [`build`] from every configured backend of the class with its weight,
//!    whatever its health. It depends on the config alone (names and weights), so two
//!    instances, or one instance before and after a restart, build the same base table;
//! 2. the **lookup table**, the base table with every slot whose backend is unavailable at
//!    rebuild time (down, drain, disabled, weight 0) handed, by [`reassign`], to the
//!    available backend that wins a weighted rendezvous (highest-random-weight) draw keyed by
//!    the slot. Slots of available backends are never touched.
//!
//! A backend going away therefore moves exactly the slots that pointed to it, and rendezvous
//! hashing keeps that true when several are away at once: a slot's winner among the remaining
//! backends changes only if the winner itself leaves. A backend coming back takes back its own
//! slots plus the orphaned slots whose rendezvous it wins; no other key moves. Because the
//! lookup table is a function of (config, set of available backends), two instances that see
//! the same health agree on every key.
//!
//! Removing a backend from the *config* (reload) builds a new base table: that is plain Maglev
//! disruption, the price of "the table is a function of the config alone".
//!
//! ## Weights
//! Each backend permutes the slots with `offset`/`skip` from fixed hashes of its name (see
//! `crate::hash`), and backends take turns claiming their next free slot. With weights, a
//! backend of weight `w` earns `w` credit per round and takes a turn for every `max_weight`
//! credit, so slot counts are proportional to weights (the heaviest backend takes a turn every
//! round, which also bounds the number of rounds by the table size). Weight 0 takes no slot.
//! Equal weights reduce to the paper's algorithm: slot counts differ by at most one.
//! Turns go in the order of the backends' names, so reordering the config changes nothing.
//!
//! Invariants: the table size is prime (a non-prime request is rounded up by [`next_prime`]),
//! so every `skip` in `1..size` generates all slots and each turn finds a free slot within
//! `size` steps; every entry is an index into the input or [`EMPTY`]; [`EMPTY`] appears only
//! when no input has a non-zero weight.

use crate::hash::{self, MAGLEV_OFFSET_KEY, MAGLEV_SKIP_KEY};

/// Default table size: the smallest prime above 2^16. Maglev wants the size prime (so each
/// backend's permutation visits every slot) and much larger than the number of backends (the
/// paper uses 65537 for up to a few hundred backends: each then owns ~100+ slots, so
/// weights are honoured to within ~1%). 256 KiB of `u32` per table fits in L2.
pub const DEFAULT_TABLE_SIZE: usize = 65537;

/// A slot that belongs to no backend (no backend of the class has weight, or none is
/// available to take over).
pub const EMPTY: u32 = u32::MAX;

/// Whether `n` is prime (trial division: sizes are at most a few million, built rarely).
pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n % 2 == 0 {
        return false;
    }
    let mut d = 3;
    while d <= n / d {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// The smallest prime `>= n` (and `>= 2`).
pub fn next_prime(n: usize) -> usize {
    let mut p = n.max(2);
    while !is_prime(p) {
        p += 1;
    }
    p
}

/// Builds the weighted Maglev table for backends named `names` with weights `weights`.
///
/// Returns `next_prime(size)` entries, each an index into `names` or [`EMPTY`] (only when all
/// weights are 0). Pure and deterministic: the same names and weights give the same table on
/// every host and in every release that passes the golden test.
pub fn build(names: &[&str], weights: &[u32], size: usize) -> Vec<u32> {
    debug_assert_eq!(names.len(), weights.len());
    let m = next_prime(size);
    let mut table = vec![EMPTY; m];

    struct Turn {
        index: u32,
        weight: u64,
        credit: u64,
        next: usize,
        skip: usize,
    }
    let m64 = m as u64;
    let mut turns: Vec<(&str, Turn)> = names
        .iter()
        .zip(weights)
        .enumerate()
        .filter(|&(i, (_, &w))| w > 0 && i < EMPTY as usize)
        .map(|(i, (&name, &w))| {
            let offset = hash::name_hash(MAGLEV_OFFSET_KEY, name) % m64;
            let skip = hash::name_hash(MAGLEV_SKIP_KEY, name) % (m64 - 1) + 1;
            let turn = Turn {
                index: i as u32,
                weight: u64::from(w),
                credit: 0,
                next: offset as usize,
                skip: skip as usize,
            };
            (name, turn)
        })
        .collect();
    if turns.is_empty() {
        return table;
    }
    // Config order must not matter: turns go by name (then input position for duplicates).
    turns.sort_by(|a, b| a.0.cmp(b.0).then(a.1.index.cmp(&b.1.index)));
    let max_weight = turns.iter().map(|t| t.1.weight).max().unwrap_or(1);

    let mut filled = 0;
    'fill: loop {
        for (_, t) in turns.iter_mut() {
            t.credit += t.weight;
            if t.credit < max_weight {
                continue;
            }
            t.credit -= max_weight;
            // With m prime the permutation is a full cycle and a free slot exists (filled < m),
            // so this finds one within m steps; the bound only guards against a broken input.
            let mut claimed = false;
            for _ in 0..m {
                let slot = t.next;
                t.next += t.skip;
                if t.next >= m {
                    t.next -= m;
                }
                if table[slot] == EMPTY {
                    table[slot] = t.index;
                    claimed = true;
                    break;
                }
            }
            if !claimed {
                debug_assert!(claimed, "maglev permutation found no free slot");
                break 'fill;
            }
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

/// Hands every slot of `table` whose owner has `weights[owner] == 0` (unavailable) to the
/// available backend that wins [`rendezvous`] for that slot. `seeds[i]` is backend `i`'s
/// rendezvous seed (`hash::name_hash(RENDEZVOUS_KEY, name)`), `weights[i]` its current weight
/// or 0 when it cannot take new connections. Slots of available backends keep their owner.
///
/// Returns `None` when no slot changes (the caller keeps sharing `table`). A slot stays
/// [`EMPTY`] when no backend is available.
pub fn reassign(table: &[u32], seeds: &[u64], weights: &[u32]) -> Option<Vec<u32>> {
    debug_assert_eq!(seeds.len(), weights.len());
    let owned_by_available = |owner: u32| weights.get(owner as usize).is_some_and(|&w| w > 0);
    if table.iter().all(|&owner| owned_by_available(owner)) {
        return None;
    }
    // Control path: collect the candidates once instead of filtering per slot.
    let candidates: Vec<(usize, u64, u32)> = seeds
        .iter()
        .zip(weights)
        .enumerate()
        .filter(|&(i, (_, &w))| w > 0 && i < EMPTY as usize)
        .map(|(i, (&seed, &w))| (i, seed, w))
        .collect();
    let out = table
        .iter()
        .enumerate()
        .map(|(slot, &owner)| {
            if owned_by_available(owner) {
                owner
            } else {
                rendezvous(slot_key(slot), candidates.iter().copied()).map_or(EMPTY, |i| i as u32)
            }
        })
        .collect();
    Some(out)
}

/// The rendezvous key of a table slot: all flows of a slot move together.
#[inline]
fn slot_key(slot: usize) -> u64 {
    // Golden-ratio offset so slot 0 does not hash to fmix64(0) = 0.
    hash::mix64((slot as u64).wrapping_add(0x9e37_79b9_7f4a_7c15))
}

/// The slot of a flow hash in a table of `len` entries (`len > 0`).
#[inline]
pub fn slot(hash: u64, len: usize) -> usize {
    (hash % len as u64) as usize
}

/// Weighted rendezvous hashing: among `candidates` `(id, seed, weight)` with `weight > 0`,
/// the id maximising `weight / -ln(u)` where `u` is uniform from `mix64(key ^ seed)`; a
/// candidate wins with probability `weight / total weight` (the "logarithmic method",
/// Schindelhauer and Schomaker 2005). Removing a candidate changes the result only for keys it
/// won. Ties go to the earlier candidate. O(candidates), no allocation.
///
/// Deterministic across hosts: the scores use only IEEE-754 `+ - * /`, which are correctly
/// rounded everywhere (Rust never fuses them), and [`neg_ln_unit`] instead of the platform
/// `ln`, whose last bit may differ between libm implementations.
#[inline]
pub fn rendezvous<I>(key: u64, candidates: I) -> Option<usize>
where
    I: IntoIterator<Item = (usize, u64, u32)>,
{
    // best = (id, weight, -ln u); compare w_c / l_c > w_b / l_b as w_c * l_b > w_b * l_c, which
    // also handles l = 0 (u = 1, an infinite score) without dividing by zero.
    let mut best: Option<(usize, f64, f64)> = None;
    for (id, seed, weight) in candidates {
        if weight == 0 {
            continue;
        }
        let w = f64::from(weight);
        let l = neg_ln_unit(hash::mix64(key ^ seed));
        match best {
            Some((_, bw, bl)) if w * bl <= bw * l => {}
            _ => best = Some((id, w, l)),
        }
    }
    best.map(|b| b.0)
}

/// `-ln(u)` for `u = ((h >> 11) + 1) / 2^53` in `(0, 1]`: an exponential variate from the top
/// 53 bits of `h`. Hand-written (exponent split plus the `atanh` series) so the result is
/// bit-identical on every IEEE-754 host; relative error below 1e-15.
pub fn neg_ln_unit(h: u64) -> f64 {
    let x = (h >> 11) + 1; // 1..=2^53: exact as f64
    let mut e = 63 - x.leading_zeros() as i32; // floor(log2 x), 0..=53
    let mut m = x as f64 / (1u64 << e) as f64; // [1, 2), exact
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172; 12 odd terms reach 1e-19.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut series = 1.0 / 23.0;
    for k in (0..11).rev() {
        series = series * s2 + 1.0 / f64::from(2 * k + 1);
    }
    let ln_m = 2.0 * s * series;
    // ln u = ln x - 53 ln 2 = (e - 53) ln 2 + ln m; e <= 53, and ln m < ln 2 when e < 53.
    f64::from(53 - e) * std::f64::consts::LN_2 - ln_m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::RENDEZVOUS_KEY;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:80", i / 250, i % 250 + 1))
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &e in table {
            c[e as usize] += 1;
        }
        c
    }

    #[test]
    fn primes() {
        assert_eq!(next_prime(65536), 65537);
        assert_eq!(next_prime(65537), 65537);
        assert_eq!(next_prime(0), 2);
        assert_eq!(next_prime(1000), 1009);
        assert!(is_prime(DEFAULT_TABLE_SIZE));
        assert!(!is_prime(65535));
        assert!(!is_prime(1));
    }

    /// katran's CHHelpers test: with equal weights, the most and least used backends differ
    /// by at most one slot.
    #[test]
    fn equal_weights_differ_by_at_most_one_slot() {
        for n in [1, 2, 3, 7, 10, 100, 400] {
            let names = names(n);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let table = build(&refs, &vec![1; n], DEFAULT_TABLE_SIZE);
            assert_eq!(table.len(), DEFAULT_TABLE_SIZE);
            let c = counts(&table, n);
            let (min, max) = (c.iter().min().unwrap(), c.iter().max().unwrap());
            assert!(max - min <= 1, "n={n}: min {min} max {max}");
        }
    }

    #[test]
    fn weighted_shares_within_one_point() {
        let names = names(4);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let table = build(&refs, &[1, 2, 3, 4], DEFAULT_TABLE_SIZE);
        let c = counts(&table, 4);
        for (i, want) in [0.1, 0.2, 0.3, 0.4].into_iter().enumerate() {
            let share = c[i] as f64 / table.len() as f64;
            assert!(
                (share - want).abs() < 0.01,
                "backend {i}: {share} vs {want}"
            );
        }
        // Very uneven weights too: 1 vs 1000 (the config's extremes).
        let table = build(&refs[..2], &[1, 1000], DEFAULT_TABLE_SIZE);
        let c = counts(&table, 2);
        let share = c[0] as f64 / table.len() as f64;
        assert!((share - 1.0 / 1001.0).abs() < 0.01, "{share}");
        assert!(c[0] > 0);
    }

    #[test]
    fn weight_zero_gets_no_slot_and_all_zero_is_empty() {
        let names = names(3);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let table = build(&refs, &[1, 0, 2], 1009);
        assert!(table.iter().all(|&e| e == 0 || e == 2));
        let table = build(&refs, &[0, 0, 0], 1009);
        assert!(table.iter().all(|&e| e == EMPTY));
        assert!(build(&[], &[], 7).iter().all(|&e| e == EMPTY));
    }

    #[test]
    fn non_prime_size_is_rounded_up() {
        let names = names(3);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let table = build(&refs, &[1, 1, 1], 1000);
        assert_eq!(table.len(), 1009);
        assert!(table.iter().all(|&e| e < 3));
    }

    #[test]
    fn build_is_deterministic_and_order_independent() {
        let names = names(20);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let weights: Vec<u32> = (0..20).map(|i| i % 4 + 1).collect();
        let a = build(&refs, &weights, DEFAULT_TABLE_SIZE);
        let b = build(&refs, &weights, DEFAULT_TABLE_SIZE);
        assert_eq!(a, b);
        // Reversed input: same backend (by name) in every slot.
        let rev_refs: Vec<&str> = refs.iter().rev().copied().collect();
        let rev_weights: Vec<u32> = weights.iter().rev().copied().collect();
        let c = build(&rev_refs, &rev_weights, DEFAULT_TABLE_SIZE);
        for (x, y) in a.iter().zip(&c) {
            assert_eq!(refs[*x as usize], rev_refs[*y as usize]);
        }
    }

    /// Pins the table: a change here re-maps every client of every deployment.
    #[test]
    fn golden_table_entries() {
        let refs = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
        let table = build(&refs, &[1, 1, 1], DEFAULT_TABLE_SIZE);
        assert_eq!(&table[..12], &GOLDEN_EQUAL[..]);
        assert_eq!(table[65536], GOLDEN_EQUAL_LAST);
        let table = build(&refs, &[3, 1, 2], DEFAULT_TABLE_SIZE);
        assert_eq!(&table[..12], &GOLDEN_WEIGHTED[..]);
    }
    const GOLDEN_EQUAL: [u32; 12] = [2, 1, 2, 0, 0, 2, 1, 0, 2, 0, 1, 0];
    const GOLDEN_EQUAL_LAST: u32 = 2;
    const GOLDEN_WEIGHTED: [u32; 12] = [2, 1, 2, 0, 0, 2, 1, 0, 2, 0, 0, 0];

    #[test]
    fn neg_ln_unit_matches_ln() {
        let mut h = 0x1234_5678_9abc_def0u64;
        for _ in 0..10_000 {
            h = hash::mix64(h.wrapping_add(1));
            let u = ((h >> 11) + 1) as f64 / (1u64 << 53) as f64;
            let want = -u.ln();
            let got = neg_ln_unit(h);
            assert!(
                (got - want).abs() <= 1e-14 * want.max(1e-300) + 1e-300,
                "{h}"
            );
        }
        assert_eq!(neg_ln_unit(u64::MAX), 0.0);
        let smallest = neg_ln_unit(0);
        assert!((smallest - 53.0 * std::f64::consts::LN_2).abs() < 1e-12);
        assert!(neg_ln_unit(u64::MAX - (1 << 11)) > 0.0);
    }

    #[test]
    fn rendezvous_honours_weights() {
        let cands: Vec<(usize, u64, u32)> = (0..4)
            .map(|i| {
                (
                    i,
                    hash::name_hash(RENDEZVOUS_KEY, &format!("b{i}")),
                    i as u32 + 1,
                )
            })
            .collect();
        let mut c = [0usize; 4];
        let n = 100_000;
        for k in 0..n {
            c[rendezvous(hash::mix64(k), cands.iter().copied()).unwrap()] += 1;
        }
        for (i, want) in [0.1, 0.2, 0.3, 0.4].into_iter().enumerate() {
            let share = c[i] as f64 / n as f64;
            assert!((share - want).abs() < 0.01, "{i}: {share}");
        }
        assert_eq!(rendezvous(1, std::iter::empty()), None);
        assert_eq!(rendezvous(1, [(3, 9, 0)]), None);
    }

    fn setup(n: usize, weights: &[u32], size: usize) -> (Vec<u32>, Vec<u64>) {
        let names = names(n);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let seeds = refs
            .iter()
            .map(|n| hash::name_hash(RENDEZVOUS_KEY, n))
            .collect();
        (build(&refs, weights, size), seeds)
    }

    #[test]
    fn reassign_keeps_available_slots_and_spreads_by_weight() {
        let weights = [1, 2, 3, 4, 5];
        let (base, seeds) = setup(5, &weights, DEFAULT_TABLE_SIZE);
        assert_eq!(reassign(&base, &seeds, &weights), None);
        let mut avail = weights;
        avail[4] = 0;
        let out = reassign(&base, &seeds, &avail).unwrap();
        let moved: Vec<usize> = (0..base.len()).filter(|&s| out[s] != base[s]).collect();
        assert!(moved.iter().all(|&s| base[s] == 4 && out[s] != 4));
        assert_eq!(moved.len(), base.iter().filter(|&&e| e == 4).count());
        // The orphaned third of the table lands on 0..3 in proportion 1:2:3:4.
        let c = counts(&out, 5);
        for i in 0..4 {
            let share = c[i] as f64 / out.len() as f64;
            let want = f64::from(weights[i]) / 10.0;
            assert!((share - want).abs() < 0.01, "{i}: {share} vs {want}");
        }
        let none = reassign(&base, &seeds, &[0; 5]).unwrap();
        assert!(none.iter().all(|&e| e == EMPTY));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The requirement: marking one backend unavailable moves only the slots that
        /// pointed to it, whatever was already unavailable, and they land on available ones.
        #[test]
        fn removing_one_backend_moves_only_its_slots(
            spec in prop::collection::vec((1u32..=10, prop::bool::weighted(0.8)), 2..40),
            pick in any::<prop::sample::Index>(),
        ) {
            let n = spec.len();
            let weights: Vec<u32> = spec.iter().map(|s| s.0).collect();
            let (base, seeds) = setup(n, &weights, 4093);
            let before_avail: Vec<u32> = spec.iter().map(|&(w, up)| if up { w } else { 0 }).collect();
            let up: Vec<usize> = (0..n).filter(|&i| before_avail[i] > 0).collect();
            prop_assume!(!up.is_empty());
            let gone = up[pick.index(up.len())];
            let gone_id = gone as u32;
            let mut after_avail = before_avail.clone();
            after_avail[gone] = 0;
            let before = reassign(&base, &seeds, &before_avail).unwrap_or_else(|| base.clone());
            let after = reassign(&base, &seeds, &after_avail).unwrap_or_else(|| base.clone());
            // Determinism: rebuilding from the same input gives the same table.
            let again = reassign(&base, &seeds, &after_avail).unwrap_or_else(|| base.clone());
            prop_assert_eq!(&after, &again);
            for s in 0..base.len() {
                if before[s] == gone_id {
                    prop_assert_ne!(after[s], gone_id);
                    if up.len() > 1 {
                        prop_assert!(after_avail[after[s] as usize] > 0);
                    } else {
                        prop_assert_eq!(after[s], EMPTY);
                    }
                } else {
                    prop_assert_eq!(before[s], after[s], "slot {} moved", s);
                }
            }
        }
    }
}
