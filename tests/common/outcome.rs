//! How one connection through the balancer to `id` backends ended: served (by which backend)
//! or refused.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};

use super::client::{connect, connect_from, first_read, FirstRead};
use super::deadline::{IO_TIMEOUT, REFUSAL_TIMEOUT};

/// How one connection attempt through the balancer to `id` backends ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded: the backend's id line.
    Served(String),
    /// Accepted and closed (reset or EOF) without any backend data.
    Refused,
}

/// Connect from `src` (or the default source) and classify: served by which backend, or
/// refused. Panics on anything else (timeouts, partial ids, connect errors other than reset).
pub fn attempt(lb: SocketAddr, src: Option<IpAddr>) -> Outcome {
    attempt_keep(lb, src).0
}

/// Like `attempt`, and keep the connection open when it was served.
pub fn attempt_keep(lb: SocketAddr, src: Option<IpAddr>) -> (Outcome, Option<TcpStream>) {
    let conn = match src {
        Some(ip) => connect_from(ip, lb),
        None => connect(lb),
    };
    let mut s = match conn {
        Ok(s) => s,
        // The balancer's reset can beat the end of our connect(): a refusal as well.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (Outcome::Refused, None),
        Err(e) => panic!("connect to l4lb {lb} from {src:?}: {e}"),
    };
    match attempt_on(&mut s) {
        Outcome::Refused => (Outcome::Refused, None),
        served => (served, Some(s)),
    }
}

/// Classify an already connected stream (see `attempt`).
pub fn attempt_on(s: &mut TcpStream) -> Outcome {
    match first_read(s, REFUSAL_TIMEOUT) {
        FirstRead::Eof | FirstRead::Reset => Outcome::Refused,
        FirstRead::Data(mut d) => {
            while !d.ends_with(b"\n") {
                match first_read(s, IO_TIMEOUT) {
                    FirstRead::Data(more) => d.extend_from_slice(&more),
                    other => panic!("id line cut short: {d:?} then {other:?}"),
                }
            }
            d.pop();
            Outcome::Served(String::from_utf8_lossy(&d).into_owned())
        }
        FirstRead::TimedOut => {
            panic!("no id and no refusal within {REFUSAL_TIMEOUT:?}")
        }
        FirstRead::Error(e) => panic!("read error: {e}"),
    }
}

/// The id of the backend a fresh connection reached (panics if refused).
pub fn served_by(lb: SocketAddr, src: Option<IpAddr>) -> String {
    match attempt(lb, src) {
        Outcome::Served(id) => id,
        Outcome::Refused => panic!("connection from {src:?} through {lb} was refused"),
    }
}
