//! Shared harness for the TCP integration tests: the real `l4lb` binary on a generated config,
//! in-process backends, client helpers with deadlines, and a streaming hash with its PRNG.
//!
//! Hermetic (STYLE.md, "Tests are hermetic"): loopback only, every port from the kernel (port
//! 0), every wait bounded by a deadline, and everything started here (the child process, the
//! backend threads) stopped and joined by a Drop guard. Readiness is read from `/proc/net`
//! (a LISTEN socket in `tcp{,6}`, or a bound socket in `udp{,6}` for a UDP listener, on our
//! port and owned by the child; see `Ready`), so starting the balancer sends no probe
//! connection or datagram that would skew counts, caps or rates.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// How long the balancer may take to bind its listener (a debug build on a busy 2-core host).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-call socket timeout: no read or write in these tests should ever block this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How fast a refusal (reset or close without data) must arrive.
pub const REFUSAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Stack of the backends' per-connection threads: they only hold a heap buffer.
const HANDLER_STACK: usize = 128 * 1024;
/// Socket timeout of backend connections: ends a handler whose peer vanished without a close.
const HANDLER_IO_TIMEOUT: Duration = Duration::from_secs(30);

pub fn localhost() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// `127.0.0.x`: every address of 127/8 is local on Linux, so tests can be many clients.
pub fn lo(x: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, x))
}

pub fn ipv6_available() -> bool {
    TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// A port nobody listens on right now (bound, then released; the race is accepted).
pub fn free_port(ip: IpAddr) -> u16 {
    let l = TcpListener::bind((ip, 0)).expect("bind port 0");
    l.local_addr().expect("local_addr").port()
}

/// Raise this process's soft RLIMIT_NOFILE to its hard limit (tests that hold many sockets).
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit").0
}

// ---------------------------------------------------------------------------------------------
// Temporary files
// ---------------------------------------------------------------------------------------------

/// A directory of our own under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "l4lb-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `text` to `name` inside the directory and return the file's path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// One `[runtime]` and one TCP `[[listener]]` named "t"; rendered once the port is known.
#[derive(Debug, Clone)]
pub struct Conf {
    /// TOML value as written: `"\"auto\""` or `"3"`.
    pub workers: String,
    pub pin_cpus: bool,
    pub splice: String,
    pub balance: String,
    pub connect_timeout_ms: u64,
    /// Extra `key = value` lines of the listener (before `backends`).
    pub listener_extra: Vec<String>,
    /// Inline-table bodies, e.g. `addr = "127.0.0.1:9", weight = 2`.
    pub backends: Vec<String>,
    /// Listen on `[::1]` instead of 127.0.0.1.
    pub ipv6: bool,
    /// Extra `key = value` lines of `[runtime]`.
    pub runtime_extra: Vec<String>,
    /// Start l4lb with this open-files limit (soft and hard), through `sh -c 'ulimit -n'`.
    pub nofile: Option<u64>,
}

impl Conf {
    /// Three workers (more than the two cores of CI), no pinning, splice auto.
    pub fn new(balance: &str, backends: &[SocketAddr]) -> Conf {
        Conf {
            workers: "3".to_string(),
            pin_cpus: false,
            splice: "auto".to_string(),
            balance: balance.to_string(),
            connect_timeout_ms: 2000,
            listener_extra: Vec::new(),
            backends: backends.iter().map(|a| format!("addr = \"{a}\"")).collect(),
            ipv6: false,
            runtime_extra: Vec::new(),
            nofile: None,
        }
    }

    /// Backends with explicit weights.
    pub fn weighted(balance: &str, backends: &[(SocketAddr, u32)]) -> Conf {
        let mut c = Conf::new(balance, &[]);
        c.backends = backends
            .iter()
            .map(|(a, w)| format!("addr = \"{a}\", weight = {w}"))
            .collect();
        c
    }

    /// `workers` as a raw TOML value: `"auto"` is quoted for you.
    pub fn workers(mut self, w: &str) -> Conf {
        self.workers = if w == "auto" {
            "\"auto\"".to_string()
        } else {
            w.to_string()
        };
        self
    }

    pub fn pin_cpus(mut self, pin: bool) -> Conf {
        self.pin_cpus = pin;
        self
    }

    pub fn splice(mut self, mode: &str) -> Conf {
        self.splice = mode.to_string();
        self
    }

    /// Add one `key = value` line to the listener.
    pub fn extra(mut self, line: &str) -> Conf {
        self.listener_extra.push(line.to_string());
        self
    }

    /// Add one `key = value` line to `[runtime]`.
    pub fn runtime(mut self, line: &str) -> Conf {
        self.runtime_extra.push(line.to_string());
        self
    }

    /// Run the balancer with a hard open-files limit of `n`.
    pub fn nofile(mut self, n: u64) -> Conf {
        self.nofile = Some(n);
        self
    }

    pub fn ipv6(mut self, on: bool) -> Conf {
        self.ipv6 = on;
        self
    }

    pub fn render(&self, bind: SocketAddr) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "[runtime]");
        let _ = writeln!(s, "workers = {}", self.workers);
        let _ = writeln!(s, "pin_cpus = {}", self.pin_cpus);
        let _ = writeln!(s, "splice = \"{}\"", self.splice);
        let _ = writeln!(s, "drain_timeout_s = 1");
        for line in &self.runtime_extra {
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "[[listener]]");
        let _ = writeln!(s, "name = \"t\"");
        let _ = writeln!(s, "protocol = \"tcp\"");
        let _ = writeln!(s, "bind = \"{bind}\"");
        let _ = writeln!(s, "balance = \"{}\"", self.balance);
        let _ = writeln!(s, "connect_timeout_ms = {}", self.connect_timeout_ms);
        for line in &self.listener_extra {
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(s, "backends = [");
        for b in &self.backends {
            let _ = writeln!(s, "  {{ {b} }},");
        }
        let _ = writeln!(s, "]");
        s
    }
}

// ---------------------------------------------------------------------------------------------
// The balancer process
// ---------------------------------------------------------------------------------------------

pub fn l4lb_bin() -> &'static str {
    env!("CARGO_BIN_EXE_l4lb")
}

/// A running `l4lb --config FILE`. Drop kills it (SIGKILL) and waits; a balancer that died on
/// its own during the test fails the test with its stderr.
#[derive(Debug)]
pub struct L4lb {
    child: Option<Child>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    /// The listener's address.
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    _dir: TempDir,
}

/// What shows that the balancer is up: a socket of the child on the listener's port, read from
/// `/proc/net` (so that starting it sends nothing that would open a connection or a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// A TCP socket in LISTEN state (`/proc/net/tcp{,6}`): a TCP listener.
    TcpListen,
    /// A UDP socket bound to the port (`/proc/net/udp{,6}`): a UDP listener.
    UdpBound,
}

impl Ready {
    /// A port of `ip` that nobody holds for this protocol now (bound, then released).
    fn free_port(self, ip: IpAddr) -> u16 {
        match self {
            Ready::TcpListen => free_port(ip),
            Ready::UdpBound => UdpSocket::bind((ip, 0))
                .and_then(|s| s.local_addr())
                .expect("bind UDP port 0")
                .port(),
        }
    }

    /// The `/proc/net` table of this protocol for `addr`'s family.
    fn table(self, addr: SocketAddr) -> &'static str {
        match (self, addr.is_ipv4()) {
            (Ready::TcpListen, true) => "/proc/net/tcp",
            (Ready::TcpListen, false) => "/proc/net/tcp6",
            (Ready::UdpBound, true) => "/proc/net/udp",
            (Ready::UdpBound, false) => "/proc/net/udp6",
        }
    }
}

/// Why one start attempt did not produce a ready balancer.
enum StartError {
    Exited(ExitStatus, String),
    Timeout(String),
}

impl L4lb {
    /// Start on a free loopback port, retrying with another port if the bind raced (exit 1).
    pub fn start(conf: &Conf) -> L4lb {
        L4lb::start_edited(conf, |text, _| text)
    }

    /// Start `l4lb` on the config `render` writes for a listener on `addr` (a free port of
    /// `ip`), and wait until the child owns that socket (`ready`). An exit with code 1 during
    /// startup is taken for a lost race for a port: `render` is called again with a fresh
    /// port (it may pick its other ports afresh too), up to 5 attempts. Any other exit, or no
    /// socket within `STARTUP_TIMEOUT`, fails the test with the config and stderr. `nofile`:
    /// see `Conf::nofile`.
    pub fn launch(
        ip: IpAddr,
        ready: Ready,
        nofile: Option<u64>,
        mut render: impl FnMut(SocketAddr) -> String,
    ) -> L4lb {
        const ATTEMPTS: usize = 5;
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let addr = SocketAddr::new(ip, ready.free_port(ip));
            let text = render(addr);
            match L4lb::try_start(&text, addr, ready, nofile) {
                Ok(lb) => return lb,
                Err(StartError::Exited(status, stderr)) if status.code() == Some(1) => {
                    // Most likely someone took the port between our probe and l4lb's bind.
                    last = format!("exit {status}: {stderr}");
                }
                Err(StartError::Exited(status, stderr)) => {
                    panic!("l4lb exited during startup with {status}\nconfig:\n{text}\nstderr:\n{stderr}")
                }
                Err(StartError::Timeout(stderr)) => {
                    let what = match ready {
                        Ready::TcpListen => "listen on",
                        Ready::UdpBound => "bind",
                    };
                    panic!(
                        "l4lb did not {what} {addr} within {STARTUP_TIMEOUT:?}\nconfig:\n{text}\nstderr:\n{stderr}"
                    )
                }
            }
        }
        panic!("l4lb failed to start {ATTEMPTS} times; last: {last}");
    }

    fn try_start(
        text: &str,
        addr: SocketAddr,
        ready: Ready,
        nofile: Option<u64>,
    ) -> Result<L4lb, StartError> {
        let dir = TempDir::new("lb");
        let config_path = dir.write("l4lb.toml", text);
        let mut command = match nofile {
            // exec keeps the PID, so the readiness check below still finds the socket.
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(l4lb_bin());
                c
            }
            None => Command::new(l4lb_bin()),
        };
        let mut child = command
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn l4lb");
        let stderr = child.stderr.take().map(drain_in_thread);
        let mut lb = L4lb {
            child: Some(child),
            stderr,
            addr,
            config_path,
            _dir: dir,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let child = lb.child.as_mut().expect("child");
            if let Ok(Some(status)) = child.try_wait() {
                lb.child = None;
                let text = lb.take_stderr();
                return Err(StartError::Exited(status, text));
            }
            if owns_socket(child.id(), addr, ready) {
                return Ok(lb);
            }
            if Instant::now() >= deadline {
                let text = lb.stop();
                return Err(StartError::Timeout(text));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill and wait (idempotent); returns everything the balancer wrote on stderr.
    pub fn stop(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.take_stderr()
    }

    fn take_stderr(&mut self) -> String {
        match self.stderr.take() {
            Some(h) => String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned(),
            None => String::new(),
        }
    }

    /// Panic (with stderr) if the balancer is no longer running.
    pub fn assert_running(&mut self) {
        let exited = match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten(),
            None => None,
        };
        if let Some(status) = exited {
            self.child = None;
            let text = self.take_stderr();
            panic!("l4lb exited unexpectedly with {status}; stderr:\n{text}");
        }
    }
}

impl Drop for L4lb {
    fn drop(&mut self) {
        let died = match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten(),
            None => None,
        };
        let text = self.stop();
        if thread::panicking() {
            eprintln!("---- l4lb stderr ----\n{text}---- end of l4lb stderr ----");
        } else if let Some(status) = died {
            panic!("l4lb exited on its own during the test with {status}; stderr:\n{text}");
        }
    }
}

fn drain_in_thread<R: Read + Send + 'static>(mut r: R) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut out = Vec::new();
        let _ = r.read_to_end(&mut out);
        out
    })
}

/// Whether process `pid` owns a socket of `ready`'s protocol on `addr`'s port (and family): for
/// TCP one in LISTEN state, for UDP any (a bound, unconnected UDP socket shows as 07, CLOSE).
fn owns_socket(pid: u32, addr: SocketAddr, ready: Ready) -> bool {
    let Ok(text) = std::fs::read_to_string(ready.table(addr)) else {
        return false;
    };
    let port_hex = format!("{:04X}", addr.port());
    let inodes: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || (ready == Ready::TcpListen && f[3] != "0A") {
                return None;
            }
            let (_, port) = f[1].rsplit_once(':')?;
            (port == port_hex).then(|| f[9].to_string())
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
        .filter_map(|l| {
            let s = l.to_string_lossy().into_owned();
            s.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_string)
        })
        .any(|inode| inodes.contains(&inode))
}

/// The result of a CLI invocation that ran to completion.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Run `l4lb ARGS` and wait for it to exit, at most `timeout` (then kill it and panic).
pub fn run_cli(args: &[&std::ffi::OsStr], timeout: Duration) -> CliOutput {
    let mut child = Command::new(l4lb_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn l4lb");
    let out = child.stdout.take().map(drain_in_thread);
    let err = child.stderr.take().map(drain_in_thread);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let collect = |h: Option<JoinHandle<Vec<u8>>>| {
        h.map(|h| String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned())
            .unwrap_or_default()
    };
    let stdout = collect(out);
    let stderr = collect(err);
    match status {
        Some(status) => CliOutput {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "l4lb {args:?} did not exit within {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// What a backend does with one accepted connection. Runs on its own thread.
pub type Handler = Arc<dyn Fn(TcpStream) + Send + Sync + 'static>;

/// A TCP server on a loopback port 0, one thread per connection. Drop stops accepting, joins
/// the accept thread and waits (bounded) for the connection handlers to finish.
pub struct Backend {
    pub addr: SocketAddr,
    /// The id an `id` backend announces, without the newline.
    pub id: String,
    accepted: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("addr", &self.addr)
            .field("id", &self.id)
            .finish()
    }
}

impl Backend {
    pub fn spawn(ip: IpAddr, id: &str, handler: Handler) -> Backend {
        let listener = TcpListener::bind((ip, 0)).expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, active, stop) = (accepted.clone(), active.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("backend-{id}"))
                .spawn(move || accept_loop(listener, handler, accepted, active, stop))
                .expect("spawn backend thread")
        };
        Backend {
            addr,
            id: id.to_string(),
            accepted,
            active,
            stop,
            thread: Some(thread),
        }
    }

    /// Echo everything; after the client's EOF, finish writing and shut down our write side.
    pub fn echo(id: &str) -> Backend {
        Backend::spawn(localhost(), id, Arc::new(|s| echo_conn(s, b"")))
    }

    /// Write `"{id}\n"` first, then echo (half-close aware).
    pub fn id(id: &str) -> Backend {
        let greeting = format!("{id}\n").into_bytes();
        Backend::spawn(localhost(), id, Arc::new(move |s| echo_conn(s, &greeting)))
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections whose handler has not returned yet.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept(); the accept loop sees `stop` and ends.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Handlers end when their peer (the balancer, killed before us) closes. Wait for that,
        // bounded; a straggler is left to its socket timeout rather than hang the test.
        wait_until(Duration::from_secs(2), || self.active() == 0);
    }
}

fn accept_loop(
    listener: TcpListener,
    handler: Handler,
    accepted: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else {
            continue;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        active.fetch_add(1, Ordering::SeqCst);
        // The backstop for a handler whose peer never closes.
        let _ = stream.set_read_timeout(Some(HANDLER_IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(HANDLER_IO_TIMEOUT));
        let (handler, done) = (handler.clone(), active.clone());
        // The handler owns the only descriptor of its socket, so dropping it really closes
        // (a reset with SO_LINGER 0 is sent at once, not when some clone goes away).
        let spawned = thread::Builder::new()
            .stack_size(HANDLER_STACK)
            .spawn(move || {
                handler(stream);
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Write `greeting`, then echo until EOF, then shut down the write side and drain (so the
/// close sends a FIN, not a reset).
pub fn echo_conn(mut s: TcpStream, greeting: &[u8]) {
    if !greeting.is_empty() && s.write_all(greeting).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

fn prepare(s: &TcpStream) {
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let _ = s.set_nodelay(true);
}

/// Connect with a timeout; the stream gets read/write timeouts of `IO_TIMEOUT`.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    prepare(&s);
    Ok(s)
}

/// Connect from source address `src` (port chosen by the kernel).
pub fn connect_from(src: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    let s: TcpStream = sock.into();
    prepare(&s);
    Ok(s)
}

/// Close with a reset instead of a FIN.
pub fn reset(s: TcpStream) {
    let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// Read until EOF; fails on timeout (`deadline` is for the whole read) or any error.
pub fn read_until_eof(s: &mut TcpStream, within: Duration) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no EOF within {within:?} ({} bytes read)", out.len()),
            ));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no EOF within {within:?}; read {} bytes: {:?}",
                        out.len(),
                        String::from_utf8_lossy(&out[..out.len().min(64)])
                    ),
                ));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{e} after {} bytes", out.len()),
                ))
            }
        }
    }
}

/// Read exactly `n` bytes within `within`.
pub fn read_exact_within(s: &mut TcpStream, n: usize, within: Duration) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "read_exact timeout",
            ));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut out[got..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {got} of {n} bytes"),
                ))
            }
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Read one `\n`-terminated line (the id of an `id` backend), without the newline.
pub fn read_line(s: &mut TcpStream, within: Duration) -> io::Result<String> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no line in time"));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut byte) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {:?}", String::from_utf8_lossy(&out)),
                ))
            }
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&out).into_owned()),
            Ok(_) => out.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Write `msg` and read it back (through an echo or, after its id line, an `id` backend).
pub fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    s.write_all(msg)?;
    let back = read_exact_within(s, msg.len(), IO_TIMEOUT)?;
    if back != msg {
        return Err(io::Error::other("echo mismatch"));
    }
    Ok(())
}

/// What the first read on a fresh connection gave.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstRead {
    Data(Vec<u8>),
    Eof,
    Reset,
    TimedOut,
    Error(String),
}

pub fn first_read(s: &mut TcpStream, within: Duration) -> FirstRead {
    let _ = s.set_read_timeout(Some(within));
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return FirstRead::Eof,
            Ok(n) => return FirstRead::Data(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return FirstRead::Reset
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return FirstRead::TimedOut
            }
            Err(e) => return FirstRead::Error(e.to_string()),
        }
    }
}

/// How one connection attempt through the balancer to `id` backends ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded: the backend's id line.
    Served(String),
    /// Accepted and closed (reset or EOF) without any backend data.
    Refused,
}

/// Connect from `src` (or the default source) and classify: served by which backend, or
/// refused. Panics on anything else (timeouts, partial ids, connect errors other than reset).
pub fn attempt(lb: SocketAddr, src: Option<IpAddr>) -> Outcome {
    attempt_keep(lb, src).0
}

/// Like `attempt`, and keep the connection open when it was served.
pub fn attempt_keep(lb: SocketAddr, src: Option<IpAddr>) -> (Outcome, Option<TcpStream>) {
    let conn = match src {
        Some(ip) => connect_from(ip, lb),
        None => connect(lb),
    };
    let mut s = match conn {
        Ok(s) => s,
        // The balancer's reset can beat the end of our connect(): a refusal as well.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (Outcome::Refused, None),
        Err(e) => panic!("connect to l4lb {lb} from {src:?}: {e}"),
    };
    match attempt_on(&mut s) {
        Outcome::Refused => (Outcome::Refused, None),
        served => (served, Some(s)),
    }
}

/// Classify an already connected stream (see `attempt`).
pub fn attempt_on(s: &mut TcpStream) -> Outcome {
    match first_read(s, REFUSAL_TIMEOUT) {
        FirstRead::Eof | FirstRead::Reset => Outcome::Refused,
        FirstRead::Data(mut d) => {
            while !d.ends_with(b"\n") {
                match first_read(s, IO_TIMEOUT) {
                    FirstRead::Data(more) => d.extend_from_slice(&more),
                    other => panic!("id line cut short: {d:?} then {other:?}"),
                }
            }
            d.pop();
            Outcome::Served(String::from_utf8_lossy(&d).into_owned())
        }
        FirstRead::TimedOut => {
            panic!("no id and no refusal within {REFUSAL_TIMEOUT:?}")
        }
        FirstRead::Error(e) => panic!("read error: {e}"),
    }
}

/// The id of the backend a fresh connection reached (panics if refused).
pub fn served_by(lb: SocketAddr, src: Option<IpAddr>) -> String {
    match attempt(lb, src) {
        Outcome::Served(id) => id,
        Outcome::Refused => panic!("connection from {src:?} through {lb} was refused"),
    }
}

/// Poll `cond` every 10 ms until it holds or `within` passes; returns whether it held.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// Data: a PRNG to generate it and a hash to compare it
// ---------------------------------------------------------------------------------------------

/// xorshift64*: fast, deterministic, good enough to make every byte matter.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// FNV-1a over 64-bit little-endian words, streaming: the result depends only on the byte
/// sequence, not on how it was cut into chunks (reads return arbitrary pieces).
#[derive(Debug, Clone)]
pub struct StreamHash {
    h: u64,
    pending: [u8; 8],
    npending: usize,
    len: u64,
}

impl Default for StreamHash {
    fn default() -> Self {
        StreamHash::new()
    }
}

impl StreamHash {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub fn new() -> StreamHash {
        StreamHash {
            h: Self::OFFSET,
            pending: [0; 8],
            npending: 0,
            len: 0,
        }
    }

    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(Self::PRIME).rotate_left(23);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.npending > 0 {
            let take = (8 - self.npending).min(data.len());
            self.pending[self.npending..self.npending + take].copy_from_slice(&data[..take]);
            self.npending += take;
            data = &data[take..];
            if self.npending < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.pending);
            self.word(w);
            self.npending = 0;
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.word(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npending = rest.len();
    }

    /// (hash, length in bytes).
    pub fn finish(&self) -> (u64, u64) {
        let mut h = self.h;
        for &b in &self.pending[..self.npending] {
            h = (h ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
        h = (h ^ self.len).wrapping_mul(Self::PRIME);
        (h, self.len)
    }
}

// ---------------------------------------------------------------------------------------------
// Lifecycle helpers: configs `Conf` does not write, signals, the exit, a backend on a given port
// ---------------------------------------------------------------------------------------------

impl L4lb {
    /// Like `start`, with the rendered config passed through `edit` first: for what `Conf` does
    /// not write (another `drain_timeout_s`, more listeners). `edit` gets the text and the bind.
    pub fn start_edited(conf: &Conf, edit: impl Fn(String, SocketAddr) -> String) -> L4lb {
        let ip = if conf.ipv6 {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            localhost()
        };
        L4lb::launch(ip, Ready::TcpListen, conf.nofile, |addr| {
            edit(conf.render(addr), addr)
        })
    }

    /// The balancer's process id, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Send `sig` to the balancer (panics if it was already reaped).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.pid().expect("l4lb already exited");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
            .unwrap_or_else(|e| panic!("kill({pid}, {sig}): {e}"));
    }

    /// Wait up to `within` for the balancer to exit on its own. If it did, reap it (so that
    /// Drop does not take it for a crash) and return its status and stderr.
    pub fn wait_exit(&mut self, within: Duration) -> Option<(ExitStatus, String)> {
        let deadline = Instant::now() + within;
        loop {
            let status = self.child.as_mut()?.try_wait().ok().flatten();
            if let Some(status) = status {
                self.child = None;
                return Some((status, self.take_stderr()));
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Backend {
    /// Like `spawn`, on a given address (e.g. a restarted backend's old port; std's listener
    /// sets SO_REUSEADDR, so connections in TIME_WAIT do not block the bind).
    pub fn spawn_at(addr: SocketAddr, id: &str, handler: Handler) -> io::Result<Backend> {
        let listener = TcpListener::bind(addr)?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, active, stop) = (accepted.clone(), active.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("backend-{id}"))
                .spawn(move || accept_loop(listener, handler, accepted, active, stop))?
        };
        Ok(Backend {
            addr,
            id: id.to_string(),
            accepted,
            active,
            stop,
            thread: Some(thread),
        })
    }

    /// An `id` backend (see `id`) on a given address.
    pub fn id_at(addr: SocketAddr, id: &str) -> io::Result<Backend> {
        let greeting = format!("{id}\n").into_bytes();
        Backend::spawn_at(addr, id, Arc::new(move |s| echo_conn(s, &greeting)))
    }
}

/// `GET /metrics` from the admin API at `admin`; the body (the server closes after one).
pub fn scrape(admin: SocketAddr) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes())?;
    let out = read_until_eof(&mut s, IO_TIMEOUT)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(io::Error::other(format!("bad /metrics response: {text:?}"))),
    }
}

/// The value of sample `name` with exactly `labels` (any order) in Prometheus text `text`.
/// Label values are compared as written (no escapes: addresses and names only).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, mut got) = match series.split_once('{') {
                Some((n, rest)) => {
                    let inner = rest.strip_suffix('}')?;
                    let got: Vec<String> = inner
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|p| format!("{}\"", p.trim_end_matches('"')))
                        .collect();
                    (n, got)
                }
                None => (series, Vec::new()),
            };
            got.sort();
            (n == name && got == want).then(|| value.parse().ok())?
        })
}

#[cfg(test)]
mod selftest {
    use super::*;

    #[test]
    fn stream_hash_ignores_chunking() {
        let mut data = vec![0u8; 1000];
        XorShift::new(7).fill(&mut data);
        let mut whole = StreamHash::new();
        whole.update(&data);
        let mut pieces = StreamHash::new();
        for c in data.chunks(3) {
            pieces.update(c);
        }
        assert_eq!(whole.finish(), pieces.finish());
        data[500] ^= 1;
        let mut changed = StreamHash::new();
        changed.update(&data);
        assert_ne!(whole.finish(), changed.finish());
    }
}
