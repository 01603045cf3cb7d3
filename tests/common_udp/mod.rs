//! Harness for the UDP integration tests: the real `l4lb` binary with a UDP listener (run by
//! `common::L4lb`, ready once the child owns a bound UDP socket on the port: `Ready::UdpBound`,
//! so starting it sends no datagram that would open a session), and in-process UDP backends on
//! threads.
//!
//! Hermetic like `tests/common`: loopback only, ports from the kernel, bounded waits, and a
//! Drop guard for everything started here.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::{free_port, localhost, scrape, L4lb, Ready, STARTUP_TIMEOUT};

/// How long a test waits for a reply that must come.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a test waits to conclude that no reply comes (a refused datagram is dropped).
pub const SILENCE: Duration = Duration::from_millis(300);

/// One UDP `[[listener]]` named "u" (and `[runtime]`), rendered once the port is known.
#[derive(Debug, Clone)]
pub struct UdpConf {
    pub workers: usize,
    pub balance: String,
    pub idle_timeout_s: u64,
    /// Extra `key = value` lines of the listener, before `backends`.
    pub extra: Vec<String>,
    pub backends: Vec<SocketAddr>,
    /// Lines of a `[listener.health_check]` table (after `backends`).
    pub health_check: Vec<String>,
    /// Serve the admin API (on a free loopback port) for [`UdpLb::metric`].
    pub admin: bool,
    pub drain_timeout_s: u64,
    /// The listener's name.
    pub name: String,
}

impl UdpConf {
    pub fn new(balance: &str, backends: &[SocketAddr]) -> UdpConf {
        UdpConf {
            workers: 2,
            balance: balance.to_string(),
            idle_timeout_s: 30,
            extra: Vec::new(),
            backends: backends.to_vec(),
            health_check: Vec::new(),
            admin: false,
            drain_timeout_s: 1,
            name: "u".to_string(),
        }
    }

    pub fn name(mut self, name: &str) -> UdpConf {
        self.name = name.to_string();
        self
    }

    pub fn drain(mut self, s: u64) -> UdpConf {
        self.drain_timeout_s = s;
        self
    }

    pub fn admin(mut self) -> UdpConf {
        self.admin = true;
        self
    }

    pub fn workers(mut self, n: usize) -> UdpConf {
        self.workers = n;
        self
    }

    pub fn idle(mut self, s: u64) -> UdpConf {
        self.idle_timeout_s = s;
        self
    }

    pub fn extra(mut self, line: &str) -> UdpConf {
        self.extra.push(line.to_string());
        self
    }

    pub fn health(mut self, line: &str) -> UdpConf {
        self.health_check.push(line.to_string());
        self
    }

    pub fn render(&self, bind: SocketAddr, admin: Option<SocketAddr>) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "[runtime]");
        let _ = writeln!(s, "workers = {}", self.workers);
        let _ = writeln!(s, "pin_cpus = false");
        let _ = writeln!(s, "drain_timeout_s = {}\n", self.drain_timeout_s);
        if let Some(a) = admin {
            let _ = writeln!(s, "[admin]\nbind = \"{a}\"\n");
        }
        let _ = writeln!(s, "[[listener]]");
        let _ = writeln!(s, "name = \"{}\"", self.name);
        let _ = writeln!(s, "protocol = \"udp\"");
        let _ = writeln!(s, "bind = \"{bind}\"");
        let _ = writeln!(s, "balance = \"{}\"", self.balance);
        let _ = writeln!(s, "idle_timeout_s = {}", self.idle_timeout_s);
        for line in &self.extra {
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(s, "backends = [");
        for b in &self.backends {
            let _ = writeln!(s, "  {{ addr = \"{b}\" }},");
        }
        let _ = writeln!(s, "]");
        if !self.health_check.is_empty() {
            let _ = writeln!(s, "[listener.health_check]");
            for line in &self.health_check {
                let _ = writeln!(s, "{line}");
            }
        }
        s
    }
}

/// A `common::L4lb` running a `UdpConf`, and the admin address that config gave it (for
/// `metric`). Derefs to the `L4lb`: `addr`, `signal`, `wait_exit`, and the Drop guard are its.
#[derive(Debug)]
pub struct UdpLb {
    lb: L4lb,
    pub admin: Option<SocketAddr>,
}

impl UdpLb {
    /// Start on a free loopback port (and, with `UdpConf::admin`, the admin API on another),
    /// retrying with fresh ports if a bind raced (exit 1).
    pub fn start(conf: &UdpConf) -> UdpLb {
        let mut admin = None;
        let lb = L4lb::launch(localhost(), Ready::UdpBound, None, |addr| {
            admin = conf
                .admin
                .then(|| SocketAddr::new(localhost(), free_port(localhost())));
            conf.render(addr, admin)
        });
        UdpLb { lb, admin }
    }

    /// The value of one sample of `/metrics`, e.g. `l4lb_udp_sessions_active{listener="u"}`
    /// (the admin API must be on: [`UdpConf::admin`]).
    pub fn metric(&self, sample: &str) -> f64 {
        let admin = self.admin.expect("admin API not configured");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let text = loop {
            match scrape(admin) {
                Ok(t) => break t,
                Err(e) => {
                    assert!(Instant::now() < deadline, "GET /metrics: {e}");
                    thread::sleep(Duration::from_millis(20));
                }
            }
        };
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
    }

    /// Rewrite the config file with `conf` (same listener address) and send SIGHUP.
    pub fn reload(&self, conf: &UdpConf) {
        std::fs::write(&self.lb.config_path, conf.render(self.lb.addr, self.admin))
            .expect("rewrite the config");
        self.lb.signal(nix::sys::signal::Signal::SIGHUP);
    }
}

impl Deref for UdpLb {
    type Target = L4lb;

    fn deref(&self) -> &L4lb {
        &self.lb
    }
}

impl DerefMut for UdpLb {
    fn deref_mut(&mut self) -> &mut L4lb {
        &mut self.lb
    }
}

/// How a backend answers a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Send the datagram back as it is.
    Echo,
    /// Answer with the backend's id (one byte) followed by the datagram.
    Tagged(u8),
    /// Answer `pong` to `ping`, echo anything else.
    Pong,
    /// Never answer.
    Silent,
}

/// A UDP backend on its own thread; stopped and joined on drop.
#[derive(Debug)]
pub struct UdpBackend {
    pub addr: SocketAddr,
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpBackend {
    pub fn spawn(mode: Mode) -> UdpBackend {
        let socket = UdpSocket::bind((localhost(), 0)).expect("bind backend");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            thread::spawn(move || serve(socket, mode, &received, &stop))
        };
        UdpBackend {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// Datagrams received so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

fn serve(socket: UdpSocket, mode: Mode, received: &AtomicUsize, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65_536];
    let mut out = vec![0u8; 65_537];
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(_) => continue,
        };
        received.fetch_add(1, Ordering::SeqCst);
        let reply: &[u8] = match mode {
            Mode::Echo => &buf[..n],
            Mode::Tagged(id) => {
                out[0] = id;
                out[1..=n].copy_from_slice(&buf[..n]);
                &out[..=n]
            }
            Mode::Pong if &buf[..n] == b"ping" => b"pong",
            Mode::Pong => &buf[..n],
            Mode::Silent => continue,
        };
        let _ = socket.send_to(reply, from);
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A loopback address nobody listens on now (bound, then released).
pub fn closed_port() -> SocketAddr {
    let s = UdpSocket::bind((localhost(), 0)).expect("bind");
    s.local_addr().expect("addr")
}

/// A client socket bound to `src` (any port) and connected to `lb`.
pub fn client(src: IpAddr, lb: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind((src, 0)).expect("bind client");
    s.connect(lb).expect("connect client");
    s
}

/// Send `msg` and wait up to `within` for one reply; `None` on silence (ICMP errors included).
pub fn ask(s: &UdpSocket, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
    s.send(msg).ok()?;
    s.set_read_timeout(Some(within)).ok()?;
    let mut buf = vec![0u8; 65_536];
    match s.recv(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            None
        }
        Err(_) => None,
    }
}

/// Ask until answered (a refused or lost datagram is retried), within `REPLY_TIMEOUT`.
pub fn ask_until_answered(s: &UdpSocket, msg: &[u8]) -> Option<Vec<u8>> {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(r) = ask(s, msg, Duration::from_millis(200)) {
            return Some(r);
        }
    }
    None
}
