//! Process start and stop: bind every listener once per worker, spawn and pin the workers,
//! then run the control loop on the main thread (signals: reload, graceful drain, stop).
//!
//! Control path. Binding happens before any worker starts, so a bind failure exits with code 1
//! naming the address before traffic flows.

mod cpus;
mod reload;
mod signals;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::config::{Config, ListenerConfig, Protocol};
use crate::net::listener::bind_tcp_reuseport;
use crate::net::udp::bind_udp_reuseport;
use crate::state::SharedState;
use crate::worker::{ListenerSocket, Worker, WorkerCommand, WorkerSetup, WAKER_TOKEN};

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
    waker: Arc<Waker>,
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
}

/// Bind one socket per worker for a listener (TCP or UDP, each with SO_REUSEPORT).
fn bind_listener(l: &ListenerConfig, workers: usize) -> Result<Vec<ListenerSocket>, RuntimeError> {
    (0..workers)
        .map(|_| {
            match l.protocol {
                Protocol::Tcp => bind_tcp_reuseport(l.bind).map(ListenerSocket::Tcp),
                Protocol::Udp => bind_udp_reuseport(l.bind).map(ListenerSocket::Udp),
            }
            .map_err(|source| RuntimeError::Bind {
                listener: l.name.clone(),
                addr: l.bind,
                source,
            })
        })
        .collect()
}

fn log_listener(l: &ListenerConfig) {
    log::info!(
        "listener {} bound on {} ({}, {} backends, balance {:?}, {} SNI routes)",
        l.name,
        l.bind,
        l.protocol.as_str(),
        l.all_backends().count(),
        l.balance,
        l.routes.len()
    );
}

impl Running {
    /// Bind, spawn and pin the workers. Returns once they run.
    pub fn start(config: Config) -> Result<Running, RuntimeError> {
        cpus::raise_nofile_limit();
        let placement = cpus::placement(&config.runtime);
        let shared = Arc::new(SharedState::new(&config, placement.workers));

        let mut per_worker: Vec<Vec<_>> = (0..placement.workers).map(|_| Vec::new()).collect();
        for (l, state) in config.listeners.iter().zip(shared.listeners.load().iter()) {
            let sockets = bind_listener(l, placement.workers)?;
            for (w, socket) in sockets.into_iter().enumerate() {
                per_worker[w].push((state.clone(), Some(socket)));
            }
            log_listener(l);
        }

        if let Some(admin) = &config.admin {
            crate::admin::spawn(admin.bind, admin.token.clone(), shared.clone()).map_err(
                |source| RuntimeError::AdminBind {
                    addr: admin.bind,
                    source,
                },
            )?;
            log::info!("admin API on http://{}", admin.bind);
        }

        let mut workers = Vec::with_capacity(placement.workers);
        for (id, listeners) in per_worker.into_iter().enumerate() {
            let poll = Poll::new().map_err(io_err("cannot create an event loop"))?;
            let waker = Arc::new(
                Waker::new(poll.registry(), WAKER_TOKEN)
                    .map_err(io_err("cannot create a waker"))?,
            );
            let (tx, rx) = crossbeam_channel::unbounded();
            let worker = Worker::new(WorkerSetup {
                id,
                poll,
                listeners,
                shared: shared.clone(),
                commands: rx,
            })
            .map_err(io_err("cannot register a listener"))?;
            let cpu = placement.cpu_for(id);
            let thread = std::thread::Builder::new()
                .name(format!("l4lb-worker-{id}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if !core_affinity::set_for_current(cpu) {
                            log::warn!("worker {id}: cannot pin to CPU {}", cpu.id);
                        }
                    }
                    worker.run();
                })
                .map_err(io_err("cannot spawn a worker thread"))?;
            workers.push(WorkerHandle {
                waker,
                commands: tx,
                thread: Some(thread),
            });
        }
        crate::backend::health::spawn(shared.clone())
            .map_err(io_err("cannot start the health checker"))?;
        log::info!(
            "started {} workers{}",
            workers.len(),
            if placement.pinned { " (pinned)" } else { "" }
        );
        Ok(Running {
            shared,
            config,
            workers,
        })
    }

    fn wake_all(&self) {
        for w in &self.workers {
            let _ = w.waker.wake();
        }
    }

    /// Stop accepting; connections already open go on until they end or `stop` is called.
    pub fn begin_drain(&self) {
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
    }
}

const SIGNAL_TOKEN: Token = Token(0);
/// How often the control loop looks at draining workers and at a reload's load in flight.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Run until SIGTERM or SIGINT and the drain that follows.
pub fn run(config: Config) -> Result<(), RuntimeError> {
    let signals = signals::block_and_listen().map_err(io_err("cannot set up signal handling"))?;
    let mut poll = Poll::new().map_err(io_err("cannot create the control loop"))?;
    poll.registry()
        .register(
            &mut SourceFd(&signals.raw_fd()),
            SIGNAL_TOKEN,
            Interest::READABLE,
        )
        .map_err(io_err("cannot watch signals"))?;
    let mut running = Running::start(config)?;
    let mut events = Events::with_capacity(8);
    let mut drain_deadline: Option<Instant> = None;
    let mut reloader = reload::Reloader::default();
    loop {
        let timeout = (drain_deadline.is_some() || reloader.busy()).then_some(DRAIN_POLL);
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(RuntimeError::Io {
                    what: "control loop".into(),
                    source: e,
                });
            }
        }
        while let Some(signal) = signals.next() {
            match signal {
                signals::Signal::Terminate if drain_deadline.is_some() => {
                    log::info!("second stop signal: exiting now");
                    running.shared.shutdown.store(true, Ordering::Release);
                    return Ok(());
                }
                signals::Signal::Terminate => {
                    let timeout = running.config.runtime.drain_timeout;
                    log::info!(
                        "stop signal: no longer accepting; draining {} connections for up to {:?}",
                        running.shared.active.load(Ordering::Relaxed),
                        timeout
                    );
                    running.begin_drain();
                    reloader.abandon();
                    drain_deadline = Some(Instant::now() + timeout);
                }
                signals::Signal::Reload if drain_deadline.is_some() => {
                    // New listeners would accept until the drain deadline (SPEC).
                    log::warn!("SIGHUP while draining: ignored");
                }
                signals::Signal::Reload => reloader.request(&running),
            }
        }
        reloader.poll(&mut running);
        if let Some(deadline) = drain_deadline {
            if running.all_finished() {
                log::info!("drained: every connection finished; exiting");
                running.stop();
                return Ok(());
            }
            if Instant::now() >= deadline {
                log::info!(
                    "drain timeout: closing {} remaining connections",
                    running.shared.active.load(Ordering::Relaxed)
                );
                running.stop();
                return Ok(());
            }
        }
    }
}
