//! `core-rtt`: the round trip of one cache line between two CPUs, in nanoseconds.
//!
//! Why a load generator has this: on a VM the host may place two vCPUs on neighbouring cores
//! or far apart (another core complex or socket), and move them while a benchmark runs. Far
//! apart, every cache line that a proxy on one CPU shares with clients on the other (socket
//! buffers, wake-ups) costs several times more, and a proxied request/response run loses 6-19%
//! while a run that stays on one CPU does not change (docs/benchmarks.md). scripts/compare-tools.sh
//! samples this figure during each cell to tell which placement the cell ran in.
//!
//! Not a hot path: two threads, each pinned to one of the two CPUs, hand a counter back and
//! forth `--rounds` times in batches; the output is the median batch's nanoseconds per round
//! trip (one line). The run is bounded in time: a batch that has not finished within
//! `--timeout-ms` (a CPU that never runs the other thread) ends it with exit 1.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;

/// Batches the rounds are split into: the median batch ignores the one an interrupt hit.
const BATCHES: u64 = 9;

/// How often a spinning thread looks at the clock (a clock read costs about one round trip).
const SPINS_PER_CLOCK_READ: u32 = 4096;

#[derive(Debug, Args)]
pub struct CoreRttArgs {
    /// The two CPUs, `A,B`: the first thread runs on A, its partner on B.
    #[arg(long, value_parser = parse_pair)]
    pub cpus: (usize, usize),
    /// Round trips in all (split into 9 batches).
    #[arg(long, default_value_t = 4500, value_parser = clap::value_parser!(u64).range(9..=100_000_000))]
    pub rounds: u64,
    /// Give up when a batch takes longer than this (milliseconds).
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

fn parse_pair(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("{s:?}: expected two CPUs, A,B"))?;
    let cpu = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|e| format!("{v:?}: not a CPU number: {e}"))
    };
    Ok((cpu(a)?, cpu(b)?))
}

/// The counter both threads spin on, alone on its cache line.
#[repr(align(128))]
struct Line(AtomicU64);

/// Spin until `line` holds `want`; false when `deadline` passed or `stop` was raised first.
fn wait_for(line: &Line, want: u64, deadline: Instant, stop: &AtomicBool) -> bool {
    let mut spins = 0u32;
    while line.0.load(Ordering::Acquire) != want {
        std::hint::spin_loop();
        spins += 1;
        if spins == SPINS_PER_CLOCK_READ {
            spins = 0;
            if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
                return false;
            }
        }
    }
    true
}

fn timed_out(cpu_a: usize, cpu_b: usize, timeout: Duration) -> String {
    format!(
        "CPUs {cpu_a} and {cpu_b} did not finish a batch within {} ms",
        timeout.as_millis()
    )
}

fn pin(cpu: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
}

pub fn run(args: CoreRttArgs) -> u8 {
    let (cpu_a, cpu_b) = args.cpus;
    let per_batch = (args.rounds / BATCHES).max(1);
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let line = Arc::new(Line(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));

    let partner = {
        let (line, stop) = (Arc::clone(&line), Arc::clone(&stop));
        thread::Builder::new()
            .name("core-rtt-b".into())
            .spawn(move || {
                if !pin(cpu_b) {
                    stop.store(true, Ordering::Relaxed);
                    return Err(format!("cannot run on CPU {cpu_b}"));
                }
                // Answers each odd value with the next even one, until the last round or a stop.
                for b in 0..BATCHES {
                    let deadline = Instant::now() + timeout;
                    for j in 0..per_batch {
                        let i = b * per_batch + j;
                        if !wait_for(&line, 2 * i + 1, deadline, &stop) {
                            return Err(timed_out(cpu_a, cpu_b, timeout));
                        }
                        line.0.store(2 * i + 2, Ordering::Release);
                    }
                }
                Ok(())
            })
    };
    let partner = match partner {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("core-rtt: cannot start the second thread: {e}");
            return 1;
        }
    };
    if !pin(cpu_a) {
        stop.store(true, Ordering::Relaxed);
        let _ = partner.join();
        eprintln!("core-rtt: cannot run on CPU {cpu_a}");
        return 1;
    }
    let mut batch_ns = Vec::with_capacity(BATCHES as usize);
    let mut ok = true;
    'batches: for b in 0..BATCHES {
        let start = Instant::now();
        let deadline = start + timeout;
        for j in 0..per_batch {
            let i = b * per_batch + j;
            line.0.store(2 * i + 1, Ordering::Release);
            if !wait_for(&line, 2 * i + 2, deadline, &stop) {
                ok = false;
                break 'batches;
            }
        }
        batch_ns.push(start.elapsed().as_nanos() as f64 / per_batch as f64);
    }
    stop.store(true, Ordering::Relaxed);
    let partner = partner
        .join()
        .unwrap_or_else(|_| Err("the second thread panicked".into()));
    if let Err(e) = partner {
        eprintln!("core-rtt: {e}");
        return 1;
    }
    if !ok {
        eprintln!("core-rtt: {}", timed_out(cpu_a, cpu_b, timeout));
        return 1;
    }
    batch_ns.sort_by(f64::total_cmp);
    println!("{:.1}", batch_ns[batch_ns.len() / 2]);
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_parses_two_cpus_and_rejects_the_rest() {
        assert_eq!(parse_pair("0,1"), Ok((0, 1)));
        assert_eq!(parse_pair(" 3 , 7"), Ok((3, 7)));
        assert!(parse_pair("1").is_err());
        assert!(parse_pair("a,1").is_err());
    }

    #[test]
    fn a_round_trip_between_two_threads_is_measured() {
        let cpus = core_affinity::get_core_ids().unwrap_or_default();
        let (a, b) = match cpus.as_slice() {
            [a, b, ..] => (a.id, b.id),
            // One CPU: two spinning threads would only take turns.
            _ => return,
        };
        let code = run(CoreRttArgs {
            cpus: (a, b),
            rounds: 90,
            timeout_ms: 5000,
        });
        assert_eq!(code, 0);
    }
}
