//! Issue 10, bug 3: a reload whose host names cannot be resolved (a DNS outage) must neither
//! hold SIGTERM nor the drain deadline, and fails as a whole once its load deadline passes.
//!
//! The outage is real: l4lb runs in a network namespace of its own (`ip netns exec`, which also
//! bind-mounts `/etc/netns/NAME/resolv.conf` over `/etc/resolv.conf`) whose only name server
//! sits behind a veth link where nothing answers (a fixed neighbour entry, so not even ARP
//! fails), with a resolver timeout of 30 s.
//! Needs root and `ip`; skips with a message otherwise. The namespace and its files carry the
//! test's PID in their names and are always removed (`common::netns::Netns`).

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use common::netns::Netns;
use common::{l4lb_bin, wait_until, TempDir};

/// The resolver's single try at the silent name server takes this long (resolv.conf).
const RESOLVER_TIMEOUT_S: u64 = 30;
/// l4lb's deadline for one reload's load (`runtime::reload::LOAD_DEADLINE`) and some slack for
/// a debug build on a busy host.
const LOAD_DEADLINE: Duration = Duration::from_secs(10);
const SLACK: Duration = Duration::from_secs(5);

/// A network namespace whose DNS never answers: its resolv.conf names a server behind a veth
/// link where nothing answers (a fixed neighbour entry, so not even ARP fails).
fn dead_dns() -> Option<Netns> {
    let mut ns = Netns::create("dns", &[])?;
    ns.resolv_conf(&format!(
        "nameserver 198.18.0.53\noptions timeout:{RESOLVER_TIMEOUT_S} attempts:1\n"
    ));
    // Both ends of the link are inside the namespace: the names are the namespace's own.
    for cmd in [
        &["link", "add", "v0", "type", "veth", "peer", "name", "v1"][..],
        &["link", "set", "v0", "up"],
        &["link", "set", "v1", "up"],
        &["addr", "add", "198.18.0.1/24", "dev", "v0"],
        &[
            "neigh",
            "add",
            "198.18.0.53",
            "lladdr",
            "02:00:00:00:00:53",
            "dev",
            "v0",
            "nud",
            "permanent",
        ],
    ] {
        ns.ip(cmd);
    }
    Some(ns)
}

/// `l4lb` inside the namespace, its stderr collected. Drop kills it (by PID) and waits.
struct Inside {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    config: PathBuf,
    _dir: TempDir,
}

fn config(backends: &str) -> String {
    format!(
        "[runtime]\nworkers = 2\npin_cpus = false\ndrain_timeout_s = 1\n\n\
         [[listener]]\nname = \"t\"\nprotocol = \"tcp\"\nbind = \"127.0.0.1:8080\"\n\
         balance = \"round_robin\"\nbackends = [ {backends} ]\n"
    )
}

impl Inside {
    fn start(dns: &Netns) -> Inside {
        let dir = TempDir::new("dns");
        let config = dir.write("l4lb.toml", &config("{ addr = \"127.0.0.1:9001\" }"));
        let mut child = dns
            .command(l4lb_bin())
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip netns exec l4lb");
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut r) = child.stderr.take() {
            let out = stderr.clone();
            thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
                    out.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&text);
                }
            });
        }
        let lb = Inside {
            child: Some(child),
            stderr,
            config,
            _dir: dir,
        };
        assert!(
            wait_until(Duration::from_secs(10), || lb.saw("started 2 workers")),
            "l4lb did not start in the namespace:\n{}",
            lb.log()
        );
        lb
    }

    fn log(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn saw(&self, needle: &str) -> bool {
        self.log().contains(needle)
    }

    fn signal(&self, sig: Signal) {
        // `ip netns exec` execs l4lb: the child's PID is l4lb's.
        let pid = self.child.as_ref().expect("running").id();
        kill(Pid::from_raw(pid as i32), sig).expect("kill");
    }

    /// Rewrite the config with a host name the dead DNS cannot resolve, and SIGHUP.
    fn reload_unresolvable(&self) {
        let text = config("{ addr = \"127.0.0.1:9001\" }, { addr = \"backend.l4lb.test:80\" }");
        std::fs::write(&self.config, text).expect("rewrite config");
        self.signal(Signal::SIGHUP);
    }

    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.as_mut()?.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// SIGTERM right after a SIGHUP whose names hang: the process drains (no connection) and exits
/// at once. The old code resolved on the signal thread and sat in the resolver for 30 s.
#[test]
fn sigterm_is_not_held_by_a_reload_waiting_for_dns() {
    let Some(dns) = dead_dns() else { return };
    let mut lb = Inside::start(&dns);
    lb.reload_unresolvable();
    thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    lb.signal(Signal::SIGTERM);
    let status = lb.wait_exit(SLACK);
    let log = lb.log();
    let status = status.unwrap_or_else(|| {
        panic!("l4lb still running {SLACK:?} after SIGTERM (reload waiting for DNS?):\n{log}")
    });
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(sent.elapsed() < SLACK);
}

/// A reload whose names do not resolve within the load deadline fails as a whole (counted,
/// logged), well before the resolver's own 30 s, and the process keeps running.
#[test]
fn a_reload_whose_names_do_not_resolve_in_time_fails() {
    let Some(dns) = dead_dns() else { return };
    let mut lb = Inside::start(&dns);
    let sent = Instant::now();
    lb.reload_unresolvable();
    assert!(
        wait_until(LOAD_DEADLINE + SLACK, || lb.saw("reload failed")),
        "no failed reload {:?} after SIGHUP:\n{}",
        LOAD_DEADLINE + SLACK,
        lb.log()
    );
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(RESOLVER_TIMEOUT_S),
        "the reload failed only after {took:?}, when the resolver gave up"
    );
    assert!(lb.saw("not loaded within"), "{}", lb.log());
    assert!(lb.wait_exit(Duration::ZERO).is_none(), "l4lb exited");
    // Another SIGHUP while the first load is still stuck in the resolver is refused at once.
    lb.signal(Signal::SIGHUP);
    assert!(
        wait_until(SLACK, || lb.saw("still waiting for the name resolver")),
        "{}",
        lb.log()
    );
    lb.signal(Signal::SIGTERM);
    let status = lb.wait_exit(SLACK).expect("exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", lb.log());
}
