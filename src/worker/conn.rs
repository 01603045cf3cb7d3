//! One proxied TCP connection: the client socket, the backend socket once chosen, the two
//! directions between them, the counts it holds, and its [`Phase`], which only this module
//! changes (every field is private; the worker drives a connection through the transition
//! methods below).
//!
//! Hot path. Lifecycle (each step a method here, called by the file named):
//!
//! ```text
//!  Accepted ──(accept_proxy_protocol: await_proxy_header, accept.rs)──> ProxyHeader
//!     │                                  │ proxy_header_read (accept.rs): admit_client
//!     │<─────────────────────────────────┤ (the client-level half of admission)
//!     ├──(SNI routes: await_hello, hello.rs)──> Hello <─┘ (with routes, keeping its deadline)
//!     │<──────────── hello_read (hello.rs): route group chosen ──────┘
//!     └──start_connect (connect.rs)──> Connecting ──connected (connect.rs)──> Forwarding
//!                     ^                    │ connect_failed (connect.rs): next backend
//!                     └────────────────────┘
//! ```
//!
//! `Accepted` lasts only within the call that admitted the connection (or read its header
//! or hello): it always leaves it, for the next phase or for `close`. While `ProxyHeader` or
//! `Hello` nothing is connected and the client is read until the whole header or hello is
//! held in `c2b`; while `Connecting` the client is not read (TCP flow control holds it back)
//! and `backend` is the socket of the attempt in flight, `lease` the backend it counts
//! against; `Forwarding` pumps both directions (with `proxy_protocol` a header for the backend
//! goes out first) until both have passed their EOF on, or a side breaks (a reset on both).
//! Half-closed (one side's EOF read) is not a phase of its own: it only shortens the quiet
//! limit to `fin_timeout_s` ([`Conn::half_closed`]). Closing is not one either: `close`
//! (expiry.rs) takes the connection out of the slab and drops it, which gives back every count
//! it holds ([`Admission`], [`BackendLease`]) and closes its sockets.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mio::net::TcpStream;

use crate::backend::Backend;
use crate::config::{ListenerConfig, ProxyProtocol, SpliceMode};
use crate::metrics::RejectReason;
use crate::net::io::{classify, IoClass};
use crate::proxy_protocol::{self, ParseError, Parsed};
use crate::state::ListenerState;
use crate::tls_sni;

use super::admission::{Admission, BackendLease};
use super::flow::{Broken, Flow, IoResources, Pump, Readiness};
use super::pick::Tried;

/// Where a connection is in its life (see the module doc for the transitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Admitted and in the slab; within the same call it moves on or is closed.
    Accepted,
    /// `accept_proxy_protocol`: reading the client's PROXY header until `deadline`; nothing
    /// connected, the client-level half of admission still to come.
    ProxyHeader { deadline: u64 },
    /// SNI routing: reading the client's ClientHello until `deadline`; nothing connected.
    Hello { deadline: u64 },
    /// A non-blocking connect in flight, given up at `deadline`. `started_us`: when it
    /// started (`clock::monotonic_us`) for `least_latency`'s sample, else 0.
    Connecting { deadline: u64, started_us: u64 },
    /// Both directions pumped.
    Forwarding,
}

#[derive(Debug)]
pub struct Conn {
    listener: usize,
    generation: u32,
    phase: Phase,
    client: TcpStream,
    /// The client as balancing, ACL and limits see it: the peer, or the source of the PROXY
    /// header it sent (`accept_proxy_protocol`).
    client_addr: SocketAddr,
    client_ready: Readiness,
    backend: Option<TcpStream>,
    backend_ready: Readiness,
    /// The backend this connection counts against (its `active`, given back on drop).
    lease: Option<BackendLease>,
    /// Index of `lease`'s backend in the pool it was picked from.
    backend_index: usize,
    /// The pool group backends are picked from: 0 = the listener's own, `r + 1` = SNI route
    /// `r`.
    group: usize,
    /// The backends that failed for this connection.
    tried: Tried,
    c2b: Flow,
    b2c: Flow,
    /// Coarse ms clock of the last byte moved (idle timeout).
    last_active: u64,
    /// Coarse ms clock of the accept (client_first_byte_timeout_ms, the access log's duration).
    accepted_at: u64,
    /// The global, listener and per-client counts this connection holds (given back when
    /// the connection is dropped, whichever way it ends).
    admission: Admission,
    /// Bytes of `c2b` and `b2c` already added to the backend's shared counters.
    reported: (u64, u64),
    /// In the worker's resume list: it spent its budget with data still readable and is
    /// driven again after everything else that is ready (events only update its readiness
    /// meanwhile, so it is pumped at most once per loop turn).
    resume: bool,
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
        admission: Admission,
        splice: SpliceMode,
        now_ms: u64,
    ) -> Conn {
        Conn {
            listener,
            generation,
            phase: Phase::Accepted,
            client,
            client_addr,
            client_ready: Readiness::default(),
            backend: None,
            backend_ready: Readiness::default(),
            lease: None,
            backend_index: 0,
            group: 0,
            tried: Tried::default(),
            c2b: Flow::new(splice),
            b2c: Flow::new(splice),
            last_active: now_ms,
            accepted_at: now_ms,
            admission,
            reported: (0, 0),
            resume: false,
        }
    }

    #[inline]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    #[inline]
    pub fn is_forwarding(&self) -> bool {
        self.phase == Phase::Forwarding
    }

    #[inline]
    pub fn listener(&self) -> usize {
        self.listener
    }

    #[inline]
    pub fn generation(&self) -> u32 {
        self.generation
    }

    #[inline]
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The address the client connected to (a listener bound to a wildcard must ask).
    #[inline]
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.client.local_addr().ok()
    }

    #[inline]
    pub fn group(&self) -> usize {
        self.group
    }

    /// The backend this connection counts against, once a connect started.
    #[inline]
    pub fn backend(&self) -> Option<&Backend> {
        self.lease.as_deref()
    }

    #[inline]
    pub fn accepted_at(&self) -> u64 {
        self.accepted_at
    }

    /// Bytes moved so far, (client to backend, backend to client).
    #[inline]
    pub fn bytes(&self) -> (u64, u64) {
        (self.c2b.bytes, self.b2c.bytes)
    }

    /// The backends that failed for this connection (the connect path adds to it).
    #[inline]
    pub fn tried_mut(&mut self) -> &mut Tried {
        &mut self.tried
    }

    /// Whether it is in the worker's resume list.
    #[inline]
    pub fn resume(&self) -> bool {
        self.resume
    }

    #[inline]
    pub fn set_resume(&mut self, resume: bool) {
        self.resume = resume;
    }

    /// `Accepted` -> `ProxyHeader`: read the client's PROXY header until `deadline`.
    pub fn await_proxy_header(&mut self, deadline: u64) {
        debug_assert_eq!(self.phase, Phase::Accepted);
        self.phase = Phase::ProxyHeader { deadline };
    }

    /// `ProxyHeader` -> `Hello` (the listener routes by SNI: the hello is read next, within
    /// the header's deadline) or `Accepted` (the connect follows): the header is in, and its
    /// `source` (none for LOCAL, UNKNOWN, UNSPEC: the proxy speaks for itself) becomes the
    /// client's address. Then the client-level half of admission for that address (ACL,
    /// per-client rate and cap); on refusal the caller closes the connection.
    pub fn proxy_header_read(
        &mut self,
        source: Option<SocketAddr>,
        hello_next: bool,
        state: &ListenerState,
        now_ms: u64,
    ) -> Result<(), RejectReason> {
        let Phase::ProxyHeader { deadline } = self.phase else {
            debug_assert!(false, "header read in {:?}", self.phase);
            return Err(RejectReason::Acl);
        };
        self.phase = if hello_next {
            Phase::Hello { deadline }
        } else {
            Phase::Accepted
        };
        if let Some(source) = source {
            self.client_addr = source;
        }
        self.admission
            .admit_client(state, self.client_addr.ip(), now_ms)
    }

    /// `Accepted` -> `Hello`: read the client's ClientHello until `deadline`.
    pub fn await_hello(&mut self, deadline: u64) {
        debug_assert_eq!(self.phase, Phase::Accepted);
        self.phase = Phase::Hello { deadline };
    }

    /// `Hello` -> `Accepted`: the hello picked the pool `group` the connect picks from.
    pub fn hello_read(&mut self, group: usize) {
        debug_assert!(matches!(self.phase, Phase::Hello { .. }));
        self.phase = Phase::Accepted;
        self.group = group;
    }

    /// `Accepted` or `Connecting` (after a failed attempt) -> `Connecting`: a connect to the
    /// backend `lease` counts against (`index` in the pool) is in flight on `socket`.
    pub fn start_connect(
        &mut self,
        socket: TcpStream,
        lease: BackendLease,
        index: usize,
        deadline: u64,
        started_us: u64,
    ) {
        debug_assert!(
            self.backend.is_none()
                && matches!(self.phase, Phase::Accepted | Phase::Connecting { .. })
        );
        self.backend = Some(socket);
        self.backend_ready = Readiness::default();
        self.lease = Some(lease);
        self.backend_index = index;
        self.phase = Phase::Connecting {
            deadline,
            started_us,
        };
    }

    /// The connect in flight failed: its socket is closed and its backend recorded as tried;
    /// returns the lease for the caller to blame that backend before dropping it. The phase
    /// stays `Connecting` until the next attempt starts (or the connection is closed).
    pub fn connect_failed(&mut self) -> Option<BackendLease> {
        debug_assert!(matches!(self.phase, Phase::Connecting { .. }));
        self.backend = None;
        let lease = self.lease.take();
        if lease.is_some() {
            self.tried.record(self.backend_index);
        }
        lease
    }

    /// `Connecting` -> `Forwarding`: the handshake completed. Returns the connect's start
    /// (`started_us`, 0 when not measured).
    pub fn connected(&mut self, now_ms: u64) -> u64 {
        let Phase::Connecting { started_us, .. } = self.phase else {
            debug_assert!(false, "connected in {:?}", self.phase);
            return 0;
        };
        self.phase = Phase::Forwarding;
        self.last_active = now_ms;
        started_us
    }

    /// Record what an event says about one socket of the connection (edge-triggered: kept
    /// until a read or write meets `WouldBlock`).
    #[inline]
    pub fn note_event(&mut self, backend_side: bool, event: &super::waiter::Event) {
        let ready = if backend_side {
            &mut self.backend_ready
        } else {
            &mut self.client_ready
        };
        ready.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
        ready.writable |= event.is_writable() || event.is_write_closed() || event.is_error();
        ready.read_closed |= event.is_read_closed() || event.is_error();
        ready.fin |= event.is_read_closed() && !event.is_error();
    }

    /// Whether either direction still holds bytes (a buffer or a pipe) it has not passed on.
    #[inline]
    pub fn holds_bytes(&self) -> bool {
        self.c2b.holds_bytes() || self.b2c.holds_bytes()
    }

    /// Give the directions' buffers and pipes back to the worker's pools (at close).
    pub fn release_buffers(&mut self, io: &mut IoResources) {
        self.c2b.release(io);
        self.b2c.release(io);
    }

    /// SO_LINGER 0 on both sockets: closing them sends a reset instead of a FIN.
    pub fn set_linger_zero(&self) {
        set_linger_zero(&self.client);
        if let Some(b) = &self.backend {
            set_linger_zero(b);
        }
    }

    /// Add the bytes moved since the last report to the backend's counters (a connection
    /// still connecting reports nothing: its bytes belong to whichever backend answers).
    /// Returns whether there was anything to add. Called from the timer, not per read, so the
    /// shared counters are written about once a second per busy connection.
    pub fn report_bytes(&mut self) -> bool {
        let Some(b) = self.lease.as_ref().filter(|_| self.is_forwarding()) else {
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

    /// The next moment something must happen to this connection if nothing else does: the
    /// connect timeout, the first-byte timeout of a client that has sent nothing, or the idle
    /// timeout.
    pub fn deadline(&self, config: &ListenerConfig) -> u64 {
        let first_byte = self.first_byte_deadline(config);
        match self.phase {
            Phase::ProxyHeader { deadline }
            | Phase::Hello { deadline }
            | Phase::Connecting { deadline, .. } => deadline.min(first_byte),
            Phase::Accepted => first_byte,
            Phase::Forwarding => {
                let idle = self.last_active + self.quiet_limit(config).as_millis() as u64;
                idle.min(first_byte)
            }
        }
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

    /// While `ProxyHeader`: read what the client sent into `c2b`'s buffer (after room
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

    /// While `Hello`: read what the client sends into `c2b`'s buffer (after what is
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

/// SO_LINGER 0: closing the socket sends a reset (refusals, `End::resets`, cut streams).
pub(super) fn set_linger_zero(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
