//! Who may use the API: an access token, and no cross-site requests.
//!
//! - With a token (required when the API listens beyond loopback), every
//!   `/api/` request must carry it: `Authorization: Bearer TOKEN`, or
//!   `?token=TOKEN` for the live-update stream (`EventSource` cannot set
//!   headers). The web UI's own files need no token: they hold no data, and
//!   the UI asks for the token once and keeps it for the browser session.
//! - Without a token (loopback only), the `Host` header must name a loopback
//!   address, so a web page cannot reach the API through DNS rebinding.
//! - An `/api/` request that the browser marks as coming from another site
//!   or origin (`Sec-Fetch-Site` other than `same-origin` or `none`) is
//!   refused, and so is a request that changes state (any method but GET and
//!   HEAD) whose `Origin` is not this address. No CORS headers are ever
//!   sent, so other sites cannot read answers either.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::ApiError;

/// Who may use the API.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// The access token; `None` allows loopback clients without one.
    pub token: Option<String>,
}

impl Access {
    /// A fresh random token: 32 bytes as 43 base64url characters.
    pub fn generate_token() -> String {
        let mut b = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut b[..]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }
}

fn denied(status: StatusCode, code: &'static str, message: String) -> Response {
    let mut r = ApiError::new(status, code, message).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"p2pfs\""),
        );
    }
    r
}

/// Constant-time comparison of two tokens (their BLAKE3 hashes compare in
/// constant time).
fn same_token(given: &str, expected: &str) -> bool {
    blake3::hash(given.as_bytes()) == blake3::hash(expected.as_bytes())
}

fn token_of(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        return v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(|t| t.trim().to_string());
    }
    let query = req.uri().query()?;
    url_token(query)
}

fn url_token(query: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "token").then(|| v.to_string())
    })
}

fn is_loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The middleware; see the module docs.
pub(crate) async fn check(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let changes_state = req.method() != Method::GET && req.method() != Method::HEAD;
    // A page of another site must not even make us act on a GET (an
    // `<img src=…/api/discover?addr=…>` would make the daemon connect out).
    let foreign_fetch = req.uri().path().starts_with("/api")
        && req
            .headers()
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() != b"same-origin" && v.as_bytes() != b"none");
    if foreign_fetch {
        return denied(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "requests from other web sites are refused".into(),
        );
    }
    if changes_state {
        let cross_site = req
            .headers()
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"cross-site");
        let foreign_origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .is_some_and(|o| {
                let o = o.trim_end_matches('/');
                o != format!("http://{host}") && o != format!("https://{host}")
            });
        if cross_site || foreign_origin {
            return denied(
                StatusCode::FORBIDDEN,
                "cross_origin",
                "requests from other web sites are refused".into(),
            );
        }
    }
    let is_api = req.uri().path().starts_with("/api");
    match &access.token {
        Some(expected) if is_api => match token_of(&req) {
            Some(t) if same_token(&t, expected) => {}
            Some(_) => {
                return denied(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "wrong access token".into(),
                )
            }
            None => {
                return denied(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this API needs its access token (printed at the daemon's start): send `Authorization: Bearer TOKEN`".into(),
                )
            }
        },
        Some(_) => {}
        None => {
            if !host.is_empty() && !is_loopback_host(&host) {
                return denied(
                    StatusCode::FORBIDDEN,
                    "bad_host",
                    format!("this API answers only on loopback names, not '{host}'"),
                );
            }
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:8080",
            "localhost:1",
            "LOCALHOST",
            "[::1]:80",
            "127.1.2.3",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example:8080",
            "10.0.0.1:80",
            "[::2]:80",
            "localhost.evil:1",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn token_from_query() {
        assert_eq!(url_token("a=1&token=xyz"), Some("xyz".into()));
        assert_eq!(url_token("tokens=1"), None);
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
    }
}
