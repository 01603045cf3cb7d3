//! TLS SNI routing in the worker: a listener with `[[listener.route]]` tables reads each
//! client's ClientHello before connecting (`Phase::Hello`), picks the route its
//! server name matches, and connects to a backend of that route's pool group; the hello, held
//! in the client-to-backend buffer, is the first thing the backend receives (after the PROXY
//! header l4lb sends, if any).
//!
//! Hot path for routed listeners only (a listener without routes never gets here: one
//! emptiness test at accept). Per routed connection: one parse per read of the hello (bounded
//! by `tls_sni::MAX_HELLO`) and one pass over the route patterns; no allocation. Invariants:
//! a connection leaves `Phase::Hello` exactly once, into `first_connect` or `close`; every
//! refusal is counted (`tls_hello` for no valid hello, `no_route` when nothing matches and
//! the listener has no backends of its own); a client that sends no whole hello in time is
//! closed by its timer entry (`expiry`), like a silent one.

use crate::config::RouteConfig;
use crate::metrics::RejectReason;
use crate::tls_sni::{self, ServerName};

use super::access_log::End;
use super::conn::HelloRead;
use super::expiry::header_timer;
use super::timer::TimerEntry;
use super::Worker;

impl Worker {
    /// An admitted connection of a routed listener (no PROXY header expected): wait for its
    /// hello, with `client_first_byte_timeout_ms` (5000 by default for routed listeners) as
    /// the deadline, in the connection's single timer entry.
    pub(super) fn await_hello(&mut self, key: usize, generation: u32, li: usize) {
        let config = &self.listeners[li].state.config;
        let timeout = config
            .client_first_byte_timeout
            .unwrap_or(config.connect_timeout)
            .as_millis() as u64;
        let deadline = self.now + timeout;
        let first = header_timer(deadline, self.now, config);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.await_hello(deadline);
            self.timers.insert(first, TimerEntry { key, generation });
        }
    }

    /// A readable event while `Hello` (or the PROXY header was just accepted): read;
    /// once the hello is whole, choose the route and connect.
    pub(super) fn read_hello(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let li = conn.listener();
        let name = match conn.read_hello(&mut self.io) {
            HelloRead::Pending => return,
            HelloRead::Done(name) => name,
            HelloRead::Refused => return self.refuse_routed(key, li, RejectReason::TlsHello),
        };
        let state = &self.listeners[li].state;
        let group = route_group(&state.config.routes, name.as_ref());
        if group == 0 && state.pool.load().group_is_empty(0) {
            return self.refuse_routed(key, li, RejectReason::NoRoute);
        }
        conn.hello_read(group);
        // The timer entry armed at accept fires no later than this connect's deadline
        // (`header_timer`) and re-arms for it.
        self.first_connect(key, li, None);
    }

    fn refuse_routed(&mut self, key: usize, li: usize, reason: RejectReason) {
        self.listeners[li]
            .state
            .counters
            .worker(self.id)
            .reject(reason);
        self.close(key, End::Refused(reason));
    }
}

/// The pool group for a hello that names `name`: `r + 1` for the first route `r` with a
/// matching pattern, 0 (the listener's own backends) for no match or no name.
pub(super) fn route_group(routes: &[RouteConfig], name: Option<&ServerName>) -> usize {
    let Some(name) = name else {
        return 0;
    };
    routes
        .iter()
        .position(|r| r.sni.iter().any(|p| tls_sni::matches(p, name.as_bytes())))
        .map_or(0, |r| r + 1)
}
