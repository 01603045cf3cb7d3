//! udp-uring-probe: a one-thread UDP relay on io_uring, a measurement probe and not a product.
//!
//! It does what l4lb's UDP plane does on the benchmark's path (a session per client address,
//! each with its own socket connected to a backend picked round-robin; replies leave through
//! the listening socket) and nothing else: no expiry, health, metrics or logging, at most
//! `MAX_SESSIONS` sessions (datagrams from further clients are dropped; a session is never
//! closed, so run it only for a benchmark), and datagrams of up to `BUF_SIZE` bytes. What it measures is the I/O model. `--mode` picks
//! which parts go through the ring:
//!
//! - `ring`: everything. Multishot receives on the listening socket (recvmsg, for the client's
//!   address) and on every session socket, into a ring of provided buffers; sends as SEND
//!   requests from those buffers; the thread waits in io_uring_enter. About one syscall per
//!   loop turn, however many datagrams it moves.
//! - `ring-recv`: receives and the wait as in `ring`; sends by send(2) per datagram to a
//!   backend and one sendmmsg(2) per turn for the replies, as l4lb sends.
//! - `epoll-listener`: the shape a port into l4lb's epoll loop would have: the listening
//!   socket in an epoll (itself polled through the ring) read with recvmmsg, send(2) to the
//!   backends, sessions received on the ring, replies by sendmmsg.
//!
//! `udp-uring-probe syscall-cost` prints the cost of a trivial syscall (getppid) on this
//! machine, the unit in which the modes above differ.
//!
//! Usage: udp-uring-probe [--mode MODE] LISTEN BACKEND [BACKEND...]   (IPv4 addresses)

use std::collections::HashMap;
use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Instant;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// io_uring_enter(2) flag: run deferred task work and reap completions.
const IORING_ENTER_GETEVENTS: u32 = 1;
const BUF_GROUP: u16 = 7;
/// Provided buffers (a power of two, as the buffer ring requires).
const BUFFERS: u16 = 4096;
const BUF_SIZE: usize = 2048;
/// Datagrams per recvmmsg/sendmmsg in the modes that use them (l4lb's batch size).
const BATCH: usize = 32;
/// Sessions (each one socket) the relay opens at most; it never closes one.
const MAX_SESSIONS: usize = 4096;

const KIND: u64 = 0xff << 56;
const K_LISTENER: u64 = 1 << 56;
const K_SESSION: u64 = 2 << 56;
/// A send; the low 16 bits are the buffer to give back when it completes.
const K_SEND: u64 = 3 << 56;
const K_EPOLL: u64 = 4 << 56;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Ring,
    RingRecv,
    EpollListener,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("syscall-cost") {
        syscall_cost();
        return ExitCode::SUCCESS;
    }
    let result = parse(&args)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        .and_then(|(mode, listen, backends)| Relay::new(mode, listen, &backends)?.run());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp-uring-probe: {e}");
            ExitCode::from(2)
        }
    }
}

fn parse(args: &[String]) -> Result<(Mode, SocketAddrV4, Vec<SocketAddrV4>), String> {
    let mut mode = Mode::Ring;
    let mut addrs = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--mode" {
            mode = match it.next().map(String::as_str) {
                Some("ring") => Mode::Ring,
                Some("ring-recv") => Mode::RingRecv,
                Some("epoll-listener") => Mode::EpollListener,
                other => return Err(format!("unknown mode {other:?}")),
            };
        } else {
            addrs.push(a.parse::<SocketAddrV4>().map_err(|e| format!("{a}: {e}"))?);
        }
    }
    if addrs.len() < 2 {
        return Err("usage: udp-uring-probe [--mode MODE] LISTEN BACKEND [BACKEND...]".into());
    }
    let listen = addrs.remove(0);
    Ok((mode, listen, addrs))
}

fn syscall_cost() {
    const N: u32 = 2_000_000;
    let start = Instant::now();
    for _ in 0..N {
        // SAFETY: getppid has no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(N);
    println!("{ns:.1} ns per syscall (getppid, {N} calls)");
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

const SOCKADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

fn udp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned by the returned OwnedFd.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(last_error());
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The ring of provided buffers the multishot receives fill.
struct Buffers {
    /// `BUFFERS` ring entries in their own page-aligned mapping, registered with the kernel.
    entries: *mut types::BufRingEntry,
    tail: u16,
    data: Vec<u8>,
}

impl Buffers {
    fn new() -> io::Result<Buffers> {
        let bytes = usize::from(BUFFERS) * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: an anonymous private mapping; checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(last_error());
        }
        let mut b = Buffers {
            entries: map.cast(),
            tail: 0,
            data: vec![0; usize::from(BUFFERS) * BUF_SIZE],
        };
        for bid in 0..BUFFERS {
            b.give_back(bid);
        }
        b.publish();
        Ok(b)
    }

    fn ptr(&mut self, bid: u16) -> *mut u8 {
        self.data[usize::from(bid) * BUF_SIZE..].as_mut_ptr()
    }

    fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        let at = usize::from(bid) * BUF_SIZE;
        &self.data[at..at + len.min(BUF_SIZE)]
    }

    /// Queue buffer `bid` for the kernel again; it sees it after [`Buffers::publish`].
    fn give_back(&mut self, bid: u16) {
        let addr = self.ptr(bid) as u64;
        let slot = usize::from(self.tail & (BUFFERS - 1));
        // SAFETY: slot < BUFFERS, inside the mapping; the kernel reads only entries before the
        // published tail, and this one is past it until publish().
        let entry = unsafe { &mut *self.entries.add(slot) };
        entry.set_addr(addr);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's reserved field (the buffer ring
        // ABI); the kernel reads it concurrently, hence the atomic release store.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

struct Session {
    socket: OwnedFd,
    client: libc::sockaddr_in,
}

/// recvmmsg/sendmmsg buffers of the modes that use them.
struct MmsgBatch {
    data: Vec<u8>,
    names: Vec<libc::sockaddr_in>,
    lens: Vec<usize>,
    len: usize,
}

impl MmsgBatch {
    fn new() -> MmsgBatch {
        MmsgBatch {
            data: vec![0; BATCH * BUF_SIZE],
            names: vec![sockaddr(SocketAddrV4::new(0.into(), 0)); BATCH],
            lens: vec![0; BATCH],
            len: 0,
        }
    }

    /// recvmmsg (`recv`) or sendmmsg of slots `0..n`.
    fn call(&mut self, fd: RawFd, n: usize, recv: bool) -> io::Result<usize> {
        let mut iov: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain C data; all-zero is valid.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            iov[i].iov_base = self.data[i * BUF_SIZE..].as_mut_ptr().cast();
            iov[i].iov_len = if recv { BUF_SIZE } else { self.lens[i] };
            hdrs[i].msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in).cast();
            hdrs[i].msg_hdr.msg_namelen = SOCKADDR_LEN;
            hdrs[i].msg_hdr.msg_iov = &mut iov[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the headers point into iov, names and data, all alive for the call.
        let r = unsafe {
            if recv {
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    n as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            } else {
                libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT)
            }
        };
        if r < 0 {
            return Err(last_error());
        }
        for (i, h) in hdrs.iter().enumerate().take(r as usize) {
            self.lens[i] = h.msg_len as usize;
        }
        Ok(r as usize)
    }
}

struct Relay {
    mode: Mode,
    ring: IoUring,
    buffers: Buffers,
    listener: OwnedFd,
    /// The msghdr template of the listener's multishot recvmsg (name length only).
    listener_msg: Box<libc::msghdr>,
    /// `epoll-listener`: the epoll holding the listener.
    epoll: Option<OwnedFd>,
    backends: Vec<libc::sockaddr_in>,
    next_backend: usize,
    sessions: Vec<Session>,
    by_client: HashMap<(u32, u16), usize>,
    inbound: MmsgBatch,
    replies: MmsgBatch,
}

impl Relay {
    fn new(mode: Mode, listen: SocketAddrV4, backends: &[SocketAddrV4]) -> io::Result<Relay> {
        let listener = udp_socket()?;
        let one: libc::c_int = 1;
        let addr = sockaddr(listen);
        // SAFETY: setsockopt/bind with pointers to live values of the stated sizes.
        unsafe {
            if libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEPORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) < 0
                || libc::bind(
                    listener.as_raw_fd(),
                    (&addr as *const libc::sockaddr_in).cast(),
                    SOCKADDR_LEN,
                ) < 0
            {
                return Err(last_error());
            }
        }
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(8192)
            .build(1024)?;
        let buffers = Buffers::new()?;
        // SAFETY: the entries mapping stays alive (never unmapped) while the ring uses it.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.entries as u64,
                BUFFERS,
                BUF_GROUP,
                0,
            )?
        };
        // SAFETY: msghdr is plain C data; all-zero is valid.
        let mut listener_msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        listener_msg.msg_namelen = SOCKADDR_LEN;
        let mut relay = Relay {
            mode,
            ring,
            buffers,
            listener,
            listener_msg,
            epoll: None,
            backends: backends.iter().map(|b| sockaddr(*b)).collect(),
            next_backend: 0,
            sessions: Vec::new(),
            by_client: HashMap::new(),
            inbound: MmsgBatch::new(),
            replies: MmsgBatch::new(),
        };
        match mode {
            Mode::EpollListener => {
                let epoll = new_epoll()?;
                epoll_add(&epoll, relay.listener.as_raw_fd())?;
                relay.epoll = Some(epoll);
                relay.arm_epoll();
            }
            Mode::Ring | Mode::RingRecv => relay.arm_listener(),
        }
        Ok(relay)
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        // SAFETY: every pointer in our entries (msghdr, buffers, addresses) outlives the
        // request: they live in self, which outlives the ring's use of them.
        while unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.ring.submit()?;
        }
        Ok(())
    }

    fn arm_listener(&mut self) {
        let e = opcode::RecvMsgMulti::new(
            types::Fd(self.listener.as_raw_fd()),
            &*self.listener_msg,
            BUF_GROUP,
        )
        .build()
        .user_data(K_LISTENER);
        self.push_or_report(e);
    }

    fn arm_session(&mut self, i: usize) {
        let e = opcode::RecvMulti::new(types::Fd(self.sessions[i].socket.as_raw_fd()), BUF_GROUP)
            .build()
            .user_data(K_SESSION | i as u64);
        self.push_or_report(e);
    }

    fn arm_epoll(&mut self) {
        if let Some(epoll) = &self.epoll {
            let e = opcode::PollAdd::new(types::Fd(epoll.as_raw_fd()), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(K_EPOLL);
            self.push_or_report(e);
        }
    }

    fn push_or_report(&mut self, e: squeue::Entry) {
        if let Err(err) = self.push(e) {
            eprintln!("udp-uring-probe: submit: {err}");
        }
    }

    /// The session of client `client` (a new one, with a socket connected to the next
    /// backend, when it has none).
    fn session(&mut self, client: libc::sockaddr_in) -> io::Result<usize> {
        let key = (client.sin_addr.s_addr, client.sin_port);
        if let Some(&i) = self.by_client.get(&key) {
            return Ok(i);
        }
        if self.sessions.len() >= MAX_SESSIONS {
            return Err(io::Error::other("session table full"));
        }
        let socket = udp_socket()?;
        let backend = self.backends[self.next_backend % self.backends.len()];
        self.next_backend += 1;
        // SAFETY: connect with a pointer to a live sockaddr_in.
        if unsafe {
            libc::connect(
                socket.as_raw_fd(),
                (&backend as *const libc::sockaddr_in).cast(),
                SOCKADDR_LEN,
            )
        } < 0
        {
            return Err(last_error());
        }
        self.sessions.push(Session { socket, client });
        let i = self.sessions.len() - 1;
        self.by_client.insert(key, i);
        self.arm_session(i);
        Ok(i)
    }

    /// Forward `len` bytes at `data` (a provided buffer `bid`, or an inbound slot when `bid`
    /// is `None`) to session `i`'s backend.
    fn send_to_backend(&mut self, i: usize, data: *const u8, len: usize, bid: Option<u16>) {
        match (self.mode, bid) {
            (Mode::Ring, Some(bid)) => {
                let fd = self.sessions[i].socket.as_raw_fd();
                let e = opcode::Send::new(types::Fd(fd), data, len as u32)
                    .flags(libc::MSG_DONTWAIT)
                    .build()
                    .user_data(K_SEND | u64::from(bid));
                self.push_or_report(e);
            }
            _ => {
                // SAFETY: data..data+len is a live buffer of ours.
                unsafe {
                    libc::send(
                        self.sessions[i].socket.as_raw_fd(),
                        data.cast(),
                        len,
                        libc::MSG_DONTWAIT,
                    )
                };
                if let Some(bid) = bid {
                    self.buffers.give_back(bid);
                }
            }
        }
    }

    fn flush_replies(&mut self) {
        if self.replies.len > 0 {
            let n = self.replies.len;
            if let Err(e) = self.replies.call(self.listener.as_raw_fd(), n, false) {
                eprintln!("udp-uring-probe: sendmmsg: {e}");
            }
            self.replies.len = 0;
        }
    }

    fn run(mut self) -> io::Result<()> {
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(8192);
        loop {
            self.enter(1)?;
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(user_data, result, flags) in &cqes {
                self.completion(user_data, result, flags);
            }
            self.flush_replies();
            self.buffers.publish();
        }
    }

    /// Submit what is queued and run the kernel's deferred work, waiting for `min` completions.
    fn enter(&mut self, min: u32) -> io::Result<()> {
        let queued = self.ring.submission().len() as u32;
        // SAFETY: no extended argument; GETEVENTS runs the deferred task work.
        match unsafe {
            self.ring
                .submitter()
                .enter::<libc::sigset_t>(queued, min, IORING_ENTER_GETEVENTS, None)
        } {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::ETIME)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn completion(&mut self, user_data: u64, result: i32, flags: u32) {
        match user_data & KIND {
            K_LISTENER => {
                if let Some(bid) = cqueue::buffer_select(flags) {
                    if result >= 0 {
                        self.client_datagram(bid, result as usize);
                    } else {
                        self.buffers.give_back(bid);
                    }
                }
                if !cqueue::more(flags) {
                    self.arm_listener();
                }
            }
            K_SESSION => {
                let i = (user_data & !KIND) as usize;
                if let Some(bid) = cqueue::buffer_select(flags) {
                    if result >= 0 {
                        self.backend_reply(i, bid, result as usize);
                    } else {
                        self.buffers.give_back(bid);
                    }
                }
                if !cqueue::more(flags) {
                    self.arm_session(i);
                }
            }
            K_SEND => self.buffers.give_back((user_data & 0xffff) as u16),
            K_EPOLL => {
                self.listener_readable();
                if !cqueue::more(flags) {
                    self.arm_epoll();
                }
            }
            _ => {}
        }
    }

    /// A datagram from a client in provided buffer `bid` (recvmsg layout).
    fn client_datagram(&mut self, bid: u16, len: usize) {
        let parsed = {
            let buf = self.buffers.bytes(bid, len);
            types::RecvMsgOut::parse(buf, &self.listener_msg)
                .ok()
                .map(|out| {
                    let name = out.name_data();
                    let mut client = sockaddr(SocketAddrV4::new(0.into(), 0));
                    if name.len() >= std::mem::size_of::<libc::sockaddr_in>() {
                        // SAFETY: the kernel wrote a sockaddr_in of that size; read unaligned.
                        client = unsafe { std::ptr::read_unaligned(name.as_ptr().cast()) };
                    }
                    let payload = out.payload_data();
                    let offset = payload.as_ptr() as usize - buf.as_ptr() as usize;
                    (client, offset, payload.len())
                })
        };
        let Some((client, offset, plen)) = parsed else {
            self.buffers.give_back(bid);
            return;
        };
        match self.session(client) {
            Ok(i) => {
                let data = self.buffers.ptr(bid).wrapping_add(offset);
                self.send_to_backend(i, data, plen, Some(bid));
            }
            // No session (table full, no descriptor): the datagram is dropped, silently, as a
            // flood of them must not become a flood of log lines.
            Err(_) => self.buffers.give_back(bid),
        }
    }

    /// A reply from session `i`'s backend in provided buffer `bid`.
    fn backend_reply(&mut self, i: usize, bid: u16, len: usize) {
        if self.mode == Mode::Ring {
            let client = &self.sessions[i].client as *const libc::sockaddr_in;
            let data = self.buffers.ptr(bid);
            let e = opcode::Send::new(types::Fd(self.listener.as_raw_fd()), data, len as u32)
                .flags(libc::MSG_DONTWAIT)
                .dest_addr(client.cast())
                .dest_addr_len(SOCKADDR_LEN)
                .build()
                .user_data(K_SEND | u64::from(bid));
            self.push_or_report(e);
            return;
        }
        if self.replies.len == BATCH {
            self.flush_replies();
        }
        let at = self.replies.len;
        let n = len.min(BUF_SIZE);
        let src = self.buffers.bytes(bid, n).as_ptr();
        // SAFETY: both ranges are n <= BUF_SIZE bytes inside their own buffers.
        unsafe {
            std::ptr::copy_nonoverlapping(src, self.replies.data[at * BUF_SIZE..].as_mut_ptr(), n)
        };
        self.replies.lens[at] = n;
        self.replies.names[at] = self.sessions[i].client;
        self.replies.len += 1;
        self.buffers.give_back(bid);
    }

    /// `epoll-listener`: the epoll reported the listener readable; drain it with recvmmsg.
    fn listener_readable(&mut self) {
        if let Some(epoll) = &self.epoll {
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
            // SAFETY: events is a live array of the length given.
            unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), 4, 0) };
        }
        loop {
            let n = match self.inbound.call(self.listener.as_raw_fd(), BATCH, true) {
                Ok(n) => n,
                Err(_) => return,
            };
            for k in 0..n {
                let client = self.inbound.names[k];
                let len = self.inbound.lens[k];
                if let Ok(i) = self.session(client) {
                    let data = self.inbound.data[k * BUF_SIZE..].as_ptr();
                    self.send_to_backend(i, data, len, None);
                }
            }
            if n < BATCH {
                return;
            }
        }
    }
}

fn new_epoll() -> io::Result<OwnedFd> {
    // SAFETY: plain epoll_create1; owned below.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(last_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn epoll_add(epoll: &OwnedFd, fd: RawFd) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: 0,
    };
    // SAFETY: ev is a live epoll_event.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(last_error());
    }
    Ok(())
}
