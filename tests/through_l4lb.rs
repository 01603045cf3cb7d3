//! The load generator and `make demo` through the real balancer: each loadgen workload runs
//! briefly through l4lb to `l4lb-loadgen serve` backends, and the summary must show work done,
//! no errors and ordered percentiles. Loopback only; every child is stopped by PID.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{json_num, latency_percentiles, Conf, L4lb};

const LOADGEN: &str = env!("CARGO_BIN_EXE_l4lb-loadgen");

/// `l4lb-loadgen serve` on a free port; killed on drop.
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Serve {
    fn start(mode: &str) -> Serve {
        let mut child = Command::new(LOADGEN)
            .args([
                "serve",
                "--tcp",
                "127.0.0.1:0",
                "--mode",
                mode,
                "--threads",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn loadgen serve");
        let stdout = child.stdout.take().expect("serve stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("serve banner");
        // "listening on 127.0.0.1:PORT proto=tcp mode=echo"
        let addr = line
            .split_whitespace()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in serve banner {line:?}"));
        Serve { child, addr }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn loadgen(args: &[&str]) -> Output {
    let mut child = Command::new(LOADGEN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadgen");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("wait loadgen").is_some() {
            return child.wait_with_output().expect("loadgen output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("loadgen {args:?} did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Work done, no errors, percentiles present and ordered.
fn check(out: &Output, count_key: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        out.status.success(),
        "loadgen failed: {json}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(json_num(&json, count_key) > 0.0, "no {count_key}: {json}");
    assert_eq!(json_num(&json, "total"), 0.0, "errors: {json}");
    let p = latency_percentiles(&json);
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "percentiles out of order: {json}"
    );
    json
}

fn balancer(backend: SocketAddr) -> L4lb {
    L4lb::start(&Conf::new("round_robin", &[backend]).workers("auto"))
}

#[test]
fn tcp_rr_crr_and_stream_through_l4lb() {
    let echo = Serve::start("echo");
    let lb = balancer(echo.addr);
    let target = lb.addr.to_string();
    let base = [
        "--target",
        target.as_str(),
        "--duration",
        "1",
        "--json",
        "--quiet",
    ];
    let rr = [&["tcp-rr", "--conns", "8", "--size", "64"][..], &base[..]].concat();
    check(&loadgen(&rr), "transactions");
    let crr = [
        &[
            "tcp-crr",
            "--conns",
            "4",
            "--sources",
            "127.0.0.1-127.0.0.8",
        ][..],
        &base[..],
    ]
    .concat();
    check(&loadgen(&crr), "transactions");
    let stream = [
        &["tcp-stream", "--direction", "both", "--conns", "2"][..],
        &base[..],
    ]
    .concat();
    let json = check(&loadgen(&stream), "transactions");
    assert!(json_num(&json, "gbit_s") > 0.0, "no throughput: {json}");
}

#[test]
fn hold_500_through_l4lb_verifies_all() {
    common::raise_nofile_limit();
    let echo = Serve::start("echo");
    let lb = balancer(echo.addr);
    let target = lb.addr.to_string();
    let out = loadgen(&[
        "hold",
        "--target",
        &target,
        "--conns",
        "500",
        "--duration",
        "1",
        "--json",
        "--quiet",
    ]);
    let json = check(&out, "opened");
    assert_eq!(json_num(&json, "opened"), 500.0, "{json}");
    assert_eq!(json_num(&json, "verified"), 500.0, "{json}");
}

#[test]
fn http_crr_through_l4lb_reaches_every_backend() {
    let backends: Vec<Serve> = (0..3).map(|_| Serve::start("http")).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let lb = L4lb::start(&Conf::new("round_robin", &addrs).workers("auto"));
    let target = lb.addr.to_string();
    let out = loadgen(&[
        "tcp-crr",
        "--http",
        "--target",
        &target,
        "--conns",
        "4",
        "--duration",
        "1",
        "--json",
        "--quiet",
    ]);
    let json = check(&out, "transactions");
    let summary: serde_json::Value = serde_json::from_str(&json).expect("a JSON summary");
    for a in &addrs {
        assert!(
            summary["backends"].get(a.to_string()).is_some(),
            "backend {a} got nothing: {json}"
        );
    }
}

/// `make demo` with the test's own binaries (the Makefile's `demo` target is `build` plus this).
#[test]
fn make_demo_shows_all_three_backends() {
    let root = env!("CARGO_MANIFEST_DIR");
    let base = five_free_ports();
    let mut child = Command::new("make")
        .args(["-s", "demo-run"])
        .current_dir(root)
        .env("L4LB_BIN", common::l4lb_bin())
        .env("LOADGEN_BIN", LOADGEN)
        .env("DEMO_DURATION", "2")
        .env("DEMO_PORT_BASE", base.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn make demo-run");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait make").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("make demo did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("demo output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "demo failed:\n{text}");
    for port in [base + 1, base + 2, base + 3] {
        let line = format!("backend       127.0.0.1:{port}  responses=");
        assert!(
            text.contains(&line),
            "backend {port} missing from the demo output:\n{text}"
        );
    }
    assert!(text.contains("p99="), "no latency summary:\n{text}");
    let dashboard = format!("== dashboard: http://127.0.0.1:{}/ ", base + 4);
    assert!(text.contains(&dashboard), "no dashboard address:\n{text}");
}

/// The first of five consecutive loopback ports that nobody holds now (the demo's listener,
/// three backends and the admin API), so parallel test runs never share the demo's ports.
fn five_free_ports() -> u16 {
    // Below the kernel's default ephemeral range (32768-60999): a busy host can have that range
    // full of TIME_WAIT and outgoing connections, so port 0 says little about its neighbours.
    let seed = std::process::id() as u64
        ^ u64::from(
            std::time::UNIX_EPOCH
                .elapsed()
                .map_or(0, |d| d.subsec_nanos()),
        );
    for i in 0..400u64 {
        let base =
            20_000 + ((seed.wrapping_mul(2_654_435_761).wrapping_add(i * 7_919)) % 12_000) as u16;
        let held: Vec<_> = (base..base + 5)
            .map_while(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == 5 {
            return base;
        }
    }
    panic!("no five consecutive free ports on 127.0.0.1 in 400 tries");
}
