//! The end of TCP connections: the timer visit (`expire_timers`: when an entry fires, the
//! real deadline is recomputed from `last_active`, the bytes moved are reported to the
//! backend, and a connection past its PROXY-header, connect, first-byte or idle deadline is
//! retried or closed) and `close`, which takes a connection out of the slab, writes its
//! access-log line when the listener has one and drops it, which releases everything it
//! counted against.
//!
//! Hot path: runs every loop turn; each connection is visited about once per wheel revolution
//! or deadline. Invariants: a connection in the slab has exactly one timer entry; an entry
//! whose generation is not the slab's was left by a closed connection and is skipped; `close`
//! is the only way out of the slab, every caller says why ([`End`], which decides the reset,
//! together with the bytes still held when a timeout or the drain cuts the connection), and
//! the drop at its end gives back every count the connection held (backend, listener, global,
//! per-client: its `Admission` and `BackendLease`), with no decrement written here.

use crate::metrics::RejectReason;

use super::access_log::{self, End, TcpLine};
use super::conn::Phase;
use super::Worker;

/// How often a connection that moves bytes adds them to its backend's shared counters
/// (`l4lb_backend_bytes_total`): live for a scrape, without a shared write per read.
const BYTES_REPORT_MS: u64 = 1000;

impl Worker {
    pub(super) fn expire_timers(&mut self) {
        if self.timers.is_empty() {
            return;
        }
        let mut fired = std::mem::take(&mut self.fired);
        self.timers.expire(self.now, |e| fired.push(e));
        for entry in fired.drain(..) {
            let Some(conn) = self.conns.get_mut(entry.key) else {
                continue;
            };
            if conn.generation() != entry.generation {
                continue;
            }
            let config = &self.listeners[conn.listener()].state.config;
            let deadline = conn.deadline(config);
            let phase = conn.phase();
            if self.now < deadline {
                let at = match phase {
                    Phase::ProxyHeader { .. } | Phase::Hello { .. } => {
                        header_timer(deadline, self.now, config)
                    }
                    // Busy: come back soon so the byte counters stay live.
                    _ if conn.report_bytes() => deadline.min(self.now + BYTES_REPORT_MS),
                    _ => deadline,
                };
                self.timers.insert(at, entry);
                continue;
            }
            match phase {
                Phase::ProxyHeader { .. } => {
                    // No complete PROXY header in time.
                    self.listeners[conn.listener()]
                        .state
                        .counters
                        .worker(self.id)
                        .reject(RejectReason::Acl);
                    self.close(entry.key, End::ProxyHeader);
                }
                // No whole ClientHello in time (SNI routing): closed like a silent client.
                Phase::Hello { .. } => self.close(entry.key, End::FirstByteTimeout),
                Phase::Connecting { deadline, .. } if self.now >= deadline => {
                    self.connect_failed(entry.key);
                    if let Some(conn) = self.conns.get(entry.key) {
                        if conn.generation() == entry.generation {
                            let config = &self.listeners[conn.listener()].state.config;
                            self.timers.insert(conn.deadline(config), entry);
                        }
                    }
                }
                _ => {
                    // Idle, or silent past client_first_byte_timeout_ms (which may fire while
                    // the connect is still in flight).
                    let end = if self.now >= conn.first_byte_deadline(config) {
                        End::FirstByteTimeout
                    } else if conn.half_closed() && config.fin_timeout < config.idle_timeout {
                        End::FinTimeout
                    } else {
                        End::IdleTimeout
                    };
                    self.close(entry.key, end);
                }
            }
        }
        self.fired = fired;
    }

    /// Remove a connection and release everything it counted against; `end` says why (and
    /// whether both sockets are reset). The access-log line is written here when the
    /// listener, as configured at this moment, asks for one: a reload that switches it
    /// applies to connections already open too.
    pub(super) fn close(&mut self, key: usize, end: End) {
        let Some(mut conn) = self.conns.remove(key) else {
            return;
        };
        // A timeout or the drain that cuts a connection with bytes still held here resets
        // both sides: a FIN would let the peer take the cut stream for a complete one.
        if end.resets() || (end.cuts() && conn.holds_bytes()) {
            conn.set_linger_zero();
        }
        conn.release_buffers(&mut self.io);
        conn.report_bytes();
        let state = &self.listeners[conn.listener()].state;
        if state.config.access_log {
            let (bytes_to_backend, bytes_to_client) = conn.bytes();
            access_log::tcp(
                &self.shared.access_log,
                &TcpLine {
                    listener: &state.config.name,
                    client: conn.client_addr(),
                    backend: conn.backend().map(|b| b.name.as_str()),
                    duration_ms: self.now.saturating_sub(conn.accepted_at()),
                    bytes_to_backend,
                    bytes_to_client,
                    end,
                },
            );
        }
        // Dropping the connection gives back every count it holds (its admission and backend
        // lease) and closes its sockets, which also takes them out of the epoll set.
    }
}

/// When to arm the timer entry of a connection awaiting its PROXY header (real deadline
/// `deadline`): no later than one connect timeout from now, so that once the header is in,
/// the same entry fires before the connect's deadline (which is at least that far away) and
/// re-arms for it. A connection keeps a single entry through both phases.
pub(super) fn header_timer(
    deadline: u64,
    now_ms: u64,
    config: &crate::config::ListenerConfig,
) -> u64 {
    deadline.min(now_ms + config.connect_timeout.as_millis() as u64)
}
