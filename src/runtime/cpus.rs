//! Worker count and CPU placement, and the file descriptor limit.
//!
//! Control path. `workers = "auto"` means one worker per CPU in the process's affinity mask
//! (so `taskset -c 2,3 l4lb` gives two workers on CPUs 2 and 3). Worker i is pinned to
//! `cpus[i % len]`, or to the i-th CPU of the mask (modulo) when `cpus` is not given.

use core_affinity::CoreId;

use crate::config::{RuntimeConfig, Workers};

#[derive(Debug)]
pub struct Placement {
    pub workers: usize,
    pub pinned: bool,
    cpus: Vec<CoreId>,
}

impl Placement {
    pub fn cpu_for(&self, worker: usize) -> Option<CoreId> {
        if !self.pinned || self.cpus.is_empty() {
            return None;
        }
        Some(self.cpus[worker % self.cpus.len()])
    }
}

pub fn placement(runtime: &RuntimeConfig) -> Placement {
    let mask = core_affinity::get_core_ids().unwrap_or_default();
    let cpus: Vec<CoreId> = match &runtime.cpus {
        Some(ids) => ids.iter().map(|&id| CoreId { id }).collect(),
        None => mask.clone(),
    };
    let workers = match runtime.workers {
        Workers::Count(n) => n,
        Workers::Auto => match &runtime.cpus {
            Some(ids) => ids.len(),
            None => mask.len().max(1),
        },
    };
    Placement {
        workers,
        pinned: runtime.pin_cpus,
        cpus,
    }
}

/// Raise the soft RLIMIT_NOFILE to the hard limit: a proxy holds two descriptors per
/// connection (plus pipes), and the usual soft limit of 1024 would cap it near 500.
pub fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::warn!("cannot raise the open files limit from {soft} to {hard}: {e}");
            }
        }
    }
}
