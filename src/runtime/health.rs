//! The health checker: one thread with its own mio `Poll`, off the data path.
//!
//! Control path. Every `interval_ms` it connects to each backend of each listener that has a
//! `[listener.health_check]`, optionally sends `send` and waits for `expect`, all within
//! `timeout_ms`; `rise` successes mark a down backend up and `fall` failures in a row mark an
//! up backend down. Workers count passive failures (refused or timed-out connects) in a count
//! of their own (`consecutive_failures`; a data-path success resets only that one, never the
//! checks' `check_failures`) and mark a backend down themselves when it reaches `fall`;
//! this thread then republishes the pool so the Maglev tables move only that backend's keys.
//! Without active checks, a passively downed backend is probed with a plain TCP connect every
//! [`PASSIVE_RETRY_MS`] and comes back on the first success.
//!
//! UDP listeners are checked over UDP, from a socket connected to the backend: the probe sends
//! `send` (an empty datagram when `send` is not set). With `expect`, it succeeds when a reply
//! datagram containing `expect` arrives within `timeout_ms`, and fails on a reply without it,
//! on ICMP port unreachable (ECONNREFUSED) or on the timeout. Without `expect`, UDP has no
//! handshake to wait for, so the probe succeeds on any reply or when `timeout_ms` passes
//! without an ICMP error (the "open|filtered" of a port scan): it detects a closed port or an
//! unreachable host, not a hung service. Set `send`/`expect` to detect that too. A passively
//! downed UDP backend is re-probed that way as well.
//!
//! Invariants: at most one probe in flight per backend (a `timeout_ms` longer than
//! `interval_ms` is allowed: a probe still running delays the next one); every probe ends (success, failure or
//! timeout) and is accounted exactly once; backends are tracked by identity (`Arc` pointer),
//! so a reload that keeps a backend keeps its check state.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};

use crate::backend::Backend;
use crate::config::{HealthCheckConfig, Protocol};
use crate::net::connect::udp_connect;
use crate::state::{ListenerState, SharedState};

/// Back-off before a passively downed backend (no active checks configured) is probed again.
pub const PASSIVE_RETRY_MS: u64 = 5_000;
/// Longest reply we keep while looking for `expect`: a reply is a banner or a short answer,
/// and bounding it bounds a misbehaving backend's cost.
const MAX_REPLY: usize = 16 * 1024;
/// The loop never sleeps longer than this, so reloads and dirty pools are noticed quickly.
const MAX_SLEEP_MS: u64 = 50;

#[derive(Debug)]
enum Phase {
    Connecting,
    Sending(usize),
    Reading(Vec<u8>),
    /// UDP: the datagram is sent; waiting for a reply (or an ICMP error, or the deadline).
    AwaitingDatagram,
}

#[derive(Debug)]
enum ProbeSocket {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

#[derive(Debug)]
struct Probe {
    stream: ProbeSocket,
    deadline: u64,
    phase: Phase,
}

impl Probe {
    fn deregister(&mut self, poll: &Poll) {
        let _ = match &mut self.stream {
            ProbeSocket::Tcp(s) => poll.registry().deregister(s),
            ProbeSocket::Udp(s) => poll.registry().deregister(s),
        };
    }

    /// What reaching the deadline means: a failure, except for a UDP probe without `expect`,
    /// where silence (no ICMP error) is the success.
    fn on_deadline(&self, hc: Option<&HealthCheckConfig>) -> Outcome {
        let expect = hc.and_then(|h| h.expect.as_ref());
        match (&self.stream, expect) {
            (ProbeSocket::Udp(_), None) => Outcome::Success,
            _ => Outcome::Failure("timed out".into()),
        }
    }
}

/// Open a UDP probe: a socket connected to `addr` that has sent `payload`.
fn start_udp_probe(addr: std::net::SocketAddr, payload: &[u8]) -> io::Result<UdpSocket> {
    let socket = udp_connect(addr, None)?;
    socket.send(payload)?;
    Ok(socket)
}

#[derive(Debug)]
struct Target {
    backend: Arc<Backend>,
    listener: Arc<ListenerState>,
    next_due: u64,
    probe: Option<Probe>,
    seen: bool,
}

enum Outcome {
    Pending,
    Success,
    Failure(String),
}

/// Start the checker thread.
pub fn spawn(shared: Arc<SharedState>) -> io::Result<JoinHandle<()>> {
    let poll = Poll::new()?;
    std::thread::Builder::new()
        .name("l4lb-health".into())
        .spawn(move || Checker::new(poll, shared).run())
}

struct Checker {
    poll: Poll,
    shared: Arc<SharedState>,
    /// Keyed by the backend's `Arc` address; the token of a probe is this key.
    targets: HashMap<usize, Target>,
}

fn check_config(l: &ListenerState) -> Option<&HealthCheckConfig> {
    l.config.health_check.as_ref()
}

impl Checker {
    fn new(poll: Poll, shared: Arc<SharedState>) -> Checker {
        Checker {
            poll,
            shared,
            targets: HashMap::new(),
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        while !self.shared.is_shutting_down() {
            let now = self.shared.now_ms();
            self.refresh(now);
            self.start_due(now);
            let sleep = self.next_wake(now);
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(sleep)))
            {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("health checker: poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(MAX_SLEEP_MS));
                }
                continue;
            }
            let now = self.shared.now_ms();
            for event in events.iter() {
                let key = event.token().0;
                self.advance(key, now);
            }
            self.expire(now);
        }
    }

    /// Track the backends of the current listener set; forget the ones a reload removed.
    fn refresh(&mut self, now: u64) {
        for t in self.targets.values_mut() {
            t.seen = false;
        }
        let listeners = self.shared.listeners.load();
        for l in listeners.iter() {
            if l.pool_dirty.swap(false, Ordering::AcqRel) {
                l.republish_pool();
            }
            for b in l.pool.load().backends() {
                let key = Arc::as_ptr(b) as usize;
                let t = self.targets.entry(key).or_insert_with(|| Target {
                    backend: b.clone(),
                    listener: l.clone(),
                    next_due: now,
                    probe: None,
                    seen: true,
                });
                t.seen = true;
                t.listener = l.clone();
            }
        }
        let poll = &self.poll;
        self.targets.retain(|_, t| {
            if !t.seen {
                if let Some(mut p) = t.probe.take() {
                    p.deregister(poll);
                }
            }
            t.seen
        });
    }

    fn start_due(&mut self, now: u64) {
        for (&key, t) in self.targets.iter_mut() {
            if t.probe.is_some() || now < t.next_due {
                continue;
            }
            let (interval, timeout) = match check_config(&t.listener) {
                Some(hc) => (
                    hc.interval.as_millis() as u64,
                    hc.timeout.as_millis() as u64,
                ),
                None => {
                    // Passive only: probe a backend the data path marked down, after a back-off.
                    if t.backend.is_healthy() {
                        t.next_due = now + PASSIVE_RETRY_MS;
                        continue;
                    }
                    let since = t.backend.down_since_ms.load(Ordering::Relaxed);
                    if now < since + PASSIVE_RETRY_MS {
                        t.next_due = since + PASSIVE_RETRY_MS;
                        continue;
                    }
                    (
                        PASSIVE_RETRY_MS,
                        t.listener.config.connect_timeout.as_millis() as u64,
                    )
                }
            };
            t.next_due = now + interval;
            let started = match t.listener.config.protocol {
                Protocol::Tcp => TcpStream::connect(t.backend.addr)
                    .map(|s| (ProbeSocket::Tcp(s), Phase::Connecting)),
                Protocol::Udp => {
                    let payload = check_config(&t.listener)
                        .and_then(|h| h.send.as_deref())
                        .unwrap_or_default();
                    start_udp_probe(t.backend.addr, payload)
                        .map(|s| (ProbeSocket::Udp(s), Phase::AwaitingDatagram))
                }
            };
            match started {
                Ok((mut stream, phase)) => {
                    let registered = match &mut stream {
                        ProbeSocket::Tcp(s) => self.poll.registry().register(
                            s,
                            Token(key),
                            Interest::READABLE | Interest::WRITABLE,
                        ),
                        ProbeSocket::Udp(s) => {
                            self.poll
                                .registry()
                                .register(s, Token(key), Interest::READABLE)
                        }
                    };
                    match registered {
                        Ok(()) => {
                            t.probe = Some(Probe {
                                stream,
                                deadline: now + timeout,
                                phase,
                            })
                        }
                        Err(e) => record(
                            &self.shared,
                            t,
                            false,
                            &format!("cannot register probe: {e}"),
                        ),
                    }
                }
                Err(e) => record(&self.shared, t, false, &format!("connect: {e}")),
            }
        }
    }

    fn next_wake(&self, now: u64) -> u64 {
        self.targets
            .values()
            .map(|t| match &t.probe {
                Some(p) => p.deadline,
                None => t.next_due,
            })
            .min()
            .map_or(MAX_SLEEP_MS, |due| {
                due.saturating_sub(now).min(MAX_SLEEP_MS)
            })
    }

    fn advance(&mut self, key: usize, now: u64) {
        let Some(t) = self.targets.get_mut(&key) else {
            return;
        };
        let Some(probe) = &mut t.probe else {
            return;
        };
        let hc = check_config(&t.listener);
        let outcome = step(probe, hc);
        finish(&self.poll, &self.shared, t, outcome, now);
    }

    fn expire(&mut self, now: u64) {
        for t in self.targets.values_mut() {
            let outcome = match &t.probe {
                Some(p) if now >= p.deadline => p.on_deadline(check_config(&t.listener)),
                _ => continue,
            };
            finish(&self.poll, &self.shared, t, outcome, now);
        }
    }
}

fn finish(poll: &Poll, shared: &SharedState, t: &mut Target, outcome: Outcome, _now: u64) {
    let ok = match outcome {
        Outcome::Pending => return,
        Outcome::Success => true,
        Outcome::Failure(why) => {
            if let Some(mut p) = t.probe.take() {
                p.deregister(poll);
            }
            record(shared, t, false, &why);
            return;
        }
    };
    if let Some(mut p) = t.probe.take() {
        p.deregister(poll);
    }
    record(shared, t, ok, "");
}

/// Drive one probe as far as its socket allows.
fn step(probe: &mut Probe, hc: Option<&HealthCheckConfig>) -> Outcome {
    let send = hc.and_then(|h| h.send.as_deref());
    let expect = hc.and_then(|h| h.expect.as_deref());
    let stream = match &mut probe.stream {
        ProbeSocket::Tcp(s) => s,
        ProbeSocket::Udp(s) => return step_udp(s, expect),
    };
    loop {
        match &mut probe.phase {
            // Only UDP probes wait for a datagram, and they are driven by `step_udp`.
            Phase::AwaitingDatagram => return Outcome::Pending,
            Phase::Connecting => {
                match stream.take_error() {
                    Ok(Some(e)) | Err(e) => return Outcome::Failure(format!("connect: {e}")),
                    Ok(None) => {}
                }
                match stream.peer_addr() {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return Outcome::Pending,
                    Err(e) => return Outcome::Failure(format!("connect: {e}")),
                }
                probe.phase = match (send, expect) {
                    (Some(_), _) => Phase::Sending(0),
                    (None, Some(_)) => Phase::Reading(Vec::new()),
                    (None, None) => return Outcome::Success,
                };
            }
            Phase::Sending(sent) => {
                let payload = send.unwrap_or_default();
                while *sent < payload.len() {
                    match stream.write(&payload[*sent..]) {
                        Ok(n) => *sent += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Outcome::Pending,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Outcome::Failure(format!("send: {e}")),
                    }
                }
                if expect.is_none() {
                    return Outcome::Success;
                }
                probe.phase = Phase::Reading(Vec::new());
            }
            Phase::Reading(got) => {
                let expect = expect.unwrap_or_default();
                let mut chunk = [0u8; 4096];
                loop {
                    match stream.read(&mut chunk) {
                        Ok(0) => {
                            return Outcome::Failure(format!(
                                "closed before sending the expected {:?}",
                                String::from_utf8_lossy(expect)
                            ))
                        }
                        Ok(n) => {
                            got.extend_from_slice(&chunk[..n]);
                            if memchr::memmem::find(got, expect).is_some() {
                                return Outcome::Success;
                            }
                            if got.len() > MAX_REPLY {
                                return Outcome::Failure(
                                    "reply does not contain the expected bytes".into(),
                                );
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Outcome::Pending,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Outcome::Failure(format!("read: {e}")),
                    }
                }
            }
        }
    }
}

/// A UDP probe's socket is readable: a reply (containing `expect`, when set) is a success,
/// ICMP port unreachable (ECONNREFUSED) a failure.
fn step_udp(socket: &UdpSocket, expect: Option<&[u8]>) -> Outcome {
    // Control path, once per probe: a buffer for the largest datagram.
    let mut buf = vec![0u8; crate::net::udp::SLOT_SIZE];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => {
                return match expect {
                    Some(e) if memchr::memmem::find(&buf[..n], e).is_none() => {
                        Outcome::Failure("reply does not contain the expected bytes".into())
                    }
                    _ => Outcome::Success,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Outcome::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Outcome::Failure(format!("udp: {e}")),
        }
    }
}

/// Apply one check result with rise/fall hysteresis; log and republish on a change.
fn record(shared: &SharedState, t: &Target, ok: bool, why: &str) {
    let b = &t.backend;
    let l = &t.listener;
    let (rise, fall) = check_config(l).map_or((1, 1), |hc| (hc.rise, hc.fall));
    if ok {
        b.check_failures.store(0, Ordering::Relaxed);
        if !b.is_healthy() {
            let n = b.consecutive_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= rise && b.set_healthy(true) {
                b.consecutive_successes.store(0, Ordering::Relaxed);
                // Back up: the passive count starts over too, or one failed connect would
                // take it down again at once.
                b.consecutive_failures.store(0, Ordering::Relaxed);
                log::info!(
                    "listener {}: backend {} is UP ({n} successful checks)",
                    l.config.name,
                    b.name
                );
                l.republish_pool();
            }
        }
    } else {
        b.consecutive_successes.store(0, Ordering::Relaxed);
        let n = b.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if b.is_healthy() && n >= fall && b.set_healthy(false) {
            b.down_since_ms.store(shared.now_ms(), Ordering::Relaxed);
            log::info!(
                "listener {}: backend {} is DOWN ({n} failed checks, last: {why})",
                l.config.name,
                b.name
            );
            l.republish_pool();
        }
    }
}
