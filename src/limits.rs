//! Per-client flow control shared by all workers: concurrent connections per client IP
//! ([`ClientTable`]) and new connections per second per client IP ([`RateTable`]).
//!
//! Hot path (once per accepted connection, never per read). Lock-free: every entry is a single
//! `AtomicU64` updated with compare-and-swap, so workers never block each other, and the tables
//! are pre-sized from the config at startup and never grow.
//!
//! Invariants of [`ClientTable`]:
//! - an entry packs a 40-bit client fingerprint and a 24-bit count; 0 means empty;
//! - a fingerprint occurs at most once in the table, because new fingerprints are inserted only
//!   while holding their bucket's insert flag (increments and decrements never take it);
//! - an entry whose count drops to 0 becomes empty in the same CAS.
//!
//! IPv4 fingerprints are the address itself (exact). IPv6 fingerprints are a 39-bit fixed hash;
//! two IPv6 clients share a count only on a 1-in-2^39 collision.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::balancer::hash::hash_bytes;

/// Slots per bucket: 7 entries plus one insert flag fill one 64-byte cache line.
const SLOTS: usize = 7;
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Upper bound on CAS retries; contention on one client's entry from more than a few workers
/// at once is short-lived, and a bound keeps a pathological case from spinning forever.
const MAX_CAS_RETRIES: usize = 1024;

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

/// Concurrent connections per client IP, exact across workers.
#[derive(Debug)]
pub struct ClientTable {
    buckets: Box<[Bucket]>,
    mask: usize,
}

/// Proof that one connection of a client is counted; pass it back to [`ClientTable::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSlot {
    index: u32,
}

fn fingerprint(ip: IpAddr) -> (u64, u64) {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4) as u64;
            ((1 << 39) | bits, hash_bytes(&v4.octets()))
        }
        IpAddr::V6(v6) => {
            let h = hash_bytes(&v6.octets());
            ((h >> 25) % ((1 << 39) - 1) + 1, h)
        }
    }
}

impl ClientTable {
    /// A table that tracks up to about `capacity` distinct concurrent clients.
    pub fn new(capacity: usize) -> ClientTable {
        // Load factor at most 0.5 entries per bucket of 7: a full bucket is vanishingly rare.
        let buckets = (capacity.clamp(64, 1 << 22) / 2).next_power_of_two();
        let buckets: Box<[Bucket]> = (0..buckets).map(|_| Bucket::default()).collect();
        let mask = buckets.len() - 1;
        ClientTable { buckets, mask }
    }

    /// Count one more connection of `ip`, unless it already has `limit`.
    pub fn acquire(&self, ip: IpAddr, limit: u32) -> Result<ClientSlot, LimitError> {
        let (fp, h) = fingerprint(ip);
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
        let (fp, h) = fingerprint(ip);
        let bucket = &self.buckets[(h as usize) & self.mask];
        bucket
            .slots
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .find(|v| *v != 0 && v >> COUNT_BITS == fp)
            .map_or(0, |v| (v & COUNT_MASK) as u32)
    }
}

/// New connections per second per client IP: a token bucket per client whose burst equals the
/// rate. Direct-mapped: a client whose slot is taken by another evicts it and starts with a
/// full bucket, which can only make the limit more lenient, never refuse a client wrongly.
#[derive(Debug)]
pub struct RateTable {
    keys: Box<[AtomicU64]>,
    /// Packs milli-tokens (high 32 bits) and the last refill time in ms (low 32 bits).
    states: Box<[AtomicU64]>,
    mask: usize,
    /// Tokens per second = milli-tokens per millisecond.
    rate: u64,
}

impl RateTable {
    pub fn new(capacity: usize, rate_per_s: u32) -> RateTable {
        let n = capacity.clamp(64, 1 << 22).next_power_of_two();
        RateTable {
            keys: (0..n).map(|_| AtomicU64::new(0)).collect(),
            states: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: n - 1,
            rate: (rate_per_s as u64).min(4_000_000),
        }
    }

    /// Take one token for `ip` at time `now_ms` (any monotonic millisecond clock).
    pub fn try_acquire(&self, ip: IpAddr, now_ms: u64) -> bool {
        let (fp, h) = fingerprint(ip);
        let i = (h as usize) & self.mask;
        let burst = self.rate * 1000;
        let now = now_ms as u32;
        if self.keys[i].load(Ordering::Acquire) != fp {
            // New client (or eviction): full bucket minus this connection.
            self.keys[i].store(fp, Ordering::Release);
            self.states[i].store(((burst - 1000) << 32) | now as u64, Ordering::Release);
            return true;
        }
        let state = &self.states[i];
        let mut v = state.load(Ordering::Acquire);
        for _ in 0..MAX_CAS_RETRIES {
            let tokens = v >> 32;
            let last = v as u32;
            let elapsed = now.wrapping_sub(last) as u64;
            // A clock older than `last` (another worker stored a later time) wraps to a huge
            // value; treat anything over a day as zero elapsed.
            let elapsed = if elapsed > 86_400_000 { 0 } else { elapsed };
            let refilled = (tokens + elapsed * self.rate).min(burst);
            let stamp = if elapsed == 0 { last } else { now };
            if refilled < 1000 {
                return false;
            }
            let new = ((refilled - 1000) << 32) | stamp as u64;
            match state.compare_exchange_weak(v, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(actual) => v = actual,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    fn v4(d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, d))
    }

    #[test]
    fn cap_is_exact_and_released() {
        let t = ClientTable::new(1000);
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
        let t = ClientTable::new(64);
        for round in 0..1000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(round));
            let s = t.acquire(ip, 1).unwrap();
            t.release(s);
            assert_eq!(t.count(ip), 0);
        }
    }

    #[test]
    fn ipv6_and_mapped_v4() {
        let t = ClientTable::new(64);
        let mapped = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 9).to_ipv6_mapped());
        t.acquire(v4(9), 1).unwrap();
        assert_eq!(t.acquire(mapped, 1), Err(LimitError::Limit));
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        t.acquire(v6, 1).unwrap();
        assert_eq!(t.acquire(v6, 1), Err(LimitError::Limit));
    }

    #[test]
    fn concurrent_acquire_never_exceeds_cap() {
        let t = Arc::new(ClientTable::new(1024));
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
        let r = RateTable::new(64, 5);
        let ip = v4(4);
        let passed = (0..20).filter(|_| r.try_acquire(ip, 1000)).count();
        assert_eq!(passed, 5);
        assert!(r.try_acquire(v4(5), 1000));
        assert!(!r.try_acquire(ip, 1100));
        assert!(r.try_acquire(ip, 1200));
        let passed = (0..20).filter(|_| r.try_acquire(ip, 3000)).count();
        assert_eq!(passed, 5);
    }
}
