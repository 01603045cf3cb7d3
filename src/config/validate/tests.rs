//! Tests of the whole load path (`Config::parse`: raw.rs then validate.rs): every broken
//! config asserts the exact, full, one-line error an operator sees.

use std::net::{Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use crate::config::{
    Algorithm, Config, HealthCheckConfig, Protocol, ProxyProtocol, SpliceMode, Workers,
};

const FILE: &str = "conf/x.toml";

/// The smallest valid file, used as the base of most broken ones.
const MINIMAL: &str = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:8080"
backends = [ { addr = "127.0.0.1:9001" } ]
"#;

fn parse(text: &str) -> Config {
    match Config::parse(text, Path::new(FILE)) {
        Ok(config) => config,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn err(text: &str) -> String {
    match Config::parse(text, Path::new(FILE)) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => {
            let s = e.to_string();
            assert!(!s.contains('\n'), "error is not one line: {s:?}");
            s
        }
    }
}

/// A one-listener file whose listener has `extra` keys and `backends` as given.
fn listener(extra: &str, backends: &str) -> String {
    format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\n{extra}\nbackends = [ {backends} ]\n"
    )
}

fn one_backend(extra: &str) -> String {
    listener(extra, r#"{ addr = "127.0.0.1:9001" }"#)
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

// ---- valid configurations -------------------------------------------------------------------

#[test]
fn minimal_config_gets_every_default() {
    let c = parse(MINIMAL);
    assert_eq!(c.path, Path::new(FILE));
    assert_eq!(c.runtime.workers, Workers::Auto);
    assert!(c.runtime.pin_cpus);
    assert_eq!(c.runtime.cpus, None);
    assert_eq!(c.runtime.splice, SpliceMode::Auto);
    assert_eq!(c.runtime.max_connections, 100_000);
    assert_eq!(c.runtime.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.admin, None);
    assert_eq!(c.listeners.len(), 1);
    let l = &c.listeners[0];
    assert_eq!(l.name, "web");
    assert_eq!(l.protocol, Protocol::Tcp);
    assert_eq!(l.bind, sock("127.0.0.1:8080"));
    assert_eq!(l.balance, Algorithm::RoundRobin);
    assert_eq!(l.connect_timeout, Duration::from_millis(3000));
    assert_eq!(l.idle_timeout, Duration::from_secs(300));
    assert_eq!(l.connect_retries, 2);
    assert_eq!(l.max_connections, 50_000);
    assert_eq!(l.max_conns_per_client, 0);
    assert_eq!(l.conn_rate_per_client, 0);
    assert_eq!(l.proxy_protocol, ProxyProtocol::Off);
    assert!(!l.accept_proxy_protocol);
    assert!(l.trusted_proxies.is_empty());
    assert_eq!(l.client_first_byte_timeout, None);
    assert!(l.allow.is_empty());
    assert!(l.deny.is_empty());
    assert!(!l.access_log);
    assert_eq!(l.health_check, None);
    assert_eq!(l.backends.len(), 1);
    let b = &l.backends[0];
    assert_eq!(b.name, "127.0.0.1:9001");
    assert_eq!(b.addr, sock("127.0.0.1:9001"));
    assert_eq!(b.weight, 1);
    assert_eq!(b.max_connections, 0);
    assert!(!b.backup);
}

#[test]
fn health_check_defaults() {
    let c = parse(&format!("{MINIMAL}[listener.health_check]\n"));
    assert_eq!(
        c.listeners[0].health_check,
        Some(HealthCheckConfig {
            interval: Duration::from_millis(2000),
            timeout: Duration::from_millis(1000),
            rise: 2,
            fall: 3,
            send: None,
            expect: None,
        })
    );
}

/// Issue 10, bug 5: a check timeout longer than the interval is a normal setting (HAProxy
/// accepts `inter 2s` with `timeout check 5s`); it used to be refused.
#[test]
fn timeout_longer_than_the_interval_is_accepted() {
    let c = parse(&format!(
        "{MINIMAL}[listener.health_check]\ninterval_ms = 2000\ntimeout_ms = 5000\n"
    ));
    let hc = c.listeners[0].health_check.as_ref().unwrap();
    assert_eq!(hc.interval, Duration::from_millis(2000));
    assert_eq!(hc.timeout, Duration::from_millis(5000));
}

#[test]
fn default_timeout_shrinks_to_a_short_interval() {
    let c = parse(&format!(
        "{MINIMAL}[listener.health_check]\ninterval_ms = 500\n"
    ));
    let hc = c.listeners[0].health_check.as_ref().unwrap();
    assert_eq!(hc.timeout, Duration::from_millis(500));
}

#[test]
fn health_check_payloads_keep_toml_escapes() {
    let c = parse(&format!(
        "{MINIMAL}[listener.health_check]\nsend = \"PING\\r\\n\"\nexpect = \"PONG\"\n"
    ));
    let hc = c.listeners[0].health_check.as_ref().unwrap();
    assert_eq!(hc.send.as_deref(), Some(&b"PING\r\n"[..]));
    assert_eq!(hc.expect.as_deref(), Some(&b"PONG"[..]));
}

#[test]
fn every_key_set_explicitly() {
    let c = parse(&format!(
        r#"
[runtime]
workers = 4
pin_cpus = true
cpus = [3, 1]
splice = "never"
max_connections = 0
drain_timeout_s = 0

[admin]
bind = "[::1]:9090"

{}"#,
        listener(
            r#"protocol = "tcp"
balance = "weighted_least_conn"
connect_timeout_ms = 1
idle_timeout_s = 604800
connect_retries = 16
max_connections = 0
max_conns_per_client = 10
conn_rate_per_client = 5
proxy_protocol = "v2"
accept_proxy_protocol = true
trusted_proxies = ["10.1.2.3/8", "192.168.0.1"]
client_first_byte_timeout_ms = 250
allow = ["::1"]
deny = ["2001:db8::/32"]
access_log = true"#,
            r#"{ addr = "127.0.0.1:9001", weight = 0, max_connections = 7, backup = true },
               { addr = "127.0.0.1:9002", weight = 1000 }"#,
        )
    ));
    assert_eq!(c.runtime.workers, Workers::Count(4));
    assert_eq!(c.runtime.cpus, Some(vec![3, 1]));
    assert_eq!(c.runtime.splice, SpliceMode::Never);
    assert_eq!(c.runtime.max_connections, 0);
    assert_eq!(c.runtime.drain_timeout, Duration::ZERO);
    assert_eq!(c.admin.unwrap().bind, sock("[::1]:9090"));
    let l = &c.listeners[0];
    assert_eq!(l.balance, Algorithm::WeightedLeastConn);
    assert_eq!(l.connect_timeout, Duration::from_millis(1));
    assert_eq!(l.idle_timeout, Duration::from_secs(604_800));
    assert_eq!(l.connect_retries, 16);
    assert_eq!(l.max_connections, 0);
    assert_eq!(l.max_conns_per_client, 10);
    assert_eq!(l.conn_rate_per_client, 5);
    assert_eq!(l.proxy_protocol, ProxyProtocol::V2);
    assert!(l.accept_proxy_protocol);
    // Host bits are cleared; a bare IP is a single-host network.
    let nets: Vec<String> = l.trusted_proxies.iter().map(|n| n.to_string()).collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.168.0.1/32"]);
    assert_eq!(l.allow[0].to_string(), "::1/128");
    assert_eq!(l.deny[0].to_string(), "2001:db8::/32");
    assert!(l.access_log);
    assert_eq!(
        l.client_first_byte_timeout,
        Some(Duration::from_millis(250))
    );
    assert_eq!(l.backends[0].weight, 0);
    assert_eq!(l.backends[0].max_connections, 7);
    assert!(l.backends[0].backup);
    assert_eq!(l.backends[1].weight, 1000);
}

#[test]
fn every_balance_name_is_accepted() {
    for (name, algorithm) in [
        ("round_robin", Algorithm::RoundRobin),
        ("weighted_round_robin", Algorithm::WeightedRoundRobin),
        ("least_conn", Algorithm::LeastConn),
        ("weighted_least_conn", Algorithm::WeightedLeastConn),
        ("random_two", Algorithm::RandomTwo),
        ("least_latency", Algorithm::LeastLatency),
        ("source_ip_hash", Algorithm::SourceIpHash),
        ("five_tuple_hash", Algorithm::FiveTupleHash),
    ] {
        let c = parse(&one_backend(&format!("balance = \"{name}\"")));
        assert_eq!(c.listeners[0].balance, algorithm, "{name}");
    }
}

#[test]
fn shipped_l4lb_toml_is_valid() {
    let c = match Config::parse(
        include_str!("../../../conf/l4lb.toml"),
        Path::new("conf/l4lb.toml"),
    ) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.listeners.len(), 3);
    let web = &c.listeners[0];
    assert_eq!(web.bind, sock("127.0.0.1:8080"));
    assert_eq!(web.protocol, Protocol::Tcp);
    let addrs: Vec<SocketAddr> = web.backends.iter().map(|b| b.addr).collect();
    assert_eq!(
        addrs,
        [
            sock("127.0.0.1:9001"),
            sock("127.0.0.1:9002"),
            sock("127.0.0.1:9003")
        ]
    );
    assert!(web.health_check.is_some());
    assert_eq!(c.listeners[1].balance, Algorithm::SourceIpHash);
    let tls = &c.listeners[2];
    assert_eq!(tls.routes.len(), 2);
    assert_eq!(tls.routes[0].balance, Algorithm::RoundRobin);
    assert_eq!(tls.routes[1].balance, Algorithm::LeastConn);
    assert_eq!(tls.client_first_byte_timeout, Some(Duration::from_secs(5)));
}

#[test]
fn shipped_demo_toml_is_valid() {
    let c = match Config::parse(
        include_str!("../../../conf/demo.toml"),
        Path::new("conf/demo.toml"),
    ) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.runtime.workers, Workers::Auto);
    assert_eq!(c.admin.unwrap().bind, sock("127.0.0.1:9090"));
    assert_eq!(c.listeners.len(), 1);
    let l = &c.listeners[0];
    assert_eq!(l.name, "demo");
    assert_eq!(l.bind, sock("127.0.0.1:8080"));
    let names: Vec<&str> = l.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
    );
}

#[test]
fn ipv6_listener_and_backends() {
    let c = parse(
        r#"
[[listener]]
name = "v6"
protocol = "udp"
bind = "[::1]:5353"
backends = [ { addr = "[::1]:9001" }, { addr = "[2001:db8::5]:53" } ]
"#,
    );
    let l = &c.listeners[0];
    assert_eq!(l.protocol, Protocol::Udp);
    assert_eq!(l.bind, SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 5353));
    assert_eq!(l.backends[0].addr, sock("[::1]:9001"));
    assert_eq!(l.backends[1].addr, sock("[2001:db8::5]:53"));
}

#[test]
fn same_bind_with_other_protocol_is_fine() {
    let c = parse(
        r#"
[[listener]]
name = "dns-tcp"
bind = "127.0.0.1:5353"
backends = [ { addr = "127.0.0.1:9001" } ]

[[listener]]
name = "dns-udp"
protocol = "udp"
bind = "127.0.0.1:5353"
backends = [ { addr = "127.0.0.1:9001" } ]
"#,
    );
    assert_eq!(c.listeners.len(), 2);
}

#[test]
fn localhost_resolves_at_load() {
    let c = parse(&listener("", r#"{ addr = "localhost:80" }"#));
    let b = &c.listeners[0].backends[0];
    assert_eq!(b.name, "localhost:80", "the name stays as written");
    assert!(b.addr.ip().is_loopback(), "{}", b.addr);
    assert_eq!(b.addr.port(), 80);
}

#[test]
fn weight_zero_backends_are_fine_if_one_can_take_connections() {
    let c = parse(&listener(
        "",
        r#"{ addr = "127.0.0.1:9001", weight = 0 }, { addr = "127.0.0.1:9002", backup = true }"#,
    ));
    assert_eq!(c.listeners[0].backends.len(), 2);
}

// ---- broken configurations: the exact error --------------------------------------------------

#[test]
fn toml_syntax_error_names_line_and_column() {
    assert_eq!(
        err("[runtime]\nworkers = \"auto\"\npin_cpus = tru\n"),
        "conf/x.toml: line 3 column 12: invalid boolean, expected `true`"
    );
}

#[test]
fn duplicate_toml_key_is_a_syntax_error() {
    assert_eq!(
        err("[runtime]\nsplice = \"auto\"\nsplice = \"never\"\n"),
        "conf/x.toml: line 3 column 1: duplicate key"
    );
}

#[test]
fn unknown_listener_key() {
    assert_eq!(
        err(&one_backend("bakends = []")),
        "conf/x.toml: listener[0].bakends: unknown key, expected one of name, protocol, bind, \
         balance, connect_timeout_ms, idle_timeout_s, connect_retries, max_connections, \
         max_conns_per_client, conn_rate_per_client, proxy_protocol, accept_proxy_protocol, \
         trusted_proxies, client_first_byte_timeout_ms, allow, deny, access_log, fin_timeout_s, \
         conn_rate_limit, client_ipv4_prefix, client_ipv6_prefix, source, \
         backend_congestion_control, udp_responses, slow_start_s, backends, health_check, route"
    );
}

#[test]
fn unknown_backend_key() {
    assert_eq!(
        err(&listener(
            "",
            r#"{ addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002", wieght = 2 }"#
        )),
        "conf/x.toml: listener[0].backends[1].wieght: unknown key, expected one of addr, \
         weight, max_connections, backup"
    );
}

#[test]
fn unknown_top_level_table() {
    assert_eq!(
        err(&format!("[runtme]\nworkers = 2\n{MINIMAL}")),
        "conf/x.toml: runtme: unknown key, expected one of runtime, admin, listener"
    );
}

#[test]
fn health_check_before_backends_swallows_them() {
    // TOML puts keys after a table header into that table: the SPEC's ordering rule.
    assert_eq!(
        err(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\n[listener.health_check]\n\
             backends = [ { addr = \"127.0.0.1:9001\" } ]\n"
        ),
        "conf/x.toml: listener[0].health_check.backends: unknown key, expected one of \
         interval_ms, timeout_ms, rise, fall, send, expect"
    );
}

#[test]
fn listener_as_a_single_table() {
    assert_eq!(
        err("[listener]\nname = \"web\"\n"),
        "conf/x.toml: listener: invalid type: table, expected an array"
    );
}

#[test]
fn wrong_value_type_names_the_key() {
    assert_eq!(
        err(&listener("", r#"{ addr = "127.0.0.1:9001", weight = "3" }"#)),
        "conf/x.toml: listener[0].backends[0].weight: invalid type: string \"3\", expected an integer"
    );
    assert_eq!(
        err(&format!("[runtime]\npin_cpus = \"yes\"\n{MINIMAL}")),
        "conf/x.toml: runtime.pin_cpus: invalid type: string \"yes\", expected a boolean"
    );
}

#[test]
fn workers_word_other_than_auto() {
    assert_eq!(
        err(&format!("[runtime]\nworkers = \"all\"\n{MINIMAL}")),
        "conf/x.toml: runtime.workers: unknown value \"all\", expected \"auto\" or an integer \
         between 1 and 1024"
    );
}

#[test]
fn workers_out_of_range() {
    assert_eq!(
        err(&format!("[runtime]\nworkers = 0\n{MINIMAL}")),
        "conf/x.toml: runtime.workers: must be between 1 and 1024, got 0"
    );
    assert_eq!(
        err(&format!("[runtime]\nworkers = 1025\n{MINIMAL}")),
        "conf/x.toml: runtime.workers: must be between 1 and 1024, got 1025"
    );
    assert_eq!(
        err(&format!("[runtime]\nworkers = 1.5\n{MINIMAL}")),
        "conf/x.toml: runtime.workers: invalid type: floating point `1.5`, expected \"auto\" \
         or an integer"
    );
}

#[test]
fn cpus_rules() {
    assert_eq!(
        err(&format!("[runtime]\ncpus = []\n{MINIMAL}")),
        "conf/x.toml: runtime.cpus: must not be empty (omit it to use every CPU of the affinity mask)"
    );
    assert_eq!(
        err(&format!("[runtime]\ncpus = [0, 2, 0]\n{MINIMAL}")),
        "conf/x.toml: runtime.cpus[2]: duplicate CPU 0 (also cpus[0])"
    );
    assert_eq!(
        err(&format!("[runtime]\ncpus = [1, 4096]\n{MINIMAL}")),
        "conf/x.toml: runtime.cpus[1]: must be between 0 and 4095, got 4096"
    );
    assert_eq!(
        err(&format!(
            "[runtime]\npin_cpus = false\ncpus = [1]\n{MINIMAL}"
        )),
        "conf/x.toml: runtime.cpus: has no effect with pin_cpus = false (remove one of them)"
    );
}

#[test]
fn unknown_splice_mode() {
    assert_eq!(
        err(&format!("[runtime]\nsplice = \"sometimes\"\n{MINIMAL}")),
        "conf/x.toml: runtime.splice: unknown value \"sometimes\", expected one of: auto, always, never"
    );
}

#[test]
fn runtime_limits() {
    assert_eq!(
        err(&format!("[runtime]\nmax_connections = -1\n{MINIMAL}")),
        "conf/x.toml: runtime.max_connections: must be at least 0, got -1"
    );
    assert_eq!(
        err(&format!("[runtime]\ndrain_timeout_s = 86401\n{MINIMAL}")),
        "conf/x.toml: runtime.drain_timeout_s: must be between 0 and 86400, got 86401"
    );
}

#[test]
fn admin_bind_rules() {
    assert_eq!(
        err(&format!("[admin]\n{MINIMAL}")),
        "conf/x.toml: admin.bind: required key is missing"
    );
    assert_eq!(
        err(&format!("[admin]\nbind = \"localhost:9090\"\n{MINIMAL}")),
        "conf/x.toml: admin.bind: invalid socket address \"localhost:9090\""
    );
}

#[test]
fn no_listener() {
    assert_eq!(
        err("[runtime]\nworkers = 2\n"),
        "conf/x.toml: listener: at least one [[listener]] is required"
    );
    assert_eq!(
        err("listener = []\n"),
        "conf/x.toml: listener: at least one [[listener]] is required"
    );
}

#[test]
fn listener_name_rules() {
    assert_eq!(
        err("[[listener]]\nbind = \"127.0.0.1:8080\"\nbackends = [ { addr = \"127.0.0.1:1\" } ]\n"),
        "conf/x.toml: listener[0].name: required key is missing"
    );
    assert_eq!(
        err(&MINIMAL.replace("\"web\"", "\"\"")),
        "conf/x.toml: listener[0].name: must not be empty"
    );
    assert_eq!(
        err(&MINIMAL.replace("\"web\"", "\"my web\"")),
        "conf/x.toml: listener[0].name: invalid name \"my web\": use only letters, digits, \
         '_', '.' and '-'"
    );
}

#[test]
fn duplicate_listener_name() {
    let second = MINIMAL.replace("8080", "8081");
    assert_eq!(
        err(&format!("{MINIMAL}{second}")),
        "conf/x.toml: listener[1].name: duplicate listener name \"web\" (also listener[0])"
    );
}

#[test]
fn duplicate_listener_bind_and_protocol() {
    let second = MINIMAL.replace("\"web\"", "\"web2\"");
    assert_eq!(
        err(&format!("{MINIMAL}{second}")),
        "conf/x.toml: listener[1].bind: tcp 127.0.0.1:8080 is already used by listener[0] (\"web\")"
    );
}

#[test]
fn listener_bind_rules() {
    assert_eq!(
        err("[[listener]]\nname = \"web\"\nbackends = [ { addr = \"127.0.0.1:1\" } ]\n"),
        "conf/x.toml: listener[0].bind: required key is missing"
    );
    assert_eq!(
        err(&MINIMAL.replace("127.0.0.1:8080", "::1:8080")),
        "conf/x.toml: listener[0].bind: invalid socket address \"::1:8080\""
    );
    assert_eq!(
        err(&MINIMAL.replace("127.0.0.1:8080", "0.0.0.0:0")),
        "conf/x.toml: listener[0].bind: port 0 is not allowed in \"0.0.0.0:0\""
    );
}

#[test]
fn unknown_protocol() {
    assert_eq!(
        err(&one_backend("protocol = \"sctp\"")),
        "conf/x.toml: listener[0].protocol: unknown value \"sctp\", expected one of: tcp, udp"
    );
}

#[test]
fn unknown_balance_lists_the_valid_ones() {
    assert_eq!(
        err(&one_backend("balance = \"fastest\"")),
        "conf/x.toml: listener[0].balance: unknown value \"fastest\", expected one of: \
         round_robin, weighted_round_robin, least_conn, weighted_least_conn, random_two, \
         least_latency, \
         source_ip_hash, five_tuple_hash"
    );
}

#[test]
fn listener_number_ranges() {
    let cases = [
        (
            "connect_timeout_ms = 0",
            "listener[0].connect_timeout_ms: must be between 1 and 600000, got 0",
        ),
        (
            "idle_timeout_s = 604801",
            "listener[0].idle_timeout_s: must be between 1 and 604800, got 604801",
        ),
        (
            "connect_retries = 17",
            "listener[0].connect_retries: must be between 0 and 16, got 17",
        ),
        (
            "max_connections = -5",
            "listener[0].max_connections: must be at least 0, got -5",
        ),
        (
            "max_conns_per_client = 4294967296",
            "listener[0].max_conns_per_client: must be between 0 and 4294967295, got 4294967296",
        ),
        (
            "conn_rate_per_client = -1",
            "listener[0].conn_rate_per_client: must be between 0 and 4294967295, got -1",
        ),
        (
            "client_first_byte_timeout_ms = 3600001",
            "listener[0].client_first_byte_timeout_ms: must be between 0 and 3600000, got 3600001",
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(
            err(&one_backend(line)),
            format!("{FILE}: {expected}"),
            "{line}"
        );
    }
}

#[test]
fn access_log_is_a_bool_for_both_protocols() {
    for protocol in ["tcp", "udp"] {
        for (text, on) in [("true", true), ("false", false)] {
            let c = parse(&one_backend(&format!(
                "protocol = \"{protocol}\"\naccess_log = {text}"
            )));
            assert_eq!(c.listeners[0].access_log, on, "{protocol} {text}");
        }
    }
    assert_eq!(
        err(&one_backend("access_log = \"on\"")),
        "conf/x.toml: listener[0].access_log: invalid type: string \"on\", expected a boolean"
    );
    assert_eq!(
        err(&one_backend("access_log = 1")),
        "conf/x.toml: listener[0].access_log: invalid type: integer `1`, expected a boolean"
    );
}

#[test]
fn proxy_protocol_rules() {
    assert_eq!(
        err(&one_backend("proxy_protocol = \"v3\"")),
        "conf/x.toml: listener[0].proxy_protocol: unknown value \"v3\", expected one of: off, v1, v2"
    );
    for version in ["v1", "v2"] {
        assert_eq!(
            err(&one_backend(&format!(
                "protocol = \"udp\"\nproxy_protocol = \"{version}\""
            ))),
            "conf/x.toml: listener[0].proxy_protocol: is not implemented for udp listeners; \
             only \"off\" is accepted"
        );
    }
    let c = parse(&one_backend("protocol = \"udp\"\nproxy_protocol = \"off\""));
    assert_eq!(c.listeners[0].proxy_protocol, ProxyProtocol::Off);
    assert_eq!(
        err(&one_backend("protocol = \"udp\"\naccept_proxy_protocol = true")),
        "conf/x.toml: listener[0].accept_proxy_protocol: only a tcp listener can accept a PROXY header"
    );
    assert_eq!(
        err(&one_backend(
            "protocol = \"udp\"\nclient_first_byte_timeout_ms = 100"
        )),
        "conf/x.toml: listener[0].client_first_byte_timeout_ms: only applies to tcp listeners \
         (a UDP session starts with its first datagram)"
    );
}

#[test]
fn invalid_cidrs_name_the_element() {
    assert_eq!(
        err(&one_backend("allow = [\"10.0.0.0/8\", \"10.0.0.0/33\"]")),
        "conf/x.toml: listener[0].allow[1]: invalid CIDR \"10.0.0.0/33\""
    );
    assert_eq!(
        err(&one_backend("deny = [\"example.com\"]")),
        "conf/x.toml: listener[0].deny[0]: invalid CIDR \"example.com\""
    );
    assert_eq!(
        err(&one_backend("trusted_proxies = [\"10.0.0/8\"]")),
        "conf/x.toml: listener[0].trusted_proxies[0]: invalid CIDR \"10.0.0/8\""
    );
}

#[test]
fn backends_missing_or_empty() {
    assert_eq!(
        err("[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\n"),
        "conf/x.toml: listener[0].backends: required key is missing"
    );
    assert_eq!(
        err(&listener("", "")),
        "conf/x.toml: listener[0].backends: must list at least one backend"
    );
}

#[test]
fn too_many_backends() {
    let backends: Vec<String> = (0..4097)
        .map(|i| format!("{{ addr = \"10.{}.{}.1:80\" }}", i / 256, i % 256))
        .collect();
    assert_eq!(
        err(&listener("", &backends.join(", "))),
        "conf/x.toml: listener[0].backends: too many backends: 4097 (at most 4096)"
    );
}

#[test]
fn backend_addr_without_port() {
    assert_eq!(
        err(&listener(
            "",
            r#"{ addr = "10.0.0.2:80" }, { addr = "10.0.0.1" }"#
        )),
        "conf/x.toml: listener[0].backends[1].addr: invalid socket address \"10.0.0.1\""
    );
}

#[test]
fn backend_addr_rules() {
    let cases = [
        (
            r#"{ addr = "10.0.0.1:0" }"#,
            "listener[0].backends[0].addr: port 0 is not allowed in \"10.0.0.1:0\"",
        ),
        (
            r#"{ addr = "10.0.0.300:80" }"#,
            "listener[0].backends[0].addr: invalid socket address \"10.0.0.300:80\"",
        ),
        (
            r#"{ addr = "::1:80" }"#,
            "listener[0].backends[0].addr: invalid socket address \"::1:80\"",
        ),
        (
            r#"{ addr = "10.0.0.1:65536" }"#,
            "listener[0].backends[0].addr: invalid socket address \"10.0.0.1:65536\"",
        ),
        (
            r#"{ addr = "web server:80" }"#,
            "listener[0].backends[0].addr: invalid host name \"web server\" in \"web server:80\"",
        ),
        (
            r#"{ weight = 2 }"#,
            "listener[0].backends[0].addr: required key is missing",
        ),
    ];
    for (backend, expected) in cases {
        assert_eq!(
            err(&listener("", backend)),
            format!("{FILE}: {expected}"),
            "{backend}"
        );
    }
}

#[test]
fn unresolvable_host_names_the_host() {
    // RFC 6761: ".invalid" never resolves. The resolver's own words vary by libc; the prefix
    // (file, key path, host) is the contract.
    let e = err(&listener("", r#"{ addr = "nowhere.invalid:80" }"#));
    assert!(
        e.starts_with(
            "conf/x.toml: listener[0].backends[0].addr: cannot resolve host \"nowhere.invalid\": "
        ),
        "{e}"
    );
}

#[test]
fn backend_weight_out_of_range() {
    assert_eq!(
        err(&listener(
            "",
            r#"{ addr = "127.0.0.1:9001", weight = 1001 }"#
        )),
        "conf/x.toml: listener[0].backends[0].weight: must be between 0 and 1000, got 1001"
    );
    assert_eq!(
        err(&listener("", r#"{ addr = "127.0.0.1:9001", max_connections = -1 }"#)),
        "conf/x.toml: listener[0].backends[0].max_connections: must be between 0 and 4294967295, got -1"
    );
}

#[test]
fn every_weight_zero() {
    assert_eq!(
        err(&listener(
            "",
            r#"{ addr = "127.0.0.1:9001", weight = 0 }, { addr = "127.0.0.1:9002", weight = 0 }"#
        )),
        "conf/x.toml: listener[0].backends: no backend can take connections (every weight is 0)"
    );
}

#[test]
fn duplicate_backend() {
    assert_eq!(
        err(&listener(
            "",
            r#"{ addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }, { addr = "127.0.0.1:9001" }"#
        )),
        "conf/x.toml: listener[0].backends[2].addr: duplicate backend \"127.0.0.1:9001\" (also backends[0])"
    );
    assert_eq!(
        err(&listener(
            "",
            r#"{ addr = "[::1]:9001" }, { addr = "[0:0:0:0:0:0:0:1]:9001" }"#
        )),
        "conf/x.toml: listener[0].backends[1].addr: \"[0:0:0:0:0:0:0:1]:9001\" resolves to \
         [::1]:9001, the same address as backends[0] (\"[::1]:9001\")"
    );
}

#[test]
fn health_check_rules() {
    let cases = [
        (
            "interval_ms = 5",
            "listener[0].health_check.interval_ms: must be between 10 and 3600000, got 5",
        ),
        (
            "timeout_ms = 0",
            "listener[0].health_check.timeout_ms: must be between 1 and 600000, got 0",
        ),
        (
            "timeout_ms = 600001",
            "listener[0].health_check.timeout_ms: must be between 1 and 600000, got 600001",
        ),
        (
            "rise = 0",
            "listener[0].health_check.rise: must be between 1 and 1000, got 0",
        ),
        (
            "fall = 0",
            "listener[0].health_check.fall: must be between 1 and 1000, got 0",
        ),
        (
            "expect = \"\"",
            "listener[0].health_check.expect: must not be empty (omit the key instead)",
        ),
        (
            "send = \"\"",
            "listener[0].health_check.send: must not be empty (omit the key instead)",
        ),
    ];
    for (lines, expected) in cases {
        let text = format!("{MINIMAL}[listener.health_check]\n{lines}\n");
        assert_eq!(err(&text), format!("{FILE}: {expected}"), "{lines}");
    }
    let long = "x".repeat(4097);
    assert_eq!(
        err(&format!("{MINIMAL}[listener.health_check]\nexpect = \"{long}\"\n")),
        "conf/x.toml: listener[0].health_check.expect: is 4097 bytes long, at most 4096 are allowed"
    );
}

#[test]
fn errors_in_a_later_listener_name_its_index() {
    let second = listener("", r#"{ addr = "127.0.0.1:9001", weight = -1 }"#)
        .replace("\"web\"", "\"api\"")
        .replace("8080", "8081");
    assert_eq!(
        err(&format!("{MINIMAL}{second}")),
        "conf/x.toml: listener[1].backends[0].weight: must be between 0 and 1000, got -1"
    );
}

#[test]
fn unreadable_file_has_no_key_path() {
    let e = Config::load(Path::new("/nonexistent/l4lb.toml")).unwrap_err();
    assert_eq!(e.path, "");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/l4lb.toml: cannot read file: "),
        "{e}"
    );
}

#[test]
fn runtime_user_and_control_socket() {
    let c = Config::parse(
        &format!("[runtime]\nuser = \"l4lb\"\ncontrol_socket = \"/run/l4lb/c.sock\"\n{MINIMAL}"),
        Path::new(FILE),
    )
    .expect("valid");
    assert_eq!(c.runtime.user.as_deref(), Some("l4lb"));
    assert_eq!(
        c.runtime.control_socket.as_deref(),
        Some(Path::new("/run/l4lb/c.sock"))
    );
    assert_eq!(
        err(&format!("[runtime]\nuser = \"\"\n{MINIMAL}")),
        "conf/x.toml: runtime.user: invalid user name \"\""
    );
    let long = "x".repeat(108);
    assert_eq!(
        err(&format!(
            "[runtime]\ncontrol_socket = \"{long}\"\n{MINIMAL}"
        )),
        format!(
            "conf/x.toml: runtime.control_socket: must be a path of 1 to 107 bytes, got \"{long}\""
        )
    );
}

/// A file in a fresh directory under the system temp dir; removed with the directory.
struct TokenDir(std::path::PathBuf);

impl TokenDir {
    fn new(tag: &str) -> TokenDir {
        let dir = std::env::temp_dir().join(format!("l4lb-token-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TokenDir(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    }
}

impl Drop for TokenDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn admin_token_file() {
    let dir = TokenDir::new("cfg");
    let admin = |bind: &str, file: &str| {
        format!("[admin]\nbind = \"{bind}\"\ntoken_file = \"{file}\"\n{MINIMAL}")
    };
    // The trailing newline (LF or CRLF) is not part of the token.
    for (name, bytes) in [
        ("lf", &b"tok-1\n"[..]),
        ("crlf", b"tok-1\r\n"),
        ("none", b"tok-1"),
    ] {
        let file = dir.write(name, bytes);
        let c = parse(&admin("127.0.0.1:9090", &file));
        let a = c.admin.unwrap();
        let token = a.token.expect("token");
        assert!(token.matches(b"tok-1"), "{name}");
        assert!(!token.matches(b"tok-1\n"), "{name}");
        assert_eq!(a.token_file.unwrap(), std::path::PathBuf::from(&file));
    }
    // With a token, any bind is allowed.
    let file = dir.write("ok", b"tok-1\n");
    assert!(parse(&admin("0.0.0.0:9090", &file))
        .admin
        .unwrap()
        .token
        .is_some());
    for (bytes, why) in [
        (&b""[..], "holds no token"),
        (b"\n", "holds no token"),
        (
            b"two words\n",
            "must be one line of visible ASCII (no spaces)",
        ),
        (b"a\nb\n", "must be one line of visible ASCII (no spaces)"),
    ] {
        let file = dir.write("bad", bytes);
        let e = err(&admin("127.0.0.1:9090", &file));
        assert!(
            e.starts_with("conf/x.toml: admin.token_file: ") && e.contains(why),
            "{bytes:?}: {e}"
        );
    }
    let missing = dir.0.join("missing").display().to_string();
    let e = err(&admin("127.0.0.1:9090", &missing));
    assert!(
        e.starts_with(&format!(
            "conf/x.toml: admin.token_file: cannot read {missing}: "
        )),
        "{e}"
    );
}

#[test]
fn a_non_loopback_admin_bind_needs_a_token() {
    for bind in [
        "0.0.0.0:9090",
        "10.1.2.3:9090",
        "[::]:9090",
        "[2001:db8::1]:9090",
    ] {
        assert_eq!(
            err(&format!("[admin]\nbind = \"{bind}\"\n{MINIMAL}")),
            format!(
                "conf/x.toml: admin.token_file: required when admin.bind ({bind}) is not a \
                 loopback address"
            )
        );
    }
    for bind in [
        "127.0.0.1:9090",
        "127.9.9.9:9090",
        "[::1]:9090",
        "[::ffff:127.0.0.1]:9090",
    ] {
        let c = parse(&format!("[admin]\nbind = \"{bind}\"\n{MINIMAL}"));
        assert!(c.admin.unwrap().token.is_none());
    }
}

#[test]
fn a_relative_token_file_is_next_to_the_config() {
    let dir = TokenDir::new("rel");
    dir.write("admin.token", b"rel-token\n");
    let conf = dir.0.join("l4lb.toml");
    std::fs::write(
        &conf,
        format!("[admin]\nbind = \"127.0.0.1:9090\"\ntoken_file = \"admin.token\"\n{MINIMAL}"),
    )
    .unwrap();
    let c = Config::load(&conf).unwrap();
    let a = c.admin.unwrap();
    assert_eq!(a.token_file.unwrap(), dir.0.join("admin.token"));
    assert!(a.token.unwrap().matches(b"rel-token"));
}

// ---- SNI routes and slow start ----------------------------------------------------------------

fn routed(own: &str, routes: &str) -> String {
    format!("{}{routes}", listener("", own))
}

const ROUTE_API: &str = r#"
[[listener.route]]
sni = ["API.example.com", "*.Example.org"]
balance = "least_latency"
backends = [ { addr = "127.0.0.1:9101" }, { addr = "127.0.0.1:9102", weight = 2 } ]
"#;

#[test]
fn routes_parse_with_lower_case_names_and_their_own_algorithm() {
    let c = parse(&routed(r#"{ addr = "127.0.0.1:9001" }"#, ROUTE_API));
    let l = &c.listeners[0];
    assert_eq!(l.routes.len(), 1);
    assert_eq!(l.routes[0].sni, ["api.example.com", "*.example.org"]);
    assert_eq!(l.routes[0].balance, Algorithm::LeastLatency);
    assert_eq!(l.routes[0].backends[1].weight, 2);
    // The hello deadline defaults to 5 s on a routed listener.
    assert_eq!(l.client_first_byte_timeout, Some(Duration::from_secs(5)));
    let groups: Vec<usize> = l.all_backends().map(|(g, _)| g).collect();
    assert_eq!(groups, [0, 1, 1]);
    // Without routes: no hello deadline by default.
    assert_eq!(parse(MINIMAL).listeners[0].client_first_byte_timeout, None);
}

#[test]
fn a_routed_listener_may_have_no_backends_of_its_own() {
    let c = parse(&routed("", ROUTE_API));
    assert!(c.listeners[0].backends.is_empty());
    // Without routes an empty list stays an error.
    assert_eq!(
        err(&listener("", "")),
        "conf/x.toml: listener[0].backends: must list at least one backend"
    );
}

#[test]
fn route_errors_name_their_key() {
    let own = r#"{ addr = "127.0.0.1:9001" }"#;
    assert_eq!(
        err(&routed(
            own,
            "[[listener.route]]\nbackends = [ { addr = \"127.0.0.1:9101\" } ]\n"
        )),
        "conf/x.toml: listener[0].route[0].sni: required key is missing"
    );
    assert_eq!(
        err(&routed(
            own,
            "[[listener.route]]\nsni = []\nbackends = [ { addr = \"127.0.0.1:9101\" } ]\n"
        )),
        "conf/x.toml: listener[0].route[0].sni: must list 1..=256 names"
    );
    assert_eq!(
        err(&routed(own, "[[listener.route]]\nsni = [\"a.*.org\"]\nbackends = [ { addr = \"127.0.0.1:9101\" } ]\n")),
        "conf/x.toml: listener[0].route[0].sni[0]: \"a.*.org\": not a host name (labels of letters, \
         digits, '-' and '_' between dots; a wildcard only as one leading \"*.\")"
    );
    assert_eq!(
        err(&routed(own, "[[listener.route]]\nsni = [\"a.org\"]\nbackends = [ { addr = \"127.0.0.1:9001\" } ]\n")),
        "conf/x.toml: listener[0].route[0].backends[0].addr: \"127.0.0.1:9001\" is already a \
         backend of this listener or an earlier route (\"127.0.0.1:9001\"); a backend belongs to one route"
    );
    assert_eq!(
        err(&routed(own, "[[listener.route]]\nsni = [\"a.org\"]\nbalance = \"fast\"\nbackends = [ { addr = \"127.0.0.1:9101\" } ]\n")),
        "conf/x.toml: listener[0].route[0].balance: unknown value \"fast\", expected one of: \
         round_robin, weighted_round_robin, least_conn, weighted_least_conn, random_two, \
         least_latency, source_ip_hash, five_tuple_hash"
    );
    assert_eq!(
        err(&routed(
            own,
            "[[listener.route]]\nsni = [\"a.org\"]\nbackends = []\n"
        )),
        "conf/x.toml: listener[0].route[0].backends: must list at least one backend"
    );
    assert_eq!(
        err(&routed(own, "[[listener.route]]\nsni = [\"a.org\"]\nport = 1\nbackends = []\n")),
        "conf/x.toml: listener[0].route[0].port: unknown key, expected one of sni, balance, backends"
    );
    let udp = format!(
        "[[listener]]\nname = \"d\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:53\"\nbackends = [ {own} ]\n{ROUTE_API}"
    );
    assert_eq!(
        err(&udp),
        "conf/x.toml: listener[0].route: only a tcp listener can route by TLS SNI"
    );
}

#[test]
fn slow_start_is_bounded() {
    assert_eq!(
        parse(&one_backend("slow_start_s = 30")).listeners[0].slow_start,
        Duration::from_secs(30)
    );
    assert_eq!(parse(MINIMAL).listeners[0].slow_start, Duration::ZERO);
    assert!(err(&one_backend("slow_start_s = 3601"))
        .starts_with("conf/x.toml: listener[0].slow_start_s: "));
}

// ---- issue 9: hostile traffic and safe defaults ---------------------------------------------

/// Regression: `accept_proxy_protocol = true` with no `trusted_proxies` trusted every peer, so
/// any client could claim any address.
#[test]
fn accepting_proxy_headers_needs_trusted_proxies() {
    assert_eq!(
        err(&one_backend("accept_proxy_protocol = true")),
        "conf/x.toml: listener[0].trusted_proxies: must list the proxies allowed to send a PROXY \
         header when accept_proxy_protocol = true (write [\"0.0.0.0/0\", \"::/0\"] to trust \
         every peer)"
    );
    assert_eq!(
        err(&one_backend(
            "accept_proxy_protocol = true\ntrusted_proxies = []"
        )),
        err(&one_backend("accept_proxy_protocol = true"))
    );
    let c = parse(&one_backend(
        "accept_proxy_protocol = true\ntrusted_proxies = [\"0.0.0.0/0\", \"::/0\"]",
    ));
    let nets: Vec<String> = c.listeners[0]
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["0.0.0.0/0", "::/0"]);
    // Without accept_proxy_protocol an empty list is fine (and the default).
    assert!(parse(MINIMAL).listeners[0].trusted_proxies.is_empty());
}

/// Regression: an IPv4-mapped IPv6 CIDR silently matched nothing (clients are compared as
/// IPv4); it now stands for the IPv4 network.
#[test]
fn ipv4_mapped_cidrs_become_ipv4_networks() {
    let c = parse(&one_backend(
        "allow = [\"::ffff:192.0.2.0/120\", \"::ffff:10.1.2.3\"]\n\
         deny = [\"::ffff:0:0/96\", \"2001:db8::/32\"]\n\
         accept_proxy_protocol = true\ntrusted_proxies = [\"::ffff:127.0.0.1/128\"]",
    ));
    let l = &c.listeners[0];
    let show = |v: &[ipnet::IpNet]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(show(&l.allow), ["192.0.2.0/24", "10.1.2.3/32"]);
    assert_eq!(show(&l.deny), ["0.0.0.0/0", "2001:db8::/32"]);
    assert_eq!(show(&l.trusted_proxies), ["127.0.0.1/32"]);
}

#[test]
fn hostile_traffic_keys_defaults_and_ranges() {
    let l = &parse(MINIMAL).listeners[0];
    assert_eq!(l.fin_timeout, Duration::from_secs(30));
    assert_eq!(l.conn_rate_limit, 0);
    assert_eq!((l.client_ipv4_prefix, l.client_ipv6_prefix), (32, 64));
    assert!(l.source.is_empty());
    assert_eq!(l.udp_responses, 0);

    let c = parse(&one_backend(
        "protocol = \"udp\"\nfin_timeout_s = 5\nconn_rate_limit = 1000\nclient_ipv4_prefix = 24\n\
         client_ipv6_prefix = 48\nsource = [\"127.0.0.2\", \"::ffff:127.0.0.3\", \"::1\"]\n\
         udp_responses = 1",
    ));
    let l = &c.listeners[0];
    assert_eq!(l.fin_timeout, Duration::from_secs(5));
    assert_eq!(l.conn_rate_limit, 1000);
    assert_eq!((l.client_ipv4_prefix, l.client_ipv6_prefix), (24, 48));
    let sources: Vec<String> = l.source.iter().map(|s| s.to_string()).collect();
    assert_eq!(sources, ["127.0.0.2", "127.0.0.3", "::1"]);
    assert_eq!(l.udp_responses, 1);

    assert_eq!(
        err(&one_backend("client_ipv4_prefix = 33")),
        "conf/x.toml: listener[0].client_ipv4_prefix: must be between 0 and 32, got 33"
    );
    assert_eq!(
        err(&one_backend("client_ipv6_prefix = 129")),
        "conf/x.toml: listener[0].client_ipv6_prefix: must be between 0 and 128, got 129"
    );
    assert_eq!(
        err(&one_backend("fin_timeout_s = 0")),
        "conf/x.toml: listener[0].fin_timeout_s: must be between 1 and 604800, got 0"
    );
    assert_eq!(
        err(&one_backend("conn_rate_limit = -1")),
        "conf/x.toml: listener[0].conn_rate_limit: must be between 0 and 4294967295, got -1"
    );
    assert_eq!(
        err(&one_backend("udp_responses = 1")),
        "conf/x.toml: listener[0].udp_responses: only applies to udp listeners"
    );
    assert_eq!(
        err(&one_backend("source = [\"127.0.0.1:80\"]")),
        "conf/x.toml: listener[0].source[0]: invalid IP address \"127.0.0.1:80\" (a source is \
         an address, without a port)"
    );
    assert_eq!(
        err(&one_backend(
            "source = [\"127.0.0.2\", \"::ffff:127.0.0.2\"]"
        )),
        "conf/x.toml: listener[0].source[1]: duplicate address 127.0.0.2 (also \
         listener[0].source[0])"
    );
    assert_eq!(
        err(&one_backend("source = [\"0.0.0.0\"]")),
        "conf/x.toml: listener[0].source[0]: 0.0.0.0 cannot be the source of a connection"
    );
}

/// UDP sessions may fill the global cap only up to what leaves the TCP listeners their
/// reserve (their own caps, at most half the global cap).
#[test]
fn udp_share_of_the_global_cap() {
    let udp_global_cap = |c: &Config| c.udp_global_cap();
    let two = |global: &str, tcp_max: &str| {
        parse(&format!(
            "[runtime]\nmax_connections = {global}\n{}\n{}",
            listener(
                &format!("max_connections = {tcp_max}"),
                r#"{ addr = "127.0.0.1:9001" }"#
            ),
            listener(
                "name = \"dns\"\nprotocol = \"udp\"",
                r#"{ addr = "127.0.0.1:53" }"#
            )
            .replacen("name = \"web\"\n", "", 1)
        ))
    };
    assert_eq!(udp_global_cap(&two("100000", "50000")), 50_000);
    assert_eq!(udp_global_cap(&two("100000", "1000")), 99_000);
    assert_eq!(udp_global_cap(&two("10", "0")), 5);
    assert_eq!(udp_global_cap(&two("0", "10")), 0, "no global cap");
    assert_eq!(udp_global_cap(&two("1", "10")), 1);
    // Without a TCP listener UDP may use it all.
    let udp_only = parse(&format!(
        "[runtime]\nmax_connections = 10\n{}",
        one_backend("protocol = \"udp\"")
    ));
    assert_eq!(udp_global_cap(&udp_only), 10);
}

#[test]
fn backend_congestion_control_is_checked_against_the_kernel() {
    assert_eq!(parse(MINIMAL).listeners[0].backend_congestion_control, None);
    // reno is built into every kernel and always allowed, so it passes even for `user`.
    let c = parse(&format!(
        "[runtime]\nuser = \"nobody\"\n{}",
        one_backend("backend_congestion_control = \"reno\"")
    ));
    assert_eq!(
        c.listeners[0].backend_congestion_control.as_deref(),
        Some("reno")
    );

    let missing = err(&one_backend("backend_congestion_control = \"nosuchcc\""));
    assert!(
        missing.starts_with(
            "conf/x.toml: listener[0].backend_congestion_control: \"nosuchcc\" is not available \
             in this kernel (net.ipv4.tcp_available_congestion_control: "
        ) && missing.contains("reno"),
        "{missing}"
    );
    assert_eq!(
        err(&one_backend("backend_congestion_control = \"cubic; rm\"")),
        "conf/x.toml: listener[0].backend_congestion_control: invalid congestion control name \
         \"cubic; rm\" (e.g. \"cubic\", \"bbr\", \"reno\")"
    );
    assert_eq!(
        err(&one_backend("backend_congestion_control = \"\"")),
        "conf/x.toml: listener[0].backend_congestion_control: invalid congestion control name \
         \"\" (e.g. \"cubic\", \"bbr\", \"reno\")"
    );
    assert_eq!(
        err(&one_backend(
            "protocol = \"udp\"\nbackend_congestion_control = \"reno\""
        )),
        "conf/x.toml: listener[0].backend_congestion_control: only applies to tcp listeners"
    );
}

/// With `runtime.user`, an algorithm this root process could set but the dropped user could
/// not is refused, naming the listener; one in the allowed list passes. (The list is passed
/// in: a test must not narrow the host's sysctl.)
#[test]
fn backend_congestion_control_must_stay_allowed_after_the_drop() {
    let config = parse(&format!(
        "{MINIMAL}\n{}",
        r#"
[[listener]]
name = "b"
bind = "127.0.0.1:8081"
backend_congestion_control = "reno"
backends = [ { addr = "127.0.0.1:9002" } ]
"#
    ));
    let cx = super::Cx {
        file: FILE.to_string(),
    };
    assert!(super::allowed_after_drop(&cx, &config.listeners, "cubic reno\n").is_ok());
    assert_eq!(
        super::allowed_after_drop(&cx, &config.listeners, "cubic bbr\n")
            .unwrap_err()
            .to_string(),
        "conf/x.toml: listener[1].backend_congestion_control: \"reno\" is not in \
         net.ipv4.tcp_allowed_congestion_control (cubic bbr), the only algorithms l4lb may set \
         once runtime.user drops root"
    );
}
