//! The PROXY protocol end to end: `proxy_protocol = "v1" | "v2"` (the header l4lb sends to a
//! backend before the client's bytes) and `accept_proxy_protocol` with `trusted_proxies` (the
//! header a client sends, whose address then stands for the client in the ACL, the limits,
//! the balancing key and the header sent on).
//!
//! The real `l4lb` binary on loopback. The backend here decodes the header itself (not with
//! the crate's parser) and answers one line describing it, then echoes; clients bind to
//! 127.0.0.x so that the address in a header can be told from the default one.

mod common;

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

/// Every test peer is on loopback: trust it to send a header (an empty list is a config error).
const TRUST_LOOPBACK: &str = "trusted_proxies = [\"127.0.0.0/8\", \"::1\"]";

/// What the backend received first, in one line: `v1 <line without PROXY and CRLF>` or
/// `v2 TCP4|TCP6 src dst sport dport` (`v2 LOCAL`, `v2 family=0xNN` for the rest), or
/// `invalid <bytes>` when the stream did not start with a header.
fn read_header(s: &mut TcpStream) -> io::Result<String> {
    // Every header is at least 16 bytes (v2 fixed part; the shortest v1 line is 32).
    let mut head = [0u8; 16];
    s.read_exact(&mut head)?;
    if head.starts_with(b"PROXY ") {
        let mut line = head.to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() >= 107 {
                return Ok(format!("invalid {line:?}"));
            }
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            line.push(b[0]);
        }
        let text = String::from_utf8_lossy(&line[6..line.len() - 2]).into_owned();
        return Ok(format!("v1 {text}"));
    }
    if head[..12] != *b"\r\n\r\n\0\r\nQUIT\n" {
        return Ok(format!("invalid {head:?}"));
    }
    let mut block = vec![0u8; u16::from_be_bytes([head[14], head[15]]) as usize];
    s.read_exact(&mut block)?;
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    Ok(match (head[12], head[13]) {
        (0x20, _) => "v2 LOCAL".to_string(),
        (0x21, 0x11) if block.len() >= 12 => {
            let src = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            let dst = Ipv4Addr::new(block[4], block[5], block[6], block[7]);
            format!(
                "v2 TCP4 {src} {dst} {} {}",
                port(&block[8..]),
                port(&block[10..])
            )
        }
        (0x21, 0x21) if block.len() >= 36 => {
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&block[0..16]).unwrap());
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&block[16..32]).unwrap());
            format!(
                "v2 TCP6 {src} {dst} {} {}",
                port(&block[32..]),
                port(&block[34..])
            )
        }
        (cmd, family) => format!("v2 cmd=0x{cmd:02x} family=0x{family:02x}"),
    })
}

/// A backend that reads the PROXY header, answers `"{description}\n"`, then echoes.
fn header_backend() -> Backend {
    Backend::spawn(
        localhost(),
        "hdr",
        Arc::new(|mut s: TcpStream| {
            let Ok(desc) = read_header(&mut s) else {
                return;
            };
            echo_conn(s, format!("{desc}\n").as_bytes());
        }),
    )
}

/// Connect from `src`, send `preamble` and `payload` in one write from a writer thread (the
/// echo comes back while we write), close our side, and read everything back: the backend's
/// header line and the echoed bytes.
fn through(lb: SocketAddr, src: IpAddr, preamble: &[u8], payload: &[u8]) -> (String, Vec<u8>, u16) {
    let s = connect_from(src, lb).unwrap_or_else(|e| panic!("connect from {src}: {e}"));
    let port = s.local_addr().expect("local_addr").port();
    let mut tx = s.try_clone().expect("clone");
    let mut first = preamble.to_vec();
    first.extend_from_slice(payload);
    let writer = thread::spawn(move || -> io::Result<()> {
        tx.write_all(&first)?;
        tx.shutdown(Shutdown::Write)
    });
    let mut rx = s;
    let out = read_until_eof(&mut rx, IO_TIMEOUT).expect("read the reply until EOF");
    writer.join().expect("writer thread").expect("write");
    let nl = out
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or_else(|| panic!("no header line in {:?}", String::from_utf8_lossy(&out)));
    let line = String::from_utf8_lossy(&out[..nl]).into_owned();
    (line, out[nl + 1..].to_vec(), port)
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut p = vec![0u8; len];
    XorShift::new(seed).fill(&mut p);
    p
}

fn v1_header(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    let proto = if src.contains(':') { "TCP6" } else { "TCP4" };
    format!("PROXY {proto} {src} {dst} {sport} {dport}\r\n").into_bytes()
}

fn v2_header(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h
}

fn rejected(admin: SocketAddr, reason: &str) -> f64 {
    metric_at(
        admin,
        "l4lb_connections_rejected_total",
        &[("listener", "t"), ("reason", reason)],
    )
}

/// Send `preamble` from `src`, then classify as `attempt_on` does (an `id` backend).
fn attempt_with(lb: SocketAddr, src: IpAddr, preamble: &[u8]) -> Outcome {
    let mut s = match connect_from(src, lb) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Outcome::Refused,
        Err(e) => panic!("connect from {src}: {e}"),
    };
    match s.write_all(preamble) {
        Ok(()) => {}
        // The reset can beat our write.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Outcome::Refused,
        Err(e) => panic!("write the preamble: {e}"),
    }
    attempt_on(&mut s)
}

#[test]
fn v1_header_carries_the_client_then_its_bytes() {
    let b = header_backend();
    let lb = L4lb::start(&Conf::new("round_robin", &[b.addr]).extra("proxy_protocol = \"v1\""));
    // Large enough that `splice = auto` switches to splice after the header went out.
    let data = payload(300_000, 1);
    let (line, echoed, port) = through(lb.addr, lo(9), b"", &data);
    assert_eq!(
        line,
        format!("v1 TCP4 127.0.0.9 127.0.0.1 {port} {}", lb.addr.port())
    );
    assert!(echoed == data, "the client's bytes after the header differ");
    // A client that sends nothing still gets its header sent.
    let (line, echoed, port) = through(lb.addr, lo(10), b"", b"");
    assert_eq!(
        line,
        format!("v1 TCP4 127.0.0.10 127.0.0.1 {port} {}", lb.addr.port())
    );
    assert!(echoed.is_empty());
}

#[test]
fn v2_header_on_a_wildcard_listener_names_the_local_address() {
    let b = header_backend();
    let conf = Conf::new("round_robin", &[b.addr])
        .splice("always")
        .extra("proxy_protocol = \"v2\"");
    // Bound to 0.0.0.0: the destination in the header is the accepted socket's own address.
    let lb = L4lb::start_edited(&conf, |text, addr| {
        text.replace(
            &format!("bind = \"{addr}\""),
            &format!("bind = \"0.0.0.0:{}\"", addr.port()),
        )
    });
    let data = payload(100_000, 2);
    let (line, echoed, port) = through(lb.addr, lo(9), b"", &data);
    assert_eq!(
        line,
        format!("v2 TCP4 127.0.0.9 127.0.0.1 {port} {}", lb.addr.port())
    );
    assert!(echoed == data, "the client's bytes after the header differ");
}

#[test]
fn accepted_header_address_is_sent_on_and_bytes_after_it_forwarded() {
    let b = header_backend();
    let lb = L4lb::start(
        &Conf::new("round_robin", &[b.addr])
            .extra("accept_proxy_protocol = true")
            .extra(TRUST_LOOPBACK)
            .extra("proxy_protocol = \"v1\""),
    );
    let lb_port = lb.addr.port();
    let data = payload(200_000, 3);

    // v1 from the client, data in the same write.
    let h = v1_header("192.0.2.7", "198.51.100.1", 5555, 443);
    let (line, echoed, _) = through(lb.addr, lo(4), &h, &data);
    assert_eq!(line, format!("v1 TCP4 192.0.2.7 127.0.0.1 5555 {lb_port}"));
    assert!(echoed == data, "bytes after a v1 header differ");

    // v2 from the client.
    let h = v2_header(
        Ipv4Addr::new(203, 0, 113, 5),
        Ipv4Addr::new(198, 51, 100, 1),
        6666,
        443,
    );
    let (line, echoed, _) = through(lb.addr, lo(4), &h, &data[..1000]);
    assert_eq!(
        line,
        format!("v1 TCP4 203.0.113.5 127.0.0.1 6666 {lb_port}")
    );
    assert!(echoed == data[..1000], "bytes after a v2 header differ");

    // An IPv6 client behind an IPv4 listener: the header sent on is TCP6 (v4-mapped local).
    let h = v1_header("2001:db8::7", "2001:db8::1", 7777, 443);
    let (line, echoed, _) = through(lb.addr, lo(4), &h, b"x");
    assert_eq!(
        line,
        format!("v1 TCP6 2001:db8::7 ::ffff:127.0.0.1 7777 {lb_port}")
    );
    assert_eq!(echoed, b"x");

    // LOCAL (a health check by the proxy itself): the proxy's own address stands.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let (line, echoed, port) = through(lb.addr, lo(4), &local, b"hc");
    assert_eq!(
        line,
        format!("v1 TCP4 127.0.0.4 127.0.0.1 {port} {lb_port}")
    );
    assert_eq!(echoed, b"hc");
}

#[test]
fn header_split_across_writes_still_works() {
    let b = header_backend();
    let lb = L4lb::start(
        &Conf::new("round_robin", &[b.addr])
            .extra("accept_proxy_protocol = true")
            .extra(TRUST_LOOPBACK)
            .extra("proxy_protocol = \"v2\""),
    );
    let v1 = v1_header("192.0.2.9", "198.51.100.1", 1234, 80);
    let v2 = v2_header(
        Ipv4Addr::new(192, 0, 2, 9),
        Ipv4Addr::new(198, 51, 100, 1),
        1234,
        80,
    );
    let want = format!("v2 TCP4 192.0.2.9 127.0.0.1 1234 {}", lb.addr.port());
    for (name, h, cuts) in [
        ("v1", &v1, vec![1, 6, 20, v1.len() - 1]),
        ("v2", &v2, vec![1, 12, 15, 16, v2.len() - 1]),
    ] {
        for cut in cuts {
            let mut s = connect_from(lo(5), lb.addr).expect("connect");
            s.write_all(&h[..cut]).expect("write the first part");
            // A pause so that the balancer reads the first part on its own (TCP_NODELAY is
            // set: each write is its own segment). Only how the split lands depends on it.
            thread::sleep(Duration::from_millis(30));
            let mut rest = h[cut..].to_vec();
            rest.extend_from_slice(b"after the header\n");
            s.write_all(&rest).expect("write the rest");
            s.shutdown(Shutdown::Write).expect("shutdown");
            let out = read_until_eof(&mut s, IO_TIMEOUT)
                .unwrap_or_else(|e| panic!("{name} cut at {cut}: {e}"));
            assert_eq!(
                String::from_utf8_lossy(&out),
                format!("{want}\nafter the header\n"),
                "{name} cut at {cut}"
            );
        }
    }
}

#[test]
fn header_address_is_the_source_ip_hash_key() {
    let backends: Vec<Backend> = (0..3).map(|i| Backend::id(&format!("B{i}"))).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let lb = L4lb::start(
        &Conf::new("source_ip_hash", &addrs)
            .extra("accept_proxy_protocol = true")
            .extra(TRUST_LOOPBACK),
    );
    let served = |peer: IpAddr, client: &str| -> String {
        match attempt_with(lb.addr, peer, &v1_header(client, "198.51.100.1", 4000, 80)) {
            Outcome::Served(id) => id,
            Outcome::Refused => panic!("{client} via {peer} refused"),
        }
    };
    // One proxy, many clients: they spread over the backends.
    let mut seen: Vec<String> = (1..=24)
        .map(|i| served(lo(1), &format!("10.0.0.{i}")))
        .collect();
    seen.sort();
    seen.dedup();
    assert!(
        seen.len() > 1,
        "every client on {seen:?}: the peer was hashed"
    );
    // One client through many proxies: always the same backend.
    let home = served(lo(1), "10.0.0.1");
    for p in 2..=8 {
        assert_eq!(served(lo(p), "10.0.0.1"), home, "via 127.0.0.{p}");
    }
}

#[test]
fn header_address_is_checked_against_the_acl() {
    let b = Backend::id("B0");
    // The proxy itself (127.0.0.1) is not in `allow`: only the header's address is checked.
    let (lb, admin) = L4lb::start_with_admin(
        &Conf::new("round_robin", &[b.addr])
            .extra("accept_proxy_protocol = true")
            .extra(TRUST_LOOPBACK)
            .extra("allow = [\"192.0.2.0/24\"]")
            .extra("deny = [\"192.0.2.7\"]"),
    );
    let hdr = |ip: &str| v1_header(ip, "198.51.100.1", 4000, 80);
    assert_eq!(
        attempt_with(lb.addr, lo(1), &hdr("192.0.2.8")),
        Outcome::Served("B0".into())
    );
    assert_eq!(
        attempt_with(lb.addr, lo(1), &hdr("192.0.2.7")),
        Outcome::Refused,
        "denied"
    );
    assert_eq!(
        attempt_with(lb.addr, lo(1), &hdr("198.51.100.9")),
        Outcome::Refused,
        "not allowed"
    );
    assert_eq!(b.accepted(), 1);
    assert!(wait_until(IO_TIMEOUT, || rejected(admin, "acl") == 2.0));
}

#[test]
fn client_without_a_header_is_refused() {
    let b = Backend::id("B0");
    let (lb, admin) = L4lb::start_with_admin(
        &Conf::new("round_robin", &[b.addr])
            .extra("accept_proxy_protocol = true")
            .extra(TRUST_LOOPBACK)
            .extra("client_first_byte_timeout_ms = 300"),
    );
    // Not a header.
    assert_eq!(
        attempt_with(lb.addr, lo(1), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        Outcome::Refused
    );
    // A v1 line that never ends within 107 bytes.
    let mut long = b"PROXY TCP4 ".to_vec();
    long.resize(200, b'1');
    assert_eq!(attempt_with(lb.addr, lo(1), &long), Outcome::Refused);
    // EOF before a whole header.
    let mut s = connect_from(lo(1), lb.addr).expect("connect");
    s.write_all(b"PROXY TCP4 192.0.2.1").expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(attempt_on(&mut s), Outcome::Refused);
    // Silence: refused at client_first_byte_timeout_ms (300 ms, within REFUSAL_TIMEOUT).
    assert_eq!(attempt_with(lb.addr, lo(1), b""), Outcome::Refused);
    assert_eq!(
        b.accepted(),
        0,
        "a connection without a header reached the backend"
    );
    assert!(wait_until(IO_TIMEOUT, || rejected(admin, "acl") == 4.0));
    // A header still gets through.
    assert_eq!(
        attempt_with(lb.addr, lo(1), &v1_header("192.0.2.1", "192.0.2.2", 1, 2)),
        Outcome::Served("B0".into())
    );
}

#[test]
fn untrusted_peer_is_refused() {
    let b = Backend::id("B0");
    let (lb, admin) = L4lb::start_with_admin(
        &Conf::new("round_robin", &[b.addr])
            .extra("accept_proxy_protocol = true")
            .extra("trusted_proxies = [\"127.0.0.2/32\"]"),
    );
    let h = v1_header("192.0.2.1", "192.0.2.2", 1, 2);
    assert_eq!(attempt_with(lb.addr, lo(3), &h), Outcome::Refused);
    assert_eq!(
        attempt_with(lb.addr, lo(2), &h),
        Outcome::Served("B0".into())
    );
    assert_eq!(b.accepted(), 1);
    assert!(wait_until(IO_TIMEOUT, || rejected(admin, "acl") == 1.0));
}
