//! Shared harness for the integration tests, TCP and UDP: the real `l4lb` binary on a config
//! from the one builder (`Conf`), in-process TCP and UDP backends, client helpers with
//! deadlines, the admin API's client (`/metrics` through the one Prometheus reader, `/status`
//! through serde_json), and a streaming hash with its PRNG. This file only declares the parts
//! and re-exports them, so tests write `common::Item`.
//!
//! Hermetic (STYLE.md, "Tests are hermetic"): loopback only, every port from the kernel (port
//! 0), every wait bounded by a deadline, and everything started here (the child process, the
//! backend threads) stopped and joined by a Drop guard. Readiness is read from `/proc/net`
//! (a LISTEN socket in `tcp{,6}`, or a bound socket in `udp{,6}` for a UDP listener, on our
//! port and owned by the child; see `Ready`), so starting the balancer sends no probe
//! connection or datagram that would skew counts, caps or rates.
//!
//! Every `tests/*.rs` compiles this module and none uses all of it; the `allow` below covers
//! the submodules too.
#![allow(dead_code)]

mod backends;
mod cli;
mod client;
mod conf;
mod control;
mod daemon;
mod data;
mod deadline;
mod http;
mod metrics;
mod net;
pub mod netns;
mod outcome;
mod process;
mod ready;
mod summary;
mod tempdir;
mod udp;

// Each test binary uses only part of these, and an unused `pub use` of a private module is
// reported like any import: the `allow` is for this re-export list alone.
#[allow(unused_imports)]
pub use self::{
    backends::{echo_conn, Backend, Handler},
    cli::{run_cli, CliOutput},
    client::{
        connect, connect_from, connect_refused, echo_roundtrip, first_read, read_exact_within,
        read_line, read_until_eof, reset, FirstRead,
    },
    conf::{tcp_listener_toml, Conf, Proto},
    daemon::{daemon_config, tcp_echo, udp_echo, Daemon, LoadgenEcho, LOADGEN},
    data::{StreamHash, XorShift},
    deadline::{wait_until, IO_TIMEOUT, REFUSAL_TIMEOUT, STARTUP_TIMEOUT},
    http::{backend_in, http, keys, raw_request, scrape, status_json},
    metrics::{metric, metric_at, try_metric_at, Scrape},
    net::{
        distinct_free_ports, free_port, free_tcp_addr, free_udp_addr, free_udp_port,
        ipv6_available, lo, localhost, raise_nofile_limit,
    },
    outcome::{attempt, attempt_keep, attempt_on, served_by, Outcome},
    process::{l4lb_bin, L4lb},
    ready::Ready,
    summary::{json_num, latency_percentiles},
    tempdir::TempDir,
    udp::{ask, ask_until_answered, client, Mode, UdpBackend, REPLY_TIMEOUT, SILENCE},
};
