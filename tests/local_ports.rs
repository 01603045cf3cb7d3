//! Local port exhaustion (issue 9, items 1 and 2), in a network namespace of its own with a
//! narrowed `net.ipv4.ip_local_port_range` (a per-namespace setting): the real binary runs
//! inside it (`ip netns exec`), and so do its backends and clients (threads of this test
//! that joined the namespace with setns(2); a socket belongs to the namespace it was created
//! in). Everything the test binds uses explicit ports, so only l4lb's backend sockets draw on
//! the ten ephemeral ports.
//!
//! Needs root, `ip` and `sysctl`; skips with a message otherwise. The namespace has a unique
//! name (`common::netns::Netns`) and is always deleted, with the processes started in it, on
//! drop.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::netns::Netns;
use common::{l4lb_bin, metric, wait_until, TempDir, IO_TIMEOUT, STARTUP_TIMEOUT};

/// Ten ephemeral ports, all above the default range (32768-60999), so that nothing bound
/// before the range was narrowed can hold one of them.
const PORT_RANGE: &str = "61000 61009";
const PORTS: usize = 10;

fn lo(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, d))
}

/// A network namespace and the processes and threads serving in it, for one test.
struct Lab {
    ns: Netns,
    children: Vec<Child>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Lab {
    /// `None` (after saying why) when this machine cannot run the test.
    fn create(tag: &str) -> Option<Lab> {
        let ns = Netns::create(tag, &["sysctl"])?;
        Some(Lab {
            ns,
            children: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        })
    }

    fn narrow_port_range(&self) {
        let range = format!("net.ipv4.ip_local_port_range={PORT_RANGE}");
        self.ns.exec(&["sysctl", "-q", "-w", &range]);
    }

    fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.ns.within(f)
    }

    /// A UDP echo server on `addr` in the namespace that records its peers' addresses.
    fn udp_echo(&mut self, addr: SocketAddr, peers: Arc<Mutex<Vec<IpAddr>>>) {
        let socket = self.within(move || UdpSocket::bind(addr).expect("bind UDP backend"));
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let stop = self.stop.clone();
        self.threads.push(thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    peers.lock().unwrap().push(from.ip());
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        }));
    }

    /// A TCP server on `addr` in the namespace: writes `id\n` to each connection and holds it
    /// until the test ends.
    fn tcp_hold(&mut self, addr: SocketAddr, id: &'static str) {
        let listener = self.within(move || TcpListener::bind(addr).expect("bind TCP backend"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = self.stop.clone();
        self.threads.push(thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(format!("{id}\n").as_bytes());
                        held.push(s);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    /// Start `l4lb --config FILE` inside the namespace; its stderr goes to `log`.
    fn start_l4lb(&mut self, config: &std::path::Path, log: Arc<Mutex<String>>) {
        let mut child = self
            .ns
            .command(l4lb_bin())
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn l4lb in the namespace");
        if let Some(err) = child.stderr.take() {
            self.threads.push(thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    log.lock().unwrap().push_str(&(line + "\n"));
                }
            }));
        }
        self.children.push(child);
    }

    /// GET /metrics from `admin` (in the namespace), from an explicit client port.
    fn scrape(&self, admin: SocketAddr, client_port: u16) -> Option<String> {
        self.within(move || {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            s.set_reuse_address(true).ok()?;
            s.bind(&SocketAddr::new(lo(1), client_port).into()).ok()?;
            s.connect_timeout(&admin.into(), Duration::from_secs(2))
                .ok()?;
            let mut s: TcpStream = s.into();
            s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
            s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes())
                .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
        })
    }
}

/// Stops what the test started in the namespace; the namespace itself goes after (its Drop).
impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Scrapes from ever new explicit client ports (a closed connection's port may linger).
struct Scraper {
    admin: SocketAddr,
    next_port: u16,
}

impl Scraper {
    fn get(&mut self, ns: &Lab, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.next_port += 1;
        ns.scrape(self.admin, self.next_port)
            .and_then(|t| metric(&t, name, labels))
            .unwrap_or(-1.0)
    }
}

fn wait_for_admin(ns: &Lab, scraper: &mut Scraper, log: &Mutex<String>) {
    let up = wait_until(STARTUP_TIMEOUT, || {
        scraper.next_port += 1;
        ns.scrape(scraper.admin, scraper.next_port).is_some()
    });
    assert!(up, "l4lb did not start:\n{}", log.lock().unwrap());
}

/// UDP clients bound to explicit ports in the namespace, each sends one datagram; returns
/// the sockets and how many got an answer.
fn udp_clients(ns: &Lab, lb: SocketAddr, n: u16, base_port: u16) -> (Vec<UdpSocket>, usize) {
    let clients: Vec<UdpSocket> = ns.within(move || {
        (0..n)
            .map(|i| UdpSocket::bind(SocketAddr::new(lo(1), base_port + i)).expect("bind client"))
            .collect()
    });
    let mut answered = 0;
    let mut buf = [0u8; 64];
    for c in &clients {
        c.send_to(b"query", lb).expect("send");
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        if matches!(c.recv_from(&mut buf), Ok((5, _))) {
            answered += 1;
        }
    }
    (clients, answered)
}

/// Regression (item 1): with the local ports used up, UDP `connect` fails with EAGAIN and
/// TCP `connect` with EADDRNOTAVAIL; that was counted against the backends until every one
/// was down. Now such a connection or session is refused as `local_resources`, the backends
/// stay up, and what is open keeps working.
#[test]
fn port_exhaustion_refuses_locally_and_never_downs_a_backend() {
    let Some(mut ns) = Lab::create("prt") else {
        return;
    };
    let peers = Arc::new(Mutex::new(Vec::new()));
    let (u1, u2) = (SocketAddr::new(lo(1), 5301), SocketAddr::new(lo(1), 5302));
    let (t1, t2) = (SocketAddr::new(lo(1), 8001), SocketAddr::new(lo(1), 8002));
    ns.udp_echo(u1, peers.clone());
    ns.udp_echo(u2, peers.clone());
    ns.tcp_hold(t1, "T1");
    ns.tcp_hold(t2, "T2");
    ns.narrow_port_range();
    let dir = TempDir::new("ports");
    let admin = SocketAddr::new(lo(1), 9090);
    let (udp_lb, tcp_lb) = (SocketAddr::new(lo(1), 5353), SocketAddr::new(lo(1), 8080));
    let config = dir.write(
        "l4lb.toml",
        &format!(
            "[runtime]\nworkers = 2\npin_cpus = false\n\n[admin]\nbind = \"{admin}\"\n\n\
             [[listener]]\nname = \"dns\"\nprotocol = \"udp\"\nbind = \"{udp_lb}\"\n\
             idle_timeout_s = 300\nbackends = [{{ addr = \"{u1}\" }}, {{ addr = \"{u2}\" }}]\n\n\
             [[listener]]\nname = \"web\"\nbind = \"{tcp_lb}\"\n\
             backends = [{{ addr = \"{t1}\" }}, {{ addr = \"{t2}\" }}]\n"
        ),
    );
    let log = Arc::new(Mutex::new(String::new()));
    let started = Instant::now();
    ns.start_l4lb(&config, log.clone());
    let mut scraper = Scraper {
        admin,
        next_port: 23000,
    };
    wait_for_admin(&ns, &mut scraper, &log);

    // UDP: thirty clients, ten local ports, one per session.
    let (clients, answered) = udp_clients(&ns, udp_lb, 30, 21000);
    assert!(
        (1..=PORTS).contains(&answered),
        "{answered} UDP sessions with {PORTS} local ports"
    );
    let refused = (30 - answered) as f64;
    let local = |s: &mut Scraper, l: &str| {
        s.get(
            &ns,
            "l4lb_connections_rejected_total",
            &[("listener", l), ("reason", "local_resources")],
        )
    };
    assert_eq!(
        local(&mut scraper, "dns"),
        refused,
        "log:\n{}",
        log.lock().unwrap()
    );
    // The open sessions still work.
    let mut buf = [0u8; 64];
    let again = clients
        .iter()
        .filter(|c| {
            c.send_to(b"again", udp_lb).is_ok() && matches!(c.recv_from(&mut buf), Ok((5, _)))
        })
        .count();
    assert_eq!(again, answered, "an open session stopped working");

    // TCP: forty clients from explicit ports; ten local ports per backend address.
    let held: Vec<(TcpStream, bool)> = ns.within(move || {
        (0..40u16)
            .map(|i| {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .expect("socket");
                s.bind(&SocketAddr::new(lo(1), 22000 + i).into())
                    .expect("bind client");
                s.connect(&tcp_lb.into()).expect("connect to l4lb");
                let mut s: TcpStream = s.into();
                s.set_read_timeout(Some(Duration::from_secs(3)))
                    .expect("timeout");
                let mut line = [0u8; 3];
                let served = s.read_exact(&mut line).is_ok() && line[0] == b'T';
                (s, served)
            })
            .collect()
    });
    let served = held.iter().filter(|(_, ok)| *ok).count();
    assert!(
        (1..=2 * PORTS).contains(&served),
        "{served} TCP connections with {PORTS} local ports per backend"
    );
    assert_eq!(local(&mut scraper, "web"), (40 - served) as f64);

    // No backend was blamed: all up, no connect error counted.
    for (l, b) in [("dns", u1), ("dns", u2), ("web", t1), ("web", t2)] {
        let b = b.to_string();
        let labels = [("listener", l), ("backend", b.as_str())];
        assert_eq!(scraper.get(&ns, "l4lb_backend_up", &labels), 1.0, "{l} {b}");
        assert_eq!(
            scraper.get(&ns, "l4lb_backend_connect_errors_total", &labels),
            0.0,
            "{l} {b}"
        );
    }
    assert!(
        wait_until(IO_TIMEOUT, || log
            .lock()
            .unwrap()
            .contains("refusing as local_resources")),
        "no warning in:\n{}",
        log.lock().unwrap()
    );
    // Rate-limited: at most one warning a second per worker (two), not one per refusal.
    let warnings = log
        .lock()
        .unwrap()
        .matches("refusing as local_resources")
        .count();
    let most = 2 * (started.elapsed().as_secs() as usize + 1);
    assert!(
        warnings <= most,
        "{warnings} warnings in {:?}",
        started.elapsed()
    );
    drop(held);
}

/// Item 2: `source = [...]` binds backend sockets round robin to each address, and each
/// address brings a full port range of its own.
#[test]
fn source_addresses_each_add_a_port_range() {
    let Some(mut ns) = Lab::create("src") else {
        return;
    };
    let peers = Arc::new(Mutex::new(Vec::new()));
    let backend = SocketAddr::new(lo(1), 5301);
    ns.udp_echo(backend, peers.clone());
    ns.narrow_port_range();
    let dir = TempDir::new("source");
    let admin = SocketAddr::new(lo(1), 9090);
    let udp_lb = SocketAddr::new(lo(1), 5353);
    let config = dir.write(
        "l4lb.toml",
        &format!(
            "[runtime]\nworkers = 1\npin_cpus = false\n\n[admin]\nbind = \"{admin}\"\n\n\
             [[listener]]\nname = \"dns\"\nprotocol = \"udp\"\nbind = \"{udp_lb}\"\n\
             idle_timeout_s = 300\nsource = [\"127.0.0.2\", \"127.0.0.3\"]\n\
             backends = [{{ addr = \"{backend}\" }}]\n"
        ),
    );
    let log = Arc::new(Mutex::new(String::new()));
    ns.start_l4lb(&config, log.clone());
    let mut scraper = Scraper {
        admin,
        next_port: 23000,
    };
    wait_for_admin(&ns, &mut scraper, &log);
    let (_clients, answered) = udp_clients(&ns, udp_lb, 30, 21000);
    assert!(
        answered > PORTS && answered <= 2 * PORTS,
        "{answered} sessions from two source addresses with {PORTS} ports each"
    );
    let seen = peers.lock().unwrap().clone();
    for ip in [lo(2), lo(3)] {
        let n = seen.iter().filter(|p| **p == ip).count();
        assert!(n >= answered / 2 - 1, "{n} sessions from {ip}: {seen:?}");
    }
    assert!(
        !seen.contains(&lo(1)),
        "a session left from the kernel's choice"
    );
    let refused = scraper.get(
        &ns,
        "l4lb_connections_rejected_total",
        &[("listener", "dns"), ("reason", "local_resources")],
    );
    assert_eq!(refused, (30 - answered) as f64);
}
