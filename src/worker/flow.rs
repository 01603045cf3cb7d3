//! One direction of a proxied TCP connection: bytes read from `src`, written to `dst`.
//!
//! Hot path. Reads go into the worker's shared scratch buffer and straight out to the
//! destination; only when the destination does not take everything is a pooled buffer attached
//! to hold the rest (linkerd-tcp's discipline), and reading stops until it drains
//! (backpressure). In splice mode the bytes go through a pooled kernel pipe instead and never
//! enter user space. A pipe or buffer is handed back the moment it is empty, so an idle
//! connection holds neither.
//!
//! Invariants: at most one of `buf`/`pipe` holds bytes; a direction never reads while it holds
//! pending bytes; `write_shut` is set exactly once, after `read_eof` and only once every byte
//! has been written.

use std::io::{Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

use crate::config::SpliceMode;
use crate::net::io::{classify, IoClass};
use crate::net::pipe::{BufferPool, Pipe, PipePool};

/// Reads per direction per wake-up before yielding to other connections, so one bulk
/// transfer cannot starve the rest of the worker.
const READ_BUDGET: usize = 16;
/// In `auto` mode a splice read this small means the stream has turned interactive: go back
/// to copying, which costs the same syscalls without the pipe.
const SPLICE_EXIT_BYTES: usize = 4096;

/// What the event loop last learned about a socket (edge-triggered readiness, cleared on
/// `WouldBlock`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer's FIN (or an error) was reported: a read will return 0 or fail, and no further
    /// edge will announce it, so a short read must not clear `readable`.
    pub read_closed: bool,
}

/// Per-worker resources a direction borrows while it pumps.
#[derive(Debug)]
pub struct IoResources {
    pub scratch: Box<[u8]>,
    pub pipes: PipePool,
    pub bufs: BufferPool,
    pub splice: SpliceMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pump {
    /// Nothing more to do until the next readiness event.
    Idle,
    /// The read budget ran out while the source was still readable: call again soon.
    Yielded,
}

/// The direction failed: a reset or an I/O error on either socket. The connection must be
/// closed with a reset on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broken;

#[derive(Debug, Default)]
pub struct Flow {
    buf: Option<Box<[u8]>>,
    buf_start: usize,
    buf_end: usize,
    pipe: Option<Pipe>,
    splicing: bool,
    pub read_eof: bool,
    pub write_shut: bool,
    /// Bytes read from the source (all of which are written unless the connection breaks).
    pub bytes: u64,
}

impl Flow {
    pub fn new(splice: SpliceMode) -> Flow {
        Flow {
            splicing: splice == SpliceMode::Always,
            ..Flow::default()
        }
    }

    #[inline]
    fn pending(&self) -> usize {
        match &self.pipe {
            Some(p) => p.pending(),
            None => self.buf_end - self.buf_start,
        }
    }

    /// Whether this direction is finished: EOF read and passed on.
    #[inline]
    pub fn done(&self) -> bool {
        self.write_shut
    }

    /// Give pooled resources back (on close, or when empty).
    pub fn release(&mut self, io: &mut IoResources) {
        if let Some(p) = self.pipe.take() {
            io.pipes.put(p);
        }
        if let Some(b) = self.buf.take() {
            io.bufs.put(b);
        }
        self.buf_start = 0;
        self.buf_end = 0;
    }

    /// Move bytes from `src` to `dst` until one of them would block, the budget runs out, or
    /// EOF has been passed on.
    pub fn pump(
        &mut self,
        src: &TcpStream,
        src_ready: &mut Readiness,
        dst: &TcpStream,
        dst_ready: &mut Readiness,
        io: &mut IoResources,
    ) -> Result<Pump, Broken> {
        let mut reads = 0;
        loop {
            if self.pending() > 0 {
                if !dst_ready.writable {
                    return Ok(Pump::Idle);
                }
                if !self.write_pending(dst, dst_ready)? {
                    return Ok(Pump::Idle);
                }
                continue;
            }
            if self.pipe.is_some() || self.buf.is_some() {
                self.release(io);
            }
            if self.read_eof {
                if !self.write_shut {
                    self.write_shut = true;
                    // The peer may already be gone; the other direction will notice.
                    let _ = dst.shutdown(Shutdown::Write);
                }
                return Ok(Pump::Idle);
            }
            if !src_ready.readable {
                return Ok(Pump::Idle);
            }
            if reads == READ_BUDGET {
                return Ok(Pump::Yielded);
            }
            reads += 1;
            if self.splicing {
                self.splice_in(src, src_ready, io)?;
            } else {
                self.copy(src, src_ready, dst, dst_ready, io)?;
            }
        }
    }

    /// Write what is pending. `Ok(false)` when `dst` would block.
    fn write_pending(
        &mut self,
        dst: &TcpStream,
        dst_ready: &mut Readiness,
    ) -> Result<bool, Broken> {
        loop {
            let result = match (&mut self.pipe, &self.buf) {
                (Some(pipe), _) => pipe.drain_to(dst),
                (None, Some(buf)) => {
                    let r = (&*dst).write(&buf[self.buf_start..self.buf_end]);
                    if let Ok(n) = r {
                        self.buf_start += n;
                        if self.buf_start < self.buf_end {
                            dst_ready.writable = false;
                            return Ok(false);
                        }
                    }
                    r
                }
                (None, None) => return Ok(true),
            };
            match result {
                Ok(0) => return Err(Broken),
                Ok(_) => return Ok(true),
                Err(e) => match classify(&e) {
                    IoClass::WouldBlock => {
                        dst_ready.writable = false;
                        return Ok(false);
                    }
                    IoClass::Retry => continue,
                    IoClass::PeerGone | IoClass::Fatal => return Err(Broken),
                },
            }
        }
    }

    fn splice_in(
        &mut self,
        src: &TcpStream,
        src_ready: &mut Readiness,
        io: &mut IoResources,
    ) -> Result<(), Broken> {
        let pipe = match &mut self.pipe {
            Some(p) => p,
            None => match io.pipes.get() {
                Ok(p) => self.pipe.insert(p),
                Err(_) => {
                    // Out of descriptors for a pipe: copying still works.
                    self.splicing = false;
                    return Ok(());
                }
            },
        };
        loop {
            match pipe.fill_from(src) {
                Ok(0) => {
                    self.read_eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.bytes += n as u64;
                    if io.splice == SpliceMode::Auto && n < SPLICE_EXIT_BYTES {
                        self.splicing = false;
                    }
                    return Ok(());
                }
                Err(e) => match classify(&e) {
                    IoClass::WouldBlock => {
                        src_ready.readable = false;
                        return Ok(());
                    }
                    IoClass::Retry => continue,
                    IoClass::PeerGone | IoClass::Fatal => return Err(Broken),
                },
            }
        }
    }

    fn copy(
        &mut self,
        src: &TcpStream,
        src_ready: &mut Readiness,
        dst: &TcpStream,
        dst_ready: &mut Readiness,
        io: &mut IoResources,
    ) -> Result<(), Broken> {
        let n = loop {
            match (&*src).read(&mut io.scratch) {
                Ok(0) => {
                    self.read_eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    if n < io.scratch.len() && !src_ready.read_closed {
                        // A short read emptied the receive queue; epoll (edge-triggered)
                        // reports the next arrival, so the read that would return EAGAIN
                        // can be skipped. Not after a FIN was announced: its edge is spent.
                        src_ready.readable = false;
                    }
                    break n;
                }
                Err(e) => match classify(&e) {
                    IoClass::WouldBlock => {
                        src_ready.readable = false;
                        return Ok(());
                    }
                    IoClass::Retry => continue,
                    IoClass::PeerGone | IoClass::Fatal => return Err(Broken),
                },
            }
        };
        self.bytes += n as u64;
        if io.splice == SpliceMode::Auto && n == io.scratch.len() {
            // A full buffer: this is bulk traffic, which splice moves with fewer copies.
            self.splicing = true;
        }
        let mut written = 0;
        while written < n && dst_ready.writable {
            match (&*dst).write(&io.scratch[written..n]) {
                Ok(0) => return Err(Broken),
                Ok(w) => {
                    written += w;
                    if written < n {
                        // A short write filled the send buffer: wait for EPOLLOUT.
                        dst_ready.writable = false;
                    }
                }
                Err(e) => match classify(&e) {
                    IoClass::WouldBlock => dst_ready.writable = false,
                    IoClass::Retry => {}
                    IoClass::PeerGone | IoClass::Fatal => return Err(Broken),
                },
            }
        }
        if written < n {
            let mut buf = self.buf.take().unwrap_or_else(|| io.bufs.get());
            let rest = n - written;
            buf[..rest].copy_from_slice(&io.scratch[written..n]);
            self.buf = Some(buf);
            self.buf_start = 0;
            self.buf_end = rest;
        }
        Ok(())
    }
}
