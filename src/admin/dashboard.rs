//! `GET /`: the live dashboard, one self-contained HTML page (markup, style and script in
//! `dashboard.html`, embedded at build time; no external assets, no build step).
//!
//! Control path. The page does its work in the browser: it polls `/status` and `/metrics`
//! once a second and derives rates and sparklines from successive samples, so watching the
//! balancer costs the admin thread two ordinary requests a second and keeps no state here.
//! The headers forbid framing (a foreign page cannot overlay and click its buttons) and every
//! fetch outside this origin.

use super::http::Response;

/// The page, as shipped. A test keeps it well under 100 KiB.
pub const PAGE: &str = include_str!("dashboard.html");

pub const HTML: &str = "text/html; charset=utf-8";

/// No caching (a new binary serves a new page), no framing, no foreign requests, no
/// sniffing, no referrer.
const HEADERS: &[(&str, &str)] = &[
    ("Cache-Control", "no-store"),
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
];

pub fn response() -> Response {
    Response {
        headers: HEADERS,
        ..Response::new(200, HTML, PAGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_self_contained_and_small() {
        assert!(PAGE.len() < 100 * 1024, "{} bytes", PAGE.len());
        assert!(PAGE.starts_with("<!doctype html>"));
        for external in ["http://", "https://", "//cdn", "src=\"", "<link"] {
            assert!(!PAGE.contains(external), "the page refers to {external:?}");
        }
        for used in [
            "/status",
            "/metrics",
            "sessionStorage",
            "confirm(",
            "disconnected",
        ] {
            assert!(PAGE.contains(used), "{used:?} missing");
        }
        let text = String::from_utf8(response().serialize(false)).unwrap();
        assert!(text.contains("Content-Type: text/html; charset=utf-8\r\n"));
        assert!(text.contains("X-Frame-Options: DENY\r\n"));
        assert!(text.contains("frame-ancestors 'none'"));
    }
}
