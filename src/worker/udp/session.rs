//! The sans-io core of UDP balancing: the session table of one worker, idle expiry and the
//! per-session counters (those since the last flush, and the lifetime totals the access log
//! reports). Admission of a new session is `worker::admission`'s, the same as a TCP
//! connection's. No socket is touched here: the socket type is a parameter (`S`; `()` in the
//! tests) and time is passed in as a coarse ms clock, so every rule below is unit-tested
//! without the network.
//!
//! Hot path. Per datagram the shell does one [`SessionTable::find`] (a hash lookup) and bumps a
//! session's plain counters and `last_active`; nothing shared is written and nothing is
//! allocated. The shared atomics (caps, backend counters) are written once when a session
//! opens, once when it closes, and when its timer comes round to flush the datagram and byte
//! counts: about once a second while the session moves datagrams, once a wheel revolution
//! (about 10 s, see `worker::timer`) while it is idle. A flush also adds the counts to the
//! session's own lifetime totals, so the per-datagram path is unchanged.
//!
//! Invariants:
//! - a session in the table holds exactly one unit of the global count (`SharedState::active`),
//!   one of its listener's `udp_sessions` and (when the listener caps clients) one slot of the
//!   client table, in its [`Admission`], and one unit of its backend's `active`, in its
//!   [`BackendLease`]; both give them back when the session is dropped ([`Session::release`]
//!   flushes its counters first), and a session leaves the table only through
//!   [`SessionTable::remove`] or expiry, whose caller releases it;
//! - one table entry per (listener, client address), so a client's datagrams always reach the
//!   same backend while its session lives;
//! - one timer entry per session; activity never touches the wheel (lazy re-arm).
//!
//! The lookup map hashes client addresses with std's randomly keyed SipHash on purpose: it
//! decides nothing that must be reproducible (selection uses `crate::hash`), and its keys
//! (source addresses and ports) are chosen by whoever sends datagrams, so a fixed public key
//! would let a sender aim collisions at one bucket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use crate::backend::Backend;
use crate::worker::admission::{Admission, BackendLease};
use crate::worker::slab::Slab;
use crate::worker::timer::{TimerEntry, TimerWheel};

/// Sessions the table is sized for up front; it grows past this only as caps allow (each
/// session also holds a socket, so the process's descriptor limit bounds it as well).
const INITIAL_SESSIONS: usize = 1024;
/// How often a session that moves datagrams adds its counts to its backend's shared counters.
const STATS_REPORT_MS: u64 = 1000;

/// Datagrams and bytes a session moved since its last flush into the backend's atomics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    pub datagrams_to_backend: u64,
    pub bytes_to_backend: u64,
    pub datagrams_to_client: u64,
    pub bytes_to_client: u64,
}

impl SessionStats {
    /// `self + other`, field by field.
    pub fn plus(&self, other: &SessionStats) -> SessionStats {
        SessionStats {
            datagrams_to_backend: self.datagrams_to_backend + other.datagrams_to_backend,
            bytes_to_backend: self.bytes_to_backend + other.bytes_to_backend,
            datagrams_to_client: self.datagrams_to_client + other.datagrams_to_client,
            bytes_to_client: self.bytes_to_client + other.bytes_to_client,
        }
    }

    /// Add the counts to `backend` and start again from zero (skips the shared writes when
    /// there is nothing to add). Returns whether there was anything.
    pub fn flush(&mut self, backend: &Backend) -> bool {
        if *self == SessionStats::default() {
            return false;
        }
        for (counter, v) in [
            (&backend.datagrams_to_backend, self.datagrams_to_backend),
            (&backend.bytes_to_backend, self.bytes_to_backend),
            (&backend.datagrams_to_client, self.datagrams_to_client),
            (&backend.bytes_to_client, self.bytes_to_client),
        ] {
            if v != 0 {
                counter.fetch_add(v, Ordering::Relaxed);
            }
        }
        *self = SessionStats::default();
        true
    }
}

/// One client's flow through one listener of this worker.
#[derive(Debug)]
pub struct Session<S> {
    pub listener: usize,
    /// Set by [`SessionTable::insert`]; tells a stale timer entry from a reused key.
    pub generation: u32,
    pub client: SocketAddr,
    /// The local address the client sent to, when the listener is bound to a wildcard (replies
    /// must leave from it); `None` for a listener bound to one address.
    pub local: Option<IpAddr>,
    /// The socket connected to the backend.
    pub socket: S,
    /// The backend this session counts against (its `active`, given back on drop).
    pub backend: BackendLease,
    /// Coarse ms clock of the last datagram either way.
    pub last_active: u64,
    /// Coarse ms clock of the first datagram (the access log's duration).
    pub opened_at: u64,
    /// Counts since the last flush to the backend's counters.
    pub stats: SessionStats,
    /// Counts flushed so far ([`Session::totals`] adds the rest).
    flushed: SessionStats,
    /// The backend has answered at least once (its passive-failure streak was reset).
    pub answered: bool,
    /// `clock::monotonic_us` of the session's first datagram when its listener balances with
    /// `least_latency` (the time to the first reply is the backend's sample); else 0.
    pub opened_us: u64,
    /// The global, listener and per-client counts the session holds (given back on drop).
    #[allow(dead_code)] // held for its `Drop`
    admission: Admission,
}

impl<S> Session<S> {
    /// A session on `backend`, holding the counts of its `admission`.
    pub fn new(
        listener: usize,
        client: SocketAddr,
        local: Option<IpAddr>,
        socket: S,
        backend: BackendLease,
        admission: Admission,
        now_ms: u64,
    ) -> Session<S> {
        Session {
            listener,
            generation: 0,
            client,
            local,
            socket,
            backend,
            last_active: now_ms,
            opened_at: now_ms,
            stats: SessionStats::default(),
            flushed: SessionStats::default(),
            answered: false,
            opened_us: 0,
            admission,
        }
    }

    /// A datagram of `bytes` went from the client to the backend.
    #[inline]
    pub fn to_backend(&mut self, bytes: usize, now_ms: u64) {
        self.stats.datagrams_to_backend += 1;
        self.stats.bytes_to_backend += bytes as u64;
        self.last_active = now_ms;
    }

    /// A datagram of `bytes` came back from the backend.
    #[inline]
    pub fn to_client(&mut self, bytes: usize, now_ms: u64) {
        self.stats.datagrams_to_client += 1;
        self.stats.bytes_to_client += bytes as u64;
        self.last_active = now_ms;
    }

    /// Whether the backend has sent `limit` datagrams back (`udp_responses`; 0 = never).
    #[inline]
    pub fn answered_enough(&self, limit: u32) -> bool {
        limit > 0
            && self.flushed.datagrams_to_client + self.stats.datagrams_to_client >= u64::from(limit)
    }

    /// Everything the session moved in its life.
    pub fn totals(&self) -> SessionStats {
        self.flushed.plus(&self.stats)
    }

    /// Add the counts since the last flush to the backend's counters and to the lifetime
    /// totals. Returns whether there was anything.
    fn flush(&mut self) -> bool {
        self.flushed = self.flushed.plus(&self.stats);
        self.stats.flush(&self.backend)
    }

    /// Flush the counters and give back every count the session holds (its admission and
    /// backend lease, dropped here). Returns the socket so the caller decides when it closes
    /// (dropping it closes it).
    pub fn release(mut self) -> S {
        self.flush();
        self.socket
    }
}

/// What the expiry of one timer entry decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Traffic since the entry was armed: re-armed for `last_active + idle`.
    Rearmed(u64),
    /// Idle for `idle` ms: the session left the table.
    Expired,
}

/// The idle deadline of a session that was last active at `last_active`.
#[inline]
pub fn idle_deadline(last_active: u64, idle_ms: u64) -> u64 {
    last_active.saturating_add(idle_ms)
}

/// The sessions of one worker: a slab (keys are mio tokens), an index by (listener, client
/// address), and a timer wheel for idle expiry.
#[derive(Debug)]
pub struct SessionTable<S> {
    slab: Slab<Session<S>>,
    index: HashMap<(usize, SocketAddr), usize>,
    wheel: TimerWheel,
    fired: Vec<TimerEntry>,
}

impl<S> SessionTable<S> {
    pub fn new(now_ms: u64) -> SessionTable<S> {
        SessionTable {
            slab: Slab::with_capacity(INITIAL_SESSIONS),
            index: HashMap::with_capacity(INITIAL_SESSIONS),
            wheel: TimerWheel::new(now_ms),
            fired: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// The session of `client` on `listener`, if any.
    #[inline]
    pub fn find(&self, listener: usize, client: SocketAddr) -> Option<usize> {
        self.index.get(&(listener, client)).copied()
    }

    #[inline]
    pub fn get(&self, key: usize) -> Option<&Session<S>> {
        self.slab.get(key)
    }

    #[inline]
    pub fn get_mut(&mut self, key: usize) -> Option<&mut Session<S>> {
        self.slab.get_mut(key)
    }

    /// Add a session that expires `idle_ms` after its last datagram; returns its key.
    pub fn insert(&mut self, mut session: Session<S>, idle_ms: u64) -> usize {
        debug_assert!(self.find(session.listener, session.client).is_none());
        let (key, generation) = self.slab.reserve_key();
        session.generation = generation;
        let deadline = idle_deadline(session.last_active, idle_ms);
        let id = (session.listener, session.client);
        let inserted = self.slab.insert(session);
        debug_assert_eq!(inserted, key);
        self.index.insert(id, key);
        self.wheel.insert(deadline, TimerEntry { key, generation });
        key
    }

    /// Take a session out (its timer entry goes stale and is skipped when it fires). The
    /// caller must [`Session::release`] it.
    pub fn remove(&mut self, key: usize) -> Option<Session<S>> {
        let session = self.slab.remove(key)?;
        self.index.remove(&(session.listener, session.client));
        Some(session)
    }

    /// Keys of sessions removed this loop turn become free again (see `Slab`).
    pub fn release_removed(&mut self) {
        self.slab.release_removed();
    }

    /// Keys of every session (control path: drain, listener removal).
    pub fn keys(&self) -> Vec<usize> {
        self.slab.keys().collect()
    }

    /// Milliseconds until the wheel's next tick; `None` when no session is armed.
    pub fn timeout_ms(&self, now_ms: u64) -> Option<u64> {
        self.wheel.timeout_ms(now_ms)
    }

    /// Fire the timer entries due at `now_ms`. A session idle for `idle_ms(listener)` is
    /// removed and handed to `expired` with its key (which must release it); one with traffic since is
    /// re-armed, and its counters are flushed to its backend on the way; a session that had
    /// something to flush comes round again within `STATS_REPORT_MS`, so the shared counters
    /// lag a busy session by about a second. O(entries due).
    pub fn expire(
        &mut self,
        now_ms: u64,
        idle_ms: impl Fn(usize) -> u64,
        mut expired: impl FnMut(usize, Session<S>),
    ) {
        if self.wheel.is_empty() {
            return;
        }
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.expire(now_ms, |e| fired.push(e));
        for entry in fired.drain(..) {
            match self.check(entry, now_ms, &idle_ms) {
                Some(Expiry::Expired) => {
                    if let Some(s) = self.remove(entry.key) {
                        expired(entry.key, s);
                    }
                }
                Some(Expiry::Rearmed(deadline)) => self.wheel.insert(deadline, entry),
                None => {}
            }
        }
        self.fired = fired;
    }

    /// The decision for one fired entry; `None` for a stale one (session gone or key reused).
    fn check(
        &mut self,
        entry: TimerEntry,
        now_ms: u64,
        idle_ms: &impl Fn(usize) -> u64,
    ) -> Option<Expiry> {
        let s = self.slab.get_mut(entry.key)?;
        if s.generation != entry.generation {
            return None;
        }
        let deadline = idle_deadline(s.last_active, idle_ms(s.listener));
        if now_ms >= deadline {
            return Some(Expiry::Expired);
        }
        if s.flush() {
            // Busy: come back soon so the datagram and byte counters stay live.
            return Some(Expiry::Rearmed(deadline.min(now_ms + STATS_REPORT_MS)));
        }
        Some(Expiry::Rearmed(deadline))
    }
}

#[cfg(test)]
mod tests;
