//! Accepting TCP connections: a listener's accept loop, the pause after an accept fails for
//! lack of descriptors or memory (or unexpectedly) and the resume, the admission of each
//! accepted connection (`admission::Admission`: ACL, listener rate, global and listener caps,
//! per-client rate and cap) and its one refusal path, and the `accept_proxy_protocol` path,
//! where the client-level half of admission waits for the client's PROXY header.
//!
//! Hot path: runs once per accepted connection. Invariants: a refused connection is counted
//! under its reason (and logged with it when the listener has `access_log`) and reset by
//! `refuse`, holding nothing (a refusal returns before any count is held, and a connection
//! that fails later drops its guard); an admitted one is in the slab and registered
//! (`conn_token(key, false)`) before its first connect; a listener with `paused_until` set is
//! not accepted on until `resume_listeners` clears it and accepts at once (edge-triggered:
//! what queued meanwhile raises no new event).

use std::io;
use std::net::{IpAddr, SocketAddr};

use mio::net::TcpStream;
use mio::Interest;

use crate::access_queue::AccessQueue;
use crate::metrics::{ListenerCounters, RejectReason};
use crate::net::io::{is_accept_resource_error, is_accept_transient_error};
use crate::state::ListenerState;

use super::access_log::{self, End, TcpLine};
use super::admission::Admission;
use super::conn::set_linger_zero;
use super::conn::{Conn, HeaderRead};
use super::expiry::header_timer;
use super::timer::TimerEntry;
use super::{conn_token, tagged, ListenerSocket, Worker};

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

    /// Admission control for one accepted connection (`admission`), then into the slab and
    /// on to the first connect (or to reading its ClientHello). With `accept_proxy_protocol`
    /// only the peer-level part happens here and the rest once the client's PROXY header is
    /// in (`read_proxy_header`).
    fn admit(&mut self, li: usize, mut stream: TcpStream, peer: SocketAddr) {
        let state = self.listeners[li].state.clone();
        let config = &state.config;
        let admitted = if config.accept_proxy_protocol {
            // Everything about the client (ACL, per-client rate and cap, the balancing key)
            // waits for the address in its PROXY header; the peer must be a trusted proxy.
            let trusted = is_trusted(&config.trusted_proxies, peer.ip());
            Admission::admit_peer(&state, &self.shared, trusted, self.now)
        } else {
            Admission::admit(&state, &self.shared, peer.ip(), self.now)
        };
        let admission = match admitted {
            Ok(admission) => admission,
            Err(reason) => {
                let counters = state.counters.worker(self.id);
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
        if let Err(e) = self.registry.register(
            &mut stream,
            tagged(self.tag, conn_token(key, false)),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("worker {}: cannot register a client socket: {e}", self.id);
            // Dropping `admission` gives its counts back.
            return reset(stream);
        }
        let mut conn = Conn::new(
            li,
            generation,
            stream,
            peer,
            admission,
            self.shared.splice,
            self.now,
        );
        if config.accept_proxy_protocol {
            // The header's deadline is its connect deadline: `client_first_byte_timeout_ms`
            // when set (the header is the first thing a client sends), else
            // `connect_timeout_ms`.
            let timeout = config
                .client_first_byte_timeout
                .unwrap_or(config.connect_timeout)
                .as_millis() as u64;
            conn.await_proxy_header(self.now + timeout);
            let inserted = self.conns.insert(conn);
            debug_assert_eq!(inserted, key);
            let first = header_timer(self.now + timeout, self.now, config);
            self.timers.insert(first, TimerEntry { key, generation });
            return;
        }
        let inserted = self.conns.insert(conn);
        debug_assert_eq!(inserted, key);
        if !config.routes.is_empty() {
            // SNI routing: the backend is chosen once the ClientHello is in.
            return self.await_hello(key, generation, li);
        }
        self.first_connect(key, li, Some(generation));
    }

    /// A readable event while `ProxyHeader`: read; once the header is in, its source
    /// becomes the client's address, and the client-level half of admission and the connect
    /// (or, with SNI routes, the ClientHello) follow. No header (garbage, EOF, too long):
    /// reset, counted as `acl`.
    pub(super) fn read_proxy_header(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let li = conn.listener();
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
        let state = &self.listeners[li].state;
        let routed = !state.config.routes.is_empty();
        if let Err(reason) = conn.proxy_header_read(parsed.source, routed, state, self.now) {
            state.counters.worker(self.id).reject(reason);
            return self.close(key, End::Refused(reason));
        }
        if routed {
            // SNI routing: the hello follows the header (perhaps already held); the header's
            // deadline and timer entry carry over.
            return self.read_hello(key);
        }
        // The header-phase timer entry fires no later than this connect's deadline
        // (`header_timer`) and re-arms for it.
        self.first_connect(key, li, None);
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
