//! `serve`: demo and test backends (echo, sink, http, source) on TCP and UDP listeners.
//!
//! Control path binds every listener once in the main thread (so a port in use fails loudly,
//! and port 0 resolves to one real port), prints `listening on ...`, and starts `--threads`
//! workers. Each worker registers its own duplicate of every listening socket with its own mio
//! `Poll` (whoever accepts first wins; the others see `WouldBlock`) and serves the connections
//! it accepted from a bounded slab.
//!
//! Hot path rules: read/write until `WouldBlock`; a connection gets at most `BURST` reads and
//! writes per turn, then is re-queued, so a fast peer cannot starve the loop; one peer's error
//! closes that peer only; output a slow peer does not take is buffered per connection and
//! reading from it pauses until the buffer drains (no unbounded growth). `--mode http` parses
//! request heads with [`crate::http`] (httparse): a head over `MAX_HTTP_HEAD` bytes or with
//! too many headers is answered 431, one that is not HTTP/1.x 400, and the connection closed.
//!
//! On SIGTERM/SIGINT (or after --duration) the workers stop and the main thread prints one
//! line per listener: `served ADDR proto=tcp connections=N requests=N bytes=N`
//! (requests: HTTP requests answered, UDP datagrams received; 0 for plain TCP streams).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use socket2::{Protocol, SockAddr, Type};

use crate::http::{self, Request};
use crate::net;
use crate::opts::{ServeArgs, ServeMode};
use crate::signals;
use crate::slab::Slab;

/// Reads plus writes per connection per turn before the loop moves on.
const BURST: usize = 32;
/// Listen backlog: the kernel caps it at net.core.somaxconn (4096 by default).
const BACKLOG: i32 = 4096;
/// Largest HTTP request head accepted; a client sending more is answered 431 and closed.
const MAX_HTTP_HEAD: usize = 16 * 1024;
/// The answer to a head over `MAX_HTTP_HEAD` bytes or with too many headers.
const TOO_LARGE: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
/// Poll timeout: how late a worker notices the stop flag and flushes its counters.
const TICK: Duration = Duration::from_millis(100);
/// Per-thread I/O buffer; also the largest UDP datagram (65,507) fits.
const BUF_SIZE: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Debug)]
struct ListenerInfo {
    addr: SocketAddr,
    udp: bool,
    counters: Counters,
    /// `--mode http` answers, precomputed: keep-alive and closing variants, and the UDP body.
    http_keep: Vec<u8>,
    http_close: Vec<u8>,
    body: Vec<u8>,
}

impl ListenerInfo {
    fn new(addr: SocketAddr, udp: bool) -> ListenerInfo {
        let body = format!("backend {addr}\n").into_bytes();
        let head = |extra: &str| {
            let mut v = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}\r\n",
                body.len()
            )
            .into_bytes();
            v.extend_from_slice(&body);
            v
        };
        ListenerInfo {
            addr,
            udp,
            counters: Counters::default(),
            http_keep: head(""),
            http_close: head("Connection: close\r\n"),
            body,
        }
    }
}

pub fn run(args: ServeArgs) -> u8 {
    if args.tcp.is_empty() && args.udp.is_empty() {
        eprintln!("l4lb-loadgen serve: give at least one --tcp ADDR or --udp ADDR");
        return 2;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let _signal = signals::install(stop.clone());
    net::raise_nofile_limit();
    let threads = args.threads.map(|t| t as usize).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });

    let mut infos = Vec::new();
    let Some(tcp_socks) = bind_all(&args.tcp, false, &mut infos, bind_tcp) else {
        return 1;
    };
    let Some(udp_socks) = bind_all(&args.udp, true, &mut infos, bind_udp) else {
        return 1;
    };
    let mode_name = match args.mode {
        ServeMode::Echo => "echo",
        ServeMode::Sink => "sink",
        ServeMode::Http => "http",
        ServeMode::Source => "source",
    };
    for i in &infos {
        let proto = if i.udp { "udp" } else { "tcp" };
        println!("listening on {} proto={proto} mode={mode_name}", i.addr);
    }
    let infos: Arc<[ListenerInfo]> = infos.into();

    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let mut tcp = Vec::with_capacity(tcp_socks.len());
        let mut udp = Vec::with_capacity(udp_socks.len());
        let cloned = (|| -> io::Result<()> {
            for (l, i) in &tcp_socks {
                tcp.push((TcpListener::from_std(l.try_clone()?), *i));
            }
            for (u, i) in &udp_socks {
                udp.push((UdpSocket::from_std(u.try_clone()?), *i));
            }
            Ok(())
        })();
        if let Err(e) = cloned {
            eprintln!("l4lb-loadgen serve: cannot share the listeners with worker {t}: {e}");
            break;
        }
        let worker = Worker {
            index: t,
            mode: args.mode,
            infos: infos.clone(),
            tcp,
            udp,
            conns: Slab::with_capacity(1024.min(args.max_conns as usize), args.max_conns as usize),
            stop: stop.clone(),
        };
        match std::thread::Builder::new()
            .name(format!("serve-{t}"))
            .spawn(move || worker.run())
        {
            Ok(h) => handles.push(h),
            Err(e) => eprintln!("l4lb-loadgen serve: cannot start worker {t}: {e}"),
        }
    }
    if handles.is_empty() {
        return 1;
    }
    // The main thread only keeps time; workers own all sockets.
    let end = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    while !stop.load(Ordering::SeqCst) {
        if end.is_some_and(|e| Instant::now() >= e) {
            stop.store(true, Ordering::SeqCst);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for h in handles {
        let _ = h.join();
    }
    let mut out = io::stdout().lock();
    for i in infos.iter() {
        let c = &i.counters;
        let _ = writeln!(
            out,
            "served {} proto={} connections={} requests={} bytes={}",
            i.addr,
            if i.udp { "udp" } else { "tcp" },
            c.connections.load(Ordering::Relaxed),
            c.requests.load(Ordering::Relaxed),
            c.bytes.load(Ordering::Relaxed)
        );
    }
    let _ = out.flush();
    0
}

/// Binds every address in `addrs` (TCP or UDP), recording each in `infos` under the address
/// it really got (see `bind_tcp`); the sockets come back with their index in `infos`. The
/// first failure is reported on stderr and ends the binding (`None`).
fn bind_all<S>(
    addrs: &[SocketAddr],
    udp: bool,
    infos: &mut Vec<ListenerInfo>,
    bind: fn(SocketAddr) -> io::Result<(S, SocketAddr)>,
) -> Option<Vec<(S, usize)>> {
    let mut socks = Vec::new();
    for &addr in addrs {
        match bind(addr) {
            Ok((s, local)) => {
                infos.push(ListenerInfo::new(local, udp));
                socks.push((s, infos.len() - 1));
            }
            Err(e) => {
                let what = if udp { "bind udp" } else { "listen on tcp" };
                eprintln!("l4lb-loadgen serve: cannot {what} {addr}: {e}");
                return None;
            }
        }
    }
    Some(socks)
}

/// A listening TCP socket on `addr`, and the address it really got (port 0 resolved; `addr`
/// itself should the kernel not say).
fn bind_tcp(addr: SocketAddr) -> io::Result<(std::net::TcpListener, SocketAddr)> {
    let s = net::nonblocking_socket(addr, Type::STREAM, Protocol::TCP)?;
    s.set_reuse_address(true)?;
    s.bind(&SockAddr::from(addr))?;
    s.listen(BACKLOG)?;
    let l = std::net::TcpListener::from(s);
    let local = l.local_addr().unwrap_or(addr);
    Ok((l, local))
}

/// A bound UDP socket on `addr`, and the address it really got (as `bind_tcp`).
fn bind_udp(addr: SocketAddr) -> io::Result<(std::net::UdpSocket, SocketAddr)> {
    let s = net::nonblocking_socket(addr, Type::DGRAM, Protocol::UDP)?;
    // Room for bursts from many client sockets; best effort (capped by net.core.rmem_max).
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&SockAddr::from(addr))?;
    let u = std::net::UdpSocket::from(s);
    let local = u.local_addr().unwrap_or(addr);
    Ok((u, local))
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    listener: usize,
    /// Output not yet taken by the peer; reading pauses while it is non-empty.
    out: Vec<u8>,
    out_pos: usize,
    /// HTTP: request bytes not yet parsed; body bytes still to skip.
    inbuf: Vec<u8>,
    body_left: usize,
    close_after_flush: bool,
    queued: bool,
}

enum Turn {
    Blocked,
    MoreReady,
    Close,
}

/// Per-listener counts this worker has not yet added to the shared atomics.
#[derive(Debug, Default, Clone, Copy)]
struct Local {
    connections: u64,
    requests: u64,
    bytes: u64,
}

struct Worker {
    index: usize,
    mode: ServeMode,
    infos: Arc<[ListenerInfo]>,
    tcp: Vec<(TcpListener, usize)>,
    udp: Vec<(UdpSocket, usize)>,
    conns: Slab<Conn>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self) {
        let mut poll = match Poll::new() {
            Ok(p) => p,
            Err(e) => {
                log::error!("serve worker {}: cannot create a poller: {e}", self.index);
                return;
            }
        };
        let base = self.tcp.len() + self.udp.len();
        for (t, (l, _)) in self.tcp.iter_mut().enumerate() {
            if let Err(e) = poll.registry().register(l, Token(t), Interest::READABLE) {
                log::error!("serve worker {}: register listener: {e}", self.index);
            }
        }
        let nt = self.tcp.len();
        for (u, (s, _)) in self.udp.iter_mut().enumerate() {
            if let Err(e) = poll
                .registry()
                .register(s, Token(nt + u), Interest::READABLE)
            {
                log::error!("serve worker {}: register udp socket: {e}", self.index);
            }
        }
        let mut local = vec![Local::default(); self.infos.len()];
        let mut buf = vec![0u8; BUF_SIZE];
        let mut events = Events::with_capacity(1024);
        let mut ready: Vec<usize> = Vec::new();
        let mut udp_ready: Vec<usize> = Vec::new();
        let mut accept_all = false;
        let mut next_flush = Instant::now() + TICK;
        while !self.stop.load(Ordering::Relaxed) {
            let timeout = if ready.is_empty() && udp_ready.is_empty() {
                TICK
            } else {
                Duration::ZERO
            };
            if let Err(e) = poll.poll(&mut events, Some(timeout)) {
                if net::interrupted(&e) {
                    continue;
                }
                log::error!("serve worker {}: poll failed: {e}", self.index);
                break;
            }
            let now = Instant::now();
            if now >= next_flush {
                flush(&self.infos, &mut local);
                next_flush = now + TICK;
                // Accepting may have paused on EMFILE: retry each tick (no new edge comes).
                accept_all = true;
            }
            for ev in events.iter() {
                let t = ev.token().0;
                if t < nt {
                    self.accept(t, &poll, &mut local, &mut buf, &mut ready);
                } else if t < base {
                    if !udp_ready.contains(&(t - nt)) {
                        udp_ready.push(t - nt);
                    }
                } else if let Some(c) = self.conns.get_mut(t - base) {
                    if !c.queued {
                        c.queued = true;
                        ready.push(t - base);
                    }
                }
            }
            if accept_all {
                accept_all = false;
                for t in 0..nt {
                    self.accept(t, &poll, &mut local, &mut buf, &mut ready);
                }
            }
            for u in std::mem::take(&mut udp_ready) {
                if self.udp_turn(u, &mut local, &mut buf) {
                    udp_ready.push(u);
                }
            }
            for k in std::mem::take(&mut ready) {
                self.turn(k, &poll, &mut local, &mut buf, &mut ready);
            }
        }
        flush(&self.infos, &mut local);
        let open = self.conns.len();
        for k in self.conns.keys() {
            self.conns.remove(k);
        }
        log::debug!(
            "serve worker {}: stopped, closed {open} connections",
            self.index
        );
    }

    /// Accepts until `WouldBlock` (or a resource error, retried on the next tick).
    fn accept(
        &mut self,
        t: usize,
        poll: &Poll,
        local: &mut [Local],
        buf: &mut [u8],
        ready: &mut Vec<usize>,
    ) {
        let base = self.tcp.len() + self.udp.len();
        let li = self.tcp[t].1;
        loop {
            let (stream, _peer) = match self.tcp[t].0.accept() {
                Ok(x) => x,
                Err(e) if net::would_block(&e) => return,
                Err(e) if net::interrupted(&e) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: leave the rest in the backlog until next tick.
                    log::warn!("serve: accept on {}: {e}", self.infos[li].addr);
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            local[li].connections += 1;
            let conn = Conn {
                stream,
                listener: li,
                out: Vec::new(),
                out_pos: 0,
                inbuf: Vec::new(),
                body_left: 0,
                close_after_flush: false,
                queued: false,
            };
            let k = match self.conns.insert(conn) {
                Ok(k) => k,
                Err(_refused) => {
                    log::warn!("serve: connection table full; closing a new connection");
                    continue;
                }
            };
            let registered = match self.conns.get_mut(k) {
                Some(c) => poll.registry().register(
                    &mut c.stream,
                    Token(base + k),
                    Interest::READABLE | Interest::WRITABLE,
                ),
                None => continue,
            };
            if let Err(e) = registered {
                log::warn!("serve: register connection: {e}");
                self.conns.remove(k);
                continue;
            }
            // Data may already be waiting (or, for source, we talk first): drive at once.
            self.turn(k, poll, local, buf, ready);
        }
    }

    /// Drives connection `k` for one turn (see `drive`): queued again in `ready` while it has
    /// more to do, deregistered and closed when it ends.
    fn turn(
        &mut self,
        k: usize,
        poll: &Poll,
        local: &mut [Local],
        buf: &mut [u8],
        ready: &mut Vec<usize>,
    ) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        c.queued = false;
        let li = c.listener;
        match drive(c, self.mode, &self.infos[li], &mut local[li], buf) {
            Turn::Blocked => {}
            Turn::MoreReady => {
                c.queued = true;
                ready.push(k);
            }
            Turn::Close => {
                if let Some(mut c) = self.conns.remove(k) {
                    let _ = poll.registry().deregister(&mut c.stream);
                }
            }
        }
    }

    /// Serves up to `BURST` datagrams; true when more may be waiting.
    fn udp_turn(&mut self, u: usize, local: &mut [Local], buf: &mut [u8]) -> bool {
        let (sock, li) = (&self.udp[u].0, self.udp[u].1);
        let info = &self.infos[li];
        for _ in 0..BURST {
            match sock.recv_from(buf) {
                Ok((n, peer)) => {
                    local[li].requests += 1;
                    local[li].bytes += n as u64;
                    let reply: &[u8] = match self.mode {
                        ServeMode::Sink => continue,
                        ServeMode::Http => &info.body,
                        ServeMode::Echo | ServeMode::Source => &buf[..n],
                    };
                    // A full send buffer drops the answer, as a real UDP server would.
                    let _ = sock.send_to(reply, peer);
                }
                Err(e) if net::would_block(&e) => return false,
                Err(e) if net::interrupted(&e) => {}
                // ICMP errors from earlier sends to vanished clients: not ours to fix.
                Err(_) => {}
            }
        }
        true
    }
}

fn flush(infos: &[ListenerInfo], local: &mut [Local]) {
    for (i, l) in local.iter_mut().enumerate() {
        let c = &infos[i].counters;
        c.connections.fetch_add(l.connections, Ordering::Relaxed);
        c.requests.fetch_add(l.requests, Ordering::Relaxed);
        c.bytes.fetch_add(l.bytes, Ordering::Relaxed);
        *l = Local::default();
    }
}

/// One turn of one connection: flush pending output, then read and answer.
fn drive(
    c: &mut Conn,
    mode: ServeMode,
    info: &ListenerInfo,
    local: &mut Local,
    buf: &mut [u8],
) -> Turn {
    for _ in 0..BURST {
        // 1. Pending output first; nothing is read while the peer is not taking our answers.
        while c.out_pos < c.out.len() {
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(0) => return Turn::Close,
                Ok(n) => c.out_pos += n,
                Err(e) if net::would_block(&e) => return Turn::Blocked,
                Err(e) if net::interrupted(&e) => {}
                Err(_) => return Turn::Close,
            }
        }
        c.out.clear();
        c.out_pos = 0;
        if c.close_after_flush {
            return Turn::Close;
        }
        // 2. source: keep the pipe full; the writes block long before the burst ends when
        //    the reader is slower than us.
        if mode == ServeMode::Source {
            match c.stream.write(&buf[..]) {
                Ok(0) => return Turn::Close,
                Ok(_) => {}
                Err(e) if net::would_block(&e) => {
                    // Still drain (and ignore) input so the peer never blocks on us.
                    return match drain(c, local, buf) {
                        Some(t) => t,
                        None => Turn::Blocked,
                    };
                }
                Err(e) if net::interrupted(&e) => {}
                Err(_) => return Turn::Close,
            }
            continue;
        }
        // 3. Read and answer.
        let n = match c.stream.read(buf) {
            Ok(0) => return Turn::Close,
            Ok(n) => n,
            Err(e) if net::would_block(&e) => return Turn::Blocked,
            Err(e) if net::interrupted(&e) => continue,
            Err(_) => return Turn::Close,
        };
        local.bytes += n as u64;
        match mode {
            ServeMode::Sink | ServeMode::Source => {}
            ServeMode::Echo => {
                let mut off = 0;
                while off < n {
                    match c.stream.write(&buf[off..n]) {
                        Ok(0) => return Turn::Close,
                        Ok(w) => off += w,
                        Err(e) if net::would_block(&e) => break,
                        Err(e) if net::interrupted(&e) => {}
                        Err(_) => return Turn::Close,
                    }
                }
                if off < n {
                    c.out.extend_from_slice(&buf[off..n]);
                }
            }
            ServeMode::Http => {
                c.inbuf.extend_from_slice(&buf[..n]);
                http_requests(c, info, local);
            }
        }
    }
    Turn::MoreReady
}

/// `source` mode: read and drop whatever the peer sent. `Some(Close)` on EOF or error.
fn drain(c: &mut Conn, local: &mut Local, buf: &mut [u8]) -> Option<Turn> {
    for _ in 0..BURST {
        match c.stream.read(buf) {
            Ok(0) => return Some(Turn::Close),
            Ok(n) => local.bytes += n as u64,
            Err(e) if net::would_block(&e) => return None,
            Err(e) if net::interrupted(&e) => {}
            Err(_) => return Some(Turn::Close),
        }
    }
    Some(Turn::MoreReady)
}

/// Answers every complete request in `c.inbuf` (pipelining allowed), appending to `c.out`.
fn http_requests(c: &mut Conn, info: &ListenerInfo, local: &mut Local) {
    let mut consumed = 0;
    loop {
        let rest = &c.inbuf[consumed..];
        if c.body_left > 0 {
            let skip = c.body_left.min(rest.len());
            c.body_left -= skip;
            consumed += skip;
            if c.body_left > 0 {
                break;
            }
            continue;
        }
        match http::parse_request(rest) {
            Request::Partial if rest.len() > MAX_HTTP_HEAD => {
                c.out.extend_from_slice(TOO_LARGE);
                c.close_after_flush = true;
            }
            Request::Partial => break,
            Request::TooManyHeaders => {
                c.out.extend_from_slice(TOO_LARGE);
                c.close_after_flush = true;
            }
            Request::Bad => {
                c.out.extend_from_slice(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                c.close_after_flush = true;
            }
            Request::Head(req) => {
                consumed += req.len;
                local.requests += 1;
                c.body_left = req.content_length;
                if req.close {
                    c.out.extend_from_slice(&info.http_close);
                    c.close_after_flush = true;
                } else {
                    c.out.extend_from_slice(&info.http_keep);
                }
            }
        }
        if c.close_after_flush {
            consumed = c.inbuf.len();
            break;
        }
    }
    c.inbuf.drain(..consumed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_names_backend() {
        let i = ListenerInfo::new("127.0.0.1:9001".parse().unwrap(), false);
        let r = String::from_utf8(i.http_close.clone()).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Content-Length: 23\r\n"));
        assert!(r.ends_with("\r\n\r\nbackend 127.0.0.1:9001\n"));
        assert!(r.contains("Connection: close"));
    }
}
