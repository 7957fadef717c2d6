//! The local HTTP JSON API and web UI of both daemons (see `API.md`).
//!
//! Thin adapters over the core handles: handlers parse, call
//! [`TrackerHandle`](p2pfs_tracker::TrackerHandle) or
//! [`PeerHandle`](p2pfs_peer::PeerHandle), and format. No rule lives here.
//!
//! - [`tracker`] / [`peer`]: each role's routes and OpenAPI document.
//! - [`error`]: JSON errors with stable codes and rejection-mapping extractors.
//! - [`dto`]: the JSON shapes shared by both roles.
//! - assets: the web UI, embedded in the binary (read from disk in debug
//!   builds, so it can be edited and reloaded).

pub mod access;
pub mod dto;
pub mod error;
pub mod peer;
pub mod tracker;

use std::net::SocketAddr;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use access::Access;
pub use axum::Router;
pub use error::{ApiError, ApiJson, ApiQuery};

/// Largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The version reported by `/api/status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(rust_embed::Embed)]
#[folder = "web/"]
struct Assets;

/// A bound HTTP listener, ready to serve.
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    addr: SocketAddr,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks one).
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The web UI's URL (a wildcard address shown as loopback).
    pub fn url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}/")
    }

    /// Serves `app` in the background until `stop` is cancelled: HTTP/1.1,
    /// at most [`MAX_CONNECTIONS`] connections at once, and a connection
    /// that does not send its request headers within
    /// [`HEADER_TIMEOUT`] is closed (no slow-loris). Every request passes
    /// the [`access`] checks first.
    pub fn spawn(self, app: Router, access: Access, stop: CancellationToken) {
        let app = app.layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(access),
            access::check,
        ));
        use hyper_util::rt::{TokioIo, TokioTimer};
        use hyper_util::service::TowerToHyperService;
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    a = self.listener.accept() => a,
                };
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tracing::debug!(%remote, "HTTP connection limit reached; closing");
                    continue;
                };
                let service = TowerToHyperService::new(app.clone());
                let stop = stop.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT);
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        r = conn => {
                            if let Err(e) = r {
                                tracing::debug!(%remote, error = %e, "HTTP connection ended");
                            }
                        }
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
    }
}

/// Most HTTP connections served at once.
pub const MAX_CONNECTIONS: usize = 256;

/// Time allowed for a request's headers to arrive.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What both roles' routers share: body limit, JSON 404/405, static UI.
fn finish(api: Router) -> Router {
    api.method_not_allowed_fallback(method_not_allowed)
        .fallback(static_or_404)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn static_or_404(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    if path.starts_with("/api/") || path == "/api" {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_route",
            format!("there is no API route {method} {path}; see /api/openapi.json"),
        )
        .into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed(method, uri).await.into_response();
    }
    let name = match path.trim_start_matches('/') {
        "" => "index.html",
        p => p,
    };
    match Assets::get(name) {
        Some(file) => {
            let mime = file.metadata.mimetype().to_string();
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_str(&mime)
                            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                    (
                        header::X_CONTENT_TYPE_OPTIONS,
                        HeaderValue::from_static("nosniff"),
                    ),
                ],
                file.data,
            )
                .into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{path} not found; the web UI is at /"),
        )
            .into_response(),
    }
}

/// Parses an `IP:PORT` string (host names resolved, IPv4 preferred).
///
/// # Errors
/// `bad_address` when it is neither.
pub(crate) async fn parse_addr(text: &str) -> Result<SocketAddr, ApiError> {
    let text = text.trim();
    if let Ok(a) = text.parse() {
        return Ok(a);
    }
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_address",
            format!("'{text}' is not an address of the form IP:PORT (e.g. 127.0.0.1:7000)"),
        )
    };
    if !text.contains(':') || text.len() > 300 {
        return Err(bad());
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host(text)
        .await
        .map_err(|_| bad())?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(bad)
}

/// Answer to `POST /api/exit`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ExitReply {
    /// Always true: the daemon is stopping.
    pub ok: bool,
}

/// Empty JSON object body (`{}`), for actions without parameters.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Requests the daemon to stop.
pub(crate) fn exit(token: &CancellationToken) -> (StatusCode, axum::Json<ExitReply>) {
    tracing::info!("exit requested over the HTTP API");
    token.cancel();
    (StatusCode::ACCEPTED, axum::Json(ExitReply { ok: true }))
}
