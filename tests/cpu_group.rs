//! Workers pinned to one CPU run on one thread (`worker::cpu_group`): the real binary with
//! `workers` above the CPUs it is given and `pin_cpus = true`. Every worker of the group must
//! still serve its own listening socket (the kernel spreads connections and UDP flows over
//! all of them), its timers must fire with no traffic at all, and a drain must end the group.

mod common;

use std::fs;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use common::*;

/// The first CPU this test may run on: the group is pinned there.
fn a_cpu() -> usize {
    core_affinity::get_core_ids()
        .and_then(|ids| ids.first().map(|c| c.id))
        .unwrap_or(0)
}

/// `workers` workers, all pinned to one CPU.
fn grouped(conf: Conf, workers: usize) -> Conf {
    conf.workers(&workers.to_string())
        .pin_cpus(true)
        .runtime(&format!("cpus = [{}]", a_cpu()))
}

/// Names of the process's worker threads, once the runtime says it started them all (a UDP
/// listener counts as ready as soon as it is bound, before any worker runs).
fn worker_threads_of(lb: &L4lb) -> Vec<String> {
    let started = wait_until(STARTUP_TIMEOUT, || {
        lb.stderr_lines()
            .iter()
            .any(|l| l.contains("started ") && l.contains(" workers"))
    });
    assert!(
        started,
        "no 'started N workers' line: {:?}",
        lb.stderr_lines()
    );
    worker_threads(lb.pid().expect("l4lb pid"))
}

/// Names of the process's threads that run workers.
fn worker_threads(pid: u32) -> Vec<String> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| fs::read_to_string(t.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("l4lb-worker"))
        .collect()
}

/// Sockets the process holds.
fn sockets(pid: u32) -> usize {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(|f| f.ok())
        .filter_map(|f| fs::read_link(f.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

#[test]
fn three_workers_on_one_cpu_share_a_thread_and_each_serves_its_socket() {
    let a = Backend::echo("a");
    let b = Backend::echo("b");
    let lb = L4lb::start(&grouped(Conf::new("round_robin", &[a.addr, b.addr]), 3));
    let threads = worker_threads_of(&lb);
    assert_eq!(
        threads.len(),
        1,
        "3 workers pinned to one CPU should run on one thread, found {threads:?}"
    );

    // 60 connections from 30 source addresses, all open at once: SO_REUSEPORT hashes each to
    // one of the three workers' sockets, so a worker the group never ran would leave about a
    // third of them unanswered ((2/3)^60 that none lands on it).
    let addr = lb.addr;
    let clients: Vec<_> = (0..60u8)
        .map(|i| {
            thread::spawn(move || {
                let mut s = connect_from(lo(2 + i / 2), addr)
                    .unwrap_or_else(|e| panic!("connect #{i}: {e}"));
                for round in 0..3 {
                    echo_roundtrip(&mut s, format!("client {i} round {round}").as_bytes())
                        .unwrap_or_else(|e| panic!("client {i} round {round}: {e}"));
                }
                s
            })
        })
        .collect();
    let open: Vec<TcpStream> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    assert_eq!(a.accepted() + b.accepted(), 60);
    for s in open {
        let _ = s.shutdown(Shutdown::Both);
    }
}

#[test]
fn udp_flows_and_session_expiry_in_a_group() {
    let backend = UdpBackend::spawn(Mode::Echo);
    let lb = L4lb::start(&grouped(
        Conf::udp("round_robin", &[backend.addr]).idle(1),
        2,
    ));
    let threads = worker_threads_of(&lb);
    assert_eq!(
        threads.len(),
        1,
        "2 workers on one CPU: one thread, found {threads:?}"
    );
    let pid = lb.pid().expect("l4lb pid");

    // 32 flows spread over both workers' sockets; each must be answered.
    let flows: Vec<_> = (0..32u8)
        .map(|i| {
            let s = client(lo(2 + i), lb.addr);
            let msg = format!("flow {i}");
            let reply = ask_until_answered(&s, msg.as_bytes());
            assert_eq!(reply.as_deref(), Some(msg.as_bytes()), "flow {i}");
            s
        })
        .collect();
    // Each session holds a connected socket towards the backend; with idle_timeout_s = 1 and
    // no traffic the workers' timers must close all of them, although no event wakes the
    // group's thread.
    let with_sessions = sockets(pid);
    assert!(
        with_sessions >= 32,
        "expected at least 32 sockets in l4lb with 32 UDP sessions open, saw {with_sessions}"
    );
    assert!(
        wait_until(Duration::from_secs(6), || sockets(pid) + 32 <= with_sessions),
        "UDP sessions not expired 6 s after idle_timeout_s = 1 ({} sockets left of {with_sessions})",
        sockets(pid)
    );
    drop(flows);
}

#[test]
fn a_drain_ends_a_group_once_its_last_connection_closes() {
    let a = Backend::echo("a");
    let mut lb = L4lb::start(&grouped(Conf::new("round_robin", &[a.addr]).drain(30), 2));
    let mut s = connect(lb.addr).expect("connect");
    echo_roundtrip(&mut s, b"before").expect("echo before the drain");
    lb.signal(Signal::SIGTERM);
    let addr = lb.addr;
    assert!(
        wait_until(Duration::from_secs(5), || connect_refused(addr)),
        "new connections still accepted after SIGTERM"
    );
    echo_roundtrip(&mut s, b"during").expect("the open connection during the drain");
    assert!(
        lb.wait_exit(Duration::ZERO).is_none(),
        "exited with a connection open and drain_timeout_s = 30"
    );
    let closed = Instant::now();
    drop(s);
    let exit = lb.wait_exit(Duration::from_secs(10));
    let (status, log) = exit.unwrap_or_else(|| panic!("still running 10 s after the drain ended"));
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    assert!(closed.elapsed() < Duration::from_secs(10));
}

/// A reload reaches every worker of a group through its own waker: a listener it adds is
/// served on every worker's socket.
#[test]
fn a_listener_added_by_a_reload_is_served_by_every_worker_of_a_group() {
    let a = Backend::echo("a");
    let b = Backend::echo("b");
    let conf = grouped(Conf::new("round_robin", &[a.addr]), 2);
    let (lb, _) = L4lb::start_with_admin(&conf);
    let added = SocketAddr::new(localhost(), free_port(localhost()));
    lb.reload_text(&(lb.render(&conf) + &tcp_listener_toml("added", added, b.addr)));
    lb.wait_reloads("ok", 1.0, Duration::from_secs(10));
    // 40 connections from 20 sources: with one worker deaf to the reload, about half of
    // them would hang or be refused ((1/2)^40 that none lands on it).
    let open: Vec<TcpStream> = (0..40u8)
        .map(|i| {
            let mut s = connect_from(lo(2 + i / 2), added)
                .unwrap_or_else(|e| panic!("connect #{i} to the added listener: {e}"));
            echo_roundtrip(&mut s, format!("added {i}").as_bytes())
                .unwrap_or_else(|e| panic!("connection #{i} to the added listener: {e}"));
            s
        })
        .collect();
    assert_eq!(b.accepted(), 40);
    drop(open);
}
