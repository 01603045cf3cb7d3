//! Per-client flow control shared by all workers: concurrent connections per client
//! ([`ClientTable`]), new connections per second per client ([`RateTable`]) and new
//! connections per second for a whole listener ([`ListenerRate`]).
//!
//! Hot path (once per accepted connection, never per read). Lock-free: every entry is a single
//! `AtomicU64` updated with compare-and-swap, so workers never block each other, and the tables
//! are pre-sized from the config at startup and never grow.
//!
//! A "client" is its address cut to `client_ipv4_prefix` / `client_ipv6_prefix` bits
//! ([`ClientKeys`]): one IPv6 host holds a whole /64, so counting /128s would let it escape
//! every cap. Tables are indexed with a keyed hash whose key is random per table (drawn from
//! the OS when the table is built): the tables need no agreement between hosts or restarts,
//! and a secret key means nobody can compute offline a set of addresses that lands in a
//! victim's bucket. (Selection hashing, `crate::hash`, stays fixed-key: it must be
//! reproducible.)
//!
//! Invariants of [`ClientTable`]:
//! - an entry packs a 40-bit client fingerprint and a 24-bit count; 0 means empty;
//! - a fingerprint occurs at most once in the table, because new fingerprints are inserted only
//!   while holding their bucket's insert flag (increments and decrements never take it);
//! - an entry whose count drops to 0 becomes empty in the same CAS.
//!
//! IPv4 fingerprints are the (prefix-cut) address itself (exact). IPv6 fingerprints are 39
//! bits of the keyed hash; two IPv6 clients share a count only on a 1-in-2^39 collision.
//!
//! Rates are GCRA (the "virtual scheduling" form of a token bucket): one `u64` per entry
//! holds the theoretical arrival time in nanoseconds of the clock the caller passes in. It
//! never wraps (584 years), so any real elapsed time refills, however long.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots per bucket: 7 entries plus one insert flag fill one 64-byte cache line.
const SLOTS: usize = 7;
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Upper bound on CAS retries; contention on one client's entry from more than a few workers
/// at once is short-lived, and a bound keeps a pathological case from spinning forever.
const MAX_CAS_RETRIES: usize = 1024;
/// The window of every rate: burst = rate means a full bucket is one second of tokens.
const RATE_WINDOW_NS: u64 = 1_000_000_000;
/// Rates above this many per second are treated as this (1 ns between tokens).
const MAX_RATE: u64 = RATE_WINDOW_NS;

#[repr(align(64))]
#[derive(Debug, Default)]
struct Bucket {
    insert_flag: AtomicU64,
    slots: [AtomicU64; SLOTS],
}

/// Why a client was refused a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitError {
    /// The client is at its cap.
    Limit,
    /// No room to track another client (table sized from max_connections; should not happen).
    TableFull,
}

/// How a table turns a client address into its key: the prefix lengths that make one client,
/// and the table's secret hash key.
#[derive(Debug, Clone)]
pub struct ClientKeys {
    v4_prefix: u8,
    v6_prefix: u8,
    /// SipHash-1-3 keyed from the OS's random source (getrandom) when built.
    secret: RandomState,
}

impl ClientKeys {
    /// Keys with a fresh random secret; prefixes are clamped to 32 and 128.
    pub fn new(v4_prefix: u8, v6_prefix: u8) -> ClientKeys {
        ClientKeys {
            v4_prefix: v4_prefix.min(32),
            v6_prefix: v6_prefix.min(128),
            secret: RandomState::new(),
        }
    }

    /// Whether two addresses count as the same client.
    pub fn same_client(&self, a: IpAddr, b: IpAddr) -> bool {
        self.fingerprint(a).0 == self.fingerprint(b).0
    }

    /// (fingerprint, bucket hash) of `ip`: fingerprints are non-zero and below 2^40.
    fn fingerprint(&self, ip: IpAddr) -> (u64, u64) {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.v4_prefix))
                    .unwrap_or(0);
                let bits = u32::from(v4) & mask;
                let h = self.secret.hash_one((4u8, bits));
                ((1 << 39) | u64::from(bits), h)
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.v6_prefix))
                    .unwrap_or(0);
                let bits = u128::from(v6) & mask;
                let h = self.secret.hash_one((6u8, bits));
                ((h >> 25) % ((1 << 39) - 1) + 1, h)
            }
        }
    }
}

/// Concurrent connections per client IP, exact across workers.
#[derive(Debug)]
pub struct ClientTable {
    buckets: Box<[Bucket]>,
    mask: usize,
    keys: ClientKeys,
}

/// Proof that one connection of a client is counted; pass it back to [`ClientTable::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSlot {
    index: u32,
}

impl ClientTable {
    /// A table that tracks up to about `capacity` distinct concurrent clients, as `keys` cut
    /// them.
    pub fn new(capacity: usize, keys: ClientKeys) -> ClientTable {
        // Load factor at most 0.5 entries per bucket of 7: a full bucket is vanishingly rare.
        let buckets = (capacity.clamp(64, 1 << 22) / 2).next_power_of_two();
        let buckets: Box<[Bucket]> = (0..buckets).map(|_| Bucket::default()).collect();
        let mask = buckets.len() - 1;
        ClientTable {
            buckets,
            mask,
            keys,
        }
    }

    /// Count one more connection of `ip`, unless it already has `limit`.
    pub fn acquire(&self, ip: IpAddr, limit: u32) -> Result<ClientSlot, LimitError> {
        let (fp, h) = self.keys.fingerprint(ip);
        let bucket_index = (h as usize) & self.mask;
        let bucket = &self.buckets[bucket_index];
        let limit = (limit as u64).min(COUNT_MASK);
        for _ in 0..MAX_CAS_RETRIES {
            match self.try_increment(bucket, fp, limit) {
                Some(Ok(slot)) => return Ok(self.slot(bucket_index, slot)),
                Some(Err(e)) => return Err(e),
                None => {}
            }
            // Not present: insert under the bucket's insert flag so that the fingerprint
            // cannot end up in two slots.
            if bucket
                .insert_flag
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                std::hint::spin_loop();
                continue;
            }
            let result = match self.try_increment(bucket, fp, limit) {
                Some(r) => r,
                None => Self::insert(bucket, fp, limit),
            };
            bucket.insert_flag.store(0, Ordering::Release);
            return result.map(|slot| self.slot(bucket_index, slot));
        }
        Err(LimitError::TableFull)
    }

    fn slot(&self, bucket: usize, slot: usize) -> ClientSlot {
        ClientSlot {
            index: (bucket * SLOTS + slot) as u32,
        }
    }

    /// `None` when `fp` is not in the bucket; otherwise the outcome of incrementing it.
    fn try_increment(
        &self,
        bucket: &Bucket,
        fp: u64,
        limit: u64,
    ) -> Option<Result<usize, LimitError>> {
        'rescan: for _ in 0..MAX_CAS_RETRIES {
            for (i, slot) in bucket.slots.iter().enumerate() {
                let v = slot.load(Ordering::Acquire);
                if v == 0 || v >> COUNT_BITS != fp {
                    continue;
                }
                if v & COUNT_MASK >= limit {
                    return Some(Err(LimitError::Limit));
                }
                if slot
                    .compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return Some(Ok(i));
                }
                // Raced with another increment or with the entry emptying: look again.
                continue 'rescan;
            }
            return None;
        }
        Some(Err(LimitError::TableFull))
    }

    fn insert(bucket: &Bucket, fp: u64, limit: u64) -> Result<usize, LimitError> {
        if limit == 0 {
            return Err(LimitError::Limit);
        }
        for (i, slot) in bucket.slots.iter().enumerate() {
            if slot
                .compare_exchange(
                    0,
                    (fp << COUNT_BITS) | 1,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                return Ok(i);
            }
        }
        Err(LimitError::TableFull)
    }

    /// Forget one connection counted by `acquire`.
    pub fn release(&self, slot: ClientSlot) {
        let index = slot.index as usize;
        let entry = &self.buckets[index / SLOTS].slots[index % SLOTS];
        let mut v = entry.load(Ordering::Acquire);
        loop {
            debug_assert!(v & COUNT_MASK > 0, "release of an empty client slot");
            if v & COUNT_MASK == 0 {
                return;
            }
            let new = if v & COUNT_MASK == 1 { 0 } else { v - 1 };
            match entry.compare_exchange_weak(v, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => v = actual,
            }
        }
    }

    /// Current count of `ip` (for tests and the admin API).
    pub fn count(&self, ip: IpAddr) -> u32 {
        let (fp, h) = self.keys.fingerprint(ip);
        let bucket = &self.buckets[(h as usize) & self.mask];
        bucket
            .slots
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .find(|v| *v != 0 && v >> COUNT_BITS == fp)
            .map_or(0, |v| (v & COUNT_MASK) as u32)
    }
}

/// One GCRA step on `tat` (theoretical arrival time, ns) at `now_ns`: take one token when the
/// bucket has one. Tokens come every `interval_ns`; the bucket holds one window's worth. A
/// clock a little behind the stored time (another worker read it a moment earlier) only
/// finds fewer tokens: the arithmetic has no wrap to mistake for a long pause.
fn gcra_take(tat: &AtomicU64, now_ns: u64, interval_ns: u64) -> bool {
    let mut v = tat.load(Ordering::Acquire);
    for _ in 0..MAX_CAS_RETRIES {
        let next = v.max(now_ns).saturating_add(interval_ns);
        if next > now_ns.saturating_add(RATE_WINDOW_NS) {
            return false;
        }
        match tat.compare_exchange_weak(v, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(actual) => v = actual,
        }
    }
    false
}

/// Nanoseconds between tokens for `rate_per_s` (clamped to 1..=[`MAX_RATE`]).
fn interval_ns(rate_per_s: u32) -> u64 {
    RATE_WINDOW_NS / u64::from(rate_per_s).clamp(1, MAX_RATE)
}

fn ms_to_ns(now_ms: u64) -> u64 {
    now_ms.saturating_mul(1_000_000)
}

/// New connections per second per client: a token bucket per client whose burst equals the
/// rate. Direct-mapped: a client whose slot is taken by another evicts it and starts with a
/// full bucket, which can only make the limit more lenient, never refuse a client wrongly.
#[derive(Debug)]
pub struct RateTable {
    keys: Box<[AtomicU64]>,
    /// GCRA theoretical arrival time per slot, ns of the caller's clock.
    tats: Box<[AtomicU64]>,
    mask: usize,
    interval_ns: u64,
    client_keys: ClientKeys,
}

impl RateTable {
    pub fn new(capacity: usize, rate_per_s: u32, client_keys: ClientKeys) -> RateTable {
        let n = capacity.clamp(64, 1 << 22).next_power_of_two();
        RateTable {
            keys: (0..n).map(|_| AtomicU64::new(0)).collect(),
            tats: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: n - 1,
            interval_ns: interval_ns(rate_per_s),
            client_keys,
        }
    }

    /// Take one token for `ip` at time `now_ms` (any monotonic millisecond clock).
    pub fn try_acquire(&self, ip: IpAddr, now_ms: u64) -> bool {
        let (fp, h) = self.client_keys.fingerprint(ip);
        let i = (h as usize) & self.mask;
        let now = ms_to_ns(now_ms);
        if self.keys[i].load(Ordering::Acquire) != fp {
            // New client (or eviction): full bucket minus this connection.
            self.keys[i].store(fp, Ordering::Release);
            self.tats[i].store(now + self.interval_ns, Ordering::Release);
            return true;
        }
        gcra_take(&self.tats[i], now, self.interval_ns)
    }
}

/// New connections (UDP: sessions) per second for a whole listener, all clients and workers
/// together (`conn_rate_limit`): one token bucket, burst = rate.
#[derive(Debug)]
pub struct ListenerRate {
    tat: AtomicU64,
    interval_ns: u64,
    rate: u32,
}

impl ListenerRate {
    pub fn new(rate_per_s: u32) -> ListenerRate {
        ListenerRate {
            tat: AtomicU64::new(0),
            interval_ns: interval_ns(rate_per_s),
            rate: rate_per_s,
        }
    }

    /// The configured rate (a reload keeps the bucket when it is unchanged).
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Take one token at `now_ms`.
    pub fn try_acquire(&self, now_ms: u64) -> bool {
        gcra_take(&self.tat, ms_to_ns(now_ms), self.interval_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    fn exact() -> ClientKeys {
        ClientKeys::new(32, 128)
    }

    fn v4(d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, d))
    }

    #[test]
    fn cap_is_exact_and_released() {
        let t = ClientTable::new(1000, exact());
        let a = t.acquire(v4(2), 2).unwrap();
        let b = t.acquire(v4(2), 2).unwrap();
        assert_eq!(t.acquire(v4(2), 2), Err(LimitError::Limit));
        assert!(t.acquire(v4(3), 2).is_ok());
        assert_eq!(t.count(v4(2)), 2);
        t.release(a);
        assert_eq!(t.count(v4(2)), 1);
        assert!(t.acquire(v4(2), 2).is_ok());
        t.release(b);
    }

    #[test]
    fn entry_is_freed_at_zero() {
        let t = ClientTable::new(64, exact());
        for round in 0..1000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(round));
            let s = t.acquire(ip, 1).unwrap();
            t.release(s);
            assert_eq!(t.count(ip), 0);
        }
    }

    #[test]
    fn ipv6_and_mapped_v4() {
        let t = ClientTable::new(64, exact());
        let mapped = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 9).to_ipv6_mapped());
        t.acquire(v4(9), 1).unwrap();
        assert_eq!(t.acquire(mapped, 1), Err(LimitError::Limit));
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        t.acquire(v6, 1).unwrap();
        assert_eq!(t.acquire(v6, 1), Err(LimitError::Limit));
    }

    #[test]
    fn concurrent_acquire_never_exceeds_cap() {
        let t = Arc::new(ClientTable::new(1024, exact()));
        let limit = 10;
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..2000 {
                        let ip = v4((i % 5) as u8 + 1);
                        if let Ok(s) = t.acquire(ip, limit) {
                            assert!(t.count(ip) <= limit);
                            held.push(s);
                        }
                        if held.len() > 3 {
                            t.release(held.remove(0));
                        }
                    }
                    for s in held {
                        t.release(s);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        for d in 1..=5 {
            assert_eq!(t.count(v4(d)), 0);
        }
    }

    #[test]
    fn token_bucket_burst_then_refill() {
        let r = RateTable::new(64, 5, exact());
        let ip = v4(4);
        let passed = (0..20).filter(|_| r.try_acquire(ip, 1000)).count();
        assert_eq!(passed, 5);
        assert!(r.try_acquire(v4(5), 1000));
        assert!(!r.try_acquire(ip, 1100));
        assert!(r.try_acquire(ip, 1200));
        let passed = (0..20).filter(|_| r.try_acquire(ip, 3000)).count();
        assert_eq!(passed, 5);
    }

    /// Regression (issue 9.6): an elapsed time over a day counted as zero, so a client whose
    /// bucket emptied a day ago stayed refused until the 32-bit clock wrapped (~49 days).
    #[test]
    fn token_bucket_refills_after_any_pause() {
        let day_ms = 86_400_000;
        for start in [0, 1_000, day_ms / 2, 49 * day_ms] {
            for pause in [
                day_ms + 1,
                2 * day_ms,
                30 * day_ms,
                50 * day_ms,
                400 * day_ms,
            ] {
                let r = RateTable::new(64, 2, exact());
                let ip = v4(7);
                let passed = (0..5).filter(|_| r.try_acquire(ip, start)).count();
                assert_eq!(passed, 2, "burst at {start}");
                assert!(!r.try_acquire(ip, start + 100), "empty at {start}");
                assert!(r.try_acquire(ip, start + pause), "refill after {pause} ms");
                assert!(r.try_acquire(ip, start + pause), "a whole burst is back");
                assert!(!r.try_acquire(ip, start + pause), "but only the burst");
            }
        }
    }

    /// A worker whose clock reads a little behind the stored time gets no extra tokens.
    #[test]
    fn token_bucket_clock_behind_grants_nothing_extra() {
        let r = RateTable::new(64, 4, exact());
        let ip = v4(8);
        let passed = (0..10).filter(|_| r.try_acquire(ip, 5_000)).count();
        assert_eq!(passed, 4);
        assert!(!r.try_acquire(ip, 4_990));
        assert!(!r.try_acquire(ip, 5_000));
        assert!(r.try_acquire(ip, 5_250));
    }

    #[test]
    fn listener_rate_is_a_token_bucket_for_everyone() {
        let r = ListenerRate::new(3);
        let passed = (0..10).filter(|_| r.try_acquire(10_000)).count();
        assert_eq!(passed, 3);
        assert!(!r.try_acquire(10_100));
        assert!(r.try_acquire(10_334));
        assert!(r.try_acquire(10_000 + 86_400_000 * 60));
    }

    /// Clients are counted by prefix: a /64 is one IPv6 client, a /24 one IPv4 client when
    /// asked, and v4-mapped addresses count as their IPv4 address.
    #[test]
    fn clients_are_counted_by_prefix() {
        let keys = ClientKeys::new(24, 64);
        let t = ClientTable::new(64, keys.clone());
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        t.acquire(a, 1).unwrap();
        assert_eq!(t.acquire(b, 1), Err(LimitError::Limit));
        assert!(t.acquire(other, 1).is_ok());
        t.acquire(v4(1), 1).unwrap();
        assert_eq!(t.acquire(v4(200), 1), Err(LimitError::Limit));
        assert!(t
            .acquire(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1)), 1)
            .is_ok());
        assert!(keys.same_client(
            v4(1),
            IpAddr::V6(Ipv4Addr::new(127, 0, 0, 9).to_ipv6_mapped())
        ));
        let r = RateTable::new(64, 1, keys);
        assert!(r.try_acquire(a, 0));
        assert!(!r.try_acquire(b, 0), "same /64, same bucket");
        assert!(r.try_acquire(other, 0));
    }

    /// The bucket hash is keyed per table: two tables place the same clients differently
    /// (with 64 clients, the chance that two random keys agree on every bucket is nil).
    #[test]
    fn bucket_hash_is_keyed_per_table() {
        let (a, b) = (ClientKeys::new(32, 64), ClientKeys::new(32, 64));
        let differ = (0..64u8).any(|d| a.fingerprint(v4(d)).1 != b.fingerprint(v4(d)).1);
        assert!(differ);
        assert_eq!(
            a.fingerprint(v4(3)).0,
            b.fingerprint(v4(3)).0,
            "fingerprints are exact"
        );
    }
}
