//! `least_latency` end to end: three backends, one of them behind a path that adds 25 ms to
//! every TCP handshake, and the real binary must send it only a small share of new
//! connections while the two fast ones split the rest.
//!
//! The delay is real network delay, not a slow accept(): this kernel has no netem qdisc, so
//! the test creates a network namespace and two TUN devices, one in the root namespace (the
//! route to the slow backend) and one in the namespace (where the slow backend listens), and
//! `tests/helpers/tun_delay.py` copies every packet between them 12.5 ms late, both ways. The
//! SYN and the SYN-ACK each wait, so the handshake the balancer times takes 25 ms more; the
//! test checks that with a direct connect first. Needs root, `ip`, `/dev/net/tun` and
//! python3; without them it says so and skips. Names carry the test's PID, addresses come from
//! 198.18.0.0/15, and the guard removes the namespace and stops every process it started.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LOADGEN: &str = env!("CARGO_BIN_EXE_l4lb-loadgen");
const RELAY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helpers/tun_delay.py");
/// Per direction: a handshake (SYN out, SYN-ACK back) takes twice this longer.
const ONE_WAY_DELAY_MS: u64 = 12;
/// In the test's own namespace nothing else listens, so a fixed port cannot collide.
const SLOW_PORT: u16 = 7000;

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Effective UID 0, from `/proc/self/status` (`Uid: real effective saved fs`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !is_root() {
        return Some("not root (network namespaces and TUN devices need it)".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    for tool in [["ip", "-V"], ["python3", "--version"]] {
        if run(&tool).is_err() {
            return Some(format!("`{}` is not available", tool[0]));
        }
    }
    None
}

/// The namespace, the relay and the slow backend; dropping it removes them all.
struct SlowPath {
    ns: String,
    relay: Option<Child>,
    backend: Option<Child>,
    /// The slow backend's address, as the root namespace reaches it.
    addr: SocketAddr,
}

impl SlowPath {
    fn create() -> Result<SlowPath, String> {
        let pid = std::process::id();
        let (tun_a, tun_b) = (format!("lla{pid}"), format!("llb{pid}"));
        // A /30 of 198.19.0.0/16 chosen by PID, so parallel runs do not share addresses.
        let (c, d) = ((pid % 250) as u8, ((pid / 250) % 60 * 4) as u8);
        let near = Ipv4Addr::new(198, 19, c, d + 1);
        let far = Ipv4Addr::new(198, 19, c, d + 2);
        let mut path = SlowPath {
            ns: format!("l4ll{pid}"),
            relay: None,
            backend: None,
            addr: SocketAddr::new(IpAddr::V4(far), SLOW_PORT),
        };
        let mut relay = Command::new("python3")
            .args([RELAY, &tun_a, &tun_b, &ONE_WAY_DELAY_MS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("python3 {RELAY}: {e}"))?;
        let stdout = relay.stdout.take();
        path.relay = Some(relay);
        let mut line = String::new();
        if let Some(out) = stdout {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        if line.trim() != "ready" {
            return Err(format!("the TUN relay did not start: {line:?}"));
        }
        let (near_s, far_s) = (format!("{near}/32"), format!("{far}/32"));
        let ns = path.ns.clone();
        run(&["ip", "netns", "add", &ns])?;
        run(&["ip", "addr", "add", &near_s, "peer", &far_s, "dev", &tun_a])?;
        run(&["ip", "link", "set", &tun_a, "up"])?;
        run(&["ip", "link", "set", &tun_b, "netns", &ns])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        run(&[
            "ip", "-n", &ns, "addr", "add", &far_s, "peer", &near_s, "dev", &tun_b,
        ])?;
        run(&["ip", "-n", &ns, "link", "set", &tun_b, "up"])?;
        let backend = Command::new("ip")
            .args([
                "netns", "exec", &ns, LOADGEN, "serve", "--mode", "echo", "--tcp",
            ])
            .arg(path.addr.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("loadgen serve in {ns}: {e}"))?;
        path.backend = Some(backend);
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&path.addr, Duration::from_secs(1)).is_ok()
        });
        if !up {
            return Err(format!("the slow backend {} never answered", path.addr));
        }
        Ok(path)
    }
}

impl Drop for SlowPath {
    fn drop(&mut self) {
        for child in [self.backend.take(), self.relay.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting the namespace destroys the TUN device in it; the other one went with the
        // relay's descriptor.
        let _ = run(&["ip", "netns", "del", &self.ns]);
    }
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
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED a_backend_with_a_slow_handshake_gets_a_small_share: {why}");
        return;
    }
    let slow = SlowPath::create().unwrap_or_else(|e| panic!("setting up the slow path: {e}"));
    let direct = handshake_time(slow.addr);
    assert!(
        direct >= Duration::from_millis(2 * ONE_WAY_DELAY_MS - 2),
        "the relay does not delay the handshake: {direct:?}"
    );
    let fast = [Backend::echo("f1"), Backend::echo("f2")];
    let conf = Conf::new("least_latency", &[fast[0].addr, fast[1].addr, slow.addr]).workers("2");
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
    let counts = [count(fast[0].addr), count(fast[1].addr), count(slow.addr)];
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
