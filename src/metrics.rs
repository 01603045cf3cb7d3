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
}

impl RejectReason {
    pub const ALL: [RejectReason; 8] = [
        RejectReason::ClientLimit,
        RejectReason::ClientRate,
        RejectReason::ListenerLimit,
        RejectReason::GlobalLimit,
        RejectReason::NoBackend,
        RejectReason::Acl,
        RejectReason::NoRoute,
        RejectReason::TlsHello,
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
