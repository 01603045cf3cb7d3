//! TLS SNI routing end to end (`[[listener.route]]`): the real binary in front of real TLS
//! servers, each with its own certificate for its names, signed by a throw-away CA
//! (`tests/helpers/tls_servers.py`, certificates made with the `openssl` command), and a real
//! TLS client (`tests/helpers/tls_client.py`, Python's ssl module) that completes a full,
//! verified handshake through the balancer and reads the id of the server it reached. l4lb
//! never terminates TLS: a client reaching the wrong backend fails its certificate check.
//!
//! Cases: three routes (exact, wildcard, two names) and a default; no SNI and unknown SNI go
//! to the default; a hello in 1-byte segments, a hello re-framed into many records; garbage,
//! a hello cut halfway (then EOF, or then silence until the first-byte timeout) and an
//! oversized hello are refused and counted; route backends are health-checked; without
//! backends of its own a listener refuses unmatched hellos as `no_route`; a reload re-routes;
//! with PROXY protocol on both sides the backend receives l4lb's header, then the hello.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use l4lb::tls_sni::build_client_hello;

const SERVERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helpers/tls_servers.py");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helpers/tls_client.py");
/// The hello deadline the tests configure (`client_first_byte_timeout_ms`).
const HELLO_TIMEOUT_MS: u64 = 1500;

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    for tool in [["python3", "--version"], ["openssl", "version"]] {
        let ok = Command::new(tool[0])
            .arg(tool[1])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("`{}` is not available", tool[0]));
        }
    }
    None
}

/// The TLS servers (one process), their ports by id, and the CA file; stopped on drop.
struct TlsServers {
    child: Child,
    ports: HashMap<String, u16>,
    dir: TempDir,
}

impl TlsServers {
    /// `servers`: `ID=NAME,NAME...` as `tls_servers.py` takes them.
    fn start(servers: &[&str]) -> TlsServers {
        let dir = TempDir::new("sni");
        let mut child = Command::new("python3")
            .arg(SERVERS)
            .arg(dir.path())
            .args(servers)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tls_servers.py");
        let mut ports = HashMap::new();
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        for line in lines.by_ref() {
            let line = line.expect("read tls_servers.py");
            if line == "ready" {
                break;
            }
            let (id, port) = line.split_once(' ').expect("ID PORT");
            ports.insert(id.to_string(), port.parse().expect("port"));
        }
        assert_eq!(ports.len(), servers.len(), "tls_servers.py did not start");
        TlsServers { child, ports, dir }
    }

    fn addr(&self, id: &str) -> SocketAddr {
        SocketAddr::new(localhost(), self.ports[id])
    }

    /// A full TLS handshake through `lb` with `sni` ("-" for none) and `args` (see
    /// tls_client.py): the server's id, or the client's error line.
    fn client(&self, lb: SocketAddr, sni: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new("python3")
            .arg(CLIENT)
            .arg(lb.port().to_string())
            .arg(self.dir.path().join("ca.crt"))
            .arg(sni)
            .args(args)
            .output()
            .expect("run tls_client.py");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("{text} {}", String::from_utf8_lossy(&out.stderr)))
        }
    }
}

impl Drop for TlsServers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[[listener.route]]` tables appended to a rendered config.
fn with_routes(text: String, routes: &[(&str, &[SocketAddr], &str)]) -> String {
    let mut out = text;
    for (sni, backends, extra) in routes {
        out.push_str(&format!(
            "\n[[listener.route]]\nsni = {sni}\n{extra}\nbackends = ["
        ));
        for b in backends.iter() {
            out.push_str(&format!("{{ addr = \"{b}\" }}, "));
        }
        out.push_str("]\n");
    }
    out
}

fn rejected(admin: SocketAddr, reason: &str) -> f64 {
    metric_at(
        admin,
        "l4lb_connections_rejected_total",
        &[("listener", "t"), ("reason", reason)],
    )
}

/// Whether a raw client that sent `bytes` (then shut its write side when `eof`) is closed by
/// the balancer without a byte of reply.
fn refused(lb: SocketAddr, bytes: &[u8], eof: bool) -> bool {
    let mut s = connect(lb).expect("connect");
    let _ = s.write_all(bytes);
    if eof {
        let _ = s.shutdown(Shutdown::Write);
    }
    matches!(
        first_read(&mut s, Duration::from_secs(5)),
        FirstRead::Eof | FirstRead::Reset
    )
}

#[test]
fn routes_by_sni_with_a_default() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED routes_by_sni_with_a_default: {why}");
        return;
    }
    let tls = TlsServers::start(&[
        "A=api.example.com",
        "B=*.example.org",
        "C=db.example.net,db2.example.net",
        "D=default.example",
    ]);
    // Nothing listens on `dead`: the health check must mark it down, and its route's
    // connections go to A.
    let dead = SocketAddr::new(localhost(), free_port(localhost()));
    let conf = Conf::new("round_robin", &[tls.addr("D")])
        .workers("2")
        .extra(&format!(
            "client_first_byte_timeout_ms = {HELLO_TIMEOUT_MS}"
        ));
    let (a, b, c) = (tls.addr("A"), tls.addr("B"), tls.addr("C"));
    let (lb, admin) = L4lb::start_edited_with_admin(&conf, move |text, _| {
        let text = text
            + "[listener.health_check]\ninterval_ms = 100\ntimeout_ms = 100\nrise = 1\nfall = 1\n";
        with_routes(
            text,
            &[
                (r#"["api.example.com"]"#, &[a, dead], ""),
                (r#"["*.example.org"]"#, &[b], r#"balance = "least_conn""#),
                (r#"["db.example.net", "DB2.example.net"]"#, &[c], ""),
            ],
        )
    });
    let dead_down = wait_until(Duration::from_secs(10), || {
        metric_at(
            admin,
            "l4lb_backend_up",
            &[("listener", "t"), ("backend", &dead.to_string())],
        ) == 0.0
    });
    assert!(dead_down, "the route's dead backend was never marked down");

    let ok = |sni: &str, args: &[&str]| tls.client(lb.addr, sni, args);
    for _ in 0..3 {
        assert_eq!(ok("api.example.com", &[]), Ok("A".into()));
    }
    assert_eq!(ok("API.Example.COM", &[]), Ok("A".into()));
    assert_eq!(ok("x.example.org", &[]), Ok("B".into()));
    assert_eq!(ok("db2.example.net", &[]), Ok("C".into()));
    assert_eq!(ok("db.example.net", &[]), Ok("C".into()));
    // No SNI, an unknown name, a wildcard one label too deep: the default.
    assert_eq!(ok("-", &[]), Ok("D".into()));
    assert_eq!(ok("unknown.example.com", &["--any-name"]), Ok("D".into()));
    assert_eq!(ok("a.b.example.org", &["--any-name"]), Ok("D".into()));
    // A name the default's certificate does not cover fails verification: l4lb passes TLS
    // through untouched.
    assert!(ok("unknown.example.com", &[]).is_err());
    // The hello in 1-byte segments; re-framed into 40-byte records (more than 10 records);
    // both at once.
    assert_eq!(ok("api.example.com", &["--chunk", "1"]), Ok("A".into()));
    assert_eq!(ok("x.example.org", &["--records", "40"]), Ok("B".into()));
    assert_eq!(
        ok("db.example.net", &["--records", "40", "--chunk", "3"]),
        Ok("C".into())
    );

    // Refusals: garbage; half a hello then EOF; a hello over the 16 KiB bound.
    let hello = build_client_hello(Some("api.example.com"), 0, 16_384);
    assert!(refused(
        lb.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        false
    ));
    assert!(refused(lb.addr, &hello[..hello.len() / 2], true));
    let big = build_client_hello(Some("api.example.com"), 17_000, 16_384);
    assert!(refused(lb.addr, &big, false));
    assert!(wait_until(IO_TIMEOUT, || rejected(admin, "tls_hello") == 3.0));
    // Half a hello, then silence: closed at the hello deadline, not before.
    let mut s = connect(lb.addr).expect("connect");
    s.write_all(&hello[..20]).unwrap();
    let t = Instant::now();
    let got = first_read(&mut s, Duration::from_secs(10));
    let waited = t.elapsed();
    assert!(matches!(got, FirstRead::Eof | FirstRead::Reset), "{got:?}");
    assert!(
        waited >= Duration::from_millis(HELLO_TIMEOUT_MS - 300) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );

    // Metrics: per-route sums and the backend-to-route map; nothing refused reached a backend.
    let route = |r: &str| {
        metric_at(
            admin,
            "l4lb_route_connections_total",
            &[("listener", "t"), ("route", r)],
        )
    };
    assert_eq!(route("0"), 5.0);
    assert_eq!(route("1"), 2.0);
    assert_eq!(route("2"), 3.0);
    assert_eq!(route("default"), 4.0);
    assert_eq!(
        metric_at(
            admin,
            "l4lb_backend_route_info",
            &[
                ("listener", "t"),
                ("backend", &b.to_string()),
                ("route", "1")
            ]
        ),
        1.0
    );
    assert_eq!(rejected(admin, "no_route"), 0.0);
}

#[test]
fn no_route_without_own_backends_and_reload_reroutes() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED no_route_without_own_backends_and_reload_reroutes: {why}");
        return;
    }
    let tls = TlsServers::start(&["A=api.example.com", "C=api.example.com"]);
    let conf = Conf::new("round_robin", &[]).workers("1");
    let (a, c) = (tls.addr("A"), tls.addr("C"));
    let (lb, admin) = L4lb::start_edited_with_admin(&conf, move |text, _| {
        with_routes(text, &[(r#"["api.example.com"]"#, &[a], "")])
    });
    assert_eq!(tls.client(lb.addr, "api.example.com", &[]), Ok("A".into()));
    assert!(tls
        .client(lb.addr, "other.example.com", &["--any-name"])
        .is_err());
    assert!(tls.client(lb.addr, "-", &[]).is_err());
    assert!(wait_until(IO_TIMEOUT, || rejected(admin, "no_route") == 2.0));
    // The default hello deadline (5 s) applies: a silent client is not closed at once.
    let mut s = connect(lb.addr).expect("connect");
    assert_eq!(
        first_read(&mut s, Duration::from_millis(1500)),
        FirstRead::TimedOut
    );

    // Reload: the route now points to C.
    let text = std::fs::read_to_string(&lb.config_path).unwrap();
    let moved = text.replace(&a.to_string(), &c.to_string());
    std::fs::write(&lb.config_path, moved).unwrap();
    lb.signal(nix::sys::signal::Signal::SIGHUP);
    let rerouted = wait_until(Duration::from_secs(10), || {
        tls.client(lb.addr, "api.example.com", &[]) == Ok("C".into())
    });
    assert!(rerouted, "the reload did not move the route to C");
}

/// PROXY protocol on both sides: the client's header is read first, then its hello; the
/// backend gets l4lb's header, then the hello, byte for byte.
#[test]
fn proxy_header_then_hello_in_and_out() {
    let backend = TcpListener::bind((localhost(), 0)).unwrap();
    let baddr = backend.local_addr().unwrap();
    let conf = Conf::new("round_robin", &[])
        .workers("1")
        .extra("accept_proxy_protocol = true")
        .extra("trusted_proxies = [\"127.0.0.1/32\"]")
        .extra("proxy_protocol = \"v1\"");
    let lb = L4lb::start_edited(&conf, move |text, _| {
        with_routes(text, &[(r#"["*.example.com"]"#, &[baddr], "")])
    });
    let hello = build_client_hello(Some("api.example.com"), 300, 100);
    let mut s = connect(lb.addr).expect("connect");
    // The header and the first bytes of the hello in one segment, the rest later.
    let mut first = b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 443\r\n".to_vec();
    first.extend_from_slice(&hello[..7]);
    s.write_all(&first).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(&hello[7..]).unwrap();
    backend.set_nonblocking(false).unwrap();
    let (mut b, _) = backend.accept().expect("the backend gets the connection");
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let header = b"PROXY TCP4 192.0.2.1 ";
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let n = b.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(2).position(|w| w == b"\r\n") {
            if got.len() >= end + 2 + hello.len() {
                break;
            }
        }
    }
    assert!(
        got.starts_with(header),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let end = got.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    assert_eq!(
        &got[end..],
        &hello[..],
        "the hello must follow the header unchanged"
    );
}
