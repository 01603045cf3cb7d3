//! Process start and stop: bind every listener once per worker (`bind.rs`; inherited sockets
//! first), drop root, spawn and pin the workers, then run the control loop on the main thread:
//! signals (reload, graceful drain, stop, SIGUSR2 upgrade), the control socket (a takeover
//! hands the sockets over, then this process drains), sd_notify.
//!
//! Control path. Binding happens before any worker starts, so a bind failure exits with code 1
//! naming the address before traffic flows; a takeover tells the old process to drain only
//! once this one serves.

mod bind;
pub mod control_socket;
mod cpus;
pub mod health;
pub mod privileges;
mod reload;
pub mod sd_notify;
mod signals;
pub mod takeover;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::config::Config;
use crate::net::inherit::Inherited;
use crate::state::SharedState;
use crate::worker::WorkerCommand;
pub use bind::Bound;
use bind::{bind_listener, log_listener, record};
use control_socket::ControlSocket;
use privileges::PrivilegeError;
use sd_notify::Notifier;
use takeover::{Handover, TakeoverError};

/// A failure that stops the process with exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("listener {listener}: cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("admin: cannot bind {addr}: {source}")]
    AdminBind { addr: SocketAddr, source: io::Error },
    #[error("runtime.control_socket: cannot listen on {path}: {source}")]
    ControlSocket { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Takeover(#[from] TakeoverError),
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

/// A worker as the control thread sees it.
#[derive(Debug)]
struct WorkerHandle {
    waker: Arc<crate::worker::waker::WorkerWaker>,
    commands: Sender<WorkerCommand>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    fn send(&self, command: WorkerCommand) {
        // A worker that already exited (drain) has nothing left to change.
        let _ = self.commands.send(command);
        let _ = self.waker.wake();
    }
}

/// A running balancer: its workers and the handles to steer and stop them.
#[derive(Debug)]
pub struct Running {
    pub shared: Arc<SharedState>,
    config: Config,
    workers: Vec<WorkerHandle>,
    /// A duplicate of every listening socket, for a takeover (emptied at drain).
    handover: Handover,
    /// The access-log writer thread (`access_queue`), until `stop` waits for it.
    access_log: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn wake_all(&self) {
        for w in &self.workers {
            let _ = w.waker.wake();
        }
    }

    /// Stop accepting; connections already open go on until they end or `stop` is called.
    /// This process's duplicates of the listening sockets close here: without a takeover that
    /// closes the sockets, so the kernel refuses new connections.
    pub fn begin_drain(&mut self) {
        self.handover.clear();
        self.shared.draining.store(true, Ordering::Release);
        self.wake_all();
    }

    fn all_finished(&self) -> bool {
        self.workers
            .iter()
            .all(|w| w.thread.as_ref().is_none_or(|t| t.is_finished()))
    }

    /// Close everything now and wait for the workers.
    pub fn stop(mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.wake_all();
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        // The writer ends once the lines the workers queued are out; a stderr that blocks
        // must not block the exit, so wait a bounded time only.
        if let Some(t) = self.access_log.take() {
            self.shared.access_log.wake();
            let deadline = Instant::now() + ACCESS_LOG_FLUSH;
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }

    /// Drain as `drain_timeout_s` says, blocking: for a start that fails after its workers
    /// began to accept (its connections still finish).
    fn drain_and_stop(mut self) {
        self.begin_drain();
        let deadline = Instant::now() + self.config.runtime.drain_timeout;
        while !self.all_finished() && Instant::now() < deadline {
            std::thread::sleep(DRAIN_POLL);
        }
        self.stop();
    }
}

const SIGNAL_TOKEN: Token = Token(0);
/// How long an exit waits for the access-log writer to write out the queued lines.
const ACCESS_LOG_FLUSH: Duration = Duration::from_secs(2);
const CONTROL_TOKEN: Token = Token(1);
/// How often the control loop looks at draining workers, at a reload's load in flight and at
/// an upgrade child.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// How the process comes by its listening sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Bind them (taking any systemd passed, `LISTEN_FDS`).
    Fresh,
    /// Take them from the process on `runtime.control_socket`, then tell it to drain.
    Takeover,
}

/// The control socket to listen on: the configured path, or for a takeover a staging path
/// next to it that becomes the real one once the old process lets go.
fn bind_control(config: &Config, start: Start) -> Result<Option<ControlSocket>, RuntimeError> {
    let Some(path) = &config.runtime.control_socket else {
        return Ok(None);
    };
    match start {
        Start::Fresh => ControlSocket::bind(path),
        Start::Takeover => takeover::bind_staging(path),
    }
    .map(Some)
    .map_err(|source| RuntimeError::ControlSocket {
        path: path.clone(),
        source,
    })
}

/// Run until SIGTERM or SIGINT and the drain that follows, or until a takeover and the drain
/// that follows.
pub fn run(config: Config, start: Start) -> Result<(), RuntimeError> {
    let notifier = Notifier::from_env();
    // The binary to start for an upgrade (SIGUSR2), named now: once a package replaces it,
    // /proc/self/exe names the deleted file.
    let exe = std::env::current_exe().ok();
    let signals = signals::block_and_listen().map_err(io_err("cannot set up signal handling"))?;
    let mut poll = Poll::new().map_err(io_err("cannot create the control loop"))?;
    poll.registry()
        .register(
            &mut SourceFd(&signals.raw_fd()),
            SIGNAL_TOKEN,
            Interest::READABLE,
        )
        .map_err(io_err("cannot watch signals"))?;

    let (client, inherited) = match (start, &config.runtime.control_socket) {
        (Start::Takeover, Some(path)) => {
            let (client, inherited) = takeover::Client::request(path)?;
            log::info!(
                "takeover: received {} listening sockets from process {}",
                inherited.len(),
                client.old_pid
            );
            (Some(client), inherited)
        }
        _ => (None, Inherited::from_listen_fds()),
    };
    let mut control = bind_control(&config, start)?;
    let user = config.runtime.user.clone();
    let target = privileges::resolve(user.as_deref())?;
    let bound = Bound::bind(config, inherited)?;
    if let (Some(target), Some(name)) = (target, &user) {
        if let Some(c) = &control {
            c.chown(target.uid, target.gid).map_err(io_err(format!(
                "cannot give {} to {name}",
                c.path().display()
            )))?;
        }
        privileges::drop_to(name, target)?;
    }
    let mut running = bound.spawn()?;

    match client {
        Some(client) => match client.finish() {
            Ok(old_pid) => {
                if let (Some(c), Some(path)) =
                    (&mut control, &running.config.runtime.control_socket)
                {
                    if let Err(e) = c.rename(path) {
                        log::error!(
                            "takeover: cannot move the control socket to {}: {e}; the next takeover needs a restart",
                            path.display()
                        );
                    }
                }
                log::info!("takeover: process {old_pid} is draining; serving");
                notifier.main_pid();
            }
            Err(e) => {
                // The old process may still serve: finish what this one accepted, then fail.
                log::error!("{e}; draining and exiting");
                if let Some(c) = &control {
                    c.remove();
                }
                running.drain_and_stop();
                return Err(e.into());
            }
        },
        None => notifier.ready(),
    }
    if let Some(c) = &control {
        poll.registry()
            .register(
                &mut SourceFd(&c.raw_fd()),
                CONTROL_TOKEN,
                Interest::READABLE,
            )
            .map_err(io_err("cannot watch the control socket"))?;
        log::info!("control socket on {}", c.path().display());
    }

    let mut events = Events::with_capacity(8);
    let mut drain_deadline: Option<Instant> = None;
    let mut upgrade: Option<Child> = None;
    let mut reloader = reload::Reloader::default();
    let result = loop {
        let busy = drain_deadline.is_some() || upgrade.is_some() || reloader.busy();
        let timeout = busy.then_some(DRAIN_POLL);
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                break Err(RuntimeError::Io {
                    what: "control loop".into(),
                    source: e,
                });
            }
        }
        let mut drain = None;
        if events.iter().any(|e| e.token() == CONTROL_TOKEN) {
            if let Some(c) = &control {
                if let Some(pid) = serve_control(c, &running, drain_deadline.is_some()) {
                    drain = Some(format!("process {pid} took over"));
                }
            }
        }
        while let Some(signal) = signals.next() {
            match signal {
                signals::Signal::Terminate if drain_deadline.is_some() => {
                    log::info!("second stop signal: exiting now");
                    running.shared.shutdown.store(true, Ordering::Release);
                    remove_control(control.take(), &running);
                    return Ok(());
                }
                signals::Signal::Terminate => drain = Some("stop signal".to_string()),
                signals::Signal::Reload if drain_deadline.is_some() => {
                    // New listeners would accept until the drain deadline (SPEC).
                    log::warn!("SIGHUP while draining: ignored");
                }
                signals::Signal::Reload => {
                    if !reloader.busy() {
                        notifier.reloading();
                    }
                    reloader.request(&running);
                    if !reloader.busy() {
                        notifier.ready();
                    }
                }
                signals::Signal::Upgrade => {
                    upgrade = start_upgrade(exe.as_deref(), &running, upgrade)
                }
            }
        }
        if let Some(why) = drain.filter(|_| drain_deadline.is_none()) {
            let timeout = running.config.runtime.drain_timeout;
            log::info!(
                "{why}: no longer accepting; draining {} connections for up to {:?}",
                running.shared.active.load(Ordering::Relaxed),
                timeout
            );
            if running.shared.is_handed_over() {
                // The socket file is the new process's now (or soon): leave it alone.
                if let Some(c) = control.take() {
                    let _ = poll.registry().deregister(&mut SourceFd(&c.raw_fd()));
                }
            } else {
                notifier.stopping();
            }
            running.begin_drain();
            if reloader.busy() {
                notifier.ready();
            }
            reloader.abandon();
            drain_deadline = Some(Instant::now() + timeout);
        }
        if let Some(child) = &mut upgrade {
            if let Ok(Some(status)) = child.try_wait() {
                if !status.success() {
                    log::error!("upgrade: the new process exited with {status}; still serving");
                }
                upgrade = None;
            }
        }
        if reloader.busy() {
            reloader.poll(&mut running);
            if !reloader.busy() {
                notifier.ready();
            }
        }
        if let Some(deadline) = drain_deadline {
            if running.all_finished() {
                log::info!("drained: every connection finished; exiting");
                break Ok(());
            }
            if Instant::now() >= deadline {
                log::info!(
                    "drain timeout: closing {} remaining connections",
                    running.shared.active.load(Ordering::Relaxed)
                );
                break Ok(());
            }
        }
    };
    remove_control(control, &running);
    running.stop();
    result
}

/// Remove the control socket file, unless a takeover gave it to another process.
fn remove_control(control: Option<ControlSocket>, running: &Running) {
    if let Some(c) = control {
        if !running.shared.is_handed_over() {
            c.remove();
        }
    }
}

/// Answer the control connections that wait. `Some(pid)`: process `pid` took the sockets
/// over; `handed_over` is set and this process must drain.
fn serve_control(control: &ControlSocket, running: &Running, draining: bool) -> Option<u32> {
    loop {
        let conn = match control.accept(takeover::MESSAGE_TIMEOUT) {
            Ok(Some(conn)) => conn,
            Ok(None) => return None,
            Err(e) => {
                log::warn!("control socket: accept failed: {e}");
                return None;
            }
        };
        match takeover::serve(&conn, &running.handover, draining) {
            Ok(Some(pid)) => {
                running.shared.handed_over.store(true, Ordering::Release);
                return Some(pid);
            }
            Ok(None) => log::warn!("takeover: the new process went away first; still serving"),
            Err(e) => log::warn!("takeover: {e}; still serving"),
        }
    }
}

/// SIGUSR2: start `exe --config FILE --takeover` (in this service's cgroup, so systemd follows
/// the new main PID). One at a time.
fn start_upgrade(exe: Option<&Path>, running: &Running, current: Option<Child>) -> Option<Child> {
    if current.is_some() {
        log::warn!("upgrade signal: an upgrade is already running; ignored");
        return current;
    }
    if running.config.runtime.control_socket.is_none() {
        log::error!("upgrade signal: runtime.control_socket is not set; ignored");
        return None;
    }
    let Some(exe) = exe else {
        log::error!("upgrade signal: the path of this binary is unknown; ignored");
        return None;
    };
    match Command::new(exe)
        .arg("--config")
        .arg(&running.config.path)
        .arg("--takeover")
        .spawn()
    {
        Ok(child) => {
            log::info!(
                "upgrade signal: started {} (pid {})",
                exe.display(),
                child.id()
            );
            Some(child)
        }
        Err(e) => {
            log::error!("upgrade signal: cannot start {}: {e}", exe.display());
            None
        }
    }
}
