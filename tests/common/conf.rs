//! `Conf`: the one builder of a test balancer's config, TCP or UDP (one `[runtime]`, one
//! `[[listener]]`, optionally its `[listener.health_check]`), rendered to TOML once the
//! listener's address is known.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// The listener's protocol; it also decides what shows that the balancer is up (`Ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One `[runtime]` and one `[[listener]]` (TCP "t" from `Conf::new`, UDP "u" from
/// `Conf::udp`); rendered once the port is known.
#[derive(Debug, Clone)]
pub struct Conf {
    pub proto: Proto,
    /// The listener's name.
    pub name: String,
    /// TOML value as written: `"\"auto\""` or `"3"`.
    pub workers: String,
    pub pin_cpus: bool,
    /// `runtime.splice` (written for TCP only).
    pub splice: String,
    pub drain_timeout_s: u64,
    pub balance: String,
    /// Written for TCP only (a UDP listener connects nothing).
    pub connect_timeout_ms: u64,
    /// `idle_timeout_s`, when written.
    pub idle_timeout_s: Option<u64>,
    /// Extra `key = value` lines of the listener (before `backends`).
    pub listener_extra: Vec<String>,
    /// Inline-table bodies, e.g. `addr = "127.0.0.1:9", weight = 2`.
    pub backends: Vec<String>,
    /// Lines of a `[listener.health_check]` table (after `backends`).
    pub health_check: Vec<String>,
    /// Listen on `[::1]` instead of 127.0.0.1.
    pub ipv6: bool,
    /// Extra `key = value` lines of `[runtime]`.
    pub runtime_extra: Vec<String>,
    /// Start l4lb with this open-files limit (soft and hard), through `sh -c 'ulimit -n'`.
    pub nofile: Option<u64>,
}

impl Conf {
    /// A TCP listener "t": three workers (more than the two cores of CI), no pinning, splice
    /// auto, `connect_timeout_ms = 2000`.
    pub fn new(balance: &str, backends: &[SocketAddr]) -> Conf {
        Conf {
            proto: Proto::Tcp,
            name: "t".to_string(),
            workers: "3".to_string(),
            pin_cpus: false,
            splice: "auto".to_string(),
            drain_timeout_s: 1,
            balance: balance.to_string(),
            connect_timeout_ms: 2000,
            idle_timeout_s: None,
            listener_extra: Vec::new(),
            backends: backends.iter().map(|a| format!("addr = \"{a}\"")).collect(),
            health_check: Vec::new(),
            ipv6: false,
            runtime_extra: Vec::new(),
            nofile: None,
        }
    }

    /// A UDP listener "u": two workers, no pinning, `idle_timeout_s = 30`.
    pub fn udp(balance: &str, backends: &[SocketAddr]) -> Conf {
        Conf {
            proto: Proto::Udp,
            name: "u".to_string(),
            workers: "2".to_string(),
            idle_timeout_s: Some(30),
            ..Conf::new(balance, backends)
        }
    }

    /// Backends with explicit weights.
    pub fn weighted(balance: &str, backends: &[(SocketAddr, u32)]) -> Conf {
        let mut c = Conf::new(balance, &[]);
        c.backends = backends
            .iter()
            .map(|(a, w)| format!("addr = \"{a}\", weight = {w}"))
            .collect();
        c
    }

    /// `workers` as a raw TOML value: `"auto"` is quoted for you.
    pub fn workers(mut self, w: &str) -> Conf {
        self.workers = if w == "auto" {
            "\"auto\"".to_string()
        } else {
            w.to_string()
        };
        self
    }

    pub fn name(mut self, name: &str) -> Conf {
        self.name = name.to_string();
        self
    }

    pub fn pin_cpus(mut self, pin: bool) -> Conf {
        self.pin_cpus = pin;
        self
    }

    pub fn splice(mut self, mode: &str) -> Conf {
        self.splice = mode.to_string();
        self
    }

    pub fn drain(mut self, s: u64) -> Conf {
        self.drain_timeout_s = s;
        self
    }

    pub fn idle(mut self, s: u64) -> Conf {
        self.idle_timeout_s = Some(s);
        self
    }

    /// Add one `key = value` line to the listener.
    pub fn extra(mut self, line: &str) -> Conf {
        self.listener_extra.push(line.to_string());
        self
    }

    /// Add one `key = value` line to the listener's `[listener.health_check]`.
    pub fn health(mut self, line: &str) -> Conf {
        self.health_check.push(line.to_string());
        self
    }

    /// `access_log = on` on the listener.
    pub fn access_log(self, on: bool) -> Conf {
        self.extra(&format!("access_log = {on}"))
    }

    /// Add one `key = value` line to `[runtime]`.
    pub fn runtime(mut self, line: &str) -> Conf {
        self.runtime_extra.push(line.to_string());
        self
    }

    /// Serve the admin API on `addr`. Call it after any `runtime` line: the `[admin]` table is
    /// written at the end of `[runtime]`, and the `[[listener]]` that follows closes it.
    pub fn admin(self, addr: SocketAddr) -> Conf {
        self.runtime(&format!("\n[admin]\nbind = \"{addr}\""))
    }

    /// Run the balancer with a hard open-files limit of `n`.
    pub fn nofile(mut self, n: u64) -> Conf {
        self.nofile = Some(n);
        self
    }

    pub fn ipv6(mut self, on: bool) -> Conf {
        self.ipv6 = on;
        self
    }

    pub fn render(&self, bind: SocketAddr) -> String {
        let tcp = self.proto == Proto::Tcp;
        let mut s = String::new();
        let _ = writeln!(s, "[runtime]");
        let _ = writeln!(s, "workers = {}", self.workers);
        let _ = writeln!(s, "pin_cpus = {}", self.pin_cpus);
        if tcp {
            let _ = writeln!(s, "splice = \"{}\"", self.splice);
        }
        let _ = writeln!(s, "drain_timeout_s = {}", self.drain_timeout_s);
        for line in &self.runtime_extra {
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "[[listener]]");
        let _ = writeln!(s, "name = \"{}\"", self.name);
        let proto = if tcp { "tcp" } else { "udp" };
        let _ = writeln!(s, "protocol = \"{proto}\"");
        let _ = writeln!(s, "bind = \"{bind}\"");
        let _ = writeln!(s, "balance = \"{}\"", self.balance);
        if tcp {
            let _ = writeln!(s, "connect_timeout_ms = {}", self.connect_timeout_ms);
        }
        if let Some(idle) = self.idle_timeout_s {
            let _ = writeln!(s, "idle_timeout_s = {idle}");
        }
        for line in &self.listener_extra {
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(s, "backends = [");
        for b in &self.backends {
            let _ = writeln!(s, "  {{ {b} }},");
        }
        let _ = writeln!(s, "]");
        if !self.health_check.is_empty() {
            let _ = writeln!(s, "[listener.health_check]");
            for line in &self.health_check {
                let _ = writeln!(s, "{line}");
            }
        }
        s
    }
}

/// One more round-robin TCP `[[listener]]` with one backend, as TOML to append to a rendered
/// config (a reload that adds a listener).
pub fn tcp_listener_toml(name: &str, bind: SocketAddr, backend: SocketAddr) -> String {
    format!(
        "\n[[listener]]\nname = \"{name}\"\nprotocol = \"tcp\"\nbind = \"{bind}\"\n\
         balance = \"round_robin\"\nbackends = [ {{ addr = \"{backend}\" }} ]\n"
    )
}
