//! Turns the raw serde mirror into the typed `Config`, checking every value.
//!
//! Control path only (load, `--check` and reload). Owns every rule of the configuration:
//! defaults, ranges, choices, address syntax, cross-key rules (unique listener names and bind
//! addresses, unique backends) and hostname resolution, which happens here
//! and only here, with the blocking system resolver.
//!
//! Invariants of the result (relied on by the runtime, the balancer and the admin API): at least
//! one listener; listener names unique and made of `[A-Za-z0-9_.-]`; no two listeners share a
//! bind address and protocol; each listener has 1..=`MAX_BACKENDS` backends with distinct names
//! and distinct resolved addresses, at least one of them with a weight above 0 (counting its
//! routes' backends, which are distinct from its own and each other's; its own list is empty
//! only when it has routes, and each route has at least one backend with a weight above 0);
//! SNI patterns are lower case; every number is within the range documented in
//! docs/configuration.md.
//!
//! Every error is `FILE: KEY.PATH: MESSAGE` on one line; the first problem found is reported,
//! in file order.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use super::raw::RawWorkers;
use super::raw::{
    RawAdmin, RawBackend, RawConfig, RawHealthCheck, RawListener, RawRoute, RawRuntime,
};
use super::{
    AdminConfig, AdminToken, Algorithm, BackendConfig, Config, ConfigError, HealthCheckConfig,
    ListenerConfig, Protocol, ProxyProtocol, RouteConfig, RuntimeConfig, SpliceMode, Workers,
};

/// Most workers one process may run: far above any single host's core count, low enough that a
/// typo (`workers = 10000`) fails at load instead of exhausting threads and memory.
const MAX_WORKERS: i64 = 1024;
/// CPU ids are below this; it matches the kernel's default `CONFIG_NR_CPUS` ceiling (4096).
const MAX_CPU_ID: i64 = 4095;
/// The longest path a unix socket address holds (sun_path is 108 bytes with its NUL).
const MAX_UNIX_PATH: usize = 107;
/// One day: a drain longer than that is a stuck shutdown, not a graceful one.
const MAX_DRAIN_TIMEOUT_S: i64 = 86_400;
/// Ten minutes: a TCP connect that takes longer is not going to succeed.
const MAX_CONNECT_TIMEOUT_MS: i64 = 600_000;
/// One week of silence on a connection.
const MAX_IDLE_TIMEOUT_S: i64 = 604_800;
/// Retries beyond this only add latency to a request that is already failing.
const MAX_CONNECT_RETRIES: i64 = 16;
/// One hour; the first-byte timeout is a slow-loris guard, not a session timeout.
const MAX_FIRST_BYTE_TIMEOUT_MS: i64 = 3_600_000;
/// Backends per listener: bounds the Maglev build (each backend gets rows of a 65537-slot
/// table) and the per-backend atomics, which are allocated up front.
pub(crate) const MAX_BACKENDS: usize = 4096;
/// See [`super::MAX_WEIGHT`].
const MAX_WEIGHT: i64 = super::MAX_WEIGHT as i64;
/// Health-check interval bounds: 10 ms is the finest a single checker thread can keep for a
/// few thousand backends; one hour is the coarsest that still deserves the name.
const MIN_INTERVAL_MS: i64 = 10;
const MAX_INTERVAL_MS: i64 = 3_600_000;
/// A check that takes longer than ten minutes to answer is a dead backend, not a slow one.
const MAX_CHECK_TIMEOUT_MS: i64 = 600_000;
/// Consecutive results needed to flip a backend's state.
const MAX_RISE_FALL: i64 = 1000;
/// The checker reads at most this many bytes of a reply looking for `expect`, and sends at
/// most this many; both are fixed buffers.
const MAX_CHECK_PAYLOAD: usize = 4096;
/// Source addresses per listener: each adds a full local port range; 64 is far beyond what a
/// host has addresses for, and keeps the list a few cache lines.
const MAX_SOURCES: usize = 64;
/// Routes per listener: each is matched in order for every routed connection.
const MAX_ROUTES: usize = 256;
/// Names per route.
const MAX_SNI_NAMES: usize = 256;
/// The hello must come in this long when `client_first_byte_timeout_ms` is 0 and the listener
/// has routes (SPEC.md): routing cannot start before it.
const DEFAULT_HELLO_TIMEOUT_MS: u64 = 5000;
/// One hour: a ramp longer than that is a maintenance plan, not a warm-up.
const MAX_SLOW_START_S: i64 = 3600;
/// Listener names appear in metric labels and admin URLs; keep them short.
const MAX_NAME_LEN: usize = 64;

/// Default values, as documented in SPEC.md and docs/configuration.md.
mod defaults {
    pub const PIN_CPUS: bool = true;
    pub const RUNTIME_MAX_CONNECTIONS: i64 = 100_000;
    pub const DRAIN_TIMEOUT_S: i64 = 30;
    pub const CONNECT_TIMEOUT_MS: i64 = 3000;
    pub const IDLE_TIMEOUT_S: i64 = 300;
    pub const CONNECT_RETRIES: i64 = 2;
    pub const LISTENER_MAX_CONNECTIONS: i64 = 50_000;
    pub const WEIGHT: i64 = 1;
    pub const INTERVAL_MS: i64 = 2000;
    pub const TIMEOUT_MS: i64 = 1000;
    pub const RISE: i64 = 2;
    pub const FALL: i64 = 3;
    pub const FIN_TIMEOUT_S: i64 = 30;
    pub const CLIENT_IPV4_PREFIX: i64 = 32;
    pub const CLIENT_IPV6_PREFIX: i64 = 64;
}

const SPLICE_MODES: &[(&str, SpliceMode)] = &[
    ("auto", SpliceMode::Auto),
    ("always", SpliceMode::Always),
    ("never", SpliceMode::Never),
];

const PROTOCOLS: &[(&str, Protocol)] = &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];

const PROXY_PROTOCOLS: &[(&str, ProxyProtocol)] = &[
    ("off", ProxyProtocol::Off),
    ("v1", ProxyProtocol::V1),
    ("v2", ProxyProtocol::V2),
];

/// Validate `raw` (read from `path`) and build the typed configuration.
pub(crate) fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    let cx = Cx {
        file: path.display().to_string(),
    };
    let runtime = runtime(&cx, raw.runtime.unwrap_or_default())?;
    let admin = raw.admin.map(|a| admin(&cx, a, path)).transpose()?;

    let raw_listeners = raw.listener.unwrap_or_default();
    if raw_listeners.is_empty() {
        return Err(cx.err("listener", "at least one [[listener]] is required"));
    }
    let mut listeners: Vec<ListenerConfig> = Vec::with_capacity(raw_listeners.len());
    for (i, raw_listener) in raw_listeners.into_iter().enumerate() {
        let key = format!("listener[{i}]");
        let l = listener(&cx, &key, raw_listener)?;
        if let Some(j) = listeners.iter().position(|o| o.name == l.name) {
            return Err(cx.err(
                format!("{key}.name"),
                format!("duplicate listener name {:?} (also listener[{j}])", l.name),
            ));
        }
        if let Some(j) = listeners
            .iter()
            .position(|o| o.bind == l.bind && o.protocol == l.protocol)
        {
            return Err(cx.err(
                format!("{key}.bind"),
                format!(
                    "{} {} is already used by listener[{j}] ({:?})",
                    l.protocol.as_str(),
                    l.bind,
                    listeners[j].name
                ),
            ));
        }
        listeners.push(l);
    }
    if runtime.user.is_some() {
        // Unreadable (no /proc): nothing to check against; the probe already ran.
        if let Ok(allowed) =
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
        {
            allowed_after_drop(&cx, &listeners, &allowed)?;
        }
    }

    Ok(Config {
        path: path.to_path_buf(),
        runtime,
        admin,
        listeners,
    })
}

/// The file name that prefixes every error.
struct Cx {
    file: String,
}

impl Cx {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            path: key.into(),
            message: message.into(),
        }
    }

    /// An integer with a default, checked against `min..=max`.
    fn int(
        &self,
        key: &str,
        value: Option<i64>,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<i64, ConfigError> {
        let v = value.unwrap_or(default);
        if (min..=max).contains(&v) {
            Ok(v)
        } else if max == i64::MAX {
            Err(self.err(key, format!("must be at least {min}, got {v}")))
        } else {
            Err(self.err(key, format!("must be between {min} and {max}, got {v}")))
        }
    }

    /// A non-negative integer that fits a `u32`.
    fn u32(&self, key: &str, value: Option<i64>, default: i64) -> Result<u32, ConfigError> {
        let v = self.int(key, value, default, 0, i64::from(u32::MAX))?;
        u32::try_from(v).map_err(|_| self.err(key, format!("out of range: {v}")))
    }

    /// A non-negative integer as a `u64`.
    fn u64(&self, key: &str, value: Option<i64>, default: i64) -> Result<u64, ConfigError> {
        let v = self.int(key, value, default, 0, i64::MAX)?;
        u64::try_from(v).map_err(|_| self.err(key, format!("out of range: {v}")))
    }

    /// One of a fixed set of words, with a default.
    fn choice<T: Copy>(
        &self,
        key: &str,
        value: Option<String>,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(word) = value else {
            return Ok(default);
        };
        match choices.iter().find(|(name, _)| *name == word) {
            Some((_, v)) => Ok(*v),
            None => {
                let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
                Err(self.err(
                    key,
                    format!(
                        "unknown value {word:?}, expected one of: {}",
                        names.join(", ")
                    ),
                ))
            }
        }
    }

    /// A required key.
    fn required<T>(&self, key: &str, value: Option<T>) -> Result<T, ConfigError> {
        value.ok_or_else(|| self.err(key, "required key is missing"))
    }

    /// A literal `IP:port` to bind to (no host names: binding must not depend on DNS).
    fn bind_addr(&self, key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
        let addr: SocketAddr = text
            .parse()
            .map_err(|_| self.err(key, format!("invalid socket address {text:?}")))?;
        if addr.port() == 0 {
            // With one SO_REUSEPORT socket per worker, port 0 would give every worker a
            // different ephemeral port.
            return Err(self.err(key, format!("port 0 is not allowed in {text:?}")));
        }
        Ok(addr)
    }

    /// A list of CIDRs; a bare IP is a single-host network (/32 or /128).
    fn cidrs(&self, key: &str, list: Option<Vec<String>>) -> Result<Vec<IpNet>, ConfigError> {
        let list = list.unwrap_or_default();
        let mut out = Vec::with_capacity(list.len());
        for (i, text) in list.iter().enumerate() {
            let net = match text.parse::<IpNet>() {
                Ok(net) => unmapped_net(net).map_err(|m| self.err(format!("{key}[{i}]"), m))?,
                Err(_) => match text.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip.to_canonical()),
                    Err(_) => {
                        return Err(
                            self.err(format!("{key}[{i}]"), format!("invalid CIDR {text:?}"))
                        )
                    }
                },
            };
            out.push(net);
        }
        Ok(out)
    }
}

/// A network of IPv4-mapped IPv6 addresses (`::ffff:192.0.2.0/120`) as the IPv4 network it
/// stands for (`192.0.2.0/24`): clients are always compared as IPv4 (a dual-stack socket's
/// mapped peers are unmapped first), so the mapped form would silently match nothing. A
/// prefix shorter than /96 spans more than the mapped range and is refused.
fn unmapped_net(net: IpNet) -> Result<IpNet, String> {
    let net = net.trunc();
    let IpNet::V6(v6) = net else {
        return Ok(net);
    };
    let Some(v4) = v6.addr().to_ipv4_mapped() else {
        return Ok(net);
    };
    if v6.prefix_len() < 96 {
        return Err(format!(
            "{net} mixes IPv4-mapped and other IPv6 addresses; write the IPv4 network instead"
        ));
    }
    ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
        .map(IpNet::V4)
        .map_err(|e| format!("{net}: {e}"))
}

fn runtime(cx: &Cx, raw: RawRuntime) -> Result<RuntimeConfig, ConfigError> {
    let workers = match raw.workers {
        None => Workers::Auto,
        Some(RawWorkers::Word(word)) if word == "auto" => Workers::Auto,
        Some(RawWorkers::Word(word)) => {
            return Err(cx.err(
                "runtime.workers",
                format!(
                    "unknown value {word:?}, expected \"auto\" or an integer between 1 and {MAX_WORKERS}"
                ),
            ))
        }
        Some(RawWorkers::Count(n)) => {
            let n = cx.int("runtime.workers", Some(n), 1, 1, MAX_WORKERS)?;
            Workers::Count(to_usize(n))
        }
    };
    let pin_cpus = raw.pin_cpus.unwrap_or(defaults::PIN_CPUS);

    let cpus = match raw.cpus {
        None => None,
        Some(list) => {
            if list.is_empty() {
                return Err(cx.err(
                    "runtime.cpus",
                    "must not be empty (omit it to use every CPU of the affinity mask)",
                ));
            }
            if !pin_cpus {
                return Err(cx.err(
                    "runtime.cpus",
                    "has no effect with pin_cpus = false (remove one of them)",
                ));
            }
            let mut cpus: Vec<usize> = Vec::with_capacity(list.len());
            for (i, &cpu) in list.iter().enumerate() {
                let key = format!("runtime.cpus[{i}]");
                let cpu = to_usize(cx.int(&key, Some(cpu), 0, 0, MAX_CPU_ID)?);
                if let Some(j) = cpus.iter().position(|&c| c == cpu) {
                    return Err(cx.err(key, format!("duplicate CPU {cpu} (also cpus[{j}])")));
                }
                cpus.push(cpu);
            }
            Some(cpus)
        }
    };

    let splice = cx.choice("runtime.splice", raw.splice, SpliceMode::Auto, SPLICE_MODES)?;
    let max_connections = cx.u64(
        "runtime.max_connections",
        raw.max_connections,
        defaults::RUNTIME_MAX_CONNECTIONS,
    )?;
    let drain_timeout_s = cx.int(
        "runtime.drain_timeout_s",
        raw.drain_timeout_s,
        defaults::DRAIN_TIMEOUT_S,
        0,
        MAX_DRAIN_TIMEOUT_S,
    )?;

    let user = match raw.user {
        Some(u) if u.is_empty() || u.contains(['/', ':', '\0']) => {
            return Err(cx.err("runtime.user", format!("invalid user name {u:?}")))
        }
        u => u,
    };
    let control_socket = match raw.control_socket {
        // sun_path holds 108 bytes including the terminating NUL.
        Some(p) if p.is_empty() || p.len() > MAX_UNIX_PATH || p.contains('\0') => {
            return Err(cx.err(
                "runtime.control_socket",
                format!("must be a path of 1 to {MAX_UNIX_PATH} bytes, got {p:?}"),
            ))
        }
        p => p.map(std::path::PathBuf::from),
    };

    Ok(RuntimeConfig {
        user,
        control_socket,
        workers,
        pin_cpus,
        cpus,
        splice,
        max_connections,
        drain_timeout: Duration::from_secs(to_u64(drain_timeout_s)),
    })
}

fn admin(cx: &Cx, raw: RawAdmin, path: &Path) -> Result<AdminConfig, ConfigError> {
    let bind = cx.required("admin.bind", raw.bind)?;
    let bind = cx.bind_addr("admin.bind", &bind)?;
    let (token_file, token) = match raw.token_file {
        Some(file) => {
            let (file, token) = admin_token(cx, &file, path)?;
            (Some(file), Some(token))
        }
        None => (None, None),
    };
    let loopback = match bind.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    if !loopback && token.is_none() {
        // Anyone who can reach the port could drain every backend: state changes from other
        // hosts need a secret.
        return Err(cx.err(
            "admin.token_file",
            format!("required when admin.bind ({bind}) is not a loopback address"),
        ));
    }
    Ok(AdminConfig {
        bind,
        token_file,
        token,
    })
}

/// Longest admin token: far above any generated secret (`openssl rand -hex 32` is 64), and
/// it bounds the `Authorization` header we compare against.
const MAX_TOKEN_LEN: usize = 1024;

/// Read `admin.token_file` (relative to the config file's directory): one line of visible
/// ASCII, its trailing newline (LF or CRLF) not part of the token.
fn admin_token(
    cx: &Cx,
    file: &str,
    config_path: &Path,
) -> Result<(std::path::PathBuf, AdminToken), ConfigError> {
    const KEY: &str = "admin.token_file";
    if file.is_empty() {
        return Err(cx.err(KEY, "must not be empty"));
    }
    let full = match config_path.parent() {
        Some(dir) => dir.join(file),
        None => std::path::PathBuf::from(file),
    };
    let bytes = std::fs::read(&full)
        .map_err(|e| cx.err(KEY, format!("cannot read {}: {e}", full.display())))?;
    let mut token: &[u8] = &bytes;
    if let Some(rest) = token.strip_suffix(b"\n") {
        token = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    if token.is_empty() {
        return Err(cx.err(KEY, format!("{} holds no token", full.display())));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(cx.err(
            KEY,
            format!(
                "the token in {} is longer than {MAX_TOKEN_LEN} bytes",
                full.display()
            ),
        ));
    }
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        return Err(cx.err(
            KEY,
            format!(
                "the token in {} must be one line of visible ASCII (no spaces)",
                full.display()
            ),
        ));
    }
    Ok((full, AdminToken::new(token)))
}

fn listener(cx: &Cx, key: &str, raw: RawListener) -> Result<ListenerConfig, ConfigError> {
    let k = |name: &str| format!("{key}.{name}");

    let name = cx.required(&k("name"), raw.name)?;
    check_name(cx, &k("name"), &name)?;
    let protocol = cx.choice(&k("protocol"), raw.protocol, Protocol::Tcp, PROTOCOLS)?;
    let bind = cx.required(&k("bind"), raw.bind)?;
    let bind = cx.bind_addr(&k("bind"), &bind)?;
    // The names come from the balancer, the one place that defines them.
    let algorithms: Vec<(&str, Algorithm)> =
        Algorithm::ALL.iter().map(|a| (a.as_str(), *a)).collect();
    let balance = cx.choice(
        &k("balance"),
        raw.balance,
        Algorithm::RoundRobin,
        &algorithms,
    )?;

    let connect_timeout_ms = cx.int(
        &k("connect_timeout_ms"),
        raw.connect_timeout_ms,
        defaults::CONNECT_TIMEOUT_MS,
        1,
        MAX_CONNECT_TIMEOUT_MS,
    )?;
    let idle_timeout_s = cx.int(
        &k("idle_timeout_s"),
        raw.idle_timeout_s,
        defaults::IDLE_TIMEOUT_S,
        1,
        MAX_IDLE_TIMEOUT_S,
    )?;
    let connect_retries = cx.int(
        &k("connect_retries"),
        raw.connect_retries,
        defaults::CONNECT_RETRIES,
        0,
        MAX_CONNECT_RETRIES,
    )?;
    let max_connections = cx.u64(
        &k("max_connections"),
        raw.max_connections,
        defaults::LISTENER_MAX_CONNECTIONS,
    )?;
    let max_conns_per_client = cx.u32(&k("max_conns_per_client"), raw.max_conns_per_client, 0)?;
    let conn_rate_per_client = cx.u32(&k("conn_rate_per_client"), raw.conn_rate_per_client, 0)?;

    let proxy_protocol = cx.choice(
        &k("proxy_protocol"),
        raw.proxy_protocol,
        ProxyProtocol::Off,
        PROXY_PROTOCOLS,
    )?;
    if protocol == Protocol::Udp && proxy_protocol != ProxyProtocol::Off {
        return Err(cx.err(
            k("proxy_protocol"),
            "is not implemented for udp listeners; only \"off\" is accepted",
        ));
    }
    let accept_proxy_protocol = raw.accept_proxy_protocol.unwrap_or(false);
    if protocol == Protocol::Udp && accept_proxy_protocol {
        return Err(cx.err(
            k("accept_proxy_protocol"),
            "only a tcp listener can accept a PROXY header",
        ));
    }
    let trusted_proxies = cx.cidrs(&k("trusted_proxies"), raw.trusted_proxies)?;
    if accept_proxy_protocol && trusted_proxies.is_empty() {
        // Otherwise any client could claim any address and step around allow/deny and the
        // per-client caps and rates.
        return Err(cx.err(
            k("trusted_proxies"),
            "must list the proxies allowed to send a PROXY header when accept_proxy_protocol = true \
             (write [\"0.0.0.0/0\", \"::/0\"] to trust every peer)",
        ));
    }

    let first_byte_ms = cx.int(
        &k("client_first_byte_timeout_ms"),
        raw.client_first_byte_timeout_ms,
        0,
        0,
        MAX_FIRST_BYTE_TIMEOUT_MS,
    )?;
    if protocol == Protocol::Udp && first_byte_ms > 0 {
        return Err(cx.err(
            k("client_first_byte_timeout_ms"),
            "only applies to tcp listeners (a UDP session starts with its first datagram)",
        ));
    }
    let client_first_byte_timeout =
        (first_byte_ms > 0).then(|| Duration::from_millis(to_u64(first_byte_ms)));

    let allow = cx.cidrs(&k("allow"), raw.allow)?;
    let deny = cx.cidrs(&k("deny"), raw.deny)?;
    let access_log = raw.access_log.unwrap_or(false);
    let fin_timeout_s = cx.int(
        &k("fin_timeout_s"),
        raw.fin_timeout_s,
        defaults::FIN_TIMEOUT_S,
        1,
        MAX_IDLE_TIMEOUT_S,
    )?;
    let conn_rate_limit = cx.u32(&k("conn_rate_limit"), raw.conn_rate_limit, 0)?;
    let client_ipv4_prefix = cx.int(
        &k("client_ipv4_prefix"),
        raw.client_ipv4_prefix,
        defaults::CLIENT_IPV4_PREFIX,
        0,
        32,
    )?;
    let client_ipv6_prefix = cx.int(
        &k("client_ipv6_prefix"),
        raw.client_ipv6_prefix,
        defaults::CLIENT_IPV6_PREFIX,
        0,
        128,
    )?;
    let source = sources(cx, &k("source"), raw.source)?;
    let udp_responses = cx.u32(&k("udp_responses"), raw.udp_responses, 0)?;
    if protocol == Protocol::Tcp && udp_responses > 0 {
        return Err(cx.err(k("udp_responses"), "only applies to udp listeners"));
    }
    let backend_congestion_control = match raw.backend_congestion_control {
        None => None,
        Some(_) if protocol == Protocol::Udp => {
            return Err(cx.err(
                k("backend_congestion_control"),
                "only applies to tcp listeners",
            ))
        }
        Some(name) => Some(congestion_control(
            cx,
            &k("backend_congestion_control"),
            name,
        )?),
    };
    let slow_start_s = cx.int(&k("slow_start_s"), raw.slow_start_s, 0, 0, MAX_SLOW_START_S)?;

    let routed = raw.route.as_ref().is_some_and(|r| !r.is_empty());
    let backends = match raw.backends {
        // A listener with routes may leave its own backends out: unmatched hellos are refused.
        Some(b) if b.is_empty() && routed => Vec::new(),
        None if routed => Vec::new(),
        b => backends(cx, &k("backends"), b)?,
    };
    let health_check = raw
        .health_check
        .map(|h| health_check(cx, &k("health_check"), h))
        .transpose()?;
    let routes = match raw.route {
        Some(r) => routes(cx, &k("route"), r, protocol, balance, &backends)?,
        None => Vec::new(),
    };
    let client_first_byte_timeout = match client_first_byte_timeout {
        None if !routes.is_empty() => Some(Duration::from_millis(DEFAULT_HELLO_TIMEOUT_MS)),
        t => t,
    };

    Ok(ListenerConfig {
        name,
        protocol,
        bind,
        balance,
        connect_timeout: Duration::from_millis(to_u64(connect_timeout_ms)),
        idle_timeout: Duration::from_secs(to_u64(idle_timeout_s)),
        connect_retries: u32::try_from(connect_retries).unwrap_or(0),
        max_connections,
        max_conns_per_client,
        conn_rate_per_client,
        proxy_protocol,
        accept_proxy_protocol,
        trusted_proxies,
        client_first_byte_timeout,
        allow,
        deny,
        access_log,
        fin_timeout: Duration::from_secs(to_u64(fin_timeout_s)),
        conn_rate_limit,
        client_ipv4_prefix: u8::try_from(client_ipv4_prefix).unwrap_or(32),
        client_ipv6_prefix: u8::try_from(client_ipv6_prefix).unwrap_or(64),
        source,
        backend_congestion_control,
        udp_responses,
        slow_start: Duration::from_secs(to_u64(slow_start_s)),
        backends,
        health_check,
        routes,
    })
}

/// The longest name TCP_CONGESTION takes (TCP_CA_NAME_MAX is 16 with the NUL).
const MAX_CONGESTION_NAME: usize = 15;

/// `backend_congestion_control = "cubic"`: a name this kernel accepts from this process, found
/// out the only reliable way, by setting it on a throwaway socket (the algorithm may be a
/// module the kernel loads on first use, and an unprivileged process may only pick those in
/// net.ipv4.tcp_allowed_congestion_control).
fn congestion_control(cx: &Cx, key: &str, name: String) -> Result<String, ConfigError> {
    let well_formed = !name.is_empty()
        && name.len() <= MAX_CONGESTION_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !well_formed {
        return Err(cx.err(
            key,
            format!("invalid congestion control name {name:?} (e.g. \"cubic\", \"bbr\", \"reno\")"),
        ));
    }
    let tcp_socket = |domain| socket2::Socket::new(domain, socket2::Type::STREAM, None);
    // An IPv6-only host has no IPv4 sockets; the algorithms are the same for both.
    let probe = tcp_socket(socket2::Domain::IPV4)
        .or_else(|_| tcp_socket(socket2::Domain::IPV6))
        .and_then(|s| s.set_tcp_congestion(name.as_bytes()));
    match probe {
        Ok(()) => Ok(name),
        Err(e) => {
            let list = |sysctl: &str| {
                std::fs::read_to_string(format!("/proc/sys/net/ipv4/{sysctl}"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "unreadable".to_string())
            };
            let why = match e.raw_os_error() {
                Some(nix::libc::ENOENT) => format!(
                    "{name:?} is not available in this kernel (net.ipv4.tcp_available_congestion_control: {})",
                    list("tcp_available_congestion_control")
                ),
                Some(nix::libc::EPERM) => format!(
                    "{name:?} is not in net.ipv4.tcp_allowed_congestion_control ({}), the \
                     only algorithms a process without CAP_NET_ADMIN may set",
                    list("tcp_allowed_congestion_control")
                ),
                _ => format!("cannot set {name:?} on a TCP socket: {e}"),
            };
            Err(cx.err(key, why))
        }
    }
}

/// The probe in [`congestion_control`] ran with this process's privileges; once it drops to
/// `runtime.user` it loses CAP_NET_ADMIN, and every backend connection would silently keep the
/// host's default. Refuse that at load instead. `allowed`: the contents of
/// net.ipv4.tcp_allowed_congestion_control.
fn allowed_after_drop(
    cx: &Cx,
    listeners: &[ListenerConfig],
    allowed: &str,
) -> Result<(), ConfigError> {
    for (i, l) in listeners.iter().enumerate() {
        if let Some(name) = &l.backend_congestion_control {
            if !allowed.split_whitespace().any(|a| a == name) {
                return Err(cx.err(
                    format!("listener[{i}].backend_congestion_control"),
                    format!(
                        "{name:?} is not in net.ipv4.tcp_allowed_congestion_control ({}), \
                         the only algorithms l4lb may set once runtime.user drops root",
                        allowed.trim()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `source = [...]`: literal IP addresses (no ports: the kernel picks one per connection),
/// distinct, v4-mapped IPv6 written as the IPv4 address it is.
fn sources(cx: &Cx, key: &str, list: Option<Vec<String>>) -> Result<Vec<IpAddr>, ConfigError> {
    let list = list.unwrap_or_default();
    if list.len() > MAX_SOURCES {
        return Err(cx.err(
            key,
            format!("at most {MAX_SOURCES} addresses, got {}", list.len()),
        ));
    }
    let mut out: Vec<IpAddr> = Vec::with_capacity(list.len());
    for (i, text) in list.iter().enumerate() {
        let ip = text.parse::<IpAddr>().map_err(|_| {
            cx.err(
                format!("{key}[{i}]"),
                format!("invalid IP address {text:?} (a source is an address, without a port)"),
            )
        })?;
        let ip = ip.to_canonical();
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(cx.err(
                format!("{key}[{i}]"),
                format!("{ip} cannot be the source of a connection"),
            ));
        }
        if let Some(j) = out.iter().position(|o| *o == ip) {
            return Err(cx.err(
                format!("{key}[{i}]"),
                format!("duplicate address {ip} (also {key}[{j}])"),
            ));
        }
        out.push(ip);
    }
    Ok(out)
}

/// `[[listener.route]]`: SNI patterns, an optional algorithm and backends whose names and
/// addresses differ from every other backend of the listener (`own`, earlier routes).
fn routes(
    cx: &Cx,
    key: &str,
    raw: Vec<RawRoute>,
    protocol: Protocol,
    balance: Algorithm,
    own: &[BackendConfig],
) -> Result<Vec<RouteConfig>, ConfigError> {
    if protocol != Protocol::Tcp && !raw.is_empty() {
        return Err(cx.err(key, "only a tcp listener can route by TLS SNI"));
    }
    if raw.len() > MAX_ROUTES {
        return Err(cx.err(
            key,
            format!("too many routes: {} (at most {MAX_ROUTES})", raw.len()),
        ));
    }
    let algorithms: Vec<(&str, Algorithm)> =
        Algorithm::ALL.iter().map(|a| (a.as_str(), *a)).collect();
    let mut out: Vec<RouteConfig> = Vec::with_capacity(raw.len());
    let mut total = own.len();
    for (i, r) in raw.into_iter().enumerate() {
        let rkey = format!("{key}[{i}]");
        let sni_key = format!("{rkey}.sni");
        let names = cx.required(&sni_key, r.sni)?;
        if names.is_empty() || names.len() > MAX_SNI_NAMES {
            return Err(cx.err(sni_key, format!("must list 1..={MAX_SNI_NAMES} names")));
        }
        let mut sni = Vec::with_capacity(names.len());
        for (j, name) in names.iter().enumerate() {
            let pattern = sni_pattern(name)
                .map_err(|m| cx.err(format!("{sni_key}[{j}]"), format!("{name:?}: {m}")))?;
            sni.push(pattern);
        }
        let balance = cx.choice(&format!("{rkey}.balance"), r.balance, balance, &algorithms)?;
        let bkey = format!("{rkey}.backends");
        let backends = backends(cx, &bkey, r.backends)?;
        total += backends.len();
        if total > MAX_BACKENDS {
            return Err(cx.err(
                bkey,
                format!(
                    "too many backends in this listener and its routes (at most {MAX_BACKENDS})"
                ),
            ));
        }
        let earlier = own.iter().chain(out.iter().flat_map(|o| o.backends.iter()));
        for other in earlier {
            if let Some(j) = backends
                .iter()
                .position(|b| b.name == other.name || b.addr == other.addr)
            {
                return Err(cx.err(
                    format!("{bkey}[{j}].addr"),
                    format!(
                        "{:?} is already a backend of this listener or an earlier route ({:?}); \
                         a backend belongs to one route",
                        backends[j].name, other.name
                    ),
                ));
            }
        }
        out.push(RouteConfig {
            sni,
            balance,
            backends,
        });
    }
    Ok(out)
}

/// An SNI pattern: a DNS name, optionally behind one leading `*.`; returned lower-cased.
fn sni_pattern(text: &str) -> Result<String, String> {
    let lower = text.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    if name.is_empty() || name.len() > 253 {
        return Err("a name of 1..=253 characters, optionally after \"*.\", is expected".into());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    if !name.split('.').all(label_ok) {
        return Err(
            "not a host name (labels of letters, digits, '-' and '_' between dots; \
             a wildcard only as one leading \"*.\")"
                .into(),
        );
    }
    Ok(lower)
}

/// Listener names are metric label values and admin URL segments: keep them plain.
fn check_name(cx: &Cx, key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(cx.err(key, "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(cx.err(
            key,
            format!("name {name:?} is longer than {MAX_NAME_LEN} characters"),
        ));
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if !name.chars().all(plain) {
        return Err(cx.err(
            key,
            format!("invalid name {name:?}: use only letters, digits, '_', '.' and '-'"),
        ));
    }
    Ok(())
}

fn backends(
    cx: &Cx,
    key: &str,
    raw: Option<Vec<RawBackend>>,
) -> Result<Vec<BackendConfig>, ConfigError> {
    let raw = cx.required(key, raw)?;
    if raw.is_empty() {
        return Err(cx.err(key, "must list at least one backend"));
    }
    if raw.len() > MAX_BACKENDS {
        return Err(cx.err(
            key,
            format!("too many backends: {} (at most {MAX_BACKENDS})", raw.len()),
        ));
    }
    let mut out: Vec<BackendConfig> = Vec::with_capacity(raw.len());
    // Resolved address -> index, to catch two spellings of the same backend.
    let mut seen: HashMap<SocketAddr, usize> = HashMap::with_capacity(raw.len());
    for (i, b) in raw.into_iter().enumerate() {
        let bkey = format!("{key}[{i}]");
        let addr_key = format!("{bkey}.addr");
        let name = cx.required(&addr_key, b.addr)?;
        let addr = backend_addr(&name).map_err(|message| cx.err(&addr_key, message))?;
        if let Some(j) = out.iter().position(|o| o.name == name) {
            return Err(cx.err(
                addr_key,
                format!("duplicate backend {name:?} (also backends[{j}])"),
            ));
        }
        if let Some(&j) = seen.get(&addr) {
            return Err(cx.err(
                addr_key,
                format!(
                    "{name:?} resolves to {addr}, the same address as backends[{j}] ({:?})",
                    out[j].name
                ),
            ));
        }
        seen.insert(addr, i);
        let weight = cx.int(
            &format!("{bkey}.weight"),
            b.weight,
            defaults::WEIGHT,
            0,
            MAX_WEIGHT,
        )?;
        let max_connections = cx.u32(&format!("{bkey}.max_connections"), b.max_connections, 0)?;
        out.push(BackendConfig {
            name,
            addr,
            weight: u32::try_from(weight).unwrap_or(0),
            max_connections,
            backup: b.backup.unwrap_or(false),
        });
    }
    if out.iter().all(|b| b.weight == 0) {
        return Err(cx.err(key, "no backend can take connections (every weight is 0)"));
    }
    Ok(out)
}

/// `IP:port`, `[IPv6]:port` or `host:port`; host names are resolved now, with the system
/// resolver, and the first address it returns is kept. Errors are messages without the key.
fn backend_addr(text: &str) -> Result<SocketAddr, String> {
    let invalid = || format!("invalid socket address {text:?}");
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("port 0 is not allowed in {text:?}"));
        }
        return Ok(addr);
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    // An IPv6 literal must be bracketed; anything left with ':' or brackets is malformed.
    if host.is_empty() || host.contains([':', '[', ']']) {
        return Err(invalid());
    }
    let port: u16 = port.parse().map_err(|_| invalid())?;
    if port == 0 {
        return Err(format!("port 0 is not allowed in {text:?}"));
    }
    // "10.0.0.300" is a broken IPv4 address, not a host name to look up.
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(invalid());
    }
    if !is_host_name(host) {
        return Err(format!("invalid host name {host:?} in {text:?}"));
    }
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host {host:?}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("cannot resolve host {host:?}: no address"))
}

/// RFC 1123 host name: dot-separated labels of 1..=63 letters, digits, '-' (and '_', which
/// real-world service names use), 253 characters at most, an optional final dot.
fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn health_check(cx: &Cx, key: &str, raw: RawHealthCheck) -> Result<HealthCheckConfig, ConfigError> {
    let k = |name: &str| format!("{key}.{name}");
    let interval_ms = cx.int(
        &k("interval_ms"),
        raw.interval_ms,
        defaults::INTERVAL_MS,
        MIN_INTERVAL_MS,
        MAX_INTERVAL_MS,
    )?;
    // The default never exceeds a short interval the user chose. An explicit timeout may be
    // longer than the interval (HAProxy's `inter 2s` with `timeout check 5s`): a check still
    // running then delays the next one of the same backend.
    let timeout_ms = cx.int(
        &k("timeout_ms"),
        raw.timeout_ms,
        defaults::TIMEOUT_MS.min(interval_ms),
        1,
        MAX_CHECK_TIMEOUT_MS,
    )?;
    let rise = cx.int(&k("rise"), raw.rise, defaults::RISE, 1, MAX_RISE_FALL)?;
    let fall = cx.int(&k("fall"), raw.fall, defaults::FALL, 1, MAX_RISE_FALL)?;
    let send = payload(cx, &k("send"), raw.send)?;
    let expect = payload(cx, &k("expect"), raw.expect)?;
    Ok(HealthCheckConfig {
        interval: Duration::from_millis(to_u64(interval_ms)),
        timeout: Duration::from_millis(to_u64(timeout_ms)),
        rise: u32::try_from(rise).unwrap_or(1),
        fall: u32::try_from(fall).unwrap_or(1),
        send,
        expect,
    })
}

/// `send` / `expect`: optional, but never empty (omit the key instead), and bounded.
fn payload(cx: &Cx, key: &str, value: Option<String>) -> Result<Option<Vec<u8>>, ConfigError> {
    let Some(text) = value else {
        return Ok(None);
    };
    if text.is_empty() {
        return Err(cx.err(key, "must not be empty (omit the key instead)"));
    }
    if text.len() > MAX_CHECK_PAYLOAD {
        return Err(cx.err(
            key,
            format!(
                "is {} bytes long, at most {MAX_CHECK_PAYLOAD} are allowed",
                text.len()
            ),
        ));
    }
    Ok(Some(text.into_bytes()))
}

/// Range-checked values only: the callers have already bounded `v` to be non-negative.
fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_usize(v: i64) -> usize {
    usize::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests;
