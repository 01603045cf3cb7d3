//! The admin API's `/metrics`: `scrape` fetches it, `metric` reads one sample out of it.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::client::read_until_eof;
use super::deadline::IO_TIMEOUT;

/// `GET /metrics` from the admin API at `admin`; the body (the server closes after one).
pub fn scrape(admin: SocketAddr) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes())?;
    let out = read_until_eof(&mut s, IO_TIMEOUT)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(io::Error::other(format!("bad /metrics response: {text:?}"))),
    }
}

/// The value of sample `name` with exactly `labels` (any order) in Prometheus text `text`.
/// Label values are compared as written (no escapes: addresses and names only).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, mut got) = match series.split_once('{') {
                Some((n, rest)) => {
                    let inner = rest.strip_suffix('}')?;
                    let got: Vec<String> = inner
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|p| format!("{}\"", p.trim_end_matches('"')))
                        .collect();
                    (n, got)
                }
                None => (series, Vec::new()),
            };
            got.sort();
            (n == name && got == want).then(|| value.parse().ok())?
        })
}
