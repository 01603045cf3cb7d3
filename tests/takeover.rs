//! Binary upgrade by socket handover (`--takeover`, issue 11): three takeovers in a row under
//! load (tcp-crr, udp-rr and 20 checksummed streams) with nothing refused, reset or lost; a
//! takeover that adds and removes listeners; one with an invalid config; one with no process
//! on the control socket; the SIGUSR2 path that systemd uses.
//!
//! Real processes: the `l4lb` binary (the old and the new at once), `l4lb-loadgen` as backend
//! and load. Loopback only (the load test in a network namespace of its own when root), ports
//! from the kernel, every wait bounded, and only processes started here are signalled, by PID.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use common::{
    daemon_config, free_tcp_addr, free_udp_addr, json_num, tcp_echo, udp_echo, wait_until, Daemon,
    LoadgenEcho, StreamHash, TempDir, XorShift, LOADGEN, STARTUP_TIMEOUT,
};

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

/// The old processes' drain timeout in the load test, and how long it waits for them.
const DRAIN: Duration = Duration::from_secs(120);

fn takeover_under_load() {
    let backend = LoadgenEcho::start();
    let dir = TempDir::new("takeover-load");
    let (tcp, udp, admin) = (free_tcp_addr(), free_udp_addr(), free_tcp_addr());
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
                // Far above the streams' ~6 s (on a quiet host): a drain timeout must never
                // be what ends one, even on a host loaded many times over.
                format!("drain_timeout_s = {}", DRAIN.as_secs()),
                format!("control_socket = \"{}\"", ctl.display()),
                format!("\n[admin]\nbind = \"{admin}\""),
            ];
            let text = daemon_config(
                &runtime,
                &[
                    ("web", "tcp", tcp, backend.tcp),
                    ("dns", "udp", udp, backend.udp),
                ],
            );
            dir.write(&format!("l4lb-{i}.toml"), &text)
        })
        .collect();
    let mut procs = vec![Daemon::spawn(&configs[0], &[], &[])];
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
        let mut new = Daemon::spawn(config, &["--takeover"], &[]);
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
        let status = old.wait_exit(DRAIN);
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
    assert!(last.wait_exit(Duration::from_secs(10)).success());
    assert!(!ctl.exists(), "the control socket is removed on exit");
}

/// A takeover whose config adds a listener and drops one: the kept one keeps its socket, the
/// new one is bound, the dropped one is closed once the old process is gone.
#[test]
fn takeover_adds_and_removes_listeners() {
    let backend = LoadgenEcho::start();
    let dir = TempDir::new("takeover-change");
    let (kept, dropped, added) = (free_tcp_addr(), free_tcp_addr(), free_udp_addr());
    let ctl = dir.path().join("ctl.sock");
    let runtime = [
        "workers = 2".to_string(),
        "drain_timeout_s = 5".to_string(),
        format!("control_socket = \"{}\"", ctl.display()),
    ];
    let old_conf = dir.write(
        "old.toml",
        &daemon_config(
            &runtime,
            &[
                ("kept", "tcp", kept, backend.tcp),
                ("dropped", "tcp", dropped, backend.tcp),
            ],
        ),
    );
    let new_conf = dir.write(
        "new.toml",
        &daemon_config(
            &runtime,
            &[
                ("kept", "tcp", kept, backend.tcp),
                ("added", "udp", added, backend.udp),
            ],
        ),
    );
    let mut old = Daemon::spawn(&old_conf, &[], &[]);
    old.wait_log("control socket on", STARTUP_TIMEOUT);
    tcp_echo(kept).expect("kept before");
    tcp_echo(dropped).expect("dropped before");

    let notify = dir.path().join("notify");
    let rx = UnixDatagram::bind(&notify).expect("notify socket");
    rx.set_read_timeout(Some(STARTUP_TIMEOUT)).expect("timeout");
    let notify_env = notify.to_string_lossy().into_owned();
    let mut new = Daemon::spawn(
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
    let backend = LoadgenEcho::start();
    let dir = TempDir::new("takeover-invalid");
    let tcp = free_tcp_addr();
    let ctl = dir.path().join("ctl.sock");
    let runtime = [
        "workers = 1".to_string(),
        format!("control_socket = \"{}\"", ctl.display()),
    ];
    let conf = dir.write(
        "ok.toml",
        &daemon_config(&runtime, &[("web", "tcp", tcp, backend.tcp)]),
    );
    let bad = dir.write(
        "bad.toml",
        &daemon_config(&runtime, &[("web", "tcp", tcp, backend.tcp)])
            .replace("round_robin", "fastest"),
    );
    let mut old = Daemon::spawn(&conf, &[], &[]);
    old.wait_log("control socket on", STARTUP_TIMEOUT);
    let mut new = Daemon::spawn(&bad, &["--takeover"], &[]);
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
    let mut good = Daemon::spawn(&conf, &["--takeover"], &[]);
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
        &daemon_config(
            &runtime,
            &[("web", "tcp", free_tcp_addr(), free_tcp_addr())],
        ),
    );
    let mut lb = Daemon::spawn(&conf, &["--takeover"], &[]);
    assert_eq!(lb.wait_exit(Duration::from_secs(10)).code(), Some(1));
    let err = lb.log();
    let line = err.lines().last().unwrap_or_default();
    assert!(
        line.contains(&ctl.display().to_string()) && line.contains("No such file"),
        "{err}"
    );
    // A socket file nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(&ctl).expect("stale socket"));
    let mut lb = Daemon::spawn(&conf, &["--takeover"], &[]);
    assert_eq!(lb.wait_exit(Duration::from_secs(10)).code(), Some(1));
    let err = lb.log();
    assert!(
        err.contains("Connection refused") && err.contains("no running l4lb"),
        "{err}"
    );
    // Without runtime.control_socket, --takeover is a usage error.
    let plain = dir.write(
        "p.toml",
        &daemon_config(&[], &[("web", "tcp", free_tcp_addr(), free_tcp_addr())]),
    );
    let mut lb = Daemon::spawn(&plain, &["--takeover"], &[]);
    assert_eq!(lb.wait_exit(Duration::from_secs(10)).code(), Some(2));
    assert!(lb.log().contains("runtime.control_socket"), "{}", lb.log());
}

/// SIGUSR2 (the systemd upgrade path): the running process starts its own binary with
/// `--takeover`; the new process takes over and the old one exits 0.
#[test]
fn sigusr2_starts_the_takeover_itself() {
    let backend = LoadgenEcho::start();
    let dir = TempDir::new("usr2");
    let tcp = free_tcp_addr();
    let ctl = dir.path().join("ctl.sock");
    let runtime = [
        "workers = 2".to_string(),
        format!("control_socket = \"{}\"", ctl.display()),
    ];
    let conf = dir.write(
        "c.toml",
        &daemon_config(&runtime, &[("web", "tcp", tcp, backend.tcp)]),
    );
    let mut old = Daemon::spawn(&conf, &[], &[]);
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
