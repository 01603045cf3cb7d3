//! One proxied TCP connection: the client socket, the backend socket once chosen, and the two
//! directions between them.
//!
//! Hot path. Lifecycle: [`AwaitingProxyHeader`, only with `accept_proxy_protocol`: the client
//! is read until a whole PROXY header is in, nothing is connected yet] -> `Connecting` (client
//! accepted, non-blocking connect to a backend in flight; the client is not read, so it is held
//! back by TCP flow control) -> `Forwarding` (both directions pumped; with `proxy_protocol` a
//! header for the backend goes out first) -> closed when both directions have passed their EOF
//! on, or at once with a reset on both sides when either side breaks. Invariants: while
//! `awaiting_header`, `connecting` is set too, `backend` is `None` and `connect_deadline` is
//! the header's deadline; otherwise while `connecting`, `backend` is the socket of the attempt
//! in flight and `backend_ref` the backend it counts against.
//!
//! With TLS SNI routes (`[[listener.route]]`) one more phase comes before `Connecting`:
//! [`AwaitingHello`], the client is read until its whole ClientHello is held in `c2b` (after
//! the PROXY header, if any), nothing is connected yet; the hello's server name picks the
//! route (`group`), and the held hello is the first thing the backend receives. The same
//! invariants as for `awaiting_header` hold while `awaiting_hello`.
//!
//! [`AwaitingProxyHeader`]: Conn::awaiting_header
//! [`AwaitingHello`]: Conn::awaiting_hello

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mio::net::TcpStream;

use crate::backend::Backend;
use crate::config::{ListenerConfig, ProxyProtocol, SpliceMode};
use crate::limits::{ClientSlot, ClientTable};
use crate::net::io::{classify, IoClass};
use crate::proxy_protocol::{self, ParseError, Parsed};
use crate::tls_sni;

use super::flow::{Broken, Flow, IoResources, Pump, Readiness};

/// Upper bound on connect attempts (the config allows `connect_retries` up to 16).
pub const MAX_ATTEMPTS: usize = 17;

#[derive(Debug)]
pub struct Conn {
    pub listener: usize,
    pub generation: u32,
    pub client: TcpStream,
    /// The client as balancing, ACL and limits see it: the peer, or the source of the PROXY
    /// header it sent (`accept_proxy_protocol`).
    pub client_addr: SocketAddr,
    pub client_ready: Readiness,
    pub backend: Option<TcpStream>,
    pub backend_ready: Readiness,
    /// The backend this connection counts against (its `active` was incremented).
    pub backend_ref: Option<Arc<Backend>>,
    /// Index of `backend_ref` in the pool it was picked from.
    pub backend_index: usize,
    pub connecting: bool,
    /// Reading the client's PROXY header: no backend yet, client checks not done yet.
    pub awaiting_header: bool,
    /// Reading the client's TLS ClientHello (SNI routing): no backend yet.
    pub awaiting_hello: bool,
    /// The pool group backends are picked from: 0 = the listener's own, `r + 1` = SNI route
    /// `r`.
    pub group: usize,
    /// Connect timeout of the attempt in flight, or the PROXY header's deadline.
    pub connect_deadline: u64,
    /// `clock::monotonic_us` when the connect in flight started, for `least_latency`'s
    /// samples; 0 when the listener does not need them (no clock read then).
    pub connect_started_us: u64,
    /// Indices (in the pool) of backends that failed for this connection.
    pub tried: [usize; MAX_ATTEMPTS],
    pub tried_len: usize,
    pub c2b: Flow,
    pub b2c: Flow,
    /// Coarse ms clock of the last byte moved (idle timeout).
    pub last_active: u64,
    /// Coarse ms clock of the accept (client_first_byte_timeout_ms, the access log's duration).
    pub accepted_at: u64,
    /// The per-client table this connection counts in (shared with the listener; kept here
    /// so a reload that drops or replaces the table still releases the right one).
    pub client_slot: Option<(Arc<ClientTable>, ClientSlot)>,
    /// Bytes of `c2b` and `b2c` already added to the backend's shared counters.
    pub reported: (u64, u64),
    /// In the worker's resume list: it spent its budget with data still readable and is
    /// driven again after everything else that is ready (events only update its readiness
    /// meanwhile, so it is pumped at most once per loop turn).
    pub resume: bool,
}

/// What the worker must do with a connection after driving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    /// Wait for events.
    Wait,
    /// Budget exhausted with data still readable: drive again after what else is ready.
    Again,
    /// Both directions finished: close normally.
    Finished,
    /// A side broke: close both with a reset.
    Reset,
}

/// Result of reading a client's PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRead {
    /// Not all of it yet: wait for the next readable event.
    Pending,
    /// A whole header; what followed it is held in `c2b`.
    Done(Parsed),
    /// No valid header (garbage, too long, EOF or an error first): refuse the connection.
    Refused,
}

/// Result of reading a client's TLS ClientHello.
// The name (256 bytes) travels on the stack once per routed connection; boxing it would
// allocate on the data path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloRead {
    /// Not all of it yet: wait for the next readable event.
    Pending,
    /// A whole hello, held in `c2b`, with its server name if it has one.
    Done(Option<tls_sni::ServerName>),
    /// No valid hello (garbage, malformed, too large, EOF or an error first): refuse.
    Refused,
}

/// Result of checking a connect in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectState {
    InProgress,
    Connected,
    Failed,
}

impl Conn {
    pub fn new(
        listener: usize,
        generation: u32,
        client: TcpStream,
        client_addr: SocketAddr,
        splice: SpliceMode,
        now_ms: u64,
    ) -> Conn {
        Conn {
            listener,
            generation,
            client,
            client_addr,
            client_ready: Readiness::default(),
            backend: None,
            backend_ready: Readiness::default(),
            backend_ref: None,
            backend_index: 0,
            connecting: true,
            awaiting_header: false,
            awaiting_hello: false,
            group: 0,
            connect_deadline: 0,
            connect_started_us: 0,
            tried: [0; MAX_ATTEMPTS],
            tried_len: 0,
            c2b: Flow::new(splice),
            b2c: Flow::new(splice),
            last_active: now_ms,
            accepted_at: now_ms,
            client_slot: None,
            reported: (0, 0),
            resume: false,
        }
    }

    /// Add the bytes moved since the last report to the backend's counters (a connection
    /// still connecting reports nothing: its bytes belong to whichever backend answers).
    /// Returns whether there was anything to add. Called from the timer, not per read, so the
    /// shared counters are written about once a second per busy connection.
    pub fn report_bytes(&mut self) -> bool {
        let Some(b) = self.backend_ref.as_ref().filter(|_| !self.connecting) else {
            return false;
        };
        let (to_backend, to_client) = (
            self.c2b.bytes - self.reported.0,
            self.b2c.bytes - self.reported.1,
        );
        if to_backend != 0 {
            b.bytes_to_backend.fetch_add(to_backend, Ordering::Relaxed);
        }
        if to_client != 0 {
            b.bytes_to_client.fetch_add(to_client, Ordering::Relaxed);
        }
        self.reported = (self.c2b.bytes, self.b2c.bytes);
        to_backend != 0 || to_client != 0
    }

    pub fn tried(&self) -> &[usize] {
        &self.tried[..self.tried_len]
    }

    pub fn record_failed(&mut self, index: usize) {
        if self.tried_len < MAX_ATTEMPTS {
            self.tried[self.tried_len] = index;
            self.tried_len += 1;
        }
    }

    /// The next moment something must happen to this connection if nothing else does: the
    /// connect timeout, the first-byte timeout of a client that has sent nothing, or the idle
    /// timeout.
    pub fn deadline(&self, config: &ListenerConfig) -> u64 {
        let first_byte = self.first_byte_deadline(config);
        if self.connecting {
            return self.connect_deadline.min(first_byte);
        }
        let idle = self.last_active + self.quiet_limit(config).as_millis() as u64;
        idle.min(first_byte)
    }

    /// Either side has closed its direction (its EOF was read).
    pub fn half_closed(&self) -> bool {
        self.c2b.read_eof || self.b2c.read_eof
    }

    /// How long the connection may go without a byte moving: `idle_timeout_s`, or
    /// `fin_timeout_s` once half-closed (a peer that closed its side and leaves the other
    /// open must not hold two sockets and their buffers for the whole idle time).
    pub fn quiet_limit(&self, config: &ListenerConfig) -> std::time::Duration {
        if self.half_closed() {
            config.idle_timeout.min(config.fin_timeout)
        } else {
            config.idle_timeout
        }
    }

    /// When a client that has sent nothing is closed (`client_first_byte_timeout_ms`);
    /// `u64::MAX` when that timeout is off or the client has sent something.
    pub fn first_byte_deadline(&self, config: &ListenerConfig) -> u64 {
        match config.client_first_byte_timeout {
            // Bytes waiting in the kernel while the backend connect is in flight count as sent.
            Some(t) if self.c2b.bytes == 0 && !self.client_ready.readable => {
                self.accepted_at + t.as_millis() as u64
            }
            _ => u64::MAX,
        }
    }

    /// After a writable or error event on a connecting backend socket.
    /// `failed`: the event carried EPOLLERR or EPOLLHUP. A non-blocking connect reports
    /// EPOLLOUT once it completes and EPOLLERR|EPOLLHUP when it fails, so the event alone says
    /// how it went: no getsockopt(SO_ERROR) or getpeername(2) per connection (HAProxy relies
    /// on the same). A reset right after the handshake also reads as a failure, which is
    /// fine: nothing was forwarded yet, so another backend may be tried.
    pub fn check_connect(&self, writable: bool, failed: bool) -> ConnectState {
        if self.backend.is_none() || failed {
            ConnectState::Failed
        } else if writable {
            ConnectState::Connected
        } else {
            ConnectState::InProgress
        }
    }

    /// While `awaiting_header`: read what the client sent into `c2b`'s buffer (after room
    /// for the header l4lb may send on) until a whole header is in. Bounded: the parser
    /// decides within `proxy_protocol::MAX_HEADER` bytes, far less than the buffer.
    pub fn read_proxy_header(&mut self, io: &mut IoResources) -> HeaderRead {
        while self.client_ready.readable {
            let room = self.c2b.unfilled(proxy_protocol::MAX_ENCODED, io);
            let room_len = room.len();
            if room_len == 0 {
                return HeaderRead::Refused;
            }
            match (&self.client).read(room) {
                Ok(0) => return HeaderRead::Refused,
                Ok(n) => {
                    self.c2b.filled(n);
                    if n < room_len && !self.client_ready.read_closed {
                        // The receive queue is empty (as in `Flow::copy`): the next arrival
                        // raises an edge, so the read that would say EAGAIN is skipped.
                        self.client_ready.readable = false;
                    }
                    match proxy_protocol::parse(self.c2b.held()) {
                        Ok(parsed) => {
                            self.c2b.skip_header(parsed.consumed);
                            if self.c2b.held().is_empty() {
                                self.c2b.release(io);
                            }
                            return HeaderRead::Done(parsed);
                        }
                        Err(ParseError::Incomplete) => {}
                        Err(ParseError::Invalid) => return HeaderRead::Refused,
                    }
                }
                Err(e) => match classify(&e) {
                    IoClass::WouldBlock => self.client_ready.readable = false,
                    IoClass::Retry => {}
                    IoClass::PeerGone | IoClass::Fatal => {
                        io.errors.closed_by(&e);
                        return HeaderRead::Refused;
                    }
                },
            }
        }
        HeaderRead::Pending
    }

    /// While `awaiting_hello`: read what the client sends into `c2b`'s buffer (after what is
    /// already held there, or after room for the PROXY header l4lb may send on) until it holds
    /// a whole ClientHello. Bounded: the parser decides within `tls_sni::MAX_HELLO` bytes, and
    /// more held than that without a decision is refused, so the 32 KiB buffer never fills.
    pub fn read_hello(&mut self, io: &mut IoResources) -> HelloRead {
        // What came with the PROXY header may already be the whole hello.
        let mut check = !self.c2b.held().is_empty();
        loop {
            if check {
                match tls_sni::parse(self.c2b.held()) {
                    Ok(hello) => {
                        self.c2b.count_held();
                        return HelloRead::Done(hello.server_name);
                    }
                    Err(tls_sni::ParseError::Incomplete)
                        if self.c2b.held().len() < tls_sni::MAX_HELLO => {}
                    Err(_) => return HelloRead::Refused,
                }
            }
            if !self.client_ready.readable {
                return HelloRead::Pending;
            }
            let room = self.c2b.unfilled(proxy_protocol::MAX_ENCODED, io);
            let room_len = room.len();
            if room_len == 0 {
                return HelloRead::Refused;
            }
            match (&self.client).read(room) {
                Ok(0) => return HelloRead::Refused,
                Ok(n) => {
                    self.c2b.filled(n);
                    if n < room_len && !self.client_ready.read_closed {
                        // The receive queue is empty (as in `Flow::copy`).
                        self.client_ready.readable = false;
                    }
                    check = true;
                }
                Err(e) => match classify(&e) {
                    IoClass::WouldBlock => {
                        self.client_ready.readable = false;
                        check = false;
                    }
                    IoClass::Retry => check = false,
                    IoClass::PeerGone | IoClass::Fatal => return HelloRead::Refused,
                },
            }
        }
    }

    /// Right after the backend connect completed: send the PROXY header naming `client_addr`
    /// and `dest` (the address the client connected to). Written at once when nothing else is
    /// queued and the socket takes it; otherwise (partly) queued in front of `c2b`, which
    /// writes it before any client byte. No allocation: a stack buffer, or a pooled one.
    pub fn send_proxy_header(
        &mut self,
        version: ProxyProtocol,
        dest: SocketAddr,
        io: &mut IoResources,
    ) -> Result<(), Broken> {
        let mut header = [0u8; proxy_protocol::MAX_ENCODED];
        let n = match version {
            ProxyProtocol::Off => return Ok(()),
            ProxyProtocol::V1 => proxy_protocol::encode_v1(self.client_addr, dest, &mut header),
            ProxyProtocol::V2 => proxy_protocol::encode_v2(self.client_addr, dest, &mut header),
        };
        let Some(backend) = &self.backend else {
            return Err(Broken);
        };
        let mut written = 0;
        // Client bytes already held (read with an accepted header): queue in front of them,
        // so that one write sends both.
        if self.c2b.held().is_empty() && self.backend_ready.writable {
            loop {
                match (&*backend).write(&header[..n]) {
                    Ok(0) => return Err(Broken),
                    Ok(w) => {
                        written = w;
                        if w < n {
                            self.backend_ready.writable = false;
                        }
                        break;
                    }
                    Err(e) => match classify(&e) {
                        IoClass::WouldBlock => {
                            self.backend_ready.writable = false;
                            break;
                        }
                        IoClass::Retry => {}
                        IoClass::PeerGone | IoClass::Fatal => {
                            io.errors.closed_by(&e);
                            return Err(Broken);
                        }
                    },
                }
            }
        }
        if written < n {
            self.c2b.prepend(&header[written..n], io)?;
        }
        Ok(())
    }

    /// Pump both directions.
    pub fn drive(&mut self, io: &mut IoResources, now_ms: u64) -> Drive {
        let Some(backend) = &self.backend else {
            return Drive::Reset;
        };
        let before = self.c2b.bytes + self.b2c.bytes;
        let up = self.c2b.pump(
            &self.client,
            &mut self.client_ready,
            backend,
            &mut self.backend_ready,
            io,
            self.b2c.done(),
        );
        let down = self.b2c.pump(
            backend,
            &mut self.backend_ready,
            &self.client,
            &mut self.client_ready,
            io,
            self.c2b.done(),
        );
        if self.c2b.bytes + self.b2c.bytes != before {
            self.last_active = now_ms;
        }
        match (up, down) {
            (Err(Broken), _) | (_, Err(Broken)) => Drive::Reset,
            _ if self.c2b.done() && self.b2c.done() => Drive::Finished,
            (Ok(Pump::Yielded), _) | (_, Ok(Pump::Yielded)) => Drive::Again,
            _ => Drive::Wait,
        }
    }
}
