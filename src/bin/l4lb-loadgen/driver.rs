//! Runs a client workload: spawns the workers, prints progress each second, bounds the run in
//! time, merges the per-thread results and prints the summary.
//!
//! Control path (the main thread); the workers are the hot path and share nothing but their
//! own [`Live`] counters and the stop flag. Time bounds, from the start of the run:
//! - `deadline` (= --duration): workers stop starting transactions; in-flight ones are dropped
//!   uncounted.
//! - `soft_end` (deadline + the longest timeout + 1 s): the stop flag is raised, in case a
//!   worker is waiting on something.
//! - `hard_end` (soft_end + 2 s): the summary is printed with whatever has arrived; a worker
//!   still running is reported as missing and dies with the process.
//!
//! `hold` has phases (open, hold, verify) and its own bounds; see [`crate::hold`].

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, RecvTimeoutError};
use mio::net::TcpStream;
use mio::{Events, Poll, Token};

use crate::net::ErrKind;
use crate::opts::{ClientArgs, ClientOpts, Mode};
use crate::report::{progress_line, Summary};
use crate::signals;
use crate::sources::Picker;
use crate::stats::{Live, Stats};
use crate::{hold, net, tcp_crr, tcp_rr, tcp_stream, udp_rr};

/// What one worker gets: its share of the connections and the run's clocks.
#[derive(Debug)]
pub struct Ctx {
    pub index: usize,
    /// Connections (UDP: sockets) this worker drives.
    pub conns: usize,
    pub opts: Arc<ClientOpts>,
    pub live: Arc<Live>,
    pub stop: Arc<AtomicBool>,
    pub start: Instant,
    /// End of the measured window (start + --duration).
    pub deadline: Instant,
    pub sources: Picker,
    /// `hold`: all workers meet here after opening, so the hold phase starts together.
    pub barrier: Arc<Barrier>,
}

impl Ctx {
    /// True once the measured window is over or a signal asked to stop.
    pub fn done(&self, now: Instant) -> bool {
        now >= self.deadline || self.stopped()
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Poll timeout of every worker loop: how late a worker notices the deadline, the stop flag
/// and expired timeouts at worst. 5 ms keeps timeouts accurate to a few ms at negligible cost.
pub const TICK: Duration = Duration::from_millis(5);

/// Pause before a failed connection is retried, so a refusing target costs at most ~50
/// attempts per second per connection instead of a hot loop.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(20);

/// One client workload's connections on one worker's mio loop; [`event_loop`] drives it.
pub trait Workload {
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
/// workload, then until the deadline (or a stop) sweeps every `TICK` (publishing the live
/// counters) and hands each readiness event to the workload. Allocates nothing per turn.
pub fn event_loop<W: Workload>(mut ctx: Ctx, build: impl FnOnce(&Ctx) -> W) -> Stats {
    let mut st = Stats::new();
    let Some(mut poll) = poller(&ctx, &mut st) else {
        return st;
    };
    let mut w = build(&ctx);
    let mut events = Events::with_capacity(1024);
    let mut next_sweep = ctx.start;
    loop {
        let now = Instant::now();
        if ctx.done(now) {
            break;
        }
        if now >= next_sweep {
            w.sweep(now, &poll, &mut ctx, &mut st);
            st.publish(&ctx.live);
            next_sweep = now + TICK;
        }
        match wait(&mut poll, &mut events, w.poll_timeout(), &ctx) {
            Waited::Ready => {}
            Waited::Interrupted => continue,
            Waited::Failed => {
                st.error(ErrKind::Other);
                break;
            }
        }
        for ev in events.iter() {
            w.event(ev.token().0, &poll, &mut ctx, &mut st);
        }
        w.after_events(&mut st);
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

/// Validates the options (exit 2 on a bad combination) and runs the workload.
pub fn start(mode: Mode, args: ClientArgs) -> u8 {
    match ClientOpts::from_args(mode, args) {
        Ok(opts) => run(opts),
        Err(e) => {
            eprintln!("l4lb-loadgen: {e}");
            2
        }
    }
}

fn run(opts: ClientOpts) -> u8 {
    if let Some(limit) = net::raise_nofile_limit() {
        if opts.conns as u64 + 64 > limit {
            eprintln!(
                "l4lb-loadgen: warning: --conns {} is near the open-files limit {limit}; raise `ulimit -n`",
                opts.conns
            );
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let _signal = signals::install(stop.clone());
    let worker: fn(Ctx) -> Stats = match opts.mode {
        Mode::TcpRr => tcp_rr::run,
        Mode::TcpCrr { .. } => tcp_crr::run,
        Mode::TcpStream { .. } => tcp_stream::run,
        Mode::UdpRr => udp_rr::run,
        Mode::Hold(_) => hold::run,
    };
    let longest_timeout = opts.timeout.max(opts.connect_timeout);
    let (deadline_after, soft_after) = match opts.mode {
        Mode::Hold(h) => {
            let total = hold::phase_bounds(&opts, &h).total();
            (total, total + Duration::from_secs(1))
        }
        _ => (
            opts.duration,
            opts.duration + longest_timeout + Duration::from_secs(1),
        ),
    };
    let hard_after = soft_after + Duration::from_secs(2);

    let opts = Arc::new(opts);
    let threads = opts.threads;
    let start = Instant::now();
    let deadline = start + opts.duration;
    let barrier = Arc::new(Barrier::new(threads));
    let (tx, rx) = unbounded::<Stats>();
    let mut lives = Vec::with_capacity(threads);
    for index in 0..threads {
        let live = Arc::new(Live::default());
        lives.push(live.clone());
        let ctx = Ctx {
            index,
            conns: opts.conns / threads + usize::from(index < opts.conns % threads),
            opts: opts.clone(),
            live,
            stop: stop.clone(),
            start,
            deadline,
            sources: Picker::from_opt(opts.sources.as_ref(), index, threads),
            barrier: barrier.clone(),
        };
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("loadgen-{index}"))
            .spawn(move || {
                let _ = tx.send(worker(ctx));
            });
        if let Err(e) = spawned {
            eprintln!("l4lb-loadgen: cannot start worker {index}: {e}");
        }
    }
    drop(tx);

    let to_stderr = opts.json;
    let mut out = Output { to_stderr };
    let mut results: Vec<Stats> = Vec::with_capacity(threads);
    let mut next_tick = start + Duration::from_secs(1);
    let mut last = (start, 0u64, 0u64);
    let mut open_announced = false;
    let soft_end = start + soft_after;
    let hard_end = start + hard_after;
    let mut end = start;
    while results.len() < threads {
        let now = Instant::now();
        if now >= soft_end {
            stop.store(true, Ordering::SeqCst);
        }
        if now >= hard_end {
            break;
        }
        // Wake at the next progress tick, and at least every 100 ms to check the clocks.
        let wait = next_tick
            .saturating_duration_since(now)
            .min(Duration::from_millis(100));
        match rx.recv_timeout(wait) {
            Ok(st) => {
                results.push(st);
                end = Instant::now();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        if let Mode::Hold(h) = opts.mode {
            if !open_announced && lives.iter().all(|l| l.open_done.load(Ordering::Relaxed)) {
                open_announced = true;
                let opened: u64 = lives.iter().map(|l| l.opened.load(Ordering::Relaxed)).sum();
                out.line(&format!(
                    "opened {opened}/{} connections in {:.3}s; holding for {:.1}s",
                    opts.conns,
                    now.duration_since(start).as_secs_f64(),
                    h.hold_s.unwrap_or(opts.duration.as_secs_f64())
                ));
            }
        }
        if now >= next_tick && !opts.quiet {
            let tx_sum: u64 = lives
                .iter()
                .map(|l| l.transactions.load(Ordering::Relaxed))
                .sum();
            let bytes: u64 = lives.iter().map(|l| l.bytes.load(Ordering::Relaxed)).sum();
            let errors: u64 = lives.iter().map(|l| l.errors.load(Ordering::Relaxed)).sum();
            let opened: u64 = lives.iter().map(|l| l.opened.load(Ordering::Relaxed)).sum();
            let dt = now.duration_since(last.0).as_secs_f64();
            let is_hold = matches!(opts.mode, Mode::Hold(_));
            let line = progress_line(
                &opts.mode,
                now.duration_since(start),
                if is_hold { tx_sum } else { tx_sum - last.1 },
                bytes - last.2,
                dt,
                errors,
                opened,
            );
            if now < start + deadline_after + Duration::from_millis(500) {
                out.line(&line);
            }
            last = (now, tx_sum, bytes);
        }
        while next_tick <= now {
            next_tick += Duration::from_secs(1);
        }
    }
    let missing = threads - results.len();
    if missing > 0 {
        end = Instant::now();
    }
    let mut total = Stats::new();
    for st in results {
        total.merge(st);
    }
    let elapsed = match opts.mode {
        Mode::Hold(_) => end.saturating_duration_since(start),
        _ => end.min(deadline).saturating_duration_since(start),
    };
    let summary = Summary::new(&opts, &total, elapsed, missing);
    out.block(&summary.text());
    if opts.json {
        let mut so = std::io::stdout().lock();
        let _ = writeln!(so, "{}", summary.json());
        let _ = so.flush();
    }
    let useful = match opts.mode {
        Mode::Hold(_) => total.verified,
        _ => total.transactions,
    };
    u8::from(useful == 0)
}

/// Progress and the text summary: stdout, or stderr when stdout is reserved for JSON.
struct Output {
    to_stderr: bool,
}

impl Output {
    fn line(&mut self, l: &str) {
        self.block(&format!("{l}\n"));
    }

    fn block(&mut self, b: &str) {
        // A closed pipe must not kill the run: write errors are ignored.
        if self.to_stderr {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(b.as_bytes());
            let _ = e.flush();
        } else {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(b.as_bytes());
            let _ = o.flush();
        }
    }
}
