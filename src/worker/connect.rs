//! Backend connects of TCP connections: the balancer's pick, the non-blocking connect(2),
//! retries on other backends up to `connect_retries`, and passive health: a failed connect
//! counts against its backend, and `fall` of them in a row mark it down (UDP sessions use the
//! same rule, `passive_failure`).
//!
//! Hot path: runs once per connection and once per retry. Invariants: a backend's `active`
//! counts a connection from the start of its connect and is given back on failure or at close
//! (the unit `backend_ref` holds); a connection never tries a backend twice (`tried`); a
//! shortage of this host (no local port or address, out of descriptors or memory:
//! `net::connect::is_local_shortage`) never blames the backend: the connection is refused as
//! `local_resources` with a rate-limited warning, and a descriptor or memory shortage also
//! pauses accepting on every listener; no Maglev table is rebuilt here, only `pool_dirty` set.
//! Backend sockets bind the listener's `source` addresses round robin (`next_source`).

use std::sync::atomic::Ordering;

use mio::Interest;

use crate::backend::Backend;
use crate::balancer::{Algorithm, FlowKey};
use crate::metrics::RejectReason;
use crate::net::connect::{is_local_shortage, pick_source, tcp_connect};
use crate::net::io::is_accept_resource_error;
use crate::state::ListenerState;

use super::accept::ACCEPT_BACKOFF_MS;
use super::access_log::End;
use super::timer::TimerEntry;
use super::{conn_token, Worker};

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

    /// Start a connect to the next backend the balancer picks. `false` when no backend is left
    /// to try (none available, or `connect_retries` exhausted).
    fn connect(&mut self, key: usize) -> ConnectStart {
        let Some(conn) = self.conns.get_mut(key) else {
            return ConnectStart::NoBackend;
        };
        let wl = &mut self.listeners[conn.listener];
        let retries = wl.state.config.connect_retries as usize;
        let pool = wl.state.pool.load();
        // The algorithm of the connection's group (SNI route); None if a reload removed it.
        let algorithm = pool.algorithm_of(conn.group);
        let local = match wl.local {
            Some(addr) => addr,
            None if algorithm == Some(Algorithm::FiveTupleHash) => {
                conn.client.local_addr().unwrap_or(wl.state.config.bind)
            }
            None => wl.state.config.bind,
        };
        let flow_key = FlowKey {
            client: conn.client_addr,
            local,
            protocol: 6,
        };
        while conn.tried_len <= retries {
            let Some(index) = wl
                .selector
                .pick_in(&pool, conn.group, &flow_key, conn.tried())
            else {
                return if conn.tried_len == 0 {
                    ConnectStart::NoBackend
                } else {
                    ConnectStart::Exhausted
                };
            };
            let backend = pool.backends()[index].clone();
            backend.active.fetch_add(1, Ordering::Relaxed);
            backend.total.fetch_add(1, Ordering::Relaxed);
            let source = pick_source(&wl.state.config.source, backend.addr, wl.next_source);
            if source.is_some() {
                wl.next_source = wl.next_source.wrapping_add(1);
            }
            let started = tcp_connect(backend.addr, source).and_then(|mut s| {
                let _ = s.set_nodelay(true);
                self.poll.registry().register(
                    &mut s,
                    conn_token(key, true),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                Ok(s)
            });
            match started {
                Ok(stream) => {
                    conn.backend = Some(stream);
                    conn.backend_ref = Some(backend);
                    conn.backend_index = index;
                    conn.backend_ready = Default::default();
                    conn.connecting = true;
                    conn.connect_deadline =
                        self.now + wl.state.config.connect_timeout.as_millis() as u64;
                    conn.connect_started_us = if algorithm == Some(Algorithm::LeastLatency) {
                        crate::clock::monotonic_us()
                    } else {
                        0
                    };
                    return ConnectStart::Started;
                }
                Err(e) if is_local_shortage(&e) => {
                    // This host's shortage, not the backend's fault: no passive failure. Out
                    // of descriptors or memory also stops accepting until the back-off is
                    // over (a port shortage does not: other backends or sources may have room).
                    backend.active.fetch_sub(1, Ordering::Relaxed);
                    backend.total.fetch_sub(1, Ordering::Relaxed);
                    let name = &wl.state.config.name;
                    warn_local_shortage(&mut self.last_local_warn, self.now, self.id, name, &e);
                    if is_accept_resource_error(&e) {
                        for l in &mut self.listeners {
                            l.paused_until = Some(self.now + ACCEPT_BACKOFF_MS);
                        }
                    }
                    return ConnectStart::LocalError;
                }
                Err(_) => {
                    backend.active.fetch_sub(1, Ordering::Relaxed);
                    passive_failure(&backend, &wl.state, self.now);
                    conn.record_failed(index);
                }
            }
        }
        ConnectStart::Exhausted
    }

    /// The connect in flight failed (refused, unreachable, or timed out): count it against the
    /// backend and try another, or give up with a reset to the client.
    pub(super) fn connect_failed(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.backend = None;
        if let Some(b) = conn.backend_ref.take() {
            b.active.fetch_sub(1, Ordering::Relaxed);
            passive_failure(&b, &self.listeners[conn.listener].state, self.now);
        }
        let index = conn.backend_index;
        conn.record_failed(index);
        let li = conn.listener;
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

/// Warn about a local shortage at most once a second per worker (`last` holds the time of the
/// last warning): a flood of refusals must not become a flood of log lines.
pub(super) fn warn_local_shortage(
    last: &mut Option<u64>,
    now: u64,
    worker: usize,
    listener: &str,
    e: &std::io::Error,
) {
    if last.is_some_and(|t| now < t + 1000) {
        return;
    }
    *last = Some(now);
    log::warn!(
        "worker {worker}: listener {listener}: no local resources for a backend socket ({e}); \
         refusing as local_resources (see source = [...] and docs/operations.md)"
    );
}

/// Failures in a row that mark a backend down when the listener has no `health_check` (and
/// so no `fall` of its own): HAProxy's default `fall` is 3 as well.
const DEFAULT_PASSIVE_FALL: u32 = 3;

/// A refused or timed-out connect: count it, and mark the backend down once `fall` of them
/// happened in a row. The pool is republished by the health thread (`pool_dirty`), never here.
pub(super) fn passive_failure(backend: &Backend, listener: &ListenerState, now_ms: u64) {
    backend.connect_errors.fetch_add(1, Ordering::Relaxed);
    let failures = backend.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
    let fall = listener
        .config
        .health_check
        .as_ref()
        .map_or(DEFAULT_PASSIVE_FALL, |h| h.fall);
    if failures >= fall && backend.set_healthy(false) {
        backend.down_since_ms.store(now_ms, Ordering::Relaxed);
        backend.consecutive_successes.store(0, Ordering::Relaxed);
        listener.pool_dirty.store(true, Ordering::Release);
        log::info!(
            "listener {}: backend {} is DOWN ({failures} failed connects in a row)",
            listener.config.name,
            backend.name
        );
    }
}
