//! Hot reload on SIGHUP: re-read and validate the file, then apply the difference without
//! dropping an established connection. Control path.
//!
//! Order matters: everything that can fail (parsing, validation, binding new sockets) happens
//! before anything is applied, so a failed reload changes nothing. Listeners are matched by
//! name: removed ones stop accepting (their connections finish), added ones are bound and
//! handed to every worker, and kept ones get a reconfigured `ListenerState` that shares the
//! counters, client tables and unchanged backends of the old one.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::{Config, ListenerConfig};
use crate::state::ListenerState;
use crate::worker::{ListenerSocket, WorkerCommand};

use super::{bind_listener, log_listener, Running};

/// What a listener becomes in the new config.
enum Change {
    Add(Arc<ListenerState>, Vec<ListenerSocket>),
    Replace(Arc<ListenerState>),
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
    ] {
        if changed {
            log::warn!("reload: {key} changed; it takes effect only after a restart");
        }
    }
}

pub(super) fn reload(running: &mut Running) {
    let path = running.config.path.clone();
    let started = std::time::Instant::now();
    let new = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            running.shared.reloads_error.fetch_add(1, Ordering::Relaxed);
            log::error!("reload failed, keeping the running config: {e}");
            return;
        }
    };
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
                    Change::Replace(Arc::new(old.reconfigured(l.clone(), global_max)))
                }
            }
            _ => match bind_listener(l, workers) {
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
                for (w, socket) in running.workers.iter().zip(sockets) {
                    w.send(WorkerCommand::AddListener(state.clone(), Some(socket)));
                }
                list.push(state);
            }
            Change::Replace(state) => {
                replaced += 1;
                for w in &running.workers {
                    w.send(WorkerCommand::ReplaceListener(state.clone()));
                }
                list.push(state);
            }
            Change::Keep(state) => list.push(state),
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
