//! `GET /status`: the running configuration and live counts as JSON, written by hand (no
//! serde_json in the binary), plus the JSON string escaping the rest of the admin API uses.
//!
//! Control path: reads one snapshot of the listener set and of each listener's pool, and
//! the backend atomics, without blocking any worker. Shape (SPEC.md, "Admin HTTP API"):
//! `{"version", "uptime_s", "workers", "listeners": [{"name", "protocol", "bind", "balance",
//! "active", "backends": [{"addr", "weight", "effective_weight", "state", "active", "total"}]}]}`.
//! `effective_weight` is the weight the balancer uses now: below `weight` during a backend's
//! slow-start ramp (`slow_start_s`), rounded to hundredths.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::config::Protocol;
use crate::state::{ListenerState, SharedState};

/// Append `s` as a JSON string literal: quotes, backslashes and control characters escaped;
/// everything else (valid UTF-8 already) copied as is.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// What `"active"` means for a listener: open connections (TCP) or open sessions (UDP).
fn listener_active(l: &ListenerState) -> u64 {
    match l.config.protocol {
        Protocol::Tcp => l.active.load(Ordering::Relaxed),
        Protocol::Udp => l.udp_sessions.load(Ordering::Relaxed),
    }
}

/// The `/status` document, newline-terminated.
pub fn render(shared: &SharedState) -> String {
    let listeners = shared.listeners.load();
    let mut out = String::with_capacity(256 + listeners.len() * 512);
    out.push_str("{\"version\":");
    push_json_str(&mut out, env!("CARGO_PKG_VERSION"));
    let _ = write!(
        out,
        ",\"uptime_s\":{},\"workers\":{},\"listeners\":[",
        shared.started.elapsed().as_secs(),
        shared.workers
    );
    for (i, l) in listeners.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        push_json_str(&mut out, &l.config.name);
        out.push_str(",\"protocol\":");
        push_json_str(&mut out, l.config.protocol.as_str());
        out.push_str(",\"bind\":");
        push_json_str(&mut out, &l.config.bind.to_string());
        out.push_str(",\"balance\":");
        push_json_str(&mut out, l.config.balance.as_str());
        let _ = write!(out, ",\"active\":{},\"backends\":[", listener_active(l));
        let pool = l.pool.load();
        let now_us = crate::clock::monotonic_us();
        for (j, b) in pool.backends().iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str("{\"addr\":");
            push_json_str(&mut out, &b.name);
            let effective = b.effective_weight(now_us, pool.slow_start_us());
            let _ = write!(
                out,
                ",\"weight\":{},\"effective_weight\":{},\"state\":",
                b.weight(),
                (effective * 100.0).round() / 100.0
            );
            push_json_str(&mut out, b.state().as_str());
            let _ = write!(
                out,
                ",\"active\":{},\"total\":{}}}",
                b.active(),
                b.total.load(Ordering::Relaxed)
            );
        }
        out.push_str("]}");
    }
    out.push_str("]}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::tests::shared_from;
    use crate::backend::AdminState;

    fn json(s: &str) -> String {
        let mut out = String::new();
        push_json_str(&mut out, s);
        out
    }

    #[test]
    fn escapes_json_strings() {
        assert_eq!(json("plain"), "\"plain\"");
        assert_eq!(json("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(json("l1\nl2\r\t"), "\"l1\\nl2\\r\\t\"");
        assert_eq!(json("\u{0}\u{1f}\u{7f}"), "\"\\u0000\\u001f\\u007f\"");
        assert_eq!(json("é[::1]:80"), "\"é[::1]:80\"");
    }

    #[test]
    fn renders_the_spec_shape() {
        let shared = shared_from(
            r#"
[runtime]
workers = 2
[[listener]]
name = "web"
protocol = "tcp"
bind = "127.0.0.1:8080"
balance = "weighted_least_conn"
backends = [ { addr = "127.0.0.1:81", weight = 3 }, { addr = "[::1]:82" } ]
"#,
        );
        let l = shared.listener("web").unwrap();
        l.active.store(5, Ordering::Relaxed);
        let b = l.find_backend("127.0.0.1:81").unwrap();
        b.active.store(2, Ordering::Relaxed);
        b.total.store(40, Ordering::Relaxed);
        shared
            .set_backend_admin("web", "[::1]:82", AdminState::Drain)
            .unwrap();
        let text = render(&shared);
        let expected_tail = concat!(
            r#","workers":2,"listeners":[{"name":"web","protocol":"tcp","bind":"127.0.0.1:8080","#,
            r#""balance":"weighted_least_conn","active":5,"backends":["#,
            r#"{"addr":"127.0.0.1:81","weight":3,"effective_weight":3,"state":"up","active":2,"total":40},"#,
            r#"{"addr":"[::1]:82","weight":1,"effective_weight":1,"state":"drain","active":0,"total":0}]}]}"#,
            "\n"
        );
        let head = format!(
            "{{\"version\":\"{}\",\"uptime_s\":",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.starts_with(&head), "{text}");
        assert!(text.ends_with(expected_tail), "{text}");
    }
}
