//! `tcp-stream`: bulk transfer (netperf TCP_STREAM / TCP_MAERTS), reported in Gbit/s.
//!
//! Hot path. Each worker streams over its share of `--conns` connections on one mio loop:
//! - send: writes `--size`-byte chunks as fast as the socket takes them (backend: sink; an
//!   echo backend works too, its echo is read and discarded, not counted);
//! - recv: only reads (backend: `serve --mode source`);
//! - both: writes and reads the echo back (backend: echo); bytes in both directions count.
//!
//! Received bytes are always drained so an echo backend never stalls. A "transaction" is one
//! `--size` chunk of the counted direction (received for both), and its latency is the time
//! that chunk took to move: stalls show up in p99/max. A connection is served at most
//! `BURST` reads and writes per turn and then re-queued, so one fast socket cannot starve the
//! others or the clock checks.

use std::io::{Read, Write};
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Events, Poll, Token};

use crate::driver::{Ctx, RETRY_BACKOFF, TICK};
use crate::net::{self, ConnectState, ErrKind};
use crate::opts::{Direction, Mode};
use crate::stats::Stats;

/// Reads plus writes per connection per turn before yielding to the others.
const BURST: usize = 32;

#[derive(Debug, Clone, Copy)]
enum State {
    Idle { retry_at: Instant },
    Connecting { deadline: Instant },
    Streaming,
}

#[derive(Debug)]
struct Conn {
    stream: Option<TcpStream>,
    state: State,
    meter: Meter,
    /// Still ready after a turn: must be driven again without waiting for an edge.
    queued: bool,
}

/// Bytes of the counted direction since connect, and when the current chunk began.
#[derive(Debug)]
struct Meter {
    counted: u64,
    chunk_start: Instant,
    chunks_done: u64,
}

enum Turn {
    Blocked,
    MoreReady,
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
    let direction = match ctx.opts.mode {
        Mode::TcpStream { direction } => direction,
        _ => Direction::Send,
    };
    let size = ctx.opts.size;
    let payload = vec![b's'; size];
    let mut buf = vec![0u8; size.clamp(64 * 1024, 1024 * 1024)];
    let mut events = Events::with_capacity(1024);
    let mut conns: Vec<Conn> = (0..ctx.conns)
        .map(|_| Conn {
            stream: None,
            state: State::Idle {
                retry_at: ctx.start,
            },
            meter: Meter {
                counted: 0,
                chunk_start: ctx.start,
                chunks_done: 0,
            },
            queued: false,
        })
        .collect();
    let mut ready: Vec<usize> = Vec::with_capacity(conns.len());
    let mut next_sweep = ctx.start;
    loop {
        let now = Instant::now();
        if ctx.done(now) {
            break;
        }
        if now >= next_sweep {
            for (i, c) in conns.iter_mut().enumerate() {
                match c.state {
                    State::Idle { retry_at } if now >= retry_at => {
                        open(c, i, &poll, &mut ctx, &mut st, now);
                    }
                    State::Connecting { deadline } if now >= deadline => {
                        fail(c, &mut st, ErrKind::ConnectTimeout, now);
                    }
                    _ => {}
                }
            }
            st.publish(&ctx.live);
            next_sweep = now + TICK;
        }
        let timeout = if ready.is_empty() {
            Some(TICK)
        } else {
            Some(std::time::Duration::ZERO)
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if net::interrupted(&e) {
                continue;
            }
            log::error!("worker {}: poll failed: {e}", ctx.index);
            st.error(ErrKind::Other);
            break;
        }
        for ev in events.iter() {
            let i = ev.token().0;
            if let Some(c) = conns.get_mut(i) {
                if !c.queued {
                    c.queued = true;
                    ready.push(i);
                }
            }
        }
        let turn: Vec<usize> = std::mem::take(&mut ready);
        for i in turn {
            let Some(c) = conns.get_mut(i) else {
                continue;
            };
            c.queued = false;
            match drive(c, &mut st, direction, &payload, &mut buf) {
                Ok(Turn::Blocked) => {}
                Ok(Turn::MoreReady) => {
                    c.queued = true;
                    ready.push(i);
                }
                Err(k) => fail(c, &mut st, k, Instant::now()),
            }
        }
    }
    st.publish(&ctx.live);
    st
}

fn open(c: &mut Conn, i: usize, poll: &Poll, ctx: &mut Ctx, st: &mut Stats, now: Instant) {
    let target = ctx.opts.target;
    match net::tcp_open(poll.registry(), Token(i), target, &mut ctx.sources, false) {
        Ok(s) => {
            c.stream = Some(s);
            c.state = State::Connecting {
                deadline: now + ctx.opts.connect_timeout,
            };
        }
        Err(e) => fail(c, st, ErrKind::of(&e, true), now),
    }
}

fn fail(c: &mut Conn, st: &mut Stats, k: ErrKind, now: Instant) {
    st.error(k);
    c.stream = None;
    c.state = State::Idle {
        retry_at: now + RETRY_BACKOFF,
    };
}

fn drive(
    c: &mut Conn,
    st: &mut Stats,
    direction: Direction,
    payload: &[u8],
    buf: &mut [u8],
) -> Result<Turn, ErrKind> {
    let Some(s) = c.stream.as_mut() else {
        return Ok(Turn::Blocked);
    };
    if let State::Connecting { .. } = c.state {
        match net::connect_state(s) {
            ConnectState::Pending => return Ok(Turn::Blocked),
            ConnectState::Failed(e) => return Err(ErrKind::of(&e, true)),
            ConnectState::Connected => {
                c.state = State::Streaming;
                c.meter = Meter {
                    counted: 0,
                    chunk_start: Instant::now(),
                    chunks_done: 0,
                };
            }
        }
    }
    if !matches!(c.state, State::Streaming) {
        return Ok(Turn::Blocked);
    }
    let writes = direction != Direction::Recv;
    let mut write_blocked = !writes;
    let mut read_blocked = false;
    let size = payload.len() as u64;
    for _ in 0..BURST {
        if !write_blocked {
            match s.write(payload) {
                Ok(0) => return Err(ErrKind::Reset),
                Ok(n) => {
                    st.bytes += n as u64;
                    if direction == Direction::Send {
                        account(&mut c.meter, st, n as u64, size);
                    }
                }
                Err(e) if net::would_block(&e) => write_blocked = true,
                Err(e) if net::interrupted(&e) => {}
                Err(e) => return Err(ErrKind::of(&e, false)),
            }
        }
        if !read_blocked {
            match s.read(buf) {
                Ok(0) => return Err(ErrKind::ShortRead),
                Ok(n) => {
                    if direction != Direction::Send {
                        st.bytes += n as u64;
                        account(&mut c.meter, st, n as u64, size);
                    }
                }
                Err(e) if net::would_block(&e) => read_blocked = true,
                Err(e) if net::interrupted(&e) => {}
                Err(e) => return Err(ErrKind::of(&e, false)),
            }
        }
        if write_blocked && read_blocked {
            return Ok(Turn::Blocked);
        }
    }
    Ok(Turn::MoreReady)
}

/// Adds `n` counted bytes; every completed `size` chunk is one transaction whose latency is
/// its share of the time since the previous chunk completed.
fn account(c: &mut Meter, st: &mut Stats, n: u64, size: u64) {
    c.counted += n;
    let chunks = c.counted / size;
    let new = chunks - c.chunks_done;
    if new == 0 {
        return;
    }
    let now = Instant::now();
    let per = now.saturating_duration_since(c.chunk_start) / new.min(u32::MAX as u64) as u32;
    let us = u64::try_from(per.as_micros()).unwrap_or(u64::MAX).max(1);
    st.hist.saturating_record_n(us, new);
    st.transactions += new;
    c.chunks_done = chunks;
    c.chunk_start = now;
}
