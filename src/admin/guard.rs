//! Who may change state through the admin API: the checks every POST passes before the router
//! looks at its path (SPEC.md, "Admin HTTP API").
//!
//! Control path, pure (no I/O). The threats: a web page in the operator's browser POSTing to
//! the admin port (cross-origin request: refused by `Origin`), the same through DNS rebinding
//! (a hostile name that resolves to the admin address: refused by `Host`, which then names
//! the hostile domain), and anyone else who can reach the port (refused without the bearer
//! token when `admin.token_file` is set). Order: 403 (Origin, Host) before 401 (token), so a
//! foreign page learns nothing about the token. GETs are not guarded: they change nothing.

use std::net::{IpAddr, SocketAddr};

use crate::config::AdminToken;

use super::http::{Request, Response};

/// `WWW-Authenticate` on a 401 (RFC 6750), so a client knows which scheme to use.
const BEARER_CHALLENGE: &[(&str, &str)] = &[("WWW-Authenticate", "Bearer realm=\"l4lb\"")];

/// What a POST is checked against: the configured bind, the token, and the address this
/// connection reached (for a wildcard bind, the address the client actually used).
#[derive(Debug, Clone, Copy)]
pub struct Guard<'a> {
    pub bind: SocketAddr,
    pub local: SocketAddr,
    pub token: Option<&'a AdminToken>,
}

impl Guard<'_> {
    /// `None` when the POST may go on; otherwise the 403 or 401 to answer.
    pub fn check_post(&self, req: &Request) -> Option<Response> {
        let Some(host) = req.host.as_deref() else {
            return Some(Response::error(403, "a POST needs a Host header"));
        };
        if !self.host_allowed(host) {
            return Some(Response::error(
                403,
                "Host must be the admin address or localhost (DNS rebinding?)",
            ));
        }
        if let Some(origin) = req.origin.as_deref() {
            if !same_origin(origin, host) {
                return Some(Response::error(
                    403,
                    "cross-origin POST refused: Origin is not this admin page",
                ));
            }
        }
        let token = self.token?;
        let presented = req.authorization.as_deref().and_then(bearer);
        match presented {
            Some(p) if token.matches(p.as_bytes()) => None,
            Some(_) => Some(Response {
                headers: BEARER_CHALLENGE,
                ..Response::error(401, "wrong bearer token")
            }),
            None => Some(Response {
                headers: BEARER_CHALLENGE,
                ..Response::error(401, "this POST needs Authorization: Bearer <token>")
            }),
        }
    }

    /// `localhost`, the bind IP, or the IP this connection reached, with our port (80 when
    /// the Host has none).
    fn host_allowed(&self, host: &str) -> bool {
        let Some((name, port)) = split_host(host) else {
            return false;
        };
        if port != self.local.port() && port != self.bind.port() {
            return false;
        }
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => ip == self.bind.ip() || ip == self.local.ip(),
            Err(_) => false,
        }
    }
}

/// `Host` as name (brackets removed from an IPv6 literal) and port (80 when absent).
fn split_host(host: &str) -> Option<(&str, u16)> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        match after {
            "" => (v6, None),
            _ => (v6, Some(after.strip_prefix(':')?)),
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    let port = match port {
        None => 80,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
        Some(_) => return None,
    };
    (!name.is_empty()).then_some((name, port))
}

/// Whether `origin` is `http://` + `host` (scheme and host compare case-insensitively, as
/// browsers serialize them in lower case while a Host header may differ in case).
fn same_origin(origin: &str, host: &str) -> bool {
    let Some(rest) = origin
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .and_then(|_| origin.get(7..))
    else {
        return false;
    };
    rest.eq_ignore_ascii_case(host)
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 6750).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>, origin: Option<&str>, auth: Option<&str>) -> Request {
        Request {
            method: "POST".into(),
            target: "/listeners/a/backends/b/drain".into(),
            host: host.map(Into::into),
            origin: origin.map(Into::into),
            authorization: auth.map(Into::into),
        }
    }

    fn status(g: &Guard<'_>, host: Option<&str>, origin: Option<&str>, auth: Option<&str>) -> u16 {
        g.check_post(&req(host, origin, auth))
            .map_or(200, |r| r.status)
    }

    fn guard<'a>(bind: &str, local: &str, token: Option<&'a AdminToken>) -> Guard<'a> {
        Guard {
            bind: bind.parse().unwrap(),
            local: local.parse().unwrap(),
            token,
        }
    }

    #[test]
    fn host_and_origin() {
        let g = guard("127.0.0.1:9090", "127.0.0.1:9090", None);
        assert_eq!(status(&g, Some("127.0.0.1:9090"), None, None), 200);
        assert_eq!(status(&g, Some("localhost:9090"), None, None), 200);
        assert_eq!(status(&g, Some("LocalHost:9090"), None, None), 200);
        let own = Some("http://127.0.0.1:9090");
        assert_eq!(status(&g, Some("127.0.0.1:9090"), own, None), 200);
        assert_eq!(
            status(
                &g,
                Some("localhost:9090"),
                Some("http://localhost:9090"),
                None
            ),
            200
        );
        // Cross-origin pages, and rebinding names.
        for (host, origin) in [
            (Some("127.0.0.1:9090"), Some("http://evil.example")),
            (Some("127.0.0.1:9090"), Some("null")),
            (Some("127.0.0.1:9090"), Some("https://127.0.0.1:9090")),
            (Some("127.0.0.1:9090"), Some("http://127.0.0.1:9091")),
            (Some("localhost:9090"), Some("http://127.0.0.1:9090")),
            (Some("evil.example:9090"), None),
            (Some("evil.example:9090"), Some("http://evil.example:9090")),
            (Some("127.0.0.2:9090"), None),
            (Some("127.0.0.1:9091"), None),
            (Some("127.0.0.1"), None),
            (Some("127.0.0.1:"), None),
            (Some("127.0.0.1:x"), None),
            (Some(""), None),
            (None, None),
        ] {
            assert_eq!(status(&g, host, origin, None), 403, "{host:?} {origin:?}");
        }
    }

    #[test]
    fn wildcard_and_ipv6_binds_and_port_80() {
        let g = guard("0.0.0.0:9090", "10.1.2.3:9090", None);
        assert_eq!(status(&g, Some("10.1.2.3:9090"), None, None), 200);
        assert_eq!(status(&g, Some("10.1.2.4:9090"), None, None), 403);
        let g = guard("[::1]:9090", "[::1]:9090", None);
        assert_eq!(
            status(&g, Some("[::1]:9090"), Some("http://[::1]:9090"), None),
            200
        );
        assert_eq!(status(&g, Some("[::1"), None, None), 403);
        assert_eq!(status(&g, Some("[::1]x"), None, None), 403);
        let g = guard("127.0.0.1:80", "127.0.0.1:80", None);
        assert_eq!(status(&g, Some("127.0.0.1"), None, None), 200);
        assert_eq!(
            status(&g, Some("localhost"), Some("http://localhost"), None),
            200
        );
    }

    #[test]
    fn bearer_token() {
        let token = AdminToken::new(b"s3cret-token");
        let g = guard("127.0.0.1:9090", "127.0.0.1:9090", Some(&token));
        let host = Some("127.0.0.1:9090");
        assert_eq!(status(&g, host, None, Some("Bearer s3cret-token")), 200);
        assert_eq!(status(&g, host, None, Some("bearer s3cret-token")), 200);
        for bad in [
            None,
            Some("Bearer"),
            Some("Bearer "),
            Some("Bearer s3cret-toke"),
            Some("Bearer s3cret-token2"),
            Some("Bearer S3CRET-TOKEN"),
            Some("Basic s3cret-token"),
            Some("s3cret-token"),
        ] {
            let r = g.check_post(&req(host, None, bad)).expect("refused");
            assert_eq!(r.status, 401, "{bad:?}");
            assert_eq!(r.headers, BEARER_CHALLENGE);
        }
        // A foreign page with the right token still gets 403: Origin is checked first.
        assert_eq!(
            status(
                &g,
                host,
                Some("http://evil.example"),
                Some("Bearer s3cret-token")
            ),
            403
        );
    }

    #[test]
    fn token_comparison() {
        let t = AdminToken::new(b"abc");
        assert!(t.matches(b"abc"));
        for bad in [&b""[..], b"ab", b"abcabc", b"abd", b"ABC", b"\0\0\0"] {
            assert!(!t.matches(bad), "{bad:?}");
        }
        assert!(!AdminToken::new(b"").matches(b""));
        assert_eq!(format!("{t:?}"), "AdminToken(<redacted>)");
    }
}
