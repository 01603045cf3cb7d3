//! `hold`: open `--conns` idle connections, keep them, then verify each with one echo.
//!
//! Hot path in three bounded phases, per worker on one mio loop:
//! 1. open: at most `--open-concurrency` connects in flight (split over workers) so the SYN
//!    burst does not overflow the listen backlog; each connect has --connect-timeout-ms and
//!    the phase --open-timeout (what is left then counts as `connect_timeout`). The histogram
//!    records connect latency. All workers then meet at a barrier.
//! 2. hold: `--hold` seconds (default --duration) doing nothing; the balancer carries N idle
//!    connections (this is when scripts sample its memory).
//! 3. verify: every open connection sends `--size` bytes and must get them back within
//!    --timeout-ms; `verified` counts those that did.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Poll, Token};

use crate::driver::{Bounds, Ctx, Workload};
use crate::evloop::{self, Waited, TICK};
use crate::net::{self, ConnectState, ErrKind};
use crate::opts::{ClientOpts, HoldOpts};
use crate::stats::Stats;

/// The `hold` workload with its options.
#[derive(Debug)]
pub struct Hold(pub HoldOpts);

impl Workload for Hold {
    fn run(&self, ctx: Ctx) -> Stats {
        run(ctx, &self.0)
    }

    /// The window is the three phases; the stop flag comes 1 s after them.
    fn bounds(&self, opts: &ClientOpts) -> Bounds {
        let total = phase_bounds(opts, &self.0).total();
        Bounds {
            window: total,
            stop: total + Duration::from_secs(1),
        }
    }
}

/// Upper bounds of the three phases; the driver's clocks derive from `total`.
#[derive(Debug, Clone, Copy)]
struct PhaseBounds {
    open: Duration,
    hold: Duration,
    verify: Duration,
}

impl PhaseBounds {
    /// Open + hold + verify, plus 1 s for the barrier and scheduling.
    fn total(&self) -> Duration {
        self.open + self.hold + self.verify + Duration::from_secs(1)
    }
}

fn phase_bounds(opts: &ClientOpts, h: &HoldOpts) -> PhaseBounds {
    PhaseBounds {
        open: Duration::from_secs_f64(h.open_timeout_s),
        hold: h
            .hold_s
            .map(Duration::from_secs_f64)
            .unwrap_or(opts.duration),
        verify: opts.timeout,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotStarted,
    Connecting { t0: Instant, deadline: Instant },
    Open,
    Verifying { sent: usize, got: usize },
    Done,
}

#[derive(Debug)]
struct Conn {
    stream: Option<TcpStream>,
    state: State,
}

fn run(mut ctx: Ctx, h: &HoldOpts) -> Stats {
    let mut st = Stats::new();
    let bounds = phase_bounds(&ctx.opts, h);
    let mut conns: Vec<Conn> = (0..ctx.conns)
        .map(|_| Conn {
            stream: None,
            state: State::NotStarted,
        })
        .collect();
    match evloop::poller(&ctx, &mut st) {
        Some(mut poll) => {
            open_phase(&mut ctx, &mut poll, &mut conns, &mut st, h, bounds.open);
            ctx.live
                .open_done
                .store(true, std::sync::atomic::Ordering::Relaxed);
            st.publish(&ctx.live);
            ctx.barrier.wait();
            hold_phase(&ctx, bounds.hold);
            verify_phase(&ctx, &mut poll, &mut conns, &mut st, bounds.verify);
        }
        None => {
            ctx.live
                .open_done
                .store(true, std::sync::atomic::Ordering::Relaxed);
            ctx.barrier.wait();
        }
    }
    st.publish(&ctx.live);
    st
}

fn open_phase(
    ctx: &mut Ctx,
    poll: &mut Poll,
    conns: &mut [Conn],
    st: &mut Stats,
    h: &HoldOpts,
    limit: Duration,
) {
    let threads = ctx.opts.threads.max(1);
    let cap = (h.open_concurrency / threads).max(1);
    let end = ctx.start + limit;
    let mut events = Events::with_capacity(1024);
    let mut next = 0usize;
    let mut inflight = 0usize;
    let mut next_sweep = ctx.start;
    loop {
        let now = Instant::now();
        while inflight < cap && next < conns.len() && !ctx.stopped() {
            let c = &mut conns[next];
            let target = ctx.opts.target;
            let t0 = Instant::now();
            match net::tcp_open(poll.registry(), Token(next), target, &mut ctx.sources, true) {
                Ok(s) => {
                    c.stream = Some(s);
                    c.state = State::Connecting {
                        t0,
                        deadline: t0 + ctx.opts.connect_timeout,
                    };
                    inflight += 1;
                }
                Err(e) => {
                    st.error(ErrKind::of(&e, true));
                    c.state = State::Done;
                }
            }
            next += 1;
        }
        if inflight == 0 && (next == conns.len() || ctx.stopped()) {
            break;
        }
        if now >= end || ctx.stopped() {
            break;
        }
        if now >= next_sweep {
            for c in conns.iter_mut() {
                if let State::Connecting { deadline, .. } = c.state {
                    if now >= deadline {
                        st.error(ErrKind::ConnectTimeout);
                        c.stream = None;
                        c.state = State::Done;
                        inflight -= 1;
                    }
                }
            }
            st.publish(&ctx.live);
            next_sweep = now + TICK;
        }
        match evloop::wait(poll, &mut events, TICK, ctx) {
            Waited::Ready => {}
            Waited::Interrupted => continue,
            Waited::Failed => {
                st.error(ErrKind::Other);
                break;
            }
        }
        for ev in events.iter() {
            let Some(c) = conns.get_mut(ev.token().0) else {
                continue;
            };
            let State::Connecting { t0, .. } = c.state else {
                continue;
            };
            let Some(s) = c.stream.as_ref() else {
                continue;
            };
            match net::connect_state(s) {
                ConnectState::Pending => {}
                ConnectState::Connected => {
                    let now = Instant::now();
                    st.latency(t0, now);
                    st.opened += 1;
                    st.open_time = now.duration_since(ctx.start);
                    c.state = State::Open;
                    inflight -= 1;
                }
                ConnectState::Failed(e) => {
                    st.error(ErrKind::of(&e, true));
                    c.stream = None;
                    c.state = State::Done;
                    inflight -= 1;
                }
            }
        }
    }
    // Whatever did not open within the phase (or before a stop signal) counts as a timeout.
    for c in conns.iter_mut() {
        if matches!(c.state, State::NotStarted | State::Connecting { .. }) {
            st.error(ErrKind::ConnectTimeout);
            c.stream = None;
            c.state = State::Done;
        }
    }
}

fn hold_phase(ctx: &Ctx, hold: Duration) {
    let end = Instant::now() + hold;
    loop {
        let now = Instant::now();
        if now >= end || ctx.stopped() {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

fn verify_phase(ctx: &Ctx, poll: &mut Poll, conns: &mut [Conn], st: &mut Stats, limit: Duration) {
    let size = ctx.opts.size;
    let payload = vec![b'h'; size];
    let mut buf = vec![0u8; size.clamp(4096, 256 * 1024)];
    let mut events = Events::with_capacity(1024);
    let mut pending = 0usize;
    for c in conns.iter_mut() {
        if c.state == State::Open {
            c.state = State::Verifying { sent: 0, got: 0 };
            pending += 1;
            step(c, st, &payload, &mut buf, &mut pending);
        }
    }
    let end = Instant::now() + limit;
    while pending > 0 {
        let now = Instant::now();
        if now >= end {
            break;
        }
        st.publish(&ctx.live);
        match evloop::wait(poll, &mut events, (end - now).min(TICK * 20), ctx) {
            Waited::Ready => {}
            Waited::Interrupted => continue,
            Waited::Failed => break,
        }
        for ev in events.iter() {
            if let Some(c) = conns.get_mut(ev.token().0) {
                step(c, st, &payload, &mut buf, &mut pending);
            }
        }
    }
    for c in conns.iter_mut() {
        if let State::Verifying { .. } = c.state {
            st.error(ErrKind::Timeout);
            c.state = State::Done;
        }
        c.stream = None;
    }
}

/// Advances one verification; on success or failure the connection is `Done`.
fn step(c: &mut Conn, st: &mut Stats, payload: &[u8], buf: &mut [u8], pending: &mut usize) {
    let result = verify_io(c, payload, buf);
    match result {
        Ok(false) => return,
        Ok(true) => {
            st.verified += 1;
            st.transactions += 1;
            st.bytes += 2 * payload.len() as u64;
        }
        Err(k) => st.error(k),
    }
    c.state = State::Done;
    c.stream = None;
    *pending -= 1;
}

/// `Ok(true)` when the echo came back complete, `Ok(false)` when it must wait.
fn verify_io(c: &mut Conn, payload: &[u8], buf: &mut [u8]) -> Result<bool, ErrKind> {
    let Some(s) = c.stream.as_mut() else {
        return Ok(false);
    };
    loop {
        let State::Verifying { sent, got } = c.state else {
            return Ok(false);
        };
        if sent < payload.len() {
            match s.write(&payload[sent..]) {
                Ok(0) => return Err(ErrKind::Reset),
                Ok(n) => {
                    c.state = State::Verifying {
                        sent: sent + n,
                        got,
                    }
                }
                Err(e) if net::would_block(&e) => return Ok(false),
                Err(e) if net::interrupted(&e) => {}
                Err(e) => return Err(ErrKind::of(&e, false)),
            }
            continue;
        }
        match s.read(buf) {
            Ok(0) => return Err(ErrKind::ShortRead),
            Ok(n) if got + n > payload.len() => return Err(ErrKind::Other),
            Ok(n) if got + n == payload.len() => return Ok(true),
            Ok(n) => c.state = State::Verifying { sent, got: got + n },
            Err(e) if net::would_block(&e) => return Ok(false),
            Err(e) if net::interrupted(&e) => {}
            Err(e) => return Err(ErrKind::of(&e, false)),
        }
    }
}
