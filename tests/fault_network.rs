//! Fault suite (issue 10): faults on the one real link between l4lb and its backend, while 50
//! streaming connections carry generated data that is checked byte for byte on its way back.
//!
//! The backend (an `l4lb-loadgen serve` echo server) runs in a network namespace reached
//! through two TUN devices joined by `tests/helpers/tun_delay.py` (`common::netns::TunLink`;
//! this kernel has no netem): every packet waits 50 ms plus a random 0..20 ms each way, so
//! packets also overtake each other (reordering). l4lb and the clients stay on this host's
//! loopback; every connection from l4lb to the backend crosses that link. On top of the delay,
//! one phase after another on the same link: nothing more, 1% loss both ways (nftables
//! `numgen random mod 100 < 1 drop` in the namespace), the link dropping everything for 5 s in
//! the middle of the streams, and a `tbf` rate limit on both devices. Each phase proves that
//! its fault acted (the relay's reordering count, the drop rules' counters, tbf's overlimits).
//!
//! Asserted for every phase: zero bytes corrupted; every connection either completes or is
//! reset, none ends early with a clean EOF (silently truncated), none hangs past the phase's
//! deadline. Without any added fault every stream must complete.
//!
//! Needs root, `ip`, `nft`, `tc`, `python3` and `/dev/net/tun`; skips with a message otherwise.
//! Names carry the test's PID and everything is removed by the guards.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::netns::TunLink;
use common::*;

const STREAMS: usize = 50;
/// Bytes per stream, echoed back in `CHUNK` round trips (each one at least a round trip of
/// the delayed link: 100-140 ms).
const STREAM_BYTES: usize = 128 * 1024;
const CHUNK: usize = 16 * 1024;
/// A stream that has neither completed nor been reset by then is a failure (a hang). The
/// slowest phase (tbf) needs about 15 s on a busy 2-core machine.
const PHASE_DEADLINE: Duration = Duration::from_secs(60);
/// Nothing else listens in the test's own namespace.
const BACKEND_PORT: u16 = 9000;
const DELAY_MS: u32 = 50;
const JITTER_MS: u32 = 20;
const OUTAGE: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq, Eq)]
enum End {
    Completed,
    Reset,
    /// EOF before every byte came back: a silently truncated stream.
    Truncated(usize),
    Corrupted(usize),
    Hung(usize),
    Other(String),
}

/// One stream: `STREAM_BYTES` of generated data echoed back in `CHUNK` round trips, each
/// compared with what was sent; `progress` counts the chunks that came back.
fn stream(lb: SocketAddr, seed: u64, deadline: Instant, progress: &AtomicUsize) -> End {
    let mut s = match connect(lb) {
        Ok(s) => s,
        Err(e) => return End::Other(format!("connect: {e}")),
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(PHASE_DEADLINE));
    let mut rng = XorShift::new(seed);
    let (mut out, mut back) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut done = 0;
    while done < STREAM_BYTES {
        rng.fill(&mut out);
        match s.write_all(&out) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return End::Reset,
            Err(e) => return End::Other(format!("write: {e}")),
        }
        let mut got = 0;
        while got < CHUNK {
            if Instant::now() >= deadline {
                return End::Hung(done + got);
            }
            match s.read(&mut back[got..]) {
                Ok(0) => return End::Truncated(done + got),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return End::Reset,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return End::Other(format!("read: {e}")),
            }
        }
        if out != back {
            let at = out.iter().zip(&back).position(|(a, b)| a != b).unwrap_or(0);
            return End::Corrupted(done + at);
        }
        done += CHUNK;
        progress.fetch_add(1, Ordering::Relaxed);
    }
    End::Completed
}

/// Run `STREAMS` streams at once while `fault` runs on this thread (it gets the count of
/// chunks echoed so far); returns their ends and how long the phase took.
fn under_fault(lb: SocketAddr, tag: u64, fault: impl FnOnce(&AtomicUsize)) -> (Vec<End>, Duration) {
    let started = Instant::now();
    let deadline = started + PHASE_DEADLINE;
    let progress = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..STREAMS)
        .map(|i| {
            let progress = progress.clone();
            thread::spawn(move || stream(lb, tag * 1000 + i as u64, deadline, &progress))
        })
        .collect();
    fault(&progress);
    let ends = threads
        .into_iter()
        .map(|t| t.join().unwrap_or(End::Other("panicked".into())))
        .collect();
    (ends, started.elapsed())
}

/// Every stream completed or was reset; returns how many completed.
fn check(phase: &str, (ends, took): &(Vec<End>, Duration)) -> usize {
    let completed = ends.iter().filter(|e| **e == End::Completed).count();
    let reset = ends.iter().filter(|e| **e == End::Reset).count();
    eprintln!(
        "{phase}: {completed} completed, {reset} reset of {} in {took:.1?}",
        ends.len()
    );
    for e in ends {
        assert!(
            matches!(e, End::Completed | End::Reset),
            "{phase}: a stream ended with {e:?} (every stream must complete or be reset)"
        );
    }
    completed
}

/// The packets the rules of chain `chain` counted (`counter` statements).
fn dropped(link: &TunLink, chain: &str) -> u64 {
    let text = link
        .ns
        .exec_out(&["nft", "list", "chain", "inet", "l4f", chain]);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn nft(link: &TunLink, command: &str) {
    link.ns.exec(&["nft", command]);
}

/// Add `rule` to both chains, run `during`, return the packets the rules dropped, remove them.
fn with_drop_rule(link: &TunLink, rule: &str, during: impl FnOnce()) -> u64 {
    nft(link, &format!("add rule inet l4f in {rule}"));
    nft(link, &format!("add rule inet l4f out {rule}"));
    during();
    let n = dropped(link, "in") + dropped(link, "out");
    nft(link, "flush chain inet l4f in");
    nft(link, "flush chain inet l4f out");
    n
}

/// `tc -s qdisc show` of a device's root: the tbf's "overlimits" count.
fn overlimits(stats: &str) -> u64 {
    stats
        .split(|c: char| c.is_whitespace() || c == ',' || c == ')')
        .skip_while(|w| *w != "overlimits")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The fastest of a few direct handshakes with the backend (what the link adds).
fn handshake(addr: SocketAddr) -> Duration {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
            assert!(s.is_ok(), "connect {addr} across the link: {s:?}");
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

#[test]
fn delay_jitter_loss_outage_and_rate_limit_between_l4lb_and_backend() {
    let Some(mut link) = TunLink::create("flt", DELAY_MS, JITTER_MS, &["nft", "tc"]) else {
        return;
    };
    nft(&link, "add table inet l4f");
    nft(
        &link,
        "add chain inet l4f in { type filter hook input priority 0; policy accept; }",
    );
    nft(
        &link,
        "add chain inet l4f out { type filter hook output priority 0; policy accept; }",
    );
    let backend_addr = SocketAddr::new(IpAddr::V4(link.far), BACKEND_PORT);
    let mut backend = link
        .ns
        .command(LOADGEN)
        .args(["serve", "--tcp", &backend_addr.to_string()])
        .args(["--mode", "echo", "--threads", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the backend");
    let stdout = backend.stdout.take().expect("stdout");
    link.ns.keep(backend);
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    assert!(line.starts_with("listening on"), "backend banner: {line:?}");
    let direct = handshake(backend_addr);
    assert!(
        direct >= Duration::from_millis(2 * u64::from(DELAY_MS)),
        "the link does not delay: a handshake took {direct:?}"
    );

    let mut conf = Conf::new("round_robin", &[backend_addr]);
    conf.connect_timeout_ms = 5000;
    let lb = L4lb::start(&conf);
    let addr = lb.addr;

    // Delay, jitter and reordering alone: every stream completes intact.
    let phase = under_fault(addr, 1, |_| {});
    assert_eq!(check("50 ms + 0..20 ms each way", &phase), STREAMS);

    // 1% loss both ways on top.
    let lost = with_drop_rule(&link, "numgen random mod 100 < 1 counter drop", || {
        check("+ 1% loss", &under_fault(addr, 2, |_| {}));
    });
    assert!(lost > 0, "the loss rules dropped nothing");

    // The link drops everything for 5 s, once every stream is under way.
    let mut outage = 0;
    let phase = under_fault(addr, 3, |progress| {
        wait_until(Duration::from_secs(20), || {
            progress.load(Ordering::Relaxed) >= STREAMS
        });
        outage = with_drop_rule(&link, "counter drop", || thread::sleep(OUTAGE));
    });
    check("+ link dead for 5 s", &phase);
    assert!(outage > 0, "the dead link dropped nothing");

    // A slow link: a 4 Mbit/s token bucket on both devices (each direction of the link).
    let tbf = [
        "root", "tbf", "rate", "4mbit", "burst", "32kbit", "latency", "200ms",
    ];
    let mut outer_add = vec!["tc", "qdisc", "add", "dev", &link.outer];
    outer_add.extend_from_slice(&tbf);
    common::netns::sh(&outer_add).unwrap_or_else(|e| panic!("{e}"));
    let mut inner_add = vec!["tc", "qdisc", "add", "dev", &link.inner];
    inner_add.extend_from_slice(&tbf);
    link.ns.exec(&inner_add);
    check("+ tbf 4 Mbit/s", &under_fault(addr, 4, |_| {}));
    let limited =
        overlimits(&common::netns::sh_out(&[
            "tc",
            "-s",
            "qdisc",
            "show",
            "dev",
            &link.outer,
        ])) + overlimits(
            &link
                .ns
                .exec_out(&["tc", "-s", "qdisc", "show", "dev", &link.inner]),
        );
    assert!(limited > 0, "tbf never held a packet back");

    drop(lb);
    let relayed = link.finish();
    eprintln!(
        "relay: {relayed}; loss dropped {lost}, the outage {outage}, tbf overlimits {limited}"
    );
    let reordered: u64 = relayed
        .split_whitespace()
        .rev()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(reordered > 0, "the jitter reordered nothing: {relayed:?}");
}
