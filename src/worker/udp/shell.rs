//! The socket shell of UDP balancing: the worker's event handlers for a readable listener
//! socket and a readable session socket, the reply flush, expiry and teardown. Every decision
//! is the sans-io core's ([`super::session`]) or shared with TCP (`worker::admission` admits a
//! new session, `worker::pick` picks and connects its backend, with retries and passive
//! health); this file only moves datagrams and classifies errors. Every session that ends after it opened goes through `end_session`, which writes
//! its access-log line when the listener has one; a datagram refused before a session opens
//! is counted, not logged (a flood of them would otherwise be a line per datagram), and so is
//! a session whose socket could not be registered (a connect failure).
//!
//! Hot path. Errors never leave these functions: `WouldBlock` ends a read loop, `Interrupted`
//! retries, ECONNREFUSED/unreachable on a session socket is a passive failure of its backend
//! and closes that session, and anything else drops the datagram(s) concerned with a counter.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use mio::net::UdpSocket;
use mio::Interest;

use crate::balancer::FlowKey;
use crate::metrics::{RejectReason, UdpDrop};
use crate::net::connect::udp_connect;
use crate::net::io::{classify, IoClass};
use crate::net::udp::{is_unreachable, Batch, BATCH};
use crate::state::SharedState;
use crate::worker::access_log::{self, SessionEnd, UdpLine};
use crate::worker::admission::Admission;
use crate::worker::pick::{
    connect_next, passive_failure, passive_success, warn_local_shortage, Attempt, Tried,
};
use crate::worker::{tagged, ListenerSocket, Worker, WorkerListener};

use super::session::Session;
use super::{session_token, Again, LISTENER_BATCHES_PER_TURN, NO_SESSION, SESSION_READS_PER_TURN};

/// The IP protocol number of UDP, for `FlowKey`.
const IPPROTO_UDP: u8 = 17;

impl Worker {
    /// Counts `n` datagrams of listener `li` dropped for `reason`.
    pub(super) fn udp_dropped(&self, li: usize, reason: UdpDrop, n: u64) {
        self.listeners[li]
            .state
            .counters
            .worker(self.id)
            .udp_drop(reason, n);
    }

    fn udp_idle_ms(&self, li: usize) -> u64 {
        self.listeners[li].state.config.idle_timeout.as_millis() as u64
    }

    /// A UDP listener socket is readable: take its datagrams in batches and forward each to
    /// its client's session, opening sessions for new clients that are admitted.
    pub(in crate::worker) fn udp_listener_readable(&mut self, li: usize) {
        for _ in 0..LISTENER_BATCHES_PER_TURN {
            let pktinfo = self.listeners[li].local.is_none();
            let Some(ListenerSocket::Udp(socket)) = &self.listeners[li].socket else {
                return;
            };
            let n = match self.udp.inbound.recv(socket, 0, BATCH, true, pktinfo) {
                Ok(n) => n,
                Err(e) => match classify(&e) {
                    IoClass::WouldBlock => return,
                    IoClass::Retry => continue,
                    _ => {
                        // An unconnected socket reports no ICMP errors; this is local trouble
                        // (memory). The next datagram raises a new edge.
                        log::debug!("worker {}: udp listener recv: {e}", self.id);
                        return;
                    }
                },
            };
            self.udp_route(li, n);
            if n < BATCH {
                // A short batch emptied the queue: the next datagram raises a new edge.
                return;
            }
        }
        self.udp.again.push(Again::Listener(li));
    }

    /// Forward the `n` datagrams in the inbound batch, received on listener `li`.
    fn udp_route(&mut self, li: usize, n: usize) {
        let mut last: Option<(SocketAddr, usize)> = None;
        for i in 0..n {
            self.udp.routes[i] = NO_SESSION;
            if self.udp.inbound.truncated(i) {
                self.udp_dropped(li, UdpDrop::Truncated, 1);
                continue;
            }
            let Some(from) = self.udp.inbound.remote(i) else {
                continue;
            };
            let key = match last {
                // Bursts of one client are common: skip the hash lookup.
                Some((addr, key)) if addr == from => Some(key),
                _ => self.udp_session_for(li, from, self.udp.inbound.local(i)),
            };
            if let Some(key) = key {
                self.udp.routes[i] = key;
                last = Some((from, key));
            }
        }
        let mut i = 0;
        while i < n {
            let key = self.udp.routes[i];
            let mut j = i + 1;
            while j < n && self.udp.routes[j] == key {
                j += 1;
            }
            if key != NO_SESSION {
                self.udp_send_run(li, key, i, j);
            }
            i = j;
        }
    }

    /// The session of client `from` on listener `li`: its own, or a new one when it is
    /// admitted (`local`: the address it sent to, for a wildcard listener).
    pub(super) fn udp_session_for(
        &mut self,
        li: usize,
        from: SocketAddr,
        local: Option<IpAddr>,
    ) -> Option<usize> {
        match self.udp.sessions.find(li, from) {
            Some(key) => Some(key),
            None => self.udp_open(li, from, local),
        }
    }

    /// Send inbound slots `start..end` (all of one session) to its backend: one sendmmsg.
    fn udp_send_run(&mut self, li: usize, key: usize, start: usize, end: usize) {
        let udp = &mut self.udp;
        let Some(s) = udp.sessions.get_mut(key) else {
            // Closed earlier in this batch (its backend refused a datagram).
            self.udp_dropped(li, UdpDrop::SendFailed, (end - start) as u64);
            return;
        };
        let to = SendTo::Backend(s, self.now);
        let (dropped, refused) = send_slots(&mut udp.inbound, start, end, to);
        if dropped > 0 {
            self.udp_dropped(li, UdpDrop::SendFailed, dropped);
        }
        if refused {
            self.udp_backend_refused(key);
        }
    }

    /// Admission, backend pick and socket for a client without a session. `None` when
    /// refused (counted by reason) or when no backend socket could be opened.
    fn udp_open(&mut self, li: usize, client: SocketAddr, local: Option<IpAddr>) -> Option<usize> {
        let now = self.now;
        let idle_ms = self.udp_idle_ms(li);
        let wl = &mut self.listeners[li];
        let state = wl.state.clone();
        let counters = state.counters.worker(self.id);
        let admission = match Admission::admit(&state, &self.shared, client.ip(), now) {
            Ok(a) => a,
            Err(reason) => {
                counters.reject(reason);
                return None;
            }
        };
        // Replies of a wildcard listener leave from the address the client sent to.
        let reply_from = if wl.local.is_none() { local } else { None };
        let flow_key = FlowKey {
            client,
            local: match (wl.local, local) {
                (Some(addr), _) => addr,
                (None, Some(ip)) => SocketAddr::new(ip, state.config.bind.port()),
                (None, None) => state.config.bind,
            },
            protocol: IPPROTO_UDP,
        };
        let pool = state.pool.load();
        let mut tried = Tried::default();
        match connect_next(
            wl,
            &pool,
            0,
            &flow_key,
            &mut tried,
            now,
            |addr, source, _| udp_connect(addr, source),
        ) {
            Attempt::Started(started) => {
                let mut session = Session::new(
                    li,
                    client,
                    reply_from,
                    started.socket,
                    started.lease,
                    admission,
                    now,
                );
                session.opened_us = started.started_us;
                let key = self.udp.sessions.insert(session, idle_ms);
                let registered = match self.udp.sessions.get_mut(key) {
                    Some(_) if self.udp.on_ring => {
                        self.udp_ring_arm_session(key);
                        Ok(())
                    }
                    Some(s) => self.registry.register(
                        &mut s.socket,
                        tagged(self.tag, session_token(key)),
                        Interest::READABLE,
                    ),
                    None => Ok(()),
                };
                if let Err(e) = registered {
                    log::warn!("worker {}: cannot register a UDP session: {e}", self.id);
                    if let Some(s) = self.udp.sessions.remove(key) {
                        drop(s.release());
                    }
                    counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                Some(key)
            }
            Attempt::LocalShortage(e) => {
                // No local port (EAGAIN), descriptor or memory: our trouble, never the
                // backend's; refuse this session and go on.
                let (last, id) = (&mut self.last_local_warn, self.id);
                warn_local_shortage(last, now, id, &state.config.name, &e);
                counters.reject(RejectReason::LocalResources);
                None
            }
            // Dropping `admission` gives its counts back.
            Attempt::NoBackend => {
                counters.reject(RejectReason::NoBackend);
                None
            }
            Attempt::Exhausted => {
                counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// A session socket is readable (or reports an error): receive the backend's datagrams
    /// straight into the reply batch, addressed to the session's client.
    pub(in crate::worker) fn udp_session_event(&mut self, key: usize) {
        for _ in 0..SESSION_READS_PER_TURN {
            if self.udp.out_len == BATCH {
                self.udp_flush();
            }
            let Some(listener) = self.udp.sessions.get(key).map(|s| s.listener) else {
                return;
            };
            if self.udp.out_len > 0 && self.udp.out_listener != listener {
                self.udp_flush();
            }
            let now = self.now;
            let udp = &mut self.udp;
            let Some(s) = udp.sessions.get_mut(key) else {
                return;
            };
            let start = udp.out_len;
            let n = match udp.outbound.recv(&s.socket, start, BATCH, false, false) {
                Ok(n) => n,
                Err(e) if is_unreachable(&e) => {
                    self.udp_backend_refused(key);
                    return;
                }
                Err(e) => match classify(&e) {
                    IoClass::WouldBlock => return,
                    IoClass::Retry => continue,
                    _ => {
                        log::debug!("worker {}: udp session recv: {e}", self.id);
                        self.udp_close(key, SessionEnd::Error);
                        return;
                    }
                },
            };
            let mut kept = start;
            let mut truncated = 0;
            for m in start..start + n {
                if udp.outbound.truncated(m) {
                    truncated += 1;
                    continue;
                }
                udp.outbound.move_slot(m, kept);
                udp.outbound.address(kept, s.client, s.local);
                s.to_client(udp.outbound.len_of(kept), now);
                kept += 1;
            }
            udp.out_len = kept;
            udp.out_listener = s.listener;
            if !s.answered && kept > start {
                // The first reply: the backend's passive streak ends, and for least_latency
                // the time to it is the sample.
                s.answered = true;
                passive_success(&s.backend, s.opened_us);
            }
            let answered_enough =
                s.answered_enough(self.listeners[listener].state.config.udp_responses);
            if truncated > 0 {
                self.udp_dropped(listener, UdpDrop::Truncated, truncated);
            }
            if answered_enough {
                // udp_responses: the replies are already in the batch; the session (and its
                // local port) ends now instead of after the idle timeout.
                self.udp_close(key, SessionEnd::Responses);
                return;
            }
            if start + n < BATCH {
                // Short read: the socket's queue is empty.
                return;
            }
        }
        if let Some(s) = self.udp.sessions.get(key) {
            let generation = s.generation;
            self.udp.again.push(Again::Session { key, generation });
        }
    }

    /// Send the batched replies on their listener's socket: one sendmmsg for up to 32 replies
    /// of any sessions. Called when the batch is full, before a reply of another listener,
    /// and once per loop turn after every event was handled.
    pub(in crate::worker) fn udp_flush(&mut self) {
        let n = std::mem::take(&mut self.udp.out_len);
        if n == 0 {
            return;
        }
        let li = self.udp.out_listener;
        let dropped = match &self.listeners[li].socket {
            Some(ListenerSocket::Udp(socket)) => {
                send_slots(&mut self.udp.outbound, 0, n, SendTo::Clients(socket)).0
            }
            _ => n as u64,
        };
        if dropped > 0 {
            self.udp_dropped(li, UdpDrop::SendFailed, dropped);
        }
    }

    /// The backend answered a session with ICMP port (or host) unreachable: a passive failure
    /// of that backend, as a refused TCP connect is; the session closes, and the client's next
    /// datagram opens a new one on a backend picked afresh.
    pub(super) fn udp_backend_refused(&mut self, key: usize) {
        let Some(s) = self.udp.sessions.remove(key) else {
            return;
        };
        passive_failure(&s.backend, &self.listeners[s.listener].state, self.now);
        let generation = s.generation;
        let socket = end_session(
            &self.listeners,
            &self.shared,
            self.now,
            s,
            SessionEnd::Refused,
        );
        self.udp.retire_socket(self.tag, key, generation, socket);
    }

    pub(super) fn udp_close(&mut self, key: usize, end: SessionEnd) {
        if let Some(s) = self.udp.sessions.remove(key) {
            let generation = s.generation;
            let socket = end_session(&self.listeners, &self.shared, self.now, s, end);
            self.udp.retire_socket(self.tag, key, generation, socket);
        }
    }

    /// Drive the sockets that used up their budget in the previous turn.
    pub(in crate::worker) fn udp_drive_again(&mut self) {
        if self.udp.again.is_empty() {
            return;
        }
        let mut again = std::mem::take(&mut self.udp.again_spare);
        std::mem::swap(&mut again, &mut self.udp.again);
        for &work in &again {
            match work {
                Again::Listener(li) => self.udp_listener_readable(li),
                Again::Session { key, generation } => {
                    if self
                        .udp
                        .sessions
                        .get(key)
                        .is_some_and(|s| s.generation == generation)
                    {
                        self.udp_session_event(key);
                    }
                }
            }
        }
        again.clear();
        self.udp.again_spare = again;
    }

    /// Close the sessions that were idle for their listener's `idle_timeout_s`.
    pub(in crate::worker) fn udp_expire(&mut self) {
        let listeners = &self.listeners;
        let shared = &self.shared;
        let now = self.now;
        let tag = self.tag;
        let super::UdpPlane {
            sessions,
            ops,
            closing,
            on_ring,
            ..
        } = &mut self.udp;
        sessions.expire(
            now,
            |li| listeners[li].state.config.idle_timeout.as_millis() as u64,
            |key, s| {
                let generation = s.generation;
                let socket = end_session(listeners, shared, now, s, SessionEnd::IdleTimeout);
                super::retire(ops, closing, *on_ring, (tag, key, generation), socket);
            },
        );
    }

    /// Close the sessions of listener `li` (`None`: of every listener) and forget its pending
    /// replies: without its socket, nothing can be answered. Control path (reload, drain).
    pub(in crate::worker) fn udp_close_sessions(&mut self, li: Option<usize>) {
        if li.is_none_or(|li| self.udp.out_listener == li) {
            self.udp.out_len = 0;
        }
        for key in self.udp.sessions.keys() {
            if li.is_none_or(|li| self.udp.sessions.get(key).is_some_and(|s| s.listener == li)) {
                self.udp_close(key, SessionEnd::Shutdown);
            }
        }
        self.udp.again.retain(|w| match (w, li) {
            (_, None) => false,
            (Again::Listener(l), Some(li)) => *l != li,
            (Again::Session { .. }, Some(_)) => true,
        });
    }
}

/// Release a session that left the table, after writing its access-log line when its
/// listener has one; returns its socket, for `UdpPlane::retire_socket`. Dropping the socket
/// closes it, which also takes it out of the epoll set.
fn end_session(
    listeners: &[WorkerListener],
    shared: &SharedState,
    now_ms: u64,
    session: Session<UdpSocket>,
    end: SessionEnd,
) -> UdpSocket {
    let config = &listeners[session.listener].state.config;
    if config.access_log {
        access_log::udp(
            &shared.access_log,
            &UdpLine {
                listener: &config.name,
                client: session.client,
                backend: &session.backend.name,
                duration_ms: now_ms.saturating_sub(session.opened_at),
                stats: session.totals(),
                end,
            },
        );
    }
    session.release()
}

/// Where [`send_slots`] sends a batch.
enum SendTo<'a> {
    /// To a session's backend on its connected socket, counting each datagram sent on the
    /// session (the `u64` is now, in ms).
    Backend(&'a mut Session<UdpSocket>, u64),
    /// To clients on the listener's socket, each slot to its own address.
    Clients(&'a UdpSocket),
}

/// sendmmsg(2) of `batch` slots `start..end`, as many calls as it takes; returns how many
/// datagrams were dropped and whether the backend refused. UDP drops rather than queue: a call
/// that sends nothing or a full socket buffer drops the rest; a failure of one datagram (e.g.
/// a client address the route refuses) drops that one only; on a session socket, an ICMP
/// unreachable (from an earlier datagram, reported now) drops the rest and means refused.
fn send_slots(batch: &mut Batch, start: usize, end: usize, mut to: SendTo<'_>) -> (u64, bool) {
    let mut dropped = 0u64;
    let mut at = start;
    while at < end {
        let sent = match &to {
            SendTo::Backend(s, _) => batch.send(&s.socket, at, end, false),
            SendTo::Clients(socket) => batch.send(*socket, at, end, true),
        };
        match sent {
            Ok(k) if k > 0 => {
                if let SendTo::Backend(s, now) = &mut to {
                    for m in at..at + k {
                        s.to_backend(batch.len_of(m), *now);
                    }
                }
                at += k;
            }
            Ok(_) => {
                dropped += (end - at) as u64;
                break;
            }
            Err(e) if matches!(to, SendTo::Backend(..)) && is_unreachable(&e) => {
                return (dropped + (end - at) as u64, true);
            }
            Err(e) => match classify(&e) {
                IoClass::Retry => {}
                IoClass::WouldBlock => {
                    dropped += (end - at) as u64;
                    break;
                }
                _ => {
                    dropped += 1;
                    at += 1;
                }
            },
        }
    }
    (dropped, false)
}
