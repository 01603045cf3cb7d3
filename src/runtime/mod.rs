//! Process start and stop: bind every listener once per worker, spawn and pin the workers,
//! then wait for signals on the main thread.
//!
//! Control path. Binding happens before any worker starts, so a bind failure exits with code 1
//! naming the address before traffic flows.

mod cpus;
mod signals;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::{Poll, Waker};

use crate::config::{Config, Protocol};
use crate::net::listener::bind_tcp_reuseport;
use crate::state::SharedState;
use crate::worker::{Worker, WorkerSetup, WAKER_TOKEN};

/// A failure that stops the process with exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("listener {listener}: cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("listener {listener}: protocol udp is not supported by this build yet")]
    UdpUnsupported { listener: String },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

/// A running balancer: its workers and the handles to stop them.
#[derive(Debug)]
pub struct Running {
    pub shared: Arc<SharedState>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    /// Ask every worker to stop and wait for them.
    pub fn stop(self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for w in &self.wakers {
            let _ = w.wake();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Bind, spawn and pin the workers. Returns once they run.
pub fn start(config: &Config) -> Result<Running, RuntimeError> {
    cpus::raise_nofile_limit();
    for l in &config.listeners {
        if l.protocol == Protocol::Udp {
            return Err(RuntimeError::UdpUnsupported {
                listener: l.name.clone(),
            });
        }
    }
    let placement = cpus::placement(&config.runtime);
    let shared = Arc::new(SharedState::new(config, placement.workers));

    let mut setups = Vec::with_capacity(placement.workers);
    for id in 0..placement.workers {
        let poll = Poll::new().map_err(io_err("cannot create an event loop"))?;
        let mut sockets = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let socket = bind_tcp_reuseport(l.bind).map_err(|source| RuntimeError::Bind {
                listener: l.name.clone(),
                addr: l.bind,
                source,
            })?;
            sockets.push(Some(socket));
        }
        setups.push(WorkerSetup {
            id,
            poll,
            listeners: sockets,
            shared: shared.clone(),
        });
    }
    for l in &config.listeners {
        log::info!(
            "listener {} bound on {} ({}, {} backends, balance {:?})",
            l.name,
            l.bind,
            l.protocol.as_str(),
            l.backends.len(),
            l.balance
        );
    }

    let mut wakers = Vec::with_capacity(setups.len());
    let mut workers = Vec::with_capacity(setups.len());
    for setup in setups {
        let waker = Waker::new(setup.poll.registry(), WAKER_TOKEN)
            .map_err(io_err("cannot create a waker"))?;
        wakers.push(Arc::new(waker));
        workers.push(Worker::new(setup).map_err(io_err("cannot register a listener"))?);
    }
    let mut threads = Vec::with_capacity(workers.len());
    for (id, worker) in workers.into_iter().enumerate() {
        let cpu = placement.cpu_for(id);
        let handle = std::thread::Builder::new()
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
        threads.push(handle);
    }
    log::info!(
        "started {} workers{}",
        threads.len(),
        if placement.pinned { " (pinned)" } else { "" }
    );
    Ok(Running {
        shared,
        wakers,
        threads,
    })
}

/// Run until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), RuntimeError> {
    let signals = signals::block_and_listen().map_err(io_err("cannot set up signal handling"))?;
    let running = start(&config)?;
    loop {
        match signals.wait() {
            signals::Signal::Terminate => {
                log::info!("shutting down");
                running.stop();
                log::info!("stopped");
                return Ok(());
            }
            signals::Signal::Reload => {
                log::warn!(
                    "SIGHUP received: reload is not implemented yet; keeping the current config"
                );
            }
        }
    }
}
