//! Slow start end to end (`slow_start_s`): the real binary, two `id` backends, weighted round
//! robin on one worker. One backend is disabled and enabled again through the admin API, and
//! its share of a steady stream of new connections is measured in 1-second buckets over the
//! ramp: it must rise roughly linearly from near 0 to an even split. `/status` shows the
//! effective weight below the configured one during the ramp and equal to it after. A backend
//! added by a reload ramps the same way.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// The ramp under test; long enough for four 1-second buckets, short enough for CI.
const RAMP_S: u64 = 4;

fn http(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).expect("admin connect");
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {admin}\r\nUser-Agent: l4lb-test\r\n\r\n");
    s.write_all(req.as_bytes()).expect("admin write");
    let out = read_until_eof(&mut s, Duration::from_secs(5)).expect("admin read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// `effective_weight` of backend `addr` in a `/status` body (a float).
fn effective_weight(status: &str, addr: SocketAddr) -> f64 {
    let at = status
        .find(&format!("\"addr\":\"{addr}\""))
        .unwrap_or_else(|| panic!("{addr} not in {status}"));
    let rest = &status[at..];
    let key = "\"effective_weight\":";
    let v = &rest[rest.find(key).expect("effective_weight") + key.len()..];
    let end = v.find([',', '}']).unwrap();
    v[..end].parse().expect("a number")
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
    assert_eq!(http(admin, "POST", &path("disable")).0, 200);
    // Without a ramp (up since the start), the effective weight is the weight.
    let (_, status) = http(admin, "GET", "/status");
    assert_eq!(effective_weight(&status, backends[0].addr), 4.0, "{status}");
    assert_eq!(http(admin, "POST", &path("enable")).0, 200);
    // The ramp started when l4lb handled the POST, just before its answer.
    let enabled = Instant::now();
    let (_, status) = http(admin, "GET", "/status");
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
    let (_, status) = http(admin, "GET", "/status");
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
    let seen = wait_until(Duration::from_secs(10), || {
        http(admin, "GET", "/status")
            .1
            .contains(&backends[1].addr.to_string())
    });
    assert!(seen, "the reload did not add {}", backends[1].addr);
    let (_, status) = http(admin, "GET", "/status");
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
