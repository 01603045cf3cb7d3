//! The admin HTTP API end to end (SPEC.md, "Admin HTTP API"): the real `l4lb` binary with an
//! `[admin]` section, one TCP listener and two in-process `id` backends on loopback.
//!
//! `/metrics` is checked with the harness's strict Prometheus reader (`common::Scrape`: every
//! sample's family has `# HELP` and `# TYPE`), `/status` with serde_json (keys in the order
//! served), and the backend state changes by the traffic they steer. Every wait is bounded (see `common`).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A balancer with the admin API on its own free port, and its two backends ("a", "b").
struct Setup {
    // Field order = drop order: the balancer goes before its backends.
    lb: L4lb,
    admin: SocketAddr,
    backends: Vec<Backend>,
}

impl Setup {
    fn start() -> Setup {
        Setup::start_with(|conf| conf)
    }

    /// `start` with the config passed through `edit` (after the `[admin]` table is opened,
    /// so `edit` may add `runtime` lines that land in it, e.g. `token_file`).
    fn start_with(edit: impl FnOnce(Conf) -> Conf) -> Setup {
        Setup::start_balanced("round_robin", edit)
    }

    /// `start_with` on `balance`.
    fn start_balanced(balance: &str, edit: impl FnOnce(Conf) -> Conf) -> Setup {
        let backends = vec![Backend::id("a"), Backend::id("b")];
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
        let admin = SocketAddr::new(localhost(), free_port(localhost()));
        let conf = edit(Conf::new(balance, &addrs).workers("2").admin(admin));
        let lb = L4lb::start(&conf);
        let setup = Setup {
            lb,
            admin,
            backends,
        };
        let up = wait_until(STARTUP_TIMEOUT, || {
            matches!(http(admin, "GET", "/status", ""), Ok((200, _, _)))
        });
        assert!(
            up,
            "admin API not answering on {admin} within {STARTUP_TIMEOUT:?}"
        );
        setup
    }

    fn http(&self, method: &str, path: &str) -> (u16, String, String) {
        http(self.admin, method, path, "")
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.admin))
    }

    /// The body of `GET path`, which must answer 200 with `content_type` in its head.
    fn get_ok(&self, path: &str, content_type: &str) -> String {
        let (status, head, body) = self.http("GET", path);
        assert_eq!(status, 200, "{head}{body}");
        assert!(head.to_ascii_lowercase().contains(content_type), "{head}");
        body
    }

    fn metrics(&self) -> Scrape {
        Scrape::parse(&self.get_ok("/metrics", "content-type: text/plain; version=0.0.4"))
    }

    fn status(&self) -> Value {
        let body = self.get_ok("/status", "application/json");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
    }

    /// `l4lb_backend_bytes_total` of listener "t" in `m`, summed over the backends:
    /// (to_backend, to_client).
    fn bytes_total(&self, m: &Scrape) -> (f64, f64) {
        let (mut to_backend, mut to_client) = (0.0, 0.0);
        for b in &self.backends {
            let name = b.addr.to_string();
            let dir = |d| {
                [
                    ("listener", "t"),
                    ("backend", name.as_str()),
                    ("direction", d),
                ]
            };
            to_backend += m.get("l4lb_backend_bytes_total", &dir("to_backend"));
            to_client += m.get("l4lb_backend_bytes_total", &dir("to_client"));
        }
        (to_backend, to_client)
    }

    /// The state `/status` shows for backend `addr` of listener "t".
    fn state_of(&self, addr: SocketAddr) -> String {
        let status = self.status();
        let backend = backend_in(&status["listeners"][0], addr);
        backend["state"]
            .as_str()
            .unwrap_or_else(|| panic!("no state in {backend}"))
            .to_string()
    }

    fn backend(&self, id: &str) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.id == id)
            .expect("known backend")
    }
}

/// Percent-encode every byte that is not unreserved (RFC 3986), as a careful client would.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Every metric SPEC.md requires, with the label sets of listener "t" and its backends.
#[test]
fn metrics_parse_and_count_connections() {
    let setup = Setup::start();
    let lb = setup.lb.addr;
    let m = setup.metrics();
    let t = [("listener", "t")];
    assert_eq!(m.get("l4lb_connections_accepted_total", &t), 0.0);
    assert_eq!(m.get("l4lb_connections_active", &t), 0.0);
    assert_eq!(m.get("l4lb_udp_sessions_active", &t), 0.0);
    for reason in [
        "client_limit",
        "client_rate",
        "listener_limit",
        "global_limit",
        "no_backend",
        "acl",
    ] {
        let labels = [("listener", "t"), ("reason", reason)];
        assert_eq!(m.get("l4lb_connections_rejected_total", &labels), 0.0);
    }
    for result in ["ok", "error"] {
        assert_eq!(
            m.get("l4lb_config_reloads_total", &[("result", result)]),
            0.0
        );
    }
    for b in &setup.backends {
        let name = b.addr.to_string();
        let labels = [("listener", "t"), ("backend", name.as_str())];
        assert_eq!(m.get("l4lb_backend_up", &labels), 1.0);
        assert_eq!(m.get("l4lb_backend_connections_active", &labels), 0.0);
        assert_eq!(m.get("l4lb_backend_connections_total", &labels), 0.0);
        assert_eq!(m.get("l4lb_backend_connect_errors_total", &labels), 0.0);
        for direction in ["to_backend", "to_client"] {
            let labels = [
                ("listener", "t"),
                ("backend", name.as_str()),
                ("direction", direction),
            ];
            assert_eq!(m.get("l4lb_backend_bytes_total", &labels), 0.0);
        }
    }
    for (name, kind) in [
        ("l4lb_connections_accepted_total", "counter"),
        ("l4lb_connections_active", "gauge"),
        ("l4lb_connections_rejected_total", "counter"),
        ("l4lb_backend_up", "gauge"),
        ("l4lb_backend_connections_active", "gauge"),
        ("l4lb_backend_connections_total", "counter"),
        ("l4lb_backend_connect_errors_total", "counter"),
        ("l4lb_backend_bytes_total", "counter"),
        ("l4lb_udp_sessions_active", "gauge"),
        ("l4lb_config_reloads_total", "counter"),
    ] {
        assert_eq!(m.types.get(name).map(String::as_str), Some(kind), "{name}");
    }

    // Four connections, each an id line and a 5-byte echo.
    const CONNS: usize = 4;
    for _ in 0..CONNS {
        let (outcome, stream) = attempt_keep(lb, None);
        assert!(matches!(outcome, Outcome::Served(_)), "{outcome:?}");
        let mut s = stream.expect("served connection");
        echo_roundtrip(&mut s, b"hello").expect("echo");
    }
    let mut last = None;
    let counted = wait_until(Duration::from_secs(5), || {
        let m = setup.metrics();
        let accepted = m.get("l4lb_connections_accepted_total", &t);
        let mut total = 0.0;
        for b in &setup.backends {
            let name = b.addr.to_string();
            let labels = [("listener", "t"), ("backend", name.as_str())];
            total += m.get("l4lb_backend_connections_total", &labels);
        }
        let (to_backend, to_client) = setup.bytes_total(&m);
        let active = m.get("l4lb_connections_active", &t);
        last = Some((accepted, total, to_backend, to_client, active));
        accepted == CONNS as f64
            && total == CONNS as f64
            && to_backend == (CONNS * 5) as f64
            && to_client == (CONNS * (2 + 5)) as f64
            && active == 0.0
    });
    assert!(
        counted,
        "(accepted, backend total, bytes to backend, bytes to client, active) = {last:?}"
    );
    let served: usize = setup.backends.iter().map(Backend::accepted).sum();
    assert_eq!(served, CONNS);
}

/// A long-lived connection's bytes reach `l4lb_backend_bytes_total` while it is still open,
/// not only when it closes (operators watch streams that last for hours).
#[test]
fn byte_counters_move_while_a_connection_is_open() {
    let setup = Setup::start();
    let (outcome, stream) = attempt_keep(setup.lb.addr, None);
    assert!(matches!(outcome, Outcome::Served(_)), "{outcome:?}");
    let mut s = stream.expect("served connection");
    const CHUNK: usize = 16 * 1024;
    const CHUNKS: usize = 8;
    for i in 0..CHUNKS {
        echo_roundtrip(&mut s, &[i as u8; CHUNK]).expect("echo");
    }
    let sent = (CHUNK * CHUNKS) as f64;
    let mut last = None;
    let live = wait_until(Duration::from_secs(10), || {
        let m = setup.metrics();
        let (to_backend, to_client) = setup.bytes_total(&m);
        let active = m.get("l4lb_connections_active", &[("listener", "t")]);
        last = Some((to_backend, to_client, active));
        to_backend == sent && to_client >= sent && active == 1.0
    });
    assert!(
        live,
        "(to_backend, to_client, active) = {last:?}, {sent} sent"
    );
    // Still open and still forwarding: the counters were read from a live connection.
    echo_roundtrip(&mut s, b"still here").expect("echo after the scrape");
}

#[test]
fn status_matches_the_spec_shape() {
    let setup = Setup::start();
    let status = setup.status();
    assert_eq!(
        keys(&status),
        ["version", "uptime_s", "workers", "listeners"]
    );
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        status["uptime_s"].as_f64().is_some_and(|u| u >= 0.0),
        "{status}"
    );
    assert_eq!(status["workers"], 2.0);
    let listeners = status["listeners"].as_array().expect("listeners");
    assert_eq!(listeners.len(), 1);
    let l = &listeners[0];
    assert_eq!(
        keys(l),
        ["name", "protocol", "bind", "balance", "active", "backends"]
    );
    assert_eq!(l["name"], "t");
    assert_eq!(l["protocol"], "tcp");
    assert_eq!(l["bind"], setup.lb.addr.to_string());
    assert_eq!(l["balance"], "round_robin");
    assert_eq!(l["active"], 0.0);
    let backends = l["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 2);
    for (json, backend) in backends.iter().zip(&setup.backends) {
        assert_eq!(
            keys(json),
            [
                "addr",
                "weight",
                "effective_weight",
                "state",
                "active",
                "total"
            ]
        );
        assert_eq!(json["addr"], backend.addr.to_string());
        assert_eq!(json["weight"], 1.0);
        assert_eq!(json["effective_weight"], 1.0);
        assert_eq!(json["state"], "up");
        assert_eq!(json["active"], 0.0);
        assert_eq!(json["total"], 0.0);
    }

    // An open connection shows in the listener's and its backend's counts.
    let (outcome, stream) = attempt_keep(setup.lb.addr, None);
    let Outcome::Served(id) = outcome else {
        panic!("refused")
    };
    let addr = setup.backend(&id).addr;
    let mut seen = None;
    let shown = wait_until(Duration::from_secs(5), || {
        let status = setup.status();
        let l = &status["listeners"][0];
        let b = backend_in(l, addr);
        let now = (
            l["active"].as_f64(),
            b["active"].as_f64(),
            b["total"].as_f64(),
        );
        seen = Some(now);
        now == (Some(1.0), Some(1.0), Some(1.0))
    });
    assert!(
        shown,
        "(listener active, backend active, backend total) = {seen:?}"
    );
    drop(stream);
}

/// Drain the backend an open connection uses: that connection keeps working, new ones go to
/// the other backend, `/status` and `/metrics` show it; enable brings it back.
#[test]
fn drain_keeps_open_connections_and_steers_new_ones() {
    let setup = Setup::start();
    let lb = setup.lb.addr;
    let (outcome, stream) = attempt_keep(lb, None);
    let Outcome::Served(drained_id) = outcome else {
        panic!("refused")
    };
    let mut open = stream.expect("served connection");
    let drained = setup.backend(&drained_id).addr;
    let other_id = if drained_id == "a" { "b" } else { "a" };

    // The address percent-encoded, as a careful client sends it.
    let path = format!(
        "/listeners/t/backends/{}/drain",
        percent_encode(&drained.to_string())
    );
    let (status, head, body) = setup.http("POST", &path);
    assert_eq!(status, 200, "{head}{body}");
    let reply: Value = serde_json::from_str(&body).expect("JSON reply");
    assert_eq!(reply["state"], "drain", "{body}");
    assert_eq!(setup.state_of(drained), "drain");
    let name = drained.to_string();
    let labels = [("listener", "t"), ("backend", name.as_str())];
    assert_eq!(setup.metrics().get("l4lb_backend_up", &labels), 0.0);

    echo_roundtrip(&mut open, b"still here").expect("the drained backend's open connection");
    for _ in 0..6 {
        assert_eq!(
            served_by(lb, None),
            other_id,
            "a new connection reached the drained backend"
        );
    }
    echo_roundtrip(&mut open, b"and here").expect("the drained backend's open connection");

    let (status, head, body) =
        setup.http("POST", &format!("/listeners/t/backends/{drained}/enable"));
    assert_eq!(status, 200, "{head}{body}");
    assert_eq!(setup.state_of(drained), "up");
    assert_eq!(setup.metrics().get("l4lb_backend_up", &labels), 1.0);
    let back = (0..10).any(|_| served_by(lb, None) == drained_id);
    assert!(back, "no new connection reached {drained_id} after enable");
    echo_roundtrip(&mut open, b"bye").expect("open connection after enable");
}

#[test]
fn malformed_requests_get_4xx_and_traffic_still_flows() {
    let setup = Setup::start();
    let admin = setup.admin;
    let a = setup.backend("a").addr;
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n".to_vec(), 400),
        (b"GET /nope HTTP/1.1\r\n\r\n".to_vec(), 404),
        (b"DELETE /metrics HTTP/1.1\r\n\r\n".to_vec(), 405),
        (
            format!("POST /status HTTP/1.1\r\nHost: {admin}\r\n\r\n").into_bytes(),
            405,
        ),
        (
            format!("GET /listeners/t/backends/{a}/drain HTTP/1.1\r\n\r\n").into_bytes(),
            405,
        ),
        (
            format!("POST /listeners/t/backends/{a}/reboot HTTP/1.1\r\nHost: {admin}\r\n\r\n")
                .into_bytes(),
            400,
        ),
        (
            format!("POST /listeners/zz/backends/{a}/drain HTTP/1.1\r\nHost: {admin}\r\n\r\n")
                .into_bytes(),
            404,
        ),
        (
            format!(
                "POST /listeners/t/backends/127.0.0.1:1/drain HTTP/1.1\r\nHost: {admin}\r\n\r\n"
            )
            .into_bytes(),
            404,
        ),
        (
            format!("POST /listeners/t/backends/%ZZ/drain HTTP/1.1\r\nHost: {admin}\r\n\r\n")
                .into_bytes(),
            400,
        ),
        (
            b"GET /metrics HTTP/1.1\r\nContent-Length: 999999\r\n\r\n".to_vec(),
            413,
        ),
    ];
    for (request, expected) in &cases {
        let shown = String::from_utf8_lossy(request);
        let (status, head, body) =
            raw_request(admin, request).unwrap_or_else(|e| panic!("{shown:?}: {e}"));
        assert_eq!(status, *expected, "{shown:?} -> {head}{body}");
    }
    // A 405 says what is allowed.
    let (_, head, _) = setup.http("DELETE", "/status");
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    // A client that sends half a request and goes silent is cut off in bounded time.
    let started = Instant::now();
    let mut silent = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).expect("connect");
    silent.write_all(b"GET /stat").expect("write");
    let (status, _, _) = setup.http("GET", "/status");
    assert_eq!(status, 200, "blocked behind a silent client");
    let _ = read_until_eof(&mut silent, Duration::from_secs(5)).expect("silent client closed");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Nothing changed, and traffic flows.
    for b in &setup.backends {
        assert_eq!(setup.state_of(b.addr), "up");
    }
    for _ in 0..4 {
        let id = served_by(setup.lb.addr, None);
        assert!(id == "a" || id == "b", "{id}");
    }
}

/// A web page in the operator's browser must not change state (issue 9, item 8): a POST whose
/// `Origin` is another site, or whose `Host` is a rebinding name or missing, is refused with
/// 403 and changes nothing; the admin page's own origin and plain clients (curl) still work.
#[test]
fn cross_origin_and_rebound_posts_are_refused() {
    let setup = Setup::start();
    let admin = setup.admin;
    let a = setup.backend("a").addr;
    let drain = format!("/listeners/t/backends/{a}/drain");
    let port = admin.port();
    let refused = [
        format!("POST {drain} HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://evil.example\r\n\r\n"),
        format!("POST {drain} HTTP/1.1\r\nHost: {admin}\r\nOrigin: null\r\n\r\n"),
        format!("POST {drain} HTTP/1.1\r\nHost: evil.example:{port}\r\n\r\n"),
        format!(
            "POST {drain} HTTP/1.1\r\nHost: evil.example:{port}\r\n\
             Origin: http://evil.example:{port}\r\n\r\n"
        ),
        format!("POST {drain} HTTP/1.1\r\n\r\n"),
        // Even a path that does not exist: the guard answers before the router.
        "POST /listeners/zz/backends/x/drain HTTP/1.1\r\nHost: rebound.example\r\n\r\n".to_string(),
    ];
    for request in &refused {
        let (status, head, body) = raw_request(admin, request.as_bytes()).expect("answer");
        assert_eq!(status, 403, "{request:?} -> {head}{body}");
        assert_eq!(setup.state_of(a), "up", "{request:?} changed the state");
    }
    // The dashboard's own POSTs (Origin = http:// + Host), by address or by localhost.
    let own = format!("Origin: http://{admin}\r\n");
    let (status, head, body) = http(admin, "POST", &drain, &own).expect("same-origin POST");
    assert_eq!(status, 200, "{head}{body}");
    assert_eq!(setup.state_of(a), "drain");
    let enable = format!(
        "POST /listeners/t/backends/{a}/enable HTTP/1.1\r\nHost: localhost:{port}\r\n\
         Origin: http://localhost:{port}\r\n\r\n"
    );
    let (status, head, body) = raw_request(admin, enable.as_bytes()).expect("answer");
    assert_eq!(status, 200, "{head}{body}");
    assert_eq!(setup.state_of(a), "up");
    // GETs are not guarded: a scrape from anywhere with any Host still works.
    let get = b"GET /status HTTP/1.1\r\nHost: whatever.example\r\n\r\n";
    assert_eq!(raw_request(admin, get).expect("answer").0, 200);
}

/// `admin.token_file`: POSTs need `Authorization: Bearer <token>` (401 with a challenge
/// otherwise); the file's trailing newline is not part of the token; GETs need none.
#[test]
fn token_file_guards_posts() {
    let dir = TempDir::new("token");
    let token_file = dir.write("admin.token", "Zq8-secret_token\n");
    let setup = Setup::start_with(|conf| {
        conf.runtime(&format!("token_file = \"{}\"", token_file.display()))
    });
    let admin = setup.admin;
    let b = setup.backend("b").addr;
    let drain = format!("/listeners/t/backends/{b}/drain");
    for auth in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: Bearer Zq8-secret_tokenX\r\n",
        "Authorization: Bearer Zq8-secret_toke\r\n",
        "Authorization: Basic Zq8-secret_token\r\n",
        "Authorization: Zq8-secret_token\r\n",
    ] {
        let (status, head, body) = http(admin, "POST", &drain, auth).expect("answer");
        assert_eq!(status, 401, "{auth:?} -> {head}{body}");
        assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
        assert_eq!(setup.state_of(b), "up", "{auth:?} changed the state");
    }
    let (status, head, body) = http(
        admin,
        "POST",
        &drain,
        "Authorization: Bearer Zq8-secret_token\r\n",
    )
    .expect("answer");
    assert_eq!(status, 200, "{head}{body}");
    assert_eq!(setup.state_of(b), "drain");
    // The right token from a foreign page is still refused.
    let (status, _, _) = http(
        admin,
        "POST",
        &format!("/listeners/t/backends/{b}/enable"),
        "Authorization: Bearer Zq8-secret_token\r\nOrigin: http://evil.example\r\n",
    )
    .expect("answer");
    assert_eq!(status, 403);
    assert_eq!(setup.state_of(b), "drain");
    // Reading needs no token.
    let _ = setup.metrics();
}

/// A non-loopback `admin.bind` without `token_file` is a config error: exit 2, one line
/// naming the file and the key.
#[test]
fn a_public_admin_bind_needs_a_token_file() {
    let dir = TempDir::new("public-admin");
    let port = free_port(localhost());
    // A free port, although a refused config binds nothing: a regression must not take a
    // fixed port from another test run.
    let any = std::net::Ipv4Addr::UNSPECIFIED.into();
    let public = SocketAddr::new(any, free_port(any));
    let conf = Conf::new("round_robin", &["127.0.0.1:9".parse().expect("addr")])
        .runtime(&format!("\n[admin]\nbind = \"{public}\""));
    let path = dir.write(
        "l4lb.toml",
        &conf.render(SocketAddr::new(localhost(), port)),
    );
    for args in [
        vec![std::ffi::OsStr::new("--config"), path.as_os_str()],
        vec![
            std::ffi::OsStr::new("--config"),
            path.as_os_str(),
            std::ffi::OsStr::new("--check"),
        ],
    ] {
        let out = run_cli(&args, Duration::from_secs(10));
        assert_eq!(out.code(), Some(2), "{out:?}");
        let line = out.stderr.trim();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains(&format!(
                "{}: admin.token_file: required when admin.bind ({public}) is not a loopback address",
                path.display()
            )),
            "{line}"
        );
    }
}

/// The bytes read per admin connection are bounded: a client that sends a request and then
/// keeps streaming is cut off (reset) after a small, fixed amount, instead of making the admin
/// thread read and discard at wire speed until the response deadline.
#[test]
fn a_client_that_keeps_sending_is_cut_off() {
    let setup = Setup::start();
    let mut s = TcpStream::connect_timeout(&setup.admin, Duration::from_secs(2)).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let head = format!("GET /status HTTP/1.1\r\nHost: {}\r\n\r\n", setup.admin);
    s.write_all(head.as_bytes()).expect("request");
    // Far more than any socket buffer on loopback (a few MiB), far less than what the admin
    // thread would swallow in its 5 s response deadline without a bound (GiB/s on loopback).
    const LIMIT: usize = 256 << 20;
    let chunk = vec![b'x'; 64 * 1024];
    let started = Instant::now();
    let mut sent = 0;
    let cut = loop {
        if sent >= LIMIT || started.elapsed() > Duration::from_secs(4) {
            break None;
        }
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break Some(e),
        }
    };
    assert!(
        cut.is_some(),
        "the admin API read {sent} bytes in {:?} without cutting the client off",
        started.elapsed()
    );
    // And it still serves others.
    let _ = setup.status();
}

/// Backend "b"'s share of `n` fresh connections through the balancer.
fn share_of_b(lb: SocketAddr, n: usize) -> f64 {
    let b = (0..n).filter(|_| served_by(lb, None) == "b").count();
    b as f64 / n as f64
}

/// `POST .../weight/{n}` (issue 13, item 4): new connections follow the new weight at once
/// (smooth weighted round robin, and Maglev tables rebuilt on the admin thread), `/status`
/// and `l4lb_backend_weight` show it, weight 0 takes no new connections, and a reload of the
/// unchanged file puts the file's weights back.
#[test]
fn weights_change_at_run_time_and_a_reload_restores_them() {
    for balance in ["weighted_round_robin", "five_tuple_hash"] {
        let setup = Setup::start_balanced(balance, |c| c);
        let lb = setup.lb.addr;
        let b = setup.backend("b").addr;
        let name = b.to_string();
        let labels = [("listener", "t"), ("backend", name.as_str())];
        // Hash shares are statistical (one key per client port); smooth WRR is exact per
        // worker, up to one pick per worker.
        const N: usize = 300;
        let tolerance = if balance == "five_tuple_hash" {
            0.12
        } else {
            0.05
        };
        let near = |share: f64, want: f64| (share - want).abs() <= tolerance;

        let even = share_of_b(lb, N);
        assert!(near(even, 0.5), "{balance}: b's share at 1:1 is {even}");

        let asked = Instant::now();
        let (status, head, body) =
            setup.http("POST", &format!("/listeners/t/backends/{b}/weight/4"));
        assert_eq!(status, 200, "{head}{body}");
        let reply: Value = serde_json::from_str(&body).expect("JSON reply");
        assert_eq!(reply["weight"], 4.0, "{body}");
        // The very next connections follow: measured right after the answer, within a second.
        let heavy = share_of_b(lb, N);
        let took = asked.elapsed();
        assert!(near(heavy, 0.8), "{balance}: b's share at 1:4 is {heavy}");
        assert!(took < Duration::from_secs(5), "{balance}: {took:?}");
        let status = setup.status();
        assert_eq!(backend_in(&status["listeners"][0], b)["weight"], 4.0);
        assert_eq!(setup.metrics().get("l4lb_backend_weight", &labels), 4.0);

        let (status, _, body) = setup.http("POST", &format!("/listeners/t/backends/{b}/weight/0"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            share_of_b(lb, 40),
            0.0,
            "{balance}: weight 0 still took connections"
        );
        let (status, _, _) = setup.http("POST", &format!("/listeners/t/backends/{b}/weight/1001"));
        assert_eq!(status, 400);

        // SIGHUP with the file unchanged: the file's weight (1) comes back.
        setup.lb.signal(Signal::SIGHUP);
        let mut seen = None;
        let restored = wait_until(Duration::from_secs(10), || {
            let m = setup.metrics();
            let w = m.get("l4lb_backend_weight", &labels);
            let ok = m.get("l4lb_config_reloads_total", &[("result", "ok")]);
            seen = Some((w, ok));
            w == 1.0 && ok == 1.0
        });
        assert!(restored, "{balance}: (weight, reloads ok) = {seen:?}");
        let back = share_of_b(lb, N);
        assert!(
            near(back, 0.5),
            "{balance}: b's share after the reload is {back}"
        );
        eprintln!(
            "{balance}: b's share of {N} connections: {even:.3} at 1:1, {heavy:.3} right after \
             weight 4 (measured within {took:?} of the POST), {back:.3} after the reload"
        );
    }
}
