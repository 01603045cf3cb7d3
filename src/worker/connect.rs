//! Backend connects of TCP connections, from start to outcome: the first connect of an
//! admitted connection, each attempt (`pick::connect_next`: the balancer's pick, the
//! `source` address, retries on other backends up to `connect_retries`, passive failures:
//! the rules UDP shares), the completion event (`connected`: the passive streak ends,
//! `least_latency` gets its sample, the PROXY header for the backend goes out) and the
//! failure of a connect in flight (`connect_failed`: blame the backend, try the next).
//!
//! Hot path: runs once per connection and once per retry. Invariants: a connection is
//! `Connecting` exactly while a connect of its own is in flight (`Conn::start_connect`,
//! `Conn::connected`, `Conn::connect_failed` are the only transitions in and out); a shortage
//! of this host (no local port or address, out of descriptors or memory) never blames the
//! backend: the connection is refused as `local_resources` with a rate-limited warning, and a
//! descriptor or memory shortage also pauses accepting on every listener; no Maglev table is
//! rebuilt here, only `pool_dirty` set.

use std::sync::atomic::Ordering;

use mio::Interest;

use crate::balancer::FlowKey;
use crate::config::{Algorithm, ProxyProtocol};
use crate::metrics::RejectReason;
use crate::net::connect::tcp_connect;
use crate::net::io::is_accept_resource_error;

use super::accept::ACCEPT_BACKOFF_MS;
use super::access_log::End;
use super::conn::ConnectState;
use super::pick::{connect_next, passive_failure, passive_success, warn_local_shortage, Attempt};
use super::timer::TimerEntry;
use super::{conn_token, tagged, Worker};

/// The IP protocol number of TCP, for `FlowKey`.
const IPPROTO_TCP: u8 = 6;

impl Worker {
    /// The first connect of an admitted connection in the slab (`key`, of listener `li`): on
    /// failure it is closed with a reset (counted as `no_backend` or a connect failure), else
    /// counted as accepted. `arm`: the connection's generation when it has no timer entry yet.
    pub(super) fn first_connect(&mut self, key: usize, li: usize, arm: Option<u32>) {
        let outcome = self.connect(key);
        if outcome != ConnectStart::Started {
            let counters = self.listeners[li].state.counters.worker(self.id);
            let end = match outcome {
                ConnectStart::NoBackend | ConnectStart::LocalError => {
                    let reason = outcome.refusal();
                    counters.reject(reason);
                    End::Refused(reason)
                }
                _ => {
                    counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                    End::ConnectFailed
                }
            };
            self.close(key, end);
            return;
        }
        self.listeners[li]
            .state
            .counters
            .worker(self.id)
            .accepted
            .fetch_add(1, Ordering::Relaxed);
        if let (Some(generation), Some(conn)) = (arm, self.conns.get(key)) {
            let config = &self.listeners[li].state.config;
            self.timers
                .insert(conn.deadline(config), TimerEntry { key, generation });
        }
    }

    /// Start a connect to the next backend the balancer picks (`pick::connect_next`, the
    /// rules UDP shares), registered as the connection's backend side.
    fn connect(&mut self, key: usize) -> ConnectStart {
        let Some(conn) = self.conns.get_mut(key) else {
            return ConnectStart::NoBackend;
        };
        let wl = &mut self.listeners[conn.listener()];
        let pool = wl.state.pool.load();
        let group = conn.group();
        let local = match wl.local {
            Some(addr) => addr,
            None if pool.algorithm_of(group) == Some(Algorithm::FiveTupleHash) => {
                conn.local_addr().unwrap_or(wl.state.config.bind)
            }
            None => wl.state.config.bind,
        };
        let flow_key = FlowKey {
            client: conn.client_addr(),
            local,
            protocol: IPPROTO_TCP,
        };
        let registry = &self.registry;
        let token = tagged(self.tag, conn_token(key, true));
        let attempt = connect_next(
            wl,
            &pool,
            group,
            &flow_key,
            conn.tried_mut(),
            self.now,
            |addr, source, config| {
                let congestion = config.backend_congestion_control.as_deref();
                let mut s = tcp_connect(addr, source, congestion)?;
                let _ = s.set_nodelay(true);
                registry.register(&mut s, token, Interest::READABLE | Interest::WRITABLE)?;
                Ok(s)
            },
        );
        match attempt {
            Attempt::Started(started) => {
                let deadline = self.now + wl.state.config.connect_timeout.as_millis() as u64;
                conn.start_connect(
                    started.socket,
                    started.lease,
                    started.index,
                    deadline,
                    started.started_us,
                );
                ConnectStart::Started
            }
            Attempt::NoBackend => ConnectStart::NoBackend,
            Attempt::Exhausted => ConnectStart::Exhausted,
            Attempt::LocalShortage(e) => {
                // Out of descriptors or memory also stops accepting until the back-off is
                // over (a port shortage does not: other backends or sources may have room).
                let name = &wl.state.config.name;
                warn_local_shortage(&mut self.last_local_warn, self.now, self.id, name, &e);
                if is_accept_resource_error(&e) {
                    for l in &mut self.listeners {
                        l.paused_until = Some(self.now + ACCEPT_BACKOFF_MS);
                    }
                }
                ConnectStart::LocalError
            }
        }
    }

    /// An event on the backend socket of a connection that is `Connecting`: `writable`, or
    /// `failed` (EPOLLERR or EPOLLHUP).
    pub(super) fn connect_event(&mut self, key: usize, writable: bool, failed: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.check_connect(writable, failed) {
            ConnectState::InProgress => {}
            ConnectState::Failed => self.connect_failed(key),
            ConnectState::Connected => self.connected(key),
        }
    }

    /// The handshake completed: the backend's passive streak ends (and `least_latency` gets
    /// its sample), the connection is `Forwarding`, and with `proxy_protocol` the header for
    /// the backend is sent (or queued) first. Its first bytes move in the worker's second
    /// pass, which sees the same event again.
    fn connected(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let started_us = conn.connected(self.now);
        if let Some(b) = conn.backend() {
            passive_success(b, started_us);
        }
        let wl = &self.listeners[conn.listener()];
        let version = wl.state.config.proxy_protocol;
        if version != ProxyProtocol::Off {
            let dest = match wl.local {
                Some(addr) => addr,
                None => conn.local_addr().unwrap_or(wl.state.config.bind),
            };
            if conn.send_proxy_header(version, dest, &mut self.io).is_err() {
                self.close(key, End::Reset);
            }
        }
    }

    /// The connect in flight failed (refused, unreachable, or timed out): count it against the
    /// backend and try another, or give up with a reset to the client.
    pub(super) fn connect_failed(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let li = conn.listener();
        if let Some(lease) = conn.connect_failed() {
            passive_failure(&lease, &self.listeners[li].state, self.now);
        }
        let outcome = self.connect(key);
        if outcome == ConnectStart::LocalError {
            let reason = outcome.refusal();
            self.listeners[li]
                .state
                .counters
                .worker(self.id)
                .reject(reason);
            self.close(key, End::Refused(reason));
        } else if outcome != ConnectStart::Started {
            self.listeners[li]
                .state
                .counters
                .worker(self.id)
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
            self.close(key, End::ConnectFailed);
        }
    }
}

/// How a connect attempt started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectStart {
    /// A connect is in flight.
    Started,
    /// No backend can take the connection (all down, drained, full...).
    NoBackend,
    /// Every allowed attempt failed.
    Exhausted,
    /// This host is out of local ports, descriptors or memory.
    LocalError,
}

impl ConnectStart {
    /// The refusal reason of an outcome that refuses the client (no backend, local shortage).
    fn refusal(self) -> RejectReason {
        match self {
            ConnectStart::LocalError => RejectReason::LocalResources,
            _ => RejectReason::NoBackend,
        }
    }
}
