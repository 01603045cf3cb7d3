//! `least_latency` end to end: three backends, one of them behind a path that adds 24 ms to
//! every TCP handshake, and the real binary must send it only a small share of new
//! connections while the two fast ones split the rest.
//!
//! The delay is real network delay, not a slow accept(): this kernel has no netem qdisc, so
//! the slow backend listens in a network namespace reached through two TUN devices, and
//! `tests/helpers/tun_delay.py` copies every packet between them 12 ms late, both ways
//! (`common::netns::TunLink`). The SYN and the SYN-ACK each wait, so the handshake the
//! balancer times takes 24 ms more; the test checks that with a direct connect first. Needs
//! root, `ip`, `/dev/net/tun` and python3; without them it says so and skips. Names carry the
//! test's PID, addresses come from 198.19.0.0/16, and the guards remove the namespace and stop
//! every process started.

mod common;

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::netns::TunLink;
use common::*;

/// Per direction: a handshake (SYN out, SYN-ACK back) takes twice this longer.
const ONE_WAY_DELAY_MS: u32 = 12;
/// In the test's own namespace nothing else listens, so a fixed port cannot collide.
const SLOW_PORT: u16 = 7000;

/// The link with its delay and the slow backend behind it (stopped with the namespace).
fn slow_path() -> Option<(TunLink, SocketAddr)> {
    let mut link = TunLink::create("ll", ONE_WAY_DELAY_MS, 0, &[])?;
    let addr = SocketAddr::new(IpAddr::V4(link.far), SLOW_PORT);
    let backend = link
        .ns
        .command(LOADGEN)
        .args(["serve", "--mode", "echo", "--tcp"])
        .arg(addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the slow backend");
    link.ns.keep(backend);
    let up = wait_until(Duration::from_secs(10), || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    });
    assert!(up, "the slow backend {addr} never answered");
    Some((link, addr))
}

/// The fastest of a few direct connects to `addr` (what one handshake costs).
fn handshake_time(addr: SocketAddr) -> Duration {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
            assert!(s.is_ok(), "connect {addr}: {s:?}");
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

#[test]
fn a_backend_with_a_slow_handshake_gets_a_small_share() {
    let Some((_link, slow)) = slow_path() else {
        return;
    };
    let direct = handshake_time(slow);
    assert!(
        direct >= Duration::from_millis(2 * u64::from(ONE_WAY_DELAY_MS) - 2),
        "the relay does not delay the handshake: {direct:?}"
    );
    let fast = [Backend::echo("f1"), Backend::echo("f2")];
    let conf = Conf::new("least_latency", &[fast[0].addr, fast[1].addr, slow]).workers("2");
    let (lb, admin) = L4lb::start_with_admin(&conf);

    // Four clients open short connections back to back for three seconds (1,000 each at most).
    let until = Instant::now() + Duration::from_secs(3);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let lb = lb.addr;
            std::thread::spawn(move || {
                let mut done = 0u32;
                while Instant::now() < until && done < 1000 {
                    let mut s = connect(lb).expect("connect to l4lb");
                    echo_roundtrip(&mut s, b"ping").expect("echo through l4lb");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let total: u32 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let text = scrape(admin).expect("scrape");
    let count = |a: SocketAddr| {
        metric(
            &text,
            "l4lb_backend_connections_total",
            &[("listener", "t"), ("backend", &a.to_string())],
        )
        .unwrap_or(0.0)
    };
    let counts = [count(fast[0].addr), count(fast[1].addr), count(slow)];
    let sum: f64 = counts.iter().sum();
    let shares: Vec<f64> = counts.iter().map(|c| c / sum.max(1.0)).collect();
    eprintln!(
        "least_latency: direct handshake to the slow backend {direct:?}; {total} connections; \
         counts fast1, fast2, slow = {counts:?}; shares = {shares:.3?}"
    );
    assert!(total >= 200, "only {total} connections in 3 s");
    assert!(
        shares[2] < 0.05,
        "the slow backend took {:.3}: {counts:?}",
        shares[2]
    );
    // The two fast ones are both in this process and both fast, but not equally: the
    // algorithm follows their measured difference, so only ask that each takes a real part.
    assert!(
        shares[0] > 0.1 && shares[1] > 0.1 && shares[0] + shares[1] > 0.95,
        "the fast backends should split the rest: {counts:?}"
    );
}
