//! Network namespaces for the tests that need a real link or a network of their own: `Netns`
//! (one namespace, with an optional `resolv.conf` and a veth link to this host), `TunLink`
//! (a namespace reached through the TUN delay relay, `tests/helpers/tun_delay.py`), and
//! `missing`, the one check of what they need (root, the tools on `PATH`).
//!
//! Invariants: every name carries the test process's PID and a per-process sequence number
//! (tests run in parallel threads and other sessions run the same tests), interface names fit
//! the kernel's 15 characters, and Drop always deletes what was created: the namespace (which
//! takes the links and every rule and qdisc inside it), `/etc/netns/NAME`, and the relay.
//! Processes a test starts in a namespace are its own to stop before the namespace goes (a
//! process keeps a namespace alive after `ip netns del`); `Netns::keep` hands one over.
//! Addresses are /30s of 198.19.0.0/16 (benchmarking space), chosen from the PID and checked
//! against the addresses this host already has.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Sequence number of the namespaces this process made, for unique names.
static SEQ: AtomicU32 = AtomicU32::new(0);

const RELAY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helpers/tun_delay.py");

/// Whether `tool` is an executable file in a directory of `PATH`.
fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Why a namespace test cannot run on this machine, if it cannot: not root, or one of
/// `tools` (commands such as `ip`, `nft`, `tc`, `python3`) is not installed.
pub fn missing(tools: &[&str]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (network namespaces need it)".into());
    }
    tools
        .iter()
        .find(|t| !on_path(t))
        .map(|t| format!("`{t}` is not installed"))
}

/// Run a command to completion; Err with its stderr when it fails.
pub fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Run a command to completion and return its stdout; panics when it fails.
pub fn sh_out(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free /30 of 198.19.0.0/16 for a link between this host and a namespace: (this host's
/// address, the namespace's). Starts from the PID and skips the ones this host already uses.
fn free_slash30(seq: u32) -> (Ipv4Addr, Ipv4Addr) {
    let used = sh_out(&["ip", "-4", "-o", "addr", "show"]);
    let start = (std::process::id().wrapping_mul(8)).wrapping_add(seq);
    for i in 0..(1u32 << 14) {
        let n = (start.wrapping_add(i)) % (1 << 14);
        let base = u32::from(Ipv4Addr::new(198, 19, 0, 0)) + n * 4;
        let (near, far) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        if !used.contains(&format!(" {near}/")) && !used.contains(&format!(" {far}/")) {
            return (near, far);
        }
    }
    panic!("no free /30 in 198.19.0.0/16");
}

/// One network namespace with its loopback up. Drop deletes it and its `/etc/netns` files.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// What goes into interface names: the tag, the PID and the sequence number.
    stem: String,
    seq: u32,
    etc: Option<PathBuf>,
    children: Vec<Child>,
}

impl Netns {
    /// A namespace `l4<tag><pid>n<seq>`; `tag` is at most 3 characters (interface names are
    /// built from it). `None`, after a `SKIP:` line on stderr, when this machine cannot make
    /// one: not root, `ip` or another of `tools` missing, or `ip netns add` refused (a
    /// container without CAP_SYS_ADMIN).
    pub fn create(tag: &str, tools: &[&str]) -> Option<Netns> {
        assert!(tag.len() <= 3, "netns tag {tag:?}: 3 characters at most");
        let mut all = vec!["ip"];
        all.extend_from_slice(tools);
        if let Some(why) = missing(&all) {
            eprintln!("SKIP: {why}");
            return None;
        }
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let stem = format!("{tag}{}n{seq}", std::process::id());
        let name = format!("l4{stem}");
        if let Err(e) = sh(&["ip", "netns", "add", &name]) {
            eprintln!("SKIP: cannot create a network namespace here: {e}");
            return None;
        }
        let ns = Netns {
            name,
            stem,
            seq,
            etc: None,
            children: Vec::new(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// An interface name of this namespace's: the stem and `suffix` (one character).
    pub fn ifname(&self, suffix: char) -> String {
        let name = format!("l{}{suffix}", self.stem);
        assert!(name.len() <= 15, "interface name {name:?} too long");
        name
    }

    /// `ip -n NAME ARGS`; panics when it fails.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        sh(&all).unwrap_or_else(|e| panic!("{e}"));
    }

    /// `ARGS` run inside the namespace (`ip netns exec`); panics when it fails.
    pub fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        sh(&all).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Like `exec`, returning stdout.
    pub fn exec_out(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        sh_out(&all)
    }

    /// A `Command` that runs `program` inside the namespace. `ip netns exec` execs it, so the
    /// child's PID is the program's (signals reach it directly).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Stop `child` (SIGKILL, wait) when the namespace goes, before it is deleted.
    pub fn keep(&mut self, child: Child) {
        self.children.push(child);
    }

    /// Run `f` on a thread that joined the namespace: the sockets it creates live there.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in the namespace")
    }

    /// Write `/etc/netns/NAME/resolv.conf`, which `ip netns exec` mounts over
    /// `/etc/resolv.conf` for what it starts from now on; removed on drop.
    pub fn resolv_conf(&mut self, text: &str) {
        let dir = PathBuf::from(format!("/etc/netns/{}", self.name));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        self.etc = Some(dir.clone());
        std::fs::write(dir.join("resolv.conf"), text).expect("write resolv.conf");
    }

    /// A veth link from this host into the namespace, addressed with a free /30:
    /// (this host's address, the namespace's, the namespace's device). Goes with the
    /// namespace.
    pub fn veth(&self) -> (Ipv4Addr, Ipv4Addr, String) {
        let (outer, inner) = (self.ifname('h'), self.ifname('b'));
        let (near, far) = free_slash30(self.seq);
        let (near_s, far_s) = (format!("{near}/30"), format!("{far}/30"));
        for step in [
            vec![
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns",
                &self.name,
            ],
            vec!["ip", "addr", "add", &near_s, "dev", &outer],
            vec!["ip", "link", "set", &outer, "up"],
            vec!["ip", "-n", &self.name, "addr", "add", &far_s, "dev", &inner],
            vec!["ip", "-n", &self.name, "link", "set", &inner, "up"],
        ] {
            sh(&step).unwrap_or_else(|e| panic!("network setup failed: {e}"));
        }
        (near, far, inner)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = sh(&["ip", "netns", "del", &self.name]);
        if let Some(dir) = self.etc.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A namespace reached through two TUN devices joined by the delay relay: every packet
/// between this host and the namespace waits `delay_ms` plus a random 0..`jitter_ms` in each
/// direction, so with jitter packets also overtake each other (this kernel has no netem).
/// `outer` (here) and `inner` (in the namespace) are the link's two devices, for qdiscs.
/// Drop stops the relay (its device goes with it), then the namespace's Drop runs.
pub struct TunLink {
    pub ns: Netns,
    /// This host's address on the link, and the namespace's.
    pub near: Ipv4Addr,
    pub far: Ipv4Addr,
    pub outer: String,
    pub inner: String,
    relay: Option<(Child, BufReader<ChildStdout>)>,
}

impl TunLink {
    /// `None` (with a `SKIP:` line) when this machine cannot make one: see `Netns::create`;
    /// the relay also needs `python3` and `/dev/net/tun`.
    pub fn create(tag: &str, delay_ms: u32, jitter_ms: u32, tools: &[&str]) -> Option<TunLink> {
        if !Path::new("/dev/net/tun").exists() {
            eprintln!("SKIP: no /dev/net/tun");
            return None;
        }
        let mut all = vec!["python3"];
        all.extend_from_slice(tools);
        let ns = Netns::create(tag, &all)?;
        let (outer, inner) = (ns.ifname('a'), ns.ifname('b'));
        let (near, far) = free_slash30(ns.seq);
        let mut relay = Command::new("python3")
            .args([RELAY, &outer, &inner])
            .args([delay_ms.to_string(), jitter_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the TUN relay");
        let mut stdout = BufReader::new(relay.stdout.take().expect("relay stdout"));
        let mut link = TunLink {
            ns,
            near,
            far,
            outer,
            inner,
            relay: None,
        };
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        link.relay = Some((relay, stdout));
        assert_eq!(line.trim(), "ready", "the TUN relay did not start");
        let (near_s, far_s) = (format!("{near}/32"), format!("{far}/32"));
        let (name, o, i) = (link.ns.name.clone(), &link.outer, &link.inner);
        for step in [
            vec!["ip", "addr", "add", &near_s, "peer", &far_s, "dev", o],
            vec!["ip", "link", "set", o, "up"],
            vec!["ip", "link", "set", i, "netns", &name],
            vec![
                "ip", "-n", &name, "addr", "add", &far_s, "peer", &near_s, "dev", i,
            ],
            vec!["ip", "-n", &name, "link", "set", i, "up"],
        ] {
            sh(&step).unwrap_or_else(|e| panic!("network setup failed: {e}"));
        }
        Some(link)
    }

    /// Stop the relay and return its last line: how many packets it relayed and how many of
    /// them overtook an earlier one of the same direction.
    pub fn finish(&mut self) -> String {
        let Some((mut child, mut stdout)) = self.relay.take() else {
            return String::new();
        };
        // EOF on stdin is the relay's signal to print its counts and exit.
        drop(child.stdin.take());
        let mut line = String::new();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = stdout.read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        line.trim().to_string()
    }
}

impl Drop for TunLink {
    fn drop(&mut self) {
        if let Some((mut child, _)) = self.relay.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
