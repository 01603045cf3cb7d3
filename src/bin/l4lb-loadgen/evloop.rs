//! The worker side every client workload shares: one mio loop per worker thread, the
//! [`Handler`] a workload plugs into it, and the TCP connection life cycle ([`TcpConn`]).
//!
//! Hot path. A worker owns its poller, its connections and its [`Stats`]; it shares nothing
//! but its own `Live` counters and the stop flag (both in [`Ctx`]). Nothing here allocates per
//! turn: the events buffer is allocated once per worker.
//!
//! Depends on the driver's public types only ([`Ctx`]); the driver never calls in here.

use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Poll, Token};

use crate::driver::Ctx;
use crate::net::{self, ErrKind};
use crate::stats::Stats;

/// Poll timeout of every worker loop: how late a worker notices the deadline, the stop flag
/// and expired timeouts at worst. 5 ms keeps timeouts accurate to a few ms at negligible cost.
pub const TICK: Duration = Duration::from_millis(5);

/// Pause before a failed connection is retried, so a refusing target costs at most ~50
/// attempts per second per connection instead of a hot loop.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(20);

/// One workload's connections on one worker's mio loop; [`event_loop`] drives it.
pub trait Handler {
    /// Every `TICK`: open what is due, expire what timed out.
    fn sweep(&mut self, now: Instant, poll: &Poll, ctx: &mut Ctx, st: &mut Stats);
    /// A readiness event for the connection (socket) with index `token`.
    fn event(&mut self, token: usize, poll: &Poll, ctx: &mut Ctx, st: &mut Stats);
    /// How long the next poll may wait (zero when work is queued).
    fn poll_timeout(&self) -> Duration {
        TICK
    }
    /// After the events of one poll have been handled.
    fn after_events(&mut self, _st: &mut Stats) {}
}

/// A worker's hot loop, shared by every client mode but `hold`: creates the poller, builds the
/// handler, then until the deadline (or a stop) sweeps every `TICK` (publishing the live
/// counters) and hands each readiness event to the handler. Allocates nothing per turn.
pub fn event_loop<H: Handler>(mut ctx: Ctx, build: impl FnOnce(&Ctx) -> H) -> Stats {
    let mut st = Stats::new();
    let Some(mut poll) = poller(&ctx, &mut st) else {
        return st;
    };
    let mut h = build(&ctx);
    let mut events = Events::with_capacity(1024);
    let mut next_sweep = ctx.start;
    loop {
        let now = Instant::now();
        if ctx.done(now) {
            break;
        }
        if now >= next_sweep {
            h.sweep(now, &poll, &mut ctx, &mut st);
            st.publish(&ctx.live);
            next_sweep = now + TICK;
        }
        match wait(&mut poll, &mut events, h.poll_timeout(), &ctx) {
            Waited::Ready => {}
            Waited::Interrupted => continue,
            Waited::Failed => {
                st.error(ErrKind::Other);
                break;
            }
        }
        for ev in events.iter() {
            h.event(ev.token().0, &poll, &mut ctx, &mut st);
        }
        h.after_events(&mut st);
    }
    st.publish(&ctx.live);
    st
}

/// The worker's poller; `None` (logged, counted as `other`) when the kernel refuses one.
pub fn poller(ctx: &Ctx, st: &mut Stats) -> Option<Poll> {
    match Poll::new() {
        Ok(p) => Some(p),
        Err(e) => {
            log::error!("worker {}: cannot create a poller: {e}", ctx.index);
            st.error(ErrKind::Other);
            None
        }
    }
}

/// What one [`wait`] gave.
pub enum Waited {
    Ready,
    /// A signal interrupted the poll: check the clocks and poll again.
    Interrupted,
    /// The poll failed (logged); the loop must end.
    Failed,
}

/// One `poll` of at most `timeout`.
pub fn wait(poll: &mut Poll, events: &mut Events, timeout: Duration, ctx: &Ctx) -> Waited {
    match poll.poll(events, Some(timeout)) {
        Ok(()) => Waited::Ready,
        Err(e) if net::interrupted(&e) => Waited::Interrupted,
        Err(e) => {
            log::error!("worker {}: poll failed: {e}", ctx.index);
            Waited::Failed
        }
    }
}

/// A TCP client connection with the life cycle `tcp-rr`, `tcp-crr` and `tcp-stream` share:
/// idle until due, then connecting (bounded by --connect-timeout-ms), then mode-specific
/// states; any failure is counted once by kind, closes the socket (drop deregisters it) and
/// idles the connection for `RETRY_BACKOFF`.
pub trait TcpConn {
    /// `TCP_NODELAY` on the socket (request/response modes).
    const NODELAY: bool;
    fn stream_mut(&mut self) -> &mut Option<TcpStream>;
    fn set_idle(&mut self, retry_at: Instant);
    /// The connect started at `t0` and must complete by `deadline`.
    fn set_connecting(&mut self, t0: Instant, deadline: Instant);

    /// Starts a connect (from the next `--sources` IP) registered under `token`.
    fn open(&mut self, token: usize, poll: &Poll, ctx: &mut Ctx, st: &mut Stats, now: Instant) {
        let target = ctx.opts.target;
        let opened = net::tcp_open(
            poll.registry(),
            Token(token),
            target,
            &mut ctx.sources,
            Self::NODELAY,
        );
        match opened {
            Ok(s) => {
                *self.stream_mut() = Some(s);
                self.set_connecting(now, now + ctx.opts.connect_timeout);
            }
            Err(e) => self.fail(st, ErrKind::of(&e, true), now),
        }
    }

    /// Counts the failure, closes the socket and schedules a reconnect.
    fn fail(&mut self, st: &mut Stats, k: ErrKind, now: Instant) {
        st.error(k);
        *self.stream_mut() = None;
        self.set_idle(now + RETRY_BACKOFF);
    }
}
