//! The shared backend table: one [`Backend`] per configured backend, holding atomics that every
//! worker reads and updates without a lock, and the [`Pool`] snapshot of a listener's backends.
//!
//! Control path builds a `Pool`; hot path reads it. Invariants: a `Backend` never changes its
//! address; `active` is incremented exactly once per established-or-connecting connection and
//! decremented exactly once when that connection ends (see `ActiveGuard`-style callers).
//! Pools are immutable once published; state and weight change in place through atomics, so
//! every worker sees a change on its next pick.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Administrative/health state of a backend. Only `Up` takes new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BackendState {
    Up = 0,
    Down = 1,
    Drain = 2,
    Disabled = 3,
}

impl BackendState {
    fn from_u8(v: u8) -> BackendState {
        match v {
            0 => BackendState::Up,
            1 => BackendState::Down,
            2 => BackendState::Drain,
            _ => BackendState::Disabled,
        }
    }

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
    /// 0 = unlimited.
    pub max_connections: u32,
    weight: AtomicU32,
    state: AtomicU8,
    /// Connections currently open (connecting or established) to this backend.
    pub active: AtomicU32,
    /// Connections ever sent to this backend.
    pub total: AtomicU64,
    pub connect_errors: AtomicU64,
    pub bytes_to_backend: AtomicU64,
    pub bytes_to_client: AtomicU64,
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
            max_connections,
            weight: AtomicU32::new(weight),
            state: AtomicU8::new(BackendState::Up as u8),
            active: AtomicU32::new(0),
            total: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            bytes_to_backend: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn set_weight(&self, w: u32) {
        self.weight.store(w, Ordering::Relaxed)
    }

    #[inline]
    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, s: BackendState) {
        self.state.store(s as u8, Ordering::Relaxed)
    }

    #[inline]
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether this backend may take a new connection right now: up, weight > 0 and below
    /// its own `max_connections`.
    #[inline]
    pub fn is_available(&self) -> bool {
        self.state() == BackendState::Up
            && self.weight() > 0
            && (self.max_connections == 0 || self.active() < self.max_connections)
    }
}
