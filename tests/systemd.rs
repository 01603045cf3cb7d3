//! Running under systemd (issue 11): the readiness protocol through a fake `NOTIFY_SOCKET`,
//! a listening socket passed as by socket activation (`LISTEN_FDS`), and dropping root to
//! `runtime.user` (skipped when not root).
//!
//! Real processes, loopback only, ports from the kernel, every wait bounded.

mod common;

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use common::{
    daemon_config, free_tcp_addr, l4lb_bin, tcp_echo, Daemon, LoadgenEcho, TempDir, STARTUP_TIMEOUT,
};

/// With NOTIFY_SOCKET set: READY=1 once the listener accepts, RELOADING=1 then READY=1 around
/// a SIGHUP, STOPPING=1 on SIGTERM.
#[test]
fn sd_notify_reports_ready_reload_and_stop() {
    let backend = LoadgenEcho::start();
    let dir = TempDir::new("sd-notify");
    let tcp = free_tcp_addr();
    let conf = dir.write(
        "c.toml",
        &daemon_config(
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
    let mut lb = Daemon::spawn(&conf, &[], &[("NOTIFY_SOCKET", &env)]);
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
    let backend = LoadgenEcho::start();
    let dir = TempDir::new("listen-fds");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let conf = dir.write(
        "c.toml",
        &daemon_config(
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
    let mut lb = Daemon {
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
    let backend = LoadgenEcho::start();
    let dir = TempDir::new("privdrop");
    let tcp = free_tcp_addr();
    let ctl = dir.path().join("ctl.sock");
    let conf = dir.write(
        "c.toml",
        &daemon_config(
            &[
                "workers = 2".to_string(),
                "user = \"nobody\"".to_string(),
                format!("control_socket = \"{}\"", ctl.display()),
            ],
            &[("web", "tcp", tcp, backend.tcp)],
        ),
    );
    let mut lb = Daemon::spawn(&conf, &[], &[]);
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
