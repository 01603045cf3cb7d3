//! `tcp-rr`: request/response over persistent connections (netperf TCP_RR).
//!
//! Hot path. One mio loop per worker drives its share of `--conns` connections; each keeps one
//! request of `--size` bytes in flight and expects exactly `--size` bytes back (an echo
//! backend). Latency is measured from the first byte written to the last byte read.
//! A failed connection (error, EOF, more bytes than sent, or no answer within --timeout-ms) is
//! counted once by kind, closed, and reopened after `RETRY_BACKOFF`.
//! States: Idle -> Connecting -> (Sending -> Receiving)* ; any failure -> Idle.

use std::io::{Read, Write};
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Events, Poll, Token};

use crate::driver::{Ctx, RETRY_BACKOFF, TICK};
use crate::net::{self, ConnectState, ErrKind};
use crate::stats::Stats;

#[derive(Debug, Clone, Copy)]
enum State {
    Idle { retry_at: Instant },
    Connecting { deadline: Instant },
    Sending { t0: Instant, sent: usize },
    Receiving { t0: Instant, got: usize },
}

#[derive(Debug)]
struct Conn {
    stream: Option<TcpStream>,
    state: State,
}

pub fn run(mut ctx: Ctx) -> Stats {
    let mut st = Stats::new();
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            log::error!("worker {}: cannot create a poller: {e}", ctx.index);
            st.error(ErrKind::Other);
            return st;
        }
    };
    let mut events = Events::with_capacity(1024);
    let size = ctx.opts.size;
    let payload = vec![b'r'; size];
    let mut buf = vec![0u8; size.clamp(4096, 256 * 1024)];
    let mut conns: Vec<Conn> = (0..ctx.conns)
        .map(|_| Conn {
            stream: None,
            state: State::Idle {
                retry_at: ctx.start,
            },
        })
        .collect();
    let mut next_sweep = ctx.start;
    loop {
        let now = Instant::now();
        if ctx.done(now) {
            break;
        }
        if now >= next_sweep {
            for (i, c) in conns.iter_mut().enumerate() {
                let expired = match c.state {
                    State::Idle { retry_at } => {
                        if now >= retry_at {
                            open(c, i, &poll, &mut ctx, &mut st, now);
                        }
                        None
                    }
                    State::Connecting { deadline } => {
                        (now >= deadline).then_some(ErrKind::ConnectTimeout)
                    }
                    State::Sending { t0, .. } | State::Receiving { t0, .. } => {
                        (now >= t0 + ctx.opts.timeout).then_some(ErrKind::Timeout)
                    }
                };
                if let Some(k) = expired {
                    fail(c, &mut st, k, now);
                }
            }
            st.publish(&ctx.live);
            next_sweep = now + TICK;
        }
        if let Err(e) = poll.poll(&mut events, Some(TICK)) {
            if net::interrupted(&e) {
                continue;
            }
            log::error!("worker {}: poll failed: {e}", ctx.index);
            st.error(ErrKind::Other);
            break;
        }
        for ev in events.iter() {
            let Some(c) = conns.get_mut(ev.token().0) else {
                continue;
            };
            if let Err(k) = drive(c, &mut st, &payload, &mut buf, ctx.deadline) {
                fail(c, &mut st, k, Instant::now());
            }
        }
    }
    st.publish(&ctx.live);
    st
}

fn open(c: &mut Conn, i: usize, poll: &Poll, ctx: &mut Ctx, st: &mut Stats, now: Instant) {
    let target = ctx.opts.target;
    match net::tcp_open(poll.registry(), Token(i), target, &mut ctx.sources, true) {
        Ok(s) => {
            c.stream = Some(s);
            c.state = State::Connecting {
                deadline: now + ctx.opts.connect_timeout,
            };
        }
        Err(e) => fail(c, st, ErrKind::of(&e, true), now),
    }
}

/// Counts the failure, closes the socket (drop deregisters it) and schedules a reconnect.
fn fail(c: &mut Conn, st: &mut Stats, k: ErrKind, now: Instant) {
    st.error(k);
    c.stream = None;
    c.state = State::Idle {
        retry_at: now + RETRY_BACKOFF,
    };
}

/// Advances one connection as far as it goes without blocking.
fn drive(
    c: &mut Conn,
    st: &mut Stats,
    payload: &[u8],
    buf: &mut [u8],
    deadline: std::time::Instant,
) -> Result<(), ErrKind> {
    let Some(s) = c.stream.as_mut() else {
        return Ok(());
    };
    loop {
        match c.state {
            State::Idle { .. } => return Ok(()),
            State::Connecting { .. } => match net::connect_state(s) {
                ConnectState::Pending => return Ok(()),
                ConnectState::Failed(e) => return Err(ErrKind::of(&e, true)),
                ConnectState::Connected => {
                    c.state = State::Sending {
                        t0: Instant::now(),
                        sent: 0,
                    }
                }
            },
            State::Sending { t0, sent } => match s.write(&payload[sent..]) {
                Ok(0) => return Err(ErrKind::Reset),
                Ok(n) if sent + n == payload.len() => {
                    // The answer cannot be there yet: wait for its readable edge (epoll
                    // signals every arrival) instead of paying a read that returns EAGAIN.
                    c.state = State::Receiving { t0, got: 0 };
                    return Ok(());
                }
                Ok(n) => c.state = State::Sending { t0, sent: sent + n },
                Err(e) if net::would_block(&e) => return Ok(()),
                Err(e) if net::interrupted(&e) => {}
                Err(e) => return Err(ErrKind::of(&e, false)),
            },
            State::Receiving { t0, got } => match s.read(buf) {
                Ok(0) => return Err(ErrKind::ShortRead),
                Ok(n) if got + n < payload.len() => c.state = State::Receiving { t0, got: got + n },
                Ok(n) if got + n > payload.len() => return Err(ErrKind::Other),
                Ok(_) => {
                    let now = Instant::now();
                    st.transaction(t0, now, 2 * payload.len() as u64);
                    if now >= deadline {
                        // The run is over: park the connection; the loop exits next.
                        c.state = State::Idle { retry_at: deadline };
                        return Ok(());
                    }
                    c.state = State::Sending { t0: now, sent: 0 };
                }
                Err(e) if net::would_block(&e) => return Ok(()),
                Err(e) if net::interrupted(&e) => {}
                Err(e) => return Err(ErrKind::of(&e, false)),
            },
        }
    }
}
