//! Choosing a backend for a new TCP connection or UDP session and starting its connect, with
//! the rules both protocols share: the balancer's pick among the backends not tried yet, the
//! listener's `source` addresses round robin, retries on other backends up to
//! `connect_retries`, and passive health: a failed connect counts against its backend
//! ([`passive_failure`]: `fall` of them in a row mark it down), a completed one (TCP: the
//! handshake; UDP: the first reply) clears the streak and gives `least_latency` its sample
//! ([`passive_success`]). The protocols differ only in the socket: the caller passes the
//! function that opens (and for TCP registers) it.
//!
//! Hot path: runs once per connection or session and once per retry. Never allocates, locks
//! or logs (a local shortage is returned for the caller to warn about, rate-limited).
//! Invariants: a backend is never tried twice for one connection ([`Tried`]); an attempt
//! counts in its backend's `active` and `total` from its start ([`BackendLease`]), `active`
//! until the lease is dropped; a shortage of this host (no local port or address, out of
//! descriptors or memory: `net::connect::is_local_shortage`) never blames the backend and
//! counts in neither; a backend is marked down here only through its atomics and the
//! listener's `pool_dirty`: the pool (and any Maglev table) is republished by the health
//! thread, never here.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use crate::backend::Backend;
use crate::balancer::{FlowKey, Pool};
use crate::config::{Algorithm, ListenerConfig};
use crate::net::connect::{is_local_shortage, pick_source};
use crate::state::ListenerState;

use super::admission::BackendLease;
use super::WorkerListener;

/// Upper bound on connect attempts of one connection or session (the config allows
/// `connect_retries` up to 16, so at most 17 attempts).
pub const MAX_ATTEMPTS: usize = 17;

/// Failures in a row that mark a backend down when the listener has no `health_check` (and
/// so no `fall` of its own): HAProxy's default `fall` is 3 as well.
const DEFAULT_PASSIVE_FALL: u32 = 3;

/// The backends (indices in the pool) that failed for one connection or session, in order.
/// `u16` indices: a pool holds at most `MAX_BACKENDS` (4,096) backends, and this list sits in
/// every connection's slab slot (36 bytes instead of 144: the idle-connection RSS row of
/// `compare.sh --tools`).
#[derive(Debug, Clone, Copy)]
pub struct Tried {
    list: [u16; MAX_ATTEMPTS],
    len: u8,
}

impl Default for Tried {
    fn default() -> Tried {
        Tried {
            list: [0; MAX_ATTEMPTS],
            len: 0,
        }
    }
}

impl Tried {
    #[inline]
    pub fn as_slice(&self) -> &[u16] {
        &self.list[..usize::from(self.len)]
    }

    #[inline]
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn record(&mut self, index: usize) {
        // An index past u16 cannot come from a valid pool (config caps it at 4,096). Were one
        // to come, it is still counted as an attempt (as `u16::MAX`, which names no backend),
        // so that `connect_next`'s retry loop always ends.
        if self.len() < MAX_ATTEMPTS {
            self.list[self.len()] = u16::try_from(index).unwrap_or(u16::MAX);
            self.len += 1;
        }
    }
}

/// A connect that was started: its socket, the backend it counts against and where that
/// backend is in the pool.
#[derive(Debug)]
pub struct Started<S> {
    pub socket: S,
    pub lease: BackendLease,
    pub index: usize,
    /// `clock::monotonic_us` at the start when the group balances with `least_latency` (the
    /// time to the handshake or the first reply is its sample); 0 otherwise (no clock read).
    pub started_us: u64,
}

/// How [`connect_next`] ended.
#[derive(Debug)]
pub enum Attempt<S> {
    Started(Started<S>),
    /// No backend can take it (all down, drained, full...) and none was tried.
    NoBackend,
    /// Every allowed attempt failed (or no backend is left to try after a failure).
    Exhausted,
    /// This host is out of local ports, addresses, descriptors or memory: nobody's fault but
    /// ours; the caller refuses it as `local_resources` and warns (rate-limited).
    LocalShortage(io::Error),
}

/// Pick a backend of `group` (0: the listener's own, `r + 1`: SNI route `r`) not in `tried`
/// and start `connect` to it (bound to the listener's next `source` address, if it has any);
/// an attempt that fails at once is a passive failure of its backend and the next pick
/// follows, until `connect_retries` retries (after the failures already in `tried`) are spent.
pub(super) fn connect_next<S>(
    wl: &mut WorkerListener,
    pool: &Pool,
    group: usize,
    key: &FlowKey,
    tried: &mut Tried,
    now_ms: u64,
    mut connect: impl FnMut(SocketAddr, Option<IpAddr>, &ListenerConfig) -> io::Result<S>,
) -> Attempt<S> {
    let retries = (wl.state.config.connect_retries as usize).min(MAX_ATTEMPTS - 1);
    let least_latency = pool.algorithm_of(group) == Some(Algorithm::LeastLatency);
    while tried.len() <= retries {
        let Some(index) = wl.selector.pick_in(pool, group, key, tried.as_slice()) else {
            return if tried.is_empty() {
                Attempt::NoBackend
            } else {
                Attempt::Exhausted
            };
        };
        let lease = BackendLease::take(pool.backends()[index].clone());
        let source = pick_source(&wl.state.config.source, lease.addr, wl.next_source);
        if source.is_some() {
            wl.next_source = wl.next_source.wrapping_add(1);
        }
        match connect(lease.addr, source, &wl.state.config) {
            Ok(socket) => {
                let started_us = if least_latency {
                    crate::clock::monotonic_us()
                } else {
                    0
                };
                return Attempt::Started(Started {
                    socket,
                    lease,
                    index,
                    started_us,
                });
            }
            Err(e) if is_local_shortage(&e) => {
                lease.cancel();
                return Attempt::LocalShortage(e);
            }
            Err(_) => {
                passive_failure(&lease, &wl.state, now_ms);
                tried.record(index);
            }
        }
    }
    Attempt::Exhausted
}

/// A refused or timed-out connect (TCP), or an ICMP unreachable (UDP): count it, and mark the
/// backend down once `fall` of them happened in a row. The pool is republished by the health
/// thread (`pool_dirty`), never here.
pub(super) fn passive_failure(backend: &Backend, listener: &ListenerState, now_ms: u64) {
    backend.connect_errors.fetch_add(1, Ordering::Relaxed);
    let failures = backend.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
    let fall = listener
        .config
        .health_check
        .as_ref()
        .map_or(DEFAULT_PASSIVE_FALL, |h| h.fall);
    if failures >= fall && backend.set_healthy(false) {
        backend.down_since_ms.store(now_ms, Ordering::Relaxed);
        backend.consecutive_successes.store(0, Ordering::Relaxed);
        listener.pool_dirty.store(true, Ordering::Release);
        log::info!(
            "listener {}: backend {} is DOWN ({failures} failed connects in a row)",
            listener.config.name,
            backend.name
        );
    }
}

/// The backend answered (TCP: the handshake completed; UDP: its first reply): its passive
/// failure streak ends (only the passive one: the checks' `check_failures` belong to
/// `runtime::health`), and with `least_latency` (`started_us` != 0) the time since the start
/// is its latency sample.
#[inline]
pub(super) fn passive_success(backend: &Backend, started_us: u64) {
    // Only write the shared line when there is something to reset.
    if backend.consecutive_failures.load(Ordering::Relaxed) != 0 {
        backend.consecutive_failures.store(0, Ordering::Relaxed);
    }
    if started_us != 0 {
        let now = crate::clock::monotonic_us();
        backend.latency.observe(now.saturating_sub(started_us), now);
    }
}

/// Warn about a local shortage at most once a second per worker (`last` holds the time of the
/// last warning): a flood of refusals must not become a flood of log lines.
pub(super) fn warn_local_shortage(
    last: &mut Option<u64>,
    now: u64,
    worker: usize,
    listener: &str,
    e: &io::Error,
) {
    if last.is_some_and(|t| now < t + 1000) {
        return;
    }
    *last = Some(now);
    log::warn!(
        "worker {worker}: listener {listener}: no local resources for a backend socket ({e}); \
         refusing as local_resources (see source = [...] and docs/operations.md)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_keeps_at_most_max_attempts_in_order() {
        let mut t = Tried::default();
        assert!(t.is_empty());
        for i in 0..MAX_ATTEMPTS + 3 {
            t.record(i);
        }
        assert_eq!(t.len(), MAX_ATTEMPTS);
        assert_eq!(t.as_slice()[..3], [0, 1, 2]);
    }

    /// An index no u16 holds still counts as an attempt (the retry loop is bounded by the
    /// count) and names no real backend.
    #[test]
    fn an_index_past_u16_still_counts_as_an_attempt() {
        let mut t = Tried::default();
        t.record(70_000);
        assert_eq!(t.len(), 1);
        assert_eq!(t.as_slice(), [u16::MAX]);
    }
}
