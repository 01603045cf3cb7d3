//! The io_uring a worker thread waits in (`worker::waiter`): the epoll of its TCP sockets is
//! waited for through it (IORING_OP_EPOLL_WAIT), and the UDP plane receives on it with
//! multishot requests into a ring of provided buffers. One io_uring_enter per loop turn then
//! submits every request queued in the turn, runs the kernel's deferred work and waits, where
//! the epoll design pays a recvmmsg per readable UDP socket besides its epoll_wait
//! (docs/benchmarks.md, "An io_uring probe" and "UDP on io_uring").
//!
//! Hot path: [`Ring::wait`] once per loop turn, [`Ring::bytes`] per datagram; no allocation
//! (the completion list keeps its capacity). Invariants:
//! - the ring is created, used and dropped on one thread (IORING_SETUP_SINGLE_ISSUER, and
//!   DEFER_TASKRUN runs completions only inside this thread's io_uring_enter);
//! - the kernel writes into the provided buffers and the epoll event array only while this
//!   thread is inside io_uring_enter: a buffer handed out by a completion stays ours until
//!   [`Ring::give_back`], and the event array is read only after its wait completed;
//! - at most one EPOLL_WAIT is in flight;
//! - `ring` is the first field, so the ring (and every request in flight) is gone before the
//!   memory those requests point into is unmapped.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use nix::libc;
use socket2::SockAddr;

use crate::net::udp::{write_pktinfo, Ctrl, CTRL_SIZE};

/// The provided-buffer group every multishot receive takes its buffers from.
const BUF_GROUP: u16 = 0;
/// Provided buffers (a power of two, as the buffer ring requires). Datagrams in flight at
/// once: a receive that finds none ends with ENOBUFS, its datagrams wait in the socket, and
/// it is armed again once buffers came back.
pub const BUFFERS: u16 = 256;
/// Bytes per buffer: every UDP payload (65,507 bytes on IPv4, 65,527 on IPv6) plus the
/// recvmsg header, name and control data fits, so a datagram is never cut. The mapping is
/// lazily backed: a buffer costs memory only as far as datagrams were long.
pub const BUF_SIZE: usize = 1 << 17;
/// Submission queue entries; a full queue is submitted early.
const SQ_ENTRIES: u32 = 1024;
/// Completion queue entries: a turn's datagrams (at most `BUFFERS` hold buffers) plus sends
/// and cancels, with room; the kernel keeps overflowing completions (IORING_FEAT_NODROP).
const CQ_ENTRIES: u32 = 4096;
/// Events one EPOLL_WAIT returns at most.
pub const EPOLL_EVENTS: usize = 1024;
/// The user data of the EPOLL_WAIT request; never a worker's (those carry kind bits below
/// the member index, and a kind of 0 is not used).
const EPOLL_USER_DATA: u64 = 0;
/// Control bytes of a recvmsg: room for IP_PKTINFO or IPV6_PKTINFO (32 or 40 bytes).
const CONTROL_LEN: u32 = 64;

/// One completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// The provided buffer this completion filled, which must be given back.
    #[inline]
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// Whether the multishot request that posted this stays armed.
    #[inline]
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

/// A request the worker asks for during its turn, submitted with the thread's next wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingOp {
    /// Multishot recvmsg on a listening socket: each datagram with its source (and PKTINFO).
    RecvMsg { fd: RawFd, user_data: u64 },
    /// Multishot recv on a connected socket.
    Recv { fd: RawFd, user_data: u64 },
    /// Cancel every request with this user data.
    Cancel { user_data: u64 },
    /// Send `len` bytes at `offset` in provided buffer `bid` on a connected socket. The
    /// buffer is held until the send completes, then given back by the ring itself; the
    /// completion carries [`SEND_BIT`] and `bid` in the low 16 bits of its user data.
    Send {
        fd: RawFd,
        bid: u16,
        offset: u32,
        len: u32,
        user_data: u64,
    },
    /// Send the first `len` bytes of provided buffer `bid` to `to` on an unconnected socket,
    /// from local address `from` when given (IP_PKTINFO/IPV6_PKTINFO: a wildcard listener's
    /// reply leaves from the address its client sent to); otherwise as [`RingOp::Send`].
    SendTo {
        fd: RawFd,
        bid: u16,
        len: u32,
        to: SocketAddr,
        from: Option<IpAddr>,
        user_data: u64,
    },
}

/// The message of a [`RingOp::SendTo`] with a source address: its header, its one iovec and
/// its PKTINFO.
struct SendMsg {
    hdr: libc::msghdr,
    iov: libc::iovec,
    ctrl: Ctrl,
}

/// The provided buffers: their ring of descriptors (shared with the kernel) and their memory.
struct Buffers {
    entries: *mut types::BufRingEntry,
    entries_len: usize,
    data: *mut u8,
    tail: u16,
    /// Buffers given back since the last publish.
    unpublished: bool,
}

fn map(len: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh anonymous private mapping; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

impl Buffers {
    fn new() -> io::Result<Buffers> {
        let entries_len = usize::from(BUFFERS) * std::mem::size_of::<types::BufRingEntry>();
        let entries = map(entries_len)?;
        let data = match map(usize::from(BUFFERS) * BUF_SIZE) {
            Ok(d) => d,
            Err(e) => {
                // SAFETY: mapped just above with this length, not shared with anyone yet.
                unsafe { libc::munmap(entries.cast(), entries_len) };
                return Err(e);
            }
        };
        let mut b = Buffers {
            entries: entries.cast(),
            entries_len,
            data,
            tail: 0,
            unpublished: false,
        };
        for bid in 0..BUFFERS {
            b.give_back(bid);
        }
        b.publish();
        Ok(b)
    }

    fn give_back(&mut self, bid: u16) {
        let bid = bid & (BUFFERS - 1);
        let slot = usize::from(self.tail & (BUFFERS - 1));
        // SAFETY: slot < BUFFERS, inside the entries mapping. The kernel reads only entries
        // before the published tail, and this one is past it until `publish`.
        let entry = unsafe { &mut *self.entries.add(slot) };
        entry.set_addr(self.data.wrapping_add(usize::from(bid) * BUF_SIZE) as u64);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.unpublished = true;
    }

    fn publish(&mut self) {
        if !self.unpublished {
            return;
        }
        self.unpublished = false;
        // SAFETY: the tail overlays the first entry's reserved field (the buffer ring ABI);
        // the kernel reads it concurrently, hence the atomic release store.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        let bid = usize::from(bid & (BUFFERS - 1));
        // SAFETY: buffer `bid` lies inside the data mapping; the kernel wrote `len` bytes
        // (at most BUF_SIZE) and writes no more until it is given back.
        unsafe { std::slice::from_raw_parts(self.data.add(bid * BUF_SIZE), len.min(BUF_SIZE)) }
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: both were mapped in `new` with these lengths; the ring that used them is
        // dropped before (field order of `Ring`).
        unsafe {
            libc::munmap(self.data.cast(), usize::from(BUFFERS) * BUF_SIZE);
            libc::munmap(self.entries.cast(), self.entries_len);
        }
    }
}

/// A worker thread's ring.
pub struct Ring {
    /// First: dropped before the memory its requests point into.
    ring: IoUring,
    buffers: Buffers,
    /// The recvmsg template of every listener receive: name and control lengths only (read
    /// by the kernel when the request is submitted, and by [`Ring::parse_msg`]).
    msg: Box<libc::msghdr>,
    /// Where EPOLL_WAIT writes the ready events.
    events: Box<[libc::epoll_event]>,
    /// Events the last completed EPOLL_WAIT returned.
    nevents: usize,
    epoll_armed: bool,
    completions: Vec<Completion>,
    /// Per buffer: a send from it is in flight (not given back with its receive).
    held: Box<[bool]>,
    /// Per buffer: the destination of a [`RingOp::SendTo`] from it, read by the kernel when
    /// the request is submitted.
    destinations: Box<[SockAddr]>,
    /// Per buffer: the message of a [`RingOp::SendTo`] from it with a source address
    /// (pointing into its own entry, `destinations` and the buffer), read by the kernel when
    /// the request is submitted; boxed, so it never moves.
    messages: Box<[SendMsg]>,
}

// SAFETY: the raw pointers are to mappings owned by the Ring itself; the Ring is built and
// used on one thread and only ever moved as a whole.
unsafe impl Send for Ring {}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("buffers", &BUFFERS).finish()
    }
}

/// A received datagram, parsed from its provided buffer.
#[derive(Debug)]
pub struct Datagram<'a> {
    pub source: Option<std::net::SocketAddr>,
    /// The local address it was sent to (PKTINFO sockets only).
    pub local: Option<std::net::IpAddr>,
    pub payload: &'a [u8],
    /// Where the payload starts in its buffer (for [`RingOp::Send`]).
    pub offset: u32,
    pub truncated: bool,
}

impl Ring {
    /// A ring, or why this kernel (or its settings: kernel.io_uring_disabled, a seccomp
    /// filter) cannot give one with what the worker needs.
    pub fn new() -> io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [
            opcode::EpollWait::CODE,
            opcode::RecvMsgMulti::CODE,
            opcode::RecvMulti::CODE,
            opcode::AsyncCancel::CODE,
            opcode::SendMsg::CODE,
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring opcode {code} not supported"),
                ));
            }
        }
        let buffers = Buffers::new()?;
        // SAFETY: the entries mapping lives as long as the ring (dropped after it).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.entries as u64,
                BUFFERS,
                BUF_GROUP,
                0,
            )?
        };
        // SAFETY: msghdr is plain C data; all-zero is valid.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        msg.msg_controllen = CONTROL_LEN as _;
        Ok(Ring {
            ring,
            buffers,
            msg,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EPOLL_EVENTS].into_boxed_slice(),
            nevents: 0,
            epoll_armed: false,
            completions: Vec::with_capacity(CQ_ENTRIES as usize),
            held: vec![false; usize::from(BUFFERS)].into_boxed_slice(),
            destinations: vec![
                SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
                usize::from(BUFFERS)
            ]
            .into_boxed_slice(),
            messages: (0..BUFFERS)
                .map(|_| SendMsg {
                    // SAFETY: msghdr and iovec are plain C data; all-zero is valid.
                    hdr: unsafe { std::mem::zeroed() },
                    iov: libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    },
                    ctrl: Ctrl([0; CTRL_SIZE]),
                })
                .collect(),
        })
    }

    /// Queue `entry`; false when the queue is full and could not be submitted (logged).
    fn push(&mut self, entry: &squeue::Entry) -> bool {
        loop {
            // SAFETY: every pointer in our entries (msghdr, event array, buffers) lives in
            // self, which outlives the requests (see the field order).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return true;
            }
            // Full: submit what is queued (completions are reaped at the next wait).
            if let Err(e) = self.ring.submit() {
                log::warn!("io_uring submit: {e}");
                return false;
            }
        }
    }

    /// Queue a request; it is submitted with the next [`Ring::wait`].
    pub fn submit_op(&mut self, op: RingOp) {
        let entry = match op {
            RingOp::RecvMsg { fd, user_data } => {
                opcode::RecvMsgMulti::new(types::Fd(fd), &*self.msg, BUF_GROUP)
                    .build()
                    .user_data(user_data)
            }
            RingOp::Recv { fd, user_data } => opcode::RecvMulti::new(types::Fd(fd), BUF_GROUP)
                .build()
                .user_data(user_data),
            RingOp::Cancel { user_data } => opcode::AsyncCancel::new(user_data)
                .build()
                .user_data(user_data | CANCEL_BIT),
            RingOp::Send {
                fd,
                bid,
                offset,
                len,
                user_data,
            } => {
                let bid = bid & (BUFFERS - 1);
                let at = usize::from(bid) * BUF_SIZE + (offset as usize).min(BUF_SIZE);
                let len = len.min((usize::from(BUFFERS) * BUF_SIZE - at) as u32);
                opcode::Send::new(types::Fd(fd), self.buffers.data.wrapping_add(at), len)
                    .flags(libc::MSG_DONTWAIT)
                    .build()
                    .user_data(user_data & !0xffff | SEND_BIT | u64::from(bid))
            }
            RingOp::SendTo {
                fd,
                bid,
                len,
                to,
                from,
                user_data,
            } => {
                let bid = bid & (BUFFERS - 1);
                let b = usize::from(bid);
                self.destinations[b] = SockAddr::from(to);
                let dest = &self.destinations[b];
                let data = self.buffers.data.wrapping_add(b * BUF_SIZE);
                let len = len.min(BUF_SIZE as u32);
                let user_data = user_data & !0xffff | SEND_BIT | u64::from(bid);
                match from {
                    None => opcode::Send::new(types::Fd(fd), data, len)
                        .flags(libc::MSG_DONTWAIT)
                        .dest_addr(dest.as_ptr().cast())
                        .dest_addr_len(dest.len())
                        .build()
                        .user_data(user_data),
                    Some(from) => {
                        let m = &mut self.messages[b];
                        let space = write_pktinfo(from, &mut m.ctrl);
                        m.iov = libc::iovec {
                            iov_base: data.cast(),
                            iov_len: len as usize,
                        };
                        // SAFETY: all-zero is a valid msghdr; every pointer set below is to
                        // memory the ring owns and keeps in place until the send completes.
                        m.hdr = unsafe { std::mem::zeroed() };
                        m.hdr.msg_name = dest.as_ptr() as *mut libc::c_void;
                        m.hdr.msg_namelen = dest.len();
                        m.hdr.msg_iov = &mut m.iov;
                        m.hdr.msg_iovlen = 1;
                        m.hdr.msg_control = m.ctrl.0.as_mut_ptr().cast();
                        m.hdr.msg_controllen = space as _;
                        opcode::SendMsg::new(types::Fd(fd), &m.hdr)
                            .flags(libc::MSG_DONTWAIT as u32)
                            .build()
                            .user_data(user_data)
                    }
                }
            }
        };
        if self.push(&entry) {
            if let RingOp::Send { bid, .. } | RingOp::SendTo { bid, .. } = op {
                // Its buffer stays ours until the send completes.
                self.held[usize::from(bid & (BUFFERS - 1))] = true;
            }
        }
    }

    /// Submit what is queued and wait up to `timeout` (`None`: until something completes)
    /// for a completion or for events on `epoll`. Afterwards [`Ring::events`] holds the
    /// epoll's ready events (empty when the epoll had none) and [`Ring::completions`] every
    /// other completion. `Interrupted` and a timeout are not errors.
    pub fn wait(&mut self, epoll: RawFd, timeout: Option<Duration>) -> io::Result<()> {
        self.completions.clear();
        self.nevents = 0;
        if !self.epoll_armed {
            let entry = opcode::EpollWait::new(
                types::Fd(epoll),
                self.events.as_mut_ptr().cast(),
                EPOLL_EVENTS as u32,
            )
            .build()
            .user_data(EPOLL_USER_DATA);
            self.epoll_armed = self.push(&entry);
        }
        self.buffers.publish();
        let ready = !self.ring.completion().is_empty();
        let queued = self.ring.submission().len() as u32;
        let result = match timeout {
            Some(t) if !t.is_zero() && !ready => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            // GETEVENTS with nothing to wait for: run the deferred work, reap, return.
            // SAFETY: no extended argument.
            Some(_) => unsafe {
                self.ring.submitter().enter::<libc::sigset_t>(
                    queued,
                    0,
                    io_uring::EnterFlags::GETEVENTS.bits(),
                    None,
                )
            },
            None if ready => unsafe {
                // SAFETY: as above.
                self.ring.submitter().enter::<libc::sigset_t>(
                    queued,
                    0,
                    io_uring::EnterFlags::GETEVENTS.bits(),
                    None,
                )
            },
            None => self.ring.submitter().submit_and_wait(1),
        };
        match result {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::ETIME | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        let mut armed = self.epoll_armed;
        let mut nevents = 0;
        for cqe in self.ring.completion() {
            if cqe.user_data() == EPOLL_USER_DATA {
                armed = false;
                // A failed wait (none is expected) reads as no events: the next is armed.
                nevents = usize::try_from(cqe.result()).unwrap_or(0).min(EPOLL_EVENTS);
                continue;
            }
            if cqe.user_data() & CANCEL_BIT != 0 {
                continue;
            }
            if cqe.user_data() & SEND_BIT != 0 {
                let bid = (cqe.user_data() & u64::from(BUFFERS - 1)) as u16;
                if std::mem::take(&mut self.held[usize::from(bid)]) {
                    self.buffers.give_back(bid);
                }
            }
            self.completions.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
        self.epoll_armed = armed;
        self.nevents = nevents;
        Ok(())
    }

    /// The epoll's events of the last wait.
    pub fn events(&self) -> &[libc::epoll_event] {
        &self.events[..self.nevents]
    }

    /// The completions of the last wait, other than the epoll's and the cancels'.
    pub fn completions(&self) -> &[Completion] {
        &self.completions
    }

    /// The `len` bytes a receive wrote into buffer `bid`.
    pub fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        self.buffers.bytes(bid, len)
    }

    /// A recvmsg's datagram in buffer `bid` (`len` bytes); `None` when the layout is not one
    /// the kernel writes (never expected).
    pub fn parse_msg(&self, bid: u16, len: usize) -> Option<Datagram<'_>> {
        let buf = self.buffers.bytes(bid, len);
        let out = types::RecvMsgOut::parse(buf, &self.msg).ok()?;
        let source = parse_sockaddr(out.name_data());
        let local = parse_pktinfo(out.control_data());
        let payload = out.payload_data();
        // The payload is the tail of `buf`: re-slice it with the buffer's lifetime.
        let start = (payload.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
        let payload = buf.get(start..start + payload.len())?;
        Some(Datagram {
            source,
            local,
            truncated: out.is_payload_truncated(),
            offset: start as u32,
            payload,
        })
    }

    /// Give back the buffer of every completion of the last wait, and forget them: once the
    /// turns copied their datagrams out. Idempotent.
    pub fn give_back_completed(&mut self) {
        for c in &self.completions {
            if let Some(bid) = c.buffer() {
                if !self.held[usize::from(bid & (BUFFERS - 1))] {
                    self.buffers.give_back(bid);
                }
            }
        }
        self.completions.clear();
    }
}

/// Set in the user data of a cancel request: its own completion is ignored.
pub const CANCEL_BIT: u64 = 1 << 55;
/// Set in the user data of a send ([`RingOp::Send`]).
pub const SEND_BIT: u64 = 1 << 54;

fn parse_sockaddr(name: &[u8]) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    if name.len() < 2 {
        return None;
    }
    let family = u16::from_ne_bytes([name[0], name[1]]);
    if i32::from(family) == libc::AF_INET && name.len() >= std::mem::size_of::<libc::sockaddr_in>()
    {
        // SAFETY: the kernel wrote a sockaddr_in of this size; read unaligned.
        let a: libc::sockaddr_in = unsafe { std::ptr::read_unaligned(name.as_ptr().cast()) };
        return Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
            u16::from_be(a.sin_port),
        )));
    }
    if i32::from(family) == libc::AF_INET6
        && name.len() >= std::mem::size_of::<libc::sockaddr_in6>()
    {
        // SAFETY: the kernel wrote a sockaddr_in6 of this size; read unaligned.
        let a: libc::sockaddr_in6 = unsafe { std::ptr::read_unaligned(name.as_ptr().cast()) };
        return Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(a.sin6_addr.s6_addr),
            u16::from_be(a.sin6_port),
            a.sin6_flowinfo,
            a.sin6_scope_id,
        )));
    }
    None
}

/// The destination address in an IP_PKTINFO / IPV6_PKTINFO control message.
fn parse_pktinfo(control: &[u8]) -> Option<std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let hdr = std::mem::size_of::<libc::cmsghdr>();
    let mut at = 0;
    while at + hdr <= control.len() {
        // SAFETY: `hdr` bytes at `at` are inside `control`; read unaligned.
        let c: libc::cmsghdr = unsafe { std::ptr::read_unaligned(control[at..].as_ptr().cast()) };
        let len = c.cmsg_len as usize;
        if len < hdr || at + len > control.len() {
            return None;
        }
        // Data starts at CMSG_DATA: the header rounded up to the size of a long.
        let data = &control[at + hdr..at + len];
        if c.cmsg_level == libc::IPPROTO_IP
            && c.cmsg_type == libc::IP_PKTINFO
            && data.len() >= std::mem::size_of::<libc::in_pktinfo>()
        {
            // SAFETY: an in_pktinfo of this size; read unaligned.
            let p: libc::in_pktinfo = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
            return Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(p.ipi_addr.s_addr))));
        }
        if c.cmsg_level == libc::IPPROTO_IPV6
            && c.cmsg_type == libc::IPV6_PKTINFO
            && data.len() >= std::mem::size_of::<libc::in6_pktinfo>()
        {
            // SAFETY: an in6_pktinfo of this size; read unaligned.
            let p: libc::in6_pktinfo = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
            return Some(IpAddr::V6(Ipv6Addr::from(p.ipi6_addr.s6_addr)));
        }
        // CMSG_ALIGN: the next header starts at a multiple of the size of a long.
        let step = (len + std::mem::size_of::<usize>() - 1) & !(std::mem::size_of::<usize>() - 1);
        at += step;
    }
    None
}
