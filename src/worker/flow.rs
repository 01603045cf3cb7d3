//! One direction of a proxied TCP connection: bytes read from `src`, written to `dst`.
//!
//! Hot path. Reads go into the worker's shared scratch buffer and straight out to the
//! destination; only when the destination does not take everything is a pooled buffer attached
//! to hold the rest (linkerd-tcp's discipline), and reading stops until it drains
//! (backpressure). In splice mode the bytes go through a pooled kernel pipe instead and never
//! enter user space. A pipe or buffer is handed back the moment it is empty, so an idle
//! connection holds neither.
//!
//! Before forwarding starts, the client-to-backend direction may hold bytes put there by the
//! worker: what a client sent after its PROXY header (`unfilled`/`filled`/`skip_header`) and
//! the PROXY header for the backend (`prepend`), which `pump` writes before reading anything.
//!
//! Invariants: at most one of `buf`/`pipe` holds bytes; once forwarding, a direction never
//! reads while it holds pending bytes; `write_shut` is set exactly once, after `read_eof` and
//! only once every byte has been written.

use std::io::{Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;
use nix::libc;
use socket2::SockRef;

use crate::config::SpliceMode;
use crate::net::io::{classify, IoClass, IoErrors};
use crate::net::pipe::{BufferPool, Pipe, PipePool, PIPE_CAPACITY};

/// Reads per direction per wake-up before yielding to other connections (bounds the
/// syscalls a trickle of small reads can take in one turn).
const READ_BUDGET: usize = 16;
/// Bytes per direction per wake-up before yielding: two full pipes when splicing, four copy
/// buffers when copying. This, not the read count, is what bounds the time a bulk flow holds
/// its worker: with two directions of a few bulk connections a loop turn stays around a
/// tenth of a millisecond, so a new connection never waits behind megabytes. HAProxy stops
/// after about one pipe per wake-up (a splice returning over `tune.recv_enough`, 10,136
/// bytes); two pipes halve the extra `epoll_wait` calls per byte for the same bound.
pub const BYTE_BUDGET: u64 = 256 * 1024;
/// In `auto` mode a splice read this small means the stream has turned interactive: go back
/// to copying, which costs the same syscalls without the pipe.
const SPLICE_EXIT_BYTES: usize = 4096;
/// TCP_NOTSENT_LOWAT of a bulk direction's destination socket: at most this many bytes wait
/// unsent in it. Without a limit, megabytes queue there and are sent as ACKs free the window,
/// by the ACK's softirq on the receiver's CPU as well as by this worker, and over loopback
/// the two CPUs' halves of one stream arrive out of order (spurious retransmissions and
/// tail-loss probes; under iperf3 -P4 with bbr both CPUs sat idle a quarter of the time). With the backlog
/// capped this worker sends almost every segment itself. docs/benchmarks.md has the A/B.
const BULK_NOTSENT_LOWAT: u32 = 32 * 1024;

/// What the event loop last learned about a socket (edge-triggered readiness, cleared on
/// `WouldBlock`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer's FIN (or an error) was reported: a read will return 0 or fail, and no further
    /// edge will announce it, so a short read must not clear `readable`.
    pub read_closed: bool,
    /// The peer's FIN was reported without an error: after a short read the stream's end is
    /// (barring urgent data) next, so what was read goes out corked to share a segment with
    /// the FIN that follows it.
    pub fin: bool,
}

/// Per-worker resources a direction borrows while it pumps.
#[derive(Debug)]
pub struct IoResources {
    pub scratch: Box<[u8]>,
    pub pipes: PipePool,
    pub bufs: BufferPool,
    pub splice: SpliceMode,
    /// Errors that closed connections: counted, and the unusual ones logged (rate-limited).
    pub errors: IoErrors,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pump {
    /// Nothing more to do until the next readiness event.
    Idle,
    /// The budget ran out while the source was still readable: call again once everything
    /// else that is ready has been served.
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
    /// A read filled a whole pipe or copy buffer: bulk traffic, whose destination socket got
    /// [`BULK_NOTSENT_LOWAT`] (once; request/response flows never pay the setsockopt).
    bulk: bool,
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

    /// Whether bytes read from the source still wait here to be written to the destination.
    #[inline]
    pub fn holds_bytes(&self) -> bool {
        self.pending() > 0
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

    /// Before forwarding starts (a PROXY header or a TLS ClientHello being read from the
    /// client): the free space
    /// at the end of this direction's buffer, borrowed from the pool on first use with
    /// `headroom` bytes left free in front, so that a later [`Flow::prepend`] of at most that
    /// many bytes moves nothing. Record what was read into it with [`Flow::filled`].
    pub fn unfilled(&mut self, headroom: usize, io: &mut IoResources) -> &mut [u8] {
        // Nothing forwarded yet: at most what is held was counted (after a PROXY header).
        debug_assert!(
            self.pipe.is_none()
                && self.bytes <= self.held().len() as u64
                && headroom <= io.bufs.size()
        );
        if self.buf.is_none() {
            self.buf_start = headroom;
            self.buf_end = headroom;
        }
        let end = self.buf_end;
        &mut self.buf.get_or_insert_with(|| io.bufs.get())[end..]
    }

    /// `n` bytes were read into [`Flow::unfilled`].
    pub fn filled(&mut self, n: usize) {
        debug_assert!(self
            .buf
            .as_ref()
            .is_some_and(|b| self.buf_end + n <= b.len()));
        self.buf_end += n;
    }

    /// The bytes held in the buffer, not yet written.
    pub fn held(&self) -> &[u8] {
        match &self.buf {
            Some(buf) => &buf[self.buf_start..self.buf_end],
            None => &[],
        }
    }

    /// The first `n` held bytes were a PROXY header, which is not forwarded: drop them. The
    /// rest is the client's first data, counted as read and written first by `pump`.
    pub fn skip_header(&mut self, n: usize) {
        debug_assert!(n <= self.buf_end - self.buf_start);
        self.buf_start += n.min(self.buf_end - self.buf_start);
        self.bytes += (self.buf_end - self.buf_start) as u64;
    }

    /// Count every byte held as read from the peer (once a ClientHello read with
    /// [`Flow::unfilled`] is whole; the PROXY header path counts with `skip_header`).
    pub fn count_held(&mut self) {
        self.bytes = self.held().len() as u64;
    }

    /// Queue `bytes` (a PROXY header for the backend) to be written before anything held.
    /// Only before forwarding starts, when nothing can be in a pipe. Uses the headroom left by
    /// [`Flow::unfilled`] or a buffer from the pool; `Err` only if the held bytes leave no room
    /// (never on l4lb's own paths: the headroom is the largest header it writes).
    pub fn prepend(&mut self, bytes: &[u8], io: &mut IoResources) -> Result<(), Broken> {
        debug_assert!(self.pipe.is_none());
        let n = bytes.len();
        let buf = match &mut self.buf {
            Some(buf) => buf,
            None => {
                self.buf_start = 0;
                self.buf_end = 0;
                self.buf.insert(io.bufs.get())
            }
        };
        if self.buf_start < n {
            let held = self.buf_end - self.buf_start;
            debug_assert!(
                held + n <= buf.len(),
                "no room to prepend {n} bytes to {held}"
            );
            if held + n > buf.len() {
                return Err(Broken);
            }
            buf.copy_within(self.buf_start..self.buf_end, n);
            self.buf_start = n;
            self.buf_end = n + held;
        }
        self.buf_start -= n;
        buf[self.buf_start..self.buf_start + n].copy_from_slice(bytes);
        Ok(())
    }

    /// Move bytes from `src` to `dst` until one of them would block, the budget (reads or
    /// bytes, whichever runs out first) runs out, or EOF has been passed on. `other_done`: the opposite direction has finished, so passing
    /// EOF on ends the connection.
    pub fn pump(
        &mut self,
        src: &TcpStream,
        src_ready: &mut Readiness,
        dst: &TcpStream,
        dst_ready: &mut Readiness,
        io: &mut IoResources,
        other_done: bool,
    ) -> Result<Pump, Broken> {
        let mut reads = 0;
        let start = self.bytes;
        loop {
            if self.pending() > 0 {
                if !dst_ready.writable {
                    return Ok(Pump::Idle);
                }
                if !self.write_pending(dst, dst_ready, io)? {
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
                    // When the other direction is already finished the connection closes
                    // right after this, and close(2) sends the FIN: skip the shutdown(2).
                    if !other_done {
                        // The peer may already be gone; the other direction will notice.
                        let _ = dst.shutdown(Shutdown::Write);
                    }
                }
                return Ok(Pump::Idle);
            }
            if !src_ready.readable {
                return Ok(Pump::Idle);
            }
            if reads == READ_BUDGET || self.bytes - start >= BYTE_BUDGET {
                return Ok(Pump::Yielded);
            }
            reads += 1;
            if self.splicing {
                self.splice_in(src, src_ready, dst, io)?;
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
        io: &mut IoResources,
    ) -> Result<bool, Broken> {
        loop {
            let result = match (&mut self.pipe, &self.buf) {
                (Some(pipe), _) => {
                    let r = pipe.drain_to(dst);
                    if matches!(r, Ok(n) if n > 0) && pipe.pending() > 0 {
                        // A short splice: the socket took what its buffer (or its unsent
                        // cap) allows, and its next sendmsg returned EAGAIN inside the same
                        // splice; wait for EPOLLOUT instead of a call that would fail too.
                        dst_ready.writable = false;
                        return Ok(false);
                    }
                    r
                }
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
                    IoClass::PeerGone | IoClass::Fatal => {
                        io.errors.closed_by(&e);
                        return Err(Broken);
                    }
                },
            }
        }
    }

    /// The direction moves bulk data (a read filled its pipe or buffer): cap what waits
    /// unsent in `dst` (see [`BULK_NOTSENT_LOWAT`]). Best effort: without it the stream still
    /// flows.
    fn mark_bulk(&mut self, dst: &TcpStream) {
        if !self.bulk {
            self.bulk = true;
            let _ = SockRef::from(dst).set_tcp_notsent_lowat(BULK_NOTSENT_LOWAT);
        }
    }

    fn splice_in(
        &mut self,
        src: &TcpStream,
        src_ready: &mut Readiness,
        dst: &TcpStream,
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
                    if n >= PIPE_CAPACITY {
                        self.mark_bulk(dst);
                    }
                    return Ok(());
                }
                Err(e) => match classify(&e) {
                    IoClass::WouldBlock => {
                        src_ready.readable = false;
                        return Ok(());
                    }
                    IoClass::Retry => continue,
                    IoClass::PeerGone | IoClass::Fatal => {
                        io.errors.closed_by(&e);
                        return Err(Broken);
                    }
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
                    IoClass::PeerGone | IoClass::Fatal => {
                        io.errors.closed_by(&e);
                        return Err(Broken);
                    }
                },
            }
        };
        self.bytes += n as u64;
        if n == io.scratch.len() {
            // A full buffer: this is bulk traffic, which splice moves with fewer copies.
            if io.splice == SpliceMode::Auto {
                self.splicing = true;
            }
            self.mark_bulk(dst);
        }
        // The last bytes before the peer's FIN: send them with MSG_MORE, so that the FIN which
        // the next read (EOF) makes us send -- shutdown(2), or close(2) when the other
        // direction is done -- joins their segment (HAProxy does the same). One segment less
        // per closing direction, and one wake-up less for the receiver. If the next read
        // returns data instead (urgent data can cut a read short), that write pushes both.
        let corked = n < io.scratch.len() && src_ready.fin;
        let mut written = 0;
        while written < n && dst_ready.writable {
            let chunk = &io.scratch[written..n];
            let sent = if corked {
                SockRef::from(dst).send_with_flags(chunk, libc::MSG_MORE | libc::MSG_NOSIGNAL)
            } else {
                (&*dst).write(chunk)
            };
            match sent {
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
                    IoClass::PeerGone | IoClass::Fatal => {
                        io.errors.closed_by(&e);
                        return Err(Broken);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn io(buf_size: usize) -> IoResources {
        IoResources {
            scratch: vec![0u8; buf_size].into_boxed_slice(),
            pipes: PipePool::new(1),
            bufs: BufferPool::new(buf_size, 1),
            errors: IoErrors::new(Default::default()),
            splice: SpliceMode::Never,
        }
    }

    #[test]
    fn header_read_then_prepend_uses_the_headroom() {
        let mut io = io(64);
        let mut f = Flow::new(SpliceMode::Never);
        let room = f.unfilled(8, &mut io);
        assert_eq!(room.len(), 56);
        room[..10].copy_from_slice(b"PROXY|data");
        f.filled(10);
        assert_eq!(f.held(), b"PROXY|data");
        f.skip_header(6);
        assert_eq!(f.held(), b"data");
        assert_eq!(
            f.bytes, 4,
            "bytes after the header count as read from the client"
        );
        f.prepend(b"HDR:", &mut io).unwrap();
        assert_eq!(f.held(), b"HDR:data");
        assert_eq!(f.buf_start, 8 + 6 - 4, "no byte moved");
        assert_eq!(f.pending(), 8);
        f.release(&mut io);
        assert!(f.held().is_empty());
    }

    #[test]
    fn prepend_without_headroom_shifts_or_borrows() {
        let mut io = io(16);
        let mut f = Flow::new(SpliceMode::Always);
        f.prepend(b"HDR", &mut io).unwrap();
        assert_eq!(f.held(), b"HDR");
        let mut g = Flow::new(SpliceMode::Never);
        g.unfilled(0, &mut io)[..5].copy_from_slice(b"hello");
        g.filled(5);
        g.skip_header(0);
        g.prepend(b"HDR", &mut io).unwrap();
        assert_eq!(g.held(), b"HDRhello");
        assert_eq!(g.bytes, 5);
    }
}
