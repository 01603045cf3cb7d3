//! Out of file descriptors: l4lb started with a tiny open-files limit must keep serving the
//! connections it has, must not spin on the accept queue it cannot drain (EMFILE), must not
//! blame the backend for its own shortage, and must recover once descriptors are free.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{connect, Backend, Conf, L4lb};

/// utime + stime of a process, in clock ticks (all threads).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// One echo round trip within 150 ms.
fn quick_echo(s: &mut TcpStream, msg: &[u8]) -> bool {
    let mut back = vec![0u8; msg.len()];
    s.set_read_timeout(Some(Duration::from_millis(150))).is_ok()
        && s.write_all(msg).is_ok()
        && s.read_exact(&mut back).is_ok()
        && back == msg
}

/// /proc reports CPU time in USER_HZ ticks, which the Linux ABI fixes at 100 per second.
const TICKS_PER_SECOND: u64 = 100;

#[test]
fn emfile_does_not_spin_and_recovers() {
    common::raise_nofile_limit();
    let backend = Backend::echo("echo");
    // About 10 descriptors go to the process itself; the rest fit a handful of connections.
    let conf = Conf::new("round_robin", &[backend.addr])
        .workers("1")
        .nofile(32);
    let lb = L4lb::start(&conf);
    let pid = lb.pid().expect("l4lb pid");

    // Far more clients than descriptors: the kernel queues them, l4lb hits EMFILE.
    let mut clients: Vec<TcpStream> = Vec::new();
    for _ in 0..40 {
        if let Ok(s) = connect(lb.addr) {
            clients.push(s);
        }
    }
    assert!(
        clients.len() >= 20,
        "only {} clients connected",
        clients.len()
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut served = 0;
    for s in clients.iter_mut() {
        if quick_echo(s, b"ping") {
            served += 1;
        }
    }
    assert!(
        served >= 1,
        "no connection was served at the descriptor limit"
    );
    assert!(
        served < clients.len(),
        "every connection was served: the limit did not bite"
    );

    // With connections waiting in the accept queue that it cannot take, the loop must sleep.
    let hz = TICKS_PER_SECOND;
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    assert!(
        used * 2 < hz,
        "l4lb used {used} of {hz} ticks in one second while out of descriptors: it spins"
    );

    // Free everything: new connections are served again, and the backend was not marked
    // down for l4lb's own shortage (with one backend that would refuse everyone).
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ok = connect(lb.addr).is_ok_and(|mut s| quick_echo(&mut s, b"after"));
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "l4lb did not recover after descriptors were freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
