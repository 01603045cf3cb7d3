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
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::Poll;

use crate::driver::{Ctx, Workload};
use crate::evloop::{self, Handler, TcpConn, TICK};
use crate::net::{self, ConnectState, ErrKind};
use crate::opts::Direction;
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

impl TcpConn for Conn {
    const NODELAY: bool = false;
    fn stream_mut(&mut self) -> &mut Option<TcpStream> {
        &mut self.stream
    }
    fn set_idle(&mut self, retry_at: Instant) {
        self.state = State::Idle { retry_at };
    }
    fn set_connecting(&mut self, _t0: Instant, deadline: Instant) {
        self.state = State::Connecting { deadline };
    }
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

/// The `tcp-stream` workload in one `--direction`.
#[derive(Debug)]
pub struct Bulk {
    pub direction: Direction,
}

impl Workload for Bulk {
    fn run(&self, ctx: Ctx) -> Stats {
        evloop::event_loop(ctx, |ctx| Worker::new(ctx, self.direction))
    }
}

/// One worker's connections.
struct Worker {
    conns: Vec<Conn>,
    /// Connections to drive this turn (ready edge, or still ready after their last turn).
    ready: Vec<usize>,
    direction: Direction,
    payload: Vec<u8>,
    buf: Vec<u8>,
}

impl Worker {
    fn new(ctx: &Ctx, direction: Direction) -> Worker {
        let size = ctx.opts.size;
        Worker {
            conns: (0..ctx.conns)
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
                .collect(),
            ready: Vec::with_capacity(ctx.conns),
            direction,
            payload: vec![b's'; size],
            buf: vec![0u8; size.clamp(64 * 1024, 1024 * 1024)],
        }
    }
}

impl Handler for Worker {
    fn sweep(&mut self, now: Instant, poll: &Poll, ctx: &mut Ctx, st: &mut Stats) {
        for (i, c) in self.conns.iter_mut().enumerate() {
            match c.state {
                State::Idle { retry_at } if now >= retry_at => {
                    c.open(i, poll, ctx, st, now);
                }
                State::Connecting { deadline } if now >= deadline => {
                    c.fail(st, ErrKind::ConnectTimeout, now);
                }
                _ => {}
            }
        }
    }

    fn poll_timeout(&self) -> Duration {
        if self.ready.is_empty() {
            TICK
        } else {
            Duration::ZERO
        }
    }

    fn event(&mut self, token: usize, _poll: &Poll, _ctx: &mut Ctx, _st: &mut Stats) {
        if let Some(c) = self.conns.get_mut(token) {
            if !c.queued {
                c.queued = true;
                self.ready.push(token);
            }
        }
    }

    fn after_events(&mut self, st: &mut Stats) {
        let turn: Vec<usize> = std::mem::take(&mut self.ready);
        for i in turn {
            let Some(c) = self.conns.get_mut(i) else {
                continue;
            };
            c.queued = false;
            match drive(c, st, self.direction, &self.payload, &mut self.buf) {
                Ok(Turn::Blocked) => {}
                Ok(Turn::MoreReady) => {
                    c.queued = true;
                    self.ready.push(i);
                }
                Err(k) => c.fail(st, k, Instant::now()),
            }
        }
    }
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
