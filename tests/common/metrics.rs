//! The one reader of the admin API's Prometheus text (format 0.0.4) for every test, TCP and
//! UDP: `Scrape::parse` checks a whole page strictly (every line valid, every sample's family
//! with `# HELP` and `# TYPE`), `metric` reads one sample out of a page, and `metric_at` /
//! `try_metric_at` scrape and read in one step.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::http::scrape;

/// One sample line: `name{labels} value`.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// Whether this is `name` with exactly `labels` (in any order).
    fn is(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name
            && self.labels.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| self.labels.iter().any(|(sk, sv)| sk == k && sv == v))
    }
}

/// A whole `/metrics` page, checked.
#[derive(Debug)]
pub struct Scrape {
    pub help: HashMap<String, String>,
    pub types: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parse, panicking on any line that is not valid text format 0.0.4, and check that every
    /// sample's metric has both `# HELP` and `# TYPE`.
    pub fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape {
            help: HashMap::new(),
            types: HashMap::new(),
            samples: Vec::new(),
        };
        for (n, line) in text.lines().enumerate() {
            let fail = |why: &str| -> ! { panic!("/metrics line {}: {why}: {line:?}", n + 1) };
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or_else(|| fail("HELP"));
                if scrape.help.insert(name.into(), help.into()).is_some() {
                    fail("second HELP");
                }
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| fail("TYPE"));
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    fail("unknown type");
                }
                if scrape.types.insert(name.into(), kind.into()).is_some() {
                    fail("second TYPE");
                }
            } else if line.starts_with('#') {
                // Other comments are allowed.
            } else {
                let sample = parse_sample(line).unwrap_or_else(|e| fail(&e));
                // A histogram's samples are its name with `_bucket`, `_sum` or `_count`.
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|s| sample.name.strip_suffix(s))
                    .find(|f| scrape.types.get(*f).is_some_and(|t| t == "histogram"))
                    .unwrap_or(&sample.name);
                if !scrape.help.contains_key(family) || !scrape.types.contains_key(family) {
                    fail("sample before (or without) its HELP and TYPE");
                }
                scrape.samples.push(sample);
            }
        }
        scrape
    }

    /// The value of the sample with exactly these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.is(name, labels))
            .map(|s| s.value)
    }

    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }
}

/// The value of sample `name` with exactly `labels` (any order) in Prometheus text `text`.
/// Lenient where `Scrape::parse` is strict: a line it cannot read is passed over.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| parse_sample(l).ok())
        .find(|s| s.is(name, labels))
        .map(|s| s.value)
}

/// Scrape `admin` and read one sample; panics (with the page) when either fails.
pub fn metric_at(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = scrape(admin).unwrap_or_else(|e| panic!("GET /metrics on {admin}: {e}"));
    metric(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
}

/// `metric_at` for a wait loop: `None` when the scrape fails or the sample is missing.
pub fn try_metric_at(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape(admin)
        .ok()
        .and_then(|text| metric(&text, name, labels))
}

/// Parse `k="v",...}` (after the opening brace): the labels and the bytes used, brace included.
fn parse_labels(text: &str) -> Result<(Vec<(String, String)>, usize), String> {
    let mut labels = Vec::new();
    let mut chars = text.char_indices();
    let mut key = String::new();
    loop {
        match chars.next() {
            Some((i, '}')) if key.is_empty() && labels.is_empty() => return Ok((labels, i + 1)),
            Some((_, '=')) if !key.is_empty() => {}
            Some((_, c)) if c.is_ascii_alphanumeric() || c == '_' => {
                key.push(c);
                continue;
            }
            other => return Err(format!("bad label name at {other:?}")),
        }
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err("label value must be quoted".into());
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some((_, '"')) => break,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) | None => return Err("unterminated label value".into()),
                Some((_, c)) => value.push(c),
            }
        }
        labels.push((std::mem::take(&mut key), value));
        match chars.next() {
            Some((_, ',')) => {}
            Some((i, '}')) => return Ok((labels, i + 1)),
            other => return Err(format!("expected , or }} after a label, got {other:?}")),
        }
    }
}

/// One sample line: name, optional labels, value, optional timestamp, nothing else.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, used) = parse_labels(after)?;
        labels = parsed;
        rest = &after[used..];
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse::<f64>()
            .map_err(|e| format!("bad value {v:?}: {e}"))?,
    };
    // An optional timestamp, then nothing.
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}
