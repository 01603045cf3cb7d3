//! Unit tests of the admission guard: every refusal holds nothing, every admission gives
//! back all it took when dropped, for TCP and UDP listeners alike.

use super::*;
use crate::config::Config;
use std::path::Path;

fn setup(protocol: &str, extra: &str) -> (Arc<ListenerState>, Arc<SharedState>) {
    let text = format!(
        "[runtime]\nworkers = 1\nmax_connections = 10\n\n[[listener]]\nname = \"l\"\n\
         protocol = \"{protocol}\"\nbind = \"127.0.0.1:5353\"\n{extra}\n\
         backends = [{{ addr = \"127.0.0.1:9\" }}]\n"
    );
    let config = Config::parse(&text, Path::new("t.toml")).expect("config");
    let shared = Arc::new(SharedState::new(&config, 1));
    let state = shared.listeners.load()[0].clone();
    (state, shared)
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// (global, listener, the client count of 127.0.0.1 when the listener caps clients).
fn counts(state: &ListenerState, shared: &SharedState) -> (u64, u64, u32) {
    let listener = match state.config.protocol {
        Protocol::Tcp => &state.active,
        Protocol::Udp => &state.udp_sessions,
    };
    let client = state.clients.as_ref().map_or(0, |t| t.count(ip(1)));
    (
        shared.active.load(Ordering::Relaxed),
        listener.load(Ordering::Relaxed),
        client,
    )
}

const BOTH: [&str; 2] = ["tcp", "udp"];

#[test]
fn an_admission_holds_every_count_until_dropped() {
    for p in BOTH {
        let (state, shared) = setup(p, "max_conns_per_client = 5");
        let a = Admission::admit(&state, &shared, ip(1), 0).unwrap();
        let b = Admission::admit(&state, &shared, ip(1), 0).unwrap();
        assert_eq!(counts(&state, &shared), (2, 2, 2), "{p}");
        drop(a);
        assert_eq!(counts(&state, &shared), (1, 1, 1), "{p}");
        drop(b);
        assert_eq!(counts(&state, &shared), (0, 0, 0), "{p}");
    }
}

#[test]
fn tcp_and_udp_count_in_their_own_listener_gauge() {
    let (tcp, shared) = setup("tcp", "");
    let a = Admission::admit(&tcp, &shared, ip(1), 0).unwrap();
    assert_eq!(tcp.active.load(Ordering::Relaxed), 1);
    assert_eq!(tcp.udp_sessions.load(Ordering::Relaxed), 0);
    drop(a);
    let (udp, shared) = setup("udp", "");
    let a = Admission::admit(&udp, &shared, ip(1), 0).unwrap();
    assert_eq!(udp.active.load(Ordering::Relaxed), 0);
    assert_eq!(udp.udp_sessions.load(Ordering::Relaxed), 1);
    drop(a);
    assert!(udp.is_idle());
}

#[test]
fn an_acl_refusal_holds_nothing() {
    for p in BOTH {
        let (state, shared) = setup(p, "deny = [\"127.0.0.1/32\"]\nmax_conns_per_client = 1");
        assert_eq!(
            Admission::admit(&state, &shared, ip(1), 0).err(),
            Some(RejectReason::Acl)
        );
        assert_eq!(counts(&state, &shared), (0, 0, 0), "{p}");
        // The ACL comes first: a refused client takes no token of the listener's rate.
        assert!(Admission::admit(&state, &shared, ip(2), 0).is_ok());
    }
}

#[test]
fn a_listener_rate_refusal_holds_nothing() {
    for p in BOTH {
        let (state, shared) = setup(p, "conn_rate_limit = 1");
        let held = Admission::admit(&state, &shared, ip(1), 0).unwrap();
        assert_eq!(
            Admission::admit(&state, &shared, ip(1), 0).err(),
            Some(RejectReason::ListenerRate)
        );
        assert_eq!(counts(&state, &shared), (1, 1, 0), "{p}");
        drop(held);
        assert_eq!(counts(&state, &shared), (0, 0, 0), "{p}");
    }
}

#[test]
fn a_global_cap_refusal_holds_nothing() {
    for p in BOTH {
        let (state, shared) = setup(p, "");
        shared.max_connections.store(1, Ordering::Relaxed);
        shared.udp_max_connections.store(1, Ordering::Relaxed);
        let held = Admission::admit(&state, &shared, ip(1), 0).unwrap();
        assert_eq!(
            Admission::admit(&state, &shared, ip(1), 0).err(),
            Some(RejectReason::GlobalLimit)
        );
        assert_eq!(counts(&state, &shared), (1, 1, 0), "{p}");
        drop(held);
        assert_eq!(counts(&state, &shared), (0, 0, 0), "{p}");
    }
}

#[test]
fn udp_is_capped_by_its_share_of_the_global_cap() {
    let (state, shared) = setup("udp", "");
    shared.max_connections.store(10, Ordering::Relaxed);
    shared.udp_max_connections.store(1, Ordering::Relaxed);
    let held = Admission::admit(&state, &shared, ip(1), 0).unwrap();
    assert_eq!(
        Admission::admit(&state, &shared, ip(1), 0).err(),
        Some(RejectReason::GlobalLimit)
    );
    drop(held);
    assert_eq!(counts(&state, &shared), (0, 0, 0));
}

#[test]
fn a_listener_cap_refusal_gives_the_global_unit_back() {
    for p in BOTH {
        let (state, shared) = setup(p, "max_connections = 1");
        let held = Admission::admit(&state, &shared, ip(1), 0).unwrap();
        assert_eq!(
            Admission::admit(&state, &shared, ip(1), 0).err(),
            Some(RejectReason::ListenerLimit)
        );
        assert_eq!(counts(&state, &shared), (1, 1, 0), "{p}");
        drop(held);
        assert_eq!(counts(&state, &shared), (0, 0, 0), "{p}");
    }
}

#[test]
fn a_client_rate_refusal_gives_the_global_and_listener_units_back() {
    for p in BOTH {
        let (state, shared) = setup(p, "conn_rate_per_client = 1");
        let held = Admission::admit(&state, &shared, ip(1), 0).unwrap();
        assert_eq!(
            Admission::admit(&state, &shared, ip(1), 0).err(),
            Some(RejectReason::ClientRate)
        );
        assert_eq!(counts(&state, &shared), (1, 1, 0), "{p}");
        // Another client has its own bucket.
        let other = Admission::admit(&state, &shared, ip(2), 0).unwrap();
        drop((held, other));
        assert_eq!(counts(&state, &shared), (0, 0, 0), "{p}");
    }
}

#[test]
fn a_client_cap_refusal_gives_the_global_and_listener_units_back() {
    for p in BOTH {
        let (state, shared) = setup(p, "max_conns_per_client = 1");
        let held = Admission::admit(&state, &shared, ip(1), 0).unwrap();
        assert_eq!(
            Admission::admit(&state, &shared, ip(1), 0).err(),
            Some(RejectReason::ClientLimit)
        );
        assert_eq!(counts(&state, &shared), (1, 1, 1), "{p}");
        drop(held);
        assert_eq!(counts(&state, &shared), (0, 0, 0), "{p}");
        assert!(Admission::admit(&state, &shared, ip(1), 0).is_ok());
    }
}

#[test]
fn the_two_step_admission_holds_the_peer_part_until_dropped() {
    let extra = "accept_proxy_protocol = true\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
                 deny = [\"127.0.0.9/32\"]\nmax_conns_per_client = 1";
    let (state, shared) = setup("tcp", extra);
    // An untrusted peer: refused before anything is taken.
    assert_eq!(
        Admission::admit_peer(&state, &shared, false, 0).err(),
        Some(RejectReason::Acl)
    );
    assert_eq!(counts(&state, &shared), (0, 0, 0));
    // The client named by the header is denied: the peer part stays until the drop.
    let mut denied = Admission::admit_peer(&state, &shared, true, 0).unwrap();
    assert_eq!(counts(&state, &shared), (1, 1, 0));
    assert_eq!(
        denied.admit_client(&state, ip(9), 0).err(),
        Some(RejectReason::Acl)
    );
    assert_eq!(counts(&state, &shared), (1, 1, 0));
    drop(denied);
    assert_eq!(counts(&state, &shared), (0, 0, 0));
    // A client over its cap: the same.
    let mut first = Admission::admit_peer(&state, &shared, true, 0).unwrap();
    first.admit_client(&state, ip(1), 0).unwrap();
    let mut second = Admission::admit_peer(&state, &shared, true, 0).unwrap();
    assert_eq!(
        second.admit_client(&state, ip(1), 0).err(),
        Some(RejectReason::ClientLimit)
    );
    assert_eq!(counts(&state, &shared), (2, 2, 1));
    drop((first, second));
    assert_eq!(counts(&state, &shared), (0, 0, 0));
}

#[test]
fn a_slot_goes_back_to_the_table_it_came_from_after_a_reload() {
    let (state, shared) = setup("tcp", "max_conns_per_client = 1");
    let held = Admission::admit(&state, &shared, ip(1), 0).unwrap();
    // A reload with new client prefixes gives the listener a new table.
    let mut config = state.config.clone();
    config.client_ipv4_prefix = 24;
    let next = state.reconfigured(config, 10);
    let old_table = state.clients.clone().unwrap();
    drop(state);
    assert!(!Arc::ptr_eq(&old_table, next.clients.as_ref().unwrap()));
    assert_eq!(old_table.count(ip(1)), 1);
    assert_eq!(next.active.load(Ordering::Relaxed), 1);
    drop(held);
    assert_eq!(old_table.count(ip(1)), 0);
    assert_eq!(next.active.load(Ordering::Relaxed), 0);
    assert_eq!(shared.active.load(Ordering::Relaxed), 0);
}

#[test]
fn a_backend_lease_gives_back_active_and_cancel_takes_back_total() {
    let (state, _shared) = setup("tcp", "");
    let b = state.pool.load().backends()[0].clone();
    let lease = BackendLease::take(b.clone());
    assert_eq!((b.active(), b.total.load(Ordering::Relaxed)), (1, 1));
    assert_eq!(lease.addr, b.addr);
    drop(lease);
    assert_eq!((b.active(), b.total.load(Ordering::Relaxed)), (0, 1));
    BackendLease::take(b.clone()).cancel();
    assert_eq!((b.active(), b.total.load(Ordering::Relaxed)), (0, 1));
}
