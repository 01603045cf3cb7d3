//! The access log: why a TCP connection or a UDP session ended ([`End`], [`SessionEnd`]) and
//! the one line written for it when its listener has `access_log = true`, as HAProxy's
//! `option tcplog` or nginx's stream `access_log` would.
//!
//! Lines go through `log` at info level with target [`TARGET`] (`l4lb::access`), so `RUST_LOG`
//! selects them like any module (`RUST_LOG=info`, or `RUST_LOG=warn,l4lb::access=info` for
//! the access lines and warnings only). Format: `key=value` fields, one space apart, always
//! all of them and in this order (no value contains a space: listener names and backend
//! `addr`s are validated, addresses are `IP:port` / `[IPv6]:port`):
//!
//! ```text
//! TCP: listener=web client=192.0.2.7:51234 backend=10.0.0.1:80 duration_ms=1520
//!      bytes_to_backend=512 bytes_to_client=20480 end=finished
//!      (`end=refused` is followed by ` reason=<l4lb_connections_rejected_total reason>`)
//! UDP: listener=dns client=192.0.2.7:40000 backend=10.0.0.2:53 duration_ms=30012
//!      datagrams_to_backend=1 datagrams_to_client=1 bytes_to_backend=40 bytes_to_client=120
//!      end=idle_timeout
//! ```
//! (each one line in the log; wrapped here).
//!
//! Hot path, but once per connection or session end, never per read or datagram. The caller
//! tests the listener's `access_log` first, so with the log off the cost is that one bool;
//! with it on, the fields are written by `Display` straight into the logger's buffer (no
//! `String` is built here).

use std::fmt;
use std::net::SocketAddr;

use crate::metrics::RejectReason;

use super::udp::session::SessionStats;

/// The `log` target of every access line.
pub const TARGET: &str = "l4lb::access";

/// Why a TCP connection ended: the argument of `Worker::close`, its single exit, which also
/// decides from it whether the sockets are reset ([`End::resets`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions passed their EOF on.
    Finished,
    /// A reset or an I/O error on either side (or the PROXY header for the backend could
    /// not be sent).
    Reset,
    /// No byte either way for `idle_timeout_s`.
    IdleTimeout,
    /// The client sent nothing for `client_first_byte_timeout_ms`.
    FirstByteTimeout,
    /// Every connect attempt failed or timed out (`connect_retries` exhausted), or this
    /// process ran out of descriptors or memory for the connect.
    ConnectFailed,
    /// `accept_proxy_protocol`: no valid PROXY header in time (counted as `reason="acl"`).
    ProxyHeader,
    /// Refused with the reason it is counted under in `l4lb_connections_rejected_total`: at
    /// admission, after the client's PROXY header, or because no backend could take it.
    Refused(RejectReason),
    /// Still open when the worker stopped (drain timeout, second stop signal).
    Shutdown,
}

impl End {
    /// Whether both sockets are closed with a reset (SO_LINGER 0) rather than a FIN.
    pub fn resets(self) -> bool {
        match self {
            End::Reset | End::ConnectFailed | End::ProxyHeader | End::Refused(_) => true,
            End::Finished | End::IdleTimeout | End::FirstByteTimeout | End::Shutdown => false,
        }
    }

    /// Whether this end cuts a connection short by l4lb's own decision (a timeout or the
    /// drain), so that bytes still held must turn the close into a reset (SPEC: a cut stream
    /// must not look complete).
    pub fn cuts(self) -> bool {
        matches!(
            self,
            End::IdleTimeout | End::FirstByteTimeout | End::Shutdown
        )
    }

    /// The `end=` value.
    pub fn as_str(self) -> &'static str {
        match self {
            End::Finished => "finished",
            End::Reset => "reset",
            End::IdleTimeout => "idle_timeout",
            End::FirstByteTimeout => "first_byte_timeout",
            End::ConnectFailed => "connect_failed",
            End::ProxyHeader => "proxy_header",
            End::Refused(_) => "refused",
            End::Shutdown => "shutdown",
        }
    }
}

/// Why a UDP session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// No datagram either way for `idle_timeout_s`.
    IdleTimeout,
    /// The backend answered with an ICMP port (or host) unreachable.
    Refused,
    /// Receiving on the session's socket failed otherwise (local trouble, e.g. memory).
    Error,
    /// Its listener's socket closed: drain, worker stop, or the listener removed by a reload.
    Shutdown,
}

impl SessionEnd {
    /// The `end=` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEnd::IdleTimeout => "idle_timeout",
            SessionEnd::Refused => "refused",
            SessionEnd::Error => "error",
            SessionEnd::Shutdown => "shutdown",
        }
    }
}

/// The access line of one TCP connection.
#[derive(Debug, Clone, Copy)]
pub struct TcpLine<'a> {
    pub listener: &'a str,
    /// The client as balancing saw it (the source of its PROXY header, if it sent one).
    pub client: SocketAddr,
    /// The backend's `addr` as written in the config (the metrics label); `None` (`-`) when
    /// none was connected or being connected to.
    pub backend: Option<&'a str>,
    pub duration_ms: u64,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    pub end: End,
}

impl fmt::Display for TcpLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "listener={} client={} backend={} duration_ms={} bytes_to_backend={} \
             bytes_to_client={} end={}",
            self.listener,
            self.client,
            self.backend.unwrap_or("-"),
            self.duration_ms,
            self.bytes_to_backend,
            self.bytes_to_client,
            self.end.as_str()
        )?;
        if let End::Refused(reason) = self.end {
            write!(f, " reason={}", reason.as_str())?;
        }
        Ok(())
    }
}

/// The access line of one UDP session.
#[derive(Debug, Clone, Copy)]
pub struct UdpLine<'a> {
    pub listener: &'a str,
    pub client: SocketAddr,
    /// The backend's `addr` as written in the config.
    pub backend: &'a str,
    pub duration_ms: u64,
    /// Everything the session moved in its life.
    pub stats: SessionStats,
    pub end: SessionEnd,
}

impl fmt::Display for UdpLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "listener={} client={} backend={} duration_ms={} datagrams_to_backend={} \
             datagrams_to_client={} bytes_to_backend={} bytes_to_client={} end={}",
            self.listener,
            self.client,
            self.backend,
            self.duration_ms,
            self.stats.datagrams_to_backend,
            self.stats.datagrams_to_client,
            self.stats.bytes_to_backend,
            self.stats.bytes_to_client,
            self.end.as_str()
        )
    }
}

/// Write a TCP connection's line (the caller checked `access_log`).
pub fn tcp(line: &TcpLine<'_>) {
    log::info!(target: TARGET, "{line}");
}

/// Write a UDP session's line (the caller checked `access_log`).
pub fn udp(line: &UdpLine<'_>) {
    log::info!(target: TARGET, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_line(end: End, backend: Option<&str>) -> String {
        TcpLine {
            listener: "web",
            client: "192.0.2.7:51234".parse().unwrap(),
            backend,
            duration_ms: 1520,
            bytes_to_backend: 512,
            bytes_to_client: 20480,
            end,
        }
        .to_string()
    }

    #[test]
    fn tcp_line_has_every_field_in_order() {
        assert_eq!(
            tcp_line(End::Finished, Some("10.0.0.1:80")),
            "listener=web client=192.0.2.7:51234 backend=10.0.0.1:80 duration_ms=1520 \
             bytes_to_backend=512 bytes_to_client=20480 end=finished"
        );
    }

    #[test]
    fn no_backend_is_a_dash_and_refusals_name_the_metric_reason() {
        assert_eq!(
            tcp_line(End::Refused(RejectReason::Acl), None),
            "listener=web client=192.0.2.7:51234 backend=- duration_ms=1520 \
             bytes_to_backend=512 bytes_to_client=20480 end=refused reason=acl"
        );
        for reason in RejectReason::ALL {
            let line = tcp_line(End::Refused(reason), None);
            assert!(
                line.ends_with(&format!(" end=refused reason={}", reason.as_str())),
                "{line}"
            );
        }
    }

    #[test]
    fn ipv6_clients_are_bracketed() {
        let line = TcpLine {
            listener: "v6",
            client: "[2001:db8::7]:443".parse().unwrap(),
            backend: Some("backend.internal:80"),
            duration_ms: 0,
            bytes_to_backend: 0,
            bytes_to_client: 0,
            end: End::Reset,
        }
        .to_string();
        assert_eq!(
            line,
            "listener=v6 client=[2001:db8::7]:443 backend=backend.internal:80 duration_ms=0 \
             bytes_to_backend=0 bytes_to_client=0 end=reset"
        );
    }

    #[test]
    fn every_end_has_one_word_and_only_errors_reset() {
        let all = [
            (End::Finished, "finished", false),
            (End::Reset, "reset", true),
            (End::IdleTimeout, "idle_timeout", false),
            (End::FirstByteTimeout, "first_byte_timeout", false),
            (End::ConnectFailed, "connect_failed", true),
            (End::ProxyHeader, "proxy_header", true),
            (End::Refused(RejectReason::ClientRate), "refused", true),
            (End::Shutdown, "shutdown", false),
        ];
        for (end, word, resets) in all {
            assert_eq!((end.as_str(), end.resets()), (word, resets), "{end:?}");
            let line = tcp_line(end, None);
            assert_eq!(line.lines().count(), 1);
            assert!(line.contains(&format!(" end={word}")), "{line}");
        }
    }

    #[test]
    fn udp_line_has_every_field_in_order() {
        let line = UdpLine {
            listener: "dns",
            client: "192.0.2.7:40000".parse().unwrap(),
            backend: "10.0.0.2:53",
            duration_ms: 30012,
            stats: SessionStats {
                datagrams_to_backend: 1,
                bytes_to_backend: 40,
                datagrams_to_client: 2,
                bytes_to_client: 120,
            },
            end: SessionEnd::IdleTimeout,
        }
        .to_string();
        assert_eq!(
            line,
            "listener=dns client=192.0.2.7:40000 backend=10.0.0.2:53 duration_ms=30012 \
             datagrams_to_backend=1 datagrams_to_client=2 bytes_to_backend=40 \
             bytes_to_client=120 end=idle_timeout"
        );
        for (end, word) in [
            (SessionEnd::Refused, "refused"),
            (SessionEnd::Error, "error"),
            (SessionEnd::Shutdown, "shutdown"),
        ] {
            assert_eq!(end.as_str(), word);
        }
    }
}
