//! Health checks end to end (issue 4, "Tests"): the real `l4lb` binary with an `[admin]`
//! section, in-process backends on loopback, and `l4lb_backend_up` read from `/metrics`.
//!
//! Active checks (`[listener.health_check]`, written as an inline table so that `Conf` can
//! carry it) with `rise`/`fall` and `send`/`expect`, passive checks (refused connects, counted
//! against `fall` or `DEFAULT_PASSIVE_FALL` = 3) hidden from clients by `connect_retries`, and
//! the refusal of clients when no backend is up. Every wait is bounded (see `common`).

mod common;

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Fast active checks: a backend changes state within a few hundred milliseconds.
const FAST_CHECKS: &str =
    "health_check = { interval_ms = 100, timeout_ms = 100, rise = 2, fall = 2 }";
/// How long a state change may take to show in `/metrics` (a few intervals on a busy host).
const STATE_CHANGE: Duration = Duration::from_secs(3);

/// `l4lb_backend_up` of backend `addr` of listener "t" (panics if the series is missing).
fn backend_up(admin: SocketAddr, addr: SocketAddr) -> f64 {
    backend_metric(admin, "l4lb_backend_up", addr)
}

fn backend_metric(admin: SocketAddr, name: &str, addr: SocketAddr) -> f64 {
    let backend = addr.to_string();
    metric_at(admin, name, &[("listener", "t"), ("backend", &backend)])
}

fn rejected_no_backend(admin: SocketAddr) -> f64 {
    metric_at(
        admin,
        "l4lb_connections_rejected_total",
        &[("listener", "t"), ("reason", "no_backend")],
    )
}

/// One full client connection through an `id` backend: the id, an echo round trip, a clean
/// close (our FIN, then the backend's). Returns the id.
fn one_connection(lb: SocketAddr) -> io::Result<String> {
    let mut s = connect(lb)?;
    let id = read_line(&mut s, IO_TIMEOUT)?;
    echo_roundtrip(&mut s, b"ping\n")?;
    s.shutdown(Shutdown::Write)?;
    let rest = read_until_eof(&mut s, IO_TIMEOUT)?;
    if !rest.is_empty() {
        return Err(io::Error::other(format!(
            "{} bytes after the echo",
            rest.len()
        )));
    }
    Ok(id)
}

/// A client thread making sequential connections until stopped (bounded in count and time).
/// `pause` holds it between two connections, so that a backend can be stopped while no client
/// connection is open to it (a backend dying under an accepted connection is a failure no
/// retry can hide, and not what is tested here).
struct Load {
    stop: AtomicBool,
    pause: AtomicBool,
    paused: AtomicBool,
    /// Every connection in order: the backend id, or the error.
    log: Mutex<Vec<Result<String, String>>>,
}

impl Load {
    const MAX_CONNECTIONS: usize = 20_000;
    const MAX_TIME: Duration = Duration::from_secs(20);
    /// Between two connections: steady load without starving the balancer on 2 cores.
    const GAP: Duration = Duration::from_millis(2);

    fn spawn(lb: SocketAddr) -> (Arc<Load>, thread::JoinHandle<()>) {
        let load = Arc::new(Load {
            stop: AtomicBool::new(false),
            pause: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
        });
        let l = load.clone();
        let handle = thread::spawn(move || {
            let started = Instant::now();
            for _ in 0..Load::MAX_CONNECTIONS {
                if l.stop.load(Ordering::SeqCst) || started.elapsed() > Load::MAX_TIME {
                    break;
                }
                if l.pause.load(Ordering::SeqCst) {
                    l.paused.store(true, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
                l.paused.store(false, Ordering::SeqCst);
                let r = one_connection(lb).map_err(|e| e.to_string());
                l.log.lock().unwrap().push(r);
                thread::sleep(Load::GAP);
            }
        });
        (load, handle)
    }

    fn served(&self, id: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|r| r.as_deref() == Ok(id)).count()
    }

    fn len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Hold the client between connections; returns once it is held.
    fn hold(&self) {
        self.pause.store(true, Ordering::SeqCst);
        assert!(
            wait_until(Duration::from_secs(10), || self
                .paused
                .load(Ordering::SeqCst)),
            "the client thread did not pause"
        );
    }

    fn resume(&self) {
        self.pause.store(false, Ordering::SeqCst);
    }
}

#[test]
fn killed_backend_is_hidden_by_retries_marked_down_and_comes_back_after_rise() {
    let a = Backend::id("a");
    let mut b = Some(Backend::id("b"));
    let c = Backend::id("c");
    let b_addr = b.as_ref().expect("b").addr;
    let conf = Conf::new("round_robin", &[a.addr, b_addr, c.addr])
        .extra("connect_retries = 2")
        .extra(FAST_CHECKS);
    let (lb, admin) = L4lb::start_with_admin(&conf);
    assert_eq!(backend_up(admin, b_addr), 1.0);

    let (load, client) = Load::spawn(lb.addr);
    assert!(
        wait_until(Duration::from_secs(5), || load.served("b") >= 3),
        "b served no traffic before being stopped"
    );

    // Stop b between two client connections: from now on its port refuses.
    load.hold();
    drop(b.take());
    let stopped_at = load.len();
    assert!(
        TcpStream::connect_timeout(&b_addr, Duration::from_secs(1)).is_err(),
        "b's port still accepts after the backend was stopped"
    );
    load.resume();
    assert!(
        wait_until(STATE_CHANGE, || backend_up(admin, b_addr) == 0.0),
        "l4lb_backend_up of the stopped backend {b_addr} did not go to 0 within {STATE_CHANGE:?}"
    );
    // Keep the load on while b is down: every connection must still be served by a or c.
    let down_at = load.len();
    assert!(
        wait_until(Duration::from_secs(5), || load.len() >= down_at + 30),
        "the client made no progress while b was down"
    );
    assert!(
        backend_metric(admin, "l4lb_backend_connect_errors_total", b_addr) >= 1.0,
        "no connect to the stopped backend was tried: the retry path was not exercised"
    );
    assert_eq!(backend_up(admin, b_addr), 0.0, "b came back up while down");

    // Restart a backend on b's port: `rise` good checks bring it back, and it gets clients.
    let restarted_at = load.len();
    b = Some(Backend::id_at(b_addr, "b2").expect("rebind b's port"));
    assert!(
        wait_until(STATE_CHANGE, || backend_up(admin, b_addr) == 1.0),
        "l4lb_backend_up of the restarted backend {b_addr} did not go back to 1 within {STATE_CHANGE:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || load.served("b2") >= 3),
        "the restarted backend got no client connections"
    );

    load.stop.store(true, Ordering::SeqCst);
    client.join().expect("client thread");
    let log = load.log.lock().unwrap();
    let failures: Vec<(usize, &String)> = log
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} client connections failed (b stopped at #{stopped_at}, marked down by #{down_at}, \
         restarted at #{restarted_at}); first ones: {:?}",
        failures.len(),
        log.len(),
        &failures[..failures.len().min(5)]
    );
    let between = &log[stopped_at..restarted_at];
    assert!(
        between
            .iter()
            .all(|r| matches!(r.as_deref(), Ok("a") | Ok("c"))),
        "a connection reached b while it was stopped"
    );
    drop(log);
    drop(lb);
    drop(b);
}

#[test]
fn all_backends_down_closes_clients_at_once_and_counts_no_backend() {
    let a = Backend::id("a");
    let b = Backend::id("b");
    let (a_addr, b_addr) = (a.addr, b.addr);
    let conf = Conf::new("round_robin", &[a_addr, b_addr])
        .extra("connect_retries = 2")
        .extra(FAST_CHECKS);
    let (lb, admin) = L4lb::start_with_admin(&conf);
    let id = served_by(lb.addr, None);
    assert!(id == "a" || id == "b", "served by {id:?}");

    drop(a);
    drop(b);
    assert!(
        wait_until(STATE_CHANGE, || {
            backend_up(admin, a_addr) == 0.0 && backend_up(admin, b_addr) == 0.0
        }),
        "both backends stopped, but l4lb_backend_up did not go to 0 for both within {STATE_CHANGE:?}"
    );

    let before = rejected_no_backend(admin);
    const CLIENTS: usize = 5;
    const PROMPT: Duration = Duration::from_secs(2);
    for i in 0..CLIENTS {
        let started = Instant::now();
        let mut s = match connect(lb.addr) {
            Ok(s) => s,
            // The balancer's reset can beat the end of our connect().
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => continue,
            Err(e) => panic!("client {i}: connect to the balancer: {e}"),
        };
        let first = first_read(&mut s, PROMPT);
        assert!(
            matches!(first, FirstRead::Eof | FirstRead::Reset),
            "client {i}: with every backend down expected a prompt close without data, got {first:?}"
        );
        assert!(started.elapsed() < PROMPT + Duration::from_secs(1));
    }
    let after = rejected_no_backend(admin);
    assert_eq!(
        after - before,
        CLIENTS as f64,
        "l4lb_connections_rejected_total{{reason=\"no_backend\"}} went from {before} to {after} \
         for {CLIENTS} refused clients"
    );
    drop(lb);
}

/// A backend that answers the health check's "PING\r\n" with `answer` and closes; any other
/// first line is a client: it gets `"{id}\n"`, its line back, then an echo.
fn pinging(id: &'static str, answer: &'static [u8]) -> Handler {
    Arc::new(move |mut s: TcpStream| {
        let Ok(line) = read_line(&mut s, Duration::from_secs(5)) else {
            return;
        };
        if line == "PING\r" {
            let _ = s.write_all(answer);
            return;
        }
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        if s.write_all(format!("{id}\n{line}\n").as_bytes()).is_ok() {
            echo_conn(s, b"");
        }
    })
}

/// A client of `pinging` backends: which one served it.
fn pinging_client(lb: SocketAddr) -> String {
    let mut s = connect(lb).expect("connect to the balancer");
    s.write_all(b"hello\n").expect("write");
    let id = read_line(&mut s, IO_TIMEOUT).expect("id line");
    assert_eq!(read_line(&mut s, IO_TIMEOUT).expect("echo"), "hello");
    id
}

#[test]
fn health_check_expect_marks_a_backend_with_the_wrong_reply_down() {
    let good = Backend::spawn(localhost(), "good", pinging("good", b"PONG\r\n"));
    let bad = Backend::spawn(localhost(), "bad", pinging("bad", b"NOPE\r\n"));
    let conf = Conf::new("round_robin", &[good.addr, bad.addr])
        .extra("connect_retries = 2")
        .extra(
            r#"health_check = { interval_ms = 200, timeout_ms = 200, rise = 2, fall = 2, send = "PING\r\n", expect = "PONG" }"#,
        );
    let (lb, admin) = L4lb::start_with_admin(&conf);

    assert!(
        wait_until(STATE_CHANGE, || backend_up(admin, bad.addr) == 0.0),
        "the backend answering NOPE to PING was not marked down within {STATE_CHANGE:?}"
    );
    // The one answering PONG stays up, check after check.
    for _ in 0..5 {
        assert_eq!(
            backend_up(admin, good.addr),
            1.0,
            "the backend answering PONG was marked down"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        *seen.entry(pinging_client(lb.addr)).or_default() += 1;
    }
    assert_eq!(
        seen.get("good").copied(),
        Some(10),
        "new connections must all go to the healthy backend; got {seen:?}"
    );
    assert_eq!(backend_up(admin, bad.addr), 0.0, "bad came back up");
    assert_eq!(backend_up(admin, good.addr), 1.0);
    drop(lb);
}

#[test]
fn passive_checks_mark_a_refusing_backend_down_after_three_failures() {
    let a = Backend::id("a");
    let b = Backend::id("b");
    // Nobody listens here: every connect is refused.
    let dead = SocketAddr::new(localhost(), free_port(localhost()));
    let conf = Conf::new("round_robin", &[a.addr, b.addr, dead]).extra("connect_retries = 2");
    let (lb, admin) = L4lb::start_with_admin(&conf);
    assert_eq!(backend_up(admin, dead), 1.0, "backends start up");

    const MAX_CONNECTIONS: usize = 200;
    let mut made = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while made < MAX_CONNECTIONS && Instant::now() < deadline {
        let id = served_by(lb.addr, None);
        assert!(id == "a" || id == "b", "connection {made} served by {id:?}");
        made += 1;
        if made % 5 == 0 && backend_up(admin, dead) == 0.0 {
            break;
        }
    }
    assert_eq!(
        backend_up(admin, dead),
        0.0,
        "{made} connections later, the refusing backend {dead} is still up"
    );
    assert_eq!(
        backend_metric(admin, "l4lb_backend_connect_errors_total", dead),
        3.0,
        "a backend without active checks goes down after exactly 3 failed connects"
    );
    // Down, it is skipped: clients keep being served without a connect to it.
    for i in 0..10 {
        let id = served_by(lb.addr, None);
        assert!(
            id == "a" || id == "b",
            "connection {i} after down served by {id:?}"
        );
    }
    assert_eq!(
        backend_metric(admin, "l4lb_backend_connect_errors_total", dead),
        3.0,
        "the downed backend was still tried"
    );
    drop(lb);
}
