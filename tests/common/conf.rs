//! `Conf`: the builder of a TCP balancer's config (one `[runtime]`, one `[[listener]]`) and
//! its rendering to TOML once the listener's address is known.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// One `[runtime]` and one TCP `[[listener]]` named "t"; rendered once the port is known.
#[derive(Debug, Clone)]
pub struct Conf {
    /// TOML value as written: `"\"auto\""` or `"3"`.
    pub workers: String,
    pub pin_cpus: bool,
    pub splice: String,
    pub balance: String,
    pub connect_timeout_ms: u64,
    /// Extra `key = value` lines of the listener (before `backends`).
    pub listener_extra: Vec<String>,
    /// Inline-table bodies, e.g. `addr = "127.0.0.1:9", weight = 2`.
    pub backends: Vec<String>,
    /// Listen on `[::1]` instead of 127.0.0.1.
    pub ipv6: bool,
    /// Extra `key = value` lines of `[runtime]`.
    pub runtime_extra: Vec<String>,
    /// Start l4lb with this open-files limit (soft and hard), through `sh -c 'ulimit -n'`.
    pub nofile: Option<u64>,
}

impl Conf {
    /// Three workers (more than the two cores of CI), no pinning, splice auto.
    pub fn new(balance: &str, backends: &[SocketAddr]) -> Conf {
        Conf {
            workers: "3".to_string(),
            pin_cpus: false,
            splice: "auto".to_string(),
            balance: balance.to_string(),
            connect_timeout_ms: 2000,
            listener_extra: Vec::new(),
            backends: backends.iter().map(|a| format!("addr = \"{a}\"")).collect(),
            ipv6: false,
            runtime_extra: Vec::new(),
            nofile: None,
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

    pub fn pin_cpus(mut self, pin: bool) -> Conf {
        self.pin_cpus = pin;
        self
    }

    pub fn splice(mut self, mode: &str) -> Conf {
        self.splice = mode.to_string();
        self
    }

    /// Add one `key = value` line to the listener.
    pub fn extra(mut self, line: &str) -> Conf {
        self.listener_extra.push(line.to_string());
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
        let mut s = String::new();
        let _ = writeln!(s, "[runtime]");
        let _ = writeln!(s, "workers = {}", self.workers);
        let _ = writeln!(s, "pin_cpus = {}", self.pin_cpus);
        let _ = writeln!(s, "splice = \"{}\"", self.splice);
        let _ = writeln!(s, "drain_timeout_s = 1");
        for line in &self.runtime_extra {
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "[[listener]]");
        let _ = writeln!(s, "name = \"t\"");
        let _ = writeln!(s, "protocol = \"tcp\"");
        let _ = writeln!(s, "bind = \"{bind}\"");
        let _ = writeln!(s, "balance = \"{}\"", self.balance);
        let _ = writeln!(s, "connect_timeout_ms = {}", self.connect_timeout_ms);
        for line in &self.listener_extra {
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(s, "backends = [");
        for b in &self.backends {
            let _ = writeln!(s, "  {{ {b} }},");
        }
        let _ = writeln!(s, "]");
        s
    }
}
