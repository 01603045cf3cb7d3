//! One proxied TCP connection: the client socket, the backend socket once chosen, and the two
//! directions between them.
//!
//! Hot path. Lifecycle: `Connecting` (client accepted, non-blocking connect to a backend in
//! flight; the client is not read, so it is held back by TCP flow control) -> `Forwarding`
//! (both directions pumped) -> closed when both directions have passed their EOF on, or at
//! once with a reset on both sides when either side breaks. Invariant: while `connecting`,
//! `backend` is the socket of the attempt in flight and `backend_ref` the backend it counts
//! against.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::TcpStream;

use crate::backend::Backend;
use crate::config::{ListenerConfig, SpliceMode};
use crate::limits::{ClientSlot, ClientTable};

use super::flow::{Broken, Flow, IoResources, Pump, Readiness};

/// Upper bound on connect attempts (the config allows `connect_retries` up to 16).
pub const MAX_ATTEMPTS: usize = 17;

#[derive(Debug)]
pub struct Conn {
    pub listener: usize,
    pub generation: u32,
    pub client: TcpStream,
    pub client_addr: SocketAddr,
    pub client_ready: Readiness,
    pub backend: Option<TcpStream>,
    pub backend_ready: Readiness,
    /// The backend this connection counts against (its `active` was incremented).
    pub backend_ref: Option<Arc<Backend>>,
    /// Index of `backend_ref` in the pool it was picked from.
    pub backend_index: usize,
    pub connecting: bool,
    pub connect_deadline: u64,
    /// Indices (in the pool) of backends that failed for this connection.
    pub tried: [usize; MAX_ATTEMPTS],
    pub tried_len: usize,
    pub c2b: Flow,
    pub b2c: Flow,
    /// Coarse ms clock of the last byte moved (idle timeout).
    pub last_active: u64,
    /// Coarse ms clock of the accept (client_first_byte_timeout_ms).
    pub accepted_at: u64,
    /// The per-client table this connection counts in (shared with the listener; kept here
    /// so a reload that drops or replaces the table still releases the right one).
    pub client_slot: Option<(Arc<ClientTable>, ClientSlot)>,
}

/// What the worker must do with a connection after driving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    /// Wait for events.
    Wait,
    /// Budget exhausted with data still readable: drive again on the next loop turn.
    Again,
    /// Both directions finished: close normally.
    Finished,
    /// A side broke: close both with a reset.
    Reset,
}

/// Result of checking a connect in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectState {
    InProgress,
    Connected,
    Failed,
}

impl Conn {
    pub fn new(
        listener: usize,
        generation: u32,
        client: TcpStream,
        client_addr: SocketAddr,
        splice: SpliceMode,
        now_ms: u64,
    ) -> Conn {
        Conn {
            listener,
            generation,
            client,
            client_addr,
            client_ready: Readiness::default(),
            backend: None,
            backend_ready: Readiness::default(),
            backend_ref: None,
            backend_index: 0,
            connecting: true,
            connect_deadline: 0,
            tried: [0; MAX_ATTEMPTS],
            tried_len: 0,
            c2b: Flow::new(splice),
            b2c: Flow::new(splice),
            last_active: now_ms,
            accepted_at: now_ms,
            client_slot: None,
        }
    }

    pub fn tried(&self) -> &[usize] {
        &self.tried[..self.tried_len]
    }

    pub fn record_failed(&mut self, index: usize) {
        if self.tried_len < MAX_ATTEMPTS {
            self.tried[self.tried_len] = index;
            self.tried_len += 1;
        }
    }

    /// The next moment something must happen to this connection if nothing else does: the
    /// connect timeout, the first-byte timeout of a client that has sent nothing, or the idle
    /// timeout.
    pub fn deadline(&self, config: &ListenerConfig) -> u64 {
        let first_byte = match config.client_first_byte_timeout {
            // Bytes waiting in the kernel while the backend connect is in flight count as sent.
            Some(t) if self.c2b.bytes == 0 && !self.client_ready.readable => {
                self.accepted_at + t.as_millis() as u64
            }
            _ => u64::MAX,
        };
        if self.connecting {
            return self.connect_deadline.min(first_byte);
        }
        let idle = self.last_active + config.idle_timeout.as_millis() as u64;
        idle.min(first_byte)
    }

    /// After a writable or error event on a connecting backend socket.
    pub fn check_connect(&self) -> ConnectState {
        let Some(backend) = &self.backend else {
            return ConnectState::Failed;
        };
        match backend.take_error() {
            Ok(Some(_)) | Err(_) => return ConnectState::Failed,
            Ok(None) => {}
        }
        match backend.peer_addr() {
            Ok(_) => ConnectState::Connected,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => ConnectState::InProgress,
            Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => ConnectState::InProgress,
            Err(_) => ConnectState::Failed,
        }
    }

    /// Pump both directions.
    pub fn drive(&mut self, io: &mut IoResources, now_ms: u64) -> Drive {
        let Some(backend) = &self.backend else {
            return Drive::Reset;
        };
        let before = self.c2b.bytes + self.b2c.bytes;
        let up = self.c2b.pump(
            &self.client,
            &mut self.client_ready,
            backend,
            &mut self.backend_ready,
            io,
        );
        let down = self.b2c.pump(
            backend,
            &mut self.backend_ready,
            &self.client,
            &mut self.client_ready,
            io,
        );
        if self.c2b.bytes + self.b2c.bytes != before {
            self.last_active = now_ms;
        }
        match (up, down) {
            (Err(Broken), _) | (_, Err(Broken)) => Drive::Reset,
            _ if self.c2b.done() && self.b2c.done() => Drive::Finished,
            (Ok(Pump::Yielded), _) | (_, Ok(Pump::Yielded)) => Drive::Again,
            _ => Drive::Wait,
        }
    }
}
