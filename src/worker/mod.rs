//! A worker: one thread, one mio `Poll`, its own REUSEPORT listening sockets, and the slab of
//! connections the kernel steered to it. Connections never move between workers.
//!
//! Hot path. The loop, in the order that keeps a bulk transfer from making new connections
//! wait: poll -> first pass over the events: the waker, listeners (accept until
//! `WouldBlock`), UDP, connects in flight (completion, PROXY header reads) -> second pass:
//! forwarding on established connections, each driven with its byte budget -> connections
//! that spent their budget last turn (the resume list), after everything else that was ready
//! -> expire timers. Nothing in here returns an error to the loop: every failure closes one
//! connection (or pauses one listener after a resource error on accept) and the loop goes on.
//!
//! This file holds the worker's types, its construction, the loop, event dispatch by a
//! connection's phase and driving connections. The rest, as `impl Worker` blocks:
//! `listeners` (the listener set: reload commands, drain), `accept` (accept loop, back-off,
//! admission, refusal), `hello` (SNI routing), `connect` (a TCP backend connect from start to
//! success or failure), `expiry` (timers, close), `udp` (UDP sessions). Shared by TCP and
//! UDP: `admission` (the guard that holds a connection's or session's counts and gives them
//! back on drop, and the backend lease) and `pick` (pick, connect attempt, retries, passive
//! health). `conn` and `flow` hold a connection's state, its phase and byte pumps;
//! `access_log` says why a connection or session ended and writes its line when the listener
//! asks for one; `cpu_group` runs the workers pinned to one CPU on one thread; `waker` is a
//! worker's wake-up for the control thread.
//!
//! Invariants: one token space per worker, below `LOCAL_TOKENS`, matched in this order by
//! `dispatch`: the waker is `LOCAL_TOKENS - 1`, listener `i` is `LOCAL_TOKENS - 2 - i`, a UDP
//! session is `UDP_TOKEN_BIT | key`, and the two sockets of TCP connection `key` are `2 * key`
//! (client) and `2 * key + 1` (backend), below `UDP_TOKEN_BIT`. The bits above carry the
//! worker's index in the epoll it shares with the other workers of its CPU (`cpu_group`), 0
//! for a worker alone; a worker registers every socket with its index and handles only the
//! events that carry it.

mod accept;
mod access_log;
pub mod admission;
pub mod conn;
mod connect;
pub mod cpu_group;
mod expiry;
pub mod flow;
mod hello;
mod listeners;
mod pick;
pub mod slab;
pub mod timer;
pub mod udp;
pub mod waiter;
pub mod waker;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::{TcpListener, UdpSocket};
use mio::{Poll, Registry, Token};

use crate::balancer::Selector;
use crate::net::io::IoErrors;
use crate::net::pipe::{BufferPool, PipePool};
use crate::state::{ListenerState, SharedState};

use access_log::End;
use conn::{Conn, Drive, Phase};
use flow::IoResources;
use slab::Slab;
use timer::{TimerEntry, TimerWheel};
use waiter::{Event, Waiter, Woken};

/// The bits of a token above this one hold the worker's index in its thread's epoll.
pub const MEMBER_SHIFT: u32 = usize::BITS - 8;
/// Workers that one epoll can tell apart.
pub const MAX_MEMBERS: usize = 1 << (usize::BITS - MEMBER_SHIFT);
const LOCAL_TOKENS: usize = 1 << MEMBER_SHIFT;
const WAKER_LOCAL: usize = LOCAL_TOKENS - 1;

/// The token of worker `member`'s waker in its thread's epoll.
pub fn waker_token(member: usize) -> Token {
    Token(member << MEMBER_SHIFT | WAKER_LOCAL)
}
/// Connections the resume list holds before it grows: as many as the slab starts with. A
/// connection is in it at most once (`Conn::resume`), so it outgrows this only when more
/// than this many connections are bulk at the same time (amortized, never per read).
const RESUME_CAPACITY: usize = 1024;
/// Copy buffer size (scratch and pooled). 32 KiB: large enough that bulk copies take few
/// syscalls, and a full read is the signal that `splice = auto` switches a direction to splice.
pub const COPY_BUFFER: usize = 32 * 1024;
/// Idle pipes / buffers kept per worker; beyond that they are freed, bounding idle memory.
const MAX_IDLE_PIPES: usize = 64;
const MAX_IDLE_BUFFERS: usize = 64;

/// How often a worker with a retired listener still in use looks whether it can free it: its
/// last connection may end in another worker, which does not wake this one.
const RETIRED_SWEEP_MS: u64 = 1000;

/// Whether `event` is for the worker with `tag` (the epoll may be shared, see `cpu_group`).
#[inline]
fn is_for(tag: usize, event: &Event) -> bool {
    event.token().0 & !(LOCAL_TOKENS - 1) == tag
}

/// `token` with the index `tag` of a worker: what every socket of it is registered with.
#[inline]
fn tagged(tag: usize, token: Token) -> Token {
    Token(tag | token.0)
}

fn listener_token(i: usize) -> Token {
    Token(LOCAL_TOKENS - 2 - i)
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
    /// The epoll of the worker's thread (`cpu_group`), and the worker's index in it.
    pub registry: Registry,
    pub member: usize,
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
    /// Retired and none of its connections left in any worker: `state` is an emptied copy
    /// (no pool, no tables) and the slot is reused by the next added listener.
    vacant: bool,
    state: Arc<ListenerState>,
    selector: Selector,
    paused_until: Option<u64>,
    /// The address to hash as "destination" for five_tuple_hash; `None` when the listener is
    /// bound to a wildcard and each connection's local address must be asked for.
    local: Option<SocketAddr>,
    /// Round-robin position in the listener's `source` addresses.
    next_source: usize,
    /// A UDP listener whose datagrams come through the thread's ring (taken out of the
    /// epoll), and whether its multishot receive is armed (`udp::ring`).
    on_ring: bool,
    ring_armed: bool,
}

#[derive(Debug)]
pub struct Worker {
    id: usize,
    registry: Registry,
    /// `member << MEMBER_SHIFT`: the bits every token of this worker carries.
    tag: usize,
    shared: Arc<SharedState>,
    listeners: Vec<WorkerListener>,
    commands: Receiver<WorkerCommand>,
    /// False once a drain has started (`keep_running`).
    accepting: bool,
    /// When the drain started, ms.
    drain_since: u64,
    conns: Slab<Conn>,
    io: IoResources,
    timers: TimerWheel,
    udp: udp::UdpPlane,
    /// Connections that spent their budget with data left, `(key, generation)`, in the order
    /// they yielded; driven after the events of the next turn. A closed connection's entry
    /// is skipped by its generation.
    resume: Vec<(usize, u32)>,
    /// The list being driven while `resume` collects the yields of this turn.
    resume_spare: Vec<(usize, u32)>,
    fired: Vec<TimerEntry>,
    now: u64,
    last_accept_warn: Option<u64>,
    /// When a local shortage (ports, descriptors) was last warned about (`connect`).
    last_local_warn: Option<u64>,
    /// Retired listeners whose connections have not all ended yet (see `sweep_retired`).
    retiring: usize,
}

impl Worker {
    pub fn new(setup: WorkerSetup) -> io::Result<Worker> {
        let WorkerSetup {
            id,
            registry,
            member,
            listeners,
            shared,
            commands,
        } = setup;
        let now = shared.now_ms();
        let mut worker = Worker {
            id,
            registry,
            tag: member << MEMBER_SHIFT,
            listeners: Vec::with_capacity(listeners.len()),
            commands,
            accepting: true,
            drain_since: 0,
            conns: Slab::with_capacity(1024),
            io: IoResources {
                scratch: vec![0u8; COPY_BUFFER].into_boxed_slice(),
                pipes: PipePool::new(MAX_IDLE_PIPES),
                bufs: BufferPool::new(COPY_BUFFER, MAX_IDLE_BUFFERS),
                splice: shared.splice,
                errors: IoErrors::new(shared.io_errors.clone()),
            },
            timers: TimerWheel::new(now),
            udp: udp::UdpPlane::new(now),
            resume: Vec::with_capacity(RESUME_CAPACITY),
            resume_spare: Vec::with_capacity(RESUME_CAPACITY),
            fired: Vec::new(),
            now,
            last_accept_warn: None,
            last_local_warn: None,
            retiring: 0,
            shared,
        };
        for (state, socket) in listeners {
            worker.add_listener(state, socket)?;
        }
        Ok(worker)
    }

    /// Run until the process shuts down: a worker alone on its thread, waiting in `poll`
    /// (whose registry it was built with) or in a ring that waits for it (`waiter`).
    pub fn run(mut self, poll: Poll) {
        let mut waiter = Waiter::new(poll, &format!("worker {}", self.id), self.serves_udp());
        self.udp.on_ring = waiter.has_ring();
        log::debug!("worker {} running", self.id);
        while self.keep_running() {
            let timeout = self.poll_timeout();
            if waiter.wait(timeout) {
                // The requests naming these sockets are in the kernel now.
                self.udp.closing.clear();
                self.turn(&waiter.woken());
            }
            // Sends first: they keep their buffers from being given back.
            waiter.after_turns(&mut self.udp.ops);
            waiter.release_buffers();
        }
        self.finish(&mut waiter);
    }

    /// Whether one of its listeners is a UDP one with a socket here.
    fn serves_udp(&self) -> bool {
        self.listeners
            .iter()
            .any(|l| matches!(l.socket, Some(ListenerSocket::Udp(_))))
    }

    /// Whether the loop goes on: false once the process shuts down, or once a drain has
    /// started and this worker has nothing left (no connection, UDP sessions handed over).
    fn keep_running(&mut self) -> bool {
        if self.shared.is_shutting_down() {
            return false;
        }
        if self.accepting && self.shared.is_draining() {
            self.accepting = false;
            self.drain_since = self.now;
            self.stop_accepting();
        }
        self.accepting || !self.conns.is_empty() || !self.udp_handover_done(self.drain_since)
    }

    /// One loop turn over this worker's events and completions of one wait. Returns how
    /// many there were.
    fn turn(&mut self, woken: &Woken<'_>) -> usize {
        let woke = Instant::now();
        self.now = woke
            .saturating_duration_since(self.shared.started)
            .as_millis() as u64;
        let mut nevents = 0;
        // New connections first: accepts, connect completions, PROXY headers.
        let tag = self.tag;
        if self.udp.on_ring {
            self.udp_ring_arm_listeners();
        }
        for event in woken.iter().filter(|e| is_for(tag, e)) {
            nevents += 1;
            self.dispatch(&event);
        }
        if let Some(ring) = woken.ring {
            nevents += self.udp_ring_completions(ring, woken.completions);
        }
        // Then forwarding, each ready connection with its budget.
        for event in woken.iter().filter(|e| is_for(tag, e)) {
            self.dispatch_forwarding(&event);
        }
        // Last, the bulk flows that spent their budget in an earlier turn.
        self.drive_resumed();
        self.udp_drive_again();
        // Replies of every session that answered this turn: one sendmmsg per 32.
        self.udp_flush();
        self.expire_timers();
        self.udp_expire();
        self.resume_listeners();
        // Only now, after every event of the batch was dispatched, may a key closed in
        // this turn go to a new connection or session (stale events, see `slab`).
        self.conns.release_removed();
        self.udp.release_removed();
        if self.retiring > 0 {
            self.sweep_retired();
        }
        let ran = woke.elapsed().as_nanos() as u64;
        self.shared.loops.worker(self.id).record(ran, nevents);
        if let Some(line) = self.io.errors.report(self.now) {
            log::warn!("worker {}: {line}", self.id);
        }
        nevents
    }

    /// Close what is left once the loop is over, and queue the cancels of its requests on
    /// the thread's ring (which may go on serving other workers, `cpu_group`).
    fn finish(mut self, waiter: &mut Waiter) {
        log::debug!(
            "worker {} stopping with {} connections",
            self.id,
            self.conns.len()
        );
        self.now = self.shared.now_ms();
        let keys: Vec<usize> = self.conns.keys().collect();
        for key in keys {
            self.close(key, End::Shutdown);
        }
        self.udp_close_sessions(None);
        self.udp_ring_release_listeners();
        waiter.after_turns(&mut self.udp.ops);
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.resume.is_empty() || self.udp.has_work() {
            return Some(Duration::ZERO);
        }
        let mut ms = self.timers.timeout_ms(self.now);
        if let Some(udp) = self.udp.timeout_ms(self.now) {
            ms = Some(ms.map_or(udp, |m| m.min(udp)));
        }
        if self.retiring > 0 {
            // Another worker may close the last connection of a retired listener: look again.
            ms = Some(ms.map_or(RETIRED_SWEEP_MS, |m| m.min(RETIRED_SWEEP_MS)));
        }
        for l in &self.listeners {
            if let Some(until) = l.paused_until {
                let wait = until.saturating_sub(self.now);
                ms = Some(ms.map_or(wait, |m| m.min(wait)));
            }
        }
        ms.map(Duration::from_millis)
    }

    fn dispatch(&mut self, event: &Event) {
        let token = Token(event.token().0 & (LOCAL_TOKENS - 1));
        if token.0 == WAKER_LOCAL {
            self.apply_commands();
            return;
        }
        if token.0 >= WAKER_LOCAL - self.listeners.len() {
            let li = WAKER_LOCAL - 1 - token.0;
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
        let phase = conn.phase();
        if matches!(phase, Phase::Forwarding | Phase::Accepted) {
            // Forwarding: the second pass (`dispatch_forwarding`). (`Accepted` never waits
            // for an event.)
            return;
        }
        conn.note_event(backend_side, event);
        match (phase, backend_side) {
            // Client bytes wait in the kernel until the backend is connected; only a PROXY
            // header and (SNI routing) a ClientHello are read before.
            (Phase::ProxyHeader { .. }, false) => self.read_proxy_header(key),
            (Phase::Hello { .. }, false) => self.read_hello(key),
            (Phase::Connecting { .. }, true) => self.connect_event(
                key,
                event.is_writable(),
                event.is_error() || event.is_write_closed(),
            ),
            // A client event while connecting (noted, read once forwarding), or a stale
            // backend-side event of a previous connection on this key: nothing to do.
            _ => {}
        }
    }

    /// Second pass over a turn's events: connections that are forwarding. One in the resume
    /// list only learns its readiness here; it is driven with the resumed ones, once.
    fn dispatch_forwarding(&mut self, event: &Event) {
        let token = Token(event.token().0 & (LOCAL_TOKENS - 1));
        if token.0 >= udp::UDP_TOKEN_BIT {
            // The waker, a listener or a UDP session: the first pass served it.
            return;
        }
        let key = token.0 / 2;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.is_forwarding() {
            return;
        }
        conn.note_event(token.0 % 2 == 1, event);
        if !conn.resume() {
            self.drive(key);
        }
    }

    /// Drive the connections that spent their budget before this turn, in the order they
    /// yielded. Those that spend it again go to the back, for the next turn: a turn drives
    /// each connection at most once, after the events.
    fn drive_resumed(&mut self) {
        if self.resume.is_empty() {
            return;
        }
        std::mem::swap(&mut self.resume, &mut self.resume_spare);
        let list = std::mem::take(&mut self.resume_spare);
        for &(key, generation) in &list {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.generation() != generation || !conn.resume() {
                continue;
            }
            conn.set_resume(false);
            self.drive(key);
        }
        let mut list = list;
        list.clear();
        self.resume_spare = list;
    }

    fn drive(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.is_forwarding() {
            return;
        }
        match conn.drive(&mut self.io, self.now) {
            Drive::Wait => {}
            Drive::Again => {
                if !conn.resume() {
                    conn.set_resume(true);
                    self.resume.push((key, conn.generation()));
                }
            }
            Drive::Finished => self.close(key, End::Finished),
            Drive::Reset => self.close(key, End::Reset),
        }
    }
}
