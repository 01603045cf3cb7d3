//! Which backend gets each new TCP connection, for every `balance` algorithm.
//!
//! Backends announce their id ("B0\n", ...) on accept, so the client knows where it landed.
//! Several workers (3 on a 2-core machine) each make their own choices, so the counts allow a
//! small tolerance where an algorithm keeps per-worker state.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

fn id_backends(n: usize) -> Vec<Backend> {
    (0..n).map(|i| Backend::id(&format!("B{i}"))).collect()
}

fn addrs(bs: &[Backend]) -> Vec<SocketAddr> {
    bs.iter().map(|b| b.addr).collect()
}

/// `n` sequential short connections from `src`: how many reached each backend id.
fn tally(lb: SocketAddr, n: usize, src: Option<IpAddr>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts.entry(served_by(lb, src)).or_insert(0) += 1;
    }
    counts
}

/// Open a connection, learn its backend and keep it open.
fn hold(lb: SocketAddr) -> (String, TcpStream) {
    let mut s = connect(lb).expect("connect");
    let id = read_line(&mut s, IO_TIMEOUT).expect("backend id");
    (id, s)
}

/// Close gracefully and wait for the balancer to finish the connection: our FIN goes to the
/// backend, which answers with its own, which the balancer forwards back to us. After the
/// EOF, the balancer has seen both directions end.
fn close_fully(mut s: TcpStream) {
    let _ = s.shutdown(Shutdown::Write);
    let _ = read_until_eof(&mut s, IO_TIMEOUT);
}

fn count_ids<'a>(ids: impl Iterator<Item = &'a String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for id in ids {
        *m.entry(id.clone()).or_insert(0) += 1;
    }
    m
}

/// The balancer decrements its active counters right after it forwards the last FIN; give
/// that a moment after our side (and the backend's) saw the close.
fn settle(bs: &[Backend], expect: impl Fn(&Backend) -> usize) {
    let ok = wait_until(Duration::from_secs(5), || {
        bs.iter().all(|b| b.active() == expect(b))
    });
    assert!(ok, "backend connections did not close in time");
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn round_robin_spreads_evenly() {
    let bs = id_backends(3);
    let lb = L4lb::start(&Conf::new("round_robin", &addrs(&bs)));
    let counts = tally(lb.addr, 300, None);
    for b in &bs {
        let n = counts.get(&b.id).copied().unwrap_or(0);
        assert!(
            (80..=120).contains(&n),
            "{} got {n} of 300 connections: {counts:?}",
            b.id
        );
    }
}

#[test]
fn weighted_round_robin_follows_weights() {
    let bs = id_backends(3);
    let weights = [1u32, 2, 3];
    let pairs: Vec<(SocketAddr, u32)> = bs.iter().map(|b| b.addr).zip(weights).collect();
    let lb = L4lb::start(&Conf::weighted("weighted_round_robin", &pairs));
    let total = 300;
    let counts = tally(lb.addr, total, None);
    let wsum: u32 = weights.iter().sum();
    for (b, w) in bs.iter().zip(weights) {
        let n = counts.get(&b.id).copied().unwrap_or(0);
        let share = 100.0 * n as f64 / total as f64;
        let want = 100.0 * f64::from(w) / f64::from(wsum);
        assert!(
            (share - want).abs() <= 5.0,
            "{} (weight {w}) got {share:.1}% of connections, want {want:.1}% ± 5: {counts:?}",
            b.id
        );
    }
}

/// After the connections to two of three backends close, new connections fill those two up
/// to the third's level before it gets any more.
#[test]
fn least_conn_prefers_fewer_active() {
    let bs = id_backends(3);
    let lb = L4lb::start(&Conf::new("least_conn", &addrs(&bs)));

    let mut held: Vec<(String, TcpStream)> = (0..9).map(|_| hold(lb.addr)).collect();
    let counts = count_ids(held.iter().map(|(id, _)| id));
    let (busy, k) = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(id, n)| (id.clone(), *n))
        .expect("some connections");
    assert!(k >= 3);
    let (keep, close): (Vec<_>, Vec<_>) = held.drain(..).partition(|(id, _)| *id == busy);
    for (_, s) in close {
        close_fully(s);
    }
    held = keep;
    settle(&bs, |b| if b.id == busy { k } else { 0 });

    // The two idle backends have 0 < k active: the next 2k connections all go to them.
    let mut fresh = Vec::new();
    for _ in 0..2 * k {
        fresh.push(hold(lb.addr));
    }
    let fresh_counts = count_ids(fresh.iter().map(|(id, _)| id));
    assert_eq!(
        fresh_counts.get(&busy),
        None,
        "{busy} had {k} active and the others 0, yet got new connections: {fresh_counts:?}"
    );
    for b in &bs {
        assert_eq!(
            b.active(),
            k,
            "{} should have {k} active connections; new ones went {fresh_counts:?}",
            b.id
        );
    }
    drop(held);
    drop(fresh);
}

/// Active connections follow the weights (active/weight stays level), and a backend whose
/// connections close gets all the new ones until it is level again.
#[test]
fn weighted_least_conn_levels_active_per_weight() {
    let bs = id_backends(3);
    let weights = [1u32, 2, 3];
    let pairs: Vec<(SocketAddr, u32)> = bs.iter().map(|b| b.addr).zip(weights).collect();
    let lb = L4lb::start(&Conf::weighted("weighted_least_conn", &pairs));

    let held: Vec<(String, TcpStream)> = (0..12).map(|_| hold(lb.addr)).collect();
    let counts = count_ids(held.iter().map(|(id, _)| id));
    for (b, want) in bs.iter().zip([2usize, 4, 6]) {
        let n = counts.get(&b.id).copied().unwrap_or(0);
        assert!(
            n.abs_diff(want) <= 1,
            "{} holds {n} of 12, want {want} ± 1 (weights 1,2,3): {counts:?}",
            b.id
        );
    }

    // Close everything on the heaviest backend (B2, weight 3): it falls far below the others'
    // active/weight, so the next connections must all go to it until it is level again.
    let heavy = bs[2].id.clone();
    let (close, keep): (Vec<_>, Vec<_>) = held.into_iter().partition(|(id, _)| *id == heavy);
    for (_, s) in close {
        close_fully(s);
    }
    let kept = count_ids(keep.iter().map(|(id, _)| id));
    settle(&bs, |b| kept.get(&b.id).copied().unwrap_or(0));
    let (a, b) = (
        kept.get(&bs[0].id).copied().unwrap_or(0),
        kept.get(&bs[1].id).copied().unwrap_or(0),
    );
    // With j active on B2, B2 is strictly lowest under both usual scores, active/weight and
    // (active+1)/weight, while j/3 < a/1, j/3 < b/2, (j+1)/3 < a+1 and (j+1)/3 < (b+1)/2.
    let must = (0..12)
        .take_while(|&j| {
            j < 3 * a && 2 * j < 3 * b && j + 1 < 3 * (a + 1) && 2 * (j + 1) < 3 * (b + 1)
        })
        .count();
    assert!(must >= 3, "unexpected levels {kept:?}");
    let fresh: Vec<(String, TcpStream)> = (0..must).map(|_| hold(lb.addr)).collect();
    let fresh_counts = count_ids(fresh.iter().map(|(id, _)| id));
    assert_eq!(
        fresh_counts.get(&heavy).copied(),
        Some(must),
        "after {heavy} (weight 3) dropped to 0 active while the others held {kept:?}, \
         the next {must} connections went {fresh_counts:?}"
    );
    drop(keep);
    drop(fresh);
}

#[test]
fn random_two_spreads_and_avoids_the_loaded_backend() {
    let bs = id_backends(3);
    let lb = L4lb::start(&Conf::new("random_two", &addrs(&bs)));

    let counts = tally(lb.addr, 300, None);
    for b in &bs {
        let n = counts.get(&b.id).copied().unwrap_or(0);
        assert!(n > 0, "{} got no connection: {counts:?}", b.id);
        assert!(n <= 180, "{} got {n} of 300 (> 60%): {counts:?}", b.id);
    }

    // Load one backend with held connections, the others with none: two choices should
    // (almost) never pick it. Uniform random would send it a third of the connections.
    let mut held: Vec<(String, TcpStream)> = (0..12).map(|_| hold(lb.addr)).collect();
    let held_counts = count_ids(held.iter().map(|(id, _)| id));
    let (busy, k) = held_counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(id, n)| (id.clone(), *n))
        .expect("some connections");
    let (keep, close): (Vec<_>, Vec<_>) = held.drain(..).partition(|(id, _)| *id == busy);
    for (_, s) in close {
        close_fully(s);
    }
    held = keep;
    settle(&bs, |b| if b.id == busy { k } else { 0 });
    let mut to_busy = 0;
    for _ in 0..60 {
        let mut s = connect(lb.addr).expect("connect");
        let id = read_line(&mut s, IO_TIMEOUT).expect("id");
        if id == busy {
            to_busy += 1;
        }
        close_fully(s);
    }
    // Sampling the two with replacement picks the busy one 1/9 of the time; allow up to 25%.
    assert!(
        to_busy <= 15,
        "{busy} held {k} connections, the others none, yet got {to_busy} of 60 new ones"
    );
    drop(held);
}

/// Each client IP always lands on the same backend, several backends are used, and a second
/// balancer with the same backends (a restart) maps every IP the same way.
#[test]
fn source_ip_hash_is_sticky_and_reproducible() {
    let bs = id_backends(3);
    let conf = Conf::new("source_ip_hash", &addrs(&bs));
    let sources: Vec<IpAddr> = (1..=40).map(lo).collect();

    let mut first: HashMap<IpAddr, String> = HashMap::new();
    {
        let lb = L4lb::start(&conf);
        for round in 0..3 {
            for &ip in &sources {
                let id = served_by(lb.addr, Some(ip));
                let prev = first.entry(ip).or_insert_with(|| id.clone());
                assert_eq!(
                    *prev, id,
                    "{ip} went to {prev} and then to {id} (round {round})"
                );
            }
        }
    }
    let used: BTreeSet<&String> = first.values().collect();
    assert!(
        used.len() > 1,
        "40 source IPs all hashed to one backend: {used:?}"
    );

    let lb = L4lb::start(&conf);
    for &ip in &sources {
        let id = served_by(lb.addr, Some(ip));
        assert_eq!(
            first[&ip], id,
            "after a restart {ip} moved from {} to {id}",
            first[&ip]
        );
    }
}

#[test]
fn five_tuple_hash_uses_every_backend() {
    let bs = id_backends(3);
    let lb = L4lb::start(&Conf::new("five_tuple_hash", &addrs(&bs)));
    // One source IP: only the source port varies, so this needs the whole tuple in the key.
    let counts = tally(lb.addr, 90, Some(localhost()));
    for b in &bs {
        assert!(
            counts.get(&b.id).copied().unwrap_or(0) > 0,
            "{} got nothing from 90 connections with distinct source ports: {counts:?}",
            b.id
        );
    }
}

const ALGORITHMS: [&str; 7] = [
    "round_robin",
    "weighted_round_robin",
    "least_conn",
    "weighted_least_conn",
    "random_two",
    "source_ip_hash",
    "five_tuple_hash",
];

/// "weight 0 takes no new connections", whatever the algorithm.
#[test]
fn weight_zero_backend_gets_no_connections() {
    let bs = id_backends(3);
    for algo in ALGORITHMS {
        let mut conf = Conf::new(algo, &[]);
        conf.backends = vec![
            format!("addr = \"{}\", weight = 1", bs[0].addr),
            format!("addr = \"{}\", weight = 0", bs[1].addr),
            format!("addr = \"{}\", weight = 1", bs[2].addr),
        ];
        let lb = L4lb::start(&conf);
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        // Many source IPs, so the hash algorithms see many keys too.
        for x in 1..=30u8 {
            *counts.entry(served_by(lb.addr, Some(lo(x)))).or_insert(0) += 1;
        }
        assert_eq!(
            counts.get(&bs[1].id),
            None,
            "{algo}: the weight-0 backend got connections: {counts:?}"
        );
    }
}

/// "Backends ... at max_connections are skipped by every algorithm".
#[test]
fn full_backend_is_skipped_by_every_algorithm() {
    let bs = id_backends(2);
    for algo in ALGORITHMS {
        let mut conf = Conf::new(algo, &[]);
        conf.backends = vec![
            format!("addr = \"{}\", max_connections = 2", bs[0].addr),
            format!("addr = \"{}\"", bs[1].addr),
        ];
        let lb = L4lb::start(&conf);
        let mut held = Vec::new();
        for x in 1..=8u8 {
            match attempt_keep(lb.addr, Some(lo(x))) {
                (Outcome::Served(id), Some(s)) => held.push((id, s)),
                _ => panic!("{algo}: connection {x} refused although B1 has room"),
            }
        }
        let counts = count_ids(held.iter().map(|(id, _)| id));
        assert!(
            counts.get(&bs[0].id).copied().unwrap_or(0) <= 2,
            "{algo}: B0 (max_connections = 2) holds more: {counts:?}"
        );
        assert!(
            bs[0].active() <= 2,
            "{algo}: B0 has {} connections open",
            bs[0].active()
        );
        drop(held);
        drop(lb);
        settle(&bs, |_| 0);
    }
}

/// A backup takes no connection while a primary is up, and takes over when none is.
#[test]
fn backup_is_used_only_without_primaries() {
    let bs = id_backends(3);
    let mut conf = Conf::new("round_robin", &[]);
    conf.backends = vec![
        format!("addr = \"{}\"", bs[0].addr),
        format!("addr = \"{}\"", bs[1].addr),
        format!("addr = \"{}\", backup = true", bs[2].addr),
    ];
    let lb = L4lb::start(&conf);
    let counts = tally(lb.addr, 20, None);
    assert_eq!(
        counts.get(&bs[2].id),
        None,
        "the backup got connections while both primaries were up: {counts:?}"
    );
    drop(lb);

    // Only primary is a closed port: once passive checks mark it down, the backup serves.
    let dead = SocketAddr::new(localhost(), free_port(localhost()));
    let mut conf = Conf::new("round_robin", &[]).extra("connect_retries = 2");
    conf.backends = vec![
        format!("addr = \"{dead}\""),
        format!("addr = \"{}\", backup = true", bs[2].addr),
    ];
    let lb = L4lb::start(&conf);
    for _ in 0..5 {
        let _ = attempt(lb.addr, None); // lets the passive check see the failures
    }
    let mut served = 0;
    for _ in 0..10 {
        if let Outcome::Served(id) = attempt(lb.addr, None) {
            assert_eq!(id, bs[2].id);
            served += 1;
        }
    }
    assert!(
        served >= 8,
        "with the only primary dead, the backup served {served} of 10 connections"
    );
}

/// Sanity check of the harness itself: the id backend answers directly as documented.
#[test]
fn id_backend_announces_itself() {
    let b = Backend::id("B7");
    let mut s = connect(b.addr).expect("connect");
    assert_eq!(read_line(&mut s, IO_TIMEOUT).expect("id"), "B7");
    s.write_all(b"ping").expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_until_eof(&mut s, IO_TIMEOUT).expect("echo"), b"ping");
}
