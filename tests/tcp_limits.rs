//! Flow control and admission on TCP listeners: per-client caps and rates, allow/deny lists,
//! and connect retries past a dead backend.
//!
//! A refused connection is accepted and closed at once (reset or EOF) and never reaches a
//! backend (SPEC, "Semantics"). Clients are distinct loopback addresses 127.0.0.x.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

fn single_id_backend(extra: &[&str]) -> (Backend, L4lb) {
    let b = Backend::id("B0");
    let mut conf = Conf::new("round_robin", &[b.addr]);
    for line in extra {
        conf = conf.extra(line);
    }
    let lb = L4lb::start(&conf);
    (b, lb)
}

#[test]
fn max_conns_per_client_caps_one_ip_only() {
    let (b, lb) = single_id_backend(&["max_conns_per_client = 2"]);
    let c2 = lo(2);

    let mut first = connect_from(c2, lb.addr).expect("connect #1");
    let mut second = connect_from(c2, lb.addr).expect("connect #2");
    for (i, s) in [&mut first, &mut second].into_iter().enumerate() {
        assert_eq!(
            attempt_on(s),
            Outcome::Served("B0".into()),
            "connection #{i}"
        );
        echo_roundtrip(s, format!("held #{i}").as_bytes()).expect("held connection echoes");
    }
    let before = b.accepted();
    assert_eq!(before, 2);

    assert_eq!(
        attempt(lb.addr, Some(c2)),
        Outcome::Refused,
        "a third concurrent connection from {c2} must be refused"
    );
    assert_eq!(
        served_by(lb.addr, Some(lo(3))),
        "B0",
        "another client is not capped"
    );
    assert_eq!(
        b.accepted(),
        before + 1,
        "the refused connection reached the backend"
    );
    for s in [&mut first, &mut second] {
        echo_roundtrip(s, b"still here").expect("held connections unaffected by the refusal");
    }

    // Closing one frees a slot; the balancer sees the close asynchronously.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refused_meanwhile = 0;
    let third = loop {
        match attempt_keep(lb.addr, Some(c2)) {
            (Outcome::Served(id), Some(s)) => break (id, s),
            _ => refused_meanwhile += 1,
        }
        assert!(
            Instant::now() < deadline,
            "{c2} still refused 5 s after closing one of its 2 connections \
             ({refused_meanwhile} attempts)"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(third.0, "B0");
    drop(second);
}

#[test]
fn deny_list_refuses_listed_client() {
    let (b, lb) = single_id_backend(&["deny = [\"127.0.0.5/32\"]"]);
    assert_eq!(
        attempt(lb.addr, Some(lo(5))),
        Outcome::Refused,
        "denied 127.0.0.5 was served"
    );
    assert_eq!(b.accepted(), 0, "a denied connection reached the backend");
    assert_eq!(served_by(lb.addr, Some(lo(6))), "B0");
    assert_eq!(
        attempt(lb.addr, Some(lo(5))),
        Outcome::Refused,
        "denied again"
    );
    assert_eq!(b.accepted(), 1);
}

#[test]
fn allow_list_refuses_everyone_else() {
    let (b, lb) = single_id_backend(&["allow = [\"127.0.0.7/32\"]"]);
    assert_eq!(
        attempt(lb.addr, Some(lo(8))),
        Outcome::Refused,
        "127.0.0.8 is not in allow"
    );
    assert_eq!(
        attempt(lb.addr, Some(lo(1))),
        Outcome::Refused,
        "127.0.0.1 is not in allow"
    );
    assert_eq!(b.accepted(), 0, "a refused connection reached the backend");
    assert_eq!(served_by(lb.addr, Some(lo(7))), "B0");
    assert_eq!(b.accepted(), 1);
}

#[test]
fn deny_is_checked_before_allow() {
    let (_b, lb) = single_id_backend(&["allow = [\"127.0.0.0/24\"]", "deny = [\"127.0.0.12/32\"]"]);
    assert_eq!(attempt(lb.addr, Some(lo(12))), Outcome::Refused);
    assert_eq!(served_by(lb.addr, Some(lo(13))), "B0");
}

#[test]
fn conn_rate_per_client_limits_bursts_of_one_ip() {
    const RATE: usize = 5;
    let (b, lb) = single_id_backend(&["conn_rate_per_client = 5"]);
    let c = lo(9);
    let t0 = Instant::now();
    let mut served = 0;
    let mut refused = 0;
    for _ in 0..20 {
        match attempt(lb.addr, Some(c)) {
            Outcome::Served(_) => served += 1,
            Outcome::Refused => refused += 1,
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // Burst = rate: the first RATE pass, then RATE per second refill.
    let max_served = RATE + (elapsed * RATE as f64).ceil() as usize + 1;
    assert!(refused > 0, "20 connections in {elapsed:.2}s, none refused");
    assert!(
        served >= RATE.min(20),
        "only {served} of 20 served; the bucket should allow a burst of {RATE}"
    );
    assert!(
        served <= max_served,
        "{served} of 20 served in {elapsed:.2}s, at most {max_served} expected at rate {RATE}/s"
    );
    assert_eq!(
        b.accepted(),
        served,
        "a rate-limited connection reached the backend"
    );
    assert_eq!(
        served_by(lb.addr, Some(lo(10))),
        "B0",
        "another client has its own bucket"
    );
}

#[test]
fn connect_retry_skips_dead_backend() {
    let dead: SocketAddr = SocketAddr::new(localhost(), free_port(localhost()));
    let live = Backend::id("live");
    let lb = L4lb::start(
        &Conf::new("round_robin", &[dead, live.addr])
            .extra("connect_retries = 2")
            .workers("2"),
    );
    for i in 0..20 {
        let mut s = connect(lb.addr).expect("connect");
        match attempt_on(&mut s) {
            Outcome::Served(id) => assert_eq!(id, "live"),
            Outcome::Refused => panic!("connection #{i} failed although a live backend exists"),
        }
        echo_roundtrip(&mut s, format!("retry {i}").as_bytes()).expect("echo");
    }
    assert_eq!(live.accepted(), 20);
}

#[test]
fn no_live_backend_closes_client_promptly() {
    let dead: SocketAddr = SocketAddr::new(localhost(), free_port(localhost()));
    let lb = L4lb::start(&Conf::new("round_robin", &[dead]).extra("connect_retries = 1"));
    for i in 0..3 {
        let mut s = match connect(lb.addr) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
            Err(e) => panic!("connect #{i}: {e}"),
        };
        let got = first_read(&mut s, Duration::from_secs(3));
        assert!(
            matches!(got, FirstRead::Reset | FirstRead::Eof),
            "connection #{i} with only a dead backend: {got:?}"
        );
    }
}

/// Hold `cap` connections, check the next is refused without reaching the backend, close one
/// and check a slot frees up.
fn check_cap(b: &Backend, lb: &L4lb, cap: usize, what: &str) {
    let mut held: Vec<TcpStream> = (0..cap)
        .map(|i| match attempt_keep(lb.addr, Some(lo(20 + i as u8))) {
            (Outcome::Served(_), Some(s)) => s,
            _ => panic!("{what}: connection #{i} of {cap} refused"),
        })
        .collect();
    // A different client each time: only the listener's or global cap can refuse.
    assert_eq!(
        attempt(lb.addr, Some(lo(40))),
        Outcome::Refused,
        "{what}: connection over the cap of {cap} was served"
    );
    assert_eq!(
        b.accepted(),
        cap,
        "{what}: the refused connection reached the backend"
    );
    let first = held.remove(0);
    drop(first);
    let served = wait_until(Duration::from_secs(5), || {
        match attempt_keep(lb.addr, Some(lo(41))) {
            (Outcome::Served(_), Some(s)) => {
                held.push(s);
                true
            }
            _ => false,
        }
    });
    assert!(
        served,
        "{what}: still refused 5 s after one of {cap} connections closed"
    );
}

#[test]
fn listener_max_connections_refuses_over_cap() {
    let (b, lb) = single_id_backend(&["max_connections = 3"]);
    check_cap(&b, &lb, 3, "listener max_connections = 3");
}

#[test]
fn runtime_max_connections_refuses_over_cap() {
    let b = Backend::id("B0");
    let lb = L4lb::start(&Conf::new("round_robin", &[b.addr]).runtime("max_connections = 2"));
    check_cap(&b, &lb, 2, "runtime max_connections = 2");
}

/// `client_first_byte_timeout_ms`: a client that sends nothing is closed; one that talked
/// is not, even when it then stays quiet longer than the timeout.
#[test]
fn first_byte_timeout_closes_silent_clients_only() {
    let b = Backend::echo("e");
    let lb = L4lb::start(
        &Conf::new("round_robin", &[b.addr]).extra("client_first_byte_timeout_ms = 300"),
    );
    let mut talker = connect(lb.addr).expect("connect");
    echo_roundtrip(&mut talker, b"hello").expect("echo");

    let mut silent = connect(lb.addr).expect("connect");
    let got = first_read(&mut silent, Duration::from_secs(5));
    assert!(
        matches!(got, FirstRead::Eof | FirstRead::Reset),
        "a client silent for 5 s with a 300 ms first-byte timeout read {got:?}"
    );
    // The talker has now been quiet for longer than 300 ms too.
    echo_roundtrip(&mut talker, b"still open").expect("a client that talked was closed");
}

/// `idle_timeout_s`: a connection with no bytes either way is closed; a busy one is not.
#[test]
fn idle_timeout_closes_quiet_connections_only() {
    let b = Backend::echo("e");
    let lb = L4lb::start(&Conf::new("round_robin", &[b.addr]).extra("idle_timeout_s = 1"));
    let addr = lb.addr;
    let busy = std::thread::spawn(move || {
        let mut s = connect(addr).expect("connect");
        let until = Instant::now() + Duration::from_millis(2500);
        let mut i = 0;
        while Instant::now() < until {
            echo_roundtrip(&mut s, format!("tick {i}").as_bytes())
                .unwrap_or_else(|e| panic!("busy connection broke at tick {i}: {e}"));
            i += 1;
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    let mut quiet = connect(lb.addr).expect("connect");
    echo_roundtrip(&mut quiet, b"once").expect("echo");
    let t0 = Instant::now();
    let got = first_read(&mut quiet, Duration::from_secs(6));
    assert!(
        matches!(got, FirstRead::Eof | FirstRead::Reset),
        "an idle connection with idle_timeout_s = 1 read {got:?} after {:?}",
        t0.elapsed()
    );
    busy.join().expect("busy client");
}
