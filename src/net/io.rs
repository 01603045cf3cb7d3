//! What the event loop does about an I/O error: every `io::Error` on a connection maps to one
//! of these outcomes, so no error can escape the loop and take a worker down.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::metrics::IoErrorCounters;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoClass {
    /// Not ready: wait for the next readiness event.
    WouldBlock,
    /// Interrupted by a signal: retry at once.
    Retry,
    /// The peer reset or went away: close this connection quietly.
    PeerGone,
    /// Anything else: close this connection (the caller counts it).
    Fatal,
}

pub fn classify(e: &io::Error) -> IoClass {
    match e.kind() {
        io::ErrorKind::WouldBlock => IoClass::WouldBlock,
        io::ErrorKind::Interrupted => IoClass::Retry,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::NotConnected
        | io::ErrorKind::TimedOut
        | io::ErrorKind::UnexpectedEof => IoClass::PeerGone,
        _ => IoClass::Fatal,
    }
}

/// Errors from accept(2) that mean "out of a resource, try later" rather than "this one client
/// failed": the loop must back off instead of retrying at once (which would spin).
pub fn is_accept_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE)
            | Some(nix::libc::ENFILE)
            | Some(nix::libc::ENOBUFS)
            | Some(nix::libc::ENOMEM)
    )
}

/// Errors from accept(2) that concern only the connection being accepted (it died in the
/// queue): skip it and keep accepting.
pub fn is_accept_transient_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::ECONNABORTED)
            | Some(nix::libc::EPROTO)
            | Some(nix::libc::EPERM)
            | Some(nix::libc::EINTR)
    )
}

/// How often a worker logs the errors of the `Fatal` class it counted (a storm of them must not
/// become a storm of log lines).
pub const IO_ERROR_LOG_MS: u64 = 10_000;

/// A worker's record of the I/O errors that closed connections (STYLE §5: resets are counted,
/// everything else is counted and logged, rate-limited; nothing is silent). Hot path only on
/// an error, never per read.
#[derive(Debug)]
pub struct IoErrors {
    counts: Arc<IoErrorCounters>,
    /// `Fatal` errors since the last log line, and the last of them.
    unlogged: u64,
    last: Option<(io::ErrorKind, Option<i32>)>,
    next_log_ms: u64,
}

impl IoErrors {
    pub fn new(counts: Arc<IoErrorCounters>) -> IoErrors {
        IoErrors {
            counts,
            unlogged: 0,
            last: None,
            next_log_ms: 0,
        }
    }

    /// An error of class `PeerGone` or `Fatal` is about to close its connection: count it.
    #[inline]
    pub fn closed_by(&mut self, e: &io::Error) {
        if classify(e) == IoClass::PeerGone {
            self.counts.resets.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counts.other.fetch_add(1, Ordering::Relaxed);
            self.unlogged += 1;
            self.last = Some((e.kind(), e.raw_os_error()));
        }
    }

    /// The log line owed for `Fatal` errors, at most once per [`IO_ERROR_LOG_MS`].
    pub fn report(&mut self, now_ms: u64) -> Option<String> {
        if self.unlogged == 0 || now_ms < self.next_log_ms {
            return None;
        }
        self.next_log_ms = now_ms + IO_ERROR_LOG_MS;
        let n = std::mem::take(&mut self.unlogged);
        let (kind, os) = self.last.take()?;
        Some(match os {
            Some(code) => format!(
                "{n} connection(s) closed by an I/O error other than a reset; last: {}",
                io::Error::from_raw_os_error(code)
            ),
            None => {
                format!("{n} connection(s) closed by an I/O error other than a reset; last: {kind}")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_are_counted_others_counted_and_reported_once_per_period() {
        let counts = Arc::new(IoErrorCounters::default());
        let mut errors = IoErrors::new(counts.clone());
        errors.closed_by(&io::Error::from_raw_os_error(nix::libc::ECONNRESET));
        errors.closed_by(&io::Error::from_raw_os_error(nix::libc::EPIPE));
        assert_eq!(counts.resets.load(Ordering::Relaxed), 2);
        assert_eq!(errors.report(0), None, "resets are not logged");
        errors.closed_by(&io::Error::from_raw_os_error(nix::libc::EIO));
        errors.closed_by(&io::Error::from_raw_os_error(nix::libc::ENOMEM));
        assert_eq!(counts.other.load(Ordering::Relaxed), 2);
        let line = errors.report(5).expect("a line for the other errors");
        assert!(line.starts_with("2 connection(s)"), "{line}");
        assert!(line.contains("os error 12"), "{line}");
        errors.closed_by(&io::Error::from_raw_os_error(nix::libc::EIO));
        assert_eq!(errors.report(6), None, "rate-limited");
        assert!(errors.report(5 + IO_ERROR_LOG_MS).is_some());
    }
}
