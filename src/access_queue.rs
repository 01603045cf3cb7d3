//! The access log's way out: workers format each line into a fixed-size slot and hand it to a
//! bounded queue; one thread ("l4lb-access-log") writes the lines through `log` (target
//! `l4lb::access`). When the queue is full (stderr slower than the lines come, or blocked), a
//! line is dropped and counted (`l4lb_access_log_dropped_total`), so a slow or stuck stderr
//! never stalls a worker: a flood of refusals costs a formatted line each, never a write.
//!
//! Hot path on the worker side (once per connection or session end, or refusal, with the
//! listener's `access_log` on): no allocation (the slot is a fixed array moved into a
//! pre-allocated channel slot), no lock, no syscall. Invariants: at most [`QUEUE_LINES`]
//! lines wait; a line longer than [`LINE_MAX`] bytes is cut (and ends in `...`), never split.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::state::SharedState;

/// The `log` target of every access line.
pub const TARGET: &str = "l4lb::access";

/// Bytes of one line: the longest line names a 64-byte listener, a 47-byte client, a
/// 253-character host name with its port and six 20-digit numbers (~500 bytes).
pub const LINE_MAX: usize = 512;
/// Lines that may wait: about a second of a refusal flood at 1,000 lines/s, 512 KiB in all.
pub const QUEUE_LINES: usize = 1024;
/// How often the writer looks at the shutdown flag while the queue is empty. A stop wakes it
/// at once (`AccessQueue::wake`), so this only bounds a stop whose wake-up found the queue
/// full; idle, the writer wakes once per interval.
const WRITER_POLL: Duration = Duration::from_secs(1);

/// One formatted line, in place.
pub struct Line {
    len: usize,
    buf: [u8; LINE_MAX],
}

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Line {
    fn format(args: impl fmt::Display) -> Line {
        let mut line = Line {
            len: 0,
            buf: [0; LINE_MAX],
        };
        if fmt::write(&mut line, format_args!("{args}")).is_err() {
            // Cut: end on a marker so a reader sees the line is incomplete.
            line.buf[line.len..line.len + 3].copy_from_slice(b"...");
            line.len += 3;
        }
        line
    }

    pub fn as_str(&self) -> &str {
        // Only `str`s cut at character boundaries are written: always valid.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LINE_MAX - 3 - self.len;
        if s.len() > room {
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.buf[self.len..self.len + cut].copy_from_slice(&s.as_bytes()[..cut]);
            self.len += cut;
            return Err(fmt::Error);
        }
        self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
        self.len += s.len();
        Ok(())
    }
}

/// The bounded queue between the workers and the access-log writer.
#[derive(Debug)]
pub struct AccessQueue {
    tx: Sender<Line>,
    rx: Receiver<Line>,
    dropped: AtomicU64,
}

impl Default for AccessQueue {
    fn default() -> Self {
        AccessQueue::new(QUEUE_LINES)
    }
}

impl AccessQueue {
    pub fn new(lines: usize) -> AccessQueue {
        let (tx, rx) = crossbeam_channel::bounded(lines);
        AccessQueue {
            tx,
            rx,
            dropped: AtomicU64::new(0),
        }
    }

    /// Queue one line; drop and count it when the queue is full.
    pub fn push(&self, line: impl fmt::Display) {
        match self.tx.try_send(Line::format(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Tell the writer that no more lines will come (the workers have ended): it writes what
    /// is queued and returns. An empty line is the marker (a real line is never empty); when
    /// the queue is full, the writer finds the shutdown flag once it has drained it.
    pub fn wake(&self) {
        let _ = self.tx.try_send(Line::format(""));
    }

    /// Lines dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The next line, waiting up to `within` (for the writer and tests).
    pub fn pop(&self, within: Duration) -> Option<Line> {
        self.rx.recv_timeout(within).ok()
    }
}

/// Whether access lines are written at all (`RUST_LOG` may switch the target off): when not,
/// the workers format nothing.
#[inline]
pub fn enabled() -> bool {
    log::log_enabled!(target: TARGET, log::Level::Info)
}

/// Start the writer thread: it writes every queued line at info level with target
/// `l4lb::access` and ends once `shared` shuts down and the queue is empty.
pub fn spawn_writer(shared: Arc<SharedState>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("l4lb-access-log".to_string())
        .spawn(move || {
            let rx = shared.access_log.rx.clone();
            loop {
                match rx.recv_timeout(WRITER_POLL) {
                    // The marker of `wake`: queued after every worker's last line.
                    Ok(line) if line.as_str().is_empty() => return,
                    Ok(line) => log::info!(target: TARGET, "{}", line.as_str()),
                    Err(RecvTimeoutError::Timeout) if shared.is_shutting_down() => return,
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_and_counts() {
        let q = AccessQueue::new(2);
        for i in 0..5 {
            q.push(format_args!("line {i}"));
        }
        assert_eq!(q.dropped(), 3);
        assert_eq!(q.pop(Duration::ZERO).unwrap().as_str(), "line 0");
        assert_eq!(q.pop(Duration::ZERO).unwrap().as_str(), "line 1");
        assert!(q.pop(Duration::ZERO).is_none());
    }

    #[test]
    fn the_wake_marker_follows_every_queued_line_and_is_never_counted() {
        let q = AccessQueue::new(3);
        q.push("a");
        q.push("b");
        q.wake();
        q.wake(); // full: dropped silently, the writer finds the shutdown flag instead
        assert_eq!(q.pop(Duration::ZERO).unwrap().as_str(), "a");
        assert_eq!(q.pop(Duration::ZERO).unwrap().as_str(), "b");
        assert_eq!(q.pop(Duration::ZERO).unwrap().as_str(), "");
        assert!(q.pop(Duration::ZERO).is_none());
        assert_eq!(q.dropped(), 0);
    }

    #[test]
    fn long_lines_are_cut_with_a_marker() {
        let q = AccessQueue::new(1);
        let long = "é".repeat(LINE_MAX);
        q.push(&long);
        let line = q.pop(Duration::ZERO).unwrap();
        let s = line.as_str();
        assert!(s.len() <= LINE_MAX && s.len() > LINE_MAX - 8, "{}", s.len());
        assert!(s.starts_with("éé") && s.ends_with("..."));
    }
}
