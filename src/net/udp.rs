//! UDP sockets of the data path: the per-worker SO_REUSEPORT listening socket, the connected
//! socket of a session, and [`Batch`], the preallocated buffers that recvmmsg(2)/sendmmsg(2)
//! fill and drain.
//!
//! Hot path (the batch calls) and control path (binding). Invariants of a [`Batch`]:
//! - every buffer is allocated once, in [`Batch::new`]: a datagram costs no allocation;
//! - a slot holds a whole datagram of up to [`SLOT_SIZE`] bytes, more than the largest UDP
//!   payload IPv4 (65,507) or IPv6 without jumbograms (65,527) can carry, so nothing is ever
//!   cut; a datagram the kernel still reports as truncated (`MSG_TRUNC`) is flagged, and the
//!   caller counts and drops it instead of forwarding a part;
//! - the `mmsghdr`/`iovec` arrays are rebuilt on the stack for every call from the slots (only
//!   the entries the call uses), so a `Batch` holds no raw pointers into itself (it stays
//!   `Send` and movable).
//!
//! `unsafe`: nix's `recvmmsg`/`sendmmsg` tie the lifetimes of the message slices to the
//! preallocated headers, which does not fit buffers that outlive one call, and its `sendmmsg`
//! shares one control message among all messages (we need a source address per message). So
//! the two calls go to `libc` directly, in the small blocks below; each states why it is sound.
//! Everything around them (addresses, control messages) is plain safe code over `libc` types.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::libc;
use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};

/// Bytes per slot: 2^16 covers every UDP payload (IPv4's largest is 65,507 bytes, IPv6's
/// 65,527), so a datagram is never cut by our buffer.
pub const SLOT_SIZE: usize = 65_536;
/// Datagrams per recvmmsg/sendmmsg: 32 amortises the syscall over enough datagrams that its
/// fixed cost drops below the per-datagram cost, while a batch (2 MiB of slots, touched only
/// as far as datagrams are long) and the stack headers (2 KiB) stay small.
pub const BATCH: usize = 32;
/// Socket buffer asked for on a listening socket (the kernel clamps it to net.core.rmem_max /
/// wmem_max): room for bursts of a busy listener between two wake-ups of its worker.
const LISTENER_SOCKET_BUFFER: usize = 4 << 20;
/// Control buffer per slot: CMSG_SPACE(sizeof(struct in6_pktinfo)) is 40 bytes on 64-bit
/// Linux, CMSG_SPACE(sizeof(struct in_pktinfo)) 32; 64 leaves room and keeps slots aligned.
pub(crate) const CTRL_SIZE: usize = 64;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct Ctrl(pub(crate) [u8; CTRL_SIZE]);

/// The message headers and iovecs of one call, on the stack; only the entries a call uses are
/// written.
type Headers = [MaybeUninit<libc::mmsghdr>; BATCH];
type Iovecs = [MaybeUninit<libc::iovec>; BATCH];

/// A non-blocking UDP socket with SO_REUSEADDR and SO_REUSEPORT bound to `addr`. On a wildcard
/// address it also asks for IP_PKTINFO / IPV6_RECVPKTINFO, so that each datagram tells which
/// local address it was sent to and the reply can leave from that same address.
pub fn bind_udp_reuseport(addr: SocketAddr) -> io::Result<mio::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking(),
        Some(Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Best effort: a smaller buffer only means drops sooner under a burst.
    let _ = socket.set_recv_buffer_size(LISTENER_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(LISTENER_SOCKET_BUFFER);
    if addr.ip().is_unspecified() {
        let set = if addr.is_ipv6() {
            setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)
        } else {
            setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)
        };
        set.map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    }
    socket.bind(&addr.into())?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}

/// Whether a UDP send/receive error means "the peer is not there" (ICMP port or host
/// unreachable reported on a connected socket).
pub fn is_unreachable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED) | Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH)
    )
}

/// [`BATCH`] datagram slots plus, per slot, the remote address (source when received,
/// destination when sent), the local address (destination when received with PKTINFO, source
/// when sent), its length and whether the kernel truncated it.
pub struct Batch {
    data: Box<[u8]>,
    names: Box<[libc::sockaddr_storage]>,
    ctrl: Box<[Ctrl]>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
    remote: [Option<SocketAddr>; BATCH],
    local: [Option<IpAddr>; BATCH],
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("slots", &BATCH).finish()
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is a plain C struct of integers; all-zero is a valid value
    // (family AF_UNSPEC).
    unsafe { mem::zeroed() }
}

impl Batch {
    pub fn new() -> Batch {
        Batch {
            data: vec![0u8; BATCH * SLOT_SIZE].into_boxed_slice(),
            names: vec![zeroed_storage(); BATCH].into_boxed_slice(),
            ctrl: vec![Ctrl([0; CTRL_SIZE]); BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            truncated: [false; BATCH],
            remote: [None; BATCH],
            local: [None; BATCH],
        }
    }

    /// The datagram in slot `i` (as received, or as staged for sending).
    #[inline]
    pub fn data(&self, i: usize) -> &[u8] {
        &self.data[i * SLOT_SIZE..i * SLOT_SIZE + self.lens[i]]
    }

    /// Copy a datagram received elsewhere (the io_uring path's provided buffers) into slot
    /// `i`, with its remote address (source when received, destination when sent) and local
    /// address. A datagram longer than a slot cannot exist (see [`SLOT_SIZE`]); it would be
    /// flagged truncated, never cut silently.
    #[inline]
    pub fn stage(&mut self, i: usize, bytes: &[u8], remote: SocketAddr, local: Option<IpAddr>) {
        self.set_data(i, bytes);
        self.remote[i] = Some(remote);
        self.local[i] = local;
    }

    /// Stage `bytes` in slot `i` (tests and probes; the data path receives in place).
    pub fn set_data(&mut self, i: usize, bytes: &[u8]) {
        let n = bytes.len().min(SLOT_SIZE);
        self.data[i * SLOT_SIZE..i * SLOT_SIZE + n].copy_from_slice(&bytes[..n]);
        self.lens[i] = n;
        self.truncated[i] = n < bytes.len();
    }

    #[inline]
    pub fn len_of(&self, i: usize) -> usize {
        self.lens[i]
    }

    /// The kernel had more bytes for this datagram than the slot took (never for UDP payloads,
    /// see [`SLOT_SIZE`]; checked anyway so nothing is ever forwarded cut).
    #[inline]
    pub fn truncated(&self, i: usize) -> bool {
        self.truncated[i]
    }

    /// Source of a datagram received with addresses.
    #[inline]
    pub fn remote(&self, i: usize) -> Option<SocketAddr> {
        self.remote[i]
    }

    /// Local address a datagram was sent to (PKTINFO sockets only).
    #[inline]
    pub fn local(&self, i: usize) -> Option<IpAddr> {
        self.local[i]
    }

    /// Address slot `i` for [`Batch::send`] with addresses: to `to`, from `from` when given
    /// (a wildcard listener's reply leaves from the address the client sent to).
    #[inline]
    pub fn address(&mut self, i: usize, to: SocketAddr, from: Option<IpAddr>) {
        self.remote[i] = Some(to);
        self.local[i] = from;
    }

    /// Move the datagram of slot `from` to slot `to` (rare path: closing a gap left by a
    /// dropped datagram). Copies the bytes.
    pub fn move_slot(&mut self, from: usize, to: usize) {
        if from == to {
            return;
        }
        let len = self.lens[from];
        self.data
            .copy_within(from * SLOT_SIZE..from * SLOT_SIZE + len, to * SLOT_SIZE);
        self.lens[to] = len;
        self.truncated[to] = self.truncated[from];
        self.remote[to] = self.remote[from];
        self.local[to] = self.local[from];
    }

    /// Headers for one call over slots `start..end` (clipped to the batch) written into the
    /// first entries of `hdrs`/`iov`; returns how many (0: nothing to do). Each points through
    /// its own entry of `iov` at its slot, the whole slot to receive into (`whole`) or the
    /// datagram it holds to send; names and control data are the caller's to add. Only the
    /// entries used are written: a call for one datagram does not pay for 32.
    fn headers(
        &mut self,
        iov: &mut Iovecs,
        hdrs: &mut Headers,
        start: usize,
        end: usize,
        whole: bool,
    ) -> usize {
        let end = end.min(BATCH);
        if start >= end {
            return 0;
        }
        let data = self.data.as_mut_ptr();
        for (k, (v, hdr)) in iov
            .iter_mut()
            .zip(hdrs.iter_mut())
            .enumerate()
            .take(end - start)
        {
            let i = start + k;
            // In bounds: i < BATCH and data has BATCH * SLOT_SIZE bytes.
            let v = v.write(libc::iovec {
                iov_base: data.wrapping_add(i * SLOT_SIZE).cast(),
                iov_len: if whole { SLOT_SIZE } else { self.lens[i] },
            });
            // SAFETY: a plain C struct; null pointers and zero lengths are valid values.
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
            hdr.write(h);
        }
        end - start
    }

    /// recvmmsg(2) into slots `start..end` of `fd` without blocking. `Ok(n)`: slots
    /// `start..start + n` hold datagrams; `n < end - start` means the queue is empty now (the
    /// next arrival raises a new edge), so the caller need not call again to see `WouldBlock`.
    /// With `addrs`, each slot's source (and, when `pktinfo`, its local address) is recorded.
    pub fn recv(
        &mut self,
        fd: &impl AsRawFd,
        start: usize,
        end: usize,
        addrs: bool,
        pktinfo: bool,
    ) -> io::Result<usize> {
        let mut iov: Iovecs = [const { MaybeUninit::uninit() }; BATCH];
        let mut hdrs: Headers = [const { MaybeUninit::uninit() }; BATCH];
        let count = self.headers(&mut iov, &mut hdrs, start, end, true);
        if count == 0 {
            return Ok(0);
        }
        for (k, hdr) in hdrs.iter_mut().enumerate().take(count) {
            let i = start + k;
            // SAFETY: `headers` wrote the first `count` entries.
            let h = unsafe { &mut hdr.assume_init_mut().msg_hdr };
            if addrs {
                h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            }
            if pktinfo {
                h.msg_control = self.ctrl[i].0.as_mut_ptr().cast();
                h.msg_controllen = CTRL_SIZE as _;
            }
        }
        // SAFETY: the first `count` headers are initialised and point only at `iov[..count]`
        // (this stack frame) and at the slots, names and control buffers of `self`, which
        // `&mut self` keeps alive and unaliased for the call; each buffer's length is the one
        // given. The kernel writes at most those lengths and the fields of those headers.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                hdrs.as_mut_ptr().cast::<libc::mmsghdr>(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (k, hdr) in hdrs.iter().enumerate().take(n) {
            let i = start + k;
            // SAFETY: initialised by `headers`, then filled in by the kernel.
            let hdr = unsafe { hdr.assume_init_ref() };
            self.lens[i] = (hdr.msg_len as usize).min(SLOT_SIZE);
            self.truncated[i] = hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.remote[i] = if addrs {
                from_storage(&self.names[i], hdr.msg_hdr.msg_namelen)
            } else {
                None
            };
            self.local[i] = if pktinfo {
                // SAFETY: the header is the one the kernel just filled, its control pointer
                // and length describe `self.ctrl[i]`.
                unsafe { pktinfo_of(&hdr.msg_hdr) }
            } else {
                None
            };
        }
        Ok(n)
    }

    /// sendmmsg(2) of slots `start..end` on `fd` without blocking. With `addrs`, each slot goes
    /// to its [`Batch::address`] destination (and from its local address, if set); without, to
    /// the socket's connected peer. `Ok(n)`: the first `n` were sent; the caller decides what
    /// to do with the one that failed (the error is reported by the next call). One datagram
    /// to the connected peer (a session's usual case) goes out with send(2), which skips the
    /// kernel's copy of a message header and iovec.
    pub fn send(
        &mut self,
        fd: &impl AsRawFd,
        start: usize,
        end: usize,
        addrs: bool,
    ) -> io::Result<usize> {
        if !addrs && start + 1 == end && start < BATCH {
            let data = &self.data[start * SLOT_SIZE..start * SLOT_SIZE + self.lens[start]];
            // SAFETY: `data` is a live, initialised slice of `self` for the whole call; the
            // kernel only reads `data.len()` bytes from it.
            let n = unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            return if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(1)
            };
        }
        let mut iov: Iovecs = [const { MaybeUninit::uninit() }; BATCH];
        let mut hdrs: Headers = [const { MaybeUninit::uninit() }; BATCH];
        let count = self.headers(&mut iov, &mut hdrs, start, end, false);
        if count == 0 {
            return Ok(0);
        }
        if addrs {
            for (k, hdr) in hdrs.iter_mut().enumerate().take(count) {
                let i = start + k;
                let Some(to) = self.remote[i] else {
                    continue;
                };
                // SAFETY: `headers` wrote the first `count` entries.
                let h = unsafe { &mut hdr.assume_init_mut().msg_hdr };
                h.msg_namelen = to_storage(to, &mut self.names[i]);
                h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
                if let Some(from) = self.local[i] {
                    let len = write_pktinfo(from, &mut self.ctrl[i]);
                    if len > 0 {
                        h.msg_control = self.ctrl[i].0.as_mut_ptr().cast();
                        h.msg_controllen = len as _;
                    }
                }
            }
        }
        // SAFETY: as in `recv`: the first `count` headers are initialised and every pointer in
        // them is into this frame or into buffers of `self` held by `&mut self`, with their
        // true lengths; the kernel only reads them (and writes `msg_len`).
        let n = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                hdrs.as_mut_ptr().cast::<libc::mmsghdr>(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Read a `sockaddr_in`/`sockaddr_in6` the kernel wrote into `s`.
fn from_storage(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match s.ss_family as libc::c_int {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in; sockaddr_storage is
            // larger and at least as aligned.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Write `addr` into `s`; returns the length to pass as `msg_namelen`.
fn to_storage(addr: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_in fits in (and is less aligned than) sockaddr_storage; every
            // field is written below from a zeroed value.
            let sin =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            // SAFETY: all-zero is a valid sockaddr_in.
            *sin = unsafe { mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            // SAFETY: all-zero is a valid sockaddr_in6.
            *sin6 = unsafe { mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The destination address of a received datagram, from its IP_PKTINFO/IPV6_PKTINFO message.
///
/// # Safety
/// `h.msg_control`/`h.msg_controllen` must describe a readable buffer the kernel filled.
// `msg_controllen` is a size_t on glibc but a socklen_t on musl: the cast is for the latter.
#[allow(clippy::unnecessary_cast)]
unsafe fn pktinfo_of(h: &libc::msghdr) -> Option<IpAddr> {
    if h.msg_control.is_null() || (h.msg_controllen as usize) < mem::size_of::<libc::cmsghdr>() {
        return None;
    }
    // SAFETY: the caller guarantees the control buffer; CMSG_* walk within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>());
                return Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    info.ipi_addr.s_addr,
                ))));
            }
            if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>());
                return Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// Write one IP_PKTINFO/IPV6_PKTINFO control message choosing `from` as the source address;
/// returns its CMSG_SPACE (the `msg_controllen` to pass).
pub(crate) fn write_pktinfo(from: IpAddr, ctrl: &mut Ctrl) -> usize {
    ctrl.0 = [0; CTRL_SIZE];
    let (level, kind, payload) = match from {
        IpAddr::V4(_) => (
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            mem::size_of::<libc::in_pktinfo>(),
        ),
        IpAddr::V6(_) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            mem::size_of::<libc::in6_pktinfo>(),
        ),
    };
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(payload as u32) as usize,
            libc::CMSG_LEN(payload as u32) as usize,
        )
    };
    if space > CTRL_SIZE {
        return 0;
    }
    // SAFETY: `ctrl` is 8-aligned and `space` bytes long at least (checked above), so a
    // cmsghdr and its payload fit; a msghdr pointing at it lets CMSG_FIRSTHDR/CMSG_DATA find
    // the header and data positions within it.
    unsafe {
        let mut h: libc::msghdr = mem::zeroed();
        h.msg_control = ctrl.0.as_mut_ptr().cast();
        h.msg_controllen = space as _;
        let c = libc::CMSG_FIRSTHDR(&h);
        (*c).cmsg_level = level;
        (*c).cmsg_type = kind;
        (*c).cmsg_len = len as _;
        match from {
            IpAddr::V4(ip) => {
                let mut info: libc::in_pktinfo = mem::zeroed();
                info.ipi_spec_dst.s_addr = u32::from(ip).to_be();
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), info);
            }
            IpAddr::V6(ip) => {
                let mut info: libc::in6_pktinfo = mem::zeroed();
                info.ipi6_addr.s6_addr = ip.octets();
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>(), info);
            }
        }
    }
    space
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn local_pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        (a, b)
    }

    #[test]
    fn batch_round_trip_keeps_sources_and_sizes() {
        let (a, b) = local_pair();
        let b_addr = b.local_addr().unwrap();
        for n in [1usize, 100, 65_507] {
            a.send_to(&vec![n as u8; n], b_addr).unwrap();
        }
        let mut batch = Batch::new();
        let got = batch.recv(&b, 0, BATCH, true, false).unwrap();
        assert_eq!(got, 3);
        assert_eq!(batch.len_of(2), 65_507);
        assert!(batch.data(2).iter().all(|&x| x == 65_507usize as u8));
        assert!(!batch.truncated(2));
        assert_eq!(batch.remote(0), Some(a.local_addr().unwrap()));
        // Queue empty now: a short batch, and the next call would block.
        let e = batch.recv(&b, 0, BATCH, true, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // Echo all three back in one sendmmsg.
        for i in 0..3 {
            batch.address(i, a.local_addr().unwrap(), None);
        }
        assert_eq!(batch.send(&b, 0, 3, true).unwrap(), 3);
        let mut buf = vec![0u8; SLOT_SIZE];
        let (n, from) = a.recv_from(&mut buf).unwrap();
        assert_eq!((n, from), (1, b_addr));
    }

    #[test]
    fn pktinfo_reports_and_sets_the_local_address() {
        let listener = bind_udp_reuseport("0.0.0.0:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .send_to(b"hi", SocketAddr::from(([127, 0, 0, 7], port)))
            .unwrap();
        let mut batch = Batch::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let n = loop {
            match batch.recv(&listener, 0, BATCH, true, true) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(n, 1);
        assert_eq!(batch.local(0), Some(IpAddr::from([127, 0, 0, 7])));
        let to = batch.remote(0).unwrap();
        batch.address(0, to, batch.local(0));
        assert_eq!(batch.send(&listener, 0, 1, true).unwrap(), 1);
        let mut buf = [0u8; 16];
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(from, SocketAddr::from(([127, 0, 0, 7], port)));
    }

    #[test]
    fn connected_socket_reports_port_unreachable() {
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let s = crate::net::connect::udp_connect(addr, None).unwrap();
        let mut batch = Batch::new();
        batch.set_data(0, b"x");
        assert_eq!(batch.send(&s, 0, 1, false).unwrap(), 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match batch.recv(&s, 0, BATCH, false, false) {
                Err(e) if is_unreachable(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "no ICMP error");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
