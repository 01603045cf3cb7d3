//! Replays every committed fuzz input (the seed corpora in fuzz/corpus/TARGET/ and the crash
//! and regression inputs in fuzz/regressions/TARGET/) through the same entry points the
//! cargo-fuzz targets call (`l4lb::fuzzing`), so stable `make test` keeps every input the
//! fuzzers were given or found fixed. See docs/fuzzing.md.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no committed inputs for fuzz target {target}"
    );
    for path in files {
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("{target}: {}", path.display());
        run(&data);
    }
}

#[test]
fn proxy_protocol_inputs() {
    replay("proxy_protocol", l4lb::fuzzing::proxy_protocol);
}

#[test]
fn admin_http_inputs() {
    replay("admin_http", l4lb::fuzzing::admin_http);
}

#[test]
fn config_inputs() {
    replay("config", l4lb::fuzzing::config);
}

#[test]
fn udp_session_inputs() {
    replay("udp_session", l4lb::fuzzing::udp_session);
}
