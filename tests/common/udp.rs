//! UDP on the test side: in-process UDP backends on threads (echo, tagged, pong, silent),
//! stopped and joined by a Drop guard, and client sockets that ask with a bounded wait. The
//! balancer itself is `L4lb` on a `Conf::udp`, like a TCP one.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::net::localhost;

/// How long a test waits for a reply that must come.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a test waits to conclude that no reply comes (a refused datagram is dropped).
pub const SILENCE: Duration = Duration::from_millis(300);

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
