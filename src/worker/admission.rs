//! Admission of a TCP connection or a UDP session, and the counts it holds for its whole life:
//! one unit of the global count (`SharedState::active`), one of its listener's (TCP:
//! `ListenerState::active`, UDP: `udp_sessions`), a slot of the listener's per-client table
//! when it caps clients ([`Admission`]), and, once a backend is chosen, one unit of that
//! backend's `active` ([`BackendLease`]). Every count is taken here, in one order, and given
//! back by `Drop`: no caller undoes a count by hand, so no refusal, error or close path can
//! leak one or give one back twice.
//!
//! Hot path: runs once per accepted connection or new session. The order, the same for TCP
//! and UDP: ACL (deny, then allow) -> listener rate (`conn_rate_limit`) -> global cap (for UDP
//! its share, `SharedState::udp_max_connections`, so TCP keeps its reserve) -> listener cap
//! (`max_connections`) -> per-client rate (`conn_rate_per_client`) -> per-client cap
//! (`max_conns_per_client`). A refusal returns its reason and holds nothing. With
//! `accept_proxy_protocol` admission is split in two: [`Admission::admit_peer`] at accept (the
//! trusted-proxy check in place of the ACL, then the rate and the caps), and
//! [`Admission::admit_client`] once the PROXY header names the client (ACL, client rate and
//! cap).
//!
//! Cost: the guard owns `Arc`s of the counters it holds (a clone per admission, one for the
//! global count and one for the listener's, on top of the client table's, which was cloned
//! before this guard existed too). That is the price of a guard that outlives a reload (the
//! listener's `Arc<ListenerState>` may be replaced or emptied while a connection lives) with
//! no `unsafe`: an `Arc<AtomicU64>`'s reference count shares the cache line of the counter
//! the admission has just written, so the clone and its drop touch a line already owned.
//! Nothing is allocated and nothing is locked.

use std::net::IpAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::backend::Backend;
use crate::config::Protocol;
use crate::limits::{ClientSlot, ClientTable};
use crate::metrics::RejectReason;
use crate::state::{try_take, ListenerState, SharedState};

/// One unit of a shared count, given back on drop.
#[derive(Debug)]
struct Unit(Arc<AtomicU64>);

impl Unit {
    /// One unit of `counter` unless it is at `max` (0 = unlimited).
    #[inline]
    fn take(counter: &Arc<AtomicU64>, max: u64) -> Option<Unit> {
        try_take(counter, max).then(|| Unit(counter.clone()))
    }
}

impl Drop for Unit {
    #[inline]
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A slot of a per-client table, given back to that table (the one it was taken from, even
/// if a reload gave the listener a new one) on drop.
#[derive(Debug)]
struct ClientPermit {
    table: Arc<ClientTable>,
    slot: ClientSlot,
}

impl Drop for ClientPermit {
    #[inline]
    fn drop(&mut self) {
        self.table.release(self.slot);
    }
}

/// What an admitted connection or session counts against, from admission until it is
/// dropped: the global count, its listener's, and its client's slot (when the listener caps
/// clients and the client-level part of admission ran).
#[derive(Debug)]
pub struct Admission {
    // Held for their `Drop` only.
    _global: Unit,
    _listener: Unit,
    client: Option<ClientPermit>,
}

impl Admission {
    /// The whole admission of a client at `ip`, in order: ACL, listener rate, global cap,
    /// listener cap, client rate, client cap.
    #[inline]
    pub fn admit(
        state: &ListenerState,
        shared: &SharedState,
        ip: IpAddr,
        now_ms: u64,
    ) -> Result<Admission, RejectReason> {
        let mut admission = Admission::admit_peer(state, shared, state.acl_allows(ip), now_ms)?;
        admission.take_client(state, ip, now_ms)?;
        Ok(admission)
    }

    /// The peer-level part: `allowed` is the peer's verdict (the ACL, or with
    /// `accept_proxy_protocol` whether it is a trusted proxy); then the listener rate, the
    /// global cap and the listener cap. The client-level part follows with
    /// [`Admission::admit_client`].
    #[inline]
    pub fn admit_peer(
        state: &ListenerState,
        shared: &SharedState,
        allowed: bool,
        now_ms: u64,
    ) -> Result<Admission, RejectReason> {
        if !allowed {
            return Err(RejectReason::Acl);
        }
        if let Some(rate) = &state.listener_rate {
            if !rate.try_acquire(now_ms) {
                return Err(RejectReason::ListenerRate);
            }
        }
        let (global_max, listener) = match state.config.protocol {
            Protocol::Tcp => (
                shared.max_connections.load(Ordering::Relaxed),
                &state.active,
            ),
            Protocol::Udp => (
                shared.udp_max_connections.load(Ordering::Relaxed),
                &state.udp_sessions,
            ),
        };
        let global = Unit::take(&shared.active, global_max).ok_or(RejectReason::GlobalLimit)?;
        // A refusal here drops `global`, which gives its unit back.
        let listener = Unit::take(listener, state.config.max_connections)
            .ok_or(RejectReason::ListenerLimit)?;
        Ok(Admission {
            _global: global,
            _listener: listener,
            client: None,
        })
    }

    /// The client-level part for the client at `ip` (the source of its PROXY header): ACL,
    /// client rate, client cap. On refusal nothing more is held; what the peer-level part
    /// holds stays until the admission is dropped.
    #[inline]
    pub fn admit_client(
        &mut self,
        state: &ListenerState,
        ip: IpAddr,
        now_ms: u64,
    ) -> Result<(), RejectReason> {
        if !state.acl_allows(ip) {
            return Err(RejectReason::Acl);
        }
        self.take_client(state, ip, now_ms)
    }

    /// Per-client rate, then per-client cap.
    #[inline]
    fn take_client(
        &mut self,
        state: &ListenerState,
        ip: IpAddr,
        now_ms: u64,
    ) -> Result<(), RejectReason> {
        debug_assert!(self.client.is_none(), "client admitted twice");
        if let Some(rates) = &state.rates {
            if !rates.try_acquire(ip, now_ms) {
                return Err(RejectReason::ClientRate);
            }
        }
        if let Some(table) = &state.clients {
            match table.acquire(ip, state.config.max_conns_per_client) {
                Ok(slot) => {
                    self.client = Some(ClientPermit {
                        table: table.clone(),
                        slot,
                    })
                }
                Err(_) => return Err(RejectReason::ClientLimit),
            }
        }
        Ok(())
    }
}

/// One unit of a backend's `active` (a connection or session counts against it from the
/// start of its connect to its close), given back on drop; the backend's `total` counts the
/// attempt for good unless [`BackendLease::cancel`] says it never reached the backend.
#[derive(Debug)]
pub struct BackendLease(Arc<Backend>);

impl BackendLease {
    /// Count one more connection (attempt) to `backend`: `active` and `total`.
    #[inline]
    pub fn take(backend: Arc<Backend>) -> BackendLease {
        backend.active.fetch_add(1, Ordering::Relaxed);
        backend.total.fetch_add(1, Ordering::Relaxed);
        BackendLease(backend)
    }

    /// The attempt never left this host (a local shortage): take back `total` as well.
    #[inline]
    pub fn cancel(self) {
        self.0.total.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Deref for BackendLease {
    type Target = Backend;

    #[inline]
    fn deref(&self) -> &Backend {
        &self.0
    }
}

impl Drop for BackendLease {
    #[inline]
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
