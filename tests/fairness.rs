//! Fairness under mixed load (issue 16): while two bulk downloads keep one worker busy, short
//! connections through the same worker still complete promptly, and the worker's loop-time
//! histogram is in /metrics.
//!
//! One worker, so the bulk flows and the short connections are certain to share it. The bound
//! is generous (a shared 2-CPU CI machine, a debug build): what it catches is a worker that
//! pumps a bulk flow for a long stretch before it looks at a new connection.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{connect, metric, read_exact_within, scrape, Backend, Conf, L4lb, IO_TIMEOUT};

/// Short connections measured (connect, 1-byte request, 1-byte answer, close).
const SHORT: usize = 50;
/// Bound on their p99: hundreds of times what one takes on an idle machine.
const P99_BOUND: Duration = Duration::from_millis(500);
/// Bound on their median, over ten times what it is with fair loop turns on a loaded 2-CPU VM
/// (0.7 ms): a typical short connection must not wait for bulk work either. The old loop,
/// which pumped a bulk flow up to three times per turn, gave 12-124 ms there.
const P50_BOUND: Duration = Duration::from_millis(10);
/// Bytes each bulk download must have moved before the short connections start, and again
/// while they run: proof that the worker was busy with them all along.
const BULK_PROGRESS: u64 = 4 << 20;

/// A backend that streams endlessly to a client whose first byte is `B`, and echoes one
/// byte for any other first byte (then echoes on until EOF).
fn mixed_backend() -> Backend {
    Backend::spawn(
        common::localhost(),
        "mixed",
        Arc::new(|mut s: TcpStream| {
            let mut first = [0u8; 1];
            if s.read_exact(&mut first).is_err() {
                return;
            }
            if first[0] == b'B' {
                let chunk = vec![0x5au8; 64 * 1024];
                while s.write_all(&chunk).is_ok() {}
                return;
            }
            if s.write_all(&first).is_err() {
                return;
            }
            common::echo_conn(s, b"");
        }),
    )
}

/// A bulk download through `lb`: reads and counts until `stop`.
fn bulk(lb: SocketAddr, stop: Arc<AtomicBool>, got: Arc<AtomicU64>) -> io::Result<()> {
    let mut s = connect(lb)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    s.write_all(b"B")?;
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return Err(io::Error::other("bulk stream ended")),
            Ok(n) => {
                got.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One connect-request-close round trip; its duration.
fn short_round_trip(lb: SocketAddr) -> io::Result<Duration> {
    let t = Instant::now();
    let mut s = connect(lb)?;
    s.write_all(b"s")?;
    let back = read_exact_within(&mut s, 1, IO_TIMEOUT)?;
    if back != b"s" {
        return Err(io::Error::other("wrong answer"));
    }
    drop(s);
    Ok(t.elapsed())
}

fn wait_for_progress(counters: &[Arc<AtomicU64>], from: &[u64], within: Duration) -> bool {
    common::wait_until(within, || {
        counters
            .iter()
            .zip(from)
            .all(|(c, &f)| c.load(Ordering::Relaxed) >= f + BULK_PROGRESS)
    })
}

#[test]
fn short_connections_complete_promptly_beside_two_bulk_flows() {
    let backend = mixed_backend();
    let conf = Conf::new("round_robin", &[backend.addr]).workers("1");
    let (lb, admin) = L4lb::start_with_admin(&conf);

    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let flows: Vec<_> = counters
        .iter()
        .map(|got| {
            let (stop, got, addr) = (stop.clone(), got.clone(), lb.addr);
            thread::spawn(move || bulk(addr, stop, got))
        })
        .collect();
    let zero = [0, 0];
    assert!(
        wait_for_progress(&counters, &zero, Duration::from_secs(20)),
        "the bulk downloads did not get going"
    );

    let before: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let mut times = Vec::with_capacity(SHORT);
    for i in 0..SHORT {
        match short_round_trip(lb.addr) {
            Ok(t) => times.push(t),
            Err(e) => panic!("short connection {i} failed: {e}"),
        }
    }
    // The downloads were really running meanwhile (or still are, right after).
    let busy = wait_for_progress(&counters, &before, Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    for f in flows {
        f.join().expect("bulk thread").expect("bulk download");
    }
    assert!(
        busy,
        "the bulk downloads stalled during the short connections"
    );

    times.sort();
    let p50 = times[SHORT / 2];
    let p99 = times[(SHORT - 1) * 99 / 100];
    eprintln!(
        "short connections beside 2 bulk flows: p50 {p50:?} p99 {p99:?} max {:?}",
        times[SHORT - 1]
    );
    assert!(
        p99 < P99_BOUND,
        "p99 of {SHORT} short connections {p99:?} (p50 {p50:?}) while bulk flows ran"
    );
    assert!(
        p50 < P50_BOUND,
        "median of {SHORT} short connections {p50:?} while bulk flows ran"
    );

    // The loop-time histogram counted the worker's iterations.
    let text = scrape(admin).expect("scrape");
    let count = metric(&text, "l4lb_worker_loop_seconds_count", &[]).unwrap_or(0.0);
    let inf = metric(&text, "l4lb_worker_loop_seconds_bucket", &[("le", "+Inf")]);
    assert!(count > 0.0, "no loop iterations in /metrics:\n{text}");
    assert_eq!(inf, Some(count), "the +Inf bucket is the count");
    drop(lb);
}
