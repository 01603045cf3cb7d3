//! Backend selection: which backend of a listener takes a new connection (or UDP session).
//!
//! Owns the [`Pool`] (an immutable snapshot of one listener's backends plus the lookup tables
//! precomputed from them) and the [`Selector`] (one worker's mutable selection state for one
//! listener), and one file per algorithm: `round_robin`, `weighted_round_robin` (smooth),
//! `least_conn`, `weighted_least_conn`, `random_two`, `least_latency` (peak-EWMA connect
//! time), and the two hashes (`source_ip_hash`, `five_tuple_hash`: `crate::hash` holds the
//! fixed hash functions, `maglev` the consistent-hash table they look up). The algorithm names
//! are the config's ([`Algorithm`], re-exported from `crate::config`), and the flow key is
//! the hash's ([`FlowKey`], from `crate::hash`).
//!
//! Hot path: [`Selector::pick`], once per new connection and once per connect retry. It never
//! allocates, locks or does I/O; it reads the pool and the backends' atomics (state, weight,
//! active count), so an admin or health change is seen by the very next pick on every worker
//! even before the control path publishes a rebuilt pool. Round robin and the hashes are O(1)
//! in the common case; smooth weighted round robin, least_conn, weighted_least_conn and the
//! hashes' last-resort fallback are O(backends). A pick reads the monotonic clock once, and
//! only for `least_latency` or a listener with `slow_start_s` (the ramp, see
//! `backend::slow_start`; every algorithm but round robin and the hashes honours it).
//!
//! Control path: [`Pool::new`] / [`Pool::rebuilt`] build the Maglev tables (hash algorithms
//! only); the runtime publishes the result through an `ArcSwap`.
//!
//! Invariants:
//! - a `Pool` never changes after construction; each one has a unique [`Pool::generation`];
//! - every index a pick returns is into `pool.backends()`, names a backend that was available
//!   when checked and is not in `tried`;
//! - primaries first: a backup is returned only when no primary is available (after skipping
//!   `tried`);
//! - the hashes are functions of the config and the set of available backends only: two
//!   instances (or restarts) with the same backends and health map every key the same.

mod least_conn;
mod least_latency;
pub mod maglev;
mod random_two;
mod round_robin;
mod weighted_least_conn;
mod weighted_round_robin;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{slow_start, Backend, BackendState};
pub use crate::config::Algorithm;
use crate::hash;
pub use crate::hash::FlowKey;

use self::maglev::EMPTY;
use self::random_two::WyRand;

/// Source of [`Pool::generation`]; starts at 1 so a fresh [`Selector`] (generation 0) always
/// adopts its first pool.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Primary or backup: each algorithm runs over one class at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Primary = 0,
    Backup = 1,
}

/// Immutable snapshot of one listener's backends plus the precomputed lookup tables.
/// Built on the control path (startup, health change, reload), read by every worker through
/// an ArcSwap. Never mutated after construction.
///
/// A listener with TLS SNI routes has one group of backends per route besides its own (group
/// 0): each group has its own algorithm, classes and tables, and a pick names its group. Every
/// backend belongs to exactly one group, and `backends` holds them all (so health checks,
/// metrics, `/status` and the admin API see route backends like any other).
pub struct Pool {
    backends: Vec<Arc<Backend>>,
    generation: u64,
    /// Group 0: the listener's own backends; group `r + 1`: route `r`'s.
    groups: Box<[Group]>,
    /// Per backend: fixed hash of its name, its identity in rendezvous draws.
    seeds: Box<[u64]>,
    /// Prime Maglev table size (unused by the non-hash algorithms).
    maglev_size: usize,
    /// `slow_start_s` in µs; 0 = off.
    slow_start_us: u64,
}

/// The backends one algorithm chooses among.
struct Group {
    algorithm: Algorithm,
    /// Indices into `Pool::backends` of the primaries, then of the backups, in config order.
    classes: [Box<[usize]>; 2],
    /// Per class; `Some` only for the hash algorithms.
    tables: Option<[ClassTable; 2]>,
}

/// The Maglev tables of one class (see `maglev`'s module doc for the two layers).
struct ClassTable {
    base: Arc<BaseTable>,
    /// What picks read: `base.table` with unavailable backends' slots reassigned. Shares
    /// `base.table` when every backend was available at build time. Entries are indices into
    /// `Pool::backends` or `EMPTY`; empty (len 0) for a class without backends.
    lookup: Arc<[u32]>,
}

/// A Maglev table over every backend of a class, and the weights it was built from.
struct BaseTable {
    /// Per class member, in class order.
    weights: Box<[u32]>,
    table: Arc<[u32]>,
}

/// Probes of neighbouring slots when a slot's backend cannot take the connection (full,
/// changed since the last rebuild, or already tried). Eight `u32` slots sit in one or two
/// cache lines; neighbours are other backends in proportion to their weight, so with one
/// backend out the first probe almost always succeeds, and the O(n) rendezvous fallback runs
/// only when most of the class is out at once.
const MAX_PROBES: usize = 8;

impl Pool {
    /// A pool with the default Maglev table size (65537, see [`maglev::DEFAULT_TABLE_SIZE`]).
    pub fn new(algorithm: Algorithm, backends: Vec<Arc<Backend>>) -> Pool {
        Pool::with_table_size(algorithm, backends, maglev::DEFAULT_TABLE_SIZE)
    }

    /// A pool whose Maglev tables (hash algorithms only) have `maglev_size` slots, rounded up
    /// to a prime.
    pub fn with_table_size(
        algorithm: Algorithm,
        backends: Vec<Arc<Backend>>,
        maglev_size: usize,
    ) -> Pool {
        let group_of = vec![0; backends.len()];
        Pool::grouped(backends, &group_of, &[algorithm], maglev_size)
    }

    /// A pool of several groups: backend `i` belongs to group `group_of[i]`, group `g` uses
    /// `algorithms[g]`. A group index without an algorithm puts its backends nowhere (the
    /// config never does that).
    pub fn grouped(
        backends: Vec<Arc<Backend>>,
        group_of: &[usize],
        algorithms: &[Algorithm],
        maglev_size: usize,
    ) -> Pool {
        let class_of = |g: usize, backup: bool| {
            backends
                .iter()
                .enumerate()
                .filter(|&(i, b)| b.backup == backup && group_of.get(i) == Some(&g))
                .map(|(i, _)| i)
                .collect::<Box<[usize]>>()
        };
        let groups = algorithms
            .iter()
            .enumerate()
            .map(|(g, &algorithm)| Group {
                algorithm,
                classes: [class_of(g, false), class_of(g, true)],
                tables: None,
            })
            .collect();
        let seeds = backends
            .iter()
            .map(|b| hash::name_hash(hash::RENDEZVOUS_KEY, &b.name))
            .collect();
        let mut pool = Pool {
            backends,
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            groups,
            seeds,
            maglev_size: maglev::next_prime(maglev_size),
            slow_start_us: 0,
        };
        pool.build_all_tables(None);
        pool
    }

    /// The same pool with a slow-start period (`slow_start_s`); set before it is published.
    pub fn with_slow_start(mut self, period: Duration) -> Pool {
        self.slow_start_us = u64::try_from(period.as_micros()).unwrap_or(u64::MAX);
        self
    }

    /// The slow-start period in µs (0 = off).
    pub fn slow_start_us(&self) -> u64 {
        self.slow_start_us
    }

    /// The backends, in config order (the listener's own, then each route's);
    /// [`Selector::pick`] returns indices into this.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// The algorithm of group 0 (the listener's own backends).
    pub fn algorithm(&self) -> Algorithm {
        self.groups
            .first()
            .map_or(Algorithm::RoundRobin, |g| g.algorithm)
    }

    /// The algorithm of `group`, if there is such a group.
    #[inline]
    pub fn algorithm_of(&self, group: usize) -> Option<Algorithm> {
        self.groups.get(group).map(|g| g.algorithm)
    }

    /// Whether `group` has no backend at all (a routed listener without backends of its own:
    /// what matches no route is refused as `no_route`).
    pub fn group_is_empty(&self, group: usize) -> bool {
        self.groups
            .get(group)
            .is_none_or(|g| g.classes.iter().all(|c| c.is_empty()))
    }

    /// Unique id of this snapshot (global AtomicU64 counter), so per-worker selector state can
    /// notice a new pool and reset.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The (prime) Maglev table size used by the hash algorithms.
    pub fn maglev_size(&self) -> usize {
        self.maglev_size
    }

    /// Same backends (same Arcs, counters kept), tables rebuilt from their current state/weight.
    /// Called by the control path after a state or weight change.
    ///
    /// The base Maglev tables are reused when no weight changed (a weight that dropped to 0
    /// counts as unchanged, so it leaves like a down backend: only its slots move).
    pub fn rebuilt(&self) -> Pool {
        let mut pool = Pool {
            backends: self.backends.clone(),
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            groups: self
                .groups
                .iter()
                .map(|g| Group {
                    algorithm: g.algorithm,
                    classes: g.classes.clone(),
                    tables: None,
                })
                .collect(),
            seeds: self.seeds.clone(),
            maglev_size: self.maglev_size,
            slow_start_us: self.slow_start_us,
        };
        pool.build_all_tables(Some(self));
        pool
    }

    fn build_all_tables(&mut self, previous: Option<&Pool>) {
        for g in 0..self.groups.len() {
            let prev = previous
                .and_then(|p| p.groups.get(g))
                .and_then(|pg| pg.tables.as_ref());
            let tables = self.build_tables(g, prev);
            self.groups[g].tables = tables;
        }
    }

    fn build_tables(
        &self,
        group: usize,
        previous: Option<&[ClassTable; 2]>,
    ) -> Option<[ClassTable; 2]> {
        if !self.groups[group].algorithm.is_hash() {
            return None;
        }
        let build = |c: Class| self.build_class(group, c, previous.map(|p| &p[c as usize]));
        Some([build(Class::Primary), build(Class::Backup)])
    }

    fn build_class(&self, group: usize, class: Class, previous: Option<&ClassTable>) -> ClassTable {
        let members = &self.groups[group].classes[class as usize];
        // A weight of 0 keeps the backend's previous base weight: it is then handled as
        // unavailable by the reassignment layer and only its own slots move.
        let weights: Box<[u32]> = members
            .iter()
            .enumerate()
            .map(|(pos, &i)| match self.backends[i].weight() {
                0 => previous
                    .and_then(|p| p.base.weights.get(pos).copied())
                    .unwrap_or(0),
                w => w,
            })
            .collect();
        let base = match previous {
            Some(p) if p.base.weights == weights => Arc::clone(&p.base),
            _ => Arc::new(self.build_base(members, weights)),
        };
        // Availability at rebuild time ignores max_connections: being full is transient and
        // handled per pick by probing, not by moving slots.
        let mut available = vec![0u32; self.backends.len()];
        for &i in members.iter() {
            let b = &self.backends[i];
            if b.state() == BackendState::Up {
                available[i] = b.weight();
            }
        }
        let lookup = match maglev::reassign(&base.table, &self.seeds, &available) {
            Some(t) => t.into(),
            None => Arc::clone(&base.table),
        };
        ClassTable { base, lookup }
    }

    fn build_base(&self, members: &[usize], weights: Box<[u32]>) -> BaseTable {
        if members.is_empty() {
            return BaseTable {
                weights,
                table: Arc::from(Vec::new()),
            };
        }
        let names: Vec<&str> = members
            .iter()
            .map(|&i| self.backends[i].name.as_str())
            .collect();
        // maglev::build returns positions in `members`; store backend indices instead so a
        // pick needs no translation.
        let table = maglev::build(&names, &weights, self.maglev_size)
            .into_iter()
            .map(|pos| match members.get(pos as usize) {
                Some(&i) => u32::try_from(i).unwrap_or(EMPTY),
                None => EMPTY,
            })
            .collect();
        BaseTable { weights, table }
    }

    #[inline]
    fn members(&self, group: usize, class: Class) -> &[usize] {
        self.groups
            .get(group)
            .map_or(&[][..], |g| &g.classes[class as usize][..])
    }

    /// Hash algorithms: the Maglev slot of `h` in the primaries' table, then the backups'.
    #[inline]
    fn pick_hashed(&self, group: usize, h: u64, tried: &[u16]) -> Option<usize> {
        self.pick_hashed_class(group, Class::Primary, h, tried)
            .or_else(|| self.pick_hashed_class(group, Class::Backup, h, tried))
    }

    fn pick_hashed_class(
        &self,
        group: usize,
        class: Class,
        h: u64,
        tried: &[u16],
    ) -> Option<usize> {
        if let Some(tables) = self.groups.get(group).and_then(|g| g.tables.as_ref()) {
            let lookup = &tables[class as usize].lookup;
            let len = lookup.len();
            if len > 0 {
                let start = maglev::slot(h, len);
                for k in 0..MAX_PROBES.min(len) {
                    let mut s = start + k;
                    if s >= len {
                        s -= len;
                    }
                    let owner = lookup[s];
                    if owner != EMPTY && eligible(&self.backends, owner as usize, tried) {
                        return Some(owner as usize);
                    }
                }
            }
        }
        // Last resort, O(n): the key's weighted rendezvous winner among the class members that
        // can take it now. Deterministic per key, so a retry or a full backend still spreads
        // the same way on every worker.
        let candidates = self
            .members(group, class)
            .iter()
            .filter(|&&i| eligible(&self.backends, i, tried))
            .map(|&i| (i, self.seeds[i], self.backends[i].weight()));
        maglev::rendezvous(h, candidates)
    }
}

impl fmt::Debug for Pool {
    // Manual: the tables are 64K entries each.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("algorithm", &self.algorithm())
            .field("generation", &self.generation)
            .field("backends", &self.backends.len())
            .field("groups", &self.groups.len())
            .field("primaries", &self.members(0, Class::Primary).len())
            .field("backups", &self.members(0, Class::Backup).len())
            .field("maglev_size", &self.maglev_size)
            .finish()
    }
}

/// What a pick knows about time: now (read once per pick, and only when the algorithm or a
/// slow start needs it) and the listener's slow-start period.
#[derive(Debug, Clone, Copy)]
struct Clock {
    now_us: u64,
    slow_start_us: u64,
}

impl Clock {
    #[inline]
    fn of(pool: &Pool, algorithm: Algorithm) -> Clock {
        let needed = pool.slow_start_us != 0 || algorithm == Algorithm::LeastLatency;
        Clock {
            now_us: if needed {
                crate::clock::monotonic_us()
            } else {
                0
            },
            slow_start_us: pool.slow_start_us,
        }
    }

    /// The backend's slow-start ramp now, in thousandths of its weight.
    #[inline]
    fn ramp(&self, b: &Backend) -> u64 {
        if self.slow_start_us == 0 {
            return slow_start::FULL;
        }
        b.ramp_permille(self.now_us, self.slow_start_us)
    }
}

/// Whether backend `i` may take this connection: available now and not already tried for it.
#[inline]
fn eligible(backends: &[Arc<Backend>], i: usize, tried: &[u16]) -> bool {
    backends.get(i).is_some_and(|b| b.is_available()) && !tried.iter().any(|&t| usize::from(t) == i)
}

/// Where a pass round a class of `n` members starts: `cursor`, which the passes keep below
/// `n`; `%` only after the class shrank or for the initial seed (0 for an empty class).
#[inline]
fn ring_start(cursor: usize, n: usize) -> usize {
    if cursor < n {
        cursor
    } else {
        cursor.checked_rem(n).unwrap_or(0)
    }
}

/// The position after `pos` in a class of `n` members, wrapping to 0.
#[inline]
fn ring_next(pos: usize, n: usize) -> usize {
    if pos + 1 == n {
        0
    } else {
        pos + 1
    }
}

/// One pass round a class of `n` members: positions `start..n`, then `0..start`.
#[inline]
fn ring(start: usize, n: usize) -> impl Iterator<Item = usize> {
    (start..n).chain(0..start)
}

/// The eligible members of a class, in one pass from the worker's rotating start, which moves
/// on by one per call: the scan of `least_conn` and `weighted_least_conn`, so that among equal
/// candidates the first seen, and so the one chosen, changes from pick to pick.
#[inline]
fn rotating_scan<'a>(
    cursor: &mut usize,
    backends: &'a [Arc<Backend>],
    members: &'a [usize],
    tried: &'a [u16],
) -> impl Iterator<Item = usize> + 'a {
    let n = members.len();
    let start = ring_start(*cursor, n);
    if n > 0 {
        *cursor = ring_next(start, n);
    }
    ring(start, n)
        .map(move |pos| members[pos])
        .filter(move |&i| eligible(backends, i, tried))
}

/// Per-worker mutable selection state (round-robin cursor, smooth-WRR current weights, RNG).
/// One per worker per listener; never shared, so no atomics or locks needed for it.
#[derive(Debug)]
pub struct Selector {
    /// Generation of the pool the state below belongs to; 0 = none yet.
    generation: u64,
    seed: u64,
    /// Per group, per class: round-robin position, or the rotating scan start of the
    /// least-conn family. Sized by `adopt`.
    cursors: Vec<[usize; 2]>,
    rng: WyRand,
    /// Smooth WRR current weight per backend index; its length follows the pool's backend
    /// count and changes only when a new pool generation is seen.
    wrr_current: Vec<i64>,
}

impl Selector {
    /// `seed` differs per worker (e.g. the worker index): it offsets the round-robin start and
    /// seeds the RNG, so workers do not all send their first connection to the same backend.
    pub fn new(seed: u64) -> Selector {
        Selector {
            generation: 0,
            seed,
            cursors: Vec::new(),
            rng: WyRand::new(seed),
            wrr_current: Vec::new(),
        }
    }

    /// Index into pool.backends() of the backend for a new connection, or None when no backend
    /// can take it. Skips backends for which `!backend.is_available()` and indices in `tried`
    /// (backends that already failed for this connection: connect retries). Primary backends
    /// first; backups (backend.backup) only when no primary is available (after skipping).
    /// Must not allocate. O(1) for round robin and the hashes in the common case, O(n) allowed
    /// for least_conn/weighted_least_conn. Picks among the listener's own backends (group 0).
    #[inline]
    pub fn pick(&mut self, pool: &Pool, key: &FlowKey, tried: &[u16]) -> Option<usize> {
        self.pick_in(pool, 0, key, tried)
    }

    /// [`Selector::pick`] among the backends of `group` (0: the listener's own, `r + 1`: SNI
    /// route `r`), with that group's algorithm. `None` for a group the pool does not have.
    pub fn pick_in(
        &mut self,
        pool: &Pool,
        group: usize,
        key: &FlowKey,
        tried: &[u16],
    ) -> Option<usize> {
        if self.generation != pool.generation {
            self.adopt(pool);
        }
        let algorithm = pool.algorithm_of(group)?;
        match algorithm {
            Algorithm::SourceIpHash => {
                pool.pick_hashed(group, hash::source_ip_hash(key.client.ip()), tried)
            }
            Algorithm::FiveTupleHash => pool.pick_hashed(group, hash::five_tuple_hash(key), tried),
            _ => {
                let clock = Clock::of(pool, algorithm);
                self.pick_class(pool, group, algorithm, Class::Primary, tried, clock)
                    .or_else(|| {
                        self.pick_class(pool, group, algorithm, Class::Backup, tried, clock)
                    })
            }
        }
    }

    /// Adopts a new pool generation: the only place that may (re)allocate. The smooth-WRR
    /// state is kept when the backend count is unchanged (a `rebuilt` pool has the same
    /// backends at the same indices, so the smooth sequence just continues); otherwise it
    /// restarts from zero.
    fn adopt(&mut self, pool: &Pool) {
        let n = pool.backends.len();
        if self.wrr_current.len() != n {
            self.wrr_current.clear();
            self.wrr_current.resize(n, 0);
        }
        let groups = pool.groups.len();
        if self.cursors.len() != groups {
            self.cursors.resize(groups, [self.seed as usize; 2]);
        }
        self.generation = pool.generation;
    }

    fn pick_class(
        &mut self,
        pool: &Pool,
        group: usize,
        algorithm: Algorithm,
        class: Class,
        tried: &[u16],
        clock: Clock,
    ) -> Option<usize> {
        let members = pool.members(group, class);
        if members.is_empty() {
            return None;
        }
        let backends = &pool.backends[..];
        let cursor = &mut self.cursors.get_mut(group)?[class as usize];
        match algorithm {
            Algorithm::RoundRobin => round_robin::pick(cursor, backends, members, tried),
            Algorithm::WeightedRoundRobin => {
                weighted_round_robin::pick(&mut self.wrr_current, backends, members, tried, clock)
            }
            Algorithm::LeastConn => least_conn::pick(cursor, backends, members, tried, clock),
            Algorithm::WeightedLeastConn => {
                weighted_least_conn::pick(cursor, backends, members, tried, clock)
            }
            Algorithm::RandomTwo => {
                random_two::pick(&mut self.rng, backends, members, tried, clock)
            }
            Algorithm::LeastLatency => least_latency::pick(cursor, backends, members, tried, clock),
            // Handled by `pick_in` before classes are considered.
            Algorithm::SourceIpHash | Algorithm::FiveTupleHash => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// Backends named `10.0.<i/250>.<i%250+1>:80` with the given (weight, backup).
    pub(crate) fn backends(spec: &[(u32, bool)]) -> Vec<Arc<Backend>> {
        spec.iter()
            .enumerate()
            .map(|(i, &(w, backup))| {
                let name = format!("10.0.{}.{}:80", i / 250, i % 250 + 1);
                Arc::new(Backend::new(name.parse().unwrap(), name, w, 0, backup))
            })
            .collect()
    }

    pub(crate) fn equal(n: usize) -> Vec<Arc<Backend>> {
        backends(&vec![(1, false); n])
    }

    pub(crate) fn key(client: &str) -> FlowKey {
        FlowKey {
            client: client.parse().unwrap(),
            local: "192.0.2.100:80".parse().unwrap(),
            protocol: 6,
        }
    }

    pub(crate) fn any_key() -> FlowKey {
        key("198.51.100.1:40000")
    }

    /// Sets the backends' active counts, in order.
    pub(crate) fn set_active(pool: &Pool, active: &[u32]) {
        for (b, &a) in pool.backends().iter().zip(active) {
            b.active.store(a, Ordering::Relaxed);
        }
    }

    /// The next `n` picks of `sel` from `pool`, with nothing tried.
    pub(crate) fn sequence(pool: &Pool, sel: &mut Selector, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| sel.pick(pool, &any_key(), &[]).unwrap())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use proptest::prelude::*;
    use std::net::SocketAddr;

    /// Small tables keep the debug-build tests fast; behaviour does not depend on the size.
    const SMALL: usize = 4093;

    fn client(i: u32) -> FlowKey {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i.wrapping_mul(7919));
        FlowKey {
            client: SocketAddr::new(ip.into(), 30000 + (i % 1000) as u16),
            local: "192.0.2.100:80".parse().unwrap(),
            protocol: 6,
        }
    }

    #[test]
    fn algorithm_names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(a.as_str()), Some(a));
            assert_eq!(a.to_string(), a.as_str());
        }
        assert_eq!(Algorithm::from_name("leastconn"), None);
        assert!(Algorithm::SourceIpHash.is_hash() && Algorithm::FiveTupleHash.is_hash());
        assert!(!Algorithm::RoundRobin.is_hash());
    }

    #[test]
    fn generations_are_unique_and_rebuilt_keeps_backends() {
        let pool = Pool::with_table_size(Algorithm::SourceIpHash, equal(3), SMALL);
        pool.backends()[1].total.store(42, Ordering::Relaxed);
        let next = pool.rebuilt();
        assert!(next.generation() > pool.generation());
        assert_eq!(next.backends().len(), 3);
        for (a, b) in pool.backends().iter().zip(next.backends()) {
            assert!(Arc::ptr_eq(a, b));
        }
        assert_eq!(next.backends()[1].total.load(Ordering::Relaxed), 42);
        assert_eq!(next.algorithm(), Algorithm::SourceIpHash);
        assert_eq!(next.maglev_size(), SMALL);
        let other = Pool::new(Algorithm::RoundRobin, equal(3));
        assert_ne!(other.generation(), next.generation());
        assert_eq!(other.maglev_size(), maglev::DEFAULT_TABLE_SIZE);
        assert!(format!("{pool:?}").contains("SourceIpHash"));
    }

    /// Every algorithm skips down, drain, disabled, weight-0, full and tried backends.
    #[test]
    fn every_algorithm_skips_unavailable_and_tried() {
        for alg in Algorithm::ALL {
            let mut spec = vec![(1, false); 7];
            spec[6] = (0, false); // weight 0
            let backends = backends(&spec);
            backends[0].set_state(BackendState::Down);
            backends[1].set_state(BackendState::Drain);
            backends[2].set_state(BackendState::Disabled);
            // 3: full (max_connections 1, one active)
            let full = Arc::new(Backend::new(
                backends[3].addr,
                backends[3].name.clone(),
                1,
                1,
                false,
            ));
            full.active.store(1, Ordering::Relaxed);
            let mut backends = backends;
            backends[3] = full;
            let pool = Pool::with_table_size(alg, backends, SMALL);
            let mut sel = Selector::new(3);
            for i in 0..200 {
                let k = client(i);
                // 4 tried: only 5 is left.
                assert_eq!(sel.pick(&pool, &k, &[4]), Some(5), "{alg}");
                let got = sel.pick(&pool, &k, &[]).unwrap();
                assert!(got == 4 || got == 5, "{alg}: {got}");
                assert_eq!(sel.pick(&pool, &k, &[4, 5]), None, "{alg}");
            }
        }
    }

    #[test]
    fn every_algorithm_uses_backups_only_when_no_primary_is_available() {
        for alg in Algorithm::ALL {
            let spec = [(1, false), (1, true), (1, false), (1, true)];
            let pool = Pool::with_table_size(alg, backends(&spec), SMALL);
            let mut sel = Selector::new(0);
            for i in 0..100 {
                let got = sel.pick(&pool, &client(i), &[]).unwrap();
                assert!(got == 0 || got == 2, "{alg}: {got}");
                // Primaries tried: backups.
                let got = sel.pick(&pool, &client(i), &[0, 2]).unwrap();
                assert!(got == 1 || got == 3, "{alg}: {got}");
            }
            // Primaries down, before and after the control path rebuilds.
            pool.backends()[0].set_state(BackendState::Down);
            pool.backends()[2].set_weight(0);
            let rebuilt = pool.rebuilt();
            for p in [&pool, &rebuilt] {
                for i in 0..100 {
                    let got = sel.pick(p, &client(i), &[]).unwrap();
                    assert!(got == 1 || got == 3, "{alg}: {got}");
                }
            }
            // A primary back: it takes everything again.
            pool.backends()[2].set_weight(1);
            let rebuilt = pool.rebuilt();
            for p in [&pool, &rebuilt] {
                for i in 0..50 {
                    assert_eq!(sel.pick(p, &client(i), &[]), Some(2), "{alg}");
                }
            }
        }
    }

    #[test]
    fn every_algorithm_returns_none_when_nothing_is_available() {
        for alg in Algorithm::ALL {
            let empty = Pool::with_table_size(alg, Vec::new(), SMALL);
            let mut sel = Selector::new(1);
            assert_eq!(sel.pick(&empty, &any_key(), &[]), None, "{alg}");
            let pool = Pool::with_table_size(alg, backends(&[(1, false), (1, true)]), SMALL);
            pool.backends()[0].set_state(BackendState::Down);
            pool.backends()[1].set_state(BackendState::Disabled);
            for p in [&pool, &pool.rebuilt()] {
                for i in 0..20 {
                    assert_eq!(sel.pick(p, &client(i), &[]), None, "{alg}");
                }
            }
        }
    }

    /// source_ip_hash: same client IP -> same backend, whatever the port, the worker (selector)
    /// or the instance (pool built separately from the same config).
    #[test]
    fn source_ip_hash_is_sticky_across_selectors_and_pools() {
        let a = Pool::new(Algorithm::SourceIpHash, equal(5));
        let b = Pool::new(Algorithm::SourceIpHash, equal(5));
        let mut seen = [0usize; 5];
        for i in 0..500u32 {
            let ip = std::net::Ipv4Addr::from(0xc633_6400 + i);
            let k1 = FlowKey {
                client: SocketAddr::new(ip.into(), 1000),
                ..any_key()
            };
            let k2 = FlowKey {
                client: SocketAddr::new(ip.to_ipv6_mapped().into(), 2000),
                local: "[::ffff:192.0.2.1]:443".parse().unwrap(),
                protocol: 17,
            };
            let x = Selector::new(0).pick(&a, &k1, &[]).unwrap();
            let y = Selector::new(7).pick(&b, &k2, &[]).unwrap();
            assert_eq!(x, y);
            seen[x] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
    }

    #[test]
    fn five_tuple_hash_is_sticky_per_flow_and_spreads_ports() {
        let a = Pool::with_table_size(Algorithm::FiveTupleHash, equal(4), SMALL);
        let b = Pool::with_table_size(Algorithm::FiveTupleHash, equal(4), SMALL);
        let mut seen = [0usize; 4];
        for port in 1000..1400u16 {
            let k = key(&format!("198.51.100.1:{port}"));
            let x = Selector::new(0).pick(&a, &k, &[]).unwrap();
            assert_eq!(Selector::new(5).pick(&b, &k, &[]), Some(x));
            seen[x] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
    }

    /// The hash of a key whose backend goes down moves; every other key stays, both through
    /// per-pick probing (before the control path rebuilds) and in the rebuilt table. After a
    /// rebuild, all instances agree (the table is a function of config and health).
    #[test]
    fn hash_failover_moves_only_the_down_backends_keys() {
        let pool = Pool::with_table_size(Algorithm::SourceIpHash, equal(5), SMALL);
        let mut sel = Selector::new(0);
        let keys: Vec<FlowKey> = (0..2000).map(client).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| sel.pick(&pool, k, &[]).unwrap())
            .collect();
        pool.backends()[2].set_state(BackendState::Down);
        let rebuilt = pool.rebuilt();
        for p in [&pool, &rebuilt] {
            for (k, &b) in keys.iter().zip(&before) {
                let now = sel.pick(p, k, &[]).unwrap();
                assert_ne!(now, 2);
                if b != 2 {
                    assert_eq!(now, b);
                }
            }
        }
        // A separate instance that starts with backend 2 already down agrees.
        let other_backends = equal(5);
        other_backends[2].set_state(BackendState::Down);
        let other = Pool::with_table_size(Algorithm::SourceIpHash, other_backends, SMALL);
        for k in &keys {
            assert_eq!(
                sel.pick(&rebuilt, k, &[]),
                Selector::new(9).pick(&other, k, &[])
            );
        }
        // Back up: everything returns where it was.
        pool.backends()[2].set_state(BackendState::Up);
        let back = rebuilt.rebuilt();
        for (k, &b) in keys.iter().zip(&before) {
            assert_eq!(sel.pick(&back, k, &[]), Some(b));
        }
    }

    /// A weight dropping to 0 leaves like a down backend (only its keys move); a weight
    /// change to non-zero rebuilds the base table and shifts keys in proportion.
    #[test]
    fn hash_weight_zero_moves_only_its_keys() {
        let pool = Pool::with_table_size(Algorithm::FiveTupleHash, equal(4), SMALL);
        let keys: Vec<FlowKey> = (0..2000).map(client).collect();
        let mut sel = Selector::new(0);
        let before: Vec<usize> = keys
            .iter()
            .map(|k| sel.pick(&pool, k, &[]).unwrap())
            .collect();
        pool.backends()[1].set_weight(0);
        let rebuilt = pool.rebuilt();
        let tables = |p: &Pool| Arc::clone(&p.groups[0].tables.as_ref().unwrap()[0].base);
        assert!(Arc::ptr_eq(&tables(&pool), &tables(&rebuilt)));
        for (k, &b) in keys.iter().zip(&before) {
            let now = sel.pick(&rebuilt, k, &[]).unwrap();
            assert!(now == b || (b == 1 && now != 1));
        }
        pool.backends()[1].set_weight(3);
        let heavier = rebuilt.rebuilt();
        assert!(!Arc::ptr_eq(&tables(&pool), &tables(&heavier)));
        let on_1 = keys
            .iter()
            .filter(|k| sel.pick(&heavier, k, &[]) == Some(1))
            .count();
        assert!((900..1100).contains(&on_1), "{on_1}"); // 3/6 of 2000
    }

    /// A full or tried backend's keys spill deterministically (same alternative on every
    /// worker), and only those keys.
    #[test]
    fn hash_spill_is_deterministic() {
        let pool = Pool::with_table_size(Algorithm::SourceIpHash, equal(6), SMALL);
        let keys: Vec<FlowKey> = (0..1000).map(client).collect();
        let mut a = Selector::new(0);
        let mut b = Selector::new(1);
        for k in &keys {
            let first = a.pick(&pool, k, &[]).unwrap();
            let retry = a.pick(&pool, k, &[first as u16]).unwrap();
            assert_ne!(retry, first);
            assert_eq!(b.pick(&pool, k, &[first as u16]), Some(retry));
            let third = a.pick(&pool, k, &[first as u16, retry as u16]).unwrap();
            assert!(third != first && third != retry);
        }
    }

    /// SNI routes: each group picks only among its own backends, with its own algorithm;
    /// a group the pool does not have picks nothing; an empty group 0 says so.
    #[test]
    fn groups_pick_within_themselves() {
        let group_of = [0, 0, 1, 1, 1, 2];
        let algorithms = [
            Algorithm::RoundRobin,
            Algorithm::SourceIpHash,
            Algorithm::LeastConn,
        ];
        let pool = Pool::grouped(equal(6), &group_of, &algorithms, SMALL);
        assert_eq!(pool.algorithm(), Algorithm::RoundRobin);
        assert_eq!(pool.algorithm_of(1), Some(Algorithm::SourceIpHash));
        assert_eq!(pool.algorithm_of(3), None);
        assert!(!pool.group_is_empty(0) && pool.group_is_empty(3));
        let mut sel = Selector::new(0);
        for i in 0..300 {
            let k = client(i);
            assert!(sel.pick(&pool, &k, &[]).unwrap() < 2);
            let g1 = sel.pick_in(&pool, 1, &k, &[]).unwrap();
            assert!((2..5).contains(&g1));
            // The hash is sticky within its group, on another selector too.
            assert_eq!(Selector::new(5).pick_in(&pool, 1, &k, &[]), Some(g1));
            assert_eq!(sel.pick_in(&pool, 2, &k, &[]), Some(5));
            assert_eq!(sel.pick_in(&pool, 2, &k, &[5]), None);
            assert_eq!(sel.pick_in(&pool, 3, &k, &[]), None);
        }
        let rebuilt = pool.rebuilt();
        pool.backends()[2].set_state(BackendState::Down);
        let rebuilt2 = rebuilt.rebuilt();
        for i in 0..100 {
            let got = sel.pick_in(&rebuilt2, 1, &client(i), &[]).unwrap();
            assert!(got == 3 || got == 4, "{got}");
        }
        let routes_only = Pool::grouped(equal(2), &[1, 1], &algorithms[..2], SMALL);
        assert!(routes_only.group_is_empty(0));
        assert_eq!(Selector::new(0).pick(&routes_only, &any_key(), &[]), None);
    }

    /// Slow start: a backend that just came up takes about its ramp's share (1% at the floor)
    /// under every algorithm that honours it, and its full share once the ramp is over (or
    /// under round robin and the hashes, which ignore it).
    #[test]
    fn slow_start_ramp_is_honoured_by_the_weighted_and_load_algorithms() {
        for alg in Algorithm::ALL {
            let backends = equal(2);
            let now = crate::clock::monotonic_us();
            for b in &backends {
                b.latency.observe(100, now);
            }
            backends[1].came_up();
            let pool = Pool::with_table_size(alg, backends, SMALL)
                .with_slow_start(Duration::from_secs(1000));
            let mut sel = Selector::new(0);
            let mut on_1 = 0;
            for i in 0..2000 {
                let got = sel.pick(&pool, &client(i), &[]).unwrap();
                // Connections stay open, so the load-aware algorithms see the counts grow.
                pool.backends()[got].active.fetch_add(1, Ordering::Relaxed);
                on_1 += usize::from(got == 1);
            }
            if alg.is_hash() || alg == Algorithm::RoundRobin {
                assert!((800..=1200).contains(&on_1), "{alg}: {on_1}");
            } else {
                assert!((5..=60).contains(&on_1), "{alg}: {on_1}");
            }
            let no_ramp = Pool::with_table_size(alg, equal(2), SMALL)
                .with_slow_start(Duration::from_secs(1000));
            assert_eq!(no_ramp.slow_start_us(), 1_000_000_000);
            let mut sel = Selector::new(0);
            let ones = (0..100)
                .filter(|&i| sel.pick(&no_ramp, &client(i), &[]) == Some(1))
                .count();
            assert!(ones > 20, "{alg}: {ones}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Pool-level version of the Maglev property: for random backends and weights, marking
        /// one backend down (or weight 0) and rebuilding changes only the lookup slots that
        /// pointed to it, and those land on available backends.
        #[test]
        fn rebuilt_moves_only_the_removed_backends_slots(
            weights in prop::collection::vec(1u32..=8, 2..40),
            down in prop::collection::vec(prop::bool::weighted(0.15), 40),
            gone in any::<prop::sample::Index>(),
            by_weight in any::<bool>(),
        ) {
            let spec: Vec<(u32, bool)> = weights.iter().map(|&w| (w, false)).collect();
            let backends = backends(&spec);
            for (b, &d) in backends.iter().zip(&down) {
                if d {
                    b.set_state(BackendState::Down);
                }
            }
            let pool = Pool::with_table_size(Algorithm::SourceIpHash, backends, 1021);
            let up: Vec<usize> = (0..spec.len())
                .filter(|&i| pool.backends()[i].state() == BackendState::Up)
                .collect();
            prop_assume!(up.len() >= 2);
            let gone = up[gone.index(up.len())];
            if by_weight {
                pool.backends()[gone].set_weight(0);
            } else {
                pool.backends()[gone].set_state(BackendState::Drain);
            }
            let next = pool.rebuilt();
            let before = &pool.groups[0].tables.as_ref().unwrap()[0].lookup;
            let after = &next.groups[0].tables.as_ref().unwrap()[0].lookup;
            for (s, (&x, &y)) in before.iter().zip(after.iter()).enumerate() {
                if x as usize == gone {
                    prop_assert!(y != EMPTY && pool.backends()[y as usize].is_available());
                } else {
                    prop_assert_eq!(x, y, "slot {} moved", s);
                }
            }
        }
    }
}
