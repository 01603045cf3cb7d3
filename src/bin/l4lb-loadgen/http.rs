//! The little HTTP/1.x the load generator speaks, parsed with httparse: the response a
//! `tcp-crr --http` or `probe` client reads (status, and the backend named in the body) and the
//! request heads `serve --mode http` answers (keep-alive or close, body length to skip).
//!
//! Hot path of `tcp-crr --http` and `serve`: no allocation; the header table is a fixed array
//! on the stack, so a head with more than `MAX_HEADERS` headers is refused, never grown into.

use httparse::Status;

use crate::net::ErrKind;

/// Headers parsed per head. The demo backend sends 3 and our clients send 2; 64 leaves room for
/// a real server's answer (a browser-facing site sends 15-30) at 2 KiB of stack.
const MAX_HEADERS: usize = 64;

/// Checks a complete response (read until EOF) and returns the backend named in its body
/// (`backend X`, up to the end of the line), or `(unnamed)` when the body names none.
/// Errors: `ShortRead` when the head is incomplete, `Other` when it is not HTTP/1.x or its
/// status is not 200.
pub fn response_backend(resp: &[u8]) -> Result<&[u8], ErrKind> {
    if resp.is_empty() {
        return Err(ErrKind::ShortRead);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let head_len = match r.parse(resp) {
        Ok(Status::Complete(n)) => n,
        // The status line may be complete even when the head is not: a refusal stays one.
        Ok(Status::Partial) if r.code.is_some_and(|c| c != 200) => return Err(ErrKind::Other),
        Ok(Status::Partial) => return Err(ErrKind::ShortRead),
        Err(_) => return Err(ErrKind::Other),
    };
    if r.code != Some(200) {
        return Err(ErrKind::Other);
    }
    let body = &resp[head_len..];
    let Some(at) = memchr::memmem::find(body, b"backend ") else {
        return Ok(b"(unnamed)");
    };
    let name = &body[at + 8..];
    let end = memchr::memchr2(b'\n', b'\r', name).unwrap_or(name.len());
    Ok(&name[..end])
}

/// What the start of a connection's unread input holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Not a whole head yet: read more (the caller bounds how much).
    Partial,
    /// A whole, valid head.
    Head(RequestHead),
    /// More than `MAX_HEADERS` headers (answered 431).
    TooManyHeaders,
    /// Not an HTTP/1.x request head, or an unreadable Content-Length (answered 400).
    Bad,
}

#[derive(Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head, final CRLFCRLF included; the body follows.
    pub len: usize,
    /// The connection ends after the answer: `Connection: close`, or HTTP/1.0 without
    /// `Connection: keep-alive`.
    pub close: bool,
    /// Body bytes to skip before the next request.
    pub content_length: usize,
}

/// Parses the request head at the start of `buf` (pipelined requests follow each other).
pub fn parse_request(buf: &[u8]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) => return Request::Partial,
        Err(httparse::Error::TooManyHeaders) => return Request::TooManyHeaders,
        Err(_) => return Request::Bad,
    };
    let mut close = req.version == Some(0);
    let mut content_length = 0usize;
    for h in req.headers.iter() {
        let value = h.value.trim_ascii();
        if h.name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if value.eq_ignore_ascii_case(b"keep-alive") {
                close = false;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            let Some(n) = parsed else {
                return Request::Bad;
            };
            content_length = n;
        }
    }
    Request::Head(RequestHead {
        len,
        close,
        content_length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_names_the_backend() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 23\r\n\r\nbackend 127.0.0.1:9001\n";
        assert_eq!(response_backend(ok), Ok(&b"127.0.0.1:9001"[..]));
        let plain = b"HTTP/1.1 200 OK\r\n\r\nhello";
        assert_eq!(response_backend(plain), Ok(&b"(unnamed)"[..]));
        assert_eq!(
            response_backend(b"HTTP/1.1 503 Busy\r\n\r\n"),
            Err(ErrKind::Other)
        );
        assert_eq!(
            response_backend(b"HTTP/1.1 503 Busy\r\nRetry-After: 1\r\n"),
            Err(ErrKind::Other)
        );
        assert_eq!(
            response_backend(b"HTTP/1.1 200 OK\r\n"),
            Err(ErrKind::ShortRead)
        );
        assert_eq!(response_backend(b""), Err(ErrKind::ShortRead));
        assert_eq!(response_backend(b"garbage"), Err(ErrKind::Other));
    }

    #[test]
    fn response_with_too_many_headers_is_an_error() {
        let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            r.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        r.extend_from_slice(b"\r\nbackend a\n");
        assert_eq!(response_backend(&r), Err(ErrKind::Other));
    }

    fn head(len: usize, close: bool, content_length: usize) -> Request {
        Request::Head(RequestHead {
            len,
            close,
            content_length,
        })
    }

    #[test]
    fn request_heads() {
        let r = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse_request(r), head(r.len(), false, 0));
        let r = b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n";
        assert_eq!(parse_request(r), head(r.len(), true, 0));
        let r = b"POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_request(r), head(r.len() - 5, true, 5));
        let r = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(parse_request(r), head(r.len(), false, 0));
        // Pipelined: only the first head counts.
        let r = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        assert_eq!(parse_request(r), head(19, false, 0));
    }

    #[test]
    fn request_partial_and_bad() {
        assert_eq!(parse_request(b""), Request::Partial);
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x"),
            Request::Partial
        );
        assert_eq!(parse_request(b"hello\r\n\r\n"), Request::Bad);
        assert_eq!(parse_request(b"GET / HTTP/2.0\r\n\r\n"), Request::Bad);
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Request::Bad
        );
        let mut r = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            r.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        r.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&r), Request::TooManyHeaders);
    }
}
