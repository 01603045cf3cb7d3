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

/// The kernel's default pipe capacity (16 pages). We do not raise it with F_SETPIPE_SZ: a
/// larger pipe saves syscalls only on multi-gigabit streams and costs locked kernel memory
/// per busy connection.
pub const PIPE_CAPACITY: usize = 64 * 1024;

#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes sitting in the pipe, not yet spliced out.
    pending: usize,
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
        })
    }

    #[inline]
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Move up to `PIPE_CAPACITY - pending` bytes from `src` into the pipe. `Ok(0)` is EOF.
    pub fn fill_from<S: AsFd>(&mut self, src: S) -> io::Result<usize> {
        let room = PIPE_CAPACITY - self.pending;
        let n = splice(
            src,
            None,
            self.write.as_fd(),
            None,
            room,
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
        )
        .map_err(to_io)?;
        self.pending += n;
        Ok(n)
    }

    /// Move as many pending bytes as `dst` takes.
    pub fn drain_to<D: AsFd>(&mut self, dst: D) -> io::Result<usize> {
        let n = splice(
            self.read.as_fd(),
            None,
            dst,
            None,
            self.pending,
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
        )
        .map_err(to_io)?;
        self.pending -= n.min(self.pending);
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
}
