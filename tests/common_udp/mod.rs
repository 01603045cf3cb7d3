//! Harness for the UDP integration tests: the real `l4lb` binary with a UDP listener, and
//! in-process UDP backends on threads.
//!
//! Hermetic like `tests/common`: loopback only, ports from the kernel, bounded waits, and a
//! Drop guard for everything started here. Readiness is read from `/proc/net/udp` (a socket
//! on our port owned by the child), so starting the balancer sends no datagram that would open
//! a session.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::{free_port, l4lb_bin, localhost, scrape, TempDir};

pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
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

/// A running `l4lb --config FILE` with a UDP listener. Drop kills it and waits.
#[derive(Debug)]
pub struct UdpLb {
    child: Option<Child>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    config_path: std::path::PathBuf,
    _dir: TempDir,
}

impl UdpLb {
    /// Start on a free loopback port, retrying with another port if the bind raced (exit 1).
    pub fn start(conf: &UdpConf) -> UdpLb {
        let mut last = String::new();
        for _ in 0..5 {
            let port = UdpSocket::bind((localhost(), 0))
                .and_then(|s| s.local_addr())
                .expect("probe port")
                .port();
            let addr = SocketAddr::new(localhost(), port);
            let admin = conf
                .admin
                .then(|| SocketAddr::new(localhost(), free_port(localhost())));
            let dir = TempDir::new("udp");
            let path = dir.write("l4lb.toml", &conf.render(addr, admin));
            let mut child = Command::new(l4lb_bin())
                .arg("--config")
                .arg(&path)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn l4lb");
            let stderr = child.stderr.take().map(|mut e| {
                thread::spawn(move || {
                    let mut out = Vec::new();
                    let _ = e.read_to_end(&mut out);
                    out
                })
            });
            let mut lb = UdpLb {
                child: Some(child),
                stderr,
                addr,
                admin,
                config_path: path,
                _dir: dir,
            };
            let deadline = Instant::now() + STARTUP_TIMEOUT;
            loop {
                let child = lb.child.as_mut().expect("child");
                if let Ok(Some(status)) = child.try_wait() {
                    lb.child = None;
                    last = format!("exit {status}: {}", lb.stop());
                    if status.code() != Some(1) {
                        panic!(
                            "l4lb exited during startup: {last}\n{}",
                            conf.render(addr, admin)
                        );
                    }
                    break;
                }
                if udp_bound(child.id(), port) {
                    return lb;
                }
                assert!(
                    Instant::now() < deadline,
                    "l4lb did not bind {addr}: {}",
                    lb.stop()
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("l4lb failed to start 5 times; last: {last}");
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
        std::fs::write(&self.config_path, conf.render(self.addr, self.admin)).expect("rewrite");
        self.signal(nix::sys::signal::Signal::SIGHUP);
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("kill");
    }

    /// Wait up to `within` for the process to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.as_mut()?.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kill and wait; returns what it wrote on stderr.
    pub fn stop(&mut self) -> String {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        match self.stderr.take() {
            Some(h) => String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned(),
            None => String::new(),
        }
    }
}

impl Drop for UdpLb {
    fn drop(&mut self) {
        let text = self.stop();
        if thread::panicking() {
            eprintln!("---- l4lb stderr ----\n{text}---- end ----");
        }
    }
}

/// Whether process `pid` owns a UDP socket bound to `port` (IPv4).
fn udp_bound(pid: u32, port: u16) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/net/udp") else {
        return false;
    };
    let port_hex = format!(":{port:04X}");
    let inodes: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 10 && f[1].ends_with(&port_hex)).then(|| f[9].to_string())
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|l| {
            let s = l.to_string_lossy();
            s.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .is_some_and(|i| inodes.iter().any(|x| x == i))
        })
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
