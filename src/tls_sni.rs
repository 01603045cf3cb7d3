//! TLS ClientHello parsing for SNI routing (passthrough): find the `server_name` a client asks
//! for in the first bytes it sends, without terminating TLS. The bytes are forwarded, whole and
//! unchanged, to the backend the name selects. References: RFC 8446 (TLS 1.3) sections 4.1.2
//! and 5.1, RFC 6066 section 3 (server_name), RFC 5246 section 6.2 (record layer).
//!
//! Pure: no I/O, no allocation, no clock, so a worker can call it on the bytes it holds after
//! every read, and fuzzers and property tests can call it on anything. Invariants: [`parse`]
//! never panics and never reads out of bounds; it decides (`Ok`, `Invalid` or `TooLarge`)
//! once [`MAX_HELLO`] bytes are available, so a caller that buffers at most that much can
//! never wait forever on a client; the name it returns is lower-case ASCII.
//!
//! The ClientHello may be split over several handshake records (a large hello, e.g. with
//! post-quantum key shares, or a deliberately fragmented one); the fragments are then joined
//! in a stack buffer. Only the hello is looked at: what follows it (early data) is not.

/// The most bytes (TLS records, headers included) read while waiting for a whole ClientHello.
/// Common hellos are 200-600 bytes, and about 1,800 with a hybrid post-quantum key share
/// (X25519MLKEM768); 16 KiB leaves room for large session tickets and several fragments, and
/// is a small fraction of the 32 KiB buffer the hello waits in.
pub const MAX_HELLO: usize = 16 * 1024;
/// Longest name kept: a DNS name has at most 253 characters (255 octets on the wire).
pub const MAX_NAME: usize = 255;

/// Record header: content type, legacy version (2), length (2).
const RECORD_HEADER: usize = 5;
/// Largest record fragment TLS allows (2^14); anything longer is not TLS.
const MAX_FRAGMENT: usize = 1 << 14;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Handshake header: type, 24-bit length.
const HANDSHAKE_HEADER: usize = 4;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;

/// The server name a ClientHello carries, lower-cased.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ServerName {
    bytes: [u8; MAX_NAME],
    len: u8,
}

impl ServerName {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The name as text (it is ASCII by construction).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

impl std::fmt::Debug for ServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// A whole ClientHello was found at the front of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// `None` when the hello has no server_name extension (or one without a host name).
    pub server_name: Option<ServerName>,
    /// Bytes of the records that carried the hello.
    pub len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// A valid prefix: more bytes are needed to decide.
    Incomplete,
    /// Not a TLS ClientHello, or a malformed one.
    Invalid,
    /// A hello (so far valid) that would not fit in [`MAX_HELLO`] bytes.
    TooLarge,
}

/// Parse the ClientHello at the front of `buf`.
pub fn parse(buf: &[u8]) -> Result<Hello, ParseError> {
    // Pass 1: walk the records, checking each header, until the handshake message is whole.
    let mut pos = 0;
    let mut handshake_len = 0; // handshake bytes available so far
    let mut message_len: Option<usize> = None; // header + body, once the header is seen
    let mut records = 0;
    let mut first_fragment = 0..0;
    loop {
        if let Some(m) = message_len {
            if handshake_len >= m {
                break;
            }
        }
        let Some(header) = buf.get(pos..pos + RECORD_HEADER) else {
            return Err(incomplete_prefix_check(&buf[pos.min(buf.len())..]));
        };
        if header[0] != CONTENT_HANDSHAKE || header[1] != 3 {
            return Err(ParseError::Invalid);
        }
        let fragment = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if fragment == 0 || fragment > MAX_FRAGMENT {
            return Err(ParseError::Invalid);
        }
        let start = pos + RECORD_HEADER;
        if start + fragment > MAX_HELLO {
            // The hello is not whole yet and this record ends beyond the bound.
            return Err(ParseError::TooLarge);
        }
        records += 1;
        if records == 1 {
            first_fragment = start..start + fragment;
        }
        // The handshake header may itself be split across records: read it once 4 bytes are
        // known, from wherever they are.
        let available = buf.len().saturating_sub(start).min(fragment);
        if message_len.is_none() && handshake_len + available >= HANDSHAKE_HEADER {
            let mut h = [0u8; HANDSHAKE_HEADER];
            let got = copy_handshake(buf, &mut h, HANDSHAKE_HEADER);
            if got < HANDSHAKE_HEADER {
                return Err(ParseError::Incomplete);
            }
            if h[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(ParseError::Invalid);
            }
            let body = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
            let m = HANDSHAKE_HEADER + body;
            // At least one record header in front of it; more if it is fragmented.
            if m + RECORD_HEADER > MAX_HELLO {
                return Err(ParseError::TooLarge);
            }
            message_len = Some(m);
        }
        if available < fragment {
            // This record is not all here yet (records are whole units: wait for its end).
            return Err(ParseError::Incomplete);
        }
        handshake_len += fragment;
        pos = start + fragment;
    }
    let m = message_len.unwrap_or(HANDSHAKE_HEADER);
    // Where the hello ends: the end of the record that completed it.
    let len = pos;
    // Pass 2: the message, in place when one record holds it, else joined on the stack.
    let server_name = if records == 1 || first_fragment.len() >= m {
        let msg = buf
            .get(first_fragment.start..first_fragment.start + m)
            .ok_or(ParseError::Invalid)?;
        client_hello_sni(&msg[HANDSHAKE_HEADER..])?
    } else {
        let mut joined = [0u8; MAX_HELLO];
        let got = copy_handshake(buf, &mut joined, m);
        if got < m {
            return Err(ParseError::Incomplete);
        }
        client_hello_sni(&joined[HANDSHAKE_HEADER..m])?
    };
    Ok(Hello { server_name, len })
}

/// When fewer than 5 bytes of a record header are available: a prefix that can still become
/// a handshake record is `Incomplete`, anything else `Invalid` at once (so garbage is refused
/// on its first byte, not after a timeout).
fn incomplete_prefix_check(rest: &[u8]) -> ParseError {
    let ok = match rest {
        [] => true,
        [t] => *t == CONTENT_HANDSHAKE,
        [t, v, ..] => *t == CONTENT_HANDSHAKE && *v == 3,
    };
    if ok {
        ParseError::Incomplete
    } else {
        ParseError::Invalid
    }
}

/// Copy the first `want` handshake bytes (record payloads, headers skipped) of `buf` into
/// `out`; returns how many were available. Record headers were checked by the caller.
fn copy_handshake(buf: &[u8], out: &mut [u8], want: usize) -> usize {
    let mut pos = 0;
    let mut got = 0;
    while got < want {
        let Some(header) = buf.get(pos..pos + RECORD_HEADER) else {
            break;
        };
        let fragment = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let start = pos + RECORD_HEADER;
        let end = (start + fragment).min(buf.len());
        if start >= end {
            break;
        }
        let take = (end - start).min(want - got);
        let Some(dst) = out.get_mut(got..got + take) else {
            break;
        };
        dst.copy_from_slice(&buf[start..start + take]);
        got += take;
        pos = start + fragment;
    }
    got
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if n > self.buf.len() {
            return Err(ParseError::Invalid);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a `len_bytes`-byte length prefix.
    fn vec8(&mut self) -> Result<&'a [u8], ParseError> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }

    fn vec16(&mut self) -> Result<&'a [u8], ParseError> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
}

/// The server name in a ClientHello body (after the handshake header).
fn client_hello_sni(body: &[u8]) -> Result<Option<ServerName>, ParseError> {
    let mut r = Reader { buf: body };
    let version = r.take(2)?;
    if version[0] != 3 {
        return Err(ParseError::Invalid);
    }
    r.take(32)?; // random
    if r.vec8()?.len() > 32 {
        return Err(ParseError::Invalid); // legacy_session_id
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(ParseError::Invalid);
    }
    if r.vec8()?.is_empty() {
        return Err(ParseError::Invalid); // compression methods: at least "null"
    }
    if r.buf.is_empty() {
        return Ok(None); // no extensions at all (SSL 3.0-style hello)
    }
    let mut exts = Reader { buf: r.vec16()? };
    if !r.buf.is_empty() {
        return Err(ParseError::Invalid); // bytes after the extensions
    }
    let mut name = None;
    let mut seen = false;
    while !exts.buf.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind != EXT_SERVER_NAME {
            continue;
        }
        if seen {
            return Err(ParseError::Invalid); // RFC 8446 4.2: no extension twice
        }
        seen = true;
        name = server_name_ext(data)?;
    }
    Ok(name)
}

/// The host name in a server_name extension's data (RFC 6066 section 3).
fn server_name_ext(data: &[u8]) -> Result<Option<ServerName>, ParseError> {
    let mut r = Reader { buf: data };
    let mut list = Reader { buf: r.vec16()? };
    if !r.buf.is_empty() || list.buf.is_empty() {
        return Err(ParseError::Invalid);
    }
    let mut found = None;
    while !list.buf.is_empty() {
        let kind = list.u8()?;
        let host = list.vec16()?;
        if kind != NAME_TYPE_HOST {
            continue;
        }
        if found.is_some() {
            return Err(ParseError::Invalid); // "MUST NOT contain more than one name of the same type"
        }
        found = Some(host_name(host)?);
    }
    Ok(found)
}

/// A DNS host name, lower-cased: 1..=255 bytes of letters, digits, '-', '_' and '.'.
fn host_name(host: &[u8]) -> Result<ServerName, ParseError> {
    if host.is_empty() || host.len() > MAX_NAME {
        return Err(ParseError::Invalid);
    }
    let mut name = ServerName {
        bytes: [0; MAX_NAME],
        len: host.len() as u8,
    };
    for (dst, &c) in name.bytes.iter_mut().zip(host) {
        if !(c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')) {
            return Err(ParseError::Invalid);
        }
        *dst = c.to_ascii_lowercase();
    }
    Ok(name)
}

/// Whether `name` (lower case) matches `pattern` (lower case, validated by the config):
/// equal, or `*.rest` where `name` is exactly one more label in front of `.rest`.
pub fn matches(pattern: &str, name: &[u8]) -> bool {
    match pattern.strip_prefix("*.") {
        None => pattern.as_bytes() == name,
        Some(rest) => {
            let rest = rest.as_bytes();
            name.len() > rest.len() + 1
                && name.ends_with(rest)
                && name[name.len() - rest.len() - 1] == b'.'
                && !name[..name.len() - rest.len() - 1].contains(&b'.')
        }
    }
}

/// Test and fuzz support: a ClientHello carrying `name` (or no server_name extension),
/// `padding` extra bytes of a padding extension (to make it large), split into records
/// carrying at most `fragment` handshake bytes each.
pub fn build_client_hello(name: Option<&str>, padding: usize, fragment: usize) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(n) = name {
        let n = n.as_bytes();
        exts.extend_from_slice(&EXT_SERVER_NAME.to_be_bytes());
        exts.extend_from_slice(&((n.len() + 5) as u16).to_be_bytes());
        exts.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
        exts.push(NAME_TYPE_HOST);
        exts.extend_from_slice(&(n.len() as u16).to_be_bytes());
        exts.extend_from_slice(n);
    }
    // supported_versions (TLS 1.3), then padding (RFC 7685, type 21).
    exts.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
    exts.extend_from_slice(&21u16.to_be_bytes());
    exts.extend_from_slice(&(padding as u16).to_be_bytes());
    exts.resize(exts.len() + padding, 0);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]);
    body.push(32);
    body.extend_from_slice(&[9u8; 32]);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    let mut out = Vec::new();
    for chunk in msg.chunks(fragment.clamp(1, MAX_FRAGMENT)) {
        out.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name_of(buf: &[u8]) -> Option<String> {
        parse(buf)
            .unwrap()
            .server_name
            .map(|n| n.as_str().to_string())
    }

    #[test]
    fn one_record_with_a_name() {
        let hello = build_client_hello(Some("Api.Example.COM"), 0, MAX_FRAGMENT);
        let parsed = parse(&hello).unwrap();
        assert_eq!(parsed.len, hello.len());
        assert_eq!(name_of(&hello).as_deref(), Some("api.example.com"));
        // What follows the hello is not looked at.
        let mut more = hello.clone();
        more.extend_from_slice(b"\x17\x03\x03garbage");
        assert_eq!(parse(&more).unwrap().len, hello.len());
    }

    #[test]
    fn no_server_name() {
        let hello = build_client_hello(None, 0, MAX_FRAGMENT);
        assert_eq!(name_of(&hello), None);
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let hello = build_client_hello(Some("a.example.org"), 100, 50);
        for cut in 0..hello.len() {
            assert_eq!(parse(&hello[..cut]), Err(ParseError::Incomplete), "{cut}");
        }
        assert_eq!(name_of(&hello).as_deref(), Some("a.example.org"));
    }

    #[test]
    fn a_hello_larger_than_one_record() {
        let hello = build_client_hello(Some("big.example.net"), 12_000, MAX_FRAGMENT);
        assert!(hello.len() > 12_000);
        assert_eq!(name_of(&hello).as_deref(), Some("big.example.net"));
        let split = build_client_hello(Some("big.example.net"), 12_000, 4_000);
        assert_eq!(name_of(&split).as_deref(), Some("big.example.net"));
    }

    #[test]
    fn too_large_is_decided_early() {
        let hello = build_client_hello(Some("x.example"), 17_000, MAX_FRAGMENT);
        // The first record already says the message cannot fit.
        assert_eq!(parse(&hello[..10]), Err(ParseError::TooLarge));
        // Tiny fragments: the bound counts record headers too.
        let tiny = build_client_hello(Some("x.example"), 12_000, 10);
        assert!(tiny.len() > MAX_HELLO);
        assert_eq!(parse(&tiny), Err(ParseError::TooLarge));
        assert_eq!(parse(&tiny[..MAX_HELLO + 5]), Err(ParseError::TooLarge));
    }

    #[test]
    fn garbage_is_refused_at_once() {
        assert_eq!(parse(b"G"), Err(ParseError::Invalid));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ParseError::Invalid));
        assert_eq!(parse(&[22, 4]), Err(ParseError::Invalid));
        assert_eq!(parse(&[22]), Err(ParseError::Incomplete));
        // SSLv2-compatible hello: not supported.
        assert_eq!(parse(&[0x80, 0x2e, 1, 3, 1]), Err(ParseError::Invalid));
        // A handshake record that is not a ClientHello.
        assert_eq!(
            parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0]),
            Err(ParseError::Invalid)
        );
        // A name with a bad character.
        let mut hello = build_client_hello(Some("bad.example"), 0, MAX_FRAGMENT);
        let at = hello.windows(3).position(|w| w == b"bad").unwrap();
        hello[at] = b'/';
        assert_eq!(parse(&hello), Err(ParseError::Invalid));
    }

    #[test]
    fn wildcards_match_one_label() {
        assert!(matches("api.example.com", b"api.example.com"));
        assert!(!matches("api.example.com", b"x.api.example.com"));
        assert!(matches("*.example.org", b"a.example.org"));
        assert!(!matches("*.example.org", b"example.org"));
        assert!(!matches("*.example.org", b".example.org"));
        assert!(!matches("*.example.org", b"a.b.example.org"));
        assert!(!matches("*.example.org", b"aexample.org"));
    }

    proptest! {
        /// Any bytes: no panic, and a decision within MAX_HELLO bytes.
        #[test]
        fn never_panics(data in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&data);
        }

        /// Plausible record headers with random contents: no panic.
        #[test]
        fn never_panics_on_records(body in prop::collection::vec(any::<u8>(), 0..400), len in 0u16..500) {
            let mut data = vec![22, 3, 1];
            data.extend_from_slice(&len.to_be_bytes());
            data.extend_from_slice(&body);
            let _ = parse(&data);
        }

        /// A valid hello, fragmented anyhow, gives its name back; every prefix is incomplete;
        /// a corrupted byte never panics.
        #[test]
        fn valid_hellos_round_trip(
            labels in prop::collection::vec("[a-zA-Z0-9-]{1,20}", 1..5),
            padding in 0usize..3000,
            fragment in 1usize..3000,
            flip in any::<prop::sample::Index>(),
            value in any::<u8>(),
        ) {
            let name = labels.join(".");
            let hello = build_client_hello(Some(&name), padding, fragment);
            match parse(&hello) {
                Ok(h) => {
                    prop_assert_eq!(h.len, hello.len());
                    let got = h.server_name.unwrap();
                    prop_assert_eq!(got.as_str(), name.to_ascii_lowercase());
                }
                Err(e) => prop_assert!(hello.len() > MAX_HELLO && e == ParseError::TooLarge),
            }
            let cut = flip.index(hello.len());
            prop_assert_ne!(parse(&hello[..cut]), Err(ParseError::Invalid));
            let mut bad = hello.clone();
            bad[cut] = value;
            let _ = parse(&bad);
        }
    }
}
