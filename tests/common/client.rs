//! Client side of a test: connect (with timeouts, from a chosen source), reset, and reads
//! bounded by a deadline.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::deadline::IO_TIMEOUT;

fn prepare(s: &TcpStream) {
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let _ = s.set_nodelay(true);
}

/// Connect with a timeout; the stream gets read/write timeouts of `IO_TIMEOUT`.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    prepare(&s);
    Ok(s)
}

/// Connect from source address `src` (port chosen by the kernel).
pub fn connect_from(src: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    let s: TcpStream = sock.into();
    prepare(&s);
    Ok(s)
}

/// Whether a connect to `addr` is refused by the kernel (nothing listens there).
pub fn connect_refused(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

/// Close with a reset instead of a FIN.
pub fn reset(s: TcpStream) {
    let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// Read until EOF; fails on timeout (`deadline` is for the whole read) or any error.
pub fn read_until_eof(s: &mut TcpStream, within: Duration) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no EOF within {within:?} ({} bytes read)", out.len()),
            ));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no EOF within {within:?}; read {} bytes: {:?}",
                        out.len(),
                        String::from_utf8_lossy(&out[..out.len().min(64)])
                    ),
                ));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{e} after {} bytes", out.len()),
                ))
            }
        }
    }
}

/// Read exactly `n` bytes within `within`.
pub fn read_exact_within(s: &mut TcpStream, n: usize, within: Duration) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "read_exact timeout",
            ));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut out[got..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {got} of {n} bytes"),
                ))
            }
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Read one `\n`-terminated line (the id of an `id` backend), without the newline.
pub fn read_line(s: &mut TcpStream, within: Duration) -> io::Result<String> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no line in time"));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut byte) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {:?}", String::from_utf8_lossy(&out)),
                ))
            }
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&out).into_owned()),
            Ok(_) => out.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Write `msg` and read it back (through an echo or, after its id line, an `id` backend).
pub fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    s.write_all(msg)?;
    let back = read_exact_within(s, msg.len(), IO_TIMEOUT)?;
    if back != msg {
        return Err(io::Error::other("echo mismatch"));
    }
    Ok(())
}

/// What the first read on a fresh connection gave.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstRead {
    Data(Vec<u8>),
    Eof,
    Reset,
    TimedOut,
    Error(String),
}

pub fn first_read(s: &mut TcpStream, within: Duration) -> FirstRead {
    let _ = s.set_read_timeout(Some(within));
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return FirstRead::Eof,
            Ok(n) => return FirstRead::Data(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return FirstRead::Reset
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return FirstRead::TimedOut
            }
            Err(e) => return FirstRead::Error(e.to_string()),
        }
    }
}
