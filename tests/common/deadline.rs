//! The harness's deadlines: how long startup, one socket call and a refusal may take, and
//! `wait_until`, the bounded poll every wait in the tests goes through.

use std::thread;
use std::time::{Duration, Instant};

/// How long the balancer may take to bind its listener (a debug build on a busy 2-core host;
/// readiness scans /proc/net/tcp, which takes about a second per read when tens of thousands
/// of TIME_WAIT sockets are there).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-call socket timeout: no read or write in these tests should ever block this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How fast a refusal (reset or close without data) must arrive.
pub const REFUSAL_TIMEOUT: Duration = Duration::from_secs(3);

/// Poll `cond` every 10 ms until it holds or `within` passes; returns whether it held.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}
