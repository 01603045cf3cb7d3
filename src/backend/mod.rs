//! The shared backend table: one [`Backend`] per configured backend, holding atomics that every
//! worker reads and updates without a lock. A listener's backends are published to workers as
//! a `balancer::Pool` snapshot (with its Maglev tables) in `state::ListenerState`.
//!
//! Hot path reads and bumps the atomics (once per connection, never per read); the control
//! path (health thread, admin API, reload) flips state and weight. Invariants: a `Backend`
//! never changes its address; `active` is incremented exactly once when a connection (or UDP
//! session) is sent to it and decremented exactly once when that ends, by the worker that owns
//! it. State and weight change in place, so every worker sees a change on its next pick.
//!
//! A backend's state has two independent sources: health (active checks and passive connect
//! failures: up or down, each counted on its own, either one can mark it down, and `rise`
//! successful checks, or the passive re-probe, bring it back) and the operator (admin API: enabled, drain or disabled). The state
//! every algorithm sees combines them: disabled, else drain, else the health. So a health
//! check never undoes an operator's drain, and enabling a backend that is down keeps it down.

pub mod latency;
pub mod slow_start;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Administrative/health state of a backend. Only `Up` takes new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BackendState {
    Up = 0,
    Down = 1,
    Drain = 2,
    Disabled = 3,
}

/// The operator's say over a backend (admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AdminState {
    Enabled = 0,
    Drain = 1,
    Disabled = 2,
}

impl AdminState {
    fn from_u8(v: u8) -> AdminState {
        match v {
            0 => AdminState::Enabled,
            1 => AdminState::Drain,
            _ => AdminState::Disabled,
        }
    }
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Down => "down",
            BackendState::Drain => "drain",
            BackendState::Disabled => "disabled",
        }
    }
}

/// One backend of one listener. Shared by all workers through `Arc`.
#[derive(Debug)]
pub struct Backend {
    /// Resolved address we connect to.
    pub addr: SocketAddr,
    /// The address exactly as written in the config (metrics label, admin API key).
    pub name: String,
    /// Used only when no primary backend is available.
    pub backup: bool,
    /// 0 = unlimited. Atomic so that a reload can change it without losing the counters.
    max_connections: AtomicU32,
    weight: AtomicU32,
    healthy: AtomicBool,
    admin: AtomicU8,
    /// Passive evidence: consecutive failed connects of the data path (TCP connect, UDP
    /// session without a reply); reset by a data-path success and when the backend comes up.
    pub consecutive_failures: AtomicU32,
    /// Active evidence: consecutive failed health checks (health thread only). Kept apart
    /// from the passive count, so that clients still connecting to a backend that fails
    /// its `expect` cannot keep resetting it (issue 10, bug 4).
    pub check_failures: AtomicU32,
    /// Consecutive successful checks while down (health thread only).
    pub consecutive_successes: AtomicU32,
    /// Coarse ms clock (runtime start) of the last time this backend went down.
    pub down_since_ms: AtomicU64,
    /// Connections currently open (connecting or established) to this backend; for a UDP
    /// listener, its open sessions.
    pub active: AtomicU32,
    /// Connections ever sent to this backend.
    pub total: AtomicU64,
    pub connect_errors: AtomicU64,
    pub bytes_to_backend: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// UDP datagrams forwarded to this backend / from it to clients. Like the byte counters,
    /// written by a worker per session (at expiry, close and about every 10 s while it
    /// lives), never per datagram.
    pub datagrams_to_backend: AtomicU64,
    pub datagrams_to_client: AtomicU64,
    /// `clock::monotonic_us` of the last time it came up (recovered, enabled, added by a
    /// reload): the start of its slow-start ramp. 0 = up since the listener started.
    up_since_us: AtomicU64,
    /// Connect times (UDP: time to the first reply), for `least_latency`.
    pub latency: latency::PeakEwma,
}

impl Backend {
    pub fn new(
        addr: SocketAddr,
        name: String,
        weight: u32,
        max_connections: u32,
        backup: bool,
    ) -> Self {
        Backend {
            addr,
            name,
            backup,
            max_connections: AtomicU32::new(max_connections),
            weight: AtomicU32::new(weight),
            healthy: AtomicBool::new(true),
            admin: AtomicU8::new(AdminState::Enabled as u8),
            consecutive_failures: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            consecutive_successes: AtomicU32::new(0),
            down_since_ms: AtomicU64::new(0),
            active: AtomicU32::new(0),
            total: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            bytes_to_backend: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            datagrams_to_backend: AtomicU64::new(0),
            datagrams_to_client: AtomicU64::new(0),
            up_since_us: AtomicU64::new(0),
            latency: latency::PeakEwma::default(),
        }
    }

    #[inline]
    pub fn max_connections(&self) -> u32 {
        self.max_connections.load(Ordering::Relaxed)
    }

    pub fn set_max_connections(&self, max: u32) {
        self.max_connections.store(max, Ordering::Relaxed)
    }

    #[inline]
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn set_weight(&self, w: u32) {
        self.weight.store(w, Ordering::Relaxed)
    }

    /// The state every algorithm honours: the operator's choice first, then health.
    #[inline]
    pub fn state(&self) -> BackendState {
        match self.admin.load(Ordering::Relaxed) {
            a if a == AdminState::Disabled as u8 => BackendState::Disabled,
            a if a == AdminState::Drain as u8 => BackendState::Drain,
            _ if self.healthy.load(Ordering::Relaxed) => BackendState::Up,
            _ => BackendState::Down,
        }
    }

    /// Shorthand for tests and tools: `Up`/`Down` set health (and enable), `Drain`/`Disabled`
    /// set the operator state.
    pub fn set_state(&self, s: BackendState) {
        match s {
            BackendState::Up => {
                self.set_admin(AdminState::Enabled);
                self.set_healthy(true);
            }
            BackendState::Down => {
                self.set_healthy(false);
            }
            BackendState::Drain => self.set_admin(AdminState::Drain),
            BackendState::Disabled => self.set_admin(AdminState::Disabled),
        }
    }

    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Returns whether health changed. Recovering starts the slow-start ramp.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let changed = self.healthy.swap(healthy, Ordering::AcqRel) != healthy;
        if changed && healthy {
            self.came_up();
        }
        changed
    }

    pub fn admin(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Relaxed))
    }

    /// Enabling a drained or disabled backend starts its slow-start ramp.
    pub fn set_admin(&self, a: AdminState) {
        let before = self.admin.swap(a as u8, Ordering::Relaxed);
        if a == AdminState::Enabled && before != AdminState::Enabled as u8 {
            self.came_up();
        }
    }

    /// The backend (re)joins its listener now: its slow-start ramp starts here.
    pub fn came_up(&self) {
        self.up_since_us
            .store(crate::clock::monotonic_us(), Ordering::Relaxed);
    }

    /// Thousandths of its weight the balancer gives it at `now_us` under a slow start of
    /// `period_us` (0 = off): see `slow_start::ramp_permille`.
    #[inline]
    pub fn ramp_permille(&self, now_us: u64, period_us: u64) -> u64 {
        if period_us == 0 {
            return slow_start::FULL;
        }
        slow_start::ramp_permille(self.up_since_us.load(Ordering::Relaxed), now_us, period_us)
    }

    /// The weight the balancer uses now (what `/status` shows as `effective_weight`).
    pub fn effective_weight(&self, now_us: u64, period_us: u64) -> f64 {
        f64::from(self.weight()) * self.ramp_permille(now_us, period_us) as f64
            / slow_start::FULL as f64
    }

    #[inline]
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether this backend may take a new connection right now: up, weight > 0 and below
    /// its own `max_connections`.
    #[inline]
    pub fn is_available(&self) -> bool {
        self.state() == BackendState::Up && self.weight() > 0 && {
            let max = self.max_connections();
            max == 0 || self.active() < max
        }
    }
}
