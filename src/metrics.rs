//! Counters of the data path, kept per worker so that workers never write the same cache
//! line; the admin API sums them at scrape time.
//!
//! Hot path (one increment per accepted or refused connection). Each counter has a single
//! writer, its worker; readers only load.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a new connection was refused; the `reason` label of
/// `l4lb_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    ClientLimit = 0,
    ClientRate = 1,
    ListenerLimit = 2,
    GlobalLimit = 3,
    NoBackend = 4,
    Acl = 5,
    /// SNI routing: the hello matched no route and the listener has no backends of its own.
    NoRoute = 6,
    /// SNI routing: no valid ClientHello (garbage, malformed, larger than
    /// `tls_sni::MAX_HELLO`, or the client closed before it was whole).
    TlsHello = 7,
    /// The listener's `conn_rate_limit` (all clients together).
    ListenerRate = 8,
    /// No local port, address or descriptor for the backend side: this host's shortage,
    /// never blamed on a backend.
    LocalResources = 9,
}

impl RejectReason {
    pub const ALL: [RejectReason; 10] = [
        RejectReason::ClientLimit,
        RejectReason::ClientRate,
        RejectReason::ListenerLimit,
        RejectReason::GlobalLimit,
        RejectReason::NoBackend,
        RejectReason::Acl,
        RejectReason::NoRoute,
        RejectReason::TlsHello,
        RejectReason::ListenerRate,
        RejectReason::LocalResources,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::ClientLimit => "client_limit",
            RejectReason::ClientRate => "client_rate",
            RejectReason::ListenerLimit => "listener_limit",
            RejectReason::GlobalLimit => "global_limit",
            RejectReason::NoBackend => "no_backend",
            RejectReason::Acl => "acl",
            RejectReason::NoRoute => "no_route",
            RejectReason::TlsHello => "tls_hello",
            RejectReason::ListenerRate => "listener_rate",
            RejectReason::LocalResources => "local_resources",
        }
    }
}

/// Why a UDP datagram was dropped by a worker. (A datagram refused because it would open a
/// session that a cap, rate, ACL or the lack of a backend forbids counts in `rejected`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpDrop {
    /// The kernel reported it truncated (`MSG_TRUNC`): never forwarded in part.
    Truncated = 0,
    /// The send to the backend or the reply to the client failed (socket buffer full,
    /// unreachable peer, ...).
    SendFailed = 1,
}

impl UdpDrop {
    pub const ALL: [UdpDrop; 2] = [UdpDrop::Truncated, UdpDrop::SendFailed];

    pub fn as_str(self) -> &'static str {
        match self {
            UdpDrop::Truncated => "truncated",
            UdpDrop::SendFailed => "send_failed",
        }
    }
}

/// I/O errors that closed a connection, process-wide (`l4lb_io_errors_total{class}`): resets
/// and broken pipes (the peer went away), and everything else, which is also logged
/// (rate-limited) by the worker that saw it. Written once per closed connection at most.
#[derive(Debug, Default)]
pub struct IoErrorCounters {
    pub resets: AtomicU64,
    pub other: AtomicU64,
}

/// One worker's counters for one listener.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ListenerCounters {
    pub accepted: AtomicU64,
    pub rejected: [AtomicU64; RejectReason::ALL.len()],
    /// Connections closed because a backend connect failed on every try.
    pub connect_failures: AtomicU64,
    /// UDP datagrams dropped, by [`UdpDrop`] reason.
    pub udp_dropped: [AtomicU64; 2],
}

impl ListenerCounters {
    #[inline]
    pub fn reject(&self, reason: RejectReason) {
        self.rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason as usize].load(Ordering::Relaxed)
    }

    #[inline]
    pub fn udp_drop(&self, reason: UdpDrop, n: u64) {
        self.udp_dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }
}

/// A listener's counters, one cache line per worker. Outlives a reload of the listener's
/// settings (it is carried into the new `ListenerState`), so counters never go backwards.
#[derive(Debug)]
pub struct ListenerMetrics {
    per_worker: Box<[ListenerCounters]>,
}

impl ListenerMetrics {
    pub fn new(workers: usize) -> ListenerMetrics {
        ListenerMetrics {
            per_worker: (0..workers.max(1))
                .map(|_| ListenerCounters::default())
                .collect(),
        }
    }

    /// The counters worker `id` writes.
    #[inline]
    pub fn worker(&self, id: usize) -> &ListenerCounters {
        &self.per_worker[id % self.per_worker.len()]
    }

    pub fn accepted(&self) -> u64 {
        self.per_worker
            .iter()
            .map(|c| c.accepted.load(Ordering::Relaxed))
            .sum()
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.per_worker.iter().map(|c| c.rejected(reason)).sum()
    }

    pub fn udp_dropped(&self, reason: UdpDrop) -> u64 {
        self.per_worker
            .iter()
            .map(|c| c.udp_dropped[reason as usize].load(Ordering::Relaxed))
            .sum()
    }

    pub fn connect_failures(&self) -> u64 {
        self.per_worker
            .iter()
            .map(|c| c.connect_failures.load(Ordering::Relaxed))
            .sum()
    }
}

/// Upper bounds (µs) of the `l4lb_worker_loop_seconds` buckets; a last bucket (+Inf) holds the
/// rest. From 25 µs (an iteration that served a few events) to 1 s (a worker stuck), about
/// 2.5x apart, so that both a busy-but-fair worker (under 1 ms) and one held by a bulk
/// transfer (tens of ms) land in buckets of their own.
pub const LOOP_BUCKETS_US: [u64; 13] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 250_000, 1_000_000,
];

/// One worker's event-loop figures: how long each loop iteration ran (from `epoll_wait`
/// returning to the next call, so waiting is not counted) and how many events the waits
/// returned. Written once per iteration by its worker only, read at scrape time: the worker
/// stores plain increments (no locked instruction), on lines no other thread writes.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct WorkerLoop {
    /// Iterations per bucket of [`LOOP_BUCKETS_US`], the last one over the largest bound.
    buckets: [AtomicU64; LOOP_BUCKETS_US.len() + 1],
    /// Sum of the iteration times, in nanoseconds.
    sum_ns: AtomicU64,
    /// Events returned by `epoll_wait`, summed over the iterations.
    events: AtomicU64,
}

/// Bump a counter that only the calling thread writes: a plain load and store, which the
/// scrape may see a moment late but never torn or going backwards.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

impl WorkerLoop {
    /// One iteration that ran `ns` nanoseconds after a wait that returned `events` events.
    #[inline]
    pub fn record(&self, ns: u64, events: usize) {
        let us = ns / 1_000;
        let i = LOOP_BUCKETS_US
            .iter()
            .position(|&b| us < b)
            .unwrap_or(LOOP_BUCKETS_US.len());
        bump(&self.buckets[i], 1);
        bump(&self.sum_ns, ns);
        bump(&self.events, events as u64);
    }
}

/// The loop figures of every worker, summed at scrape time.
#[derive(Debug)]
pub struct LoopMetrics {
    per_worker: Box<[WorkerLoop]>,
}

/// A summed snapshot of [`LoopMetrics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopTotals {
    /// Iterations per bucket (not cumulative), the last one over the largest bound.
    pub buckets: [u64; LOOP_BUCKETS_US.len() + 1],
    pub sum_ns: u64,
    pub events: u64,
}

impl LoopTotals {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl LoopMetrics {
    pub fn new(workers: usize) -> LoopMetrics {
        LoopMetrics {
            per_worker: (0..workers.max(1)).map(|_| WorkerLoop::default()).collect(),
        }
    }

    /// The figures worker `id` writes.
    #[inline]
    pub fn worker(&self, id: usize) -> &WorkerLoop {
        &self.per_worker[id % self.per_worker.len()]
    }

    pub fn totals(&self) -> LoopTotals {
        let mut t = LoopTotals {
            buckets: [0; LOOP_BUCKETS_US.len() + 1],
            sum_ns: 0,
            events: 0,
        };
        for w in self.per_worker.iter() {
            for (sum, b) in t.buckets.iter_mut().zip(&w.buckets) {
                *sum += b.load(Ordering::Relaxed);
            }
            t.sum_ns += w.sum_ns.load(Ordering::Relaxed);
            t.events += w.events.load(Ordering::Relaxed);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_iterations_land_in_their_bucket_and_sum_over_workers() {
        let m = LoopMetrics::new(2);
        m.worker(0).record(10_000, 3); // 10 µs: first bucket
        m.worker(1).record(25_000, 1); // 25 µs: not under 25, so the second
        m.worker(1).record(2_000_000_000, 0); // 2 s: +Inf
        let t = m.totals();
        assert_eq!(t.buckets[0], 1);
        assert_eq!(t.buckets[1], 1);
        assert_eq!(t.buckets[LOOP_BUCKETS_US.len()], 1);
        assert_eq!(t.count(), 3);
        assert_eq!(t.sum_ns, 2_000_035_000);
        assert_eq!(t.events, 4);
    }
}
