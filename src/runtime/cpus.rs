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

/// Descriptors the process needs besides its connections: listening sockets per worker, epoll
/// and waker descriptors, the admin API's connections, health checks, stdio. Generous.
const BASE_DESCRIPTORS: u64 = 256;

/// Descriptors `max_connections` may need at once: a TCP connection holds two sockets, plus two
/// splice pipes (four descriptors) unless `splice = "never"`; a UDP session holds one socket.
/// `None` when nothing caps the connections (global and some listener cap both 0).
pub fn descriptors_needed(config: &crate::config::Config) -> Option<u64> {
    use crate::config::{Protocol, SpliceMode};
    let per_tcp = if config.runtime.splice == SpliceMode::Never {
        2
    } else {
        6
    };
    let global = config.runtime.max_connections;
    let mut total: u64 = 0;
    for l in &config.listeners {
        let cap = match (l.max_connections, global) {
            (0, 0) => return None,
            (0, g) => g,
            (n, 0) => n,
            (n, g) => n.min(g),
        };
        let per = if l.protocol == Protocol::Tcp {
            per_tcp
        } else {
            1
        };
        total = total.saturating_add(cap.saturating_mul(per));
    }
    // The global cap bounds the sum too: at most `global` connections, each the costliest kind.
    if global > 0 {
        total = total.min(global.saturating_mul(per_tcp));
    }
    Some(total.saturating_add(BASE_DESCRIPTORS))
}

/// Warn at start when the open-files limit (after [`raise_nofile_limit`]) is below what
/// `max_connections` may need: l4lb would then refuse connections as `local_resources` (and
/// pause accepting) long before its own caps.
pub fn warn_if_nofile_low(config: &crate::config::Config) {
    use nix::sys::resource::{getrlimit, Resource};
    let (Ok((soft, _)), Some(needed)) = (
        getrlimit(Resource::RLIMIT_NOFILE),
        descriptors_needed(config),
    ) else {
        return;
    };
    if soft < needed {
        log::warn!(
            "open-files limit {soft} is below the {needed} descriptors max_connections may need \
             (2 sockets per TCP connection plus 4 for its splice pipes, 1 per UDP session); \
             raise it (ulimit -n, systemd LimitNOFILE=) or lower max_connections"
        );
    }
}
