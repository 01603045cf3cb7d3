//! The access log end to end (`access_log = true` on a listener): one `l4lb::access` line per
//! TCP connection and per UDP session when it ends, with the right fields and end reason;
//! refusals at admission logged with their metric reason; nothing when the key is off; and a
//! reload that switches it on without dropping the connection that was open.
//!
//! Every test runs the real `l4lb` binary (with `RUST_LOG=info`, as the harness starts it)
//! and reads its stderr while it runs (`L4lb::stderr_lines`) or after it exits.

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use nix::sys::signal::Signal;

use common::*;

/// How long a line may take to appear after the event that ends a connection or session
/// (idle timeouts of 1 s included; a debug build on a busy 2-core host).
const LOG_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a drain (`drain_timeout_s = 1` in the harness's configs) may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

const TCP_KEYS: [&str; 7] = [
    "listener",
    "client",
    "backend",
    "duration_ms",
    "bytes_to_backend",
    "bytes_to_client",
    "end",
];

const UDP_KEYS: [&str; 9] = [
    "listener",
    "client",
    "backend",
    "duration_ms",
    "datagrams_to_backend",
    "datagrams_to_client",
    "bytes_to_backend",
    "bytes_to_client",
    "end",
];

/// One access line: its `key=value` fields in order.
#[derive(Debug)]
struct Access {
    raw: String,
    fields: Vec<(String, String)>,
}

impl Access {
    fn get(&self, key: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.raw))
    }

    fn num(&self, key: &str) -> u64 {
        self.get(key)
            .parse()
            .unwrap_or_else(|e| panic!("{key}= is not a number in {:?}: {e}", self.raw))
    }

    fn keys(&self) -> Vec<&str> {
        self.fields.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// The access lines among `lines` (env_logger's format: `[TIME LEVEL TARGET] MESSAGE`).
fn access<S: AsRef<str>>(lines: &[S]) -> Vec<Access> {
    lines
        .iter()
        .filter_map(|l| {
            let line = l.as_ref();
            let (head, message) = line.split_once("] ")?;
            if !head.ends_with(" l4lb::access") {
                return None;
            }
            assert!(head.contains(" INFO "), "not at info level: {line:?}");
            let fields = message
                .split(' ')
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => panic!("field without '=' in {line:?}"),
                })
                .collect();
            Some(Access {
                raw: line.to_owned(),
                fields,
            })
        })
        .collect()
}

/// Wait until the balancer has written at least `n` access lines; returns all of them.
fn wait_access(lb: &L4lb, n: usize) -> Vec<Access> {
    let found = wait_until(LOG_TIMEOUT, || access(&lb.stderr_lines()).len() >= n);
    let lines = lb.stderr_lines();
    assert!(
        found,
        "fewer than {n} access lines within {LOG_TIMEOUT:?}; stderr:\n{}",
        lines.join("\n")
    );
    access(&lines)
}

/// The access line of `client`'s connection or session.
fn line_of(lines: &[Access], client: SocketAddr) -> &Access {
    let client = client.to_string();
    let mut of = lines.iter().filter(|l| l.get("client") == client);
    let line = of
        .next()
        .unwrap_or_else(|| panic!("no line for {client} in {lines:#?}"));
    assert!(of.next().is_none(), "two lines for {client}: {lines:#?}");
    line
}

/// Send `msg`, half-close, and read the echo to EOF: a connection that ends `finished`.
fn echo_and_finish(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    let back = read_until_eof(s, IO_TIMEOUT).expect("echo until EOF");
    assert_eq!(back, msg);
}

/// A loopback address nobody listens on now (bound, then released).
fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind((localhost(), 0)).expect("bind");
    l.local_addr().expect("addr")
}

#[test]
fn a_served_connection_is_one_finished_line() {
    let backend = Backend::echo("e");
    let mut lb = L4lb::start(&Conf::new("round_robin", &[backend.addr]).access_log(true));
    let mut s = connect(lb.addr).expect("connect");
    let client = s.local_addr().expect("client addr");
    echo_roundtrip(&mut s, b"hello, backend").expect("roundtrip");
    echo_and_finish(&mut s, b"bye!");

    let lines = wait_access(&lb, 1);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let l = &lines[0];
    assert_eq!(l.keys(), TCP_KEYS, "{}", l.raw);
    assert_eq!(l.get("listener"), "t");
    assert_eq!(l.get("client"), client.to_string());
    // The backend label of the metrics: its addr as written in the config.
    assert_eq!(l.get("backend"), backend.addr.to_string());
    assert_eq!(l.num("bytes_to_backend"), 18);
    assert_eq!(l.num("bytes_to_client"), 18);
    assert_eq!(l.get("end"), "finished");
    assert!(
        l.num("duration_ms") < IO_TIMEOUT.as_millis() as u64,
        "{}",
        l.raw
    );

    // Exactly one for the connection's whole life.
    let all = lb.stop();
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(access(&lines).len(), 1, "{all}");
}

#[test]
fn a_denied_client_is_a_refused_acl_line() {
    let backend = Backend::echo("e");
    let lb = L4lb::start(
        &Conf::new("round_robin", &[backend.addr])
            .access_log(true)
            .extra("deny = [\"127.0.0.5/32\"]"),
    );
    assert_eq!(attempt(lb.addr, Some(lo(5))), Outcome::Refused);
    assert_eq!(backend.accepted(), 0);

    let lines = wait_access(&lb, 1);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let l = &lines[0];
    let mut keys = TCP_KEYS.to_vec();
    keys.push("reason");
    assert_eq!(l.keys(), keys, "{}", l.raw);
    assert_eq!(l.get("listener"), "t");
    assert!(l.get("client").starts_with("127.0.0.5:"), "{}", l.raw);
    assert_eq!(l.get("backend"), "-");
    assert_eq!(l.num("duration_ms"), 0);
    assert_eq!(l.num("bytes_to_backend"), 0);
    assert_eq!(l.num("bytes_to_client"), 0);
    assert_eq!(l.get("end"), "refused");
    assert_eq!(l.get("reason"), "acl");
}

#[test]
fn off_by_default_no_access_line() {
    let backend = Backend::echo("e");
    let mut lb =
        L4lb::start(&Conf::new("round_robin", &[backend.addr]).extra("deny = [\"127.0.0.5/32\"]"));
    let mut s = connect(lb.addr).expect("connect");
    echo_and_finish(&mut s, b"not logged");
    assert_eq!(attempt(lb.addr, Some(lo(5))), Outcome::Refused);
    // A graceful stop exits once every connection has gone through its close: whatever a
    // close would log is on stderr by then.
    lb.signal(Signal::SIGTERM);
    let (status, stderr) = lb.wait_exit(EXIT_TIMEOUT).expect("l4lb did not exit");
    assert!(status.success(), "{status}\n{stderr}");
    // Info lines do reach the captured stderr (so the absence below means something).
    assert!(stderr.contains(" INFO "), "no info line captured: {stderr}");
    assert!(!stderr.contains("l4lb::access"), "{stderr}");
}

#[test]
fn timeouts_name_which_one() {
    let backend = Backend::echo("e");
    let lb = L4lb::start(
        &Conf::new("round_robin", &[backend.addr])
            .access_log(true)
            .extra("idle_timeout_s = 1")
            .extra("client_first_byte_timeout_ms = 300"),
    );
    let mut silent = connect(lb.addr).expect("connect");
    let mut talker = connect(lb.addr).expect("connect");
    echo_roundtrip(&mut talker, b"hi").expect("roundtrip");
    // Both are closed with a FIN, not a reset.
    assert_eq!(read_until_eof(&mut silent, LOG_TIMEOUT).expect("EOF"), b"");
    assert_eq!(read_until_eof(&mut talker, LOG_TIMEOUT).expect("EOF"), b"");

    let lines = wait_access(&lb, 2);
    let l = line_of(&lines, silent.local_addr().expect("addr"));
    assert_eq!(l.get("end"), "first_byte_timeout", "{}", l.raw);
    assert_eq!(
        (l.num("bytes_to_backend"), l.num("bytes_to_client")),
        (0, 0)
    );
    assert!(l.num("duration_ms") >= 300, "{}", l.raw);
    let l = line_of(&lines, talker.local_addr().expect("addr"));
    assert_eq!(l.get("end"), "idle_timeout", "{}", l.raw);
    assert_eq!(
        (l.num("bytes_to_backend"), l.num("bytes_to_client")),
        (2, 2)
    );
    assert!(l.num("duration_ms") >= 1000, "{}", l.raw);
    assert_eq!(l.get("backend"), backend.addr.to_string());
}

#[test]
fn a_dead_backend_is_connect_failed() {
    let lb = L4lb::start(
        &Conf::new("round_robin", &[dead_addr()])
            .access_log(true)
            .extra("connect_retries = 0"),
    );
    assert_eq!(attempt(lb.addr, None), Outcome::Refused);
    let lines = wait_access(&lb, 1);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let l = &lines[0];
    assert_eq!(l.keys(), TCP_KEYS, "{}", l.raw);
    assert_eq!(l.get("end"), "connect_failed");
    assert_eq!(l.get("backend"), "-");
}

#[test]
fn a_missing_proxy_header_is_proxy_header() {
    let backend = Backend::echo("e");
    let lb = L4lb::start(
        &Conf::new("round_robin", &[backend.addr])
            .access_log(true)
            .extra("accept_proxy_protocol = true")
            .extra("trusted_proxies = [\"127.0.0.0/8\"]"),
    );
    let mut s = connect(lb.addr).expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    assert!(matches!(
        first_read(&mut s, REFUSAL_TIMEOUT),
        FirstRead::Reset | FirstRead::Eof
    ));
    let lines = wait_access(&lb, 1);
    let l = line_of(&lines, s.local_addr().expect("addr"));
    assert_eq!(l.get("end"), "proxy_header", "{}", l.raw);
    assert_eq!(l.get("backend"), "-");
    assert_eq!(backend.accepted(), 0);
}

#[test]
fn connections_open_at_the_drain_timeout_are_shutdown() {
    let backend = Backend::echo("e");
    let mut lb = L4lb::start(&Conf::new("round_robin", &[backend.addr]).access_log(true));
    let mut s = connect(lb.addr).expect("connect");
    echo_roundtrip(&mut s, b"held").expect("roundtrip");
    lb.signal(Signal::SIGTERM);
    let (status, stderr) = lb.wait_exit(EXIT_TIMEOUT).expect("l4lb did not exit");
    assert!(status.success(), "{status}\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let lines = access(&lines);
    let l = line_of(&lines, s.local_addr().expect("addr"));
    assert_eq!(l.get("end"), "shutdown", "{}", l.raw);
    assert_eq!(
        (l.num("bytes_to_backend"), l.num("bytes_to_client")),
        (4, 4)
    );
    assert!(
        l.num("duration_ms") >= 1000,
        "drain_timeout_s = 1: {}",
        l.raw
    );
}

#[test]
fn a_reload_switches_it_on_without_dropping_the_open_connection() {
    let backend = Backend::echo("e");
    let conf = Conf::new("round_robin", &[backend.addr]);
    let lb = L4lb::start(&conf);
    let mut before = connect(lb.addr).expect("connect");
    echo_roundtrip(&mut before, b"before").expect("roundtrip");

    std::fs::write(&lb.config_path, conf.access_log(true).render(lb.addr)).expect("rewrite");
    lb.signal(Signal::SIGHUP);
    assert!(
        wait_until(LOG_TIMEOUT, || lb
            .stderr_lines()
            .iter()
            .any(|l| l.contains("reloaded ") && l.contains("1 changed"))),
        "no reload logged:\n{}",
        lb.stderr_lines().join("\n")
    );

    // A new connection is logged.
    let mut after = connect(lb.addr).expect("connect");
    echo_and_finish(&mut after, b"new");
    let lines = wait_access(&lb, 1);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let l = line_of(&lines, after.local_addr().expect("addr"));
    assert_eq!(
        (l.num("bytes_to_backend"), l.num("bytes_to_client")),
        (3, 3)
    );

    // The one opened before the reload still works, and is logged when it ends (the setting
    // in force at the end counts), with every byte of its life.
    echo_roundtrip(&mut before, b"still here").expect("the open connection survived");
    echo_and_finish(&mut before, b"!");
    let lines = wait_access(&lb, 2);
    let l = line_of(&lines, before.local_addr().expect("addr"));
    assert_eq!(l.get("end"), "finished", "{}", l.raw);
    assert_eq!(
        (l.num("bytes_to_backend"), l.num("bytes_to_client")),
        (17, 17)
    );
}

#[test]
fn an_expired_udp_session_is_one_idle_timeout_line() {
    let backend = UdpBackend::spawn(Mode::Echo);
    // 3 s, not 1: on a loaded 2-core host the second datagram once came more than 1 s after
    // the first reply, and so opened a second session.
    let lb = L4lb::start(
        &Conf::udp("round_robin", &[backend.addr])
            .idle(3)
            .extra("access_log = true"),
    );
    let c = client(localhost(), lb.addr);
    assert_eq!(ask(&c, b"one", REPLY_TIMEOUT).as_deref(), Some(&b"one"[..]));
    assert_eq!(
        ask(&c, b"second", REPLY_TIMEOUT).as_deref(),
        Some(&b"second"[..])
    );

    let lines = wait_access(&lb, 1);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let l = &lines[0];
    assert_eq!(l.keys(), UDP_KEYS, "{}", l.raw);
    assert_eq!(l.get("listener"), "u");
    assert_eq!(l.get("client"), c.local_addr().expect("addr").to_string());
    assert_eq!(l.get("backend"), backend.addr.to_string());
    assert_eq!(l.num("datagrams_to_backend"), 2);
    assert_eq!(l.num("datagrams_to_client"), 2);
    assert_eq!(l.num("bytes_to_backend"), 9);
    assert_eq!(l.num("bytes_to_client"), 9);
    assert_eq!(l.get("end"), "idle_timeout");
    assert!(
        l.num("duration_ms") >= 3000,
        "idle_timeout_s = 3: {}",
        l.raw
    );
}

#[test]
fn udp_sessions_open_at_a_stop_are_shutdown() {
    let backend = UdpBackend::spawn(Mode::Echo);
    let mut lb = L4lb::start(
        &Conf::udp("round_robin", &[backend.addr])
            .idle(30)
            .extra("access_log = true"),
    );
    let c = client(localhost(), lb.addr);
    assert_eq!(
        ask(&c, b"ping", REPLY_TIMEOUT).as_deref(),
        Some(&b"ping"[..])
    );
    lb.signal(Signal::SIGTERM);
    let (status, stderr) = lb.wait_exit(EXIT_TIMEOUT).expect("l4lb did not exit");
    assert!(status.success(), "{status}\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let lines = access(&lines);
    let l = line_of(&lines, c.local_addr().expect("addr"));
    assert_eq!(l.get("end"), "shutdown", "{}", l.raw);
    assert_eq!(
        (l.num("datagrams_to_backend"), l.num("datagrams_to_client")),
        (1, 1)
    );
}
