//! The TCP data plane end to end: bytes both ways (splice auto, always and never), half-close in
//! both directions, resets, 1,000 concurrent connections, IPv6, more workers than cores, and
//! the congestion control of backend connections (read back with `ss`).
//!
//! Every test runs the real `l4lb` binary against in-process backends on loopback.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// 64 MiB each way: large enough that the kernel buffers (a few MiB) cannot hide a stall, and
/// that a splice/copy bug in the middle of a long transfer shows up in the hash.
const BULK_BYTES: u64 = 64 * 1024 * 1024;
/// An odd write size, so writes never line up with the balancer's pipe or buffer sizes.
const BULK_CHUNK: usize = 61 * 1024 + 3;

/// Write `BULK_BYTES` of PRNG data from one thread while another reads the echo; compare the
/// hashes and lengths of what was sent and what came back.
fn bulk_both_ways(conf: Conf) {
    let backend = Backend::echo("echo");
    let conf = Conf {
        backends: vec![format!("addr = \"{}\"", backend.addr)],
        ..conf
    };
    let lb = L4lb::start(&conf);
    let started = Instant::now();
    let mut tx = connect(lb.addr).expect("connect to l4lb");
    let mut rx = tx.try_clone().expect("clone");

    let writer = thread::spawn(move || -> std::io::Result<(u64, u64)> {
        let mut rng = XorShift::new(0x5eed_1234);
        let mut hash = StreamHash::new();
        let mut buf = vec![0u8; BULK_CHUNK];
        let mut left = BULK_BYTES;
        while left > 0 {
            let n = (left as usize).min(BULK_CHUNK);
            rng.fill(&mut buf[..n]);
            hash.update(&buf[..n]);
            tx.write_all(&buf[..n])?;
            left -= n as u64;
        }
        tx.shutdown(Shutdown::Write)?;
        Ok(hash.finish())
    });

    let mut hash = StreamHash::new();
    let mut buf = vec![0u8; 256 * 1024];
    let read_result = loop {
        match rx.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => hash.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let received = hash.finish();
    let sent = writer.join().expect("writer thread");
    let elapsed = started.elapsed();
    let sent = sent.expect("writing to l4lb");
    read_result.unwrap_or_else(|e| {
        panic!(
            "reading the echo failed after {} of {BULK_BYTES} bytes: {e}",
            received.1
        )
    });
    assert_eq!(sent.1, BULK_BYTES);
    assert_eq!(received.1, sent.1, "echoed length differs from sent length");
    assert_eq!(received.0, sent.0, "echoed bytes differ from sent bytes");
    eprintln!(
        "splice={}: {} MiB each way in {elapsed:?}",
        conf.splice,
        BULK_BYTES >> 20
    );
    drop(lb);
}

#[test]
fn bulk_64mib_both_ways_splice_auto() {
    // Also the default runtime: one pinned worker per CPU.
    bulk_both_ways(
        Conf::new("round_robin", &[])
            .workers("auto")
            .pin_cpus(true)
            .splice("auto"),
    );
}

#[test]
fn bulk_64mib_both_ways_splice_always() {
    bulk_both_ways(Conf::new("round_robin", &[]).splice("always"));
}

#[test]
fn bulk_64mib_both_ways_splice_never() {
    bulk_both_ways(Conf::new("round_robin", &[]).splice("never"));
}

/// Client sends, then shuts down its write side; the backend sees EOF and only then replies;
/// the client reads the whole reply and then EOF.
#[test]
fn half_close_client_first() {
    let backend = Backend::spawn(
        localhost(),
        "reply-after-eof",
        Arc::new(|mut s: TcpStream| {
            let mut hash = StreamHash::new();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => hash.update(&buf[..n]),
                    Err(_) => return,
                }
            }
            let (h, len) = hash.finish();
            let reply = format!("got {len} bytes, hash {h:016x}\n");
            // A reply bigger than one segment, after our read side has seen EOF.
            let mut body = reply.clone().into_bytes();
            body.extend(std::iter::repeat_n(b'r', 200_000));
            let _ = s.write_all(&body);
            let _ = s.shutdown(Shutdown::Write);
        }),
    );
    let lb = L4lb::start(&Conf::new("round_robin", &[backend.addr]));

    let mut s = connect(lb.addr).expect("connect");
    let mut data = vec![0u8; 300_000];
    XorShift::new(42).fill(&mut data);
    let mut hash = StreamHash::new();
    hash.update(&data);
    let (h, len) = hash.finish();
    s.write_all(&data).expect("send request");
    s.shutdown(Shutdown::Write).expect("half-close");

    let reply = read_until_eof(&mut s, IO_TIMEOUT).expect("reply, then EOF");
    let expected_head = format!("got {len} bytes, hash {h:016x}\n");
    assert!(
        reply.starts_with(expected_head.as_bytes()),
        "backend reply {:?}, expected to start with {expected_head:?}",
        String::from_utf8_lossy(&reply[..reply.len().min(80)])
    );
    assert_eq!(
        reply.len(),
        expected_head.len() + 200_000,
        "reply cut short"
    );
}

/// Backend sends, then shuts down its write side; the client reads the data and EOF, and can
/// still send: the backend receives everything the client sends after that.
#[test]
fn half_close_backend_first() {
    let (got_tx, got_rx) = mpsc::channel::<Vec<u8>>();
    let backend = Backend::spawn(
        localhost(),
        "talk-then-listen",
        Arc::new(move |mut s: TcpStream| {
            if s.write_all(b"hello from backend").is_err() {
                return;
            }
            if s.shutdown(Shutdown::Write).is_err() {
                return;
            }
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let _ = got_tx.send(got);
        }),
    );
    let lb = L4lb::start(&Conf::new("round_robin", &[backend.addr]));

    // A few rounds: whether the FIN arrives with the data or after it is up to timing.
    for round in 0..5u64 {
        let mut s = connect(lb.addr).expect("connect");
        let first = read_until_eof(&mut s, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("round {round}: backend data, then EOF: {e}"));
        assert_eq!(first, b"hello from backend", "round {round}");

        let mut late = vec![0u8; 100_000];
        XorShift::new(9 + round).fill(&mut late);
        s.write_all(&late)
            .expect("client can still send after the backend's EOF");
        s.shutdown(Shutdown::Write).expect("half-close");
        let got = got_rx
            .recv_timeout(IO_TIMEOUT)
            .expect("backend never saw the client's EOF");
        assert_eq!(
            got.len(),
            late.len(),
            "round {round}: backend got a different amount"
        );
        assert!(got == late, "round {round}: backend got different bytes");
    }
}

/// The most common close of all (an HTTP/1.0-style server): a short reply and a FIN right
/// behind it, often in the same wake-up of the balancer. The client must get the reply and
/// the EOF, in every splice mode, every time.
#[test]
fn short_reply_then_close_reaches_client() {
    const CONNS: usize = 30;
    let backend = Backend::spawn(
        localhost(),
        "bye",
        Arc::new(|mut s: TcpStream| {
            let _ = s.write_all(b"bye\n");
            let _ = s.shutdown(Shutdown::Write);
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        }),
    );
    for mode in ["auto", "always", "never"] {
        let lb = L4lb::start(&Conf::new("round_robin", &[backend.addr]).splice(mode));
        for i in 0..CONNS {
            let mut s = connect(lb.addr).expect("connect");
            let got = read_until_eof(&mut s, Duration::from_secs(5)).unwrap_or_else(|e| {
                panic!("splice={mode}, connection #{i}: reply then EOF expected: {e}")
            });
            assert_eq!(got, b"bye\n", "splice={mode}, connection #{i}");
        }
    }
}

/// A backend reset (SO_LINGER 0) reaches the client promptly as a reset or an EOF.
#[test]
fn backend_reset_reaches_client() {
    let backend = Backend::spawn(
        localhost(),
        "resetter",
        Arc::new(|mut s: TcpStream| {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                reset(s);
            }
        }),
    );
    let lb = L4lb::start(&Conf::new("round_robin", &[backend.addr]));

    let mut s = connect(lb.addr).expect("connect");
    s.write_all(b"x").expect("send");
    let t0 = Instant::now();
    let got = first_read(&mut s, Duration::from_secs(5));
    let took = t0.elapsed();
    assert!(
        matches!(got, FirstRead::Reset | FirstRead::Eof),
        "client read {got:?} after the backend reset"
    );
    assert!(
        took < Duration::from_secs(2),
        "reset took {took:?} to reach the client"
    );
}

/// A client reset reaches the backend promptly as a reset or an EOF.
#[test]
fn client_reset_reaches_backend() {
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (seen_tx, seen_rx) = mpsc::channel::<(FirstRead, Instant)>();
    let backend = Backend::spawn(
        localhost(),
        "watcher",
        Arc::new(move |mut s: TcpStream| {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_err() {
                return;
            }
            let _ = ready_tx.send(());
            let got = first_read(&mut s, Duration::from_secs(5));
            let _ = seen_tx.send((got, Instant::now()));
        }),
    );
    let lb = L4lb::start(&Conf::new("round_robin", &[backend.addr]));

    let mut s = connect(lb.addr).expect("connect");
    s.write_all(b"x").expect("send");
    ready_rx
        .recv_timeout(IO_TIMEOUT)
        .expect("backend never got the first byte");
    let t0 = Instant::now();
    reset(s);
    let (got, when) = seen_rx
        .recv_timeout(IO_TIMEOUT)
        .expect("backend handler did not report");
    assert!(
        matches!(got, FirstRead::Reset | FirstRead::Eof),
        "backend read {got:?} after the client reset"
    );
    let took = when.saturating_duration_since(t0);
    assert!(
        took < Duration::from_secs(2),
        "client reset took {took:?} to reach the backend"
    );
}

/// 1,000 client connections open at the same time, each with its own message echoed back.
#[test]
fn thousand_concurrent_connections() {
    const N: usize = 1000;
    let limit = raise_nofile_limit();
    assert!(
        limit >= 2 * N as u64 + 100,
        "RLIMIT_NOFILE hard limit {limit} is too low for this test"
    );
    let a = Backend::echo("a");
    let b = Backend::echo("b");
    let lb = L4lb::start(&Conf::new("round_robin", &[a.addr, b.addr]));

    let mut conns: Vec<TcpStream> = (0..N)
        .map(|i| connect(lb.addr).unwrap_or_else(|e| panic!("connect #{i}: {e}")))
        .collect();
    let messages: Vec<Vec<u8>> = (0..N)
        .map(|i| format!("connection {i} says {:x}\n", i * 7919).into_bytes())
        .collect();
    for (i, (s, m)) in conns.iter_mut().zip(&messages).enumerate() {
        s.write_all(m)
            .unwrap_or_else(|e| panic!("write on connection #{i}: {e}"));
    }
    for (i, (s, m)) in conns.iter_mut().zip(&messages).enumerate() {
        let back = read_exact_within(s, m.len(), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("echo on connection #{i}: {e}"));
        assert_eq!(&back, m, "connection #{i} got another connection's bytes");
    }
    // Every connection is still open, so every backend-side connection must be too.
    assert_eq!(
        a.accepted() + b.accepted(),
        N,
        "backend connections accepted"
    );
    assert_eq!(
        a.active() + b.active(),
        N,
        "backend connections open at once"
    );
    drop(conns);
}

/// An IPv6 listener forwarding to an IPv6 backend.
#[test]
fn ipv6_listener_and_backend() {
    if !ipv6_available() {
        eprintln!("note: ::1 is not available here; skipping the IPv6 test");
        return;
    }
    let backend = Backend::spawn(
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        "v6",
        Arc::new(|s| echo_conn(s, b"v6\n")),
    );
    let lb = L4lb::start(&Conf::new("round_robin", &[backend.addr]).ipv6(true));
    assert!(lb.addr.is_ipv6());

    for i in 0..5 {
        let mut s = connect(lb.addr).expect("connect over IPv6");
        assert_eq!(read_line(&mut s, IO_TIMEOUT).expect("greeting"), "v6");
        echo_roundtrip(&mut s, format!("over v6 #{i}").as_bytes()).expect("echo over IPv6");
        s.shutdown(Shutdown::Write).expect("half-close");
        let rest = read_until_eof(&mut s, IO_TIMEOUT).expect("EOF");
        assert!(rest.is_empty());
    }
    assert_eq!(backend.accepted(), 5);
}

/// Four workers on a two-core machine forward correctly, sequentially and concurrently.
#[test]
fn more_workers_than_cores() {
    let a = Backend::echo("a");
    let b = Backend::echo("b");
    let lb = L4lb::start(&Conf::new("round_robin", &[a.addr, b.addr]).workers("4"));

    for i in 0..40 {
        let mut s = connect(lb.addr).expect("connect");
        echo_roundtrip(&mut s, format!("sequential {i}").as_bytes()).expect("echo");
    }
    let addr: SocketAddr = lb.addr;
    let threads: Vec<_> = (0..16)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..5 {
                    let mut s = connect(addr).expect("connect");
                    let msg = format!("thread {t} conn {i} ").repeat(100);
                    echo_roundtrip(&mut s, msg.as_bytes()).expect("echo");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    assert_eq!(a.accepted() + b.accepted(), 40 + 16 * 5);
    assert!(a.accepted() > 0 && b.accepted() > 0, "both backends used");
}

/// The congestion control names `ss` shows for the established sockets whose destination is
/// `backend` (its port is its own: those are l4lb's backend sides). `ss -ti` prints each
/// socket on two lines; the second, indented with a tab, starts with the algorithm's name.
fn congestion_to(backend: SocketAddr) -> Vec<String> {
    ss_info_to(backend)
        .iter()
        .filter_map(|info| info.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The info line (`ss -i`: congestion control first, then `key:value` fields) of each
/// established TCP socket on this host whose peer is `peer`.
fn ss_info_to(peer: SocketAddr) -> Vec<String> {
    ss_info(&["dst".to_string(), peer.to_string()])
}

/// The info line of each established TCP socket on this host that `filter` (an `ss` filter
/// expression, one word per element) selects.
fn ss_info(filter: &[String]) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args(["-Htin", "state", "established"])
        .args(filter)
        .output()
        .expect("run ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.starts_with('\t'))
        .map(str::to_string)
        .collect()
}

/// The host's default and an algorithm every kernel has that differs from it.
fn host_and_other_congestion() -> (String, &'static str) {
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .expect("read the host's default congestion control");
    let host = host.trim().to_string();
    // reno is built into every kernel; cubic when reno happens to be the host's default.
    let other = if host == "reno" { "cubic" } else { "reno" };
    (host, other)
}

/// One connection through `lb` to `backend`: the algorithm its backend side runs. The
/// connection is closed, and gone from `ss`, before it returns.
fn congestion_of_next_connection(lb: SocketAddr, backend: SocketAddr) -> Vec<String> {
    let mut s = connect(lb).expect("connect");
    echo_roundtrip(&mut s, b"congestion").expect("echo");
    let names = congestion_to(backend);
    drop(s);
    assert!(
        wait_until(Duration::from_secs(5), || congestion_to(backend).is_empty()),
        "l4lb's backend side stayed established after the client closed"
    );
    names
}

/// `backend_congestion_control` reaches the kernel: l4lb's socket to the backend runs the
/// algorithm asked for, not the host's default; a reload changes it for new connections, and
/// a reload naming an algorithm the kernel lacks is refused and changes nothing.
#[test]
fn backend_connections_run_the_congestion_control_asked_for() {
    let (host, other) = host_and_other_congestion();
    let backend = Backend::echo("cc");
    let conf = Conf::new("round_robin", &[backend.addr]);
    let with = |name: &str| {
        conf.clone()
            .extra(&format!("backend_congestion_control = \"{name}\""))
    };
    let (lb, _admin) = L4lb::start_with_admin(&with(other));
    assert_eq!(
        congestion_of_next_connection(lb.addr, backend.addr),
        [other]
    );

    lb.reload(&with("nosuchcc"));
    lb.wait_reloads("error", 1.0, Duration::from_secs(5));
    assert_eq!(
        congestion_of_next_connection(lb.addr, backend.addr),
        [other]
    );

    lb.reload(&conf);
    lb.wait_reloads("ok", 1.0, Duration::from_secs(5));
    assert_eq!(
        congestion_of_next_connection(lb.addr, backend.addr),
        [host.as_str()]
    );
}

/// Bytes waiting unsent (`notsent:` in `ss -i`) in each established socket from `local` to
/// `peer`; 0 for a socket that shows none. Both ends are given because a port alone does not
/// name one socket: the kernel gives the same ephemeral port to connections toward different
/// destinations (l4lb's toward the backend and the test client's toward l4lb, say).
fn notsent_between(local: SocketAddr, peer: SocketAddr) -> Vec<u64> {
    ss_info(&[
        "src".to_string(),
        local.to_string(),
        "dst".to_string(),
        peer.to_string(),
    ])
    .iter()
    .map(|info| {
        info.split_whitespace()
            .find_map(|field| field.strip_prefix("notsent:"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    })
    .collect()
}

/// Write to `s` until it blocks for good (the far end reads nothing) or `limit` bytes; each
/// write adds to `written`. Returns when a write fails (the test shuts the socket down).
fn write_until_blocked(mut s: TcpStream, written: Arc<std::sync::atomic::AtomicU64>, limit: u64) {
    let chunk = vec![0x5au8; 64 * 1024];
    while written.load(std::sync::atomic::Ordering::Relaxed) < limit {
        match s.write(&chunk) {
            Ok(n) if n > 0 => {
                written.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
            _ => return,
        }
    }
}

/// Wait until `written` has not moved for half a second (the path is full), at most 10 s.
fn wait_until_full(written: &std::sync::atomic::AtomicU64) {
    let mut last = u64::MAX;
    let mut still = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && still < 5 {
        thread::sleep(Duration::from_millis(100));
        let now = written.load(std::sync::atomic::Ordering::Relaxed);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    assert!(still >= 5, "the stream never filled the path");
}

/// At most this many bytes may wait unsent in l4lb's socket toward a peer that stopped reading:
/// the 32 KiB cap of a bulk direction (flow.rs, BULK_NOTSENT_LOWAT) plus one segment of up to
/// 64 KiB that the kernel may queue past it. Without the cap it is the send buffer, megabytes.
const UNSENT_BOUND: u64 = 128 * 1024;

/// A bulk stream keeps little waiting unsent in l4lb's socket toward its receiver, in both
/// directions: the rest stays back, in the sender's own socket (backpressure), instead of
/// piling up in l4lb's, where ACKs from the receiver's CPU would send it out of order.
#[test]
fn a_bulk_stream_keeps_little_unsent_in_l4lb_s_sockets() {
    use std::net::TcpListener;
    for splice in ["auto", "never"] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let backend = listener.local_addr().expect("backend addr");
        let conf = Conf {
            splice: splice.to_string(),
            ..Conf::new("round_robin", &[backend])
        };
        let lb = L4lb::start(&conf);

        // Upload: the client writes, the backend reads nothing.
        let client = connect(lb.addr).expect("connect");
        let (held, _) = listener.accept().expect("accept through l4lb");
        let unsent = unsent_while_blocked(client, held);
        assert!(
            unsent <= UNSENT_BOUND,
            "splice {splice}: {unsent} bytes unsent toward the backend"
        );

        // Download: the backend writes, the client reads nothing.
        let client = connect(lb.addr).expect("connect");
        let (held, _) = listener.accept().expect("accept through l4lb");
        let unsent = unsent_while_blocked(held, client);
        assert!(
            unsent <= UNSENT_BOUND,
            "splice {splice}: {unsent} bytes unsent toward the client"
        );
    }
}

/// `sender` writes through l4lb to `stalled`, which reads nothing, until the path is full;
/// returns the bytes unsent in l4lb's one socket toward `stalled` (the socket whose ends are
/// `stalled`'s, swapped), then closes both.
fn unsent_while_blocked(sender: TcpStream, stalled: TcpStream) -> u64 {
    use std::sync::atomic::AtomicU64;
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (s, w) = (sender.try_clone().expect("clone"), written.clone());
        thread::spawn(move || write_until_blocked(s, w, 256 << 20))
    };
    let l4lb_side = stalled.peer_addr().expect("l4lb's end");
    let stalled_addr = stalled.local_addr().expect("stalled end");
    wait_until_full(&written);
    let unsent = notsent_between(l4lb_side, stalled_addr);
    sender.shutdown(Shutdown::Both).ok();
    stalled.shutdown(Shutdown::Both).ok();
    writer.join().expect("writer");
    assert_eq!(unsent.len(), 1, "l4lb's sockets toward {stalled_addr}");
    unsent[0]
}
