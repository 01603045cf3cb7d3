//! `Daemon`: an `l4lb` child run the way an operator runs it (several at once for a takeover,
//! with extra flags and environment), its stderr in a file that can be read while it runs;
//! `LoadgenEcho`, an `l4lb-loadgen serve` echo backend on a TCP and a UDP port; a config
//! writer for several listeners; one-shot TCP and UDP echo checks. Used by tests/takeover.rs
//! and tests/systemd.rs.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::deadline::{wait_until, STARTUP_TIMEOUT};
use super::process::l4lb_bin;

pub const LOADGEN: &str = env!("CARGO_BIN_EXE_l4lb-loadgen");

/// An `l4lb` child with its stderr in a file (readable while it runs). Drop kills it.
pub struct Daemon {
    pub child: Option<Child>,
    pub log: PathBuf,
    pub pid: u32,
}

impl Daemon {
    pub fn spawn(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
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
        Daemon {
            pid: child.id(),
            child: Some(child),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle` (panics with the log after `within`).
    pub fn wait_log(&mut self, needle: &str, within: Duration) {
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

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Wait for the exit (bounded); reaps the child.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
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

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid as i32), sig).expect("signal l4lb");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// `l4lb-loadgen serve` (echo) on a TCP and a UDP port of 127.0.0.1; killed on drop.
pub struct LoadgenEcho {
    child: Child,
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
}

impl LoadgenEcho {
    pub fn start() -> LoadgenEcho {
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
        LoadgenEcho {
            child,
            tcp: tcp.expect("tcp"),
            udp: udp.expect("udp"),
        }
    }
}

impl Drop for LoadgenEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config: `runtime` lines, then one listener per `(name, protocol, bind, backend)`.
pub fn daemon_config(
    runtime: &[String],
    listeners: &[(&str, &str, SocketAddr, SocketAddr)],
) -> String {
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
pub fn tcp_echo(addr: SocketAddr) -> std::io::Result<()> {
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

pub fn udp_echo(addr: SocketAddr) -> std::io::Result<()> {
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
