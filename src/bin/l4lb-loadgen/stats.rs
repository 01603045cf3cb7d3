//! Per-thread measurements and the live counters the progress line reads.
//!
//! Hot path: each worker owns one [`Stats`] (plain integers and its own HDR histogram; nothing
//! shared) and publishes running totals into its own [`Live`] with relaxed stores a few times
//! per second. The driver merges the `Stats` once, after the workers have stopped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::net::ErrKind;

/// Highest latency the histogram resolves: 60 s in microseconds; larger values saturate.
const HIST_MAX_US: u64 = 60_000_000;
/// 3 significant digits: 0.1% resolution, ~200 KiB per histogram.
const HIST_SIGFIG: u8 = 3;
/// Distinct backend names tracked by `tcp-crr --http`; more are lumped under "(other)" so a
/// misbehaving target cannot grow the table without bound.
const MAX_BACKENDS: usize = 256;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, HIST_SIGFIG).expect("constant histogram bounds")
}

/// One worker's results.
#[derive(Debug)]
pub struct Stats {
    pub transactions: u64,
    pub bytes: u64,
    pub errors: [u64; ErrKind::COUNT],
    pub hist: Histogram<u64>,
    /// `tcp-crr --http`: responses per `backend <ADDR>` body.
    pub backends: Vec<(Vec<u8>, u64)>,
    /// `hold`: connections opened, verified, and when the last one opened (since start).
    pub opened: u64,
    pub verified: u64,
    pub open_time: Duration,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            transactions: 0,
            bytes: 0,
            errors: [0; ErrKind::COUNT],
            hist: new_histogram(),
            backends: Vec::new(),
            opened: 0,
            verified: 0,
            open_time: Duration::ZERO,
        }
    }

    pub fn error(&mut self, k: ErrKind) {
        self.errors[k.index()] += 1;
    }

    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Records one completed transaction that started at `t0`.
    pub fn transaction(&mut self, t0: Instant, now: Instant, bytes: u64) {
        self.transactions += 1;
        self.bytes += bytes;
        self.latency(t0, now);
    }

    pub fn latency(&mut self, t0: Instant, now: Instant) {
        let us = now.saturating_duration_since(t0).as_micros();
        self.hist
            .saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
    }

    /// Counts one response from the backend named `name` (linear scan: a handful of names).
    pub fn backend(&mut self, name: &[u8]) {
        if let Some(e) = self.backends.iter_mut().find(|(n, _)| n == name) {
            e.1 += 1;
        } else if self.backends.len() < MAX_BACKENDS {
            self.backends.push((name.to_vec(), 1));
        } else if let Some(e) = self.backends.iter_mut().find(|(n, _)| n == b"(other)") {
            e.1 += 1;
        } else if let Some(last) = self.backends.last_mut() {
            // Table full and no overflow bucket yet: turn the last slot into it.
            *last = (b"(other)".to_vec(), last.1 + 1);
        }
    }

    pub fn publish(&self, live: &Live) {
        live.transactions
            .store(self.transactions, Ordering::Relaxed);
        live.bytes.store(self.bytes, Ordering::Relaxed);
        live.errors.store(self.error_total(), Ordering::Relaxed);
        live.opened.store(self.opened, Ordering::Relaxed);
    }

    pub fn merge(&mut self, o: Stats) {
        self.transactions += o.transactions;
        self.bytes += o.bytes;
        for (a, b) in self.errors.iter_mut().zip(o.errors) {
            *a += b;
        }
        // Same bounds on both sides: addition cannot fail; if it ever did, the merged
        // percentiles would only miss that thread's samples.
        let _ = self.hist.add(&o.hist);
        for (name, n) in o.backends {
            if let Some(e) = self.backends.iter_mut().find(|(x, _)| *x == name) {
                e.1 += n;
            } else {
                self.backends.push((name, n));
            }
        }
        self.opened += o.opened;
        self.verified += o.verified;
        self.open_time = self.open_time.max(o.open_time);
    }
}

/// One worker's running totals, written by that worker only, read by the progress line.
#[derive(Debug, Default)]
pub struct Live {
    pub transactions: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub opened: AtomicU64,
    /// `hold`: this worker has finished its opening phase.
    pub open_done: AtomicBool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sums_and_keeps_percentiles() {
        let t0 = Instant::now();
        let mut a = Stats::new();
        let mut b = Stats::new();
        a.transaction(t0, t0 + Duration::from_micros(10), 2);
        b.transaction(t0, t0 + Duration::from_micros(1000), 2);
        b.error(ErrKind::Reset);
        a.backend(b"x");
        b.backend(b"x");
        b.backend(b"y");
        a.merge(b);
        assert_eq!(a.transactions, 2);
        assert_eq!(a.bytes, 4);
        assert_eq!(a.error_total(), 1);
        assert!(a.hist.max() >= 1000);
        assert_eq!(a.backends, vec![(b"x".to_vec(), 2), (b"y".to_vec(), 1)]);
    }
}
