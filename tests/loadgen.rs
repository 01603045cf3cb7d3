//! Integration tests of the `l4lb-loadgen` binary: every subcommand, briefly, against `serve`
//! backends on loopback (port 0), checked through its `--json` summary.
//!
//! Hermetic and bounded: ports come from the kernel, every wait has a deadline, and only the
//! child processes these tests spawned are signalled, by PID. The summary is read with
//! serde_json, by path (`errors.total`, `latency_us.p99`), not by searching the text.
//!
//! Tests through the balancer (loadgen -> l4lb -> serve) and the `make demo` test are added by
//! the lead in their own files (tests/ for l4lb); this file covers the generator alone.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_l4lb-loadgen");

/// A `serve` child; SIGTERM on drop, then SIGKILL if it does not exit in time.
struct Server {
    child: Option<Child>,
    addrs: Vec<SocketAddr>,
    lines: mpsc::Receiver<String>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let listeners = args
            .iter()
            .filter(|a| **a == "--tcp" || **a == "--udp")
            .count();
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .args(["--threads", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn serve");
        let stdout = child.stdout.take().expect("serve stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The guard exists before the wait: a panic below still ends the child (Drop), which
        // would otherwise outlive the test holding its stderr.
        let mut server = Server {
            child: Some(child),
            addrs: Vec::new(),
            lines: rx,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.addrs.len() < listeners {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = server
                .lines
                .recv_timeout(left)
                .expect("serve prints its listeners");
            let addr = line
                .strip_prefix("listening on ")
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_else(|| panic!("unexpected serve line: {line}"));
            server.addrs.push(addr.parse().expect("listener address"));
        }
        server
    }

    fn addr(&self, i: usize) -> String {
        self.addrs[i].to_string()
    }

    /// SIGTERM, wait for the exit (up to 15 s: the `served` lines are asserted, so a loaded
    /// machine gets time), and return the `served ...` lines, read up to EOF.
    fn stop(mut self) -> Vec<String> {
        let mut child = self.child.take().expect("running");
        terminate(&mut child, Duration::from_secs(15));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut served = Vec::new();
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if l.starts_with("served ") {
                served.push(l);
            }
        }
        served
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(5));
        }
    }
}

/// SIGTERM, then SIGKILL if it has not exited within `grace`.
fn terminate(child: &mut Child, grace: Duration) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs the binary to completion within `limit`; kills it (and fails) past that.
fn run(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadgen");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("l4lb-loadgen {args:?} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// The JSON summary: the last line of stdout, one object.
fn summary(o: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&o.stdout);
    let last = stdout.lines().last().unwrap_or("");
    match serde_json::from_str::<Value>(last) {
        Ok(v) if v.is_object() => v,
        r => panic!(
            "no JSON summary ({r:?}); stdout={stdout} stderr={}",
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

/// The number at `path` in the summary (`&["errors", "total"]`); panics when absent.
fn num(j: &Value, path: &[&str]) -> f64 {
    let mut v = j;
    for key in path {
        v = v
            .get(key)
            .unwrap_or_else(|| panic!("{path:?} missing in {j}"));
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{path:?} not a number in {j}"))
}

/// Common checks: work done, no error of any kind, percentiles present and ordered.
fn check_clean(j: &Value) {
    assert!(num(j, &["transactions"]) > 0.0, "{j}");
    assert!(num(j, &["rate"]) > 0.0, "{j}");
    assert_eq!(num(j, &["errors", "total"]), 0.0, "errors in {j}");
    let p: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|k| num(j, &["latency_us", k]))
        .collect();
    assert!(p[0] > 0.0, "{j}");
    assert!(p.windows(2).all(|w| w[0] <= w[1]), "unordered: {j}");
}

const SHORT: Duration = Duration::from_secs(15);

/// Runs a client subcommand with `--json` (within `SHORT`), requires exit 0 and a clean summary
/// (`check_clean`), and returns the output with its JSON summary.
fn run_clean(args: &[&str]) -> (Output, Value) {
    let args = [args, &["--json"]].concat();
    let o = run(&args, SHORT);
    assert!(o.status.success(), "{args:?}: {o:?}");
    let j = summary(&o);
    check_clean(&j);
    (o, j)
}

#[test]
fn tcp_rr_against_echo() {
    let s = Server::start(&["--tcp", "127.0.0.1:0", "--mode", "echo"]);
    let (o, j) = run_clean(&[
        "tcp-rr",
        "--target",
        &s.addr(0),
        "--conns",
        "8",
        "--duration",
        "1.5",
        "--size",
        "64",
        "--threads",
        "2",
    ]);
    assert_eq!(j["mode"], "tcp-rr", "{j}");
    assert_eq!(num(&j, &["bytes"]), num(&j, &["transactions"]) * 128.0);
    // scripts/lib.sh `jget` reads the line with sed: compact, in this key order.
    let line = String::from_utf8_lossy(&o.stdout);
    let line = line.lines().last().unwrap_or("");
    let keys = [
        "mode",
        "target",
        "conns",
        "threads",
        "size",
        "duration_s",
        "transactions",
        "rate",
        "rate_unit",
        "bytes",
        "gbit_s",
        "errors",
        "total",
        "latency_us",
        "p99",
        "samples",
    ];
    let at: Vec<usize> = keys
        .iter()
        .map(|k| line.find(&format!("\"{k}\":")).unwrap_or(usize::MAX))
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "key order: {line}");
    // Progress lines go to stderr when stdout carries JSON.
    assert!(String::from_utf8_lossy(&o.stderr).contains("tx/s"));
}

#[test]
fn tcp_crr_against_echo_with_sources() {
    let s = Server::start(&["--tcp", "127.0.0.1:0", "--mode", "echo"]);
    let (_, j) = run_clean(&[
        "tcp-crr",
        "--target",
        &s.addr(0),
        "--conns",
        "4",
        "--duration",
        "1",
        "--sources",
        "127.0.0.2-127.0.0.5",
    ]);
    assert_eq!(num(&j, &["sources"]), 4.0);
    let served = s.stop();
    let line = served.first().expect("served line");
    let conns: f64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("connections="))
        .and_then(|v| v.parse().ok())
        .expect("connections=");
    // Every completed transaction was its own connection (in-flight ones at the end too).
    assert!(conns >= num(&j, &["transactions"]), "{line} vs {j}");
}

#[test]
fn tcp_crr_http_counts_backends() {
    let s = Server::start(&["--tcp", "127.0.0.1:0", "--mode", "http"]);
    let (o, j) = run_clean(&[
        "tcp-crr",
        "--http",
        "--target",
        &s.addr(0),
        "--conns",
        "4",
        "--duration",
        "1",
    ]);
    let per_backend = num(&j, &["backends", &s.addr(0)]);
    assert_eq!(per_backend, num(&j, &["transactions"]), "{j}");
    assert_eq!(j["backends"].as_object().map(|b| b.len()), Some(1), "{j}");
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(
        text.contains(&format!("backend       {}", s.addr(0))),
        "{text}"
    );
}

#[test]
fn tcp_stream_all_directions() {
    let s = Server::start(&["--tcp", "127.0.0.1:0", "--mode", "echo"]);
    let sink = Server::start(&["--tcp", "127.0.0.1:0", "--mode", "sink"]);
    let source = Server::start(&["--tcp", "127.0.0.1:0", "--mode", "source"]);
    for (dir, target) in [
        ("send", sink.addr(0)),
        ("recv", source.addr(0)),
        ("both", s.addr(0)),
    ] {
        let (_, j) = run_clean(&[
            "tcp-stream",
            "--direction",
            dir,
            "--target",
            &target,
            "--conns",
            "2",
            "--duration",
            "1",
        ]);
        assert!(num(&j, &["gbit_s"]) > 0.0, "{j}");
        assert_eq!(j["direction"], dir, "{j}");
    }
}

#[test]
fn udp_rr_against_echo() {
    let s = Server::start(&["--udp", "127.0.0.1:0", "--mode", "echo"]);
    run_clean(&[
        "udp-rr",
        "--target",
        &s.addr(0),
        "--conns",
        "8",
        "--duration",
        "1",
        "--size",
        "512",
    ]);
    let served = s.stop();
    assert!(served[0].contains("proto=udp"), "{served:?}");
}

#[test]
fn udp_rr_counts_timeouts() {
    // A sink never answers: every request must end as a timeout, not hang or panic.
    let s = Server::start(&["--udp", "127.0.0.1:0", "--mode", "sink"]);
    let o = run(
        &[
            "udp-rr",
            "--target",
            &s.addr(0),
            "--conns",
            "2",
            "--duration",
            "0.6",
            "--timeout-ms",
            "100",
            "--json",
        ],
        SHORT,
    );
    assert_eq!(o.status.code(), Some(1), "no transaction succeeded: {o:?}");
    let j = summary(&o);
    assert_eq!(num(&j, &["transactions"]), 0.0);
    assert!(num(&j, &["errors", "timeout"]) >= 2.0, "{j}");
}

#[test]
fn hold_500_verifies_all() {
    let s = Server::start(&["--tcp", "127.0.0.1:0", "--mode", "echo"]);
    let (o, j) = run_clean(&[
        "hold",
        "--target",
        &s.addr(0),
        "--conns",
        "500",
        "--hold",
        "0.5",
    ]);
    assert_eq!(num(&j, &["opened"]), 500.0, "{j}");
    assert_eq!(num(&j, &["verified"]), 500.0, "{j}");
    assert!(num(&j, &["open_s"]) > 0.0, "{j}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("opened 500/500 connections"));
}

#[test]
fn refused_connections_are_counted_not_fatal() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let target = format!("127.0.0.1:{port}");
    let o = run(
        &[
            "tcp-crr",
            "--target",
            &target,
            "--conns",
            "2",
            "--duration",
            "0.5",
            "--json",
        ],
        SHORT,
    );
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let j = summary(&o);
    assert!(num(&j, &["errors", "connect_refused"]) > 0.0, "{j}");
    assert_eq!(num(&j, &["transactions"]), 0.0);
}

#[test]
fn serve_http_keep_alive_then_close() {
    let s = Server::start(&[
        "--tcp",
        "127.0.0.1:0",
        "--tcp",
        "127.0.0.1:0",
        "--mode",
        "http",
    ]);
    let mut c = TcpStream::connect(s.addrs[1]).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /again HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut all = String::new();
    c.read_to_string(&mut all).expect("read until EOF");
    let want = format!("backend {}\n", s.addrs[1]);
    assert_eq!(all.matches(&want).count(), 3, "{all}");
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 3, "{all}");
    let served = s.stop();
    assert_eq!(served.len(), 2, "{served:?}");
    assert!(
        served[1].contains("connections=1 requests=3 "),
        "{served:?}"
    );
    assert!(served[0].contains("connections=0 requests=0"), "{served:?}");
}

#[test]
fn serve_http_refuses_bad_and_oversized_heads() {
    let s = Server::start(&["--tcp", "127.0.0.1:0", "--mode", "http"]);
    let answer = |req: &[u8]| {
        let mut c = TcpStream::connect(s.addrs[0]).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        c.write_all(req).expect("write");
        // Until EOF; a reset after the answer (the server closes with our bytes unread) ends
        // the read too: the answer is what counts.
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).into_owned()
    };
    let bad = answer(b"hello there\r\n\r\n");
    assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
    // A 17 KiB header and no end of the head: over the 16 KiB bound.
    let mut big = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
    big.resize(17 * 1024, b'a');
    let large = answer(&big);
    assert!(large.starts_with("HTTP/1.1 431 "), "{large}");
    // A body announced by Content-Length is skipped, not read as the next request.
    let ok = answer(
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nGET /GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(ok.matches("HTTP/1.1 200 OK").count(), 2, "{ok}");
    assert!(!ok.contains("400"), "{ok}");
}

#[test]
fn serve_udp_http_names_backend() {
    let s = Server::start(&["--udp", "127.0.0.1:0", "--mode", "http"]);
    let u = UdpSocket::bind("127.0.0.1:0").expect("bind");
    u.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    u.send_to(b"hi", s.addrs[0]).expect("send");
    let mut buf = [0u8; 256];
    let (n, _) = u.recv_from(&mut buf).expect("answer");
    assert_eq!(&buf[..n], format!("backend {}\n", s.addrs[0]).as_bytes());
}

#[test]
fn bad_command_lines_exit_2() {
    let cases: &[&[&str]] = &[
        &["tcp-rr"],
        &["tcp-rr", "--target", "127.0.0.1:1", "--sources", "bogus"],
        &["tcp-rr", "--target", "127.0.0.1:1", "--duration", "0"],
        &["tcp-rr", "--target", "127.0.0.1:1", "--conns", "0"],
        &["udp-rr", "--target", "127.0.0.1:1", "--size", "70000"],
        &["tcp-rr", "--target", "127.0.0.1:1", "--sources", "::1"],
        &["serve", "--mode", "nope", "--tcp", "127.0.0.1:0"],
        &["serve"],
        &["frobnicate"],
    ];
    for args in cases {
        let o = run(args, Duration::from_secs(5));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
    }
}

// Tests through the balancer (loadgen -> l4lb -> serve, e.g. tcp-crr --http distribution and
// hold through l4lb) and the `make demo` test go here or in their own file: added by the lead
// once the balancer binary is complete.
