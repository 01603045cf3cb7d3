//! `GET /metrics`: every counter and gauge in the Prometheus text exposition format 0.0.4.
//!
//! Control path, at scrape time: sums the per-worker counters of [`ListenerMetrics`] and reads
//! the backend atomics, from one snapshot of the listener set and one of each pool, so the
//! workers never wait on a scrape. Invariants of the output: each family's `# HELP` and
//! `# TYPE` come first and its samples follow together; every listener shows every reject
//! reason (zeros included), so a rate() never starts from a missing series; label values are
//! escaped (`\\`, `\"`, `\n`).
//!
//! [`ListenerMetrics`]: crate::metrics::ListenerMetrics

use std::fmt::{Display, Write as _};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::backend::{Backend, BackendState};
use crate::balancer::Pool;
use crate::metrics::{RejectReason, UdpDrop, LOOP_BUCKETS_US};
use crate::state::{ListenerState, SharedState};

/// Metric names (SPEC.md lists the first ten; the rest are extras of this build).
pub const CONNECTIONS_ACCEPTED: &str = "l4lb_connections_accepted_total";
pub const CONNECTIONS_ACTIVE: &str = "l4lb_connections_active";
pub const CONNECTIONS_REJECTED: &str = "l4lb_connections_rejected_total";
pub const BACKEND_UP: &str = "l4lb_backend_up";
pub const BACKEND_CONNECTIONS_ACTIVE: &str = "l4lb_backend_connections_active";
pub const BACKEND_CONNECTIONS_TOTAL: &str = "l4lb_backend_connections_total";
pub const BACKEND_CONNECT_ERRORS: &str = "l4lb_backend_connect_errors_total";
pub const BACKEND_BYTES: &str = "l4lb_backend_bytes_total";
pub const UDP_SESSIONS_ACTIVE: &str = "l4lb_udp_sessions_active";
pub const BACKEND_DATAGRAMS: &str = "l4lb_backend_datagrams_total";
pub const UDP_DATAGRAMS_DROPPED: &str = "l4lb_udp_datagrams_dropped_total";
pub const CONFIG_RELOADS: &str = "l4lb_config_reloads_total";
pub const ACCESS_LOG_DROPPED: &str = "l4lb_access_log_dropped_total";
pub const BUILD_INFO: &str = "l4lb_build_info";
pub const UPTIME: &str = "l4lb_uptime_seconds";
pub const WORKERS: &str = "l4lb_workers";
pub const DRAINING: &str = "l4lb_draining";
pub const PROCESS_CONNECTIONS_ACTIVE: &str = "l4lb_process_connections_active";
pub const CONNECTIONS_CONNECT_FAILED: &str = "l4lb_connections_connect_failed_total";
pub const BACKEND_WEIGHT: &str = "l4lb_backend_weight";
pub const BACKEND_ROUTE: &str = "l4lb_backend_route_info";
pub const ROUTE_CONNECTIONS: &str = "l4lb_route_connections_total";
pub const IO_ERRORS: &str = "l4lb_io_errors_total";
pub const WORKER_LOOP: &str = "l4lb_worker_loop_seconds";
pub const WORKER_POLL_EVENTS: &str = "l4lb_worker_poll_events_total";

/// A per-backend family: name, type, help, and how to read its value.
type BackendFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Backend) -> u64,
);

/// Appends families and samples to one buffer.
struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                push_label_value(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Append a label value with the escapes the text format requires.
pub fn push_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The whole exposition.
pub fn render(shared: &SharedState) -> String {
    let listeners = shared.listeners.load();
    // One pool snapshot per listener, shared by every backend family below.
    let pools: Vec<(&Arc<ListenerState>, Arc<Pool>)> =
        listeners.iter().map(|l| (l, l.pool.load_full())).collect();
    let backends = || {
        pools.iter().flat_map(|(l, p)| {
            p.backends()
                .iter()
                .map(move |b| (l.config.name.as_str(), b))
        })
    };
    let nbackends: usize = pools.iter().map(|(_, p)| p.backends().len()).sum();
    let mut w = Writer {
        out: String::with_capacity(4096 + listeners.len() * 2048 + nbackends * 1024),
    };

    w.family(
        BUILD_INFO,
        "gauge",
        "Always 1; the version label names the build.",
    );
    w.sample(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))], 1);
    w.family(UPTIME, "gauge", "Seconds since the process started.");
    w.sample(
        UPTIME,
        &[],
        format_args!("{:.3}", shared.started.elapsed().as_secs_f64()),
    );
    w.family(WORKERS, "gauge", "Event-loop worker threads.");
    w.sample(WORKERS, &[], shared.workers);
    w.family(
        DRAINING,
        "gauge",
        "1 while shutting down gracefully (no new connections).",
    );
    w.sample(DRAINING, &[], u8::from(shared.is_draining()));
    w.family(
        PROCESS_CONNECTIONS_ACTIVE,
        "gauge",
        "TCP connections open across all listeners.",
    );
    w.sample(
        PROCESS_CONNECTIONS_ACTIVE,
        &[],
        shared.active.load(Ordering::Relaxed),
    );
    w.family(
        CONFIG_RELOADS,
        "counter",
        "Configuration reloads by result.",
    );
    w.sample(
        CONFIG_RELOADS,
        &[("result", "ok")],
        shared.reloads_ok.load(Ordering::Relaxed),
    );
    w.sample(
        CONFIG_RELOADS,
        &[("result", "error")],
        shared.reloads_error.load(Ordering::Relaxed),
    );
    w.family(
        ACCESS_LOG_DROPPED,
        "counter",
        "Access-log lines dropped because the writer's queue was full (slow stderr).",
    );
    w.sample(ACCESS_LOG_DROPPED, &[], shared.access_log.dropped());
    w.family(
        IO_ERRORS,
        "counter",
        "I/O errors that closed a TCP connection: reset (the peer reset it or went away) or other (also logged).",
    );
    w.sample(
        IO_ERRORS,
        &[("class", "reset")],
        shared.io_errors.resets.load(Ordering::Relaxed),
    );
    w.sample(
        IO_ERRORS,
        &[("class", "other")],
        shared.io_errors.other.load(Ordering::Relaxed),
    );

    worker_loop(&mut w, shared);

    w.family(
        CONNECTIONS_ACCEPTED,
        "counter",
        "Client connections accepted.",
    );
    for l in listeners.iter() {
        w.sample(
            CONNECTIONS_ACCEPTED,
            &[("listener", &l.config.name)],
            l.counters.accepted(),
        );
    }
    w.family(CONNECTIONS_ACTIVE, "gauge", "Client connections open.");
    for l in listeners.iter() {
        let v = l.active.load(Ordering::Relaxed);
        w.sample(CONNECTIONS_ACTIVE, &[("listener", &l.config.name)], v);
    }
    w.family(
        CONNECTIONS_REJECTED,
        "counter",
        "Client connections refused (accepted, then closed at once), by reason.",
    );
    for l in listeners.iter() {
        for reason in RejectReason::ALL {
            w.sample(
                CONNECTIONS_REJECTED,
                &[("listener", &l.config.name), ("reason", reason.as_str())],
                l.counters.rejected(reason),
            );
        }
    }
    w.family(
        CONNECTIONS_CONNECT_FAILED,
        "counter",
        "Client connections closed because every backend connect attempt failed.",
    );
    for l in listeners.iter() {
        let v = l.counters.connect_failures();
        w.sample(
            CONNECTIONS_CONNECT_FAILED,
            &[("listener", &l.config.name)],
            v,
        );
    }
    w.family(UDP_SESSIONS_ACTIVE, "gauge", "UDP sessions open.");
    for l in listeners.iter() {
        let v = l.udp_sessions.load(Ordering::Relaxed);
        w.sample(UDP_SESSIONS_ACTIVE, &[("listener", &l.config.name)], v);
    }

    let per_backend: [BackendFamily; 5] = [
        (
            BACKEND_UP,
            "gauge",
            "1 if the backend takes new connections (state up), else 0.",
            |b| u64::from(b.state() == BackendState::Up),
        ),
        (
            BACKEND_WEIGHT,
            "gauge",
            "The backend's current weight.",
            |b| u64::from(b.weight()),
        ),
        (
            BACKEND_CONNECTIONS_ACTIVE,
            "gauge",
            "Connections open to the backend (connecting or established).",
            |b| u64::from(b.active()),
        ),
        (
            BACKEND_CONNECTIONS_TOTAL,
            "counter",
            "Connections sent to the backend.",
            |b| b.total.load(Ordering::Relaxed),
        ),
        (
            BACKEND_CONNECT_ERRORS,
            "counter",
            "Failed connect attempts to the backend.",
            |b| b.connect_errors.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, value) in per_backend {
        w.family(name, kind, help);
        for (listener, b) in backends() {
            w.sample(
                name,
                &[("listener", listener), ("backend", &b.name)],
                value(b),
            );
        }
    }
    w.family(BACKEND_BYTES, "counter", "Bytes forwarded, by direction.");
    for (listener, b) in backends() {
        for (direction, counter) in [
            ("to_backend", &b.bytes_to_backend),
            ("to_client", &b.bytes_to_client),
        ] {
            w.sample(
                BACKEND_BYTES,
                &[
                    ("listener", listener),
                    ("backend", &b.name),
                    ("direction", direction),
                ],
                counter.load(Ordering::Relaxed),
            );
        }
    }
    w.family(
        BACKEND_DATAGRAMS,
        "counter",
        "UDP datagrams forwarded, by direction (added when a session's timer fires, about every 10 s, and when it ends).",
    );
    for (listener, b) in backends() {
        for (direction, counter) in [
            ("to_backend", &b.datagrams_to_backend),
            ("to_client", &b.datagrams_to_client),
        ] {
            w.sample(
                BACKEND_DATAGRAMS,
                &[
                    ("listener", listener),
                    ("backend", &b.name),
                    ("direction", direction),
                ],
                counter.load(Ordering::Relaxed),
            );
        }
    }
    w.family(
        UDP_DATAGRAMS_DROPPED,
        "counter",
        "UDP datagrams dropped instead of forwarded (truncated, or the send failed), by reason.",
    );
    for l in listeners.iter() {
        for reason in UdpDrop::ALL {
            w.sample(
                UDP_DATAGRAMS_DROPPED,
                &[("listener", &l.config.name), ("reason", reason.as_str())],
                l.counters.udp_dropped(reason),
            );
        }
    }
    routes(&mut w, &pools);
    w.out
}

/// The label of pool group `g` of a routed listener: `default` (its own backends) or the
/// route's index in file order.
fn route_label(g: usize) -> String {
    match g {
        0 => "default".to_string(),
        r => (r - 1).to_string(),
    }
}

/// TLS SNI routes (listeners with `[[listener.route]]` only): which route each backend serves
/// (an info gauge, to join with the per-backend families), and connections sent to each
/// route's backends (the sum of their `l4lb_backend_connections_total`, read at scrape).
fn routes(w: &mut Writer, pools: &[(&Arc<ListenerState>, Arc<Pool>)]) {
    let routed = || pools.iter().filter(|(l, _)| !l.config.routes.is_empty());
    w.family(
        BACKEND_ROUTE,
        "gauge",
        "Always 1: the SNI route (index in the file, or default) a backend of a routed listener serves.",
    );
    for (l, p) in routed() {
        for ((g, _), b) in l.config.all_backends().zip(p.backends()) {
            w.sample(
                BACKEND_ROUTE,
                &[
                    ("listener", &l.config.name),
                    ("backend", &b.name),
                    ("route", &route_label(g)),
                ],
                1,
            );
        }
    }
    w.family(
        ROUTE_CONNECTIONS,
        "counter",
        "Connections sent to the backends of an SNI route (index in the file, or default).",
    );
    for (l, p) in routed() {
        let mut totals = vec![0u64; l.config.routes.len() + 1];
        for ((g, _), b) in l.config.all_backends().zip(p.backends()) {
            if let Some(t) = totals.get_mut(g) {
                *t += b.total.load(Ordering::Relaxed);
            }
        }
        for (g, total) in totals.into_iter().enumerate() {
            w.sample(
                ROUTE_CONNECTIONS,
                &[("listener", &l.config.name), ("route", &route_label(g))],
                total,
            );
        }
    }
}

/// The workers' loop iteration times as one histogram (summed over workers) and the events
/// their `epoll_wait` calls returned.
fn worker_loop(w: &mut Writer, shared: &SharedState) {
    let t = shared.loops.totals();
    w.family(
        WORKER_LOOP,
        "histogram",
        "Run time of one event-loop iteration (from epoll_wait returning to the next call), summed over workers.",
    );
    let mut cumulative = 0;
    for (bound_us, n) in LOOP_BUCKETS_US.iter().zip(&t.buckets) {
        cumulative += n;
        let le = format!("{}", *bound_us as f64 / 1e6);
        w.sample(&format!("{WORKER_LOOP}_bucket"), &[("le", &le)], cumulative);
    }
    let count = t.count();
    w.sample(&format!("{WORKER_LOOP}_bucket"), &[("le", "+Inf")], count);
    w.sample(
        &format!("{WORKER_LOOP}_sum"),
        &[],
        format_args!("{:.6}", t.sum_ns as f64 / 1e9),
    );
    w.sample(&format!("{WORKER_LOOP}_count"), &[], count);
    w.family(
        WORKER_POLL_EVENTS,
        "counter",
        "Readiness events returned by the workers' epoll_wait calls (per iteration: divide by l4lb_worker_loop_seconds_count).",
    );
    w.sample(WORKER_POLL_EVENTS, &[], t.events);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::tests::shared_from;
    use crate::backend::AdminState;

    const CONFIG: &str = r#"
[runtime]
workers = 3
[[listener]]
name = "web"
protocol = "tcp"
bind = "127.0.0.1:8080"
balance = "round_robin"
backends = [ { addr = "127.0.0.1:81" }, { addr = "[::1]:82" } ]
[[listener]]
name = "dns"
protocol = "udp"
bind = "127.0.0.1:53"
balance = "five_tuple_hash"
backends = [ { addr = "127.0.0.1:5353" } ]
"#;

    fn label(v: &str) -> String {
        let mut out = String::new();
        push_label_value(&mut out, v);
        out
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(label("plain:80"), "plain:80");
        assert_eq!(label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }

    #[test]
    fn every_family_has_help_and_type_and_groups_its_samples() {
        let shared = shared_from(CONFIG);
        let text = render(&shared);
        assert!(text.ends_with('\n'));
        let mut seen: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        let mut histogram = false;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(!seen.contains(&name), "family {name} twice");
                seen.push(name.clone());
                current = Some(name);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut f = rest.split(' ');
                assert_eq!(f.next().map(str::to_string), current);
                let kind = f.next();
                assert!(
                    matches!(kind, Some("counter" | "gauge" | "histogram")),
                    "{line}"
                );
                histogram = kind == Some("histogram");
            } else {
                let mut name = line.split(['{', ' ']).next().unwrap();
                if histogram {
                    name = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or_else(|| panic!("histogram sample without suffix: {line}"));
                }
                assert_eq!(
                    Some(name),
                    current.as_deref(),
                    "sample outside its family: {line}"
                );
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        for name in [
            CONNECTIONS_ACCEPTED,
            CONNECTIONS_ACTIVE,
            CONNECTIONS_REJECTED,
            BACKEND_UP,
            BACKEND_CONNECTIONS_ACTIVE,
            BACKEND_CONNECTIONS_TOTAL,
            BACKEND_CONNECT_ERRORS,
            BACKEND_BYTES,
            UDP_SESSIONS_ACTIVE,
            CONFIG_RELOADS,
            WORKER_LOOP,
        ] {
            assert!(seen.iter().any(|s| s == name), "{name} missing");
        }
    }

    #[test]
    fn samples_read_the_counters() {
        let shared = shared_from(CONFIG);
        let web = shared.listener("web").unwrap();
        web.counters
            .worker(0)
            .accepted
            .fetch_add(3, Ordering::Relaxed);
        web.counters
            .worker(2)
            .accepted
            .fetch_add(4, Ordering::Relaxed);
        web.counters.worker(1).reject(RejectReason::Acl);
        web.active.store(2, Ordering::Relaxed);
        let b = web.find_backend("[::1]:82").unwrap();
        b.total.store(9, Ordering::Relaxed);
        b.bytes_to_client.store(1234, Ordering::Relaxed);
        shared
            .set_backend_admin("web", "127.0.0.1:81", AdminState::Disabled)
            .unwrap();
        shared.reloads_error.store(1, Ordering::Relaxed);
        let text = render(&shared);
        for line in [
            "l4lb_workers 3",
            "l4lb_connections_accepted_total{listener=\"web\"} 7",
            "l4lb_connections_accepted_total{listener=\"dns\"} 0",
            "l4lb_connections_active{listener=\"web\"} 2",
            "l4lb_connections_rejected_total{listener=\"web\",reason=\"acl\"} 1",
            "l4lb_connections_rejected_total{listener=\"dns\",reason=\"client_rate\"} 0",
            "l4lb_backend_up{listener=\"web\",backend=\"127.0.0.1:81\"} 0",
            "l4lb_backend_up{listener=\"web\",backend=\"[::1]:82\"} 1",
            "l4lb_backend_connections_total{listener=\"web\",backend=\"[::1]:82\"} 9",
            "l4lb_backend_bytes_total{listener=\"web\",backend=\"[::1]:82\",direction=\"to_client\"} 1234",
            "l4lb_backend_bytes_total{listener=\"dns\",backend=\"127.0.0.1:5353\",direction=\"to_backend\"} 0",
            "l4lb_udp_sessions_active{listener=\"dns\"} 0",
            "l4lb_config_reloads_total{result=\"ok\"} 0",
            "l4lb_config_reloads_total{result=\"error\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let reasons = text
            .lines()
            .filter(|l| l.starts_with("l4lb_connections_rejected_total{listener=\"dns\""))
            .count();
        assert_eq!(reasons, RejectReason::ALL.len());
    }

    #[test]
    fn loop_histogram_is_cumulative_and_sums_workers() {
        let shared = shared_from(CONFIG);
        shared.loops.worker(0).record(30_000, 4); // 30 µs
        shared.loops.worker(2).record(3_000_000, 2); // 3 ms
        let text = render(&shared);
        for want in [
            "l4lb_worker_loop_seconds_bucket{le=\"0.000025\"} 0",
            "l4lb_worker_loop_seconds_bucket{le=\"0.00005\"} 1",
            "l4lb_worker_loop_seconds_bucket{le=\"0.0025\"} 1",
            "l4lb_worker_loop_seconds_bucket{le=\"0.005\"} 2",
            "l4lb_worker_loop_seconds_bucket{le=\"1\"} 2",
            "l4lb_worker_loop_seconds_bucket{le=\"+Inf\"} 2",
            "l4lb_worker_loop_seconds_sum 0.003030",
            "l4lb_worker_loop_seconds_count 2",
            "l4lb_worker_poll_events_total 6",
        ] {
            assert!(text.lines().any(|l| l == want), "{want} missing in\n{text}");
        }
    }
}
