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
use mio::Poll;

use crate::driver::{Ctx, Workload};
use crate::evloop::{self, Handler, TcpConn};
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

impl TcpConn for Conn {
    const NODELAY: bool = true;
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

/// The `tcp-rr` workload.
#[derive(Debug)]
pub struct TcpRr;

impl Workload for TcpRr {
    fn run(&self, ctx: Ctx) -> Stats {
        evloop::event_loop(ctx, Worker::new)
    }
}

/// One worker's connections.
struct Worker {
    conns: Vec<Conn>,
    payload: Vec<u8>,
    buf: Vec<u8>,
}

impl Worker {
    fn new(ctx: &Ctx) -> Worker {
        let size = ctx.opts.size;
        Worker {
            conns: (0..ctx.conns)
                .map(|_| Conn {
                    stream: None,
                    state: State::Idle {
                        retry_at: ctx.start,
                    },
                })
                .collect(),
            payload: vec![b'r'; size],
            buf: vec![0u8; size.clamp(4096, 256 * 1024)],
        }
    }
}

impl Handler for Worker {
    fn sweep(&mut self, now: Instant, poll: &Poll, ctx: &mut Ctx, st: &mut Stats) {
        for (i, c) in self.conns.iter_mut().enumerate() {
            let expired = match c.state {
                State::Idle { retry_at } => {
                    if now >= retry_at {
                        c.open(i, poll, ctx, st, now);
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
                c.fail(st, k, now);
            }
        }
    }

    fn event(&mut self, token: usize, _poll: &Poll, ctx: &mut Ctx, st: &mut Stats) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if let Err(k) = drive(c, st, &self.payload, &mut self.buf, ctx.deadline) {
            c.fail(st, k, Instant::now());
        }
    }
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
