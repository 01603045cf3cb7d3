//! Maps a parsed request to its response: `/metrics`, `/status`, and the backend state
//! changes `POST /listeners/{listener}/backends/{addr}/{enable|disable|drain}`.
//!
//! Control path. Order of checks for the state change: shape of the path (404), method (405),
//! percent-escapes (400), action (400), then the lookups (404 naming what is missing), so a
//! typo never changes anything.

use crate::backend::AdminState;
use crate::state::{LookupError, SharedState};

use super::guard::Guard;
use super::http::{percent_decode, Request, Response, JSON, PROMETHEUS_TEXT};
use super::status::push_json_str;
use super::{prometheus, status};

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
        "/metrics" | "/status" => Response::method_not_allowed(GET_HEAD),
        _ => match backend_action_path(path) {
            Some(_) if req.method != "POST" => Response::method_not_allowed("POST"),
            Some(segments) => backend_action(shared, segments),
            None => Response::error(404, &format!("no such endpoint: {path}")),
        },
    };
    (response, head_only)
}

/// The raw (still percent-encoded) `listener`, `addr` and `action` segments of
/// `/listeners/{listener}/backends/{addr}/{action}`.
fn backend_action_path(path: &str) -> Option<[&str; 3]> {
    let mut it = path.strip_prefix('/')?.split('/');
    let (Some("listeners"), Some(listener), Some("backends"), Some(addr), Some(action), None) = (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) else {
        return None;
    };
    if listener.is_empty() || addr.is_empty() {
        return None;
    }
    Some([listener, addr, action])
}

fn backend_action(shared: &SharedState, [listener, addr, action]: [&str; 3]) -> Response {
    let (Some(listener), Some(addr)) = (percent_decode(listener), percent_decode(addr)) else {
        return Response::error(400, "bad percent-encoding in the path");
    };
    let (state, verb) = match action {
        "enable" => (AdminState::Enabled, "enable"),
        "disable" => (AdminState::Disabled, "disable"),
        "drain" => (AdminState::Drain, "drain"),
        other => {
            return Response::error(
                400,
                &format!("unknown action {other:?}; expected enable, disable or drain"),
            )
        }
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
    match shared.set_backend_admin(&listener, &name, state) {
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
    let now = shared
        .listener(&listener)
        .and_then(|l| l.find_backend(&name))
        .map_or("unknown", |b| b.state().as_str());
    let mut body = String::with_capacity(128);
    body.push_str("{\"listener\":");
    push_json_str(&mut body, &listener);
    body.push_str(",\"backend\":");
    push_json_str(&mut body, &name);
    body.push_str(",\"action\":");
    push_json_str(&mut body, verb);
    body.push_str(",\"state\":");
    push_json_str(&mut body, now);
    body.push_str("}\n");
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
            Some(["web", "1.2.3.4:5", "drain"])
        );
        assert_eq!(
            backend_action_path("/listeners/web/backends/%5B%3A%3A1%5D%3A80/enable"),
            Some(["web", "%5B%3A%3A1%5D%3A80", "enable"])
        );
        for bad in [
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
        assert_eq!(call(&shared, "GET", "/").status, 404);
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
            "{\"listener\":\"web\",\"backend\":\"[::1]:82\",\"action\":\"drain\",\"state\":\"drain\"}\n"
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
