//! `Backend`: in-process TCP servers on loopback (echo, `id` and custom handlers), one thread
//! per connection, stopped and joined by a Drop guard.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::deadline::wait_until;
use super::net::localhost;

/// Stack of the backends' per-connection threads: they only hold a heap buffer.
const HANDLER_STACK: usize = 128 * 1024;
/// Socket timeout of backend connections: ends a handler whose peer vanished without a close.
const HANDLER_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What a backend does with one accepted connection. Runs on its own thread.
pub type Handler = Arc<dyn Fn(TcpStream) + Send + Sync + 'static>;

/// A TCP server on a loopback port 0, one thread per connection. Drop stops accepting, joins
/// the accept thread and waits (bounded) for the connection handlers to finish.
pub struct Backend {
    pub addr: SocketAddr,
    /// The id an `id` backend announces, without the newline.
    pub id: String,
    accepted: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("addr", &self.addr)
            .field("id", &self.id)
            .finish()
    }
}

impl Backend {
    pub fn spawn(ip: IpAddr, id: &str, handler: Handler) -> Backend {
        let listener = TcpListener::bind((ip, 0)).expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        Backend::serve(listener, addr, id, handler).expect("spawn backend thread")
    }

    /// Like `spawn`, on a given address (e.g. a restarted backend's old port; std's listener
    /// sets SO_REUSEADDR, so connections in TIME_WAIT do not block the bind).
    pub fn spawn_at(addr: SocketAddr, id: &str, handler: Handler) -> io::Result<Backend> {
        Backend::serve(TcpListener::bind(addr)?, addr, id, handler)
    }

    /// Serves `listener` (bound to `addr`): an accept thread hands each connection to `handler`.
    /// Fails only if that thread cannot start.
    fn serve(
        listener: TcpListener,
        addr: SocketAddr,
        id: &str,
        handler: Handler,
    ) -> io::Result<Backend> {
        let accepted = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, active, stop) = (accepted.clone(), active.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("backend-{id}"))
                .spawn(move || accept_loop(listener, handler, accepted, active, stop))?
        };
        Ok(Backend {
            addr,
            id: id.to_string(),
            accepted,
            active,
            stop,
            thread: Some(thread),
        })
    }

    /// Echo everything; after the client's EOF, finish writing and shut down our write side.
    pub fn echo(id: &str) -> Backend {
        Backend::spawn(localhost(), id, Arc::new(|s| echo_conn(s, b"")))
    }

    /// Write `"{id}\n"` first, then echo (half-close aware).
    pub fn id(id: &str) -> Backend {
        Backend::spawn(localhost(), id, id_handler(id))
    }

    /// An `id` backend (see `id`) on a given address.
    pub fn id_at(addr: SocketAddr, id: &str) -> io::Result<Backend> {
        Backend::spawn_at(addr, id, id_handler(id))
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections whose handler has not returned yet.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept(); the accept loop sees `stop` and ends.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Handlers end when their peer (the balancer, killed before us) closes. Wait for that,
        // bounded; a straggler is left to its socket timeout rather than hang the test.
        wait_until(Duration::from_secs(2), || self.active() == 0);
    }
}

/// The handler of an `id` backend: `"{id}\n"`, then echo.
fn id_handler(id: &str) -> Handler {
    let greeting = format!("{id}\n").into_bytes();
    Arc::new(move |s| echo_conn(s, &greeting))
}

fn accept_loop(
    listener: TcpListener,
    handler: Handler,
    accepted: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else {
            continue;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        active.fetch_add(1, Ordering::SeqCst);
        // The backstop for a handler whose peer never closes.
        let _ = stream.set_read_timeout(Some(HANDLER_IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(HANDLER_IO_TIMEOUT));
        let (handler, done) = (handler.clone(), active.clone());
        // The handler owns the only descriptor of its socket, so dropping it really closes
        // (a reset with SO_LINGER 0 is sent at once, not when some clone goes away).
        let spawned = thread::Builder::new()
            .stack_size(HANDLER_STACK)
            .spawn(move || {
                handler(stream);
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Write `greeting`, then echo until EOF, then shut down the write side and drain (so the
/// close sends a FIN, not a reset).
pub fn echo_conn(mut s: TcpStream, greeting: &[u8]) {
    if !greeting.is_empty() && s.write_all(greeting).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}
