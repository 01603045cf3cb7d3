//! UDP balancing through the real binary over loopback: sessions, loss and duplicates under
//! many clients, the algorithms' spread, idle expiry, passive and active health, per-client
//! caps, and the largest datagram.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    ask, ask_until_answered, client, free_udp_addr, lo, localhost, Conf, L4lb, Mode, UdpBackend,
    REPLY_TIMEOUT, SILENCE,
};

const CLIENTS: usize = 64;
const DATAGRAMS: u32 = 1_000;
/// Datagrams each client keeps in flight: paces the load (64 x 8 = 512 at most, well inside
/// every socket buffer on the path) so that loopback loses nothing.
const WINDOW: u32 = 8;

/// The backend id of a `Mode::Tagged` reply.
fn tag(reply: &[u8]) -> u8 {
    reply[0]
}

#[test]
fn sixty_four_clients_get_every_reply_once() {
    let backends: Vec<UdpBackend> = (0..4).map(|_| UdpBackend::spawn(Mode::Echo)).collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let lb = L4lb::start(&Conf::udp("round_robin", &addrs));
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let target = lb.addr;
            thread::spawn(move || {
                // 127.0.0.1 .. 127.0.0.16, four source ports each.
                let s = client(lo(1 + (c % 16) as u8), target);
                s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
                let mut seen = vec![false; DATAGRAMS as usize];
                let mut next = 0u32;
                let mut got = 0u32;
                let mut msg = [0u8; 64];
                let mut buf = [0u8; 128];
                while got < DATAGRAMS {
                    while next < DATAGRAMS && next - got < WINDOW {
                        msg[..4].copy_from_slice(&(c as u32).to_be_bytes());
                        msg[4..8].copy_from_slice(&next.to_be_bytes());
                        s.send(&msg).unwrap();
                        next += 1;
                    }
                    let n = s
                        .recv(&mut buf)
                        .unwrap_or_else(|e| panic!("client {c}: reply {got} lost: {e}"));
                    assert_eq!(n, 64, "client {c}: reply size");
                    let from = u32::from_be_bytes(buf[..4].try_into().unwrap());
                    let seq = u32::from_be_bytes(buf[4..8].try_into().unwrap());
                    assert_eq!(from, c as u32, "client {c} got another client's reply");
                    assert!(seq < DATAGRAMS, "client {c}: bad sequence {seq}");
                    assert!(!seen[seq as usize], "client {c}: duplicate reply {seq}");
                    seen[seq as usize] = true;
                    got += 1;
                }
                assert!(seen.iter().all(|&x| x));
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let total: usize = backends.iter().map(|b| b.received()).sum();
    assert_eq!(total, CLIENTS * DATAGRAMS as usize, "datagrams at backends");
    // Sessions are spread over every backend (64 sessions, round robin).
    assert!(backends.iter().all(|b| b.received() >= DATAGRAMS as usize));
    eprintln!(
        "{} round trips in {:?}",
        CLIENTS * DATAGRAMS as usize,
        started.elapsed()
    );
}

#[test]
fn round_robin_spreads_sessions_evenly() {
    let backends: Vec<UdpBackend> = (0..3).map(|i| UdpBackend::spawn(Mode::Tagged(i))).collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    // One worker: one selector, so round robin is exact.
    let lb = L4lb::start(&Conf::udp("round_robin", &addrs).workers("1"));
    let mut per_backend = [0usize; 3];
    let mut clients = Vec::new();
    for i in 0..30 {
        let s = client(localhost(), lb.addr);
        let r = ask_until_answered(&s, b"hello").unwrap_or_else(|| panic!("client {i}"));
        per_backend[tag(&r) as usize] += 1;
        // Later datagrams of a session stay on its backend.
        let again = ask_until_answered(&s, b"again").expect("second datagram");
        assert_eq!(tag(&again), tag(&r));
        clients.push(s);
    }
    assert_eq!(per_backend, [10, 10, 10]);
}

#[test]
fn source_ip_hash_keeps_each_client_ip_on_one_backend() {
    let backends: Vec<UdpBackend> = (0..3).map(|i| UdpBackend::spawn(Mode::Tagged(i))).collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let lb = L4lb::start(&Conf::udp("source_ip_hash", &addrs));
    let mut chosen: HashMap<IpAddr, u8> = HashMap::new();
    for ip in 1..=12u8 {
        for port_try in 0..3 {
            let s = client(lo(ip), lb.addr);
            let r = ask_until_answered(&s, b"x").expect("reply");
            let b = *chosen.entry(lo(ip)).or_insert(tag(&r));
            assert_eq!(b, tag(&r), "127.0.0.{ip} (source port #{port_try}) moved");
        }
    }
    let mut used: Vec<u8> = chosen.values().copied().collect();
    used.sort_unstable();
    used.dedup();
    assert!(
        used.len() >= 2,
        "12 client IPs all hashed to one backend: {chosen:?}"
    );
}

#[test]
fn session_expires_after_idle_timeout() {
    let backends: Vec<UdpBackend> = (0..2).map(|i| UdpBackend::spawn(Mode::Tagged(i))).collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    // max_connections = 1: a second session is possible only once the first is gone, which
    // shows that the exact session count (l4lb_udp_sessions_active) went back to 0.
    let conf = Conf::udp("round_robin", &addrs)
        .workers("1")
        .idle(1)
        .extra("max_connections = 1");
    let (lb, _) = L4lb::start_with_admin(&conf);
    let sessions = || lb.metric("l4lb_udp_sessions_active", &[("listener", "u")]);
    assert_eq!(sessions(), 0.0);
    let a = client(localhost(), lb.addr);
    let first = ask_until_answered(&a, b"a1").expect("a served");
    assert_eq!(sessions(), 1.0);
    let b = client(localhost(), lb.addr);
    assert_eq!(ask(&b, b"b1", SILENCE), None, "listener cap: b refused");
    // Traffic keeps a session alive past its timeout...
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(400));
        assert_eq!(
            ask(&a, b"keep", REPLY_TIMEOUT).map(|r| tag(&r)),
            Some(tag(&first))
        );
    }
    // ...and 1 s of silence ends it.
    thread::sleep(Duration::from_millis(1300));
    let r = ask(&b, b"b2", REPLY_TIMEOUT).expect("b served after a's session expired");
    // A new session is picked afresh: round robin moved on to the other backend.
    assert_ne!(tag(&r), tag(&first));
    thread::sleep(Duration::from_millis(1300));
    let r = ask(&a, b"a2", REPLY_TIMEOUT).expect("a served after b's session expired");
    assert_eq!(tag(&r), tag(&first));
    assert_eq!(sessions(), 1.0);
    assert!(
        common::wait_until(Duration::from_secs(3), || sessions() == 0.0),
        "the session gauge did not go back to 0"
    );
    let refused = [("listener", "u"), ("reason", "listener_limit")];
    assert!(lb.metric("l4lb_connections_rejected_total", &refused) >= 1.0);
}

#[test]
fn closed_backend_port_is_marked_down_and_avoided() {
    let live = UdpBackend::spawn(Mode::Tagged(1));
    // A port nobody holds: every datagram to it gets ICMP port unreachable.
    let dead = free_udp_addr();
    let lb = L4lb::start(&Conf::udp("round_robin", &[dead, live.addr]).workers("1"));
    // Each session on the dead backend ends with ICMP port unreachable: a passive failure.
    // Three in a row (the default fall) mark it down.
    let mut clients = Vec::new();
    for i in 0..8 {
        let s = client(localhost(), lb.addr);
        let r = ask_until_answered(&s, b"x").unwrap_or_else(|| panic!("client {i}"));
        assert_eq!(tag(&r), 1);
        clients.push(s);
    }
    // Now every new session is answered at once: the dead backend is skipped.
    for i in 0..10 {
        let s = client(localhost(), lb.addr);
        let r = ask(&s, b"y", REPLY_TIMEOUT).unwrap_or_else(|| panic!("new client {i}"));
        assert_eq!(tag(&r), 1);
    }
}

#[test]
fn active_udp_check_marks_a_silent_backend_down() {
    let good = UdpBackend::spawn(Mode::Pong);
    let silent = UdpBackend::spawn(Mode::Silent);
    let conf = Conf::udp("round_robin", &[silent.addr, good.addr])
        .workers("1")
        .health("interval_ms = 100")
        .health("timeout_ms = 100")
        .health("rise = 1")
        .health("fall = 1")
        .health("send = \"ping\"")
        .health("expect = \"pong\"");
    let lb = L4lb::start(&conf);
    // The first check of the silent backend times out within ~200 ms.
    assert!(common::wait_until(Duration::from_secs(3), || silent
        .received()
        >= 2));
    thread::sleep(Duration::from_millis(100));
    for i in 0..6 {
        let s = client(localhost(), lb.addr);
        let r = ask(&s, b"data", REPLY_TIMEOUT).unwrap_or_else(|| panic!("client {i}"));
        assert_eq!(r, b"data");
    }
    // Probes reached the good backend too.
    assert!(good.received() > 6);
}

#[test]
fn per_client_cap_refuses_the_extra_session_only() {
    let backend = UdpBackend::spawn(Mode::Echo);
    let conf = Conf::udp("round_robin", &[backend.addr]).extra("max_conns_per_client = 2");
    let lb = L4lb::start(&conf);
    let a1 = client(lo(5), lb.addr);
    let a2 = client(lo(5), lb.addr);
    let a3 = client(lo(5), lb.addr);
    assert_eq!(ask(&a1, b"1", REPLY_TIMEOUT).as_deref(), Some(&b"1"[..]));
    assert_eq!(ask(&a2, b"2", REPLY_TIMEOUT).as_deref(), Some(&b"2"[..]));
    assert_eq!(ask(&a3, b"3", SILENCE), None, "third session of 127.0.0.5");
    let b = client(lo(6), lb.addr);
    assert_eq!(ask(&b, b"4", REPLY_TIMEOUT).as_deref(), Some(&b"4"[..]));
    // The two admitted sessions still work.
    assert_eq!(ask(&a1, b"5", REPLY_TIMEOUT).as_deref(), Some(&b"5"[..]));
    assert_eq!(backend.received(), 4);
}

#[test]
fn largest_datagram_round_trips_intact() {
    let backend = UdpBackend::spawn(Mode::Echo);
    let lb = L4lb::start(&Conf::udp("round_robin", &[backend.addr]));
    let s = client(localhost(), lb.addr);
    let mut rng = common::XorShift::new(7);
    let mut msg = vec![0u8; 65_507];
    rng.fill(&mut msg);
    let r = ask(&s, &msg, REPLY_TIMEOUT).expect("reply");
    assert_eq!(r.len(), msg.len());
    assert!(r == msg, "payload changed");
}

/// A backend that answers every datagram with `BURST` numbered datagrams, as fast as it can.
fn spawn_burst_backend() -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind((localhost(), 0)).expect("bind burst backend");
    let addr = socket.local_addr().expect("burst backend addr");
    // Ends once no request came for a while (or with the test process).
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("burst backend timeout");
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let mut msg = [0u8; 100];
            for seq in 0..BURST {
                msg[..4].copy_from_slice(&seq.to_be_bytes());
                if socket.send_to(&msg, from).is_err() {
                    break;
                }
            }
        }
    });
    addr
}

/// Replies per request of [`spawn_burst_backend`]: well inside a default socket buffer at every
/// hop (200 x 100 bytes), so loopback drops none.
const BURST: u32 = 200;

#[test]
fn a_backend_streaming_replies_reaches_the_client_whole_and_in_order() {
    // A session socket with many datagrams waiting is read in batches, within a per-turn
    // budget, and the rest in later turns: every datagram must still reach the client, in
    // order, whatever the worker count.
    let backend = spawn_burst_backend();
    for workers in ["1", "auto", "4"] {
        let lb = L4lb::start(&Conf::udp("round_robin", &[backend]).workers(workers));
        let s = client(localhost(), lb.addr);
        s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        let mut buf = [0u8; 128];
        for round in 0..5 {
            s.send(b"go").unwrap();
            for expected in 0..BURST {
                let n = s.recv(&mut buf).unwrap_or_else(|e| {
                    panic!("workers {workers}, round {round}: reply {expected} lost: {e}")
                });
                assert_eq!(n, 100, "workers {workers}: reply size");
                let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                assert_eq!(
                    seq, expected,
                    "workers {workers}, round {round}: out of order"
                );
            }
        }
    }
}

#[test]
fn reload_replaces_adds_and_removes_udp_listeners() {
    let a = UdpBackend::spawn(Mode::Tagged(0));
    let b = UdpBackend::spawn(Mode::Tagged(1));
    let c = UdpBackend::spawn(Mode::Tagged(2));
    let lb = L4lb::start(&Conf::udp("round_robin", &[a.addr]).workers("1"));
    let c1 = client(localhost(), lb.addr);
    assert_eq!(ask_until_answered(&c1, b"1").map(|r| tag(&r)), Some(0));

    // Same listener, other backends: new sessions go to b, c1's session stays on a.
    lb.reload(&Conf::udp("round_robin", &[b.addr]).workers("1"));
    assert!(
        common::wait_until(REPLY_TIMEOUT, || {
            let s = client(localhost(), lb.addr);
            ask(&s, b"probe", Duration::from_millis(200)).map(|r| tag(&r)) == Some(1)
        }),
        "reload did not reach new sessions"
    );
    assert_eq!(ask(&c1, b"2", REPLY_TIMEOUT).map(|r| tag(&r)), Some(0));

    // Listener "u" removed, "v" added on the same address: u's sessions close with it, and
    // c1's next datagram opens a session of v.
    lb.reload(&Conf::udp("round_robin", &[c.addr]).workers("1").name("v"));
    assert!(
        common::wait_until(REPLY_TIMEOUT, || {
            ask(&c1, b"3", Duration::from_millis(200)).map(|r| tag(&r)) == Some(2)
        }),
        "c1 did not move to the new listener"
    );
}

#[test]
fn sigterm_drops_udp_sessions_and_exits_at_once() {
    let backend = UdpBackend::spawn(Mode::Echo);
    let mut lb = L4lb::start(&Conf::udp("round_robin", &[backend.addr]).drain(30));
    let clients: Vec<_> = (0..4).map(|_| client(localhost(), lb.addr)).collect();
    for s in &clients {
        assert!(ask_until_answered(s, b"x").is_some());
    }
    lb.signal(nix::sys::signal::Signal::SIGTERM);
    // UDP sessions do not hold the drain (30 s here): only TCP connections do.
    let (status, stderr) = lb.wait_exit(Duration::from_secs(5)).expect("exited");
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
}

/// Sockets in /proc/net/udp connected to `backend`: the session sockets l4lb holds to it
/// (nothing else on the host sends to the test's backends).
fn sockets_to(backend: std::net::SocketAddr) -> usize {
    let std::net::SocketAddr::V4(b) = backend else {
        return 0;
    };
    // /proc/net/udp writes an IPv4 address as the 32-bit word in host order, in hex.
    let rem = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(b.ip().octets()),
        b.port()
    );
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some(rem.as_str()))
        .count()
}

/// Whether process `pid` holds an io_uring (its worker threads wait in one).
fn holds_io_uring(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten().any(|e| {
                std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("io_uring"))
            })
        })
        .unwrap_or(false)
}

/// The UDP plane runs on io_uring unless `L4LB_IO_URING=off` (`make test` runs this file both
/// ways), and either way a session that ends gives its socket, and so its local port, back:
/// on the ring a receive in flight holds the socket open until it is cancelled.
#[test]
fn ended_sessions_release_their_sockets_on_either_io_path() {
    let backends: Vec<UdpBackend> = (0..2).map(|i| UdpBackend::spawn(Mode::Tagged(i))).collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let open = || addrs.iter().map(|a| sockets_to(*a)).sum::<usize>();
    let lb = L4lb::start(&Conf::udp("round_robin", &addrs).idle(1));
    let pid = lb.pid().expect("l4lb runs");
    let off = std::env::var("L4LB_IO_URING").is_ok_and(|v| v == "off");
    assert_eq!(
        holds_io_uring(pid),
        !off,
        "L4LB_IO_URING={off:?}: wrong I/O path"
    );
    assert_eq!(open(), 0);
    // Eight clients (distinct sources), each with a session that answers.
    let clients: Vec<_> = (0..8u8).map(|i| client(lo(40 + i), lb.addr)).collect();
    for (i, c) in clients.iter().enumerate() {
        assert!(
            ask_until_answered(c, format!("c{i}").as_bytes()).is_some(),
            "client {i} not served"
        );
    }
    assert_eq!(open(), 8, "one backend socket per session");
    // Idle for 1 s: every session ends, and with it its socket.
    assert!(
        common::wait_until(Duration::from_secs(5), || open() == 0),
        "{} session sockets still open after the idle timeout",
        open()
    );
    // Sessions that end by refusal (the backend's port closed) release theirs too.
    let (gone, kept) = (backends[0].addr, backends[1].addr);
    drop(backends);
    for (i, c) in clients.iter().enumerate() {
        let _ = ask(c, format!("r{i}").as_bytes(), SILENCE);
    }
    assert!(
        common::wait_until(Duration::from_secs(5), || sockets_to(gone) == 0
            && sockets_to(kept) == 0),
        "sockets to closed backends left open: {} and {}",
        sockets_to(gone),
        sockets_to(kept)
    );
}

/// A wildcard listener answers each client from the address the client sent to (IP_PKTINFO
/// on the way in, the same address as the reply's source on the way out): each client's socket
/// is connected to a different 127.0.0.x, and a connected socket takes replies from that
/// address only, so a reply from any other would be lost.
#[test]
fn a_wildcard_listener_replies_from_the_address_each_client_sent_to() {
    let backend = UdpBackend::spawn(Mode::Echo);
    let lb = L4lb::start_edited(&Conf::udp("round_robin", &[backend.addr]), |text, addr| {
        text.replace(
            &format!("bind = \"{addr}\""),
            &format!("bind = \"0.0.0.0:{}\"", addr.port()),
        )
    });
    for last in 1..=4u8 {
        let to = std::net::SocketAddr::new(lo(last), lb.addr.port());
        let c = client(lo(60 + last), to);
        for n in 0..3 {
            let msg = format!("to {to}, datagram {n}");
            assert_eq!(
                ask_until_answered(&c, msg.as_bytes()).as_deref(),
                Some(msg.as_bytes()),
                "no reply from {to}"
            );
        }
    }
}

/// Only a thread that serves UDP waits in an io_uring: a process with TCP listeners only
/// stays on epoll_wait (the ring is the UDP plane's; docs/benchmarks.md, "UDP on io_uring").
#[test]
fn a_tcp_only_process_waits_in_epoll() {
    // No connection is made: any backend address will do.
    let backend: std::net::SocketAddr = "127.0.0.1:9".parse().expect("address");
    let lb = L4lb::start(&Conf::new("round_robin", &[backend]));
    let pid = lb.pid().expect("l4lb runs");
    // Its workers are running once the listener is bound (`start` waits for that).
    thread::sleep(Duration::from_millis(200));
    assert!(!holds_io_uring(pid), "a TCP-only l4lb holds an io_uring");
}
