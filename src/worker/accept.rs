//! Accepting and admitting TCP connections: a listener's accept loop, the pause after an
//! accept fails for lack of descriptors or memory (or unexpectedly) and the resume, and
//! admission control (ACL, global and listener caps, per-client rate and cap), including the
//! `accept_proxy_protocol` path, where the client-level checks wait for the client's PROXY
//! header.
//!
//! Hot path: runs once per accepted connection. Invariants: a refused connection is counted
//! under its reason (and logged with it when the listener has `access_log`: `refuse`) and
//! holds nothing once reset (every count taken is given back first); an admitted one is in
//! the slab and registered (`conn_token(key, false)`) before its first connect; a listener
//! with `paused_until` set is not accepted on until `resume_listeners` clears it and accepts
//! at once (edge-triggered: what queued meanwhile raises no new event).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mio::net::TcpStream;
use mio::Interest;

use crate::access_queue::AccessQueue;
use crate::limits::{ClientSlot, ClientTable};
use crate::metrics::{ListenerCounters, RejectReason};
use crate::net::io::{is_accept_resource_error, is_accept_transient_error};
use crate::state::{try_take, ListenerState};

use super::access_log::{self, End, TcpLine};
use super::conn::{Conn, HeaderRead};
use super::expiry::{header_timer, set_linger_zero};
use super::timer::TimerEntry;
use super::{conn_token, ListenerSocket, Worker};

/// How long a listener stops accepting after EMFILE/ENFILE/ENOBUFS/ENOMEM, so that the loop
/// does not spin on a queue it cannot drain; existing connections keep being served.
pub(super) const ACCEPT_BACKOFF_MS: u64 = 100;

impl Worker {
    pub(super) fn accept(&mut self, li: usize) {
        loop {
            let Some(ListenerSocket::Tcp(socket)) = &self.listeners[li].socket else {
                return;
            };
            match socket.accept() {
                Ok((stream, peer)) => self.admit(li, stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_accept_transient_error(&e) => continue,
                Err(e) => {
                    // Out of descriptors or memory (or something unexpected): stop accepting
                    // for a moment instead of spinning; established connections go on.
                    self.listeners[li].paused_until = Some(self.now + ACCEPT_BACKOFF_MS);
                    let quiet = self.last_accept_warn.is_some_and(|t| self.now < t + 1000);
                    if !quiet {
                        self.last_accept_warn = Some(self.now);
                        let kind = if is_accept_resource_error(&e) {
                            "resource"
                        } else {
                            "unexpected"
                        };
                        log::warn!(
                            "worker {}: listener {}: accept failed ({kind}): {e}; pausing {ACCEPT_BACKOFF_MS} ms",
                            self.id,
                            self.listeners[li].state.config.name
                        );
                    }
                    return;
                }
            }
        }
    }

    pub(super) fn resume_listeners(&mut self) {
        for li in 0..self.listeners.len() {
            if self.listeners[li]
                .paused_until
                .is_some_and(|t| self.now >= t)
            {
                self.listeners[li].paused_until = None;
                // Edge-triggered: connections that queued meanwhile raise no new event.
                self.accept(li);
            }
        }
    }

    /// Admission control for one accepted connection, then the first connect. With
    /// `accept_proxy_protocol` only the peer-level checks happen here and the rest once the
    /// client's PROXY header is in (`admit_proxied`, `read_proxy_header`).
    fn admit(&mut self, li: usize, stream: TcpStream, peer: SocketAddr) {
        let state = self.listeners[li].state.clone();
        if state.config.accept_proxy_protocol {
            return self.admit_proxied(li, &state, stream, peer);
        }
        let counters = state.counters.worker(self.id);
        let ip = peer.ip();
        if !state.acl_allows(ip) {
            return refuse(
                &self.shared.access_log,
                &state,
                counters,
                stream,
                peer,
                RejectReason::Acl,
            );
        }
        if !listener_rate_allows(&state, self.now) {
            return refuse(
                &self.shared.access_log,
                &state,
                counters,
                stream,
                peer,
                RejectReason::ListenerRate,
            );
        }
        if let Err(reason) = self.take_counts(&state) {
            return refuse(
                &self.shared.access_log,
                &state,
                counters,
                stream,
                peer,
                reason,
            );
        }
        let client_slot = match client_admission(&state, ip, self.now) {
            Ok(slot) => slot,
            Err(reason) => {
                self.undo_counts(&state);
                return refuse(
                    &self.shared.access_log,
                    &state,
                    counters,
                    stream,
                    peer,
                    reason,
                );
            }
        };
        // TCP_NODELAY is inherited from the listening socket (net::listener): no setsockopt.
        let (key, generation) = self.conns.reserve_key();
        let mut stream = stream;
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            conn_token(key, false),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("worker {}: cannot register a client socket: {e}", self.id);
            self.undo_counts(&state);
            if let Some((table, slot)) = client_slot {
                table.release(slot);
            }
            return reset(stream);
        }
        let mut conn = Conn::new(li, generation, stream, peer, self.shared.splice, self.now);
        conn.client_slot = client_slot;
        let inserted = self.conns.insert(conn);
        debug_assert_eq!(inserted, key);
        if !state.config.routes.is_empty() {
            // SNI routing: the backend is chosen once the ClientHello is in.
            return self.await_hello(key, generation, li);
        }
        self.first_connect(key, li, Some(generation));
    }

    /// Take one unit of the global and of the listener's connection count; on refusal nothing
    /// is held and the caller counts the reason.
    #[inline]
    fn take_counts(&self, state: &ListenerState) -> Result<(), RejectReason> {
        if !try_take(
            &self.shared.active,
            self.shared.max_connections.load(Ordering::Relaxed),
        ) {
            return Err(RejectReason::GlobalLimit);
        }
        if !try_take(&state.active, state.config.max_connections) {
            self.shared.active.fetch_sub(1, Ordering::Relaxed);
            return Err(RejectReason::ListenerLimit);
        }
        Ok(())
    }

    fn undo_counts(&self, state: &ListenerState) {
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
        state.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// `accept_proxy_protocol`: the peer must be a trusted proxy, and the global and listener
    /// caps apply to it; everything about the client (ACL, per-client rate and cap, the
    /// balancing key) waits for the address in its PROXY header. The connection enters the
    /// slab as `awaiting_header`, with the header's deadline as its connect deadline:
    /// `client_first_byte_timeout_ms` when set (the header is the first thing a client
    /// sends), else `connect_timeout_ms`.
    fn admit_proxied(
        &mut self,
        li: usize,
        state: &ListenerState,
        mut stream: TcpStream,
        peer: SocketAddr,
    ) {
        let counters = state.counters.worker(self.id);
        if !is_trusted(&state.config.trusted_proxies, peer.ip()) {
            return refuse(
                &self.shared.access_log,
                state,
                counters,
                stream,
                peer,
                RejectReason::Acl,
            );
        }
        if !listener_rate_allows(state, self.now) {
            return refuse(
                &self.shared.access_log,
                state,
                counters,
                stream,
                peer,
                RejectReason::ListenerRate,
            );
        }
        if let Err(reason) = self.take_counts(state) {
            return refuse(
                &self.shared.access_log,
                state,
                counters,
                stream,
                peer,
                reason,
            );
        }
        // TCP_NODELAY is inherited from the listening socket (net::listener): no setsockopt.
        let (key, generation) = self.conns.reserve_key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            conn_token(key, false),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("worker {}: cannot register a client socket: {e}", self.id);
            self.undo_counts(state);
            return reset(stream);
        }
        let config = &state.config;
        let timeout = config
            .client_first_byte_timeout
            .unwrap_or(config.connect_timeout)
            .as_millis() as u64;
        let mut conn = Conn::new(li, generation, stream, peer, self.shared.splice, self.now);
        conn.awaiting_header = true;
        conn.connect_deadline = self.now + timeout;
        let inserted = self.conns.insert(conn);
        debug_assert_eq!(inserted, key);
        let first = header_timer(self.now + timeout, self.now, config);
        self.timers.insert(first, TimerEntry { key, generation });
    }

    /// A readable event while `awaiting_header`: read; once the header is in, its source
    /// becomes the client's address, and the client-level checks and the connect follow.
    /// No header (garbage, EOF, too long): reset, counted as `acl`.
    pub(super) fn read_proxy_header(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let li = conn.listener;
        let parsed = match conn.read_proxy_header(&mut self.io) {
            HeaderRead::Pending => return,
            HeaderRead::Done(parsed) => parsed,
            HeaderRead::Refused => {
                self.listeners[li]
                    .state
                    .counters
                    .worker(self.id)
                    .reject(RejectReason::Acl);
                return self.close(key, End::ProxyHeader);
            }
        };
        conn.awaiting_header = false;
        // LOCAL, UNKNOWN, UNSPEC: the proxy speaks for itself; the peer stays the client.
        if let Some(source) = parsed.source {
            conn.client_addr = source;
        }
        let ip = conn.client_addr.ip();
        let state = &self.listeners[li].state;
        let counters = state.counters.worker(self.id);
        let admitted = if state.acl_allows(ip) {
            client_admission(state, ip, self.now)
        } else {
            Err(RejectReason::Acl)
        };
        match admitted {
            Ok(slot) => conn.client_slot = slot,
            Err(reason) => {
                counters.reject(reason);
                return self.close(key, End::Refused(reason));
            }
        }
        if !state.config.routes.is_empty() {
            // SNI routing: the hello follows the header (perhaps already held); the header's
            // deadline and timer entry carry over.
            conn.awaiting_hello = true;
            return self.read_hello(key);
        }
        // The header-phase timer entry fires no later than this connect's deadline
        // (`header_timer`) and re-arms for it.
        self.first_connect(key, li, None);
    }
}

/// `conn_rate_limit`: one token of the listener's bucket (always when it has none).
#[inline]
fn listener_rate_allows(state: &ListenerState, now_ms: u64) -> bool {
    state
        .listener_rate
        .as_ref()
        .is_none_or(|r| r.try_acquire(now_ms))
}

/// The per-client checks, in order: rate, then concurrent cap. On refusal nothing is held.
#[inline]
fn client_admission(
    state: &ListenerState,
    ip: IpAddr,
    now_ms: u64,
) -> Result<Option<(Arc<ClientTable>, ClientSlot)>, RejectReason> {
    if let Some(rates) = &state.rates {
        if !rates.try_acquire(ip, now_ms) {
            return Err(RejectReason::ClientRate);
        }
    }
    match &state.clients {
        Some(table) => match table.acquire(ip, state.config.max_conns_per_client) {
            Ok(slot) => Ok(Some((table.clone(), slot))),
            Err(_) => Err(RejectReason::ClientLimit),
        },
        None => Ok(None),
    }
}

/// Whether `peer` may send a PROXY header (the list is never empty: config validation).
fn is_trusted(trusted: &[ipnet::IpNet], peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    trusted.iter().any(|n| n.contains(&peer))
}

/// Refuse a connection that never entered the slab: count it under `reason`, write its
/// access-log line when the listener has one (no backend, duration 0), and reset it.
fn refuse(
    queue: &AccessQueue,
    state: &ListenerState,
    counters: &ListenerCounters,
    stream: TcpStream,
    client: SocketAddr,
    reason: RejectReason,
) {
    counters.reject(reason);
    if state.config.access_log {
        access_log::tcp(
            queue,
            &TcpLine {
                listener: &state.config.name,
                client,
                backend: None,
                duration_ms: 0,
                bytes_to_backend: 0,
                bytes_to_client: 0,
                end: End::Refused(reason),
            },
        );
    }
    reset(stream);
}

/// Close a refused connection with a reset, as HAProxy's `tcp-request connection reject`.
fn reset(stream: TcpStream) {
    set_linger_zero(&stream);
}
