//! `L4lb`: the real balancer as a child process on a generated config: start (with a retry
//! when a port race is lost), readiness, signals, its stderr (readable while it runs), the
//! exit, and the Drop guard that kills it and fails the test if it died on its own.

use std::io::Read;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::conf::{Conf, Proto};
use super::deadline::{wait_until, STARTUP_TIMEOUT};
use super::http::scrape;
use super::net::{free_port, localhost};
use super::ready::{owns_socket, Ready};
use super::tempdir::TempDir;

pub fn l4lb_bin() -> &'static str {
    env!("CARGO_BIN_EXE_l4lb")
}

/// A running `l4lb --config FILE`. Drop kills it (SIGKILL) and waits; a balancer that died on
/// its own during the test fails the test with its stderr.
#[derive(Debug)]
pub struct L4lb {
    child: Option<Child>,
    /// What the child wrote on stderr so far, appended by `stderr_reader`.
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<JoinHandle<()>>,
    /// The listener's address.
    pub addr: SocketAddr,
    /// The admin API's address, when started with one (`start_with_admin`).
    pub admin: Option<SocketAddr>,
    pub config_path: PathBuf,
    _dir: TempDir,
}

/// Why one start attempt did not produce a ready balancer.
enum StartError {
    Exited(ExitStatus, String),
    Timeout(String),
}

impl L4lb {
    /// Start on a free loopback port of `conf`'s protocol, retrying with another port if the
    /// bind raced (exit 1).
    pub fn start(conf: &Conf) -> L4lb {
        L4lb::start_edited(conf, |text, _| text)
    }

    /// Like `start`, with the admin API on a free loopback port (`Conf::admin`); returns once
    /// the API answers, with the admin address.
    pub fn start_with_admin(conf: &Conf) -> (L4lb, SocketAddr) {
        L4lb::start_edited_with_admin(conf, |text, _| text)
    }

    /// `start_with_admin` with the rendered config passed through `edit` (see `start_edited`).
    pub fn start_edited_with_admin(
        conf: &Conf,
        edit: impl Fn(String, SocketAddr) -> String,
    ) -> (L4lb, SocketAddr) {
        let admin = SocketAddr::new(localhost(), free_port(localhost()));
        let mut lb = L4lb::start_edited(&conf.clone().admin(admin), edit);
        lb.admin = Some(admin);
        assert!(
            wait_until(STARTUP_TIMEOUT, || scrape(admin).is_ok()),
            "admin API not answering on {admin}"
        );
        (lb, admin)
    }

    /// Like `start`, with the rendered config passed through `edit` first: for what `Conf` does
    /// not write (another `drain_timeout_s`, more listeners). `edit` gets the text and the bind.
    pub fn start_edited(conf: &Conf, edit: impl Fn(String, SocketAddr) -> String) -> L4lb {
        let ip = if conf.ipv6 {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            localhost()
        };
        let ready = match conf.proto {
            Proto::Tcp => Ready::TcpListen,
            Proto::Udp => Ready::UdpBound,
        };
        L4lb::launch(ip, ready, conf.nofile, |addr| edit(conf.render(addr), addr))
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
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_reader = child
            .stderr
            .take()
            .map(|r| append_in_thread(r, stderr.clone()));
        let mut lb = L4lb {
            child: Some(child),
            stderr,
            stderr_reader,
            addr,
            admin: None,
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

    /// Everything written on stderr, once the child is gone (the reader is joined first, so
    /// nothing is missed); empty when it was taken already.
    fn take_stderr(&mut self) -> String {
        if let Some(h) = self.stderr_reader.take() {
            let _ = h.join();
        }
        let mut buf = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&std::mem::take(&mut *buf)).into_owned()
    }

    /// The complete lines the balancer has written on stderr so far, while it runs (a line
    /// still being written is left out). See `stop` for all of it once it is gone.
    pub fn stderr_lines(&self) -> Vec<String> {
        let buf = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        String::from_utf8_lossy(&buf[..complete])
            .lines()
            .map(str::to_owned)
            .collect()
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

/// Append everything `r` yields to `out` until EOF, as it arrives.
fn append_in_thread<R: Read + Send + 'static>(
    mut r: R,
    out: Arc<Mutex<Vec<u8>>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match r.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => out
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    })
}

pub(super) fn drain_in_thread<R: Read + Send + 'static>(mut r: R) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut out = Vec::new();
        let _ = r.read_to_end(&mut out);
        out
    })
}
