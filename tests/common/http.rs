//! The tests' client of the admin API: one HTTP/1.1 request per connection (the server closes
//! after one), `/metrics` as text, and `/status` parsed by serde_json with a lookup of one
//! backend in it.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use super::client::read_until_eof;
use super::deadline::IO_TIMEOUT;

/// `method path` to the admin API at `admin`, with `extra` header lines (each ending in CRLF)
/// after Host and User-Agent: (status, head with its last CRLF, body).
pub fn http(
    admin: SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
) -> io::Result<(u16, String, String)> {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nUser-Agent: l4lb-test\r\n{extra}\r\n"
    );
    raw_request(admin, req.as_bytes())
}

/// Send `bytes` as they are and read the whole response: (status, head, body).
pub fn raw_request(admin: SocketAddr, bytes: &[u8]) -> io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(bytes)?;
    let out = read_until_eof(&mut s, IO_TIMEOUT)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no header end in {text:?}")))?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {text:?}")))?;
    Ok((status, format!("{head}\r\n"), body.to_string()))
}

/// The body of `GET path`, an error unless the answer is 200.
fn get_ok(admin: SocketAddr, path: &str) -> io::Result<String> {
    match http(admin, "GET", path, "")? {
        (200, _, body) => Ok(body),
        (_, head, body) => Err(io::Error::other(format!(
            "bad {path} response: {head}{body}"
        ))),
    }
}

/// `GET /metrics`: the body.
pub fn scrape(admin: SocketAddr) -> io::Result<String> {
    get_ok(admin, "/metrics")
}

/// `GET /status`, parsed (panics unless it answers 200 with JSON).
pub fn status_json(admin: SocketAddr) -> Value {
    let body = get_ok(admin, "/status").unwrap_or_else(|e| panic!("GET /status: {e}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

/// The first backend with this `addr` in a `/status` listener, or in any listener of a whole
/// `/status` (panics if there is none).
pub fn backend_in(status: &Value, addr: impl std::fmt::Display) -> &Value {
    let addr = addr.to_string();
    let listeners = match status.get("listeners") {
        Some(Value::Array(ls)) => ls.iter().collect(),
        _ => vec![status],
    };
    listeners
        .into_iter()
        .filter_map(|l| l["backends"].as_array())
        .flatten()
        .find(|b| b["addr"] == addr.as_str())
        .unwrap_or_else(|| panic!("no backend {addr} in {status}"))
}

/// An object's keys in the order the server wrote them (serde_json's `preserve_order`).
pub fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}
