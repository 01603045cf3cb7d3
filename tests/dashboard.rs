//! The live dashboard (`GET /` on the admin port, issue 14) in a real browser: Debian's
//! chromium, headless, driven through chromedriver's W3C WebDriver HTTP API (spoken here with
//! a tiny HTTP client), in front of the real `l4lb` binary and three in-process backends under
//! a steady load. It checks what an operator relies on: every backend shows with its state and
//! a rising count, the drain button (after its confirmation dialog) drains, the page says
//! "disconnected" while the balancer is gone and recovers when it is back. It saves a
//! screenshot to `target/dashboard-test/dashboard.png` (and to `docs/img/dashboard.png` when
//! `L4LB_UPDATE_DOCS_SCREENSHOT=1`; `L4LB_DASHBOARD_WAIT_S=90` gives the sparklines more
//! history first).
//!
//! Without `/usr/bin/chromium` or `/usr/bin/chromedriver` the browser test says so and passes
//! (CI installs both: `.ci/run`). The page-size and memory checks need no browser.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::{json, Value};

use common::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Chromium starts slowly on a loaded 2-core CI machine; every wait on the browser is
/// bounded by this.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// Where the screenshot goes: `target/dashboard-test/`.
fn output_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("dashboard-test");
    std::fs::create_dir_all(&dir).expect("create the test's output directory");
    dir
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 in a few lines (chromedriver and the admin API both speak it)
// ---------------------------------------------------------------------------------------------

/// One request with `Connection: close`; returns the status and the (de-chunked) body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    // Read until the body is complete: chromedriver keeps the connection open whatever
    // `Connection: close` says, so EOF cannot be the end marker.
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(split) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
            let rest = &out[split + 4..];
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = match length {
                Some(n) => rest.len() >= n,
                None if head.contains("transfer-encoding: chunked") => rest.ends_with(b"0\r\n\r\n"),
                None => false,
            };
            if done {
                break;
            }
        }
        match s.read(&mut chunk)? {
            0 => break,
            n => out.extend_from_slice(&chunk[..n]),
        }
    }
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of head"))?;
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let mut payload = out[split + 4..].to_vec();
    let lower = head.to_ascii_lowercase();
    if lower.contains("transfer-encoding: chunked") {
        payload = dechunk(&payload);
    } else if let Some(n) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        payload.truncate(n);
    }
    Ok((status, payload))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || data.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[(eol + 4 + size).min(data.len())..];
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// chromedriver and one browser session
// ---------------------------------------------------------------------------------------------

/// A chromedriver child on a free port; killed (by its PID) and reaped on drop.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Driver {
    fn start(log: &Path) -> Driver {
        let port = free_port(localhost());
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver {
            child,
            addr: SocketAddr::new(localhost(), port),
        };
        let ready = wait_until(BROWSER_TIMEOUT, || {
            driver
                .call("GET", "/status", None)
                .is_ok_and(|v| v["ready"] == json!(true))
        });
        assert!(ready, "chromedriver not ready on {}", driver.addr);
        driver
    }

    /// A WebDriver command; its `value`, or the error it answered.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let (status, payload) = http(self.addr, method, path, body.as_ref(), BROWSER_TIMEOUT)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let v: Value = serde_json::from_slice(&payload)
            .map_err(|e| format!("{method} {path}: {status}, not JSON ({e})"))?;
        if status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(format!("{method} {path}: {status} {}", v["value"]))
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless chromium session with its own fresh profile directory.
struct Session<'a> {
    driver: &'a Driver,
    id: String,
    _profile: TempDir,
}

impl<'a> Session<'a> {
    fn new(driver: &'a Driver) -> Session<'a> {
        let profile = TempDir::new("chromium-profile");
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1500,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let v = driver
            .call("POST", "/session", Some(caps))
            .unwrap_or_else(|e| panic!("new session: {e}"));
        let id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {v}"))
            .to_string();
        Session {
            driver,
            id,
            _profile: profile,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.driver
            .call(method, &format!("/session/{}{path}", self.id), body)
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })))
            .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
    }

    /// Run `script` (a function body) in the page and return its value.
    fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    fn click(&self, css: &str) {
        let found = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .unwrap_or_else(|e| panic!("find {css}: {e}"));
        let element = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element id in {found}"))
            .to_string();
        self.call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    fn screenshot(&self) -> Vec<u8> {
        let v = self
            .call("GET", "/screenshot", None)
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        base64_decode(v.as_str().expect("base64 screenshot"))
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = self
            .driver
            .call("DELETE", &format!("/session/{}", self.id), None);
    }
}

// ---------------------------------------------------------------------------------------------
// Load: a few clients connecting, echoing and closing in a loop, plus held connections
// ---------------------------------------------------------------------------------------------

struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(lb: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let threads = (0..clients)
            .map(|i| {
                let (stop, done) = (stop.clone(), done.clone());
                thread::spawn(move || {
                    let payload = vec![b'x'; 4096 * (i + 1)];
                    while !stop.load(Ordering::Relaxed) {
                        // Errors are expected while the balancer is restarted.
                        if let Ok(mut s) = connect(lb) {
                            if matches!(attempt_on(&mut s), Outcome::Served(_))
                                && echo_roundtrip(&mut s, &payload).is_ok()
                            {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        thread::sleep(Duration::from_millis(15));
                    }
                })
            })
            .collect();
        Load {
            stop,
            done,
            threads,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// What the page shows per backend row: address, state word, badge state, raw total.
const ROWS: &str = r#"
return Array.from(document.querySelectorAll('section[data-listener="t"] tr[data-backend]'))
  .map(r => ({
    addr: r.dataset.backend,
    state: r.querySelector('.badge').textContent,
    badge: r.querySelector('.badge').dataset.state,
    weight: r.querySelector('td.weight').dataset.value,
    total: Number(r.querySelector('td.total').dataset.value || -1),
    colour: getComputedStyle(r.querySelector('.badge')).backgroundColor,
  }));
"#;

const LIVE: &str = r#"
const c = document.getElementById('conn');
return {live: c.dataset.live, text: c.textContent};
"#;

fn rows(session: &Session<'_>) -> Vec<Value> {
    session.eval(ROWS).as_array().cloned().unwrap_or_default()
}

fn row<'a>(rows: &'a [Value], addr: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["addr"] == json!(addr))
}

#[test]
fn the_dashboard_shows_live_traffic_drains_and_survives_a_restart() {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        if !Path::new(tool).exists() {
            eprintln!(
                "SKIPPED: {tool} not found; install the Debian packages chromium and \
                 chromium-driver to run the dashboard's browser test"
            );
            return;
        }
    }
    let out = output_dir();
    let backends = [Backend::id("a"), Backend::id("b"), Backend::id("c")];
    let weighted: Vec<(SocketAddr, u32)> = backends
        .iter()
        .zip([1, 2, 3])
        .map(|(b, w)| (b.addr, w))
        .collect();
    let admin = SocketAddr::new(localhost(), free_port(localhost()));
    let conf = Conf::weighted("weighted_round_robin", &weighted)
        .workers("2")
        .admin(admin);
    let mut lb = Some(L4lb::start(&conf));
    let lb_addr = lb.as_ref().map(|l| l.addr).expect("started");
    assert!(
        wait_until(STARTUP_TIMEOUT, || scrape(admin).is_ok()),
        "admin API not answering on {admin}"
    );
    let load = Load::start(lb_addr, 3);
    // A few held connections, so "active" is not always 0.
    let held: Vec<TcpStream> = (0..3)
        .filter_map(|_| attempt_keep(lb_addr, None).1)
        .collect();

    let driver = Driver::start(&out.join("chromedriver.log"));
    let session = Session::new(&driver);
    session.go(&format!("http://{admin}/"));

    // Every backend appears, up (green), with its weight.
    let names: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let mut seen = Vec::new();
    let shown = wait_until(BROWSER_TIMEOUT, || {
        seen = rows(&session);
        names.iter().all(|n| {
            row(&seen, n)
                .is_some_and(|r| r["state"] == json!("up") && r["total"].as_f64() >= Some(0.0))
        })
    });
    assert!(shown, "backends not all shown as up: {seen:?}");
    for (n, (_, w)) in names.iter().zip(&weighted) {
        let r = row(&seen, n).expect("row");
        assert_eq!(r["badge"], json!("up"));
        assert_eq!(r["weight"], json!(w.to_string()), "{r}");
        assert_eq!(r["colour"], json!("rgb(31, 157, 85)"), "up is green: {r}");
    }
    // Counts rise under the load, for every backend.
    let first: Vec<f64> = names
        .iter()
        .map(|n| {
            row(&seen, n)
                .and_then(|r| r["total"].as_f64())
                .unwrap_or(0.0)
        })
        .collect();
    let rising = wait_until(BROWSER_TIMEOUT, || {
        seen = rows(&session);
        names.iter().zip(&first).all(|(n, before)| {
            row(&seen, n)
                .and_then(|r| r["total"].as_f64())
                .is_some_and(|now| now > *before)
        })
    });
    assert!(
        rising,
        "totals did not rise (before {first:?}): {seen:?}; {} loops done",
        load.done.load(Ordering::Relaxed)
    );
    let live = session.eval(LIVE);
    assert_eq!(live["live"], json!("1"), "{live}");

    // Drain "b" with its button; accept the confirmation; the state changes on the page and
    // in the balancer.
    let b = names[1].clone();
    session.click(&format!(
        "section[data-listener=\"t\"] tr[data-backend=\"{b}\"] button[data-action=\"drain\"]"
    ));
    let mut text = Value::Null;
    let asked = wait_until(BROWSER_TIMEOUT, || {
        match session.call("GET", "/alert/text", None) {
            Ok(t) => {
                text = t;
                true
            }
            Err(_) => false,
        }
    });
    assert!(asked, "no confirmation dialog after clicking drain");
    let question = text.as_str().unwrap_or_default().to_string();
    assert!(
        question.contains("Drain") && question.contains(&b),
        "{question:?}"
    );
    session
        .call("POST", "/alert/accept", Some(json!({})))
        .expect("accept the confirmation");
    let drained = wait_until(BROWSER_TIMEOUT, || {
        seen = rows(&session);
        row(&seen, &b).is_some_and(|r| r["state"] == json!("drain") && r["badge"] == json!("drain"))
    });
    assert!(drained, "the page does not show {b} draining: {seen:?}");
    let result = session.eval("return document.getElementById('result').dataset.ok + ' ' + document.getElementById('result').textContent;");
    assert!(
        result
            .as_str()
            .is_some_and(|r| r.starts_with("1 ") && r.contains("now drain")),
        "{result}"
    );
    let status = status_json(admin);
    assert_eq!(backend_in(&status["listeners"][0], &b)["state"], "drain");

    // A few more seconds of history for the sparklines (more for the docs' picture:
    // `L4LB_DASHBOARD_WAIT_S`), then the screenshot.
    let wait = std::env::var("L4LB_DASHBOARD_WAIT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4u64)
        .min(300);
    thread::sleep(Duration::from_secs(wait));
    let png = session.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let shot = out.join("dashboard.png");
    std::fs::write(&shot, &png).expect("write the screenshot");
    eprintln!("screenshot: {} ({} bytes)", shot.display(), png.len());
    if std::env::var_os("L4LB_UPDATE_DOCS_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img");
        std::fs::create_dir_all(&docs).expect("docs/img");
        std::fs::copy(&shot, docs.join("dashboard.png")).expect("copy to docs/img");
    }

    // The balancer goes away: the page says so. It comes back on the same admin port, now
    // with `token_file`: the page recovers by itself and shows the new process (b up again).
    drop(held);
    drop(lb.take());
    let mut state = Value::Null;
    let down = wait_until(BROWSER_TIMEOUT, || {
        state = session.eval(LIVE);
        state["live"] == json!("0")
            && state["text"]
                .as_str()
                .is_some_and(|t| t.contains("disconnected"))
    });
    assert!(
        down,
        "the page did not notice the balancer stopped: {state}"
    );
    let secrets = TempDir::new("dashboard-token");
    let token_file = secrets.write("admin.token", "dash-Token-42\n");
    let again = L4lb::start(
        &conf
            .clone()
            .runtime(&format!("token_file = \"{}\"", token_file.display())),
    );
    let back = wait_until(BROWSER_TIMEOUT, || {
        state = session.eval(LIVE);
        seen = rows(&session);
        state["live"] == json!("1") && row(&seen, &b).is_some_and(|r| r["state"] == json!("up"))
    });
    assert!(back, "the page did not recover: {state} {seen:?}");

    // With a token: the first action is refused (401), the page asks for the token once,
    // keeps it for the tab, and the next action needs no asking.
    let button = |action: &str| {
        format!(
            "section[data-listener=\"t\"] tr[data-backend=\"{b}\"] button[data-action=\"{action}\"]"
        )
    };
    let dialog = || {
        let mut text = String::new();
        let open = wait_until(BROWSER_TIMEOUT, || {
            match session.call("GET", "/alert/text", None) {
                Ok(t) => {
                    text = t.as_str().unwrap_or_default().to_string();
                    true
                }
                Err(_) => false,
            }
        });
        assert!(open, "no dialog");
        text
    };
    session.click(&button("disable"));
    let question = dialog();
    assert!(question.contains("Disable"), "{question:?}");
    session
        .call("POST", "/alert/accept", Some(json!({})))
        .expect("accept");
    let ask = dialog();
    assert!(
        ask.contains("token"),
        "expected the token prompt, got {ask:?}"
    );
    session
        .call(
            "POST",
            "/alert/text",
            Some(json!({"text": "dash-Token-42"})),
        )
        .expect("type the token");
    session
        .call("POST", "/alert/accept", Some(json!({})))
        .expect("send the token");
    let disabled = wait_until(BROWSER_TIMEOUT, || {
        seen = rows(&session);
        row(&seen, &b).is_some_and(|r| r["state"] == json!("disabled"))
    });
    assert!(disabled, "not disabled with the token: {seen:?}");
    let kept = session.eval("return sessionStorage.getItem('l4lb-admin-token');");
    assert_eq!(kept, json!("dash-Token-42"));
    session.click(&button("enable"));
    let question = dialog();
    assert!(question.contains("Enable"), "{question:?}");
    session
        .call("POST", "/alert/accept", Some(json!({})))
        .expect("accept");
    let enabled = wait_until(BROWSER_TIMEOUT, || {
        seen = rows(&session);
        row(&seen, &b).is_some_and(|r| r["state"] == json!("up"))
    });
    assert!(enabled, "enable with the kept token failed: {seen:?}");
    assert!(
        session.call("GET", "/alert/text", None).is_err(),
        "asked for the token a second time"
    );
    drop(load);
    drop(again);
}

/// The page is embedded, self-contained and well under 100 KiB, and served with headers that
/// keep other pages from framing it.
#[test]
fn the_page_is_served_small_and_self_contained() {
    let backends = [Backend::id("a")];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let (_lb, admin) = L4lb::start_with_admin(&Conf::new("round_robin", &addrs));
    let (status, body) = http(admin, "GET", "/", None, IO_TIMEOUT).expect("GET /");
    assert_eq!(status, 200);
    let page = String::from_utf8(body).expect("UTF-8");
    assert!(page.len() < 100 * 1024, "{} bytes", page.len());
    assert!(page.contains("<title>l4lb</title>"));
    for external in ["http://", "https://", "src=\"", "<link"] {
        assert!(!page.contains(external), "refers to {external}");
    }
    let mut s = TcpStream::connect(admin).expect("connect");
    s.write_all(format!("HEAD / HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes())
        .expect("write");
    let head =
        String::from_utf8_lossy(&read_until_eof(&mut s, IO_TIMEOUT).expect("read")).to_string();
    for h in [
        "Content-Type: text/html; charset=utf-8",
        "X-Frame-Options: DENY",
        "Cache-Control: no-store",
    ] {
        assert!(head.contains(h), "{h} missing: {head}");
    }
}

/// Watching costs no memory growth: after a warm-up, thousands more polls of what the page
/// fetches (`/`, `/status`, `/metrics`) leave the balancer's resident memory where it was.
#[test]
fn being_watched_does_not_grow_memory() {
    let backends = [Backend::id("a"), Backend::id("b")];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let (lb, admin) = L4lb::start_with_admin(&Conf::new("round_robin", &addrs).workers("2"));
    let pid = lb.pid().expect("pid");
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    };
    let poll = |n: usize| {
        for _ in 0..n {
            for path in ["/status", "/metrics"] {
                let (status, _) = http(admin, "GET", path, None, IO_TIMEOUT).expect(path);
                assert_eq!(status, 200);
            }
        }
        let (status, _) = http(admin, "GET", "/", None, IO_TIMEOUT).expect("/");
        assert_eq!(status, 200);
    };
    poll(300);
    let before = rss();
    // 1,500 polls: 25 minutes of one open dashboard.
    poll(1500);
    let after = rss();
    eprintln!("resident memory: {before} kB after 300 polls, {after} kB after 1,800");
    assert!(
        after <= before + 512,
        "resident memory grew from {before} kB to {after} kB over 1,500 polls"
    );
}
