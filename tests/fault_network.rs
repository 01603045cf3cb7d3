//! Fault suite (issue 10): faults on a real link between l4lb and its backend. The backend
//! (an `l4lb-loadgen serve` echo server) runs in a network namespace of its own, behind a veth
//! pair; l4lb and the clients stay on this host's loopback. On that link, one after another:
//! 1% packet loss (nftables `numgen random mod 100 < 1 drop`), a link that drops everything
//! for 5 s, and a `tbf` rate limit, each while streaming connections carry generated data
//! that is checked byte for byte on its way back. Zero bytes may be corrupted, and every
//! connection either completes or is reset: none ends early with a clean EOF (silently
//! truncated) and none hangs past its deadline.
//!
//! A second test puts the backend behind a pair of TUN devices joined by
//! `tests/helpers/tun_delay.py` (this kernel has no netem): 50 ms each way plus up to 20 ms of
//! random jitter per packet, so packets are also reordered; the same streams must come through.
//!
//! Needs root, `ip`, `nft`, `tc` (and `python3` for the relay); skips with a message otherwise. Names carry the test's
//! PID (namespace `l4fPID`, links `l4fPIDh`/`l4fPIDb`), addresses are a /30 of 198.18.0.0/15
//! picked from the PID, and the namespace (with its end of the link) is always deleted.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const LOADGEN: &str = env!("CARGO_BIN_EXE_l4lb-loadgen");
const STREAMS: usize = 12;
/// Bytes per stream, echoed back in `CHUNK` round trips.
const STREAM_BYTES: usize = 512 * 1024;
const CHUNK: usize = 16 * 1024;
/// A stream that has neither completed nor been reset by then is a failure (hang).
const STREAM_DEADLINE: Duration = Duration::from_secs(60);
const BACKEND_PORT: u16 = 9000;

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
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

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
            .unwrap_or(false)
    })
}

/// The backend's namespace and the veth pair to it. Drop deletes the namespace, which removes
/// both ends of the link and every rule and qdisc inside it.
struct Link {
    ns: String,
    inner: String,
    backend_ip: Ipv4Addr,
}

impl Link {
    fn new() -> Option<Link> {
        if !is_root() {
            eprintln!("SKIP: needs root for a network namespace");
            return None;
        }
        for tool in [&["ip", "-V"][..], &["nft", "--version"], &["tc", "-V"]] {
            if sh(tool).is_err() {
                eprintln!("SKIP: needs {}", tool[0]);
                return None;
            }
        }
        let pid = std::process::id();
        let ns = format!("l4f{pid}");
        let (outer, inner) = (format!("l4f{pid}h"), format!("l4f{pid}b"));
        // A /30 per PID inside 198.18.0.0/16, so concurrent runs never share addresses (the
        // jitter test below and tests/least_latency.rs use 198.19).
        let n = pid % (1 << 14);
        let base = Ipv4Addr::new(198, 18, (n >> 6) as u8, ((n & 0x3f) << 2) as u8);
        let [a, b, c, d] = base.octets();
        let host_ip = Ipv4Addr::new(a, b, c, d + 1);
        let backend_ip = Ipv4Addr::new(a, b, c, d + 2);
        let link = Link {
            ns: ns.clone(),
            inner: inner.clone(),
            backend_ip,
        };
        let (host_cidr, backend_cidr) = (format!("{host_ip}/30"), format!("{backend_ip}/30"));
        let steps: Vec<Vec<&str>> = vec![
            vec!["ip", "netns", "add", &ns],
            vec![
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
            ],
            vec!["ip", "addr", "add", &host_cidr, "dev", &outer],
            vec!["ip", "link", "set", &outer, "up"],
            vec!["ip", "-n", &ns, "addr", "add", &backend_cidr, "dev", &inner],
            vec!["ip", "-n", &ns, "link", "set", &inner, "up"],
            vec!["ip", "-n", &ns, "link", "set", "lo", "up"],
            vec![
                "ip", "netns", "exec", &ns, "nft", "add", "table", "inet", "l4f",
            ],
            vec![
                "ip",
                "netns",
                "exec",
                &ns,
                "nft",
                "add chain inet l4f in { type filter hook input priority 0; policy accept; }",
            ],
            vec![
                "ip",
                "netns",
                "exec",
                &ns,
                "nft",
                "add chain inet l4f out { type filter hook output priority 0; policy accept; }",
            ],
        ];
        for step in &steps {
            if let Err(e) = sh(step) {
                panic!("network setup failed: {e}");
            }
        }
        Some(link)
    }

    fn nft(&self, command: &str) {
        sh(&["ip", "netns", "exec", &self.ns, "nft", command]).unwrap_or_else(|e| panic!("{e}"));
    }

    fn tc(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.ns, "tc"];
        all.extend_from_slice(args);
        sh(&all).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Start the echo backend inside the namespace.
    fn backend(&self) -> Child {
        let addr = format!("{}:{BACKEND_PORT}", self.backend_ip);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns, LOADGEN, "serve", "--tcp", &addr])
            .args(["--mode", "echo", "--threads", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the backend");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        assert!(line.starts_with("listening on"), "backend banner: {line:?}");
        child
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.ns]);
    }
}

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

/// One stream: `STREAM_BYTES` of generated data echoed back in `CHUNK` round trips.
fn stream(lb: SocketAddr, seed: u64, bytes: usize) -> End {
    let deadline = Instant::now() + STREAM_DEADLINE;
    let mut s = match connect(lb) {
        Ok(s) => s,
        Err(e) => return End::Other(format!("connect: {e}")),
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(STREAM_DEADLINE));
    let mut rng = XorShift::new(seed);
    let (mut out, mut back) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut done = 0;
    while done < bytes {
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
            return End::Corrupted(done);
        }
        done += CHUNK;
    }
    End::Completed
}

/// Run `STREAMS` streams at once while `fault` runs on this thread; returns their ends.
fn under_fault(lb: SocketAddr, tag: u64, fault: impl FnOnce()) -> Vec<End> {
    let threads: Vec<_> = (0..STREAMS)
        .map(|i| thread::spawn(move || stream(lb, tag * 1000 + i as u64, STREAM_BYTES)))
        .collect();
    fault();
    threads
        .into_iter()
        .map(|t| t.join().unwrap_or(End::Other("panicked".into())))
        .collect()
}

fn check(phase: &str, ends: &[End]) -> usize {
    let completed = ends.iter().filter(|e| **e == End::Completed).count();
    let reset = ends.iter().filter(|e| **e == End::Reset).count();
    eprintln!(
        "{phase}: {completed} completed, {reset} reset of {}",
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

#[test]
fn loss_dead_link_and_rate_limit_between_l4lb_and_backend() {
    let Some(link) = Link::new() else { return };
    let mut backend = link.backend();
    let backend_addr = SocketAddr::new(IpAddr::V4(link.backend_ip), BACKEND_PORT);
    let mut conf = Conf::new("round_robin", &[backend_addr]);
    conf.connect_timeout_ms = 5000;
    let lb = L4lb::start(&conf);
    let addr = lb.addr;

    // Baseline: the path works.
    let ends = under_fault(addr, 1, || {});
    assert_eq!(check("no fault", &ends), STREAMS);

    // 1% loss both ways on the link: TCP recovers, every stream completes intact.
    link.nft("add rule inet l4f in numgen random mod 100 < 1 drop");
    link.nft("add rule inet l4f out numgen random mod 100 < 1 drop");
    let ends = under_fault(addr, 2, || {});
    check("1% loss", &ends);
    link.nft("flush chain inet l4f in");
    link.nft("flush chain inet l4f out");

    // The link drops everything for 5 s in the middle of the streams.
    let ends = under_fault(addr, 3, || {
        thread::sleep(Duration::from_millis(300));
        link.nft("add rule inet l4f in drop");
        link.nft("add rule inet l4f out drop");
        thread::sleep(Duration::from_secs(5));
        link.nft("flush chain inet l4f in");
        link.nft("flush chain inet l4f out");
    });
    check("dead link for 5 s", &ends);

    // A slow link: the backend's replies leave through a 4 Mbit/s token bucket.
    link.tc(&[
        "qdisc",
        "add",
        "dev",
        &link.inner,
        "root",
        "tbf",
        "rate",
        "4mbit",
        "burst",
        "32kbit",
        "latency",
        "200ms",
    ]);
    let ends = under_fault(addr, 4, || {});
    check("tbf 4 Mbit/s", &ends);
    link.tc(&["qdisc", "del", "dev", &link.inner, "root"]);

    drop(lb);
    let _ = backend.kill();
    let _ = backend.wait();
}

const RELAY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helpers/tun_delay.py");
const DELAY_MS: u32 = 50;
const JITTER_MS: u32 = 20;

/// The backend behind the TUN relay: namespace `l4fjPID`, devices `l4jaPID` (here) and
/// `l4jbPID` (moved into the namespace). Drop stops the backend and the relay (which takes
/// its device with it) and deletes the namespace.
struct Jittery {
    ns: String,
    relay: Option<Child>,
    backend: Option<Child>,
    addr: SocketAddr,
}

impl Jittery {
    fn new() -> Option<Jittery> {
        if !is_root() {
            eprintln!("SKIP: needs root for a network namespace");
            return None;
        }
        for tool in [&["ip", "-V"][..], &["python3", "--version"]] {
            if sh(tool).is_err() {
                eprintln!("SKIP: needs {}", tool[0]);
                return None;
            }
        }
        let pid = std::process::id();
        let (tun_a, tun_b) = (format!("l4ja{pid}"), format!("l4jb{pid}"));
        // A /30 of 198.19.250.0-198.19.255.255 by PID (least_latency.rs stays below .250).
        let n = pid % 384;
        let (c, d) = (250 + (n / 64) as u8, ((n % 64) * 4) as u8);
        let near = Ipv4Addr::new(198, 19, c, d + 1);
        let far = Ipv4Addr::new(198, 19, c, d + 2);
        let mut path = Jittery {
            ns: format!("l4fj{pid}"),
            relay: None,
            backend: None,
            addr: SocketAddr::new(IpAddr::V4(far), BACKEND_PORT),
        };
        let mut relay = Command::new("python3")
            .args([
                RELAY,
                &tun_a,
                &tun_b,
                &DELAY_MS.to_string(),
                &JITTER_MS.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the TUN relay");
        let stdout = relay.stdout.take();
        path.relay = Some(relay);
        let mut line = String::new();
        if let Some(out) = stdout {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        assert_eq!(line.trim(), "ready", "the TUN relay did not start");
        let (near_s, far_s) = (format!("{near}/32"), format!("{far}/32"));
        let ns = path.ns.clone();
        for step in [
            vec!["ip", "netns", "add", &ns],
            vec!["ip", "addr", "add", &near_s, "peer", &far_s, "dev", &tun_a],
            vec!["ip", "link", "set", &tun_a, "up"],
            vec!["ip", "link", "set", &tun_b, "netns", &ns],
            vec!["ip", "-n", &ns, "link", "set", "lo", "up"],
            vec![
                "ip", "-n", &ns, "addr", "add", &far_s, "peer", &near_s, "dev", &tun_b,
            ],
            vec!["ip", "-n", &ns, "link", "set", &tun_b, "up"],
        ] {
            sh(&step).unwrap_or_else(|e| panic!("network setup failed: {e}"));
        }
        let backend = Command::new("ip")
            .args([
                "netns", "exec", &ns, LOADGEN, "serve", "--mode", "echo", "--tcp",
            ])
            .arg(path.addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the backend");
        path.backend = Some(backend);
        let addr = path.addr;
        assert!(
            wait_until(Duration::from_secs(10), || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            }),
            "the backend behind the relay never answered"
        );
        Some(path)
    }
}

impl Drop for Jittery {
    fn drop(&mut self) {
        for child in [self.backend.take(), self.relay.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = sh(&["ip", "netns", "del", &self.ns]);
    }
}

#[test]
fn delay_jitter_and_reordering_between_l4lb_and_backend() {
    let Some(path) = Jittery::new() else { return };
    let mut conf = Conf::new("round_robin", &[path.addr]);
    conf.connect_timeout_ms = 5000;
    let lb = L4lb::start(&conf);
    let addr = lb.addr;
    let threads: Vec<_> = (0..STREAMS)
        .map(|i| thread::spawn(move || stream(addr, 5000 + i as u64, STREAM_BYTES / 4)))
        .collect();
    let ends: Vec<End> = threads
        .into_iter()
        .map(|t| t.join().unwrap_or(End::Other("panicked".into())))
        .collect();
    check("50 ms + 0..20 ms jitter each way", &ends);
    drop(lb);
}
