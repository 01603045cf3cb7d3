//! The typed, validated, immutable configuration.
//!
//! Control path only. `raw.rs` mirrors the TOML file with serde (`deny_unknown_fields`),
//! `validate.rs` turns it into these types, naming the key path of every problem. Invariants
//! once a `Config` exists: every listener has a unique name and at least one backend (its own,
//! or its routes'), every
//! address is resolved, every number is within its documented range.

mod algorithm;
mod raw;
mod validate;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use algorithm::Algorithm;

/// The largest backend weight (config and admin API). Weights are relative; 1000 gives 0.1%
/// resolution, and keeps weighted round robin's per-pick arithmetic far from overflow.
pub const MAX_WEIGHT: u32 = 1000;

/// A configuration problem: `file: key.path: what is wrong`, on one line. When `path` is
/// empty (unreadable file, TOML syntax error) the key path and its colon are left out:
/// `file: line 3 column 5: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{message}", key_prefix(.path))]
pub struct ConfigError {
    pub file: String,
    /// Key path such as `listener[0].backends[1].addr`; empty for file-level problems.
    pub path: String,
    pub message: String,
}

/// `"key.path: "`, or nothing for a file-level error.
fn key_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One worker per CPU in the process's affinity mask.
    Auto,
    Count(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceMode {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    Off,
    V1,
    V2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was loaded from (for reload and error messages).
    pub path: PathBuf,
    pub runtime: RuntimeConfig,
    pub admin: Option<AdminConfig>,
    pub listeners: Vec<ListenerConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    pub workers: Workers,
    pub pin_cpus: bool,
    /// Explicit CPU ids; worker i is pinned to `cpus[i % cpus.len()]`.
    pub cpus: Option<Vec<usize>>,
    pub splice: SpliceMode,
    /// Across all listeners; 0 = unlimited.
    pub max_connections: u64,
    pub drain_timeout: Duration,
    /// When started as root: the user (and its primary group) to run as once bound.
    pub user: Option<String>,
    /// Unix socket on which `l4lb --takeover` asks for the listening sockets.
    pub control_socket: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// `token_file` as written (relative paths are relative to the config file's directory).
    pub token_file: Option<PathBuf>,
    /// The token read from `token_file` at load, its trailing newline removed. POSTs must
    /// carry it as `Authorization: Bearer <token>`.
    pub token: Option<AdminToken>,
}

/// The admin API's bearer token. Its `Debug` never shows it, so a logged `Config` cannot
/// leak it; compare it only with [`AdminToken::matches`] (constant time).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Box<[u8]>);

impl AdminToken {
    pub fn new(bytes: &[u8]) -> AdminToken {
        AdminToken(bytes.into())
    }

    /// Whether `presented` is the token, in time that depends only on `presented`'s length:
    /// every byte is compared (against the token repeated), and the verdict is taken once
    /// at the end, so a caller timing the answers learns nothing about which bytes matched.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let token = &self.0;
        let mut diff = u8::from(presented.len() != token.len());
        if token.is_empty() {
            return false;
        }
        for (i, &b) in presented.iter().enumerate() {
            diff |= b ^ token[i % token.len()];
        }
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub protocol: Protocol,
    pub bind: SocketAddr,
    pub balance: Algorithm,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_retries: u32,
    /// 0 = unlimited.
    pub max_connections: u64,
    /// 0 = unlimited.
    pub max_conns_per_client: u32,
    /// New connections per second per client IP; 0 = off.
    pub conn_rate_per_client: u32,
    pub proxy_protocol: ProxyProtocol,
    pub accept_proxy_protocol: bool,
    pub trusted_proxies: Vec<IpNet>,
    /// `None` = off.
    pub client_first_byte_timeout: Option<Duration>,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    /// One `l4lb::access` log line per connection (UDP: session) when it ends, and per
    /// refused connection. Read when the connection ends, so a reload applies at once.
    pub access_log: bool,
    /// Once either side of a TCP connection has closed its direction: close after this long
    /// without a byte moving.
    pub fin_timeout: Duration,
    /// New connections (UDP: sessions) per second for the whole listener; 0 = off.
    pub conn_rate_limit: u32,
    /// Per-client caps and rates count clients by these prefixes (0..=32, 0..=128).
    pub client_ipv4_prefix: u8,
    pub client_ipv6_prefix: u8,
    /// Local addresses for backend connections and sessions, taken round robin (v4-mapped
    /// addresses normalised to IPv4); empty = the kernel's choice.
    pub source: Vec<IpAddr>,
    /// TCP: the congestion control algorithm of backend connections (TCP_CONGESTION, set
    /// before connect), checked against the kernel at load; `None` = the host's default
    /// (net.ipv4.tcp_congestion_control).
    pub backend_congestion_control: Option<String>,
    /// UDP: a session ends once the backend sent this many datagrams back; 0 = off.
    pub udp_responses: u32,
    /// A backend that comes up ramps from a small floor to its weight over this long; zero =
    /// off. Honoured by every algorithm but round robin and the hashes.
    pub slow_start: Duration,
    /// The listener's own backends: every connection of a listener without routes, and
    /// those that match no route. Empty only when `routes` is not.
    pub backends: Vec<BackendConfig>,
    pub health_check: Option<HealthCheckConfig>,
    /// TLS SNI routes (tcp only), first match wins.
    pub routes: Vec<RouteConfig>,
}

/// One `[[listener.route]]`: connections whose ClientHello names one of `sni` go to its
/// backends. Backend names are unique across a listener and all its routes.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Lower-case names, each exact or `*.` followed by a name (one label matched).
    pub sni: Vec<String>,
    pub balance: Algorithm,
    pub backends: Vec<BackendConfig>,
}

impl ListenerConfig {
    /// Every backend of the listener with its group: 0 for the listener's own, `r + 1` for
    /// route `r`. The order of `balancer::Pool::backends`.
    pub fn all_backends(&self) -> impl Iterator<Item = (usize, &BackendConfig)> {
        self.backends.iter().map(|b| (0, b)).chain(
            self.routes
                .iter()
                .enumerate()
                .flat_map(|(r, route)| route.backends.iter().map(move |b| (r + 1, b))),
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// As written in the file (`host:port` or `ip:port`); the metrics label.
    pub name: String,
    /// Resolved at load time.
    pub addr: SocketAddr,
    /// 0..=1000.
    pub weight: u32,
    /// 0 = unlimited.
    pub max_connections: u32,
    pub backup: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub send: Option<Vec<u8>>,
    pub expect: Option<Vec<u8>>,
}

impl Config {
    /// How much of the global cap (`runtime.max_connections`) UDP sessions may hold, so that a
    /// flood of spoofed sources on a UDP listener can never take the last slot from a TCP
    /// listener: the global cap minus a TCP reserve, which is what the TCP listeners' own caps
    /// add up to (0 = unlimited counts as the whole global cap), but at most half the global cap.
    /// TCP connections may still use the whole global cap while UDP is quiet. 0 = unlimited
    /// (no global cap); never 0 otherwise.
    pub fn udp_global_cap(&self) -> u64 {
        let global = self.runtime.max_connections;
        if global == 0 {
            return 0;
        }
        let tcp_wants = self
            .listeners
            .iter()
            .filter(|l| l.protocol == Protocol::Tcp)
            .map(|l| match l.max_connections {
                0 => global,
                n => n.min(global),
            })
            .fold(0u64, u64::saturating_add);
        let reserve = tcp_wants.min(global / 2);
        (global - reserve).max(1)
    }

    /// Read, parse and validate `path`. Hostnames in backend addresses are resolved here.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            path: String::new(),
            message: format!("cannot read file: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate TOML text; `path` is used for error messages and kept in the result.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw = raw::parse(text, path)?;
        validate::validate(raw, path)
    }
}
