//! Entry points shared by the cargo-fuzz targets in `fuzz/` (nightly, libFuzzer) and by
//! `tests/fuzz_regressions.rs` (stable, part of `make test`), which replays every committed
//! corpus and crash input through the very same functions.
//!
//! Control path only (never called by the balancer itself). Each function takes arbitrary
//! bytes, drives one input-facing part of l4lb with them, and checks that part's documented
//! invariants with `assert!`: a panic here is a finding, whether it comes from the code under
//! test or from a broken invariant. Nothing here touches the network or a clock.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::Config;
use crate::proxy_protocol::{self, ParseError, MAX_HEADER};
use crate::state::SharedState;
use crate::worker::admission::{Admission, BackendLease};
use crate::worker::udp::session::{Session, SessionTable};

/// The PROXY v1/v2 parser on `data` (a client's first bytes). Checks: a header never claims
/// more bytes than it was given, the parser has decided once `MAX_HEADER` bytes are there,
/// and its answer does not change when more bytes follow a complete header.
pub fn proxy_protocol(data: &[u8]) {
    match proxy_protocol::parse(data) {
        Ok(parsed) => {
            assert!(parsed.consumed > 0 && parsed.consumed <= data.len());
            assert!(parsed.consumed <= MAX_HEADER);
            // The bytes after the header are the client's: parsing the header alone agrees.
            assert_eq!(proxy_protocol::parse(&data[..parsed.consumed]), Ok(parsed));
        }
        Err(ParseError::Incomplete) => assert!(data.len() < MAX_HEADER),
        Err(ParseError::Invalid) => {}
    }
}

/// A config with one TCP and one UDP listener, two backends each: the state the admin
/// router and the UDP session core run against.
const FUZZ_CONFIG: &str = r#"
[runtime]
workers = 1
max_connections = 16

[[listener]]
name = "web"
protocol = "tcp"
bind = "127.0.0.1:18080"
backends = [{ addr = "127.0.0.1:18081" }, { addr = "127.0.0.1:18082", weight = 2 }]

[[listener]]
name = "dns"
protocol = "udp"
bind = "127.0.0.1:18053"
idle_timeout_s = 2
max_connections = 8
max_conns_per_client = 3
conn_rate_per_client = 20
conn_rate_limit = 50
client_ipv4_prefix = 31
udp_responses = 3
backends = [{ addr = "127.0.0.1:18054" }, { addr = "127.0.0.1:18055" }]
"#;

/// A fresh state per input (inputs must not see each other's counts), from a config parsed
/// once per process: parsing dominated the cost of an input.
fn fuzz_state() -> SharedState {
    static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(
        || match Config::parse(FUZZ_CONFIG, Path::new("fuzz.toml")) {
            Ok(config) => config,
            Err(e) => panic!("the fuzz config must be valid: {e}"),
        },
    );
    SharedState::new(config, 1)
}

/// The admin API on `data` as one connection's request bytes: parse, guard, route (including
/// state-changing POSTs). An odd length means a bearer token is configured (`fuzz-token`). Checks: every complete request gets an HTTP/1.1 response with a status
/// line, and an incomplete one is never larger than the request limit; with a token, no POST
/// without it changes state (the response is never a 200 to a POST that lacks it).
pub fn admin_http(data: &[u8]) {
    let shared = fuzz_state();
    let token = crate::config::AdminToken::new(b"fuzz-token");
    let with_token = data.len() % 2 == 1;
    let bind = SocketAddr::from(([127, 0, 0, 1], 9090));
    let answer = crate::admin::respond_to_bytes(&shared, bind, with_token.then_some(&token), data);
    if with_token
        && data.starts_with(b"POST ")
        && memchr::memmem::find(data, b"Bearer fuzz-token").is_none()
    {
        if let Some(out) = &answer {
            assert!(
                !out.starts_with(b"HTTP/1.1 200"),
                "a POST without the token succeeded"
            );
        }
    }
    match answer {
        Some(out) => {
            assert!(out.starts_with(b"HTTP/1.1 "), "no status line");
            assert!(
                memchr::memmem::find(&out, b"\r\n\r\n").is_some(),
                "no end of head"
            );
        }
        None => assert!(data.len() <= 64 * 1024, "incomplete past the request limit"),
    }
}

/// The config loader on `data` as a file's bytes: a `Config` or an error, never a panic, and
/// an error is one line naming the file (what `l4lb --check` prints before exit 2).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => assert!(!config.listeners.is_empty()),
        Err(e) => {
            let line = e.to_string();
            assert!(line.starts_with("fuzz.toml: "), "{line}");
            assert!(
                !line.contains('\n'),
                "error on more than one line: {line:?}"
            );
        }
    }
}

/// The UDP session core on `data` as a sequence of events (client datagrams, backend replies,
/// clock steps, timer expiry, removals), each a few bytes, under every admission rule
/// (listener rate, caps, per-client rate and cap by /31, `udp_responses`). After every event the counts the
/// sessions hold must match the table exactly, and once every session is gone all of them
/// must be back at zero.
pub fn udp_session(data: &[u8]) {
    let shared = fuzz_state();
    let Some(state) = shared.listeners.load().get(1).cloned() else {
        panic!("the fuzz config has a UDP listener");
    };
    let backends = state.pool.load().backends().to_vec();
    let idle_ms = state.config.idle_timeout.as_millis() as u64;
    let mut now: u64 = 0;
    let mut table: SessionTable<()> = SessionTable::new(now);
    let mut events = data.chunks_exact(3);
    for event in events.by_ref().take(4096) {
        let (op, a, b) = (event[0] % 6, event[1], event[2]);
        // Four client IPs x 64 ports: enough to hit every cap and per-client count.
        let client = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, a % 4)),
            1024 + u16::from(b % 64),
        );
        match op {
            0 => match table.find(1, client) {
                Some(key) => {
                    if let Some(s) = table.get_mut(key) {
                        s.to_backend(usize::from(b), now);
                    }
                }
                None => {
                    if let Ok(adm) = Admission::admit(&state, &shared, client.ip(), now) {
                        let backend =
                            BackendLease::take(backends[usize::from(a) % backends.len()].clone());
                        let s = Session::new(1, client, None, (), backend, adm, now);
                        table.insert(s, idle_ms);
                    }
                }
            },
            1 => {
                if let Some(key) = table.find(1, client) {
                    let mut done = false;
                    if let Some(s) = table.get_mut(key) {
                        s.to_client(usize::from(a), now);
                        done = s.answered_enough(state.config.udp_responses);
                    }
                    // udp_responses: the shell closes the session after this many replies.
                    if done {
                        if let Some(s) = table.remove(key) {
                            s.release();
                        }
                    }
                }
            }
            2 => now += u64::from(u16::from_le_bytes([a, b])),
            3 => table.expire(
                now,
                |_| idle_ms,
                |_, s| {
                    s.release();
                },
            ),
            4 => {
                if let Some(key) = table.find(1, client) {
                    if let Some(s) = table.remove(key) {
                        s.release();
                    }
                }
            }
            _ => now += 1,
        }
        check_counts(&table, &state, &shared, &backends);
    }
    for key in table.keys() {
        if let Some(s) = table.remove(key) {
            s.release();
        }
    }
    check_counts(&table, &state, &shared, &backends);
    assert_eq!(shared.active.load(Ordering::Relaxed), 0);
    if let Some(clients) = &state.clients {
        for a in 0..4 {
            assert_eq!(clients.count(IpAddr::V4(Ipv4Addr::new(192, 0, 2, a))), 0);
        }
    } else {
        panic!("the fuzz config caps clients");
    }
}

fn check_counts(
    table: &SessionTable<()>,
    state: &crate::state::ListenerState,
    shared: &SharedState,
    backends: &[Arc<crate::backend::Backend>],
) {
    let n = table.len() as u64;
    assert_eq!(state.udp_sessions.load(Ordering::Relaxed), n);
    assert_eq!(shared.active.load(Ordering::Relaxed), n);
    let on_backends: u64 = backends.iter().map(|b| u64::from(b.active())).sum();
    assert_eq!(on_backends, n);
    assert!(n <= state.config.max_connections);
    // Per-client counts by /31: 192.0.2.0 and .1 are one client, .2 and .3 another.
    if let Some(clients) = &state.clients {
        for pair in [0u8, 2] {
            let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, pair));
            let held = table
                .keys()
                .into_iter()
                .filter_map(|k| table.get(k))
                .filter(
                    |s| matches!(s.client.ip(), IpAddr::V4(v4) if v4.octets()[3] / 2 == pair / 2),
                )
                .count() as u32;
            assert_eq!(clients.count(ip), held, "client {ip}/31");
            assert!(held <= state.config.max_conns_per_client);
        }
    }
}
