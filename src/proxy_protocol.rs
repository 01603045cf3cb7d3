//! The HAProxy PROXY protocol, versions 1 (text) and 2 (binary): encode the header l4lb sends
//! to a backend (`proxy_protocol = "v1" | "v2"`) and parse the one a client sends when
//! `accept_proxy_protocol = true`. Reference: haproxy.org, doc/proxy-protocol.txt.
//!
//! Pure: no I/O, no allocation, no clock, so the data path can call it on a stack buffer and
//! fuzzers and property tests can call it on anything. Invariants: the encoders always produce
//! a header [`parse`] accepts; [`parse`] never reads past the bounds of the header it reports,
//! never panics, and decides (`Ok` or `Invalid`) once [`MAX_HEADER`] bytes are available, so
//! a caller that buffers at most that much can never wait forever on a client.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// The longest v1 line, CRLF included, the spec allows ("PROXY UNKNOWN" with the longest
/// IPv6 pair is 104 bytes; the spec rounds up to 107 so a receiver can use a fixed buffer).
pub const V1_MAX: usize = 107;
/// The 12 bytes that open a v2 header: chosen by the spec so that they can never start a
/// valid request of a common protocol (the NUL and "QUIT\n" stop HTTP, SMTP, FTP...).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v2 header: signature, version/command, family/protocol, 16-bit length.
const V2_FIXED: usize = 16;
/// The largest v2 address block (addresses + TLVs) we accept. The spec lets the length run to
/// 65535; HAProxy's own senders stay far below (AF_UNIX addresses are 216 bytes, typical TLVs
/// a few dozen), and a bound keeps the per-connection buffer small. Longer: `Invalid`.
pub const V2_MAX_PAYLOAD: usize = 512;
/// Bytes after which [`parse`] has decided: the longest header accepted.
pub const MAX_HEADER: usize = V2_FIXED + V2_MAX_PAYLOAD;
/// Room an encoded header needs (the v1 maximum; a v2 header l4lb sends is at most 52 bytes).
pub const MAX_ENCODED: usize = V1_MAX;

/// v2 version 2 (high nibble) with command PROXY (1) or LOCAL (0).
const V2_CMD_PROXY: u8 = 0x21;
const V2_CMD_LOCAL: u8 = 0x20;
/// v2 family/protocol byte: AF_INET / AF_INET6 (high nibble) over STREAM (1).
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;
/// Address block sizes: two addresses and two ports.
const V2_LEN_INET: usize = 4 + 4 + 2 + 2;
const V2_LEN_INET6: usize = 16 + 16 + 2 + 2;

/// A header parsed from the front of a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Header length: the bytes after it belong to the client's stream.
    pub consumed: usize,
    /// The original client; `None` for v1 `UNKNOWN`, v2 `LOCAL` and v2 families without an
    /// IP address (UNSPEC, AF_UNIX): the receiver then uses the connection's own peer.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when the header carries one.
    pub dest: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// A valid prefix: more bytes are needed to decide.
    Incomplete,
    /// Not a PROXY header, or one we refuse (too long, unknown version, bad address).
    Invalid,
}

/// The pair of addresses as one family: v4 when both are v4 (v4-mapped v6 counts as v4, as a
/// dual-stack socket reports IPv4 peers), v6 otherwise (a v4 side then written v4-mapped), so
/// every header names a real family and never says `UNKNOWN`.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (IpAddr, IpAddr) {
    match (unmapped(src.ip()), unmapped(dst.ip())) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
        (s, d) => (IpAddr::V6(to_v6(s)), IpAddr::V6(to_v6(d))),
    }
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Write a v1 header (`PROXY TCP4 src dst sport dport\r\n`) for a connection from `src` to
/// `dst` into `buf`; returns its length.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr, buf: &mut [u8; MAX_ENCODED]) -> usize {
    let (s, d) = same_family(src, dst);
    let proto = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    let mut out: &mut [u8] = &mut buf[..];
    let room = out.len();
    // Cannot fail: the longest line (two full IPv6 addresses, two 5-digit ports) is 104 bytes.
    let written = write!(
        out,
        "PROXY {proto} {s} {d} {} {}\r\n",
        src.port(),
        dst.port()
    );
    debug_assert!(written.is_ok());
    room - out.len()
}

/// Write a v2 header (command PROXY, TCP over IPv4 or IPv6, no TLVs) for a connection from
/// `src` to `dst` into `buf`; returns its length (28 or 52).
pub fn encode_v2(src: SocketAddr, dst: SocketAddr, buf: &mut [u8; MAX_ENCODED]) -> usize {
    buf[..12].copy_from_slice(&V2_SIGNATURE);
    buf[12] = V2_CMD_PROXY;
    let (s, d) = same_family(src, dst);
    let len = match (s, d) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            buf[13] = V2_TCP4;
            buf[16..20].copy_from_slice(&s.octets());
            buf[20..24].copy_from_slice(&d.octets());
            V2_LEN_INET
        }
        _ => {
            buf[13] = V2_TCP6;
            buf[16..32].copy_from_slice(&to_v6(s).octets());
            buf[32..48].copy_from_slice(&to_v6(d).octets());
            V2_LEN_INET6
        }
    };
    let ports = V2_FIXED + len - 4;
    buf[14..16].copy_from_slice(&(len as u16).to_be_bytes());
    buf[ports..ports + 2].copy_from_slice(&src.port().to_be_bytes());
    buf[ports + 2..ports + 4].copy_from_slice(&dst.port().to_be_bytes());
    V2_FIXED + len
}

/// Parse a v1 or v2 header at the start of `bytes` (which may hold more: the client's data).
pub fn parse(bytes: &[u8]) -> Result<Parsed, ParseError> {
    match bytes.first() {
        None => Err(ParseError::Incomplete),
        Some(b'P') => parse_v1(bytes),
        Some(b'\r') => parse_v2(bytes),
        Some(_) => Err(ParseError::Invalid),
    }
}

/// `bytes` starts like `expected` for as far as both go: `Incomplete` while it is a prefix.
fn starts_with(bytes: &[u8], expected: &[u8]) -> Result<(), ParseError> {
    let n = bytes.len().min(expected.len());
    if bytes[..n] != expected[..n] {
        return Err(ParseError::Invalid);
    }
    if n < expected.len() {
        return Err(ParseError::Incomplete);
    }
    Ok(())
}

fn parse_v1(bytes: &[u8]) -> Result<Parsed, ParseError> {
    starts_with(bytes, b"PROXY ")?;
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let Some(lf) = memchr::memchr(b'\n', window) else {
        return Err(if window.len() < V1_MAX {
            ParseError::Incomplete
        } else {
            ParseError::Invalid
        });
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(ParseError::Invalid);
    }
    let line = std::str::from_utf8(&window[6..lf - 1]).map_err(|_| ParseError::Invalid)?;
    let consumed = lf + 1;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        // The sender could not tell (or chose not to); whatever follows is to be ignored.
        return Ok(Parsed {
            consumed,
            source: None,
            dest: None,
        });
    }
    let mut fields = line.split(' ');
    let (Some(proto), Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ParseError::Invalid);
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (ip::<Ipv4Addr>(src)?.into(), ip::<Ipv4Addr>(dst)?.into()),
        "TCP6" => (ip::<Ipv6Addr>(src)?.into(), ip::<Ipv6Addr>(dst)?.into()),
        _ => return Err(ParseError::Invalid),
    };
    Ok(Parsed {
        consumed,
        source: Some(SocketAddr::new(src, port(sport)?)),
        dest: Some(SocketAddr::new(dst, port(dport)?)),
    })
}

fn ip<T: FromStr>(s: &str) -> Result<T, ParseError> {
    s.parse().map_err(|_| ParseError::Invalid)
}

/// A decimal port: digits only (`u16::from_str` would also take a leading `+`).
fn port(s: &str) -> Result<u16, ParseError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Invalid);
    }
    s.parse().map_err(|_| ParseError::Invalid)
}

fn parse_v2(bytes: &[u8]) -> Result<Parsed, ParseError> {
    starts_with(bytes, &V2_SIGNATURE)?;
    if bytes.len() < V2_FIXED {
        return Err(ParseError::Incomplete);
    }
    let command = bytes[12];
    let family = bytes[13];
    let len = u16::from_be_bytes([bytes[14], bytes[15]]) as usize;
    if command != V2_CMD_PROXY && command != V2_CMD_LOCAL {
        return Err(ParseError::Invalid);
    }
    // The families and protocols the spec defines: UNSPEC, INET, INET6, UNIX over UNSPEC,
    // STREAM or DGRAM; any other value must be rejected.
    if family >> 4 > 3 || family & 0x0f > 2 {
        return Err(ParseError::Invalid);
    }
    if len > V2_MAX_PAYLOAD {
        return Err(ParseError::Invalid);
    }
    let consumed = V2_FIXED + len;
    if bytes.len() < consumed {
        return Err(ParseError::Incomplete);
    }
    let block = &bytes[V2_FIXED..consumed];
    let local = Parsed {
        consumed,
        source: None,
        dest: None,
    };
    if command == V2_CMD_LOCAL {
        // Health checks and the like from the proxy itself: the block (if any) is ignored.
        return Ok(local);
    }
    // What follows the addresses (TLVs: ALPN, authority, SSL...) is skipped.
    let (src, dst, ports) = match family >> 4 {
        1 if block.len() >= V2_LEN_INET => {
            let s: [u8; 4] = block[0..4].try_into().map_err(|_| ParseError::Invalid)?;
            let d: [u8; 4] = block[4..8].try_into().map_err(|_| ParseError::Invalid)?;
            (IpAddr::from(s), IpAddr::from(d), &block[8..12])
        }
        2 if block.len() >= V2_LEN_INET6 => {
            let s: [u8; 16] = block[0..16].try_into().map_err(|_| ParseError::Invalid)?;
            let d: [u8; 16] = block[16..32].try_into().map_err(|_| ParseError::Invalid)?;
            (IpAddr::from(s), IpAddr::from(d), &block[32..36])
        }
        1 | 2 => return Err(ParseError::Invalid),
        // UNSPEC or AF_UNIX: no IP to use; the connection's own peer stands.
        _ => return Ok(local),
    };
    Ok(Parsed {
        consumed,
        source: Some(SocketAddr::new(
            src,
            u16::from_be_bytes([ports[0], ports[1]]),
        )),
        dest: Some(SocketAddr::new(
            dst,
            u16::from_be_bytes([ports[2], ports[3]]),
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v1(src: &str, dst: &str) -> Vec<u8> {
        let mut buf = [0u8; MAX_ENCODED];
        let n = encode_v1(sa(src), sa(dst), &mut buf);
        buf[..n].to_vec()
    }

    fn v2(src: &str, dst: &str) -> Vec<u8> {
        let mut buf = [0u8; MAX_ENCODED];
        let n = encode_v2(sa(src), sa(dst), &mut buf);
        buf[..n].to_vec()
    }

    #[test]
    fn v1_golden() {
        assert_eq!(
            v1("127.0.0.9:40000", "127.0.0.1:8080"),
            b"PROXY TCP4 127.0.0.9 127.0.0.1 40000 8080\r\n"
        );
        assert_eq!(
            v1("[2001:db8::1]:1", "[::1]:443"),
            b"PROXY TCP6 2001:db8::1 ::1 1 443\r\n"
        );
        // A v4 client on a dual-stack socket is written as v4; mixed families as v6.
        assert_eq!(
            v1("[::ffff:10.0.0.1]:5", "[::ffff:10.0.0.2]:6"),
            b"PROXY TCP4 10.0.0.1 10.0.0.2 5 6\r\n"
        );
        assert_eq!(
            v1("10.0.0.1:5", "[::1]:6"),
            b"PROXY TCP6 ::ffff:10.0.0.1 ::1 5 6\r\n"
        );
    }

    #[test]
    fn v1_longest_fits() {
        let max = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535";
        let h = v1(max, max);
        assert_eq!(h.len(), 104);
        assert!(h.len() <= V1_MAX);
    }

    #[test]
    fn v2_golden() {
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        want.extend_from_slice(&[127, 0, 0, 9, 127, 0, 0, 1]);
        want.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90]);
        assert_eq!(v2("127.0.0.9:40000", "127.0.0.1:8080"), want);

        let h = v2("[2001:db8::1]:1", "[::1]:443");
        assert_eq!(h.len(), 52);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(&h[16..18], &[0x20, 0x01]);
        assert_eq!(h[47], 1);
        assert_eq!(&h[48..52], &[0, 1, 0x01, 0xbb]);
    }

    #[test]
    fn parses_v1_with_trailing_data() {
        let mut bytes = b"PROXY TCP4 192.0.2.7 198.51.100.1 5555 80\r\nGET /".to_vec();
        let p = parse(&bytes).unwrap();
        assert_eq!(p.consumed, bytes.len() - 5);
        assert_eq!(p.source, Some(sa("192.0.2.7:5555")));
        assert_eq!(p.dest, Some(sa("198.51.100.1:80")));
        bytes.truncate(20);
        assert_eq!(parse(&bytes), Err(ParseError::Incomplete));
        assert_eq!(parse(b""), Err(ParseError::Incomplete));
        assert_eq!(parse(b"PRO"), Err(ParseError::Incomplete));
    }

    #[test]
    fn parses_v1_unknown() {
        for h in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
        ] {
            let p = parse(h).unwrap();
            assert_eq!((p.consumed, p.source, p.dest), (h.len(), None, None));
        }
    }

    #[test]
    fn rejects_bad_v1() {
        for h in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
            b"PROXY\r\n",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert_eq!(
                parse(h),
                Err(ParseError::Invalid),
                "{:?}",
                String::from_utf8_lossy(h)
            );
        }
        // No CRLF within 107 bytes: refused, not waited for.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX, b'x');
        assert_eq!(parse(&long), Err(ParseError::Invalid));
        long.pop();
        assert_eq!(parse(&long), Err(ParseError::Incomplete));
    }

    fn v2_raw(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[command, family]);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    #[test]
    fn parses_v2_local_tlvs_and_unspec() {
        let local = v2_raw(0x20, 0x00, &[]);
        assert_eq!(
            parse(&local),
            Ok(Parsed {
                consumed: 16,
                source: None,
                dest: None
            })
        );
        // LOCAL ignores a block, even an address one.
        let local = v2_raw(0x20, 0x11, &[1; 12]);
        assert_eq!(parse(&local).unwrap().source, None);
        // TLVs after the addresses are skipped, and the client's bytes follow.
        let mut block = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 0, 81];
        block.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        let mut h = v2_raw(0x21, 0x11, &block);
        h.extend_from_slice(b"data");
        let p = parse(&h).unwrap();
        assert_eq!(p.consumed, h.len() - 4);
        assert_eq!(p.source, Some(sa("10.0.0.1:80")));
        assert_eq!(p.dest, Some(sa("10.0.0.2:81")));
        assert_eq!(parse(&v2_raw(0x21, 0x00, &[])).unwrap().source, None);
        assert_eq!(parse(&v2_raw(0x21, 0x31, &[0; 216])).unwrap().source, None);
    }

    #[test]
    fn rejects_bad_v2() {
        for h in [
            v2_raw(0x22, 0x11, &[0; 12]),
            v2_raw(0x11, 0x11, &[0; 12]),
            v2_raw(0x21, 0x41, &[0; 12]),
            v2_raw(0x21, 0x13, &[0; 12]),
            v2_raw(0x21, 0x11, &[0; 11]),
            v2_raw(0x21, 0x21, &[0; 35]),
            v2_raw(0x21, 0x11, &[0; V2_MAX_PAYLOAD + 1]),
        ] {
            assert_eq!(parse(&h), Err(ParseError::Invalid), "{h:?}");
        }
        let mut bad_sig = V2_SIGNATURE.to_vec();
        bad_sig[4] = b'x';
        assert_eq!(parse(&bad_sig), Err(ParseError::Invalid));
        // Too long is decided from the 16 fixed bytes, before the block arrives.
        let huge = v2_raw(0x21, 0x11, &[0; 600]);
        assert_eq!(parse(&huge[..16]), Err(ParseError::Invalid));
        // The largest accepted header is decided within MAX_HEADER bytes.
        let max = v2_raw(0x21, 0x11, &[0; V2_MAX_PAYLOAD]);
        assert_eq!(max.len(), MAX_HEADER);
        assert_eq!(parse(&max).unwrap().consumed, MAX_HEADER);
        assert_eq!(parse(&max[..MAX_HEADER - 1]), Err(ParseError::Incomplete));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for h in [
            v1("[2001:db8::1]:1", "[::1]:443"),
            v2("[2001:db8::1]:1", "[::1]:443"),
        ] {
            for n in 0..h.len() {
                assert_eq!(parse(&h[..n]), Err(ParseError::Incomplete), "{n}");
            }
        }
    }

    /// What the encoders promise to write for `addr`: v4-mapped addresses as plain v4, and
    /// v4 as v4-mapped when the other side is v6.
    fn canonical(addr: SocketAddr, other: SocketAddr) -> SocketAddr {
        let (ip, _) = same_family(addr, other);
        SocketAddr::new(ip, addr.port())
    }

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(
                IpAddr::V6(Ipv4Addr::from(ip).to_ipv6_mapped()),
                port
            )),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn round_trip(src in any_addr(), dst in any_addr(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            for v2 in [false, true] {
                let mut buf = [0u8; MAX_ENCODED];
                let n = if v2 { encode_v2(src, dst, &mut buf) } else { encode_v1(src, dst, &mut buf) };
                let mut bytes = buf[..n].to_vec();
                bytes.extend_from_slice(&tail);
                let p = parse(&bytes).unwrap();
                prop_assert_eq!(p.consumed, n);
                prop_assert_eq!(p.source, Some(canonical(src, dst)));
                prop_assert_eq!(p.dest, Some(canonical(dst, src)));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            check_bounds(&bytes)?;
        }

        /// The same, on inputs that get past the signatures (where the interesting code is).
        #[test]
        fn arbitrary_headers_never_panic(
            v2 in any::<bool>(),
            body in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut bytes = if v2 { V2_SIGNATURE.to_vec() } else { b"PROXY ".to_vec() };
            bytes.extend_from_slice(&body);
            check_bounds(&bytes)?;
        }
    }

    /// `parse` stays within its promises on any input: never past the input, never past
    /// `MAX_HEADER`, and decided once `MAX_HEADER` bytes are there.
    fn check_bounds(bytes: &[u8]) -> Result<(), TestCaseError> {
        match parse(bytes) {
            Ok(p) => {
                prop_assert!(p.consumed <= bytes.len());
                prop_assert!(p.consumed <= MAX_HEADER);
                prop_assert!(p.consumed > 0);
            }
            Err(ParseError::Incomplete) => prop_assert!(bytes.len() < MAX_HEADER),
            Err(ParseError::Invalid) => {}
        }
        Ok(())
    }
}
