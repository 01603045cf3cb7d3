//! Hot reload on SIGHUP: re-read and validate the file, then apply the difference without
//! dropping an established connection. Control path.
//!
//! Two steps. Loading (read, parse, validate, resolve host names) runs on a thread of its
//! own, because the system resolver blocks for as long as DNS is down: the signal thread stays
//! free for SIGTERM and the drain deadline. The whole load has one deadline
//! ([`LOAD_DEADLINE`]); a load that misses it fails the reload as a whole. At most one load
//! runs at a time: a SIGHUP during a load asks for one more afterwards (the file may have
//! changed again), and while a load that missed its deadline is still stuck in the resolver,
//! a new reload is refused rather than piling up blocked threads.
//!
//! Applying is all or nothing (SPEC): everything that can fail (binding new sockets) happens
//! before anything live is touched, so a failed reload changes nothing, not even a weight.
//! Listeners are matched by name: removed ones stop accepting (their connections finish),
//! added ones are bound and handed to every worker, and kept ones get a reconfigured
//! `ListenerState` that shares the counters, client tables and unchanged backends of the old
//! one; only then do kept backends take their new weight and cap.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};

use crate::config::{Config, ConfigError, ListenerConfig};
use crate::state::ListenerState;
use crate::worker::{ListenerSocket, WorkerCommand};

use crate::net::inherit::Inherited;

use super::{bind_listener, log_listener, record, Running};

/// How long one reload's load (file, validation, every host name) may take. The system
/// resolver tries each name server for 5 s by default (resolv.conf `timeout`), twice
/// (`attempts`): 10 s covers one lost query and its retry; a DNS outage fails the reload
/// instead of holding it open.
pub(super) const LOAD_DEADLINE: Duration = Duration::from_secs(10);

/// A load in progress on its own thread.
struct Loading {
    result: Receiver<Result<Config, ConfigError>>,
    thread: JoinHandle<()>,
    deadline: Instant,
    started: Instant,
}

/// The reload state of the control loop: at most one load in flight.
#[derive(Default)]
pub(super) struct Reloader {
    loading: Option<Loading>,
    /// A SIGHUP arrived during the load in flight: load again once it ends.
    again: bool,
    /// A load that missed its deadline and whose thread is still blocked (in the resolver).
    stuck: Option<JoinHandle<()>>,
}

impl Reloader {
    /// SIGHUP: start loading the file, or ask for one more load after the one in flight.
    pub(super) fn request(&mut self, running: &Running) {
        if self.loading.is_some() {
            self.again = true;
            return;
        }
        if self.stuck.as_ref().is_some_and(|t| !t.is_finished()) {
            running.shared.reloads_error.fetch_add(1, Ordering::Relaxed);
            log::error!(
                "reload failed, keeping the running config: an earlier reload is still \
                 waiting for the name resolver"
            );
            return;
        }
        self.stuck = None;
        match spawn_load(running.config.path.clone()) {
            Ok(loading) => self.loading = Some(loading),
            Err(e) => {
                running.shared.reloads_error.fetch_add(1, Ordering::Relaxed);
                log::error!("reload failed, keeping the running config: cannot start: {e}");
            }
        }
    }

    /// Whether a load is in flight (the control loop then polls its result often).
    pub(super) fn busy(&self) -> bool {
        self.loading.is_some()
    }

    /// Forget a load in flight (the process drains: SIGHUP no longer applies).
    pub(super) fn abandon(&mut self) {
        if let Some(l) = self.loading.take() {
            log::info!("reload abandoned: draining");
            self.stuck = Some(l.thread);
        }
        self.again = false;
    }

    /// Apply the load in flight once it has ended, or fail it at its deadline.
    pub(super) fn poll(&mut self, running: &mut Running) {
        let Some(loading) = &self.loading else {
            return;
        };
        let outcome = match loading.result.try_recv() {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(TryRecvError::Empty) if Instant::now() < loading.deadline => return,
            Err(TryRecvError::Empty) => Err(format!(
                "{}: not loaded within {LOAD_DEADLINE:?} (host names not resolved in time?)",
                running.config.path.display()
            )),
            Err(TryRecvError::Disconnected) => Err(format!(
                "{}: the loading thread ended without a result",
                running.config.path.display()
            )),
        };
        let Some(loading) = self.loading.take() else {
            return;
        };
        if !loading.thread.is_finished() {
            self.stuck = Some(loading.thread);
        }
        match outcome {
            Ok(new) => apply(running, new, loading.started),
            Err(e) => {
                running.shared.reloads_error.fetch_add(1, Ordering::Relaxed);
                log::error!("reload failed, keeping the running config: {e}");
            }
        }
        if std::mem::take(&mut self.again) {
            self.request(running);
        }
    }
}

fn spawn_load(path: PathBuf) -> std::io::Result<Loading> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let thread = std::thread::Builder::new()
        .name("l4lb-reload".into())
        .spawn(move || {
            // The receiver is gone when the deadline passed: the result is dropped.
            let _ = tx.send(Config::load(&path));
        })?;
    let started = Instant::now();
    Ok(Loading {
        result: rx,
        thread,
        deadline: started + LOAD_DEADLINE,
        started,
    })
}

/// What a listener becomes in the new config.
/// Built without touching anything live: a replaced listener's new state (which changes kept
/// backends in place) is made only once every bind has succeeded.
enum Change {
    Add(Arc<ListenerState>, Vec<ListenerSocket>),
    Replace(Arc<ListenerState>, Box<ListenerConfig>),
    Keep(Arc<ListenerState>),
}

/// Listener settings that need new sockets when they change.
fn needs_rebind(old: &ListenerConfig, new: &ListenerConfig) -> bool {
    old.bind != new.bind || old.protocol != new.protocol
}

fn warn_restart_only(old: &Config, new: &Config) {
    let (o, n) = (&old.runtime, &new.runtime);
    for (key, changed) in [
        ("runtime.workers", o.workers != n.workers),
        ("runtime.pin_cpus", o.pin_cpus != n.pin_cpus),
        ("runtime.cpus", o.cpus != n.cpus),
        ("runtime.splice", o.splice != n.splice),
        ("admin", old.admin != new.admin),
        ("runtime.user", o.user != n.user),
        (
            "runtime.control_socket",
            o.control_socket != n.control_socket,
        ),
    ] {
        if changed {
            log::warn!("reload: {key} changed; it takes effect only after a restart");
        }
    }
}

/// Apply a loaded config: bind what is new (the only step that can fail), then switch.
fn apply(running: &mut Running, new: Config, started: Instant) {
    let path = running.config.path.clone();
    let shared = running.shared.clone();
    let global_max = new.runtime.max_connections;
    let workers = running.workers.len();
    let current = shared.listeners.load_full();

    let mut changes = Vec::with_capacity(new.listeners.len());
    for l in &new.listeners {
        let old = current.iter().find(|s| s.config.name == l.name);
        let change = match old {
            Some(old) if !needs_rebind(&old.config, l) => {
                if old.config == *l {
                    Change::Keep(old.clone())
                } else {
                    Change::Replace(old.clone(), Box::new(l.clone()))
                }
            }
            _ => match bind_listener(l, workers, &mut Inherited::default()) {
                Ok(sockets) => Change::Add(
                    Arc::new(ListenerState::new(l.clone(), global_max, workers)),
                    sockets,
                ),
                Err(e) => {
                    shared.reloads_error.fetch_add(1, Ordering::Relaxed);
                    log::error!(
                        "reload failed, keeping the running config: {}: {e}",
                        path.display()
                    );
                    return;
                }
            },
        };
        changes.push(change);
    }

    // Nothing can fail from here on.
    warn_restart_only(&running.config, &new);
    shared.max_connections.store(global_max, Ordering::Relaxed);
    shared
        .udp_max_connections
        .store(new.udp_global_cap(), Ordering::Relaxed);
    let (mut added, mut replaced, mut removed) = (0, 0, 0);
    for old in current.iter() {
        let kept = new
            .listeners
            .iter()
            .any(|l| l.name == old.config.name && !needs_rebind(&old.config, l));
        if !kept {
            removed += 1;
            log::info!(
                "reload: listener {} removed; its connections finish",
                old.config.name
            );
            running
                .handover
                .forget(old.config.protocol, old.config.bind);
            for w in &running.workers {
                w.send(WorkerCommand::RemoveListener(old.config.name.clone()));
            }
        }
    }
    let mut list = Vec::with_capacity(changes.len());
    for change in changes {
        match change {
            Change::Add(state, sockets) => {
                added += 1;
                log_listener(&state.config);
                record(&mut running.handover, &state.config, &sockets);
                for (w, socket) in running.workers.iter().zip(sockets) {
                    w.send(WorkerCommand::AddListener(state.clone(), Some(socket)));
                }
                list.push(state);
            }
            Change::Replace(old, config) => {
                replaced += 1;
                let state = Arc::new(old.reconfigured(*config, global_max));
                for w in &running.workers {
                    w.send(WorkerCommand::ReplaceListener(state.clone()));
                }
                list.push(state);
            }
            Change::Keep(state) => {
                if state.restore_file_weights() {
                    log::info!(
                        "reload: listener {}: weights set through the admin API reset to the file's",
                        state.config.name
                    );
                }
                list.push(state);
            }
        }
    }
    shared.listeners.store(Arc::new(list));
    running.config = new;
    shared.reloads_ok.fetch_add(1, Ordering::Relaxed);
    log::info!(
        "reloaded {} in {:?}: {added} listeners added, {replaced} changed, {removed} removed",
        path.display(),
        started.elapsed()
    );
}
