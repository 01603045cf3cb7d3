//! Binding: every listener's sockets (inherited ones first, from a takeover or systemd, then
//! fresh SO_REUSEPORT binds up to one per worker) and the admin socket, then starting the
//! threads. Split in two (`Bound::bind`, `Bound::spawn`) so that root is dropped in between:
//! after every bind, before any thread exists.
//!
//! Control path, at start and on reload (`bind_listener`). Invariants: every socket bound or
//! inherited is either handed to a worker or closed with a log line; a duplicate of each is
//! kept in the `Handover` for a later takeover.

use std::sync::Arc;

use core_affinity::CoreId;
use mio::Poll;

use crate::config::{Config, ListenerConfig, Protocol};
use crate::net::inherit::{self, Inherited};
use crate::net::listener::bind_tcp_reuseport;
use crate::net::udp::bind_udp_reuseport;
use crate::state::{ListenerState, SharedState};
use crate::worker::cpu_group::WorkerThread;
use crate::worker::waker::WorkerWaker;
use crate::worker::{waker_token, ListenerSocket, Worker, WorkerSetup, MAX_MEMBERS};

use super::cpus;
use super::takeover::Handover;
use super::{io_err, Running, RuntimeError, WorkerHandle};

/// Every socket bound (or inherited), no thread started yet: the point at which root is
/// dropped.
#[derive(Debug)]
pub struct Bound {
    config: Config,
    shared: Arc<SharedState>,
    placement: cpus::Placement,
    per_worker: Vec<Vec<(Arc<ListenerState>, Option<ListenerSocket>)>>,
    admin: Option<mio::net::TcpListener>,
    handover: Handover,
}

/// The sockets of a listener: every inherited one for its protocol and address (a worker may
/// get several: none may be closed, see `takeover.rs`), then fresh SO_REUSEPORT binds up to one
/// per worker. An inherited socket without SO_REUSEPORT (systemd's default) admits no sibling:
/// the workers then share it, each through a descriptor of its own.
pub(super) fn bind_listener(
    l: &ListenerConfig,
    workers: usize,
    inherited: &mut Inherited,
) -> Result<Vec<ListenerSocket>, RuntimeError> {
    let err = |source| RuntimeError::Bind {
        listener: l.name.clone(),
        addr: l.bind,
        source,
    };
    let mut fds = inherited.take(l.protocol, l.bind);
    let adopted = fds.len();
    if let Some(first) = fds.first() {
        if !inherit::reuses_port(first) {
            for i in adopted..workers {
                fds.push(inherit::dup(&fds[i % adopted]).map_err(err)?);
            }
        }
        log::info!(
            "listener {}: {adopted} inherited {} sockets on {}",
            l.name,
            l.protocol.as_str(),
            l.bind
        );
    }
    let mut sockets = Vec::with_capacity(fds.len().max(workers));
    for fd in fds {
        sockets.push(
            match l.protocol {
                Protocol::Tcp => inherit::adopt_tcp(fd).map(ListenerSocket::Tcp),
                Protocol::Udp => inherit::adopt_udp(fd, l.bind).map(ListenerSocket::Udp),
            }
            .map_err(err)?,
        );
    }
    while sockets.len() < workers {
        sockets.push(
            match l.protocol {
                Protocol::Tcp => bind_tcp_reuseport(l.bind).map(ListenerSocket::Tcp),
                Protocol::Udp => bind_udp_reuseport(l.bind).map(ListenerSocket::Udp),
            }
            .map_err(err)?,
        );
    }
    Ok(sockets)
}

/// Keep a duplicate of each of a listener's sockets for a takeover.
pub(super) fn record(handover: &mut Handover, l: &ListenerConfig, sockets: &[ListenerSocket]) {
    for s in sockets {
        match s {
            ListenerSocket::Tcp(t) => handover.record(l.protocol, l.bind, t),
            ListenerSocket::Udp(u) => handover.record(l.protocol, l.bind, u),
        }
    }
}

pub(super) fn log_listener(l: &ListenerConfig) {
    log::info!(
        "listener {} bound on {} ({}, {} backends, balance {}, {} SNI routes)",
        l.name,
        l.bind,
        l.protocol.as_str(),
        l.all_backends().count(),
        l.balance.as_str(),
        l.routes.len()
    );
}

impl Bound {
    /// Bind every listener once per worker (taking inherited sockets first) and the admin
    /// socket. Nothing runs yet.
    pub fn bind(config: Config, mut inherited: Inherited) -> Result<Bound, RuntimeError> {
        cpus::raise_nofile_limit();
        cpus::warn_if_nofile_low(&config);
        let placement = cpus::placement(&config.runtime);
        let shared = Arc::new(SharedState::new(&config, placement.workers));
        let mut handover = Handover::default();

        let mut per_worker: Vec<Vec<_>> = (0..placement.workers).map(|_| Vec::new()).collect();
        for (l, state) in config.listeners.iter().zip(shared.listeners.load().iter()) {
            let sockets = bind_listener(l, placement.workers, &mut inherited)?;
            record(&mut handover, l, &sockets);
            for (i, socket) in sockets.into_iter().enumerate() {
                per_worker[i % placement.workers].push((state.clone(), Some(socket)));
            }
            log_listener(l);
        }

        let admin = match &config.admin {
            Some(admin) => {
                let addr = admin.bind;
                let err = |source| RuntimeError::AdminBind { addr, source };
                let mut fds = inherited.take(Protocol::Tcp, addr).into_iter();
                let listener = match fds.next() {
                    Some(fd) => inherit::adopt_tcp(fd).map_err(err)?,
                    None => mio::net::TcpListener::bind(addr).map_err(err)?,
                };
                handover.record(Protocol::Tcp, addr, &listener);
                Some(listener)
            }
            None => None,
        };
        for (protocol, addr, n) in inherited.leftovers() {
            log::info!(
                "closing {n} inherited {} sockets on {addr}: no listener binds it now",
                protocol.as_str()
            );
        }
        Ok(Bound {
            config,
            shared,
            placement,
            per_worker,
            admin,
            handover,
        })
    }

    /// Start the admin thread, the workers and the health checker. Returns once they run.
    pub fn spawn(self) -> Result<Running, RuntimeError> {
        let Bound {
            config,
            shared,
            placement,
            per_worker,
            admin,
            handover,
        } = self;
        if let (Some(listener), Some(admin)) = (admin, &config.admin) {
            crate::admin::spawn_on(listener, admin.token.clone(), shared.clone())
                .map_err(io_err("cannot start the admin thread"))?;
            log::info!("admin API on http://{}", admin.bind);
        }

        // The workers of each thread: those pinned to one CPU share it and its epoll
        // (`worker::cpu_group`), up to as many as one epoll's tokens can tell apart.
        let mut threads: Vec<(Option<CoreId>, Vec<usize>)> = Vec::new();
        for id in 0..per_worker.len() {
            let cpu = placement.cpu_for(id);
            let shared_with = threads
                .iter_mut()
                .find(|(c, ids)| cpu.is_some() && *c == cpu && ids.len() < MAX_MEMBERS);
            match shared_with {
                Some((_, ids)) => ids.push(id),
                None => threads.push((cpu, vec![id])),
            }
        }
        let mut per_worker: Vec<_> = per_worker.into_iter().map(Some).collect();
        let mut handles: Vec<Option<WorkerHandle>> = per_worker.iter().map(|_| None).collect();
        for (cpu, ids) in threads {
            let poll = Poll::new().map_err(io_err("cannot create an event loop"))?;
            let mut group = Vec::with_capacity(ids.len());
            for (member, &id) in ids.iter().enumerate() {
                let registry = poll
                    .registry()
                    .try_clone()
                    .map_err(io_err("cannot share an event loop"))?;
                let waker = Arc::new(
                    WorkerWaker::new(&registry, waker_token(member))
                        .map_err(io_err("cannot create a waker"))?,
                );
                let (tx, rx) = crossbeam_channel::unbounded();
                let listeners = per_worker[id].take().unwrap_or_default();
                group.push(
                    Worker::new(WorkerSetup {
                        id,
                        registry,
                        member,
                        listeners,
                        shared: shared.clone(),
                        commands: rx,
                    })
                    .map_err(io_err("cannot register a listener"))?,
                );
                handles[id] = Some(WorkerHandle {
                    waker,
                    commands: tx,
                    thread: None,
                });
            }
            let first = ids[0];
            let run = WorkerThread::new(poll, group);
            let thread = std::thread::Builder::new()
                .name(format!("l4lb-worker-{first}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if !core_affinity::set_for_current(cpu) {
                            log::warn!("worker {first}: cannot pin to CPU {}", cpu.id);
                        }
                    }
                    run.run();
                })
                .map_err(io_err("cannot spawn a worker thread"))?;
            // The control thread waits for a thread through its first worker's handle.
            if let Some(handle) = handles[first].as_mut() {
                handle.thread = Some(thread);
            }
        }
        let workers: Vec<WorkerHandle> = handles.into_iter().flatten().collect();
        super::health::spawn(shared.clone()).map_err(io_err("cannot start the health checker"))?;
        let access_log = crate::access_queue::spawn_writer(shared.clone())
            .map_err(io_err("cannot start the access-log writer"))?;
        log::info!(
            "started {} workers{}",
            workers.len(),
            if placement.pinned { " (pinned)" } else { "" }
        );
        Ok(Running {
            shared,
            config,
            workers,
            handover,
            access_log: Some(access_log),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::os::fd::OwnedFd;
    use std::path::Path;

    fn listener(toml_bind: &str) -> ListenerConfig {
        let text = format!(
            "[[listener]]\nname = \"t\"\nprotocol = \"tcp\"\nbind = \"{toml_bind}\"\n\
             balance = \"round_robin\"\nbackends = [ {{ addr = \"127.0.0.1:9\" }} ]\n"
        );
        let c = Config::parse(&text, Path::new("t.toml")).expect("config");
        c.listeners[0].clone()
    }

    fn inherited(addr: SocketAddr, n: usize) -> Inherited {
        let mut set = Inherited::default();
        for _ in 0..n {
            let l = bind_tcp_reuseport(addr).expect("bind");
            set.insert(
                Protocol::Tcp,
                addr,
                OwnedFd::from(std::net::TcpListener::from(l)),
            )
            .expect("insert");
        }
        set
    }

    /// Closing a SO_REUSEPORT socket resets what waits in its queue: a takeover by a process
    /// with fewer workers must keep every inherited socket (the test fails if it drops one).
    #[test]
    fn keeps_every_inherited_socket_and_binds_up_to_one_per_worker() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let l = listener(&port.to_string());
        let mut set = inherited(port, 3);
        assert_eq!(bind_listener(&l, 2, &mut set).expect("bind").len(), 3);
        assert!(set.is_empty());
        let mut set = inherited(port, 1);
        assert_eq!(bind_listener(&l, 4, &mut set).expect("bind").len(), 4);
    }
}
