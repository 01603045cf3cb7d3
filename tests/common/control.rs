//! What a test does to a running `L4lb` after the start: rewrite its config file and SIGHUP
//! (a reload), and read it back through its admin API (`/metrics`, `/status`, the reload
//! counters). The admin API is the one `L4lb::start_with_admin` gave it.

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use super::conf::Conf;
use super::deadline::wait_until;
use super::http::status_json;
use super::metrics::metric_at;
use super::process::L4lb;

impl L4lb {
    /// The admin API's address (panics when it was started without one).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .expect("l4lb started without an admin API (use start_with_admin)")
    }

    /// The config text `conf` gives for this balancer: its listener address and, when it has
    /// one, its admin API.
    pub fn render(&self, conf: &Conf) -> String {
        match self.admin {
            Some(admin) => conf.clone().admin(admin).render(self.addr),
            None => conf.render(self.addr),
        }
    }

    /// Replace the config file with `text` and send SIGHUP. The text is written aside and
    /// renamed into place: a reload of an earlier SIGHUP may still be reading the file on its
    /// own thread, and a truncate-then-write could show it an empty file.
    pub fn reload_text(&self, text: &str) {
        let staged = self.config_path.with_extension("toml.new");
        std::fs::write(&staged, text).expect("write the new config");
        std::fs::rename(&staged, &self.config_path).expect("rename the config into place");
        self.signal(Signal::SIGHUP);
    }

    /// Reload with `conf` (same listener address and admin API).
    pub fn reload(&self, conf: &Conf) {
        self.reload_text(&self.render(conf));
    }

    /// The value of one `/metrics` sample (panics if the scrape fails or it is missing).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_at(self.admin_addr(), name, labels)
    }

    /// `l4lb_config_reloads_total{result}`.
    pub fn reloads(&self, result: &str) -> f64 {
        self.metric("l4lb_config_reloads_total", &[("result", result)])
    }

    /// Wait up to `within` until `l4lb_config_reloads_total{result}` reaches `n`.
    pub fn wait_reloads(&self, result: &str, n: f64, within: Duration) {
        assert!(
            wait_until(within, || self.reloads(result) >= n),
            "l4lb_config_reloads_total{{result=\"{result}\"}} did not reach {n} within {within:?}"
        );
    }

    /// `GET /status`, parsed.
    pub fn status(&self) -> Value {
        status_json(self.admin_addr())
    }

    /// Whether a complete stderr line so far contains `needle`.
    pub fn saw_log(&self, needle: &str) -> bool {
        self.stderr_lines().iter().any(|l| l.contains(needle))
    }
}
