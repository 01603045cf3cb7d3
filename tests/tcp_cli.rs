//! The command line contract: `--version`, `--help`, `--check`, and exit codes (0 clean, 2 bad
//! command line or config, 1 runtime failure such as a bind conflict), with one-line errors
//! that name the file and the key path.

mod common;

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use common::*;

const CLI_TIMEOUT: Duration = Duration::from_secs(10);

fn valid_conf() -> Conf {
    let backend: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let backend2: SocketAddr = "127.0.0.1:10".parse().expect("addr");
    Conf::new("round_robin", &[backend, backend2])
}

/// The listener's address in `valid_toml`: a free port, so that a config that is wrongly
/// accepted when run binds no fixed port.
fn valid_bind() -> SocketAddr {
    SocketAddr::new(localhost(), free_port(localhost()))
}

fn valid_toml(bind: SocketAddr) -> String {
    valid_conf().render(bind)
}

fn check(path: &Path) -> CliOutput {
    run_cli(
        &[
            OsStr::new("--config"),
            path.as_os_str(),
            OsStr::new("--check"),
        ],
        CLI_TIMEOUT,
    )
}

fn run(path: &Path) -> CliOutput {
    run_cli(&[OsStr::new("--config"), path.as_os_str()], CLI_TIMEOUT)
}

/// The error is one line that names the file and the key path; no panic, no backtrace.
fn assert_one_line_error(out: &CliOutput, path: &Path, key: &str, what: &str) {
    let file = path.display().to_string();
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains(&file) && l.contains(key)),
        "{what}: no stderr line names both {file:?} and {key:?}; stderr:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("stack backtrace"),
        "{what}: stderr shows a panic:\n{}",
        out.stderr
    );
}

#[test]
fn version_prints_version() {
    let out = run_cli(&[OsStr::new("--version")], CLI_TIMEOUT);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version printed {:?}",
        out.stdout
    );
}

#[test]
fn help_exits_0() {
    let out = run_cli(&[OsStr::new("--help")], CLI_TIMEOUT);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(
        out.stdout.contains("--config") && out.stdout.contains("--check"),
        "--help does not document --config/--check:\n{}",
        out.stdout
    );
}

#[test]
fn bad_command_line_exits_2() {
    let out = run_cli(&[OsStr::new("--no-such-flag")], CLI_TIMEOUT);
    assert_eq!(out.code(), Some(2), "stderr: {}", out.stderr);
    let out = run_cli(&[], CLI_TIMEOUT);
    assert_eq!(out.code(), Some(2), "no --config: stderr: {}", out.stderr);
}

#[test]
fn check_accepts_valid_config() {
    let dir = TempDir::new("cli");
    let path = dir.write("good.toml", &valid_toml(valid_bind()));
    let out = check(&path);
    assert_eq!(
        out.code(),
        Some(0),
        "--check on a valid config; stderr:\n{}",
        out.stderr
    );
    let short = run_cli(
        &[OsStr::new("-c"), path.as_os_str(), OsStr::new("--check")],
        CLI_TIMEOUT,
    );
    assert_eq!(
        short.code(),
        Some(0),
        "-c FILE --check; stderr:\n{}",
        short.stderr
    );
}

#[test]
fn missing_config_file_exits_2() {
    let dir = TempDir::new("cli");
    let path = dir.path().join("does-not-exist.toml");
    for (what, out) in [("--check", check(&path)), ("run", run(&path))] {
        assert_eq!(out.code(), Some(2), "{what}: stderr:\n{}", out.stderr);
        assert!(
            out.stderr.contains("does-not-exist.toml"),
            "{what}: stderr does not name the file:\n{}",
            out.stderr
        );
    }
}

/// Each invalid config exits 2, under `--check` and when run, naming file and key path.
#[test]
fn invalid_configs_exit_2_with_key_path() {
    let bind = valid_bind();
    let good = valid_toml(bind);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            good.replace("balance =", "bogus_key = 1\nbalance ="),
            "bogus_key",
        ),
        (
            "unknown key position",
            good.replace("balance =", "bogus_key = 1\nbalance ="),
            "listener[0]",
        ),
        (
            "backend addr without port",
            good.replace("127.0.0.1:9", "10.0.0.1"),
            "listener[0].backends[0].addr",
        ),
        (
            "bad balance name",
            good.replace("\"round_robin\"", "\"fastest\""),
            "listener[0].balance",
        ),
        (
            "bad protocol",
            good.replace("\"tcp\"", "\"sctp\""),
            "listener[0].protocol",
        ),
        (
            "bad splice mode",
            good.replace("splice = \"auto\"", "splice = \"sometimes\""),
            "runtime.splice",
        ),
        (
            "weight out of range",
            good.replace(
                "addr = \"127.0.0.1:10\"",
                "addr = \"127.0.0.1:10\", weight = 5000",
            ),
            "listener[0].backends[1].weight",
        ),
        (
            "bad CIDR",
            good.replace("balance =", "deny = [\"not-a-cidr\"]\nbalance ="),
            "listener[0].deny",
        ),
        (
            "bad listener bind",
            good.replace(&format!("bind = \"{bind}\""), "bind = \"nowhere\""),
            "listener[0].bind",
        ),
    ];
    let dir = TempDir::new("cli");
    for (i, (what, text, key)) in cases.iter().enumerate() {
        assert_ne!(*text, good, "case {what:?} did not change the config");
        let path = dir.write(&format!("bad-{i}.toml"), text);
        for (how, invoke) in [("--check", check as fn(&Path) -> CliOutput), ("run", run)] {
            let out = invoke(&path);
            assert_eq!(
                out.code(),
                Some(2),
                "{how}, {what}: want exit 2; stderr:\n{}",
                out.stderr
            );
            assert_one_line_error(&out, &path, key, what);
        }
    }
}

/// A port held by a socket without SO_REUSEPORT makes l4lb's bind fail: exit 1, naming it.
#[test]
fn bind_conflict_exits_1() {
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr");
    let dir = TempDir::new("cli");
    let path = dir.write("conflict.toml", &valid_conf().render(taken));
    let out = run(&path);
    assert_eq!(
        out.code(),
        Some(1),
        "bind on a taken port: want exit 1; stderr:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&taken.to_string()),
        "stderr does not name {taken}:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("panicked"),
        "stderr shows a panic:\n{}",
        out.stderr
    );
    drop(holder);
}
