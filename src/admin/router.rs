//! Maps a parsed request to its response: `/` (the dashboard), `/metrics`, `/status`, the
//! backend state changes `POST /listeners/{listener}/backends/{addr}/{enable|disable|drain}`
//! and the weight change `POST /listeners/{listener}/backends/{addr}/weight/{n}`.
//!
//! Control path. Order of checks for a change: the POST guard (403/401, `guard.rs`), shape of
//! the path (404), method (405), percent-escapes (400), action and weight (400), then the
//! lookups (404 naming what is missing), so a typo never changes anything. A weight change
//! rebuilds the listener's Maglev tables here, on the admin thread, never on a worker.

use crate::backend::AdminState;
use crate::config::MAX_WEIGHT;
use crate::state::{LookupError, SharedState};

use super::guard::Guard;
use super::http::{percent_decode, Request, Response, JSON, PROMETHEUS_TEXT};
use super::status::push_json_str;
use super::{dashboard, prometheus, status};

use std::fmt::Write as _;

const GET_HEAD: &str = "GET, HEAD";

/// The response to `req`, and whether to leave its body out (HEAD). Every POST passes
/// `guard` first, whatever its path.
pub fn route(shared: &SharedState, guard: &Guard<'_>, req: &Request) -> (Response, bool) {
    if req.method == "POST" {
        if let Some(refused) = guard.check_post(req) {
            return (refused, false);
        }
    }
    let head_only = req.method == "HEAD";
    let readable = req.method == "GET" || head_only;
    let path = req.path();
    let response = match path {
        "/metrics" if readable => Response::new(200, PROMETHEUS_TEXT, prometheus::render(shared)),
        "/status" if readable => Response::new(200, JSON, status::render(shared)),
        "/" if readable => dashboard::response(),
        "/metrics" | "/status" | "/" => Response::method_not_allowed(GET_HEAD),
        _ => match backend_action_path(path) {
            Some(_) if req.method != "POST" => Response::method_not_allowed("POST"),
            Some(segments) => backend_action(shared, segments),
            None => Response::error(404, &format!("no such endpoint: {path}")),
        },
    };
    (response, head_only)
}

/// The raw (still percent-encoded) `listener`, `addr` and `action` segments of
/// `/listeners/{listener}/backends/{addr}/{action}`, and for `/weight/{n}` the `n` segment
/// (the action is then `weight`).
fn backend_action_path(path: &str) -> Option<([&str; 3], Option<&str>)> {
    let mut it = path.strip_prefix('/')?.split('/');
    let (Some("listeners"), Some(listener), Some("backends"), Some(addr), Some(action)) =
        (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return None;
    };
    let arg = match (action, it.next(), it.next()) {
        ("weight", Some(n), None) => Some(n),
        (_, None, _) => None,
        _ => return None,
    };
    if listener.is_empty() || addr.is_empty() {
        return None;
    }
    Some(([listener, addr, action], arg))
}

/// What a POST asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    State(AdminState, &'static str),
    Weight(u32),
}

fn parse_action(action: &str, arg: Option<&str>) -> Result<Action, Response> {
    Ok(match (action, arg) {
        ("enable", None) => Action::State(AdminState::Enabled, "enable"),
        ("disable", None) => Action::State(AdminState::Disabled, "disable"),
        ("drain", None) => Action::State(AdminState::Drain, "drain"),
        ("weight", Some(n)) => {
            let weight = Some(n)
                .filter(|n| !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|w| *w <= MAX_WEIGHT);
            match weight {
                Some(w) => Action::Weight(w),
                None => {
                    return Err(Response::error(
                        400,
                        &format!("weight must be an integer 0..={MAX_WEIGHT}, got {n:?}"),
                    ))
                }
            }
        }
        ("weight", None) => return Err(Response::error(400, "the weight action is /weight/{n}")),
        (other, _) => {
            return Err(Response::error(
                400,
                &format!(
                    "unknown action {other:?}; expected enable, disable, drain or weight/{{n}}"
                ),
            ))
        }
    })
}

fn backend_action(
    shared: &SharedState,
    ([listener, addr, action], arg): ([&str; 3], Option<&str>),
) -> Response {
    let (Some(listener), Some(addr)) = (percent_decode(listener), percent_decode(addr)) else {
        return Response::error(400, "bad percent-encoding in the path");
    };
    let action = match parse_action(action, arg) {
        Ok(a) => a,
        Err(response) => return response,
    };
    let Some(l) = shared.listener(&listener) else {
        return Response::error(404, &format!("no listener named {listener:?}"));
    };
    // The backend's key is its `addr` as written; accept its resolved `ip:port` too, so an
    // operator who sees an address in `ss` output can use it as is.
    let name = match l.find_backend(&addr) {
        Some(b) => b.name.clone(),
        None => {
            let pool = l.pool.load();
            match pool.backends().iter().find(|b| b.addr.to_string() == addr) {
                Some(b) => b.name.clone(),
                None => {
                    return Response::error(
                        404,
                        &format!("listener {listener:?} has no backend {addr:?}"),
                    )
                }
            }
        }
    };
    let (result, verb) = match action {
        Action::State(state, verb) => (shared.set_backend_admin(&listener, &name, state), verb),
        Action::Weight(w) => (shared.set_backend_weight(&listener, &name, w), "weight"),
    };
    match result {
        Ok(()) => {}
        // A reload removed it between the lookup and the change.
        Err(LookupError::NoListener) => {
            return Response::error(404, &format!("no listener named {listener:?}"))
        }
        Err(LookupError::NoBackend) => {
            return Response::error(
                404,
                &format!("listener {listener:?} has no backend {addr:?}"),
            )
        }
    }
    let backend = shared
        .listener(&listener)
        .and_then(|l| l.find_backend(&name));
    let now = backend.as_ref().map_or("unknown", |b| b.state().as_str());
    let weight = backend.as_ref().map_or(0, |b| b.weight());
    let mut body = String::with_capacity(128);
    body.push_str("{\"listener\":");
    push_json_str(&mut body, &listener);
    body.push_str(",\"backend\":");
    push_json_str(&mut body, &name);
    body.push_str(",\"action\":");
    push_json_str(&mut body, verb);
    body.push_str(",\"state\":");
    push_json_str(&mut body, now);
    let _ = writeln!(body, ",\"weight\":{weight}}}");
    Response::new(200, JSON, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::tests::shared_from;
    use crate::backend::BackendState;

    const CONFIG: &str = r#"
[[listener]]
name = "web"
protocol = "tcp"
bind = "127.0.0.1:8080"
balance = "round_robin"
backends = [ { addr = "127.0.0.1:81" }, { addr = "[::1]:82" } ]
"#;

    const ADMIN: &str = "127.0.0.1:9090";

    fn req(method: &str, target: &str) -> Request {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            host: Some(ADMIN.to_string()),
            ..Request::default()
        }
    }

    fn guard() -> Guard<'static> {
        Guard {
            bind: ADMIN.parse().unwrap(),
            local: ADMIN.parse().unwrap(),
            token: None,
        }
    }

    fn call(shared: &SharedState, method: &str, target: &str) -> Response {
        route(shared, &guard(), &req(method, target)).0
    }

    fn body(r: &Response) -> &str {
        std::str::from_utf8(&r.body).unwrap()
    }

    #[test]
    fn parses_the_action_path() {
        assert_eq!(
            backend_action_path("/listeners/web/backends/1.2.3.4:5/drain"),
            Some((["web", "1.2.3.4:5", "drain"], None))
        );
        assert_eq!(
            backend_action_path("/listeners/web/backends/%5B%3A%3A1%5D%3A80/enable"),
            Some((["web", "%5B%3A%3A1%5D%3A80", "enable"], None))
        );
        assert_eq!(
            backend_action_path("/listeners/web/backends/1.2.3.4:5/weight/7"),
            Some((["web", "1.2.3.4:5", "weight"], Some("7")))
        );
        for bad in [
            "/listeners/web/backends/1.2.3.4:5/drain/1",
            "/listeners/web/backends/1.2.3.4:5/weight/7/",
            "/listeners/web/backends/1.2.3.4:5/weight/7/8",
            "/listeners/web/backends/1.2.3.4:5",
            "/listeners/web/backends/1.2.3.4:5/drain/",
            "/listeners//backends/1.2.3.4:5/drain",
            "/listeners/web/backends//drain",
            "/listener/web/backends/a/drain",
            "listeners/web/backends/a/drain",
            "/",
            "",
        ] {
            assert_eq!(backend_action_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn get_endpoints_and_methods() {
        let shared = shared_from(CONFIG);
        let m = call(&shared, "GET", "/metrics");
        assert_eq!((m.status, m.content_type), (200, PROMETHEUS_TEXT));
        let s = call(&shared, "GET", "/status?pretty");
        assert_eq!((s.status, s.content_type), (200, JSON));
        let (h, head_only) = route(&shared, &guard(), &req("HEAD", "/status"));
        assert_eq!(h.status, 200);
        assert!(head_only);
        let p = call(&shared, "POST", "/metrics");
        assert_eq!((p.status, p.allow), (405, Some(GET_HEAD)));
        let page = call(&shared, "GET", "/");
        assert_eq!((page.status, page.content_type), (200, dashboard::HTML));
        assert_eq!(call(&shared, "GET", "/index.html").status, 404);
        assert_eq!(call(&shared, "GET", "/metrics/").status, 404);
        let g = call(&shared, "GET", "/listeners/web/backends/127.0.0.1:81/drain");
        assert_eq!((g.status, g.allow), (405, Some("POST")));
    }

    #[test]
    fn backend_actions_change_state() {
        let shared = shared_from(CONFIG);
        let l = shared.listener("web").unwrap();
        let v6 = l.find_backend("[::1]:82").unwrap();
        let r = call(
            &shared,
            "POST",
            "/listeners/web/backends/%5B%3A%3A1%5D%3A82/drain",
        );
        assert_eq!(r.status, 200, "{}", body(&r));
        assert_eq!(
            body(&r),
            "{\"listener\":\"web\",\"backend\":\"[::1]:82\",\"action\":\"drain\",\"state\":\"drain\",\"weight\":1}\n"
        );
        assert_eq!(v6.state(), BackendState::Drain);
        let r = call(&shared, "POST", "/listeners/web/backends/[::1]:82/disable");
        assert_eq!(r.status, 200);
        assert_eq!(v6.state(), BackendState::Disabled);
        let r = call(&shared, "POST", "/listeners/web/backends/[::1]:82/enable");
        assert_eq!(r.status, 200);
        assert_eq!(v6.state(), BackendState::Up);
    }

    #[test]
    fn backend_action_errors() {
        let shared = shared_from(CONFIG);
        let r = call(
            &shared,
            "POST",
            "/listeners/nope/backends/127.0.0.1:81/drain",
        );
        assert_eq!(r.status, 404);
        assert!(
            body(&r).contains("no listener named \\\"nope\\\""),
            "{}",
            body(&r)
        );
        let r = call(
            &shared,
            "POST",
            "/listeners/web/backends/127.0.0.1:99/drain",
        );
        assert_eq!(r.status, 404);
        assert!(body(&r).contains("no backend"), "{}", body(&r));
        let r = call(
            &shared,
            "POST",
            "/listeners/web/backends/127.0.0.1:81/reboot",
        );
        assert_eq!(r.status, 400);
        let r = call(&shared, "POST", "/listeners/web/backends/127.0.0.1%3/drain");
        assert_eq!(r.status, 400);
        let l = shared.listener("web").unwrap();
        for b in l.pool.load().backends() {
            assert_eq!(b.state(), BackendState::Up, "{} changed", b.name);
        }
    }
}

#[cfg(test)]
mod weight_tests {
    use super::*;
    use crate::admin::tests::shared_from;

    const HASHED: &str = r#"
[[listener]]
name = "web"
protocol = "tcp"
bind = "127.0.0.1:8080"
balance = "source_ip_hash"
backends = [ { addr = "127.0.0.1:81", weight = 2 }, { addr = "127.0.0.1:82" } ]
"#;

    fn post(shared: &SharedState, target: &str) -> Response {
        let req = Request {
            method: "POST".into(),
            target: target.into(),
            host: Some("127.0.0.1:9090".into()),
            ..Request::default()
        };
        let guard = Guard {
            bind: "127.0.0.1:9090".parse().unwrap(),
            local: "127.0.0.1:9090".parse().unwrap(),
            token: None,
        };
        route(shared, &guard, &req).0
    }

    #[test]
    fn sets_the_weight_and_republishes_the_tables() {
        let shared = shared_from(HASHED);
        let l = shared.listener("web").unwrap();
        let before = l.pool.load_full();
        let r = post(&shared, "/listeners/web/backends/127.0.0.1:82/weight/1000");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            "{\"listener\":\"web\",\"backend\":\"127.0.0.1:82\",\"action\":\"weight\",\
             \"state\":\"up\",\"weight\":1000}\n"
        );
        assert_eq!(l.find_backend("127.0.0.1:82").unwrap().weight(), 1000);
        let after = l.pool.load_full();
        assert!(
            !std::sync::Arc::ptr_eq(&before, &after),
            "the pool was not republished"
        );
        // The new table gives the heavier backend most keys.
        let keys = 2000u32;
        let mut selector = crate::balancer::Selector::new(1);
        let heavy = (0..keys)
            .filter(|k| {
                let key = crate::balancer::FlowKey {
                    client: std::net::SocketAddr::from(([10, 0, (k >> 8) as u8, *k as u8], 5000)),
                    local: "127.0.0.1:8080".parse().unwrap(),
                    protocol: 6,
                };
                selector
                    .pick(&after, &key, &[])
                    .and_then(|i| after.backends().get(i))
                    .is_some_and(|b| b.name == "127.0.0.1:82")
            })
            .count() as u32;
        assert!(
            heavy > keys * 9 / 10,
            "{heavy} of {keys} keys on the weight-1000 backend"
        );
        // 0 is allowed (no new connections), 1001 and junk are not.
        assert_eq!(
            post(&shared, "/listeners/web/backends/127.0.0.1:82/weight/0").status,
            200
        );
        assert_eq!(l.find_backend("127.0.0.1:82").unwrap().weight(), 0);
        for bad in ["1001", "-1", "", "1e3", "0x10", "99999999999", "%31"] {
            let r = post(
                &shared,
                &format!("/listeners/web/backends/127.0.0.1:82/weight/{bad}"),
            );
            assert_eq!(r.status, 400, "{bad:?}");
        }
        assert_eq!(
            post(&shared, "/listeners/web/backends/127.0.0.1:82/weight").status,
            400
        );
        assert_eq!(
            post(&shared, "/listeners/web/backends/127.0.0.9:82/weight/3").status,
            404
        );
        assert_eq!(l.find_backend("127.0.0.1:82").unwrap().weight(), 0);
    }

    #[test]
    fn restore_file_weights_puts_the_files_values_back() {
        let shared = shared_from(HASHED);
        let l = shared.listener("web").unwrap();
        assert!(!l.restore_file_weights(), "nothing to restore yet");
        shared.set_backend_weight("web", "127.0.0.1:81", 9).unwrap();
        assert_eq!(l.find_backend("127.0.0.1:81").unwrap().weight(), 9);
        assert!(l.restore_file_weights());
        assert_eq!(l.find_backend("127.0.0.1:81").unwrap().weight(), 2);
    }
}
