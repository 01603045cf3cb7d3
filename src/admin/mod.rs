//! The admin HTTP API (SPEC.md, "Admin HTTP API"): `GET /` (the dashboard), `GET /metrics`,
//! `GET /status`, `POST /listeners/{listener}/backends/{addr}/{enable|disable|drain}` and
//! `.../weight/{n}`, on a thread of its own ("l4lb-admin") with its own small mio loop. Every
//! POST passes `guard.rs` first (Host, Origin, bearer token).
//!
//! Control path, off the data path: it only reads snapshots and atomics of [`SharedState`]
//! and flips backend admin states and weights through [`SharedState::set_backend_admin`] and
//! [`SharedState::set_backend_weight`] (which rebuild and republish the pool here); no worker
//! ever waits on it. Invariants: at most [`MAX_CONNS`] connections at once (more wait in the
//! kernel's backlog until a slot frees), each bounded in time ([`REQUEST_TIMEOUT`],
//! [`RESPONSE_TIMEOUT`]) and in size (`http::MAX_REQUEST`, 64 KiB, and at most
//! [`MAX_READ_PER_CONN`] bytes read in all, including what is discarded after the response),
//! so a slow or hostile client holds a slot for at most a few seconds, costs a bounded amount
//! of reading, and never blocks the others; one request per connection (`Connection: close`);
//! nothing a client sends can panic the thread.
//! The loop notices `shared.is_shutting_down()` within [`POLL_INTERVAL`].
//!
//! Files: `http.rs` (framing, sans-io), `guard.rs` (who may POST), `router.rs` (paths to
//! responses), `dashboard.rs` (`/`, the page in `dashboard.html`), `prometheus.rs`
//! (`/metrics`), `status.rs` (`/status` and JSON strings).

mod dashboard;
mod guard;
mod http;
mod prometheus;
mod router;
mod status;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::config::AdminToken;
use crate::state::SharedState;

use guard::Guard;
use http::{parse_request, Parsed, Response, MAX_REQUEST};

/// Concurrent admin connections. Scrapers and operators open one or two at a time; 64 leaves
/// room for a burst of scripts while bounding memory to 64 x 64 KiB of request buffers.
pub const MAX_CONNS: usize = 64;
/// From accept to a complete request. Real clients send a request in one packet, so 2 s is
/// ample on any network; a silent or trickling client loses its slot after 2 s.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// From a complete request to the last byte written and the client's close. A scrape of a
/// large table (~1 MB for thousands of backends) takes a reader milliseconds; 5 s is slack.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from one connection in all: a whole request (`MAX_REQUEST` plus the read that
/// crossed it) and as much again discarded after the response (a client that sent more than
/// it should have, e.g. a body we refused). A client that keeps sending past it is cut off
/// at once instead of making the thread read (and discard) at wire speed until the deadline.
pub const MAX_READ_PER_CONN: usize = 2 * MAX_REQUEST + READ_CHUNK;
/// Poll timeout: how fast the loop notices shutdown and expires deadlines.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

const LISTENER: Token = Token(usize::MAX);
/// Bytes read per `read` call (stack buffer; requests are small).
const READ_CHUNK: usize = 4096;

/// Bind `bind` now (so the caller can report a bind failure and exit 1 before traffic
/// flows), then serve the admin API on a thread named "l4lb-admin" until
/// `shared.is_shutting_down()`. With `token`, POSTs need `Authorization: Bearer <token>`.
pub fn spawn(
    bind: SocketAddr,
    token: Option<AdminToken>,
    shared: Arc<SharedState>,
) -> io::Result<JoinHandle<()>> {
    spawn_on(TcpListener::bind(bind)?, token, shared)
}

/// Like `spawn`, on a listening socket bound elsewhere (inherited from a takeover or from
/// systemd). After a takeover (`shared.is_handed_over()`) the thread stops accepting, answers
/// the requests it has, and ends; the socket stays open for the new process.
pub fn spawn_on(
    listener: TcpListener,
    token: Option<AdminToken>,
    shared: Arc<SharedState>,
) -> io::Result<JoinHandle<()>> {
    let mut server = Server::with_listener(listener, shared)?;
    server.token = token;
    log::debug!("admin API bound to {}", server.local_addr);
    std::thread::Builder::new()
        .name("l4lb-admin".to_string())
        .spawn(move || server.run())
}

/// Where a connection is in its one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the request.
    Reading,
    /// Writing the response.
    Writing,
    /// Response sent and our side shut down: read and discard until the client closes, so
    /// unread request bytes do not turn our close into a reset that destroys the response.
    Draining,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// The address the client reached (the Host check's reference under a wildcard bind).
    local: SocketAddr,
    phase: Phase,
    /// Bytes read from the client so far, request and discarded bytes together.
    read_total: usize,
    /// The request so far (at most `MAX_REQUEST` + one read).
    buf: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    deadline: Instant,
}

/// What to do with a connection after driving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Keep,
    Close,
}

impl Conn {
    fn new(stream: TcpStream, local: SocketAddr, now: Instant) -> Conn {
        Conn {
            stream,
            local,
            phase: Phase::Reading,
            read_total: 0,
            buf: Vec::new(),
            out: Vec::new(),
            written: 0,
            deadline: now + REQUEST_TIMEOUT,
        }
    }

    fn respond(&mut self, response: &Response, head_only: bool) {
        self.out = response.serialize(head_only);
        self.written = 0;
        self.phase = Phase::Writing;
        self.deadline = Instant::now() + RESPONSE_TIMEOUT;
        // The request buffer is not needed any more.
        self.buf = Vec::new();
    }

    /// Advance as far as the socket allows (edge-triggered: every phase runs to WouldBlock).
    fn drive(
        &mut self,
        shared: &SharedState,
        bind: SocketAddr,
        token: Option<&AdminToken>,
    ) -> Next {
        loop {
            match self.phase {
                Phase::Reading => match self.read_request() {
                    Ok(Some(eof)) => match parse_request(&self.buf) {
                        Parsed::Request(req) => {
                            let guard = Guard {
                                bind,
                                local: self.local,
                                token,
                            };
                            let (response, head_only) = router::route(shared, &guard, &req);
                            log::debug!(
                                "admin: {} {} -> {}",
                                req.method,
                                req.target,
                                response.status
                            );
                            self.respond(&response, head_only);
                        }
                        Parsed::Error(response) => {
                            log::debug!("admin: malformed request -> {}", response.status);
                            self.respond(&response, false);
                        }
                        Parsed::Incomplete if eof && self.buf.is_empty() => return Next::Close,
                        Parsed::Incomplete if eof => {
                            self.respond(&Response::error(400, "incomplete request"), false)
                        }
                        Parsed::Incomplete => return Next::Keep,
                    },
                    Ok(None) => return Next::Keep,
                    Err(_) => return Next::Close,
                },
                Phase::Writing => {
                    while self.written < self.out.len() {
                        match self.stream.write(&self.out[self.written..]) {
                            Ok(0) => return Next::Close,
                            Ok(n) => self.written += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => return Next::Close,
                        }
                    }
                    let _ = self.stream.shutdown(Shutdown::Write);
                    self.out = Vec::new();
                    self.phase = Phase::Draining;
                }
                Phase::Draining => {
                    let mut chunk = [0u8; READ_CHUNK];
                    loop {
                        match self.stream.read(&mut chunk) {
                            Ok(0) => return Next::Close,
                            Ok(n) => {
                                self.read_total += n;
                                if self.read_total > MAX_READ_PER_CONN {
                                    return Next::Close;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => return Next::Close,
                        }
                    }
                }
            }
        }
    }

    /// Read until WouldBlock, EOF or the size limit. `Ok(None)`: nothing new to parse;
    /// `Ok(Some(eof))`: new bytes (or EOF) to look at.
    fn read_request(&mut self) -> io::Result<Option<bool>> {
        let mut chunk = [0u8; READ_CHUNK];
        let mut got = false;
        loop {
            if self.buf.len() > MAX_REQUEST {
                // Over the limit: parse_request answers 413 (or 400); stop reading here.
                return Ok(Some(false));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(Some(true)),
                Ok(n) => {
                    self.read_total += n;
                    self.buf.extend_from_slice(&chunk[..n]);
                    got = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(got.then_some(false));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The deadline passed: tell a client still sending that it was too slow (one
    /// non-blocking write, best effort), then close.
    fn expire(&mut self) {
        if self.phase == Phase::Reading && !self.buf.is_empty() {
            let out = Response::error(408, "request not complete in time").serialize(false);
            let _ = self.stream.write(&out);
        }
    }
}

/// The bound listener, its poll, and a fixed table of connection slots.
#[derive(Debug)]
struct Server {
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<SharedState>,
    /// `admin.token_file`'s token: POSTs must present it.
    token: Option<AdminToken>,
    /// Slot `i` is token `Token(i)`; a fixed-size table, never grown.
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Every slot was taken while connections were pending: they wait in the kernel's
    /// backlog (bounded) and are accepted as soon as a slot frees.
    backlogged: bool,
}

impl Server {
    #[cfg(test)]
    fn bind(addr: SocketAddr, shared: Arc<SharedState>) -> io::Result<Server> {
        Server::with_listener(TcpListener::bind(addr)?, shared)
    }

    fn with_listener(mut listener: TcpListener, shared: Arc<SharedState>) -> io::Result<Server> {
        let local_addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Server {
            poll,
            listener,
            local_addr,
            shared,
            token: None,
            conns: (0..MAX_CONNS).map(|_| None).collect(),
            free: (0..MAX_CONNS).rev().collect(),
            backlogged: false,
        })
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(MAX_CONNS + 1);
        let mut handed_over = false;
        while !self.shared.is_shutting_down() {
            if !handed_over && self.shared.is_handed_over() {
                handed_over = true;
                let _ = self.poll.registry().deregister(&mut self.listener);
            }
            if handed_over && self.free.len() == MAX_CONNS {
                break;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(POLL_INTERVAL)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::warn!("admin API: poll failed: {e}");
                    std::thread::sleep(POLL_INTERVAL);
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    Token(i) => self.drive(i),
                }
            }
            self.expire(Instant::now());
            if self.backlogged && !self.free.is_empty() && !handed_over {
                // The listener is edge-triggered: no new event comes for what already waits.
                self.backlogged = false;
                self.accept();
            }
        }
        log::debug!("admin API on {} stopped", self.local_addr);
    }

    fn accept(&mut self) {
        loop {
            let Some(&slot) = self.free.last() else {
                if !self.backlogged {
                    log::warn!(
                        "admin API: all {MAX_CONNS} connection slots in use; new clients wait"
                    );
                }
                self.backlogged = true;
                return;
            };
            match self.listener.accept() {
                Ok((mut stream, _peer)) => {
                    self.free.pop();
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, Token(slot), interest)
                    {
                        log::warn!("admin API: cannot register a connection: {e}");
                        self.free.push(slot);
                        continue;
                    }
                    let local = stream.local_addr().unwrap_or(self.local_addr);
                    self.conns[slot] = Some(Conn::new(stream, local, Instant::now()));
                    // Data may have arrived with the handshake; the edge is not lost (mio
                    // reports readiness on registration), but drive now to save a wakeup.
                    self.drive(slot);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_transient_accept_error(&e) => {}
                Err(e) => {
                    // EMFILE and kin: the pending connection stays queued; the next
                    // connection's event retries. Admin traffic must not spin the thread.
                    log::warn!("admin API: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn drive(&mut self, slot: usize) {
        let Some(Some(conn)) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.drive(&self.shared, self.local_addr, self.token.as_ref()) == Next::Close {
            self.close(slot);
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.free.push(slot);
        }
    }

    fn expire(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            if let Some(conn) = self.conns[slot].as_mut() {
                if conn.deadline <= now {
                    conn.expire();
                    self.close(slot);
                }
            }
        }
    }
}

/// Accept errors about one connection that died in the backlog: skip it, keep accepting.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) || e.raw_os_error() == Some(nix::libc::EPROTO)
        || e.raw_os_error() == Some(nix::libc::EPERM)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;
    use std::net::TcpStream as StdStream;
    use std::path::Path;
    use std::sync::atomic::Ordering;
    use std::thread;

    /// A `SharedState` from config text (for the renderers' and the router's tests).
    pub(crate) fn shared_from(toml: &str) -> SharedState {
        let config = Config::parse(toml, Path::new("test.toml")).expect("test config");
        let workers = match config.runtime.workers {
            crate::config::Workers::Count(n) => n,
            crate::config::Workers::Auto => 1,
        };
        SharedState::new(&config, workers)
    }

    const CONFIG: &str = r#"
[runtime]
workers = 1
[[listener]]
name = "web"
protocol = "tcp"
bind = "127.0.0.1:8080"
balance = "round_robin"
backends = [ { addr = "127.0.0.1:81" } ]
"#;

    /// A live server on 127.0.0.1:0; stops (and is joined) on drop.
    struct Live {
        addr: SocketAddr,
        shared: Arc<SharedState>,
        thread: Option<JoinHandle<()>>,
    }

    impl Live {
        fn start() -> Live {
            let shared = Arc::new(shared_from(CONFIG));
            let server = Server::bind("127.0.0.1:0".parse().unwrap(), shared.clone()).unwrap();
            let addr = server.local_addr;
            let thread = Some(thread::spawn(move || server.run()));
            Live {
                addr,
                shared,
                thread,
            }
        }

        fn connect(&self) -> StdStream {
            let s = StdStream::connect_timeout(&self.addr, Duration::from_secs(2)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        }

        /// Send `raw`, read the whole answer (the server closes after one response).
        fn exchange(&self, raw: &[u8]) -> String {
            let mut s = self.connect();
            s.write_all(raw).unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        }
    }

    impl Drop for Live {
        fn drop(&mut self) {
            self.shared.shutdown.store(true, Ordering::Release);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn status_code(response: &str) -> u16 {
        response
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
    }

    #[test]
    fn serves_and_answers_malformed_requests() {
        let live = Live::start();
        let r = live.exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status_code(&r), 200, "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(r.contains("l4lb_connections_accepted_total{listener=\"web\"} 0"));
        let r = live.exchange(b"HEAD /status HTTP/1.0\r\n\r\n");
        assert_eq!(status_code(&r), 200);
        assert!(r.ends_with("\r\n\r\n"), "HEAD has no body: {r}");
        assert_eq!(
            status_code(&live.exchange(b"\x16\x03\x01garbage\r\n\r\n")),
            400
        );
        assert_eq!(
            status_code(&live.exchange(b"GET /nope HTTP/1.1\r\n\r\n")),
            404
        );
        assert_eq!(
            status_code(&live.exchange(b"DELETE /status HTTP/1.1\r\n\r\n")),
            405
        );
        // Half a request, then EOF.
        let mut s = live.connect();
        s.write_all(b"GET /metr").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert_eq!(status_code(&String::from_utf8_lossy(&out)), 400);
        // A head over the limit, sent all at once: 413 (or a reset once we stop reading).
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST + 10_000, b'a');
        let mut s = live.connect();
        let _ = s.write_all(&big);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.is_empty() || status_code(&text) == 413, "{text}");
        // Still serving.
        assert_eq!(
            status_code(&live.exchange(b"GET /status HTTP/1.1\r\n\r\n")),
            200
        );
    }

    #[test]
    fn a_silent_client_neither_blocks_others_nor_stays_forever() {
        let live = Live::start();
        let started = Instant::now();
        let mut silent = live.connect();
        silent.write_all(b"GET /sta").unwrap();
        let r = live.exchange(b"GET /status HTTP/1.1\r\n\r\n");
        assert_eq!(status_code(&r), 200);
        assert!(
            started.elapsed() < REQUEST_TIMEOUT,
            "blocked by the silent client"
        );
        let mut out = Vec::new();
        let _ = silent.read_to_end(&mut out);
        let waited = started.elapsed();
        assert!(
            waited >= REQUEST_TIMEOUT && waited < REQUEST_TIMEOUT * 2,
            "{waited:?}"
        );
        let text = String::from_utf8_lossy(&out);
        assert!(text.is_empty() || status_code(&text) == 408, "{text}");
    }

    #[test]
    fn a_client_over_the_slot_limit_waits_for_a_free_slot() {
        let live = Live::start();
        let mut idle: Vec<StdStream> = (0..MAX_CONNS).map(|_| live.connect()).collect();
        let started = Instant::now();
        let mut waiting = live.connect();
        waiting.write_all(b"GET /status HTTP/1.1\r\n\r\n").unwrap();
        // Freeing one slot lets the waiting client in, long before the idle ones expire.
        idle.pop();
        let mut out = Vec::new();
        let _ = waiting.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert_eq!(status_code(&text), 200, "{text}");
        assert!(
            started.elapsed() < REQUEST_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn stops_on_shutdown() {
        let mut live = Live::start();
        live.shared.shutdown.store(true, Ordering::Release);
        let started = Instant::now();
        live.thread.take().unwrap().join().unwrap();
        assert!(started.elapsed() < POLL_INTERVAL * 5);
    }

    #[test]
    fn spawn_names_the_thread_and_reports_bind_errors() {
        let shared = Arc::new(shared_from(CONFIG));
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = spawn(addr, None, shared.clone()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(taken);
        let handle = spawn("127.0.0.1:0".parse().unwrap(), None, shared.clone()).unwrap();
        assert_eq!(handle.thread().name(), Some("l4lb-admin"));
        shared.shutdown.store(true, Ordering::Release);
        handle.join().unwrap();
    }
}
