//! Hostile traffic and safe defaults (issue 9), through the real binary on loopback: the
//! listener-wide rate (`conn_rate_limit`, TCP and UDP), UDP sessions kept off the TCP
//! listeners' share of the global cap, clients counted by prefix, `fin_timeout_s` on
//! half-closed connections, IPv4-mapped CIDRs, `udp_responses`, the access log behind a
//! bounded queue when stderr is stuck, the open-files warning, and the PROXY trust rule at
//! load. (Local port exhaustion needs its own network namespace: tests/local_ports.rs.)

mod common;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    ask_until_answered, attempt, attempt_keep, client, free_port, l4lb_bin, lo, localhost, metric,
    run_cli, scrape, try_metric_at, wait_until, Backend, Conf, L4lb, Mode, Outcome, Ready, TempDir,
    UdpBackend, IO_TIMEOUT, SILENCE, STARTUP_TIMEOUT,
};

fn rejected(admin: SocketAddr, listener: &str, reason: &str) -> f64 {
    try_metric_at(
        admin,
        "l4lb_connections_rejected_total",
        &[("listener", listener), ("reason", reason)],
    )
    .unwrap_or(-1.0)
}

/// `conn_rate_limit` caps new connections of the whole listener, whoever sends them.
#[test]
fn listener_rate_limits_new_tcp_connections_from_everyone() {
    let b = Backend::id("B0");
    let (lb, admin) = L4lb::start_with_admin(
        &Conf::new("round_robin", &[b.addr])
            .workers("2")
            .extra("conn_rate_limit = 3"),
    );
    let started = Instant::now();
    // Twelve different clients: per-client limits play no part.
    let outcomes: Vec<Outcome> = (1..=12).map(|i| attempt(lb.addr, Some(lo(i)))).collect();
    let elapsed = started.elapsed().as_secs_f64();
    let served = outcomes.iter().filter(|o| **o != Outcome::Refused).count();
    // Burst 3, then 3 per second: whatever the pace of this machine.
    let allowed = 3 + (elapsed * 3.0).ceil() as usize;
    assert!(served >= 3, "only {served} served");
    assert!(
        served <= allowed,
        "{served} of 12 served in {elapsed:.2} s with conn_rate_limit = 3"
    );
    let refused = (12 - served) as f64;
    assert!(wait_until(IO_TIMEOUT, || rejected(
        admin,
        "t",
        "listener_rate"
    ) == refused));
}

/// A UDP listener's rate counts new sessions, not datagrams.
#[test]
fn listener_rate_limits_new_udp_sessions() {
    let backend = UdpBackend::spawn(Mode::Echo);
    let (lb, admin) = L4lb::start_with_admin(
        &Conf::udp("round_robin", &[backend.addr]).extra("conn_rate_limit = 2"),
    );
    let started = Instant::now();
    let clients: Vec<UdpSocket> = (0..10).map(|i| client(lo(1 + i), lb.addr)).collect();
    for c in &clients {
        c.send(b"hello").expect("send");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = 2 + (elapsed * 2.0).ceil() as usize;
    let mut answered = 0;
    let mut buf = [0u8; 64];
    for c in &clients {
        c.set_read_timeout(Some(SILENCE)).expect("timeout");
        if c.recv(&mut buf).is_ok() {
            answered += 1;
        }
    }
    assert!(
        answered >= 2 && answered <= allowed,
        "{answered} sessions of 10"
    );
    // An open session is not limited: many datagrams of one client pass.
    let first = clients
        .iter()
        .find(|c| ask_until_answered(c, b"again").is_some())
        .expect("an admitted client");
    for _ in 0..20 {
        assert!(ask_until_answered(first, b"more").is_some());
    }
    let want = (10 - answered) as f64;
    assert!(wait_until(IO_TIMEOUT, || rejected(
        admin,
        "u",
        "listener_rate"
    ) == want));
}

/// Regression: UDP sessions from spoofed sources could fill `runtime.max_connections` and
/// leave TCP listeners nothing. Now UDP may hold only the global cap minus the TCP reserve.
#[test]
fn udp_sessions_cannot_take_the_tcp_share_of_the_global_cap() {
    let b = Backend::id("T");
    let echo = UdpBackend::spawn(Mode::Echo);
    let admin = SocketAddr::new(localhost(), free_port(localhost()));
    let mut tcp = SocketAddr::new(localhost(), 0);
    let lb = L4lb::launch(localhost(), Ready::UdpBound, None, |udp| {
        tcp = SocketAddr::new(localhost(), free_port(localhost()));
        format!(
            "[runtime]\nworkers = 2\npin_cpus = false\nmax_connections = 10\n\n\
             [admin]\nbind = \"{admin}\"\n\n\
             [[listener]]\nname = \"web\"\nbind = \"{tcp}\"\n\
             backends = [{{ addr = \"{}\" }}]\n\n\
             [[listener]]\nname = \"dns\"\nprotocol = \"udp\"\nbind = \"{udp}\"\n\
             idle_timeout_s = 300\nbackends = [{{ addr = \"{}\" }}]\n",
            b.addr, echo.addr
        )
    });
    assert!(wait_until(STARTUP_TIMEOUT, || scrape(admin).is_ok()));
    // Twenty spoofed-looking sources: more than the whole global cap.
    let clients: Vec<UdpSocket> = (0..20).map(|i| client(lo(1 + i), lb.addr)).collect();
    for c in &clients {
        c.send(b"q").expect("send");
    }
    assert!(wait_until(IO_TIMEOUT, || {
        rejected(admin, "dns", "global_limit") == 15.0
    }));
    let text = scrape(admin).expect("scrape");
    let sessions = metric(&text, "l4lb_udp_sessions_active", &[("listener", "dns")]);
    assert_eq!(
        sessions,
        Some(5.0),
        "UDP holds half of max_connections = 10"
    );
    // The TCP listener still gets its five.
    let held: Vec<TcpStream> = (0..5)
        .map(|_| match attempt_keep(tcp, None) {
            (Outcome::Served(id), Some(s)) if id == "T" => s,
            (o, _) => panic!("TCP connection refused while UDP is full: {o:?}"),
        })
        .collect();
    assert_eq!(
        attempt(tcp, None),
        Outcome::Refused,
        "the global cap still holds"
    );
    drop(held);
}

/// `client_ipv4_prefix = 24`: 127.0.0.1 and 127.0.0.2 are one client for the caps.
#[test]
fn clients_are_counted_by_their_ipv4_prefix() {
    let b = Backend::id("B0");
    let (lb, admin) = L4lb::start_with_admin(
        &Conf::new("round_robin", &[b.addr])
            .extra("max_conns_per_client = 1")
            .extra("client_ipv4_prefix = 24"),
    );
    let (first, held) = attempt_keep(lb.addr, Some(lo(1)));
    assert_eq!(first, Outcome::Served("B0".into()));
    assert_eq!(attempt(lb.addr, Some(lo(2))), Outcome::Refused);
    assert!(wait_until(IO_TIMEOUT, || rejected(
        admin,
        "t",
        "client_limit"
    ) == 1.0));
    drop(held);
    assert!(wait_until(IO_TIMEOUT, || {
        attempt(lb.addr, Some(lo(2))) == Outcome::Served("B0".into())
    }));
}

/// Regression: a connection whose client sent its FIN while the backend keeps its side open
/// (or the reverse) was held for the whole idle timeout; `fin_timeout_s` closes it sooner.
#[test]
fn half_closed_connection_ends_after_fin_timeout() {
    // Reads to EOF, then holds its side open without a byte (the backends' I/O timeout
    // ends the thread later).
    let silent = Backend::spawn(
        localhost(),
        "hold",
        Arc::new(|mut s: TcpStream| {
            let mut buf = [0u8; 1024];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            std::thread::sleep(Duration::from_secs(30));
        }),
    );
    let lb = L4lb::start(
        &Conf::new("round_robin", &[silent.addr])
            .access_log(true)
            .extra("idle_timeout_s = 300")
            .extra("fin_timeout_s = 1"),
    );
    let mut s = TcpStream::connect(lb.addr).expect("connect");
    s.write_all(b"request").expect("write");
    s.shutdown(Shutdown::Write).expect("half-close");
    let started = Instant::now();
    // One timer-wheel revolution (~10 s) at most after the 1 s fin timeout.
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let ended = matches!(s.read(&mut buf), Ok(0) | Err(_)) && started.elapsed().as_secs() < 20;
    assert!(ended, "still open after {:?}", started.elapsed());
    assert!(wait_until(IO_TIMEOUT, || {
        lb.stderr_lines()
            .iter()
            .any(|l| l.contains("l4lb::access") && l.contains("end=fin_timeout"))
    }));
}

/// Regression: `::ffff:a.b.c.d/n` in allow/deny silently matched nothing.
#[test]
fn ipv4_mapped_cidr_in_deny_matches_ipv4_clients() {
    let b = Backend::id("B0");
    let (lb, admin) = L4lb::start_with_admin(
        &Conf::new("round_robin", &[b.addr]).extra("deny = [\"::ffff:127.0.0.2/128\"]"),
    );
    assert_eq!(attempt(lb.addr, Some(lo(2))), Outcome::Refused);
    assert_eq!(attempt(lb.addr, Some(lo(1))), Outcome::Served("B0".into()));
    assert!(wait_until(IO_TIMEOUT, || rejected(admin, "t", "acl") == 1.0));
}

/// `udp_responses = 1`: a DNS-like session ends with its answer, not after the idle timeout.
#[test]
fn udp_session_ends_after_its_responses() {
    let backend = UdpBackend::spawn(Mode::Echo);
    let (lb, _) = L4lb::start_with_admin(
        &Conf::udp("round_robin", &[backend.addr])
            .idle(300)
            .extra("access_log = true")
            .extra("udp_responses = 1"),
    );
    for i in 0..5 {
        let c = client(lo(1 + i), lb.addr);
        assert_eq!(
            ask_until_answered(&c, b"query").as_deref(),
            Some(&b"query"[..])
        );
    }
    assert!(
        wait_until(IO_TIMEOUT, || {
            lb.metric("l4lb_udp_sessions_active", &[("listener", "u")]) == 0.0
        }),
        "sessions outlived their answer"
    );
    assert!(wait_until(IO_TIMEOUT, || {
        let lines = lb.stderr_lines();
        lines.iter().filter(|l| l.contains("end=responses")).count() == 5
    }));
}

/// Kills the child it holds on drop (by its own handle: only the process this test started).
struct Stuck(Child);

impl Drop for Stuck {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Regression: each access-log line was written synchronously by the worker; with stderr
/// blocked (a pipe nobody reads), the worker stopped at the first full pipe and served no one.
#[test]
fn stuck_stderr_never_stalls_a_worker() {
    let b = Backend::id("B0");
    let dir = TempDir::new("stuck");
    let port = free_port(localhost());
    let admin = SocketAddr::new(localhost(), free_port(localhost()));
    let lb = SocketAddr::new(localhost(), port);
    let config = dir.write(
        "l4lb.toml",
        &format!(
            "[runtime]\nworkers = 1\npin_cpus = false\n\n[admin]\nbind = \"{admin}\"\n\n\
             [[listener]]\nname = \"t\"\nbind = \"{lb}\"\naccess_log = true\n\
             deny = [\"127.0.0.2\"]\nbackends = [{{ addr = \"{}\" }}]\n",
            b.addr
        ),
    );
    // stderr is a pipe that is never read: once its 64 KiB fill, every write blocks.
    let child = Command::new(l4lb_bin())
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn l4lb");
    let _guard = Stuck(child);
    assert!(wait_until(STARTUP_TIMEOUT, || scrape(admin).is_ok()));
    // ~3,000 refusals x ~130 bytes of access line: several times the pipe's capacity.
    // Bounded in time too: with a stalled worker each attempt waits for its timeouts.
    let flood = Instant::now();
    let mut sent = 0;
    for _ in 0..3000 {
        match attempt_quick(lb) {
            Ok(()) => {}
            // The reset may beat the end of connect(2).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => {
                eprintln!("attempt {sent}: {e}");
                break;
            }
        }
        sent += 1;
        if flood.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    eprintln!("{sent} refused connections in {:?}", flood.elapsed());
    let served = wait_until(IO_TIMEOUT, || {
        attempt(lb, Some(lo(1))) == Outcome::Served("B0".into())
    });
    assert!(served, "the worker stalled on a blocked stderr");
    let text = scrape(admin).expect("scrape");
    let dropped = metric(&text, "l4lb_access_log_dropped_total", &[]).unwrap_or(0.0);
    let refused = metric(
        &text,
        "l4lb_connections_rejected_total",
        &[("listener", "t"), ("reason", "acl")],
    );
    assert!(
        dropped > 0.0,
        "no line counted as dropped ({refused:?} refused)"
    );
}

/// One refused connection from 127.0.0.2 (reset at once), without waiting for a read timeout.
fn attempt_quick(lb: SocketAddr) -> std::io::Result<()> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(lo(2), 0).into())?;
    s.connect_timeout(&lb.into(), Duration::from_secs(2))?;
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 1];
    let _ = s.read(&mut buf);
    Ok(())
}

/// At start, an open-files limit below what max_connections needs is warned about.
#[test]
fn low_open_files_limit_is_warned_about() {
    let b = Backend::id("B0");
    let lb = L4lb::start(
        &Conf::new("round_robin", &[b.addr])
            .runtime("max_connections = 100000")
            .nofile(256),
    );
    assert!(
        wait_until(IO_TIMEOUT, || {
            lb.stderr_lines()
                .iter()
                .any(|l| l.contains("WARN") && l.contains("open-files limit 256"))
        }),
        "no warning: {:?}",
        lb.stderr_lines()
    );
}

/// Regression: `accept_proxy_protocol = true` alone trusted a PROXY header from anyone; it
/// is now a config error (exit 2, one line with the key path).
#[test]
fn accepting_proxy_headers_from_anyone_is_a_config_error() {
    let b = Backend::id("B0");
    let dir = TempDir::new("trust");
    let path = dir.write(
        "l4lb.toml",
        &format!(
            "[[listener]]\nname = \"t\"\nbind = \"127.0.0.1:{}\"\naccept_proxy_protocol = true\n\
             backends = [{{ addr = \"{}\" }}]\n",
            free_port(localhost()),
            b.addr
        ),
    );
    let out = run_cli(
        &[OsStr::new("--config"), path.as_os_str()],
        Duration::from_secs(10),
    );
    assert_eq!(out.code(), Some(2), "stderr: {}", out.stderr);
    let line = out.stderr.trim();
    assert!(
        line.contains("listener[0].trusted_proxies")
            && line.contains(&path.display().to_string())
            && line.lines().count() == 1,
        "{line}"
    );
}
