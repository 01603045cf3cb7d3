//! The serde mirror of the TOML file: structure and types only, no meaning.
//!
//! Control path only (load and reload). Owns the shape of the file: every table has
//! `deny_unknown_fields`, so a misspelt key is an error naming its key path, never a silently
//! ignored setting. Values are kept wide and loose here (integers as `i64`, enumerations and
//! addresses as strings, required keys as `Option`) so that `validate.rs` can reject them with
//! a message in our words and the key path, instead of a serde message such as "expected u32".
//!
//! Errors: a TOML syntax error becomes `FILE: line L column C: MESSAGE`; a type error or an
//! unknown key becomes `FILE: KEY.PATH: MESSAGE`, with paths written as
//! `listener[0].backends[1].addr` (tables by name, array elements by index). Always one line.

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::ConfigError;

/// The whole file. Every top-level key is optional here; `validate.rs` decides what is required.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub runtime: Option<RawRuntime>,
    pub admin: Option<RawAdmin>,
    pub listener: Option<Vec<RawListener>>,
}

/// `[runtime]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRuntime {
    pub workers: Option<RawWorkers>,
    pub pin_cpus: Option<bool>,
    pub cpus: Option<Vec<i64>>,
    pub splice: Option<String>,
    pub max_connections: Option<i64>,
    pub drain_timeout_s: Option<i64>,
    pub user: Option<String>,
    pub control_socket: Option<String>,
}

/// `workers`: either a word (only `"auto"` is valid) or an integer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawWorkers {
    Word(String),
    Count(i64),
}

impl<'de> Deserialize<'de> for RawWorkers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WorkersVisitor;

        impl Visitor<'_> for WorkersVisitor {
            type Value = RawWorkers;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"auto\" or an integer")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawWorkers, E> {
                Ok(RawWorkers::Word(v.to_owned()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawWorkers, E> {
                Ok(RawWorkers::Count(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawWorkers, E> {
                // Larger than i64::MAX is out of range anyway; saturate so validation says so.
                Ok(RawWorkers::Count(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }

        deserializer.deserialize_any(WorkersVisitor)
    }
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub bind: Option<String>,
    pub token_file: Option<String>,
}

/// One `[[listener]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub bind: Option<String>,
    pub balance: Option<String>,
    pub connect_timeout_ms: Option<i64>,
    pub idle_timeout_s: Option<i64>,
    pub connect_retries: Option<i64>,
    pub max_connections: Option<i64>,
    pub max_conns_per_client: Option<i64>,
    pub conn_rate_per_client: Option<i64>,
    pub proxy_protocol: Option<String>,
    pub accept_proxy_protocol: Option<bool>,
    pub trusted_proxies: Option<Vec<String>>,
    pub client_first_byte_timeout_ms: Option<i64>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub access_log: Option<bool>,
    pub fin_timeout_s: Option<i64>,
    pub conn_rate_limit: Option<i64>,
    pub client_ipv4_prefix: Option<i64>,
    pub client_ipv6_prefix: Option<i64>,
    pub source: Option<Vec<String>>,
    pub backend_congestion_control: Option<String>,
    pub udp_responses: Option<i64>,
    pub slow_start_s: Option<i64>,
    pub backends: Option<Vec<RawBackend>>,
    pub health_check: Option<RawHealthCheck>,
    /// `[[listener.route]]` tables: TLS SNI routes.
    pub route: Option<Vec<RawRoute>>,
}

/// One `[[listener.route]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub sni: Option<Vec<String>>,
    pub balance: Option<String>,
    pub backends: Option<Vec<RawBackend>>,
}

/// One inline table of `backends = [...]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub addr: Option<String>,
    pub weight: Option<i64>,
    pub max_connections: Option<i64>,
    pub backup: Option<bool>,
}

/// `[listener.health_check]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    pub interval_ms: Option<i64>,
    pub timeout_ms: Option<i64>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
    pub send: Option<String>,
    pub expect: Option<String>,
}

/// Parse TOML text into the raw mirror. `path` only names the file in errors.
pub(crate) fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    let file = path.display().to_string();
    let deserializer = toml::Deserializer::parse(text).map_err(|e| ConfigError {
        file: file.clone(),
        path: String::new(),
        message: syntax_message(text, &e),
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key_path = key_path(e.path());
        let inner = e.into_inner();
        let message = one_line(&friendly(inner.message()));
        if key_path.is_empty() {
            // Nothing to point at by name (e.g. a type error on the document itself): fall back
            // to the position, which toml knows.
            let message = match inner.span() {
                Some(span) => format!("{}: {message}", position(text, span.start)),
                None => message,
            };
            ConfigError {
                file,
                path: String::new(),
                message,
            }
        } else {
            ConfigError {
                file,
                path: key_path,
                message,
            }
        }
    })
}

/// `line L column C: message` for a TOML syntax error (1-based, columns in characters).
fn syntax_message(text: &str, error: &toml::de::Error) -> String {
    let message = one_line(error.message());
    match error.span() {
        Some(span) => format!("{}: {message}", position(text, span.start)),
        None => message,
    }
}

/// `line L column C` of byte offset `offset` in `text`, both 1-based.
fn position(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    // A span may in theory start inside a multi-byte character; step back to a boundary.
    let mut start = offset;
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    format!("line {line} column {column}")
}

/// serde_path_to_error's path in our format: `listener[0].backends[1].addr`; empty at the root.
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;

    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// Reword serde's messages for people who write TOML, not Rust: "i64" means an integer,
/// "struct RawListener" means a table, and an unknown field is an unknown key.
fn friendly(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // "unknown field `x`, expected one of `a`, `b`" -> "unknown key, expected one of ..."
        return match rest.split_once("`, ") {
            Some((_, expected)) => format!("unknown key, {}", expected.replace('`', "")),
            None => "unknown key".to_owned(),
        };
    }
    let mut out = message.to_owned();
    for (from, to) in [
        ("expected i64", "expected an integer"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        ("expected struct RawConfig", "expected a table"),
        ("expected struct RawRuntime", "expected a table"),
        ("expected struct RawAdmin", "expected a table"),
        ("expected struct RawListener", "expected a table"),
        ("expected struct RawBackend", "expected a table"),
        ("expected struct RawHealthCheck", "expected a table"),
        ("invalid type: map", "invalid type: table"),
        ("invalid type: sequence", "invalid type: array"),
    ] {
        out = out.replace(from, to);
    }
    out
}

/// Collapse a message onto one line: the error contract is one line per problem.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match parse(text, Path::new("conf/x.toml")) {
            Ok(raw) => panic!("expected an error, got {raw:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn positions_are_one_based_in_characters() {
        assert_eq!(position("abc", 0), "line 1 column 1");
        assert_eq!(position("a\nbc", 3), "line 2 column 2");
        assert_eq!(position("é\nxé", 5), "line 2 column 2");
    }

    #[test]
    fn empty_file_parses_to_nothing() {
        let raw = parse("", Path::new("x.toml")).unwrap();
        assert!(raw.runtime.is_none() && raw.admin.is_none() && raw.listener.is_none());
    }

    #[test]
    fn messages_are_one_line() {
        for text in [
            "[runtime\n",
            "a = \n",
            "[[listener]]\nname = \"a\"\nname = \"b\"\n",
        ] {
            let e = err(text);
            assert!(!e.contains('\n'), "{e:?}");
            assert!(e.starts_with("conf/x.toml: line "), "{e:?}");
        }
    }
}
