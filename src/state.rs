//! State shared by every worker and the control threads: the current listener set, each
//! listener's backend pool, active connection counts, per-client tables, and process-wide
//! counters.
//!
//! Read on the hot path without locks: pools and the listener set are `ArcSwap` snapshots,
//! counts are atomics. Written on the control path (health checker, reload, admin API) by
//! flipping backend atomics and publishing rebuilt pools. Invariant: what must survive a
//! reload (active counts, client tables, counters, backends that keep their address) lives
//! behind `Arc`s that a reconfigured `ListenerState` shares with its predecessor.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::access_queue::AccessQueue;
use crate::backend::{AdminState, Backend};
use crate::balancer::Pool;
use crate::config::{Config, ListenerConfig, SpliceMode};
use crate::limits::{ClientKeys, ClientTable, ListenerRate, RateTable};
use crate::metrics::{IoErrorCounters, ListenerMetrics, LoopMetrics};

/// One listener as every worker sees it. Immutable but for atomics; a reload that changes its
/// settings publishes a new `ListenerState` built with [`ListenerState::reconfigured`].
#[derive(Debug)]
pub struct ListenerState {
    pub config: ListenerConfig,
    pub pool: ArcSwap<Pool>,
    /// Connections (TCP) open through this listener, across workers (exact: enforces the cap).
    pub active: Arc<AtomicU64>,
    /// UDP sessions open through this listener.
    pub udp_sessions: Arc<AtomicU64>,
    /// Present when `max_conns_per_client > 0`.
    pub clients: Option<Arc<ClientTable>>,
    /// Present when `conn_rate_per_client > 0`.
    pub rates: Option<Arc<RateTable>>,
    /// Present when `conn_rate_limit > 0`: new connections (sessions) per second, all clients.
    pub listener_rate: Option<Arc<ListenerRate>>,
    pub counters: Arc<ListenerMetrics>,
    /// Set by a worker that marked a backend down (passive check): the health thread then
    /// republishes the pool, which the data path must not do itself (O(table) rebuild).
    pub pool_dirty: AtomicBool,
}

fn table_capacity(config: &ListenerConfig, global_max: u64) -> usize {
    // A client table must be able to hold every client that can be connected at once.
    (match (config.max_connections, global_max) {
        (0, 0) => 1 << 20,
        (0, g) => g,
        (l, 0) => l,
        (l, g) => l.min(g),
    }) as usize
}

fn client_keys(config: &ListenerConfig) -> ClientKeys {
    ClientKeys::new(config.client_ipv4_prefix, config.client_ipv6_prefix)
}

fn new_backend(b: &crate::config::BackendConfig) -> Arc<Backend> {
    Arc::new(Backend::new(
        b.addr,
        b.name.clone(),
        b.weight,
        b.max_connections,
        b.backup,
    ))
}

/// The listener's pool: its own backends (group 0) and each SNI route's (group `r + 1`).
fn pool_of(config: &ListenerConfig, backends: Vec<Arc<Backend>>) -> Pool {
    let group_of: Vec<usize> = config.all_backends().map(|(g, _)| g).collect();
    let algorithms: Vec<_> = std::iter::once(config.balance)
        .chain(config.routes.iter().map(|r| r.balance))
        .collect();
    Pool::grouped(
        backends,
        &group_of,
        &algorithms,
        crate::balancer::maglev::DEFAULT_TABLE_SIZE,
    )
    .with_slow_start(config.slow_start)
}

impl ListenerState {
    pub fn new(config: ListenerConfig, global_max: u64, workers: usize) -> ListenerState {
        let backends: Vec<Arc<Backend>> =
            config.all_backends().map(|(_, b)| new_backend(b)).collect();
        let pool = pool_of(&config, backends);
        let capacity = table_capacity(&config, global_max);
        let keys = client_keys(&config);
        let clients = (config.max_conns_per_client > 0)
            .then(|| Arc::new(ClientTable::new(capacity, keys.clone())));
        let rates = (config.conn_rate_per_client > 0)
            .then(|| Arc::new(RateTable::new(capacity, config.conn_rate_per_client, keys)));
        let listener_rate = (config.conn_rate_limit > 0)
            .then(|| Arc::new(ListenerRate::new(config.conn_rate_limit)));
        ListenerState {
            config,
            pool: ArcSwap::from_pointee(pool),
            active: Arc::new(AtomicU64::new(0)),
            udp_sessions: Arc::new(AtomicU64::new(0)),
            clients,
            rates,
            listener_rate,
            counters: Arc::new(ListenerMetrics::new(workers)),
            pool_dirty: AtomicBool::new(false),
        }
    }

    /// The same listener with new settings: counts, counters and per-client tables carry over;
    /// backends whose `addr` (as written) and resolved address are unchanged keep their
    /// counters and state and take the new weight and cap. Those change in place, for every
    /// worker at once: call this only when the reload can no longer fail (all or nothing).
    pub fn reconfigured(&self, config: ListenerConfig, global_max: u64) -> ListenerState {
        let old_pool = self.pool.load();
        let backends: Vec<Arc<Backend>> = config
            .all_backends()
            .map(|(_, b)| {
                match old_pool
                    .backends()
                    .iter()
                    .find(|o| o.name == b.name && o.addr == b.addr && o.backup == b.backup)
                {
                    Some(old) => {
                        old.set_weight(b.weight);
                        old.set_max_connections(b.max_connections);
                        old.clone()
                    }
                    None => {
                        // Added to a running listener: it comes up now (slow start).
                        let added = new_backend(b);
                        added.came_up();
                        added
                    }
                }
            })
            .collect();
        let pool = pool_of(&config, backends);
        let capacity = table_capacity(&config, global_max);
        // New prefixes make new tables (connections open under the old ones give their slot
        // back to the table they hold an `Arc` of).
        let same_keys = config.client_ipv4_prefix == self.config.client_ipv4_prefix
            && config.client_ipv6_prefix == self.config.client_ipv6_prefix;
        let keys = client_keys(&config);
        let clients = match (&self.clients, config.max_conns_per_client > 0) {
            (_, false) => None,
            (Some(t), true) if same_keys => Some(t.clone()),
            (_, true) => Some(Arc::new(ClientTable::new(capacity, keys.clone()))),
        };
        let rates = match (&self.rates, config.conn_rate_per_client) {
            (_, 0) => None,
            (Some(r), rate) if rate == self.config.conn_rate_per_client && same_keys => {
                Some(r.clone())
            }
            (_, rate) => Some(Arc::new(RateTable::new(capacity, rate, keys))),
        };
        let listener_rate = match (&self.listener_rate, config.conn_rate_limit) {
            (_, 0) => None,
            (Some(r), rate) if r.rate() == rate => Some(r.clone()),
            (_, rate) => Some(Arc::new(ListenerRate::new(rate))),
        };
        ListenerState {
            config,
            pool: ArcSwap::from_pointee(pool),
            active: self.active.clone(),
            udp_sessions: self.udp_sessions.clone(),
            clients,
            rates,
            listener_rate,
            counters: self.counters.clone(),
            pool_dirty: AtomicBool::new(false),
        }
    }

    /// What a worker keeps of a retired listener once none of its connections or sessions is
    /// left anywhere: the name and settings (for logs), no backends, no Maglev tables, no
    /// per-client tables. The worker's slot then is free for the next added listener.
    pub fn emptied(&self) -> ListenerState {
        let mut config = self.config.clone();
        config.backends = Vec::new();
        ListenerState {
            pool: ArcSwap::from_pointee(Pool::new(config.balance, Vec::new())),
            config,
            active: Arc::new(AtomicU64::new(0)),
            udp_sessions: Arc::new(AtomicU64::new(0)),
            clients: None,
            rates: None,
            listener_rate: None,
            counters: self.counters.clone(),
            pool_dirty: AtomicBool::new(false),
        }
    }

    /// Whether no connection (TCP) or session (UDP) of this listener is open in any worker.
    pub fn is_idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0 && self.udp_sessions.load(Ordering::Acquire) == 0
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

    /// Publish a pool rebuilt from the backends' current state (after a health or admin
    /// change), so the Maglev tables stop pointing at backends that left.
    pub fn republish_pool(&self) {
        self.pool.rcu(|p| p.rebuilt());
    }

    /// Put back the weights the file gives (a reload that leaves this listener's config
    /// unchanged: weights set through the admin API last only until the next reload).
    /// Republishes the pool only when a weight actually changed.
    pub fn restore_file_weights(&self) -> bool {
        let pool = self.pool.load();
        let mut changed = false;
        for b in &self.config.backends {
            if let Some(live) = pool.backends().iter().find(|x| x.name == b.name) {
                if live.weight() != b.weight {
                    live.set_weight(b.weight);
                    changed = true;
                }
            }
        }
        if changed {
            self.republish_pool();
        }
        changed
    }

    pub fn find_backend(&self, name: &str) -> Option<Arc<Backend>> {
        self.pool
            .load()
            .backends()
            .iter()
            .find(|b| b.name == name)
            .cloned()
    }
}

/// Everything shared across the process.
#[derive(Debug)]
pub struct SharedState {
    /// The current listener set, in config order (what /status and /metrics show).
    pub listeners: ArcSwap<Vec<Arc<ListenerState>>>,
    /// Connections and UDP sessions open across all listeners (exact: enforces
    /// `runtime.max_connections`). An `Arc` so that each admission's guard
    /// (`worker::admission::Admission`) owns what it gives back.
    pub active: Arc<AtomicU64>,
    /// 0 = unlimited. Applied live on reload.
    pub max_connections: AtomicU64,
    /// The part of `max_connections` UDP sessions may fill (`Config::udp_global_cap`); 0 =
    /// unlimited. Applied live on reload.
    pub udp_max_connections: AtomicU64,
    pub splice: SpliceMode,
    pub workers: usize,
    pub started: Instant,
    /// Set on SIGTERM/SIGINT: stop accepting, finish what is open.
    pub draining: AtomicBool,
    /// Set when the process must stop now (drain over, or a second signal).
    pub shutdown: AtomicBool,
    /// Set (before `draining`) when a new process took the listening sockets over: they stay
    /// open for it, and this process only finishes what it has.
    pub handed_over: AtomicBool,
    pub reloads_ok: AtomicU64,
    pub reloads_error: AtomicU64,
    /// Access-log lines on their way to the writer thread (`access_queue::spawn_writer`).
    pub access_log: AccessQueue,
    /// I/O errors that closed connections, by class (every worker adds to it).
    pub io_errors: Arc<IoErrorCounters>,
    /// Each worker's event-loop iteration times (`l4lb_worker_loop_seconds`).
    pub loops: LoopMetrics,
}

/// The admin API's error for a state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    NoListener,
    NoBackend,
}

impl SharedState {
    pub fn new(config: &Config, workers: usize) -> SharedState {
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                Arc::new(ListenerState::new(
                    l.clone(),
                    config.runtime.max_connections,
                    workers,
                ))
            })
            .collect();
        SharedState {
            listeners: ArcSwap::from_pointee(listeners),
            active: Arc::new(AtomicU64::new(0)),
            max_connections: AtomicU64::new(config.runtime.max_connections),
            udp_max_connections: AtomicU64::new(config.udp_global_cap()),
            splice: config.runtime.splice,
            workers,
            started: Instant::now(),
            draining: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            reloads_ok: AtomicU64::new(0),
            reloads_error: AtomicU64::new(0),
            access_log: AccessQueue::default(),
            io_errors: Arc::new(IoErrorCounters::default()),
            loops: LoopMetrics::new(workers),
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

    pub fn is_handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn listener(&self, name: &str) -> Option<Arc<ListenerState>> {
        self.listeners
            .load()
            .iter()
            .find(|l| l.config.name == name)
            .cloned()
    }

    /// Operator action from the admin API: enable, drain or disable one backend, then publish
    /// the listener's rebuilt pool.
    pub fn set_backend_admin(
        &self,
        listener: &str,
        backend: &str,
        state: AdminState,
    ) -> Result<(), LookupError> {
        let l = self.listener(listener).ok_or(LookupError::NoListener)?;
        let b = l.find_backend(backend).ok_or(LookupError::NoBackend)?;
        b.set_admin(state);
        l.republish_pool();
        log::info!("listener {listener}: backend {backend} set to {state:?} by the admin API");
        Ok(())
    }

    /// Operator action from the admin API: set one backend's weight until the next reload,
    /// then publish the listener's rebuilt pool (new Maglev tables, built here on the caller's
    /// control thread; workers pick up the new snapshot on their next connection).
    pub fn set_backend_weight(
        &self,
        listener: &str,
        backend: &str,
        weight: u32,
    ) -> Result<(), LookupError> {
        let l = self.listener(listener).ok_or(LookupError::NoListener)?;
        let b = l.find_backend(backend).ok_or(LookupError::NoBackend)?;
        let old = b.weight();
        b.set_weight(weight);
        l.republish_pool();
        log::info!(
            "listener {listener}: backend {backend} weight {old} -> {weight} by the admin API"
        );
        Ok(())
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
