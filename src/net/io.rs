//! What the event loop does about an I/O error: every `io::Error` on a connection maps to one
//! of these outcomes, so no error can escape the loop and take a worker down.

use std::io;

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
