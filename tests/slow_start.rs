//! Slow start end to end (`slow_start_s`): the real binary, two `id` backends, weighted round
//! robin on one worker. One backend is disabled and enabled again through the admin API, and
//! its share of a steady stream of new connections is measured in 1-second buckets over the
//! ramp: it must rise roughly linearly from near 0 to an even split. `/status` shows the
//! effective weight below the configured one during the ramp and equal to it after. A backend
//! added by a reload ramps the same way.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The ramp under test; long enough for four 1-second buckets, short enough for CI.
const RAMP_S: u64 = 4;

/// `method path` on the admin API: the status code.
fn post(admin: SocketAddr, path: &str) -> u16 {
    http(admin, "POST", path, "")
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
        .0
}

/// `effective_weight` of backend `addr` in `/status` (a float).
fn effective_weight(status: &Value, addr: SocketAddr) -> f64 {
    let b = backend_in(status, addr);
    b["effective_weight"]
        .as_f64()
        .unwrap_or_else(|| panic!("no effective_weight in {b}"))
}

/// New connections until `secs` seconds after `start`, one every ~10 ms; per 1-second bucket
/// since `start`, the share that backend `id` served.
fn shares(lb: SocketAddr, id: &str, start: Instant, secs: u64) -> Vec<(usize, f64)> {
    let mut buckets = vec![(0usize, 0usize); secs as usize];
    while start.elapsed() < Duration::from_secs(secs) {
        let bucket = start.elapsed().as_secs() as usize;
        // A connection that gets no answer in time (an overloaded test machine) is left out
        // of the shares rather than failing the test: the shares are what is measured.
        let served = connect(lb)
            .ok()
            .and_then(|mut s| read_line(&mut s, Duration::from_secs(5)).ok());
        if let (Some(b), Some(served)) = (buckets.get_mut(bucket), served) {
            b.0 += 1;
            b.1 += usize::from(served.trim() == id);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    buckets
        .into_iter()
        .map(|(n, on)| (n, on as f64 / n.max(1) as f64))
        .collect()
}

#[test]
fn an_enabled_backend_ramps_up_linearly() {
    let backends = [Backend::id("a"), Backend::id("b")];
    let conf = Conf::weighted(
        "weighted_round_robin",
        &[(backends[0].addr, 4), (backends[1].addr, 4)],
    )
    .workers("1")
    .extra(&format!("slow_start_s = {RAMP_S}"));
    let (lb, admin) = L4lb::start_with_admin(&conf);
    let b = backends[1].addr;
    let path = |action: &str| format!("/listeners/t/backends/{b}/{action}");
    assert_eq!(post(admin, &path("disable")), 200);
    // Without a ramp (up since the start), the effective weight is the weight.
    let status = status_json(admin);
    assert_eq!(effective_weight(&status, backends[0].addr), 4.0, "{status}");
    assert_eq!(post(admin, &path("enable")), 200);
    // The ramp started when l4lb handled the POST, just before its answer.
    let enabled = Instant::now();
    let status = status_json(admin);
    let w = effective_weight(&status, b);
    // 4 x 1% at once, 4 x 25% a second later (a slow machine may take that long to answer).
    assert!(
        w > 0.0 && w < 1.0 + 4.0 * enabled.elapsed().as_secs_f64() / RAMP_S as f64,
        "just enabled: effective weight {w} in {status}"
    );

    let measured = shares(lb.addr, "b", enabled, RAMP_S + 1);
    eprintln!(
        "slow start {RAMP_S} s, share of b per 1-second bucket (connections, share): {measured:?}"
    );
    // Weighted round robin with equal weights: b's share is r / (1 + r) for a ramp r, so
    // about 0.11, 0.27, 0.38, 0.47 at the buckets' middles, then 0.5.
    let expected = [0.11, 0.27, 0.38, 0.47, 0.5];
    for (i, ((n, share), want)) in measured.iter().zip(expected).enumerate() {
        assert!(*n >= 10, "bucket {i}: only {n} connections: {measured:?}");
        assert!(
            (share - want).abs() < 0.15,
            "bucket {i}: share {share:.2}, expected about {want}: {measured:?}"
        );
    }
    for pair in measured.windows(2) {
        assert!(pair[1].1 + 0.08 >= pair[0].1, "share fell: {measured:?}");
    }
    assert!(measured[3].1 - measured[0].1 > 0.2, "no rise: {measured:?}");
    let status = status_json(admin);
    assert_eq!(effective_weight(&status, b), 4.0, "{status}");
}

#[test]
fn a_backend_added_by_reload_ramps_and_a_kept_one_does_not() {
    let backends = [Backend::id("a"), Backend::id("b")];
    let conf = Conf::new("least_conn", &[backends[0].addr])
        .workers("1")
        .extra("slow_start_s = 30");
    let (lb, admin) = L4lb::start_with_admin(&conf);
    let text = std::fs::read_to_string(&lb.config_path).unwrap();
    let added = text.replace(
        &format!("{{ addr = \"{}\" }},", backends[0].addr),
        &format!(
            "{{ addr = \"{}\" }},\n  {{ addr = \"{}\" }},",
            backends[0].addr, backends[1].addr
        ),
    );
    assert_ne!(added, text, "backend line not found in {text}");
    std::fs::write(&lb.config_path, added).unwrap();
    lb.signal(nix::sys::signal::Signal::SIGHUP);
    let added_addr = backends[1].addr.to_string();
    let seen = wait_until(Duration::from_secs(10), || {
        status_json(admin)["listeners"][0]["backends"]
            .as_array()
            .is_some_and(|bs| bs.iter().any(|b| b["addr"] == added_addr.as_str()))
    });
    assert!(seen, "the reload did not add {}", backends[1].addr);
    let status = status_json(admin);
    let w = effective_weight(&status, backends[1].addr);
    assert!(w < 0.2, "added backend: effective weight {w} in {status}");
    assert_eq!(effective_weight(&status, backends[0].addr), 1.0, "{status}");
    // least_conn with b at ~1% of its weight: a takes nearly every connection, even held.
    let mut held = Vec::new();
    for _ in 0..40 {
        let (outcome, s) = attempt_keep(lb.addr, None);
        assert!(matches!(outcome, Outcome::Served(_)));
        held.push(s);
    }
    assert!(
        backends[1].accepted() <= 2,
        "b took {} of 40",
        backends[1].accepted()
    );
}
