//! `run_cli`: one `l4lb ARGS` invocation run to completion (bounded), with its exit status
//! and output.

use std::process::{Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::process::{drain_in_thread, l4lb_bin};

/// The result of a CLI invocation that ran to completion.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Run `l4lb ARGS` and wait for it to exit, at most `timeout` (then kill it and panic).
pub fn run_cli(args: &[&std::ffi::OsStr], timeout: Duration) -> CliOutput {
    let mut child = Command::new(l4lb_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn l4lb");
    let out = child.stdout.take().map(drain_in_thread);
    let err = child.stderr.take().map(drain_in_thread);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let collect = |h: Option<JoinHandle<Vec<u8>>>| {
        h.map(|h| String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned())
            .unwrap_or_default()
    };
    let stdout = collect(out);
    let stderr = collect(err);
    match status {
        Some(status) => CliOutput {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "l4lb {args:?} did not exit within {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        ),
    }
}
