//! A worker: one thread, one mio `Poll`, its own REUSEPORT listening sockets, and the slab of
//! connections the kernel steered to it. Connections never move between workers.
//!
//! Hot path. The loop: poll -> dispatch each event (accept until `WouldBlock`, connect
//! completion, forwarding) -> drive connections that yielded -> expire timers. Nothing in here
//! returns an error to the loop: every failure closes one connection (or pauses one listener
//! after a resource error on accept) and the loop goes on.

pub mod conn;
pub mod flow;
pub mod slab;
pub mod timer;
pub mod udp;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};

use crate::backend::Backend;
use crate::balancer::{Algorithm, FlowKey, Selector};
use crate::config::ProxyProtocol;
use crate::limits::{ClientSlot, ClientTable};
use crate::metrics::{ListenerCounters, RejectReason};
use crate::net::io::{is_accept_resource_error, is_accept_transient_error};
use crate::net::pipe::{BufferPool, PipePool};
use crate::state::{try_take, ListenerState, SharedState};

use conn::{Conn, ConnectState, Drive, HeaderRead};
use flow::IoResources;
use slab::Slab;
use timer::{TimerEntry, TimerWheel};

pub const WAKER_TOKEN: Token = Token(usize::MAX);
/// Events drained per poll; more wait for the next turn.
const EVENTS_CAPACITY: usize = 1024;
/// How often a connection that moves bytes adds them to its backend's shared counters
/// (`l4lb_backend_bytes_total`): live for a scrape, without a shared write per read.
const BYTES_REPORT_MS: u64 = 1000;
/// Copy buffer size (scratch and pooled). 32 KiB: large enough that bulk copies take few
/// syscalls, and a full read is the signal that `splice = auto` switches a direction to splice.
pub const COPY_BUFFER: usize = 32 * 1024;
/// Idle pipes / buffers kept per worker; beyond that they are freed, bounding idle memory.
const MAX_IDLE_PIPES: usize = 64;
const MAX_IDLE_BUFFERS: usize = 64;
/// How long a listener stops accepting after EMFILE/ENFILE/ENOBUFS/ENOMEM, so that the loop
/// does not spin on a queue it cannot drain; existing connections keep being served.
const ACCEPT_BACKOFF_MS: u64 = 100;

fn listener_token(i: usize) -> Token {
    Token(usize::MAX - 1 - i)
}

fn conn_token(key: usize, backend_side: bool) -> Token {
    Token(key * 2 + backend_side as usize)
}

/// A worker's own socket for a listener: a TCP listening socket, or a UDP socket whose
/// datagrams open and feed sessions (`udp`).
#[derive(Debug)]
pub enum ListenerSocket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Everything a worker thread starts with, prepared by the runtime on the main thread (so
/// bind errors surface before any thread runs).
#[derive(Debug)]
pub struct WorkerSetup {
    pub id: usize,
    pub poll: Poll,
    /// Each listener with this worker's own socket for it (`None`: not served here).
    pub listeners: Vec<(Arc<ListenerState>, Option<ListenerSocket>)>,
    pub shared: Arc<SharedState>,
    pub commands: Receiver<WorkerCommand>,
}

/// Changes the control thread asks a worker to make (followed by a wake-up).
#[derive(Debug)]
pub enum WorkerCommand {
    /// A new listener, with this worker's socket for it.
    AddListener(Arc<ListenerState>, Option<ListenerSocket>),
    /// New settings or backends for the listener of the same name; its socket is kept.
    ReplaceListener(Arc<ListenerState>),
    /// Stop accepting on this listener; its connections finish normally.
    RemoveListener(String),
}

#[derive(Debug)]
struct WorkerListener {
    socket: Option<ListenerSocket>,
    /// Removed by a reload: kept only so that its open connections can finish.
    retired: bool,
    state: Arc<ListenerState>,
    selector: Selector,
    paused_until: Option<u64>,
    /// The address to hash as "destination" for five_tuple_hash; `None` when the listener is
    /// bound to a wildcard and each connection's local address must be asked for.
    local: Option<SocketAddr>,
}

#[derive(Debug)]
pub struct Worker {
    id: usize,
    poll: Poll,
    shared: Arc<SharedState>,
    listeners: Vec<WorkerListener>,
    commands: Receiver<WorkerCommand>,
    conns: Slab<Conn>,
    io: IoResources,
    timers: TimerWheel,
    udp: udp::UdpPlane,
    again: Vec<usize>,
    again_spare: Vec<usize>,
    fired: Vec<TimerEntry>,
    now: u64,
    last_accept_warn: Option<u64>,
}

impl Worker {
    pub fn new(setup: WorkerSetup) -> io::Result<Worker> {
        let WorkerSetup {
            id,
            poll,
            listeners,
            shared,
            commands,
        } = setup;
        let now = shared.now_ms();
        let mut worker = Worker {
            id,
            poll,
            listeners: Vec::with_capacity(listeners.len()),
            commands,
            conns: Slab::with_capacity(1024),
            io: IoResources {
                scratch: vec![0u8; COPY_BUFFER].into_boxed_slice(),
                pipes: PipePool::new(MAX_IDLE_PIPES),
                bufs: BufferPool::new(COPY_BUFFER, MAX_IDLE_BUFFERS),
                splice: shared.splice,
            },
            timers: TimerWheel::new(now),
            udp: udp::UdpPlane::new(now),
            again: Vec::new(),
            again_spare: Vec::new(),
            fired: Vec::new(),
            now,
            last_accept_warn: None,
            shared,
        };
        for (state, socket) in listeners {
            worker.add_listener(state, socket)?;
        }
        Ok(worker)
    }

    fn add_listener(
        &mut self,
        state: Arc<ListenerState>,
        mut socket: Option<ListenerSocket>,
    ) -> io::Result<()> {
        let index = self.listeners.len();
        let registry = self.poll.registry();
        match &mut socket {
            Some(ListenerSocket::Tcp(s)) => {
                registry.register(s, listener_token(index), Interest::READABLE)?
            }
            Some(ListenerSocket::Udp(s)) => {
                registry.register(s, listener_token(index), Interest::READABLE)?
            }
            None => {}
        }
        let bind = state.config.bind;
        self.listeners.push(WorkerListener {
            socket,
            retired: false,
            selector: Selector::new(self.id as u64),
            paused_until: None,
            local: (!bind.ip().is_unspecified()).then_some(bind),
            state,
        });
        Ok(())
    }

    fn apply_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            log::debug!("worker {}: {command:?}", self.id);
            match command {
                WorkerCommand::AddListener(state, socket) => {
                    let name = state.config.name.clone();
                    if let Err(e) = self.add_listener(state, socket) {
                        log::error!("worker {}: cannot add listener {name}: {e}", self.id);
                    }
                }
                WorkerCommand::ReplaceListener(state) => {
                    if let Some(l) = self
                        .listeners
                        .iter_mut()
                        .find(|l| !l.retired && l.state.config.name == state.config.name)
                    {
                        l.state = state;
                    }
                }
                WorkerCommand::RemoveListener(name) => {
                    for li in 0..self.listeners.len() {
                        let l = &mut self.listeners[li];
                        if l.retired || l.state.config.name != name {
                            continue;
                        }
                        l.retired = true;
                        l.paused_until = None;
                        // Dropping the socket closes it and takes it out of the epoll set.
                        // UDP sessions cannot answer without it: they close now.
                        if matches!(l.socket.take(), Some(ListenerSocket::Udp(_))) {
                            self.udp_close_sessions(Some(li));
                        }
                    }
                }
            }
        }
    }

    /// Close every listening socket: new connections are refused by the kernel from now on.
    /// UDP sessions are dropped at once: they have no connection to finish, and replies could
    /// no longer leave through the closed listener sockets.
    fn stop_accepting(&mut self) {
        for l in &mut self.listeners {
            l.socket = None;
            l.paused_until = None;
        }
        self.udp_close_sessions(None);
    }

    /// Run until the process shuts down.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        log::debug!("worker {} running", self.id);
        let mut accepting = true;
        while !self.shared.is_shutting_down() {
            if accepting && self.shared.is_draining() {
                accepting = false;
                self.stop_accepting();
            }
            if !accepting && self.conns.is_empty() {
                break;
            }
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("worker {}: poll failed: {e}", self.id);
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            self.now = self.shared.now_ms();
            for event in events.iter() {
                self.dispatch(event);
            }
            // Swap in the spare list so that connections yielding again land in a new turn.
            let mut again = std::mem::take(&mut self.again_spare);
            std::mem::swap(&mut again, &mut self.again);
            for &key in &again {
                self.drive(key);
            }
            again.clear();
            self.again_spare = again;
            self.udp_drive_again();
            // Replies of every session that answered this turn: one sendmmsg per 32.
            self.udp_flush();
            self.expire_timers();
            self.udp_expire();
            self.resume_listeners();
        }
        log::debug!(
            "worker {} stopping with {} connections",
            self.id,
            self.conns.len()
        );
        let keys: Vec<usize> = self.conns.keys().collect();
        for key in keys {
            self.close(key, false);
        }
        self.udp_close_sessions(None);
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.again.is_empty() || self.udp.has_work() {
            return Some(Duration::ZERO);
        }
        let mut ms = self.timers.timeout_ms(self.now);
        if let Some(udp) = self.udp.timeout_ms(self.now) {
            ms = Some(ms.map_or(udp, |m| m.min(udp)));
        }
        for l in &self.listeners {
            if let Some(until) = l.paused_until {
                let wait = until.saturating_sub(self.now);
                ms = Some(ms.map_or(wait, |m| m.min(wait)));
            }
        }
        ms.map(Duration::from_millis)
    }

    fn dispatch(&mut self, event: &mio::event::Event) {
        let token = event.token();
        if token == WAKER_TOKEN {
            self.apply_commands();
            return;
        }
        if token.0 >= usize::MAX - self.listeners.len() {
            let li = usize::MAX - 1 - token.0;
            match self.listeners[li].socket {
                Some(ListenerSocket::Udp(_)) => self.udp_listener_readable(li),
                _ if self.listeners[li].paused_until.is_none() => self.accept(li),
                _ => {}
            }
            return;
        }
        if let Some(key) = udp::session_key(token) {
            self.udp_session_event(key);
            return;
        }
        let key = token.0 / 2;
        let backend_side = token.0 % 2 == 1;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        let writable = event.is_writable() || event.is_write_closed() || event.is_error();
        let ready = if backend_side {
            &mut conn.backend_ready
        } else {
            &mut conn.client_ready
        };
        ready.readable |= readable;
        ready.writable |= writable;
        ready.read_closed |= event.is_read_closed() || event.is_error();
        if conn.connecting {
            if !backend_side {
                // Client bytes wait in the kernel until the backend is connected; only a PROXY
                // header is read before.
                if conn.awaiting_header {
                    self.read_proxy_header(key);
                }
                return;
            }
            if conn.awaiting_header {
                // A stale event of a previous connection on this key: nothing to connect yet.
                return;
            }
            match conn.check_connect(
                event.is_writable(),
                event.is_error() || event.is_write_closed(),
            ) {
                ConnectState::InProgress => return,
                ConnectState::Failed => {
                    self.connect_failed(key);
                    return;
                }
                ConnectState::Connected => {
                    if let Some(b) = &conn.backend_ref {
                        // Only write the shared line when there is something to reset.
                        if b.consecutive_failures.load(Ordering::Relaxed) != 0 {
                            b.consecutive_failures.store(0, Ordering::Relaxed);
                        }
                    }
                    conn.connecting = false;
                    conn.last_active = self.now;
                    let wl = &self.listeners[conn.listener];
                    let version = wl.state.config.proxy_protocol;
                    if version != ProxyProtocol::Off {
                        let dest = match wl.local {
                            Some(addr) => addr,
                            None => conn.client.local_addr().unwrap_or(wl.state.config.bind),
                        };
                        if conn.send_proxy_header(version, dest, &mut self.io).is_err() {
                            self.close(key, true);
                            return;
                        }
                    }
                }
            }
        }
        self.drive(key);
    }

    fn drive(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.connecting {
            return;
        }
        match conn.drive(&mut self.io, self.now) {
            Drive::Wait => {}
            Drive::Again => self.again.push(key),
            Drive::Finished => self.close(key, false),
            Drive::Reset => self.close(key, true),
        }
    }

    fn accept(&mut self, li: usize) {
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

    fn resume_listeners(&mut self) {
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
            counters.reject(RejectReason::Acl);
            return reset(stream);
        }
        if !self.take_counts(&state, counters) {
            return reset(stream);
        }
        let client_slot = match client_admission(&state, ip, self.now) {
            Ok(slot) => slot,
            Err(reason) => {
                self.undo_counts(&state);
                counters.reject(reason);
                return reset(stream);
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
        self.first_connect(key, li, Some(generation));
    }

    /// Take one unit of the global and of the listener's connection count; on refusal nothing
    /// is held and the reason is counted.
    #[inline]
    fn take_counts(&self, state: &ListenerState, counters: &ListenerCounters) -> bool {
        if !try_take(
            &self.shared.active,
            self.shared.max_connections.load(Ordering::Relaxed),
        ) {
            counters.reject(RejectReason::GlobalLimit);
            return false;
        }
        if !try_take(&state.active, state.config.max_connections) {
            self.shared.active.fetch_sub(1, Ordering::Relaxed);
            counters.reject(RejectReason::ListenerLimit);
            return false;
        }
        true
    }

    fn undo_counts(&self, state: &ListenerState) {
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
        state.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// The first connect of an admitted connection in the slab (`key`, of listener `li`): on
    /// failure it is closed with a reset (counted as `no_backend` or a connect failure), else
    /// counted as accepted. `arm`: the connection's generation when it has no timer entry yet.
    fn first_connect(&mut self, key: usize, li: usize, arm: Option<u32>) {
        let outcome = self.connect(key);
        if outcome != ConnectStart::Started {
            let counters = self.listeners[li].state.counters.worker(self.id);
            if outcome == ConnectStart::NoBackend {
                counters.reject(RejectReason::NoBackend);
            } else {
                counters.connect_failures.fetch_add(1, Ordering::Relaxed);
            }
            self.close(key, true);
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
            counters.reject(RejectReason::Acl);
            return reset(stream);
        }
        if !self.take_counts(state, counters) {
            return reset(stream);
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
    fn read_proxy_header(&mut self, key: usize) {
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
                return self.close(key, true);
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
                return self.close(key, true);
            }
        }
        // The header-phase timer entry fires no later than this connect's deadline
        // (`header_timer`) and re-arms for it.
        self.first_connect(key, li, None);
    }

    /// Start a connect to the next backend the balancer picks. `false` when no backend is left
    /// to try (none available, or `connect_retries` exhausted).
    fn connect(&mut self, key: usize) -> ConnectStart {
        let Some(conn) = self.conns.get_mut(key) else {
            return ConnectStart::NoBackend;
        };
        let wl = &mut self.listeners[conn.listener];
        let retries = wl.state.config.connect_retries as usize;
        let local = match wl.local {
            Some(addr) => addr,
            None if wl.state.config.balance == Algorithm::FiveTupleHash => {
                conn.client.local_addr().unwrap_or(wl.state.config.bind)
            }
            None => wl.state.config.bind,
        };
        let flow_key = FlowKey {
            client: conn.client_addr,
            local,
            protocol: 6,
        };
        let pool = wl.state.pool.load();
        while conn.tried_len <= retries {
            let Some(index) = wl.selector.pick(&pool, &flow_key, conn.tried()) else {
                return if conn.tried_len == 0 {
                    ConnectStart::NoBackend
                } else {
                    ConnectStart::Exhausted
                };
            };
            let backend = pool.backends()[index].clone();
            backend.active.fetch_add(1, Ordering::Relaxed);
            backend.total.fetch_add(1, Ordering::Relaxed);
            let started = TcpStream::connect(backend.addr).and_then(|mut s| {
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
                    return ConnectStart::Started;
                }
                Err(e) if is_accept_resource_error(&e) => {
                    // Out of descriptors or memory here, not the backend's fault: no passive
                    // failure, and no more accepting until the back-off is over.
                    backend.active.fetch_sub(1, Ordering::Relaxed);
                    backend.total.fetch_sub(1, Ordering::Relaxed);
                    for l in &mut self.listeners {
                        l.paused_until = Some(self.now + ACCEPT_BACKOFF_MS);
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
    fn connect_failed(&mut self, key: usize) {
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
        if self.connect(key) != ConnectStart::Started {
            self.listeners[li]
                .state
                .counters
                .worker(self.id)
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
            self.close(key, true);
        }
    }

    fn expire_timers(&mut self) {
        if self.timers.is_empty() {
            return;
        }
        let mut fired = std::mem::take(&mut self.fired);
        self.timers.expire(self.now, |e| fired.push(e));
        for entry in fired.drain(..) {
            let Some(conn) = self.conns.get_mut(entry.key) else {
                continue;
            };
            if conn.generation != entry.generation {
                continue;
            }
            let config = &self.listeners[conn.listener].state.config;
            let deadline = conn.deadline(config);
            if self.now < deadline {
                let at = if conn.awaiting_header {
                    header_timer(deadline, self.now, config)
                } else if conn.report_bytes() {
                    // Busy: come back soon so the byte counters stay live.
                    deadline.min(self.now + BYTES_REPORT_MS)
                } else {
                    deadline
                };
                self.timers.insert(at, entry);
                continue;
            }
            if conn.awaiting_header {
                // No complete PROXY header in time.
                self.listeners[conn.listener]
                    .state
                    .counters
                    .worker(self.id)
                    .reject(RejectReason::Acl);
                self.close(entry.key, true);
            } else if conn.connecting && self.now >= conn.connect_deadline {
                self.connect_failed(entry.key);
                if let Some(conn) = self.conns.get(entry.key) {
                    if conn.generation == entry.generation {
                        let config = &self.listeners[conn.listener].state.config;
                        self.timers.insert(conn.deadline(config), entry);
                    }
                }
            } else {
                // Idle, or silent past client_first_byte_timeout_ms.
                self.close(entry.key, false);
            }
        }
        self.fired = fired;
    }

    /// Remove a connection and release everything it counted against.
    fn close(&mut self, key: usize, with_reset: bool) {
        let Some(mut conn) = self.conns.remove(key) else {
            return;
        };
        if with_reset {
            set_linger_zero(&conn.client);
            if let Some(b) = &conn.backend {
                set_linger_zero(b);
            }
        }
        conn.c2b.release(&mut self.io);
        conn.b2c.release(&mut self.io);
        conn.report_bytes();
        if let Some(b) = conn.backend_ref.take() {
            b.active.fetch_sub(1, Ordering::Relaxed);
        }
        let state = &self.listeners[conn.listener].state;
        state.active.fetch_sub(1, Ordering::Relaxed);
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
        if let Some((table, slot)) = conn.client_slot.take() {
            table.release(slot);
        }
        // Dropping the sockets closes them, which also removes them from the epoll set.
    }
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

/// Whether `peer` may send a PROXY header: any peer when the list is empty.
fn is_trusted(trusted: &[ipnet::IpNet], peer: IpAddr) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    trusted.is_empty() || trusted.iter().any(|n| n.contains(&peer))
}

/// When to arm the timer entry of a connection awaiting its PROXY header (real deadline
/// `deadline`): no later than one connect timeout from now, so that once the header is in,
/// the same entry fires before the connect's deadline (which is at least that far away) and
/// re-arms for it. A connection keeps a single entry through both phases.
fn header_timer(deadline: u64, now_ms: u64, config: &crate::config::ListenerConfig) -> u64 {
    deadline.min(now_ms + config.connect_timeout.as_millis() as u64)
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
    /// This process is out of descriptors or memory.
    LocalError,
}

/// Failures in a row that mark a backend down when the listener has no `health_check` (and
/// so no `fall` of its own): HAProxy's default `fall` is 3 as well.
const DEFAULT_PASSIVE_FALL: u32 = 3;

/// A refused or timed-out connect: count it, and mark the backend down once `fall` of them
/// happened in a row. The pool is republished by the health thread (`pool_dirty`), never here.
fn passive_failure(backend: &Backend, listener: &ListenerState, now_ms: u64) {
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

fn set_linger_zero(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Close a refused connection with a reset, as HAProxy's `tcp-request connection reject`.
fn reset(stream: TcpStream) {
    set_linger_zero(&stream);
}
