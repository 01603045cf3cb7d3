//! The admin HTTP API end to end (SPEC.md, "Admin HTTP API"): the real `l4lb` binary with an
//! `[admin]` section, one TCP listener and two in-process `id` backends on loopback.
//!
//! `/metrics` is checked with a small parser of the Prometheus text format (every sample's
//! family has `# HELP` and `# TYPE`), `/status` with a small JSON parser, and the backend state
//! changes by the traffic they steer. Every wait is bounded (see `common`).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

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
            matches!(try_http(admin, "GET", "/status"), Ok((200, _, _)))
        });
        assert!(
            up,
            "admin API not answering on {admin} within {STARTUP_TIMEOUT:?}"
        );
        setup
    }

    fn http(&self, method: &str, path: &str) -> (u16, String, String) {
        try_http(self.admin, method, path)
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

    fn status(&self) -> Json {
        let body = self.get_ok("/status", "application/json");
        Json::parse(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
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
        let listener = &status.get("listeners").array()[0];
        let backend = listener.backend(&addr.to_string());
        backend.get("state").str().to_string()
    }

    fn backend(&self, id: &str) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.id == id)
            .expect("known backend")
    }
}

/// Send a request and read the whole response (the server closes after one).
fn try_http(admin: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    try_http_with(admin, method, path, "")
}

/// `try_http` with `extra` header lines (each ending in CRLF) after Host.
fn try_http_with(
    admin: SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
) -> std::io::Result<(u16, String, String)> {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nUser-Agent: l4lb-test\r\n{extra}\r\n"
    );
    raw_request(admin, req.as_bytes())
}

fn raw_request(admin: SocketAddr, bytes: &[u8]) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(bytes)?;
    let out = read_until_eof(&mut s, IO_TIMEOUT)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {text:?}")))?;
    Ok((status, format!("{head}\r\n"), body.to_string()))
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
// A Prometheus text-format parser (just enough: comments, `name{labels} value`)
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

#[derive(Debug)]
struct Scrape {
    help: HashMap<String, String>,
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// Parse, panicking on any line that is not valid text format 0.0.4, and check that every
    /// sample's metric has both `# HELP` and `# TYPE`.
    fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape {
            help: HashMap::new(),
            types: HashMap::new(),
            samples: Vec::new(),
        };
        for (n, line) in text.lines().enumerate() {
            let fail = |why: &str| -> ! { panic!("/metrics line {}: {why}: {line:?}", n + 1) };
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or_else(|| fail("HELP"));
                if scrape.help.insert(name.into(), help.into()).is_some() {
                    fail("second HELP");
                }
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| fail("TYPE"));
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    fail("unknown type");
                }
                if scrape.types.insert(name.into(), kind.into()).is_some() {
                    fail("second TYPE");
                }
            } else if line.starts_with('#') {
                // Other comments are allowed.
            } else {
                let sample = parse_sample(line).unwrap_or_else(|e| fail(&e));
                // A histogram's samples are its name with `_bucket`, `_sum` or `_count`.
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|s| sample.name.strip_suffix(s))
                    .find(|f| scrape.types.get(*f).is_some_and(|t| t == "histogram"))
                    .unwrap_or(&sample.name);
                if !scrape.help.contains_key(family) || !scrape.types.contains_key(family) {
                    fail("sample before (or without) its HELP and TYPE");
                }
                scrape.samples.push(sample);
            }
        }
        scrape
    }

    /// The value of the sample with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }
}

/// Parse `k="v",...}` (after the opening brace): the labels and the bytes used, brace included.
fn parse_labels(text: &str) -> Result<(Vec<(String, String)>, usize), String> {
    let mut labels = Vec::new();
    let mut chars = text.char_indices();
    let mut key = String::new();
    loop {
        match chars.next() {
            Some((i, '}')) if key.is_empty() && labels.is_empty() => return Ok((labels, i + 1)),
            Some((_, '=')) if !key.is_empty() => {}
            Some((_, c)) if c.is_ascii_alphanumeric() || c == '_' => {
                key.push(c);
                continue;
            }
            other => return Err(format!("bad label name at {other:?}")),
        }
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err("label value must be quoted".into());
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some((_, '"')) => break,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) | None => return Err("unterminated label value".into()),
                Some((_, c)) => value.push(c),
            }
        }
        labels.push((std::mem::take(&mut key), value));
        match chars.next() {
            Some((_, ',')) => {}
            Some((i, '}')) => return Ok((labels, i + 1)),
            other => return Err(format!("expected , or }} after a label, got {other:?}")),
        }
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, used) = parse_labels(after)?;
        labels = parsed;
        rest = &after[used..];
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse::<f64>()
            .map_err(|e| format!("bad value {v:?}: {e}"))?,
    };
    // An optional timestamp, then nothing.
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

// ---------------------------------------------------------------------------------------------
// A small JSON parser (objects keep their key order)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Result<Json, String> {
        let mut p = JsonParser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing bytes at {}", p.i));
        }
        Ok(v)
    }

    fn keys(&self) -> Vec<&str> {
        match self {
            Json::Obj(kv) => kv.iter().map(|(k, _)| k.as_str()).collect(),
            other => panic!("not an object: {other:?}"),
        }
    }

    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(kv) => kv
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no key {key:?} in {self:?}")),
            other => panic!("not an object: {other:?}"),
        }
    }

    fn array(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            other => panic!("not an array: {other:?}"),
        }
    }

    fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            other => panic!("not a string: {other:?}"),
        }
    }

    fn num(&self) -> f64 {
        match self {
            Json::Num(n) => *n,
            other => panic!("not a number: {other:?}"),
        }
    }

    /// A `/status` listener's backend with this `addr`.
    fn backend(&self, addr: &str) -> &Json {
        self.get("backends")
            .array()
            .iter()
            .find(|b| b.get("addr").str() == addr)
            .unwrap_or_else(|| panic!("no backend {addr} in /status"))
    }
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at {}", b as char, self.i))
        }
    }

    fn literal(&mut self, word: &str, v: Json) -> Result<Json, String> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(format!("bad literal at {}", self.i))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                let mut kv: Vec<(String, Json)> = Vec::new();
                self.items(b'}', |p| {
                    p.ws();
                    let k = p.string()?;
                    p.eat(b':')?;
                    let v = p.value()?;
                    if kv.iter().any(|(existing, _)| *existing == k) {
                        return Err(format!("duplicate key {k:?}"));
                    }
                    kv.push((k, v));
                    Ok(())
                })?;
                Ok(Json::Obj(kv))
            }
            Some(b'[') => {
                let mut items = Vec::new();
                self.items(b']', |p| {
                    items.push(p.value()?);
                    Ok(())
                })?;
                Ok(Json::Arr(items))
            }
            Some(b'"') => self.string().map(Json::Str),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                while matches!(
                    self.s.get(self.i),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.i += 1;
                }
                let text =
                    std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                text.parse()
                    .map(Json::Num)
                    .map_err(|e| format!("bad number {text:?}: {e}"))
            }
            _ => Err(format!("unexpected byte at {}", self.i)),
        }
    }

    /// The elements of an object or array, from its opening byte to `close` (`}` or `]`):
    /// `item` parses each, commas separate them.
    fn items(
        &mut self,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Result<(), String>,
    ) -> Result<(), String> {
        self.i += 1;
        self.ws();
        if self.s.get(self.i) == Some(&close) {
            self.i += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(&b) if b == close => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(format!("expected , or {} at {}", close as char, self.i)),
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if self.s.get(self.i) != Some(&b'"') {
            return Err(format!("expected a string at {}", self.i));
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let b = *self.s.get(self.i).ok_or("unterminated string")?;
            self.i += 1;
            match b {
                b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                b'\\' => {
                    let e = *self.s.get(self.i).ok_or("unterminated escape")?;
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = self.s.get(self.i..self.i + 4).ok_or("short \\u")?;
                            let hex = std::str::from_utf8(hex).map_err(|e| e.to_string())?;
                            let code = u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                            self.i += 4;
                            let c = char::from_u32(code).ok_or("surrogate \\u")?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(format!("bad escape at {}", self.i)),
                    }
                }
                b if b < 0x20 => return Err("raw control character in a string".into()),
                b => out.push(b),
            }
        }
    }
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
        status.keys(),
        ["version", "uptime_s", "workers", "listeners"]
    );
    assert_eq!(status.get("version").str(), env!("CARGO_PKG_VERSION"));
    assert!(status.get("uptime_s").num() >= 0.0);
    assert_eq!(status.get("workers").num(), 2.0);
    let listeners = status.get("listeners").array();
    assert_eq!(listeners.len(), 1);
    let l = &listeners[0];
    assert_eq!(
        l.keys(),
        ["name", "protocol", "bind", "balance", "active", "backends"]
    );
    assert_eq!(l.get("name").str(), "t");
    assert_eq!(l.get("protocol").str(), "tcp");
    assert_eq!(l.get("bind").str(), setup.lb.addr.to_string());
    assert_eq!(l.get("balance").str(), "round_robin");
    assert_eq!(l.get("active").num(), 0.0);
    let backends = l.get("backends").array();
    assert_eq!(backends.len(), 2);
    for (json, backend) in backends.iter().zip(&setup.backends) {
        assert_eq!(
            json.keys(),
            [
                "addr",
                "weight",
                "effective_weight",
                "state",
                "active",
                "total"
            ]
        );
        assert_eq!(json.get("addr").str(), backend.addr.to_string());
        assert_eq!(json.get("weight").num(), 1.0);
        assert_eq!(json.get("effective_weight").num(), 1.0);
        assert_eq!(json.get("state").str(), "up");
        assert_eq!(json.get("active").num(), 0.0);
        assert_eq!(json.get("total").num(), 0.0);
    }

    // An open connection shows in the listener's and its backend's counts.
    let (outcome, stream) = attempt_keep(setup.lb.addr, None);
    let Outcome::Served(id) = outcome else {
        panic!("refused")
    };
    let addr = setup.backend(&id).addr.to_string();
    let mut seen = None;
    let shown = wait_until(Duration::from_secs(5), || {
        let status = setup.status();
        let l = &status.get("listeners").array()[0];
        let b = l.backend(&addr);
        let now = (
            l.get("active").num(),
            b.get("active").num(),
            b.get("total").num(),
        );
        seen = Some(now);
        now == (1.0, 1.0, 1.0)
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
    let reply = Json::parse(&body).expect("JSON reply");
    assert_eq!(reply.get("state").str(), "drain", "{body}");
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
    let (status, head, body) =
        try_http_with(admin, "POST", &drain, &own).expect("same-origin POST");
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
        let (status, head, body) = try_http_with(admin, "POST", &drain, auth).expect("answer");
        assert_eq!(status, 401, "{auth:?} -> {head}{body}");
        assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
        assert_eq!(setup.state_of(b), "up", "{auth:?} changed the state");
    }
    let (status, head, body) = try_http_with(
        admin,
        "POST",
        &drain,
        "Authorization: Bearer Zq8-secret_token\r\n",
    )
    .expect("answer");
    assert_eq!(status, 200, "{head}{body}");
    assert_eq!(setup.state_of(b), "drain");
    // The right token from a foreign page is still refused.
    let (status, _, _) = try_http_with(
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
    let conf = Conf::new("round_robin", &["127.0.0.1:9".parse().expect("addr")])
        .runtime("\n[admin]\nbind = \"0.0.0.0:9090\"");
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
                "{}: admin.token_file: required when admin.bind (0.0.0.0:9090) is not a loopback address",
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
        let reply = Json::parse(&body).expect("JSON reply");
        assert_eq!(reply.get("weight").num(), 4.0, "{body}");
        // The very next connections follow: measured right after the answer, within a second.
        let heavy = share_of_b(lb, N);
        let took = asked.elapsed();
        assert!(near(heavy, 0.8), "{balance}: b's share at 1:4 is {heavy}");
        assert!(took < Duration::from_secs(5), "{balance}: {took:?}");
        let status = setup.status();
        let listener = &status.get("listeners").array()[0];
        assert_eq!(listener.backend(&name).get("weight").num(), 4.0);
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
