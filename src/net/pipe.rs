//! Kernel pipes for splice(2) and the per-worker pool they come from.
//!
//! Hot path. A [`Pipe`] carries bytes from one socket to another without copying them through
//! user space: `splice(src -> pipe)` then `splice(pipe -> dst)`. Invariants: a pipe goes back to
//! the pool only when empty (so no stale bytes can leak into another connection), and the pool
//! keeps at most `max_idle` pipes, closing the rest, so idle memory stays bounded.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{splice, OFlag, SpliceFFlags};

/// The kernel's default pipe capacity (16 pages): what a new pipe is assumed to hold.
pub const PIPE_CAPACITY: usize = 64 * 1024;

/// What a pipe is grown to (F_SETPIPE_SZ) the first time one splice fills it: a bulk stream.
/// On a loopback iperf3 -P1 through l4lb (2-CPU VM, `scripts/compare-tools.sh`, alternating
/// runs) this took 14-16 Gbit/s to 21-23 Gbit/s and halved the proxy's CPU per GB: a quarter
/// of the splice calls and wake-ups per byte. Pipes only hold bytes between the two splices
/// of one wake-up and go back to the pool when drained, so a grown pipe costs kernel memory
/// only while bytes are in flight; it does count against `fs.pipe-user-pages-soft` for an
/// unprivileged user (64 pages instead of 16), and when the kernel refuses the growth
/// (EPERM over that limit) the pipe keeps its size.
pub const BULK_PIPE_CAPACITY: usize = 256 * 1024;

#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes sitting in the pipe, not yet spliced out.
    pending: u32,
    /// What one splice may move in: `PIPE_CAPACITY`, or what F_SETPIPE_SZ granted.
    capacity: u32,
    /// Growth was attempted (once per pipe, whatever the result).
    grow_tried: bool,
}

fn to_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let (read, write) =
            nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(to_io)?;
        Ok(Pipe {
            read,
            write,
            pending: 0,
            capacity: PIPE_CAPACITY as u32,
            grow_tried: false,
        })
    }

    #[inline]
    pub fn pending(&self) -> usize {
        self.pending as usize
    }

    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Move up to `capacity - pending` bytes from `src` into the pipe. `Ok(0)` is EOF. A
    /// splice that fills an empty pipe marks a bulk stream: the pipe is grown once.
    pub fn fill_from<S: AsFd>(&mut self, src: S) -> io::Result<usize> {
        let room = self.capacity.saturating_sub(self.pending) as usize;
        let n = splice(
            src,
            None,
            self.write.as_fd(),
            None,
            room,
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
        )
        .map_err(to_io)?;
        // A splice moves at most `room` (<= capacity, a u32) bytes.
        self.pending += n as u32;
        if n == self.capacity as usize && !self.grow_tried {
            self.grow();
        }
        Ok(n)
    }

    /// Ask for `BULK_PIPE_CAPACITY`; a refusal (over `fs.pipe-user-pages-soft`, or above
    /// `fs.pipe-max-size`) leaves the pipe as it was.
    fn grow(&mut self) {
        self.grow_tried = true;
        if let Ok(granted) = nix::fcntl::fcntl(
            &self.write,
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(BULK_PIPE_CAPACITY as nix::libc::c_int),
        ) {
            self.capacity = u32::try_from(granted)
                .unwrap_or(self.capacity)
                .max(self.pending);
        }
    }

    /// Move as many pending bytes as `dst` takes.
    pub fn drain_to<D: AsFd>(&mut self, dst: D) -> io::Result<usize> {
        let n = splice(
            self.read.as_fd(),
            None,
            dst,
            None,
            self.pending as usize,
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
        )
        .map_err(to_io)?;
        self.pending -= (n as u32).min(self.pending);
        Ok(n)
    }
}

/// Free pipes of one worker. Owned by the worker; never shared.
#[derive(Debug)]
pub struct PipePool {
    free: Vec<Pipe>,
    max_idle: usize,
}

impl PipePool {
    pub fn new(max_idle: usize) -> PipePool {
        PipePool {
            free: Vec::with_capacity(max_idle),
            max_idle,
        }
    }

    /// A pipe from the pool, or a new one. Fails when the process is out of file descriptors;
    /// callers then fall back to copying.
    pub fn get(&mut self) -> io::Result<Pipe> {
        match self.free.pop() {
            Some(p) => Ok(p),
            None => Pipe::new(),
        }
    }

    /// Give back a pipe. A pipe that still holds bytes is closed instead.
    pub fn put(&mut self, pipe: Pipe) {
        if pipe.pending == 0 && self.free.len() < self.max_idle {
            self.free.push(pipe);
        }
    }

    pub fn idle(&self) -> usize {
        self.free.len()
    }
}

/// Fixed-size copy buffers of one worker, for the rare case where a peer does not take all
/// bytes at once. Bounded like the pipe pool.
#[derive(Debug)]
pub struct BufferPool {
    free: Vec<Box<[u8]>>,
    size: usize,
    max_idle: usize,
}

impl BufferPool {
    pub fn new(size: usize, max_idle: usize) -> BufferPool {
        BufferPool {
            free: Vec::with_capacity(max_idle),
            size,
            max_idle,
        }
    }

    pub fn get(&mut self) -> Box<[u8]> {
        self.free
            .pop()
            .unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice())
    }

    pub fn put(&mut self, buf: Box<[u8]>) {
        if self.free.len() < self.max_idle {
            self.free.push(buf);
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn splices_between_sockets() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let (c, mut d) = UnixStream::pair().unwrap();
        a.write_all(b"hello splice").unwrap();
        let mut p = Pipe::new().unwrap();
        assert_eq!(p.fill_from(&b).unwrap(), 12);
        assert_eq!(p.pending(), 12);
        assert_eq!(p.drain_to(&c).unwrap(), 12);
        assert_eq!(p.pending(), 0);
        let mut got = [0u8; 12];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello splice");
        let mut pool = PipePool::new(1);
        pool.put(p);
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn a_pipe_that_one_splice_fills_grows_once_and_still_moves_every_byte() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (rx, _) = listener.accept().unwrap();
        let (out, mut sink) = UnixStream::pair().unwrap();
        sink.set_nonblocking(true).unwrap();
        let data: Vec<u8> = (0..4 * BULK_PIPE_CAPACITY)
            .map(|i| (i % 251) as u8)
            .collect();
        let writer = std::thread::spawn(move || tx.write_all(&data).map(|_| data));
        let mut p = Pipe::new().unwrap();
        let mut received = Vec::new();
        let mut sizes = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while received.len() < 4 * BULK_PIPE_CAPACITY && std::time::Instant::now() < deadline {
            // Let the sender queue more than a default pipe holds before each splice (or
            // all it has left), however slowly this machine runs it.
            let left = 4 * BULK_PIPE_CAPACITY - received.len();
            let mut peeked = vec![0u8; PIPE_CAPACITY + 1];
            while std::time::Instant::now() < deadline
                && rx.peek(&mut peeked).unwrap() < (PIPE_CAPACITY + 1).min(left)
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let n = p.fill_from(&rx).unwrap();
            sizes.push((n, p.capacity()));
            while p.pending() > 0 {
                p.drain_to(&out).unwrap();
                let mut buf = vec![0u8; BULK_PIPE_CAPACITY];
                while let Ok(k) = sink.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    received.extend_from_slice(&buf[..k]);
                }
            }
        }
        let data = writer.join().unwrap().unwrap();
        assert!(received == data, "bytes lost or reordered");
        // The first splice filled the default pipe and grew it (tests run as root, so
        // `fs.pipe-user-pages-soft` does not refuse); later splices moved more than 64 KiB.
        assert_eq!(sizes[0], (PIPE_CAPACITY, BULK_PIPE_CAPACITY), "{sizes:?}");
        assert!(
            sizes.iter().any(|&(n, _)| n > PIPE_CAPACITY),
            "no splice used the grown pipe: {sizes:?}"
        );
        assert!(
            sizes.iter().all(|&(n, cap)| n <= cap),
            "a splice moved more than the capacity: {sizes:?}"
        );
    }
}
