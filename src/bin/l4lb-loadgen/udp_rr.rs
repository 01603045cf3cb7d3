//! `udp-rr`: datagram request/response (netperf UDP_RR) with a per-request timeout.
//!
//! Hot path. Each worker owns its share of `--conns` connected UDP sockets (one balancer
//! session each) on one mio loop; every socket keeps one `--size` datagram in flight. The
//! first `min(size, 8)` bytes carry a sequence number, so a late answer to a request that
//! already timed out is recognised and ignored instead of being credited to the next one.
//! A request without an answer within --timeout-ms counts as `timeout` and the socket moves
//! on to the next sequence number; an ICMP port-unreachable counts as `connect_refused`.

use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Interest, Poll, Token};

use crate::driver::{Ctx, Workload};
use crate::evloop::{self, Handler, RETRY_BACKOFF};
use crate::net::{self, ErrKind};
use crate::stats::Stats;

#[derive(Debug, Clone, Copy)]
enum State {
    Idle { retry_at: Instant },
    Waiting { t0: Instant, deadline: Instant },
}

#[derive(Debug)]
struct Sock {
    sock: Option<UdpSocket>,
    state: State,
    seq: u64,
}

/// The `udp-rr` workload.
#[derive(Debug)]
pub struct UdpRr;

impl Workload for UdpRr {
    fn run(&self, ctx: Ctx) -> Stats {
        evloop::event_loop(ctx, Worker::new)
    }
}

/// One worker's sockets.
struct Worker {
    socks: Vec<Sock>,
    tag: usize,
    payload: Vec<u8>,
    buf: Vec<u8>,
}

impl Worker {
    fn new(ctx: &Ctx) -> Worker {
        let size = ctx.opts.size;
        Worker {
            socks: (0..ctx.conns)
                .map(|i| Sock {
                    sock: None,
                    state: State::Idle {
                        retry_at: ctx.start,
                    },
                    // Distinct starting points per socket and worker make a stray cross-talk
                    // datagram (e.g. from a misrouting balancer) mismatch.
                    seq: ((ctx.index as u64) << 48) | ((i as u64) << 24),
                })
                .collect(),
            tag: size.min(8),
            payload: vec![b'u'; size],
            buf: vec![0u8; 65_536],
        }
    }
}

impl Handler for Worker {
    fn sweep(&mut self, now: Instant, poll: &Poll, ctx: &mut Ctx, st: &mut Stats) {
        let tag = self.tag;
        for (i, s) in self.socks.iter_mut().enumerate() {
            match s.state {
                State::Idle { retry_at } if now >= retry_at => {
                    if s.sock.is_none() {
                        open(s, i, poll, ctx, st, now);
                    }
                    if s.sock.is_some() {
                        send(s, st, &mut self.payload, tag, ctx, now);
                    }
                }
                State::Waiting { deadline, .. } if now >= deadline => {
                    st.error(ErrKind::Timeout);
                    send(s, st, &mut self.payload, tag, ctx, now);
                }
                _ => {}
            }
        }
    }

    fn event(&mut self, token: usize, _poll: &Poll, ctx: &mut Ctx, st: &mut Stats) {
        let Some(s) = self.socks.get_mut(token) else {
            return;
        };
        receive(s, st, &mut self.payload, self.tag, &mut self.buf, ctx);
    }
}

fn open(s: &mut Sock, i: usize, poll: &Poll, ctx: &mut Ctx, st: &mut Stats, now: Instant) {
    let opened = net::udp_connect(ctx.opts.target, ctx.sources.next_source()).and_then(|mut u| {
        poll.registry()
            .register(&mut u, Token(i), Interest::READABLE)
            .map(|()| u)
    });
    match opened {
        Ok(u) => s.sock = Some(u),
        Err(e) => {
            st.error(ErrKind::of(&e, true));
            s.state = State::Idle {
                retry_at: now + RETRY_BACKOFF,
            };
        }
    }
}

/// Sends the next request; on failure the socket idles for `RETRY_BACKOFF`.
fn send(s: &mut Sock, st: &mut Stats, payload: &mut [u8], tag: usize, ctx: &Ctx, now: Instant) {
    let Some(sock) = s.sock.as_ref() else {
        return;
    };
    s.seq = s.seq.wrapping_add(1);
    payload[..tag].copy_from_slice(&s.seq.to_le_bytes()[..tag]);
    match sock.send(payload) {
        Ok(n) if n == payload.len() => {
            s.state = State::Waiting {
                t0: now,
                deadline: now + ctx.opts.timeout,
            };
        }
        Ok(_) => {
            st.error(ErrKind::Other);
            s.state = State::Idle {
                retry_at: now + RETRY_BACKOFF,
            };
        }
        // Socket buffer full: try again on the next sweep, uncounted.
        Err(e) if net::would_block(&e) || net::interrupted(&e) => {
            s.state = State::Idle { retry_at: now };
        }
        Err(e) => {
            st.error(ErrKind::of(&e, true));
            s.state = State::Idle {
                retry_at: now + RETRY_BACKOFF,
            };
        }
    }
}

/// Drains the socket; the answer to the current request completes it and sends the next.
fn receive(
    s: &mut Sock,
    st: &mut Stats,
    payload: &mut [u8],
    tag: usize,
    buf: &mut [u8],
    ctx: &Ctx,
) {
    loop {
        let Some(sock) = s.sock.as_ref() else {
            return;
        };
        match sock.recv(buf) {
            Ok(n) => {
                let State::Waiting { t0, .. } = s.state else {
                    continue;
                };
                if n != payload.len() || buf[..tag] != s.seq.to_le_bytes()[..tag] {
                    continue; // late answer to a timed-out request, or foreign
                }
                let now = Instant::now();
                st.transaction(t0, now, 2 * n as u64);
                if ctx.done(now) {
                    s.state = State::Idle { retry_at: now };
                    return;
                }
                send(s, st, payload, tag, ctx, now);
            }
            Err(e) if net::would_block(&e) => return,
            Err(e) if net::interrupted(&e) => {}
            Err(e) => {
                // ICMP errors (port unreachable) arrive here on a connected socket.
                st.error(ErrKind::of(&e, true));
                s.state = State::Idle {
                    retry_at: Instant::now() + RETRY_BACKOFF,
                };
                return;
            }
        }
    }
}
