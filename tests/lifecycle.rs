//! Signals end to end (SPEC.md, "Signals"; issue 4, "Tests"): the real `l4lb` binary,
//! in-process `id` backends on loopback, and `l4lb_config_reloads_total` read from `/metrics`.
//!
//! SIGHUP reloads the file: a changed backend list under a streaming connection, an invalid
//! file, a listener added and removed. SIGTERM drains: new connects are refused, open
//! connections finish (or are closed at `drain_timeout_s`), the exit code is 0, and a second
//! SIGTERM exits at once. Every wait is bounded (see `common`).

mod common;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use common::*;

/// How long a reload or a drain may take to show (a debug build on a busy 2-core host).
const APPLY: Duration = Duration::from_secs(5);
/// How long the process may take to exit once nothing holds it.
const EXIT: Duration = Duration::from_secs(5);

/// Wait until `l4lb_config_reloads_total` shows `ok` successful reloads (or, when `error` is
/// not 0, `error` failed ones); then check the other result's count.
fn wait_reloads(lb: &L4lb, ok: f64, error: f64) {
    if error > 0.0 {
        lb.wait_reloads("error", error, APPLY);
    } else {
        lb.wait_reloads("ok", ok, APPLY);
    }
    assert_eq!(lb.reloads("ok"), ok, "reloads ok");
    assert_eq!(lb.reloads("error"), error, "reloads error");
}

/// Connect to an `id` backend through `lb`, keep the connection open; returns it and the id.
fn open(lb: SocketAddr) -> (TcpStream, String) {
    let mut s = connect(lb).unwrap_or_else(|e| panic!("connect to {lb}: {e}"));
    let id = read_line(&mut s, IO_TIMEOUT).expect("backend id");
    echo_roundtrip(&mut s, b"hello\n").expect("echo through a fresh connection");
    (s, id)
}

/// Half-close, read the rest (must be nothing), close.
fn finish(mut s: TcpStream) {
    s.shutdown(Shutdown::Write).expect("shutdown");
    let rest = read_until_eof(&mut s, IO_TIMEOUT).expect("EOF after our FIN");
    assert!(
        rest.is_empty(),
        "{} unexpected bytes before EOF",
        rest.len()
    );
}

/// Ids of `n` fresh connections, counted.
fn spread(lb: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        *seen.entry(served_by(lb, None)).or_default() += 1;
    }
    seen
}

fn assert_exit_0(lb: &mut L4lb, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    let Some((status, stderr)) = lb.wait_exit(within) else {
        panic!("{what}: l4lb still running {within:?} later");
    };
    assert_eq!(
        status.code(),
        Some(0),
        "{what}: l4lb exited with {status}; stderr:\n{stderr}"
    );
    started.elapsed()
}

// ---------------------------------------------------------------------------------------------
// SIGHUP
// ---------------------------------------------------------------------------------------------

#[test]
fn sighup_changes_backends_without_touching_a_streaming_connection() {
    const TOTAL: usize = 32 << 20;
    const CHUNK: usize = 64 << 10;
    /// The stream's pace: long enough that the reload lands in its middle.
    const STREAM_TIME: Duration = Duration::from_secs(4);

    let a = Backend::id("a");
    let b = Backend::id("b");
    let c = Backend::id("c");
    let conf = Conf::new("round_robin", &[a.addr]).drain(5);
    let (lb, _) = L4lb::start_with_admin(&conf);

    let (s, id) = open(lb.addr);
    assert_eq!(id, "a");
    let received = Arc::new(AtomicU64::new(0));

    // Writer: paced chunks of a PRNG stream, then our FIN; returns the hash of what it sent.
    let mut w = s.try_clone().expect("clone");
    let writer = thread::spawn(move || -> io::Result<(u64, u64)> {
        let mut rng = XorShift::new(0x5eed);
        let mut hash = StreamHash::new();
        let mut buf = vec![0u8; CHUNK];
        let started = Instant::now();
        let chunks = TOTAL / CHUNK;
        for i in 0..chunks {
            rng.fill(&mut buf);
            hash.update(&buf);
            w.write_all(&buf)?;
            let due = started + STREAM_TIME * (i as u32 + 1) / chunks as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        w.shutdown(Shutdown::Write)?;
        Ok(hash.finish())
    });
    // Reader: everything echoed back until EOF, hashed.
    let mut r = s;
    let progress = received.clone();
    let reader = thread::spawn(move || -> io::Result<(u64, u64)> {
        let mut hash = StreamHash::new();
        let mut buf = vec![0u8; CHUNK];
        let deadline = Instant::now() + STREAM_TIME + Duration::from_secs(20);
        loop {
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "stream too slow"));
            }
            match r.read(&mut buf) {
                Ok(0) => return Ok(hash.finish()),
                Ok(n) => {
                    hash.update(&buf[..n]);
                    progress.fetch_add(n as u64, Ordering::SeqCst);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    });

    assert!(
        wait_until(APPLY, || received.load(Ordering::SeqCst) >= (4 << 20)),
        "the stream did not get going"
    );
    // The streaming connection's backend leaves; two new ones come.
    let mut changed = conf.clone();
    changed.backends = vec![
        format!("addr = \"{}\"", b.addr),
        format!("addr = \"{}\"", c.addr),
    ];
    lb.reload(&changed);
    wait_reloads(&lb, 1.0, 0.0);
    let at_reload = received.load(Ordering::SeqCst);
    assert!(
        at_reload < TOTAL as u64,
        "the stream ended before the reload applied: nothing was tested"
    );

    let seen = spread(lb.addr, 6);
    assert_eq!(
        seen.get("b").copied().unwrap_or(0) + seen.get("c").copied().unwrap_or(0),
        6,
        "new connections after the reload must go to the new backends only: {seen:?}"
    );
    assert!(
        seen.len() == 2,
        "round_robin after the reload should use both new backends: {seen:?}"
    );

    let sent = writer
        .join()
        .expect("writer thread")
        .expect("writing the stream");
    let got = reader
        .join()
        .expect("reader thread")
        .expect("reading the stream");
    assert_eq!(sent.1, TOTAL as u64);
    assert_eq!(
        got, sent,
        "the stream through the removed backend came back different (hash, length)"
    );
    let mut lb = lb;
    lb.assert_running();
}

#[test]
fn sighup_with_an_invalid_file_keeps_the_running_config() {
    let a = Backend::id("a");
    let b = Backend::id("b");
    let c = Backend::id("c");
    let conf = Conf::new("round_robin", &[a.addr, b.addr]).drain(5);
    let (mut lb, _) = L4lb::start_with_admin(&conf);
    let before = spread(lb.addr, 4);
    assert_eq!(before.len(), 2, "{before:?}");

    // Valid TOML that moves everything to c, with one unknown key: the whole file is rejected.
    let mut bad = conf.clone().extra("no_such_key = 1");
    bad.backends = vec![format!("addr = \"{}\"", c.addr)];
    lb.reload(&bad);
    wait_reloads(&lb, 0.0, 1.0);
    lb.assert_running();

    let after = spread(lb.addr, 4);
    assert!(
        after.keys().all(|id| id == "a" || id == "b") && after.len() == 2,
        "after a rejected reload the old backends must keep serving: {after:?}"
    );

    // Not TOML at all: rejected as well.
    lb.reload_text("this is [not toml\n");
    wait_reloads(&lb, 0.0, 2.0);
    lb.assert_running();
    let after = spread(lb.addr, 4);
    assert!(
        after.keys().all(|id| id == "a" || id == "b"),
        "after a rejected reload the old backends must keep serving: {after:?}"
    );
}

#[test]
fn sighup_adds_a_listener_and_removing_it_closes_only_its_port() {
    let a = Backend::id("a");
    let b = Backend::id("b");
    let conf = Conf::new("round_robin", &[a.addr]).drain(5);
    let (lb, _) = L4lb::start_with_admin(&conf);
    let base = lb.render(&conf);
    let u = SocketAddr::new(localhost(), free_port(localhost()));
    let with_u = base.clone() + &tcp_listener_toml("u", u, b.addr);

    lb.reload_text(&with_u);
    wait_reloads(&lb, 1.0, 0.0);
    assert_eq!(served_by(u, None), "b", "the added listener forwards");
    let (kept, id) = open(u);
    assert_eq!(id, "b");
    assert_eq!(served_by(lb.addr, None), "a", "the first listener goes on");

    lb.reload_text(&base);
    wait_reloads(&lb, 2.0, 0.0);
    assert!(
        wait_until(APPLY, || connect_refused(u)),
        "the removed listener's port {u} still accepts {APPLY:?} after the reload"
    );
    assert!(
        connect_refused(u),
        "the removed listener's port accepted again"
    );
    // The connection it accepted before goes on, and ends cleanly.
    let mut kept = kept;
    for i in 0..5 {
        echo_roundtrip(&mut kept, format!("after removal {i}\n").as_bytes())
            .unwrap_or_else(|e| panic!("open connection of the removed listener: {e}"));
    }
    finish(kept);
    assert_eq!(served_by(lb.addr, None), "a", "the first listener goes on");
    let mut lb = lb;
    lb.assert_running();
}

// ---------------------------------------------------------------------------------------------
// SIGTERM
// ---------------------------------------------------------------------------------------------

/// A balancer on `a` with `drain_timeout_s = 30` and one open connection, sent SIGTERM;
/// returns once new connects are refused (the drain has begun).
fn draining(a: &Backend) -> (L4lb, TcpStream) {
    let (lb, _) = L4lb::start_with_admin(&Conf::new("round_robin", &[a.addr]).drain(30));
    let addr = lb.addr;
    let (s, _) = open(addr);
    lb.signal(Signal::SIGTERM);
    assert!(
        wait_until(APPLY, || connect_refused(addr)),
        "new connections still accepted {APPLY:?} after SIGTERM"
    );
    (lb, s)
}

#[test]
fn sigterm_refuses_new_connections_and_waits_for_the_open_one() {
    let a = Backend::id("a");
    let (mut lb, mut s) = draining(&a);
    let addr = lb.addr;
    for _ in 0..3 {
        assert!(connect_refused(addr), "a connect succeeded while draining");
    }
    // The open connection keeps working while the process waits for it.
    for i in 0..5 {
        echo_roundtrip(&mut s, format!("draining {i}\n").as_bytes())
            .unwrap_or_else(|e| panic!("open connection during the drain: {e}"));
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        lb.wait_exit(Duration::ZERO).is_none(),
        "l4lb exited while a connection was open and drain_timeout_s = 30"
    );
    finish(s);
    assert_exit_0(&mut lb, EXIT, "after the last connection closed");
}

#[test]
fn sigterm_closes_what_is_left_at_drain_timeout_and_exits_0() {
    let a = Backend::id("a");
    let (mut lb, _) = L4lb::start_with_admin(&Conf::new("round_robin", &[a.addr]).drain(1));
    // An idle connection whose client never closes.
    let (mut s, _) = open(lb.addr);

    lb.signal(Signal::SIGTERM);
    let took = assert_exit_0(
        &mut lb,
        Duration::from_secs(1) + EXIT,
        "drain_timeout_s = 1",
    );
    assert!(
        took >= Duration::from_millis(800),
        "l4lb exited after {took:?}, before drain_timeout_s = 1, with a connection open"
    );
    let first = first_read(&mut s, Duration::from_secs(2));
    assert!(
        matches!(first, FirstRead::Eof | FirstRead::Reset),
        "the client of a connection closed at the drain timeout got {first:?}"
    );
}

#[test]
fn second_sigterm_during_the_drain_exits_at_once() {
    let a = Backend::id("a");
    let (mut lb, mut s) = draining(&a);
    assert!(
        lb.wait_exit(Duration::ZERO).is_none(),
        "exited before the second signal"
    );
    lb.signal(Signal::SIGTERM);
    // At once: far below the 30 s of drain_timeout_s.
    assert_exit_0(&mut lb, EXIT, "second SIGTERM");
    let first = first_read(&mut s, Duration::from_secs(2));
    assert!(
        matches!(first, FirstRead::Eof | FirstRead::Reset),
        "the open connection after the exit gave {first:?}"
    );
}
