//! The end-of-run summary (text and one-line JSON) and the per-second progress line.
//!
//! Control path. Pure formatting: the driver hands in merged [`Stats`] and the run's facts;
//! nothing here does I/O, so the formats are unit-tested. The JSON is written by hand (no
//! serde_json): flat numbers, two small objects, strings escaped.

use std::fmt::Write as _;
use std::time::Duration;

use crate::net::ErrKind;
use crate::opts::{ClientOpts, Mode};
use crate::stats::Stats;

/// Everything the summary prints, computed once.
#[derive(Debug)]
pub struct Summary {
    pub mode: &'static str,
    pub unit: &'static str,
    pub target: String,
    pub conns: usize,
    pub threads: usize,
    pub size: usize,
    /// Number of --sources addresses (0: kernel-chosen).
    pub sources: usize,
    pub direction: Option<&'static str>,
    pub duration_s: f64,
    pub transactions: u64,
    pub rate: f64,
    pub bytes: u64,
    pub gbit_s: f64,
    pub errors: [u64; ErrKind::COUNT],
    /// p50, p90, p99, p99.9, max, in microseconds.
    pub latency_us: [u64; 5],
    pub samples: u64,
    pub hold: Option<HoldSummary>,
    pub backends: Option<Vec<(String, u64)>>,
    /// Workers that did not finish within the grace period (their numbers are missing).
    pub missing_threads: usize,
}

#[derive(Debug)]
pub struct HoldSummary {
    pub opened: u64,
    pub verified: u64,
    pub open_s: f64,
    pub hold_s: f64,
}

impl Summary {
    pub fn new(opts: &ClientOpts, st: &Stats, elapsed: Duration, missing: usize) -> Summary {
        let duration_s = elapsed.as_secs_f64();
        let per_s = |n: f64, d: f64| if d > 0.0 { n / d } else { 0.0 };
        let h = &st.hist;
        let q = |x: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(x)
            }
        };
        let latency_us = [
            q(0.50),
            q(0.90),
            q(0.99),
            q(0.999),
            if h.is_empty() { 0 } else { h.max() },
        ];
        let (hold, rate) = match opts.mode {
            Mode::Hold(ho) => {
                let open_s = st.open_time.as_secs_f64();
                let hold_s = ho.hold_s.unwrap_or(opts.duration.as_secs_f64());
                (
                    Some(HoldSummary {
                        opened: st.opened,
                        verified: st.verified,
                        open_s,
                        hold_s,
                    }),
                    per_s(st.opened as f64, open_s),
                )
            }
            _ => (None, per_s(st.transactions as f64, duration_s)),
        };
        let backends = match opts.mode {
            Mode::TcpCrr { http: true } => {
                let mut b: Vec<(String, u64)> = st
                    .backends
                    .iter()
                    .map(|(n, c)| (String::from_utf8_lossy(n).into_owned(), *c))
                    .collect();
                b.sort();
                Some(b)
            }
            _ => None,
        };
        Summary {
            mode: opts.mode.name(),
            unit: opts.mode.rate_unit(),
            target: opts.target.to_string(),
            conns: opts.conns,
            threads: opts.threads,
            size: opts.size,
            sources: opts.sources.as_ref().map_or(0, |s| s.len()),
            direction: match opts.mode {
                Mode::TcpStream { direction } => Some(direction.as_str()),
                _ => None,
            },
            duration_s,
            transactions: st.transactions,
            rate,
            bytes: st.bytes,
            gbit_s: per_s(st.bytes as f64 * 8.0, duration_s) / 1e9,
            errors: st.errors,
            latency_us,
            samples: h.len(),
            hold,
            backends,
            missing_threads: missing,
        }
    }

    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// The human summary, several lines, each `label  values`.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let mut extra = self
            .direction
            .map(|d| format!(" direction={d}"))
            .unwrap_or_default();
        if self.sources > 0 {
            let _ = write!(extra, " sources={}", self.sources);
        }
        let _ = writeln!(
            s,
            "== {} {} conns={} threads={} size={}{} duration={:.2}s",
            self.mode, self.target, self.conns, self.threads, self.size, extra, self.duration_s
        );
        if let Some(h) = &self.hold {
            let _ = writeln!(
                s,
                "hold          opened={}/{} in {:.3}s ({:.0} conn/s), held {:.1}s, verified={}/{}",
                h.opened, self.conns, h.open_s, self.rate, h.hold_s, h.verified, self.conns
            );
        } else {
            let _ = writeln!(
                s,
                "transactions  {}  rate {:.1} {}",
                self.transactions, self.rate, self.unit
            );
        }
        let _ = writeln!(
            s,
            "throughput    {} bytes  {:.3} Gbit/s",
            self.bytes, self.gbit_s
        );
        let mut kinds = String::new();
        for k in ErrKind::ALL {
            let _ = write!(kinds, " {}={}", k.name(), self.errors[k.index()]);
        }
        let _ = writeln!(
            s,
            "errors        {} ({})",
            self.error_total(),
            kinds.trim_start()
        );
        let label = if self.hold.is_some() {
            "connect_us"
        } else {
            "latency_us"
        };
        let [p50, p90, p99, p999, max] = self.latency_us;
        let _ = writeln!(
            s,
            "{label:<14}p50={p50} p90={p90} p99={p99} p99.9={p999} max={max} (samples={})",
            self.samples
        );
        if let Some(b) = &self.backends {
            let total: u64 = b.iter().map(|(_, n)| n).sum();
            for (name, n) in b {
                let pct = if total > 0 {
                    *n as f64 * 100.0 / total as f64
                } else {
                    0.0
                };
                let _ = writeln!(s, "backend       {name}  responses={n} ({pct:.1}%)");
            }
            if b.is_empty() {
                let _ = writeln!(s, "backend       (no response named a backend)");
            }
        }
        if self.missing_threads > 0 {
            let _ = writeln!(
                s,
                "warning       {} worker(s) did not stop in time; their numbers are missing",
                self.missing_threads
            );
        }
        s
    }

    /// One JSON object, no newline inside.
    pub fn json(&self) -> String {
        let mut s = String::with_capacity(512);
        s.push('{');
        let _ = write!(
            s,
            "\"mode\":{},\"target\":{},\"conns\":{},\"threads\":{},\"size\":{},",
            json_str(self.mode),
            json_str(&self.target),
            self.conns,
            self.threads,
            self.size
        );
        if let Some(d) = self.direction {
            let _ = write!(s, "\"direction\":{},", json_str(d));
        }
        if self.sources > 0 {
            let _ = write!(s, "\"sources\":{},", self.sources);
        }
        let _ = write!(
            s,
            "\"duration_s\":{},\"transactions\":{},\"rate\":{},\"rate_unit\":{},\"bytes\":{},\"gbit_s\":{},",
            json_f64(self.duration_s),
            self.transactions,
            json_f64(self.rate),
            json_str(self.unit),
            self.bytes,
            json_f64(self.gbit_s)
        );
        s.push_str("\"errors\":{");
        for k in ErrKind::ALL {
            let _ = write!(s, "\"{}\":{},", k.name(), self.errors[k.index()]);
        }
        let _ = write!(s, "\"total\":{}}},", self.error_total());
        let [p50, p90, p99, p999, max] = self.latency_us;
        let _ = write!(
            s,
            "\"latency_us\":{{\"p50\":{p50},\"p90\":{p90},\"p99\":{p99},\"p999\":{p999},\"max\":{max}}},\"samples\":{}",
            self.samples
        );
        if let Some(h) = &self.hold {
            let _ = write!(
                s,
                ",\"opened\":{},\"verified\":{},\"open_s\":{},\"hold_s\":{}",
                h.opened,
                h.verified,
                json_f64(h.open_s),
                json_f64(h.hold_s)
            );
        }
        if let Some(b) = &self.backends {
            s.push_str(",\"backends\":{");
            for (i, (name, n)) in b.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                let _ = write!(s, "{}:{}", json_str(name), n);
            }
            s.push('}');
        }
        if self.missing_threads > 0 {
            let _ = write!(s, ",\"missing_threads\":{}", self.missing_threads);
        }
        s.push('}');
        s
    }
}

/// The per-second progress line.
pub fn progress_line(
    mode: &Mode,
    elapsed: Duration,
    d_tx: u64,
    d_bytes: u64,
    dt: f64,
    errors: u64,
    opened: u64,
) -> String {
    let per_s = |n: u64| if dt > 0.0 { n as f64 / dt } else { 0.0 };
    match mode {
        Mode::Hold(_) => format!(
            "[{:>6.1}s] opened={} verified={} errors={}",
            elapsed.as_secs_f64(),
            opened,
            d_tx,
            errors
        ),
        _ => format!(
            "[{:>6.1}s] {:>10.0} {:<8} {:>8.3} Gbit/s  errors={}",
            elapsed.as_secs_f64(),
            per_s(d_tx),
            mode.rate_unit(),
            per_s(d_bytes) * 8.0 / 1e9,
            errors
        ),
    }
}

fn json_f64(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        "0".to_string()
    }
}

fn json_str(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_and_numbers() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        assert_eq!(json_f64(1.5), "1.5");
        assert_eq!(json_f64(2.0), "2");
        assert_eq!(json_f64(0.0), "0");
        assert_eq!(json_f64(f64::NAN), "0");
    }
}
