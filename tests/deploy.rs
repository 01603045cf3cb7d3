//! Deployment as a daemon (issue 11): binary upgrade by socket handover (`--takeover`) under
//! load and with changed, invalid or missing peers; systemd's readiness protocol through a fake
//! `NOTIFY_SOCKET`; sockets passed as by socket activation (`LISTEN_FDS`); dropping root.
//!
//! Real processes: the `l4lb` binary (several at once: the old and the new), `l4lb-loadgen`
//! as backend and load. Loopback only, ports from the kernel, every wait bounded, and only
//! processes started here are signalled, by PID.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use common::{json_num, l4lb_bin, wait_until, StreamHash, TempDir, XorShift, STARTUP_TIMEOUT};

const LOADGEN: &str = env!("CARGO_BIN_EXE_l4lb-loadgen");

/// An `l4lb` child with its stderr in a file (readable while it runs). Drop kills it.
struct Lb {
    child: Option<Child>,
    log: PathBuf,
    pid: u32,
}

impl Lb {
    fn spawn(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Lb {
        let log = config.with_extension(format!("{}.log", nanos()));
        let err = File::create(&log).expect("log file");
        let mut cmd = Command::new(l4lb_bin());
        cmd.arg("--config")
            .arg(config)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn l4lb");
        Lb {
            pid: child.id(),
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle` (panics with the log after `within`).
    fn wait_log(&mut self, needle: &str, within: Duration) {
        let ok = wait_until(within, || {
            self.log().contains(needle) || self.exited().is_some()
        });
        let log = self.log();
        assert!(
            ok && log.contains(needle),
            "pid {}: no {needle:?} within {within:?}; log:\n{log}",
            self.pid
        );
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Wait for the exit (bounded); reaps the child.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.exited() {
                self.child = None;
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "pid {} still running after {within:?}; log:\n{}",
                self.pid,
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid as i32), sig).expect("signal l4lb");
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// `l4lb-loadgen serve` (echo) on a TCP and a UDP port of 127.0.0.1; killed on drop.
struct EchoBackend {
    child: Child,
    tcp: SocketAddr,
    udp: SocketAddr,
}

impl EchoBackend {
    fn start() -> EchoBackend {
        let mut child = Command::new(LOADGEN)
            .args(["serve", "--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0"])
            .args(["--mode", "echo", "--threads", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn serve");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut tcp, mut udp) = (None, None);
        while tcp.is_none() || udp.is_none() {
            let line = rx
                .recv_timeout(STARTUP_TIMEOUT)
                .expect("serve prints its listeners");
            let addr: Option<SocketAddr> = line
                .strip_prefix("listening on ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok());
            if line.contains("proto=tcp") {
                tcp = addr;
            } else if line.contains("proto=udp") {
                udp = addr;
            }
        }
        EchoBackend {
            child,
            tcp: tcp.expect("tcp"),
            udp: udp.expect("udp"),
        }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free tcp port")
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free udp port")
}

/// A config: `runtime` lines, then one listener per `(name, protocol, bind, backend)`.
fn config(runtime: &[String], listeners: &[(&str, &str, SocketAddr, SocketAddr)]) -> String {
    let mut s = String::from("[runtime]\npin_cpus = false\n");
    for line in runtime {
        s.push_str(line);
        s.push('\n');
    }
    for (name, proto, bind, backend) in listeners {
        s.push_str(&format!(
            "\n[[listener]]\nname = \"{name}\"\nprotocol = \"{proto}\"\nbind = \"{bind}\"\n\
             balance = \"round_robin\"\nidle_timeout_s = 5\nbackends = [ {{ addr = \"{backend}\" }} ]\n"
        ));
    }
    s
}

/// One echo round trip through `addr` (TCP), within a few seconds.
fn tcp_echo(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"ping\n")?;
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf)?;
    if &buf != b"ping\n" {
        return Err(std::io::Error::other("wrong echo"));
    }
    Ok(())
}

fn udp_echo(addr: SocketAddr) -> std::io::Result<()> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.connect(addr)?;
    for _ in 0..6 {
        s.send(b"ping")?;
        let mut buf = [0u8; 16];
        if let Ok(4) = s.recv(&mut buf) {
            return Ok(());
        }
    }
    Err(std::io::Error::other("no UDP echo"))
}

/// Run `l4lb-loadgen ARGS --json` in a thread; join for its output.
fn loadgen(args: Vec<String>) -> thread::JoinHandle<Output> {
    thread::spawn(move || {
        Command::new(LOADGEN)
            .args(&args)
            .arg("--json")
            .stdin(Stdio::null())
            .output()
            .expect("run loadgen")
    })
}

fn summary(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout);
    let last = out.lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with('{'),
        "no JSON summary: {out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    last
}

/// A long-lived stream through the balancer: `rounds` chunks of pseudo-random bytes, each
/// echoed back, paced so that it spans the takeovers; both directions hashed.
fn checked_stream(lb: SocketAddr, seed: u64, rounds: usize) -> Result<u64, String> {
    let mut s =
        TcpStream::connect_timeout(&lb, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut rng = XorShift::new(seed);
    let (mut sent, mut got) = (StreamHash::new(), StreamHash::new());
    let mut chunk = vec![0u8; 16 * 1024];
    let mut back = vec![0u8; chunk.len()];
    for round in 0..rounds {
        rng.fill(&mut chunk);
        sent.update(&chunk);
        s.write_all(&chunk)
            .map_err(|e| format!("stream {seed} round {round}: write: {e}"))?;
        s.read_exact(&mut back)
            .map_err(|e| format!("stream {seed} round {round}: read: {e}"))?;
        got.update(&back);
        thread::sleep(Duration::from_millis(40));
    }
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .map_err(|e| format!("stream {seed}: close: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("stream {seed}: {} bytes after the end", rest.len()));
    }
    if sent.finish() != got.finish() {
        return Err(format!(
            "stream {seed}: echoed bytes differ from the sent ones"
        ));
    }
    Ok(sent.finish().1)
}

/// Three takeovers in a row while tcp-crr, udp-rr and 20 checksummed streams run: no failed
/// connect, no reset, no lost datagram, every stream intact, the last process serves.
#[test]
fn takeover_under_load_drops_nothing() {
    // Its own thread, so that the network namespace below stays with this test.
    thread::spawn(|| {
        let private = private_network();
        eprintln!("takeover under load: {private}");
        takeover_under_load();
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// As root, move the calling thread (and so every thread and process it starts) into a new
/// network namespace with its own loopback: the ~100,000 TIME_WAIT sockets that tcp-crr leaves
/// behind for a minute then vanish with the test instead of slowing every later reader of
/// /proc/net/tcp on the host (the harness's readiness check). Otherwise the host's loopback.
fn private_network() -> &'static str {
    if !nix::unistd::geteuid().is_root() {
        return "host loopback (not root)";
    }
    // SAFETY: unshare(2) takes flags only; CLONE_NEWNET changes this thread's namespace.
    if unsafe { nix::libc::unshare(nix::libc::CLONE_NEWNET) } != 0 {
        return "host loopback (unshare failed)";
    }
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        up,
        "a new network namespace without a working `ip link set lo up`"
    );
    "a private network namespace"
}

fn takeover_under_load() {
    let backend = EchoBackend::start();
    let dir = TempDir::new("takeover-load");
    let (tcp, udp, admin) = (free_tcp(), free_udp(), free_tcp());
    let ctl = dir.path().join("ctl.sock");
    // Worker counts change on every upgrade: fewer (each worker keeps several inherited
    // sockets), more (fresh ones join the REUSEPORT group), fewer again.
    let workers = [3, 2, 4, 2];
    let configs: Vec<PathBuf> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let runtime = [
                format!("workers = {w}"),
                "drain_timeout_s = 30".to_string(),
                format!("control_socket = \"{}\"", ctl.display()),
                format!("\n[admin]\nbind = \"{admin}\""),
            ];
            let text = config(
                &runtime,
                &[
                    ("web", "tcp", tcp, backend.tcp),
                    ("dns", "udp", udp, backend.udp),
                ],
            );
            dir.write(&format!("l4lb-{i}.toml"), &text)
        })
        .collect();
    let mut procs = vec![Lb::spawn(&configs[0], &[], &[])];
    procs[0].wait_log("control socket on", STARTUP_TIMEOUT);
    assert!(wait_until(STARTUP_TIMEOUT, || tcp_echo(tcp).is_ok()));

    let duration = 9;
    let crr = loadgen(
        [
            "tcp-crr",
            "--target",
            &tcp.to_string(),
            "--conns",
            "4",
            "--duration",
            &duration.to_string(),
            "--size",
            "64",
        ]
        .map(String::from)
        .to_vec(),
    );
    let rr = loadgen(
        [
            "udp-rr",
            "--target",
            &udp.to_string(),
            "--conns",
            "4",
            "--duration",
            &duration.to_string(),
            "--size",
            "64",
            "--timeout-ms",
            "2000",
        ]
        .map(String::from)
        .to_vec(),
    );
    let streams: Vec<_> = (0..20u64)
        .map(|i| thread::spawn(move || checked_stream(tcp, 1000 + i, 150)))
        .collect();

    thread::sleep(Duration::from_millis(1500));
    for config in &configs[1..] {
        let mut new = Lb::spawn(config, &["--takeover"], &[]);
        new.wait_log("is draining; serving", STARTUP_TIMEOUT);
        let old = procs.last_mut().expect("old");
        old.wait_log("took over: no longer accepting", STARTUP_TIMEOUT);
        procs.push(new);
        thread::sleep(Duration::from_millis(1500));
    }

    let mut bytes = 0;
    for s in streams {
        bytes += s
            .join()
            .expect("stream thread")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let crr = summary(&crr.join().expect("tcp-crr"));
    let rr = summary(&rr.join().expect("udp-rr"));
    eprintln!("tcp-crr: {crr}\nudp-rr: {rr}\nstreams: 20 intact, {bytes} bytes each way in all");
    for (name, j) in [("tcp-crr", &crr), ("udp-rr", &rr)] {
        assert!(json_num(j, "transactions") > 100.0, "{name}: {j}");
        assert_eq!(
            json_num(j, "total"),
            0.0,
            "{name}: errors during the takeovers: {j}"
        );
    }

    // Every old process drained and exited 0; the last one serves alone.
    let (last, olds) = procs.split_last_mut().expect("processes");
    for old in olds {
        let status = old.wait_exit(Duration::from_secs(30));
        assert!(
            status.success(),
            "old process {}: {status}\n{}",
            old.pid,
            old.log()
        );
    }
    assert!(last.exited().is_none(), "{}", last.log());
    tcp_echo(tcp).expect("the new process serves TCP");
    udp_echo(udp).expect("the new process serves UDP");
    assert!(common::scrape(admin).is_ok(), "the admin port moved too");
    assert!(ctl.exists());
    last.signal(Signal::SIGTERM);
    assert!(last.wait_exit(Duration::from_secs(30)).success());
    assert!(!ctl.exists(), "the control socket is removed on exit");
}

/// A takeover whose config adds a listener and drops one: the kept one keeps its socket, the
/// new one is bound, the dropped one is closed once the old process is gone.
#[test]
fn takeover_adds_and_removes_listeners() {
    let backend = EchoBackend::start();
    let dir = TempDir::new("takeover-change");
    let (kept, dropped, added) = (free_tcp(), free_tcp(), free_udp());
    let ctl = dir.path().join("ctl.sock");
    let runtime = [
        "workers = 2".to_string(),
        "drain_timeout_s = 5".to_string(),
        format!("control_socket = \"{}\"", ctl.display()),
    ];
    let old_conf = dir.write(
        "old.toml",
        &config(
            &runtime,
            &[
                ("kept", "tcp", kept, backend.tcp),
                ("dropped", "tcp", dropped, backend.tcp),
            ],
        ),
    );
    let new_conf = dir.write(
        "new.toml",
        &config(
            &runtime,
            &[
                ("kept", "tcp", kept, backend.tcp),
                ("added", "udp", added, backend.udp),
            ],
        ),
    );
    let mut old = Lb::spawn(&old_conf, &[], &[]);
    old.wait_log("control socket on", STARTUP_TIMEOUT);
    tcp_echo(kept).expect("kept before");
    tcp_echo(dropped).expect("dropped before");

    let notify = dir.path().join("notify");
    let rx = UnixDatagram::bind(&notify).expect("notify socket");
    rx.set_read_timeout(Some(STARTUP_TIMEOUT)).expect("timeout");
    let notify_env = notify.to_string_lossy().into_owned();
    let mut new = Lb::spawn(
        &new_conf,
        &["--takeover"],
        &[("NOTIFY_SOCKET", &notify_env)],
    );
    let mut buf = [0u8; 256];
    let n = rx
        .recv(&mut buf)
        .expect("a notification after the takeover");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        msg.contains(&format!("MAINPID={}", new.pid)) && msg.contains("READY=1"),
        "{msg}"
    );
    assert!(
        old.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        old.log()
    );
    new.wait_log("listener kept: 2 inherited tcp sockets", STARTUP_TIMEOUT);
    assert!(
        new.log().contains("closing 2 inherited tcp sockets on"),
        "{}",
        new.log()
    );
    tcp_echo(kept).expect("kept after");
    udp_echo(added).expect("added after");
    let refused = TcpStream::connect_timeout(&dropped, Duration::from_secs(3));
    assert!(refused.is_err(), "the dropped listener still accepts");
}

/// An invalid new config: the new process exits 2 before touching the old one, which serves on.
#[test]
fn takeover_with_an_invalid_config_leaves_the_old_process_serving() {
    let backend = EchoBackend::start();
    let dir = TempDir::new("takeover-invalid");
    let tcp = free_tcp();
    let ctl = dir.path().join("ctl.sock");
    let runtime = [
        "workers = 1".to_string(),
        format!("control_socket = \"{}\"", ctl.display()),
    ];
    let conf = dir.write(
        "ok.toml",
        &config(&runtime, &[("web", "tcp", tcp, backend.tcp)]),
    );
    let bad = dir.write(
        "bad.toml",
        &config(&runtime, &[("web", "tcp", tcp, backend.tcp)]).replace("round_robin", "fastest"),
    );
    let mut old = Lb::spawn(&conf, &[], &[]);
    old.wait_log("control socket on", STARTUP_TIMEOUT);
    let mut new = Lb::spawn(&bad, &["--takeover"], &[]);
    assert_eq!(new.wait_exit(Duration::from_secs(10)).code(), Some(2));
    let err = new.log();
    assert!(
        err.contains("listener[0].balance") && err.lines().count() == 1,
        "{err}"
    );
    thread::sleep(Duration::from_millis(300));
    assert!(old.exited().is_none(), "{}", old.log());
    assert!(!old.log().contains("took over"), "{}", old.log());
    tcp_echo(tcp).expect("the old process still serves");

    // A valid takeover still works afterwards.
    let mut good = Lb::spawn(&conf, &["--takeover"], &[]);
    good.wait_log("is draining; serving", STARTUP_TIMEOUT);
    assert!(old.wait_exit(Duration::from_secs(10)).success());
    tcp_echo(tcp).expect("the new process serves");
}

/// No process on the control socket (no file, or a stale file): exit 1, one line naming it.
#[test]
fn takeover_without_a_running_process_exits_1() {
    let dir = TempDir::new("takeover-none");
    let ctl = dir.path().join("ctl.sock");
    let runtime = [format!("control_socket = \"{}\"", ctl.display())];
    let conf = dir.write(
        "c.toml",
        &config(&runtime, &[("web", "tcp", free_tcp(), free_tcp())]),
    );
    let mut lb = Lb::spawn(&conf, &["--takeover"], &[]);
    assert_eq!(lb.wait_exit(Duration::from_secs(10)).code(), Some(1));
    let err = lb.log();
    let line = err.lines().last().unwrap_or_default();
    assert!(
        line.contains(&ctl.display().to_string()) && line.contains("No such file"),
        "{err}"
    );
    // A socket file nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(&ctl).expect("stale socket"));
    let mut lb = Lb::spawn(&conf, &["--takeover"], &[]);
    assert_eq!(lb.wait_exit(Duration::from_secs(10)).code(), Some(1));
    let err = lb.log();
    assert!(
        err.contains("Connection refused") && err.contains("no running l4lb"),
        "{err}"
    );
    // Without runtime.control_socket, --takeover is a usage error.
    let plain = dir.write(
        "p.toml",
        &config(&[], &[("web", "tcp", free_tcp(), free_tcp())]),
    );
    let mut lb = Lb::spawn(&plain, &["--takeover"], &[]);
    assert_eq!(lb.wait_exit(Duration::from_secs(10)).code(), Some(2));
    assert!(lb.log().contains("runtime.control_socket"), "{}", lb.log());
}

/// With NOTIFY_SOCKET set: READY=1 once the listener accepts, RELOADING=1 then READY=1 around
/// a SIGHUP, STOPPING=1 on SIGTERM.
#[test]
fn sd_notify_reports_ready_reload_and_stop() {
    let backend = EchoBackend::start();
    let dir = TempDir::new("sd-notify");
    let tcp = free_tcp();
    let conf = dir.write(
        "c.toml",
        &config(
            &["workers = 2".to_string()],
            &[("web", "tcp", tcp, backend.tcp)],
        ),
    );
    let notify = dir.path().join("notify");
    let rx = UnixDatagram::bind(&notify).expect("notify socket");
    rx.set_read_timeout(Some(STARTUP_TIMEOUT)).expect("timeout");
    let recv = || {
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let env = notify.to_string_lossy().into_owned();
    let mut lb = Lb::spawn(&conf, &[], &[("NOTIFY_SOCKET", &env)]);
    let ready = recv();
    assert!(ready.starts_with("READY=1"), "{ready}");
    // Bound and accepting by the time READY=1 arrived: this connect needs no retry.
    tcp_echo(tcp).expect("serving when READY=1 arrives");
    lb.signal(Signal::SIGHUP);
    let reloading = recv();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(recv().starts_with("READY=1"));
    lb.signal(Signal::SIGTERM);
    assert_eq!(recv(), "STOPPING=1");
    assert!(lb.wait_exit(Duration::from_secs(10)).success());
}

/// Socket activation: a listening socket passed as descriptor 3 with LISTEN_FDS=1 and
/// LISTEN_PID = the process is used by the listener bound to its address (no REUSEPORT on it:
/// both workers share it).
#[test]
fn listen_fds_socket_is_adopted() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let backend = EchoBackend::start();
    let dir = TempDir::new("listen-fds");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let conf = dir.write(
        "c.toml",
        &config(
            &["workers = 2".to_string()],
            &[("web", "tcp", addr, backend.tcp)],
        ),
    );
    let log = dir.path().join("l4lb.log");
    let raw = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" --config \"$1\"")
        .arg(l4lb_bin())
        .arg(&conf)
        .stderr(File::create(&log).expect("log"));
    // SAFETY: dup2 is async-signal-safe; it only makes the test's listening socket the
    // child's descriptor 3 (without close-on-exec), as systemd does.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn");
    let mut lb = Lb {
        pid: child.id(),
        child: Some(child),
        log,
    };
    lb.wait_log("started 2 workers", STARTUP_TIMEOUT);
    drop(listener);
    let log = lb.log();
    assert!(
        log.contains(&format!("LISTEN_FDS: tcp socket on {addr}")),
        "{log}"
    );
    assert!(
        log.contains("listener web: 1 inherited tcp sockets"),
        "{log}"
    );
    for _ in 0..4 {
        tcp_echo(addr).expect("served through the activated socket");
    }
}

/// Started as root with `user = "nobody"`: every uid and gid of the process is nobody's, and it
/// still serves. Skipped when not root.
#[test]
fn drops_root_to_the_configured_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: dropping privileges needs root");
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        eprintln!("skipped: no user nobody");
        return;
    };
    let backend = EchoBackend::start();
    let dir = TempDir::new("privdrop");
    let tcp = free_tcp();
    let ctl = dir.path().join("ctl.sock");
    let conf = dir.write(
        "c.toml",
        &config(
            &[
                "workers = 2".to_string(),
                "user = \"nobody\"".to_string(),
                format!("control_socket = \"{}\"", ctl.display()),
            ],
            &[("web", "tcp", tcp, backend.tcp)],
        ),
    );
    let mut lb = Lb::spawn(&conf, &[], &[]);
    lb.wait_log("control socket on", STARTUP_TIMEOUT);
    let status = std::fs::read_to_string(format!("/proc/{}/status", lb.pid)).expect("status");
    let ids = |key: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    assert_eq!(ids("Uid:"), vec![uid; 4], "{status}");
    assert_eq!(ids("Gid:"), vec![gid; 4], "{status}");
    assert_eq!(ids("Groups:"), vec![gid], "{status}");
    assert!(lb.log().contains("dropped root"), "{}", lb.log());
    tcp_echo(tcp).expect("serves as nobody");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&ctl).expect("ctl"));
    assert_eq!(
        owner, uid,
        "the control socket belongs to the user it runs as"
    );
    lb.signal(Signal::SIGTERM);
    assert!(
        lb.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        lb.log()
    );
}

/// SIGUSR2 (the systemd upgrade path): the running process starts its own binary with
/// `--takeover`; the new process takes over and the old one exits 0.
#[test]
fn sigusr2_starts_the_takeover_itself() {
    let backend = EchoBackend::start();
    let dir = TempDir::new("usr2");
    let tcp = free_tcp();
    let ctl = dir.path().join("ctl.sock");
    let runtime = [
        "workers = 2".to_string(),
        format!("control_socket = \"{}\"", ctl.display()),
    ];
    let conf = dir.write(
        "c.toml",
        &config(&runtime, &[("web", "tcp", tcp, backend.tcp)]),
    );
    let mut old = Lb::spawn(&conf, &[], &[]);
    old.wait_log("control socket on", STARTUP_TIMEOUT);
    old.signal(Signal::SIGUSR2);
    old.wait_log("took over: no longer accepting", STARTUP_TIMEOUT);
    let log = old.log();
    // "upgrade signal: started PATH (pid N)": the new process, a child of the old one.
    let new_pid: i32 = log
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no upgrade pid in:\n{log}"));
    let new = Pid::from_raw(new_pid);
    assert!(
        old.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        old.log()
    );
    let served = tcp_echo(tcp);
    let alive = kill(new, None).is_ok();
    // Stop the new process before asserting (it is ours: started by the process we started).
    let _ = kill(new, Signal::SIGTERM);
    assert!(alive, "the upgraded process is not running");
    served.expect("the upgraded process serves");
    // Gone, or a zombie of whoever reaps orphans here.
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{new_pid}/stat"))
            .map(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z'))
            })
            .unwrap_or(true)
    };
    assert!(
        wait_until(Duration::from_secs(10), stopped),
        "the upgraded process did not stop on SIGTERM"
    );
}
