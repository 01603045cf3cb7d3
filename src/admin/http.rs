//! The HTTP/1.1 framing of the admin API, without I/O: parse a request out of the bytes read
//! so far, serialize a response, decode percent-escapes in a path segment.
//!
//! Control path. Invariants: nothing here panics on any input (every index is checked, every
//! number parsed with overflow checks); every malformed request maps to a 4xx [`Response`];
//! a request is never larger than [`MAX_REQUEST`] bytes, head and body together.

use std::fmt::Write as _;

/// The most bytes one request may take, head and body: the admin API's requests carry no
/// body, and 64 KiB is far above any header block a real client sends (curl: ~100 bytes,
/// Prometheus: ~300), yet small enough that a flood of connections holds little memory.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Header slots offered to httparse; a request with more is refused (431). Real clients
/// send fewer than ten.
const MAX_HEADERS: usize = 32;

/// A request line and what the router needs of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    pub method: String,
    /// The request target as sent (origin form: path and optional query).
    pub target: String,
    /// The headers the POST guard reads (`guard.rs`); `None` when absent. A repeated one
    /// makes the request malformed (400), so no client can smuggle a second value past it.
    pub host: Option<String>,
    pub origin: Option<String>,
    pub authorization: Option<String>,
}

impl Request {
    /// The path without the query string.
    pub fn path(&self) -> &str {
        match self.target.split_once('?') {
            Some((p, _)) => p,
            None => &self.target,
        }
    }
}

/// What the bytes read so far amount to.
#[derive(Debug)]
pub enum Parsed {
    /// Need more bytes.
    Incomplete,
    /// A whole request (head and body, the body ignored).
    Request(Request),
    /// Malformed or too large: answer this and close.
    Error(Response),
}

/// Parse one request from `buf`. `Incomplete` is only ever returned while `buf` is no larger
/// than [`MAX_REQUEST`].
pub fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_REQUEST {
                Parsed::Error(Response::error(413, "request head larger than 64 KiB"))
            } else {
                Parsed::Incomplete
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Error(Response::error(431, "too many header fields"));
        }
        Err(e) => return Parsed::Error(Response::error(400, &format!("malformed request: {e}"))),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        // httparse fills both on Complete; stay total anyway.
        return Parsed::Error(Response::error(400, "malformed request line"));
    };
    if !target.starts_with('/') {
        return Parsed::Error(Response::error(400, "request target must be a path"));
    }
    let mut body_len: Option<usize> = None;
    let (mut host, mut origin, mut authorization) = (None, None, None);
    for h in req.headers.iter() {
        let slot = if h.name.eq_ignore_ascii_case("host") {
            Some(&mut host)
        } else if h.name.eq_ignore_ascii_case("origin") {
            Some(&mut origin)
        } else if h.name.eq_ignore_ascii_case("authorization") {
            Some(&mut authorization)
        } else {
            None
        };
        if let Some(slot) = slot {
            let Ok(value) = std::str::from_utf8(h.value) else {
                return Parsed::Error(Response::error(400, "header value is not UTF-8"));
            };
            if slot.replace(value.trim().to_string()).is_some() {
                return Parsed::Error(Response::error(400, &format!("repeated {} header", h.name)));
            }
            continue;
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Error(Response::error(
                400,
                "chunked request bodies are not supported",
            ));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok());
            match (parsed, body_len) {
                (Some(n), Some(prev)) if n != prev => {
                    return Parsed::Error(Response::error(400, "conflicting Content-Length"));
                }
                (Some(n), _) => body_len = Some(n),
                (None, _) => return Parsed::Error(Response::error(400, "invalid Content-Length")),
            }
        }
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_REQUEST.saturating_sub(head_len) {
        return Parsed::Error(Response::error(413, "request larger than 64 KiB"));
    }
    if buf.len() < head_len + body_len {
        return Parsed::Incomplete;
    }
    Parsed::Request(Request {
        method: method.to_string(),
        target: target.to_string(),
        host,
        origin,
        authorization,
    })
}

/// Decode `%XX` escapes in one path segment. `None` for a bad escape or a result that is not
/// UTF-8. `+` stays `+` (it means a space only in query strings).
pub fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One response; always sent with `Connection: close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Value of an `Allow` header (405 only).
    pub allow: Option<&'static str>,
    /// More header lines, fixed per kind of response (security and caching headers).
    pub headers: &'static [(&'static str, &'static str)],
    pub body: Vec<u8>,
}

pub const JSON: &str = "application/json";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            allow: None,
            headers: &[],
            body: body.into(),
        }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: &str) -> Response {
        let mut body = String::with_capacity(message.len() + 16);
        body.push_str("{\"error\":");
        super::status::push_json_str(&mut body, message);
        body.push_str("}\n");
        Response::new(status, JSON, body)
    }

    /// 405 naming the methods `path` accepts.
    pub fn method_not_allowed(allow: &'static str) -> Response {
        Response {
            allow: Some(allow),
            ..Response::error(405, &format!("method not allowed; allowed: {allow}"))
        }
    }

    /// Status line, headers and (unless `head_only`) the body.
    pub fn serialize(&self, head_only: bool) -> Vec<u8> {
        let mut head = String::with_capacity(160);
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = self.allow {
            let _ = write!(head, "Allow: {allow}\r\n");
        }
        for (name, value) in self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(p: Parsed) -> u16 {
        match p {
            Parsed::Error(r) => r.status,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_simple_get() {
        match parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n") {
            Parsed::Request(r) => {
                assert_eq!(r.method, "GET");
                assert_eq!(r.target, "/metrics?x=1");
                assert_eq!(r.path(), "/metrics");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn waits_for_the_whole_head_and_body() {
        assert!(matches!(parse_request(b""), Parsed::Incomplete));
        assert!(matches!(
            parse_request(b"GET /status HTTP/1.1\r\nHost"),
            Parsed::Incomplete
        ));
        let head = b"POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\n";
        assert!(matches!(parse_request(head), Parsed::Incomplete));
        let mut full = head.to_vec();
        full.extend_from_slice(b"abcd");
        assert!(matches!(parse_request(&full), Parsed::Request(_)));
    }

    #[test]
    fn malformed_requests_get_4xx() {
        assert_eq!(
            status_of(parse_request(b"\x00\x01\x02garbage\r\n\r\n")),
            400
        );
        assert_eq!(status_of(parse_request(b"GET /x HTTP/9.9\r\n\r\n")), 400);
        assert_eq!(
            status_of(parse_request(b"GET http://a/x HTTP/1.1\r\n\r\n")),
            400
        );
        assert_eq!(status_of(parse_request(b"GET * HTTP/1.1\r\n\r\n")), 400);
        assert_eq!(
            status_of(parse_request(
                b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n"
            )),
            400
        );
        assert_eq!(
            status_of(parse_request(
                b"POST /x HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"
            )),
            400
        );
        assert_eq!(
            status_of(parse_request(
                b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            )),
            400
        );
        assert_eq!(
            status_of(parse_request(
                b"POST /x HTTP/1.1\r\nContent-Length: 70000\r\n\r\n"
            )),
            413
        );
        assert_eq!(
            status_of(parse_request(
                b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
            )),
            400
        );
        let mut many = b"GET /x HTTP/1.1\r\n".to_vec();
        for i in 0..40 {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status_of(parse_request(&many)), 431);
        let mut huge = b"GET /x HTTP/1.1\r\nX-Big: ".to_vec();
        huge.resize(MAX_REQUEST + 1, b'a');
        assert_eq!(status_of(parse_request(&huge)), 413);
    }

    #[test]
    fn never_panics_on_prefixes_of_odd_inputs() {
        let inputs: [&[u8]; 5] = [
            b"GET /a%ZZ HTTP/1.1\r\n\r\n",
            b"POST /listeners/a/backends/%5B%3A%3A1%5D%3A80/drain HTTP/1.0\r\n\r\n",
            b"\r\n\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab",
            &[0xff; 64],
        ];
        for input in inputs {
            for end in 0..=input.len() {
                let _ = parse_request(&input[..end]);
            }
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("%5B%3A%3A1%5D%3A80").as_deref(),
            Some("[::1]:80")
        );
        assert_eq!(
            percent_decode("%5b%3a%3a1%5d%3a80").as_deref(),
            Some("[::1]:80")
        );
        assert_eq!(
            percent_decode("10.0.0.1:80").as_deref(),
            Some("10.0.0.1:80")
        );
        assert_eq!(percent_decode("a+b").as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%2F").as_deref(), Some("/"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode(""), Some(String::new()));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%5"), None);
        assert_eq!(percent_decode("%G0"), None);
        assert_eq!(percent_decode("%FF"), None);
    }

    #[test]
    fn serializes_with_length_and_close() {
        let r = Response::new(200, JSON, "{}");
        let text = String::from_utf8(r.serialize(false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{}"));
        let head = String::from_utf8(r.serialize(true)).unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 2\r\n"));
        let m =
            String::from_utf8(Response::method_not_allowed("GET, HEAD").serialize(false)).unwrap();
        assert!(
            m.starts_with("HTTP/1.1 405 ") && m.contains("Allow: GET, HEAD\r\n"),
            "{m}"
        );
    }
}
