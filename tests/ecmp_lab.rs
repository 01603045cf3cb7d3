//! The ECMP lab end to end (scripts/ecmp-lab.sh, docs/scale-out.md): `up`, `test`, `down`
//! with this build's binaries, in network namespaces named after this test process (so other
//! test runs on the machine never share them). Asserts every "N/M" figure of the four phases
//! is 100% (each client reaches one backend whichever host carries it; stopping a host and
//! removing a backend move no client that did not have to), and that `down` leaves no
//! namespace and no process behind.
//!
//! Needs root, iproute2 and BIRD 2; without them it says so and passes (CI installs bird2
//! and runs as root, so there it really runs). `down` runs whatever happens (Drop guard);
//! every step has a deadline, the whole test normally takes 10-20 s.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns;

const L4LB: &str = env!("CARGO_BIN_EXE_l4lb");
const LOADGEN: &str = env!("CARGO_BIN_EXE_l4lb-loadgen");

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ecmp-lab.sh")
}

/// Why the lab cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if let Some(why) = netns::missing(&["ip", "bird", "birdc"]) {
        return Some(why);
    }
    // Creating a namespace needs CAP_SYS_ADMIN, which a container's root may lack.
    match netns::Netns::create("ecm", &[]) {
        Some(_probe) => None,
        None => Some("cannot create a network namespace here".into()),
    }
}

/// One lab, named after this process; `down` on drop, whatever happened.
struct Lab {
    id: String,
    dir: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let id = format!("t{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("l4ecmp{id}"));
        Lab { id, dir }
    }

    /// Runs `scripts/ecmp-lab.sh CMD`, killed after `limit`; (success, stdout + stderr).
    fn run(&self, cmd: &str, limit: Duration) -> (bool, String) {
        let log = std::env::temp_dir().join(format!("l4ecmp{}-{cmd}.out", self.id));
        let file = std::fs::File::create(&log).expect("create the output file");
        let err = file.try_clone().expect("clone the output file");
        let mut child = Command::new("bash")
            .arg(script())
            .arg(cmd)
            .env("ECMP_LAB_ID", &self.id)
            .env("ECMP_LAB_DIR", &self.dir)
            .env("L4LB_BIN", L4LB)
            .env("LOADGEN_BIN", LOADGEN)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .expect("spawn scripts/ecmp-lab.sh");
        let deadline = Instant::now() + limit;
        let ok = loop {
            match child.try_wait().expect("wait for the script") {
                Some(status) => break status.success(),
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break false;
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        (ok, text)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let (ok, text) = self.run("down", Duration::from_secs(30));
        if !ok {
            eprintln!("ecmp-lab down failed:\n{text}");
        }
    }
}

/// The "=> OK/TOTAL what (P%)" figures of the `test` output.
fn figures(text: &str) -> Vec<(u64, u64, String)> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("=> "))
        .filter_map(|l| {
            let (frac, what) = l.split_once(' ')?;
            let (ok, total) = frac.split_once('/')?;
            Some((ok.parse().ok()?, total.parse().ok()?, what.to_string()))
        })
        .collect()
}

/// Processes still running with the lab's state directory on their command line.
fn lab_processes(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) {
            found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    found
}

#[test]
fn ecmp_lab_up_test_down() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("ecmp_lab: skipped: {why}");
        return;
    }
    let lab = Lab::new();
    let (up, up_text) = lab.run("up", Duration::from_secs(60));
    assert!(up, "ecmp-lab up failed:\n{up_text}");
    assert!(
        up_text.contains("nexthop via 198.18.13.2"),
        "no 3-way ECMP route after up:\n{up_text}"
    );

    let (ok, text) = lab.run("test", Duration::from_secs(90));
    assert!(ok, "ecmp-lab test failed:\n{text}");
    let figs = figures(&text);
    // Phase 1: 2 figures; 2: 3; 3: 4; 4: 3.
    assert_eq!(figs.len(), 12, "figures:\n{text}");
    for (got, total, what) in &figs {
        assert!(
            got == total && *total > 0,
            "{got}/{total} {what}: not 100%\n{text}"
        );
    }
    let clients = figs
        .iter()
        .filter(|(_, t, w)| *t == 600 && w.starts_with("clients reached one backend"))
        .count();
    assert_eq!(clients, 4, "600 clients in each phase:\n{text}");
    assert!(
        text.contains("the router's route lost h2"),
        "no withdrawal measured:\n{text}"
    );
    assert!(
        text.contains("the router's route has h2 again"),
        "h2 not announced again:\n{text}"
    );

    // `down` (also what Drop runs) leaves no namespace, no process, no state directory.
    let (down, down_text) = lab.run("down", Duration::from_secs(30));
    assert!(down, "ecmp-lab down failed:\n{down_text}");
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let prefix = format!("l4ecmp{}-", lab.id);
    let left = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !left.lines().any(|l| l.starts_with(&prefix)),
        "namespaces left:\n{left}"
    );
    let procs = lab_processes(&lab.dir);
    assert!(procs.is_empty(), "processes left: {procs:?}");
    assert!(!lab.dir.exists(), "state directory left");
}
