//! Runs a client workload: spawns the workers, prints progress each second, bounds the run in
//! time, merges the per-thread results and prints the summary.
//!
//! Control path (the main thread); the workers are the hot path and share nothing but their
//! own [`Live`] counters and the stop flag. The driver knows a workload only through the
//! [`Workload`] trait (`main` maps each subcommand to its implementation); the workloads use
//! the public types here ([`Ctx`], [`Bounds`]) and never the other way round.
//!
//! Time bounds, from the start of the run (see [`Workload::bounds`]):
//! - `window` (default --duration): workers stop starting transactions; in-flight ones are
//!   dropped uncounted.
//! - `stop` (default window + the longest timeout + 1 s): the stop flag is raised, in case a
//!   worker is waiting on something.
//! - `stop` + 2 s: the summary is printed with whatever has arrived; a worker still running is
//!   reported as missing and dies with the process.
//!
//! `hold` has phases (open, hold, verify) and its own bounds; only its progress and summary
//! lines differ here, chosen by [`Mode`].

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, RecvTimeoutError};

use crate::net;
use crate::opts::{ClientArgs, ClientOpts, Mode};
use crate::report::{progress_line, Summary};
use crate::signals;
use crate::sources::Picker;
use crate::stats::{Live, Stats};

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

/// A client workload as the driver sees it: what each worker thread runs and how long the
/// run may take. Each mode implements it in its own file; `main` picks the implementation, so
/// the driver names no workload and the workloads see only the driver's public types.
pub trait Workload: Send + Sync {
    /// One worker's share of the run (its `ctx.conns` connections), on its own thread; returns
    /// when the window is over or the stop flag is raised.
    fn run(&self, ctx: Ctx) -> Stats;

    /// The run's time bounds. Default: the window is --duration, and workers get the longest
    /// timeout plus 1 s after it to finish what is in flight before the stop flag is raised.
    fn bounds(&self, opts: &ClientOpts) -> Bounds {
        Bounds {
            window: opts.duration,
            stop: opts.duration + opts.timeout.max(opts.connect_timeout) + Duration::from_secs(1),
        }
    }
}

/// Time bounds of a run, counted from its start.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// End of the work: progress lines stop 0.5 s after it.
    pub window: Duration,
    /// The stop flag is raised; 2 s later the summary is printed with whatever has arrived.
    pub stop: Duration,
}

/// Validates the options (exit 2 on a bad combination) and runs `workload` (the one `mode`
/// names).
pub fn start(mode: Mode, args: ClientArgs, workload: Arc<dyn Workload>) -> u8 {
    match ClientOpts::from_args(mode, args) {
        Ok(opts) => run(opts, workload),
        Err(e) => {
            eprintln!("l4lb-loadgen: {e}");
            2
        }
    }
}

fn run(opts: ClientOpts, workload: Arc<dyn Workload>) -> u8 {
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
    let Bounds {
        window: deadline_after,
        stop: soft_after,
    } = workload.bounds(&opts);
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
        let workload = workload.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("loadgen-{index}"))
            .spawn(move || {
                let _ = tx.send(workload.run(ctx));
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
        match summary.json() {
            Ok(line) => {
                let mut so = std::io::stdout().lock();
                let _ = writeln!(so, "{line}");
                let _ = so.flush();
            }
            // Not reachable with these field types (string keys, finite numbers); said, not
            // hidden, should that ever change.
            Err(e) => eprintln!("l4lb-loadgen: cannot write the JSON summary: {e}"),
        }
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
