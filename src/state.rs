//! State shared by every worker and the control threads: per-listener backend pools, active
//! connection counts, per-client tables, and the process-wide connection count.
//!
//! Read on the hot path without locks: the pool is an `ArcSwap` snapshot, counts are atomics.
//! Written on the control path (startup now; health checks, reload and the admin API later)
//! by storing a new pool or flipping backend atomics.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::backend::Backend;
use crate::balancer::Pool;
use crate::config::{Config, ListenerConfig, SpliceMode};
use crate::limits::{ClientTable, RateTable};
use crate::metrics::ListenerMetrics;

/// One listener as every worker sees it.
#[derive(Debug)]
pub struct ListenerState {
    pub config: ListenerConfig,
    pub pool: ArcSwap<Pool>,
    /// Connections open through this listener, across workers (exact: enforces the cap).
    pub active: AtomicU64,
    /// Present when `max_conns_per_client > 0`.
    pub clients: Option<ClientTable>,
    /// Present when `conn_rate_per_client > 0`.
    pub rates: Option<RateTable>,
    pub counters: Arc<ListenerMetrics>,
}

impl ListenerState {
    pub fn new(config: ListenerConfig, global_max: u64, workers: usize) -> ListenerState {
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| {
                Arc::new(Backend::new(
                    b.addr,
                    b.name.clone(),
                    b.weight,
                    b.max_connections,
                    b.backup,
                ))
            })
            .collect();
        let pool = Pool::new(config.balance, backends);
        // A client table must be able to hold every client that can be connected at once.
        let capacity = match (config.max_connections, global_max) {
            (0, 0) => 1 << 20,
            (0, g) => g,
            (l, 0) => l,
            (l, g) => l.min(g),
        } as usize;
        let clients = (config.max_conns_per_client > 0).then(|| ClientTable::new(capacity));
        let rates = (config.conn_rate_per_client > 0)
            .then(|| RateTable::new(capacity, config.conn_rate_per_client));
        ListenerState {
            config,
            pool: ArcSwap::from_pointee(pool),
            active: AtomicU64::new(0),
            clients,
            rates,
            counters: Arc::new(ListenerMetrics::new(workers)),
        }
    }

    /// Allow/deny lists: deny is checked first; an empty allow list allows everyone.
    pub fn acl_allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        if self.config.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.config.allow.is_empty() || self.config.allow.iter().any(|n| n.contains(&ip))
    }
}

/// Everything shared across the process.
#[derive(Debug)]
pub struct SharedState {
    pub listeners: Vec<Arc<ListenerState>>,
    /// Connections open across all listeners (exact: enforces `runtime.max_connections`).
    pub active: AtomicU64,
    /// 0 = unlimited.
    pub max_connections: u64,
    pub splice: SpliceMode,
    pub started: Instant,
    pub shutdown: AtomicBool,
}

impl SharedState {
    pub fn new(config: &Config, workers: usize) -> SharedState {
        SharedState {
            listeners: config
                .listeners
                .iter()
                .map(|l| {
                    Arc::new(ListenerState::new(
                        l.clone(),
                        config.runtime.max_connections,
                        workers,
                    ))
                })
                .collect(),
            active: AtomicU64::new(0),
            max_connections: config.runtime.max_connections,
            splice: config.runtime.splice,
            started: Instant::now(),
            shutdown: AtomicBool::new(false),
        }
    }

    /// Milliseconds since start: the coarse monotonic clock of the data path.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}

/// Take one unit of `counter` unless it is at `max` (0 = unlimited). Exact under concurrency.
#[inline]
pub fn try_take(counter: &AtomicU64, max: u64) -> bool {
    if max == 0 {
        counter.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
            (v < max).then_some(v + 1)
        })
        .is_ok()
}
