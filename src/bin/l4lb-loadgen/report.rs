//! The end-of-run summary (text and one-line JSON) and the per-second progress line.
//!
//! Control path. Pure formatting: the driver hands in merged [`Stats`] and the run's facts;
//! nothing here does I/O, so the formats are unit-tested.
//!
//! The JSON line is [`Summary`] serialized by serde_json; the field order is the output order,
//! which scripts/lib.sh `jget` (a sed expression over the compact line) and the tests rely on.
//! Floats keep six decimals with trailing zeros dropped (`1.5`, `2`), as the summary always
//! printed them.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::net::ErrKind;
use crate::opts::{ClientOpts, Mode};
use crate::stats::Stats;

/// Everything the summary prints, computed once; serialized as is for `--json` (fields in
/// output order; optional ones left out when absent or zero).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub mode: &'static str,
    pub target: String,
    pub conns: usize,
    pub threads: usize,
    pub size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<&'static str>,
    /// Number of --sources addresses (0: kernel-chosen).
    #[serde(skip_serializing_if = "is_zero")]
    pub sources: usize,
    #[serde(serialize_with = "fixed6")]
    pub duration_s: f64,
    pub transactions: u64,
    #[serde(serialize_with = "fixed6")]
    pub rate: f64,
    #[serde(rename = "rate_unit")]
    pub unit: &'static str,
    pub bytes: u64,
    #[serde(serialize_with = "fixed6")]
    pub gbit_s: f64,
    /// By kind, in `ErrKind::ALL` order; serialized by name, then `total`.
    #[serde(serialize_with = "errors_by_name")]
    pub errors: [u64; ErrKind::COUNT],
    /// p50, p90, p99, p99.9, max, in microseconds.
    #[serde(serialize_with = "percentiles")]
    pub latency_us: [u64; 5],
    pub samples: u64,
    /// `hold`: its fields go at the top level of the JSON object.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldSummary>,
    /// `tcp-crr --http`: responses per backend, sorted by name (a JSON object).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "backends_by_name"
    )]
    pub backends: Option<Vec<(String, u64)>>,
    /// Workers that did not finish within the grace period (their numbers are missing).
    #[serde(skip_serializing_if = "is_zero")]
    pub missing_threads: usize,
}

#[derive(Debug, Serialize)]
pub struct HoldSummary {
    pub opened: u64,
    pub verified: u64,
    #[serde(serialize_with = "fixed6")]
    pub open_s: f64,
    #[serde(serialize_with = "fixed6")]
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
    pub fn json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
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

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A float rounded to six decimals; integral values as integers (`2`, not `2.0`), non-finite
/// ones (a rate over a zero duration) as `0`. Values below 0.00001 come out in exponent form
/// (`8e-6`), the one place where the line differs from the old hand-written one.
fn fixed6<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if !v.is_finite() {
        return s.serialize_u64(0);
    }
    let r = (v * 1e6).round() / 1e6;
    // Below 2^53 every integer is exact in an f64, so the cast loses nothing.
    if r.fract() == 0.0 && r.abs() < 9.0e15 {
        return s.serialize_i64(r as i64);
    }
    s.serialize_f64(r)
}

fn errors_by_name<S: Serializer>(e: &[u64; ErrKind::COUNT], s: S) -> Result<S::Ok, S::Error> {
    let total: u64 = e.iter().sum();
    s.collect_map(
        ErrKind::ALL
            .iter()
            .map(|k| (k.name(), e[k.index()]))
            .chain([("total", total)]),
    )
}

fn percentiles<S: Serializer>(l: &[u64; 5], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(["p50", "p90", "p99", "p999", "max"].iter().zip(l))
}

fn backends_by_name<S: Serializer>(
    b: &Option<Vec<(String, u64)>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match b {
        Some(b) => s.collect_map(b.iter().map(|(name, n)| (name, n))),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            mode: "tcp-crr-http",
            target: "127.0.0.1:8080".to_string(),
            conns: 4,
            threads: 2,
            size: 1,
            direction: None,
            sources: 0,
            duration_s: 1.000_000_4,
            transactions: 1234,
            rate: 1233.999,
            unit: "conn/s",
            bytes: 98_765,
            gbit_s: 0.000_790_123_456_7,
            errors: [0; ErrKind::COUNT],
            latency_us: [10, 20, 30, 40, 50],
            samples: 1234,
            hold: None,
            backends: None,
            missing_threads: 0,
        }
    }

    /// The line as the hand-written writer before serde_json printed it (scripts/lib.sh
    /// `jget` and the tests read it): same keys, same order, same numbers.
    #[test]
    fn json_line_is_unchanged_without_optional_fields() {
        let want = concat!(
            r#"{"mode":"tcp-crr-http","target":"127.0.0.1:8080","conns":4,"threads":2,"size":1,"#,
            r#""duration_s":1,"transactions":1234,"rate":1233.999,"rate_unit":"conn/s","#,
            r#""bytes":98765,"gbit_s":0.00079,"errors":{"connect_refused":0,"connect_timeout":0,"#,
            r#""reset":0,"timeout":0,"short_read":0,"other":0,"total":0},"#,
            r#""latency_us":{"p50":10,"p90":20,"p99":30,"p999":40,"max":50},"samples":1234}"#
        );
        assert_eq!(summary().json().unwrap(), want);
    }

    #[test]
    fn json_line_is_unchanged_with_every_optional_field() {
        let s = Summary {
            direction: Some("both"),
            sources: 3,
            errors: [1, 2, 3, 4, 5, 6],
            hold: Some(HoldSummary {
                opened: 500,
                verified: 499,
                open_s: 0.25,
                hold_s: 2.0,
            }),
            backends: Some(vec![
                ("127.0.0.1:9001".to_string(), 7),
                ("a\"b\\c\n\u{1}".to_string(), 3),
            ]),
            missing_threads: 1,
            ..summary()
        };
        let want = concat!(
            r#"{"mode":"tcp-crr-http","target":"127.0.0.1:8080","conns":4,"threads":2,"size":1,"#,
            r#""direction":"both","sources":3,"#,
            r#""duration_s":1,"transactions":1234,"rate":1233.999,"rate_unit":"conn/s","#,
            r#""bytes":98765,"gbit_s":0.00079,"errors":{"connect_refused":1,"connect_timeout":2,"#,
            r#""reset":3,"timeout":4,"short_read":5,"other":6,"total":21},"#,
            r#""latency_us":{"p50":10,"p90":20,"p99":30,"p999":40,"max":50},"samples":1234,"#,
            r#""opened":500,"verified":499,"open_s":0.25,"hold_s":2,"#,
            r#""backends":{"127.0.0.1:9001":7,"a\"b\\c\n\u0001":3},"missing_threads":1}"#
        );
        assert_eq!(s.json().unwrap(), want);
    }

    #[test]
    fn floats_keep_six_decimals() {
        let line = |v: f64| {
            Summary {
                rate: v,
                ..summary()
            }
            .json()
            .unwrap()
        };
        let rate = |v: f64| {
            let l = line(v);
            let at = l.find("\"rate\":").unwrap() + 7;
            let end = at + l[at..].find(',').unwrap();
            l[at..end].to_string()
        };
        assert_eq!(rate(1.5), "1.5");
        assert_eq!(rate(2.0), "2");
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(f64::NAN), "0");
        assert_eq!(rate(f64::INFINITY), "0");
        assert_eq!(rate(12_345.678_901_2), "12345.678901");
        assert_eq!(rate(0.000_016_4), "0.000016");
        assert_eq!(rate(0.000_000_4), "0");
        // The one change from the hand-written writer: below 0.00001 serde_json writes the
        // same number in exponent form (it printed 0.000008); jget, awk, printf and sort -g
        // read both alike.
        assert_eq!(rate(0.000_008), "8e-6");
        assert_eq!(rate(98_765_432.1), "98765432.1");
    }
}
