//! `tcp-crr`: connect, request, response, close per transaction (netperf TCP_CRR).
//!
//! Hot path. Each worker keeps its share of `--conns` transactions in flight on one mio loop;
//! when one ends (success or failure) the slot starts the next at once (after `RETRY_BACKOFF`
//! when the connect itself failed). Latency runs from the connect call to the last response
//! byte, so it includes the handshake the balancer has to relay.
//! - echo: writes `--size` bytes (with `--tls-hello NAME`: a TLS ClientHello naming NAME,
//!   the first flight of a client of an SNI-routed listener), reads them back, closes.
//! - `--http`: writes `GET / HTTP/1.1` with `Connection: close`, reads until EOF, requires a
//!   `200` status, and counts the response under the `backend <ADDR>` named in its body
//!   (parsed by [`crate::http`]).
//!
//! Timeouts: the connect gets --connect-timeout-ms, the response --timeout-ms from connect.

use std::io::{Read, Write};
use std::time::Instant;

use mio::net::TcpStream;
use mio::Poll;

use crate::driver::{Ctx, Workload};
use crate::evloop::{self, Handler, TcpConn};
use crate::http;
use crate::net::{self, ConnectState, ErrKind};
use crate::stats::Stats;

/// Bytes of an HTTP response kept for parsing; the rest is read and counted, not stored.
/// The demo backend's answers are ~80 bytes; 16 KiB leaves room for a real server's headers.
const MAX_HTTP_RESPONSE: usize = 16 * 1024;

const HTTP_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: l4lb-loadgen\r\nConnection: close\r\n\r\n";

#[derive(Debug, Clone, Copy)]
enum State {
    Idle {
        retry_at: Instant,
    },
    Connecting {
        t0: Instant,
        deadline: Instant,
    },
    Sending {
        t0: Instant,
        deadline: Instant,
        sent: usize,
    },
    Receiving {
        t0: Instant,
        deadline: Instant,
        got: usize,
    },
}

#[derive(Debug)]
struct Slot {
    stream: Option<TcpStream>,
    state: State,
    /// `--http`: the response so far (at most MAX_HTTP_RESPONSE bytes).
    resp: Vec<u8>,
}

impl TcpConn for Slot {
    const NODELAY: bool = true;
    fn stream_mut(&mut self) -> &mut Option<TcpStream> {
        &mut self.stream
    }
    fn set_idle(&mut self, retry_at: Instant) {
        self.state = State::Idle { retry_at };
    }
    fn set_connecting(&mut self, t0: Instant, deadline: Instant) {
        // A new transaction: its response starts empty (capacity kept, no allocation).
        self.resp.clear();
        self.state = State::Connecting { t0, deadline };
    }
}

enum Progress {
    Pending,
    Finished,
}

/// The `tcp-crr` workload; `http`: `--http`.
#[derive(Debug)]
pub struct TcpCrr {
    pub http: bool,
}

impl Workload for TcpCrr {
    fn run(&self, ctx: Ctx) -> Stats {
        evloop::event_loop(ctx, |ctx| Worker::new(ctx, self.http))
    }
}

/// One worker's transactions in flight.
struct Worker {
    slots: Vec<Slot>,
    request: Vec<u8>,
    /// Echo: the response length; `None` for `--http` (read until EOF).
    expect: Option<usize>,
    buf: Vec<u8>,
}

impl Worker {
    fn new(ctx: &Ctx, http: bool) -> Worker {
        let request = match (&ctx.opts.tls_hello, http) {
            (_, true) => HTTP_REQUEST.to_vec(),
            (Some(name), false) => l4lb::tls_sni::build_client_hello(Some(name), 0, 16_384),
            (None, false) => vec![b'c'; ctx.opts.size],
        };
        let expect = (!http).then_some(request.len());
        Worker {
            slots: (0..ctx.conns)
                .map(|_| Slot {
                    stream: None,
                    state: State::Idle {
                        retry_at: ctx.start,
                    },
                    resp: Vec::new(),
                })
                .collect(),
            request,
            expect,
            buf: vec![0u8; 64 * 1024],
        }
    }
}

impl Handler for Worker {
    fn sweep(&mut self, now: Instant, poll: &Poll, ctx: &mut Ctx, st: &mut Stats) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            match s.state {
                State::Idle { retry_at } if now >= retry_at => {
                    s.open(i, poll, ctx, st, now);
                }
                State::Connecting { deadline, .. } if now >= deadline => {
                    s.fail(st, ErrKind::ConnectTimeout, now);
                }
                State::Sending { deadline, .. } | State::Receiving { deadline, .. }
                    if now >= deadline =>
                {
                    s.fail(st, ErrKind::Timeout, now);
                }
                _ => {}
            }
        }
    }

    fn event(&mut self, token: usize, poll: &Poll, ctx: &mut Ctx, st: &mut Stats) {
        let Some(s) = self.slots.get_mut(token) else {
            return;
        };
        match drive(s, st, &self.request, self.expect, &mut self.buf, ctx) {
            Ok(Progress::Pending) => {}
            Ok(Progress::Finished) => {
                s.stream = None;
                let now = Instant::now();
                if ctx.done(now) {
                    s.state = State::Idle { retry_at: now };
                } else {
                    s.open(token, poll, ctx, st, now);
                }
            }
            Err(k) => s.fail(st, k, Instant::now()),
        }
    }
}

/// Advances one transaction; `Finished` once its response is complete and counted.
fn drive(
    s: &mut Slot,
    st: &mut Stats,
    request: &[u8],
    expect: Option<usize>,
    buf: &mut [u8],
    ctx: &Ctx,
) -> Result<Progress, ErrKind> {
    let Some(stream) = s.stream.as_mut() else {
        return Ok(Progress::Pending);
    };
    loop {
        match s.state {
            State::Idle { .. } => return Ok(Progress::Pending),
            State::Connecting { t0, .. } => match net::connect_state(stream) {
                ConnectState::Pending => return Ok(Progress::Pending),
                ConnectState::Failed(e) => return Err(ErrKind::of(&e, true)),
                ConnectState::Connected => {
                    s.state = State::Sending {
                        t0,
                        deadline: Instant::now() + ctx.opts.timeout,
                        sent: 0,
                    }
                }
            },
            State::Sending { t0, deadline, sent } => match stream.write(&request[sent..]) {
                Ok(0) => return Err(ErrKind::Reset),
                Ok(n) if sent + n == request.len() => {
                    // Wait for the answer's readable edge rather than read EAGAIN now.
                    s.state = State::Receiving {
                        t0,
                        deadline,
                        got: 0,
                    };
                    return Ok(Progress::Pending);
                }
                Ok(n) => {
                    s.state = State::Sending {
                        t0,
                        deadline,
                        sent: sent + n,
                    }
                }
                Err(e) if net::would_block(&e) => return Ok(Progress::Pending),
                Err(e) if net::interrupted(&e) => {}
                Err(e) => return Err(ErrKind::of(&e, false)),
            },
            State::Receiving { t0, deadline, got } => match stream.read(buf) {
                Ok(0) => {
                    // EOF: the end of an HTTP answer; too early for an echo.
                    if expect.is_some() {
                        return Err(ErrKind::ShortRead);
                    }
                    let name = http::response_backend(&s.resp)?;
                    st.backend(name);
                    st.transaction(t0, Instant::now(), (request.len() + got) as u64);
                    return Ok(Progress::Finished);
                }
                Ok(n) => {
                    let got = got + n;
                    match expect {
                        Some(want) if got > want => return Err(ErrKind::Other),
                        Some(want) if got == want => {
                            st.transaction(t0, Instant::now(), (request.len() + got) as u64);
                            return Ok(Progress::Finished);
                        }
                        Some(_) => {}
                        None => {
                            let room = MAX_HTTP_RESPONSE.saturating_sub(s.resp.len());
                            s.resp.extend_from_slice(&buf[..n.min(room)]);
                        }
                    }
                    s.state = State::Receiving { t0, deadline, got };
                }
                Err(e) if net::would_block(&e) => return Ok(Progress::Pending),
                Err(e) if net::interrupted(&e) => {}
                Err(e) => return Err(ErrKind::of(&e, false)),
            },
        }
    }
}
