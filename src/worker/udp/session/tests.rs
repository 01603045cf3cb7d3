//! Unit tests of the sans-io session core: admission, lookup, expiry, counters.

use super::*;
use crate::config::Config;
use crate::metrics::RejectReason;
use crate::state::{ListenerState, SharedState};
use crate::worker::timer::TICK_MS;
use std::path::Path;
use std::sync::Arc;

fn setup(extra: &str) -> (Arc<ListenerState>, Arc<SharedState>) {
    let text = format!(
        "[runtime]\nworkers = 1\nmax_connections = 10\n\n[[listener]]\nname = \"u\"\n\
         protocol = \"udp\"\nbind = \"127.0.0.1:5353\"\nidle_timeout_s = 1\n{extra}\n\
         backends = [{{ addr = \"127.0.0.1:9\" }}]\n"
    );
    let config = Config::parse(&text, Path::new("t.toml")).expect("config");
    let shared = Arc::new(SharedState::new(&config, 1));
    let state = shared.listeners.load()[0].clone();
    (state, shared)
}

fn client(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn open(
    table: &mut SessionTable<()>,
    state: &ListenerState,
    shared: &SharedState,
    port: u16,
    now: u64,
) -> Result<usize, RejectReason> {
    let c = client(port);
    let adm = Admission::admit(state, shared, c.ip(), now)?;
    let backend = BackendLease::take(state.pool.load().backends()[0].clone());
    let s = Session::new(0, c, None, (), backend, adm, now);
    Ok(table.insert(s, state.config.idle_timeout.as_millis() as u64))
}

#[test]
fn finds_sessions_by_listener_and_client() {
    let (state, shared) = setup("");
    let mut t = SessionTable::new(0);
    let k = open(&mut t, &state, &shared, 1000, 0).unwrap();
    assert_eq!(t.find(0, client(1000)), Some(k));
    assert_eq!(t.find(0, client(1001)), None);
    assert_eq!(t.find(1, client(1000)), None);
    assert_eq!(state.udp_sessions.load(Ordering::Relaxed), 1);
    assert_eq!(shared.active.load(Ordering::Relaxed), 1);
    let b = state.pool.load().backends()[0].clone();
    assert_eq!((b.active(), b.total.load(Ordering::Relaxed)), (1, 1));
    t.remove(k).unwrap().release();
    assert_eq!(t.find(0, client(1000)), None);
    assert_eq!(state.udp_sessions.load(Ordering::Relaxed), 0);
    assert_eq!(shared.active.load(Ordering::Relaxed), 0);
    assert_eq!(b.active(), 0);
}

#[test]
fn expires_after_idle_and_rearms_on_traffic() {
    let (state, shared) = setup("");
    let mut t = SessionTable::new(0);
    let k = open(&mut t, &state, &shared, 1000, 0).unwrap();
    let idle = |_: usize| 1000;
    let mut gone = Vec::new();
    // Traffic at 600 ms pushes the deadline to 1,600 ms without touching the wheel.
    t.get_mut(k).unwrap().to_backend(10, 600);
    t.expire(1000, idle, |_, s| gone.push(s));
    assert!(gone.is_empty());
    let b = state.pool.load().backends()[0].clone();
    // The re-arm flushed the counters of the session so far.
    assert_eq!(b.datagrams_to_backend.load(Ordering::Relaxed), 1);
    assert_eq!(b.bytes_to_backend.load(Ordering::Relaxed), 10);
    t.get_mut(k).unwrap().to_client(7, 1100);
    t.expire(2000, idle, |_, s| gone.push(s));
    assert!(gone.is_empty(), "last traffic at 1,100 ms: due at 2,100 ms");
    t.expire(2100, idle, |_, s| gone.push(s));
    assert_eq!(gone.len(), 1);
    assert!(t.is_empty() && t.find(0, client(1000)).is_none());
    for s in gone {
        s.release();
    }
    assert_eq!(b.datagrams_to_client.load(Ordering::Relaxed), 1);
    assert_eq!(b.bytes_to_client.load(Ordering::Relaxed), 7);
    assert_eq!(state.udp_sessions.load(Ordering::Relaxed), 0);
}

#[test]
fn lifetime_totals_survive_flushes() {
    let (state, shared) = setup("");
    let mut t = SessionTable::new(0);
    let k = open(&mut t, &state, &shared, 1000, 100).unwrap();
    let idle = |_: usize| 60_000;
    t.get_mut(k).unwrap().to_backend(10, 200);
    t.get_mut(k).unwrap().to_client(30, 300);
    // The timer visit flushes both to the backend and starts counting again from zero.
    t.expire(200 + 10_240 + TICK_MS, idle, |_, _| {});
    let s = t.get_mut(k).unwrap();
    assert_eq!(s.stats, SessionStats::default());
    s.to_backend(5, 11_000);
    let totals = s.totals();
    assert_eq!(
        totals,
        SessionStats {
            datagrams_to_backend: 2,
            bytes_to_backend: 15,
            datagrams_to_client: 1,
            bytes_to_client: 30,
        }
    );
    assert_eq!(s.opened_at, 100);
    t.remove(k).unwrap().release();
    let b = state.pool.load().backends()[0].clone();
    assert_eq!(b.bytes_to_backend.load(Ordering::Relaxed), 15);
    assert_eq!(b.bytes_to_client.load(Ordering::Relaxed), 30);
}

#[test]
fn a_busy_session_reports_its_counts_every_second() {
    let (state, shared) = setup("");
    let mut t = SessionTable::new(0);
    let k = open(&mut t, &state, &shared, 1000, 0).unwrap();
    let idle = |_: usize| 60_000;
    let mut gone = Vec::new();
    let b = state.pool.load().backends()[0].clone();
    // Idle: nothing to report, no early wake-up.
    t.expire(20_000, idle, |_, s| gone.push(s));
    assert_eq!(b.datagrams_to_backend.load(Ordering::Relaxed), 0);
    // Traffic starts: reported when the entry comes round (within a revolution, ~10 s).
    t.get_mut(k).unwrap().to_backend(5, 20_100);
    t.expire(20_000 + 10_240 + TICK_MS, idle, |_, s| gone.push(s));
    assert_eq!(b.datagrams_to_backend.load(Ordering::Relaxed), 1);
    // Still busy: from then on the counts reach the backend about every second, long
    // before the idle deadline or the next revolution.
    let mut now = 30_250;
    for n in 2..=4u64 {
        t.get_mut(k).unwrap().to_backend(5, now);
        now += 1000 + TICK_MS;
        t.expire(now, idle, |_, s| gone.push(s));
        assert_eq!(b.datagrams_to_backend.load(Ordering::Relaxed), n);
        assert_eq!(b.bytes_to_backend.load(Ordering::Relaxed), 5 * n);
    }
    assert!(gone.is_empty());
    t.remove(k).unwrap().release();
}

#[test]
fn stale_timer_entries_are_skipped() {
    let (state, shared) = setup("");
    let mut t = SessionTable::new(0);
    let k = open(&mut t, &state, &shared, 1000, 0).unwrap();
    t.remove(k).unwrap().release();
    t.release_removed();
    // Same key, new generation, opened later: the old entry must not expire it.
    let k2 = open(&mut t, &state, &shared, 1001, 900).unwrap();
    assert_eq!(k, k2);
    let mut gone = 0;
    t.expire(
        1000,
        |_| 1000,
        |_, s| {
            gone += 1;
            s.release();
        },
    );
    assert_eq!(gone, 0);
    assert_eq!(t.len(), 1);
    t.expire(
        1900,
        |_| 1000,
        |_, s| {
            gone += 1;
            s.release();
        },
    );
    assert_eq!(gone, 1);
}

#[test]
fn per_client_cap_counts_sessions_of_an_ip() {
    let (state, shared) = setup("max_conns_per_client = 2");
    let mut t = SessionTable::new(0);
    open(&mut t, &state, &shared, 1000, 0).unwrap();
    open(&mut t, &state, &shared, 1001, 0).unwrap();
    assert_eq!(
        open(&mut t, &state, &shared, 1002, 0),
        Err(RejectReason::ClientLimit)
    );
    // The refusal gave back the global and listener counts it had taken.
    assert_eq!(state.udp_sessions.load(Ordering::Relaxed), 2);
    assert_eq!(shared.active.load(Ordering::Relaxed), 2);
    // Another IP is served.
    let other = SocketAddr::from(([127, 0, 0, 2], 1000));
    assert!(Admission::admit(&state, &shared, other.ip(), 0).is_ok());
}

#[test]
fn listener_and_global_caps_and_rate_and_acl() {
    let (state, shared) = setup("max_connections = 1");
    let mut t = SessionTable::new(0);
    open(&mut t, &state, &shared, 1000, 0).unwrap();
    assert_eq!(
        open(&mut t, &state, &shared, 1001, 0),
        Err(RejectReason::ListenerLimit)
    );
    assert_eq!(shared.active.load(Ordering::Relaxed), 1);

    // UDP's share of the global cap (here, without a TCP listener, all of it).
    let (state, shared) = setup("");
    shared.max_connections.store(1, Ordering::Relaxed);
    shared.udp_max_connections.store(1, Ordering::Relaxed);
    let mut t = SessionTable::new(0);
    open(&mut t, &state, &shared, 1000, 0).unwrap();
    assert_eq!(
        open(&mut t, &state, &shared, 1001, 0),
        Err(RejectReason::GlobalLimit)
    );

    let (state, shared) = setup("conn_rate_per_client = 2");
    let mut t = SessionTable::new(0);
    open(&mut t, &state, &shared, 1000, 0).unwrap();
    open(&mut t, &state, &shared, 1001, 0).unwrap();
    assert_eq!(
        open(&mut t, &state, &shared, 1002, 0),
        Err(RejectReason::ClientRate)
    );
    assert!(open(&mut t, &state, &shared, 1003, 1000).is_ok());

    let (state, shared) = setup("deny = [\"127.0.0.0/8\"]");
    assert_eq!(
        Admission::admit(&state, &shared, client(1).ip(), 0).map(|_| ()),
        Err(RejectReason::Acl)
    );
    assert_eq!(shared.active.load(Ordering::Relaxed), 0);
}

#[test]
fn listener_rate_counts_new_sessions_of_every_client() {
    let (state, shared) = setup("conn_rate_limit = 2");
    let mut t = SessionTable::new(0);
    open(&mut t, &state, &shared, 1000, 0).unwrap();
    open(&mut t, &state, &shared, 1001, 0).unwrap();
    assert_eq!(
        open(&mut t, &state, &shared, 1002, 0),
        Err(RejectReason::ListenerRate)
    );
    // Refused before any count was taken.
    assert_eq!(shared.active.load(Ordering::Relaxed), 2);
    open(&mut t, &state, &shared, 1002, 500).unwrap();
}

#[test]
fn answered_enough_after_udp_responses_replies() {
    let (state, shared) = setup("udp_responses = 2");
    let mut t = SessionTable::new(0);
    let k = open(&mut t, &state, &shared, 1000, 0).unwrap();
    let limit = state.config.udp_responses;
    let s = t.get_mut(k).unwrap();
    assert!(!s.answered_enough(limit));
    s.to_client(10, 1);
    assert!(!s.answered_enough(limit));
    s.to_client(10, 2);
    assert!(s.answered_enough(limit));
    assert!(!s.answered_enough(0), "0 = off");
}
