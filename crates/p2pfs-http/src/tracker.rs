//! The tracker's HTTP API: an adapter over [`TrackerHandle`].

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Json, Router};
use futures::Stream;
use p2pfs_proto::message::ChunkInfo;
use p2pfs_proto::ContentId;
use p2pfs_tracker::TrackerHandle;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::openapi::OpenApi;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::dto::{AddrBody, AddrQuery, DiscoverReply, FileDto, FilesReply};
use crate::error::ErrorBody;
use crate::{parse_addr, ApiError, ApiJson, ApiQuery, Empty, ExitReply};

/// Handler state: the core handle and the daemon's exit switch.
#[derive(Clone, Debug)]
pub struct TrackerApi {
    /// The tracker.
    pub tracker: TrackerHandle,
    /// Cancelled by `POST /api/exit`.
    pub exit: CancellationToken,
}

/// The tracker's router (API and web UI).
pub fn router(api: TrackerApi) -> Router {
    let (router, _) = routes().split_for_parts();
    crate::finish(router.with_state(api))
}

/// The tracker API's OpenAPI document.
pub fn openapi() -> OpenApi {
    let (_, mut doc) = routes().split_for_parts();
    doc.info.title = "p2pfs tracker HTTP API".into();
    doc.info.version = crate::VERSION.into();
    doc.info.contact = None;
    doc.info.license = Some(utoipa::openapi::License::new("MIT OR Apache-2.0"));
    doc.info.description = Some("See API.md. Errors: {\"error\": {\"code\", \"message\"}}.".into());
    doc
}

fn routes() -> OpenApiRouter<TrackerApi> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(start))
        .routes(routes!(peers))
        .routes(routes!(ping))
        .routes(routes!(discover))
        .routes(routes!(files))
        .routes(routes!(chunks))
        .routes(routes!(chunk_map))
        .routes(routes!(events))
        .routes(routes!(exit))
        .routes(routes!(openapi_json))
}

/// Tracker status.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrackerStatus {
    /// Always `tracker`.
    pub role: String,
    /// p2pfs version.
    pub version: String,
    /// Where it serves peers; null until started.
    pub listening: Option<String>,
    /// Online peers.
    pub peers: usize,
    /// Published files.
    pub files: usize,
    /// How peers join once serving, with the secret left out, e.g.
    /// `p2pfs peer --join p2pfs1:SECRET@10.0.0.1:7000 (…)`.
    pub join: Option<String>,
}

#[utoipa::path(get, path = "/api/status", tag = "tracker",
    responses((status = 200, body = TrackerStatus)))]
async fn status(State(api): State<TrackerApi>) -> Json<TrackerStatus> {
    Json(TrackerStatus {
        role: "tracker".into(),
        version: crate::VERSION.into(),
        listening: api.tracker.local_addr().map(|a| a.to_string()),
        peers: api.tracker.peers().len(),
        files: api.tracker.files().len(),
        join: join_command(&api.tracker),
    })
}

/// How peers join, once the tracker serves. The secret itself is left out:
/// on a shared machine, other local users can reach a loopback API.
pub fn join_command(tracker: &p2pfs_tracker::TrackerHandle) -> Option<String> {
    match (tracker.join_token(), tracker.local_addr()) {
        (Some(t), _) => Some(format!(
            "p2pfs peer --join p2pfs1:SECRET@{} (the full token is printed at the tracker's start; the secret is in its data folder's network.secret)",
            t.tracker
        )),
        (None, Some(bound)) => Some(format!("p2pfs peer --insecure --tracker {bound}")),
        (None, None) => None,
    }
}

/// Answer to `start`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StartReply {
    /// The bound address.
    pub listening: String,
}

#[utoipa::path(post, path = "/api/start", tag = "tracker", request_body = AddrBody,
    responses((status = 200, body = StartReply), (status = "4XX", body = ErrorBody)))]
async fn start(
    State(api): State<TrackerApi>,
    ApiJson(body): ApiJson<AddrBody>,
) -> Result<Json<StartReply>, ApiError> {
    let addr = parse_addr(&body.addr).await?;
    let bound = api.tracker.start(addr).await?;
    Ok(Json(StartReply {
        listening: bound.to_string(),
    }))
}

/// One online peer.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeerDto {
    /// Peer id.
    pub peer_id: String,
    /// Listen address.
    pub addr: String,
    /// Unix seconds when it registered.
    pub connected_since: u64,
    /// Files it published.
    pub published: u32,
    /// Contents it holds chunks of.
    pub holding: u32,
}

/// Online peers.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeersReply {
    /// Peers, by address.
    pub peers: Vec<PeerDto>,
}

#[utoipa::path(get, path = "/api/peers", tag = "tracker",
    responses((status = 200, body = PeersReply)))]
async fn peers(State(api): State<TrackerApi>) -> Json<PeersReply> {
    let peers = api
        .tracker
        .peers()
        .iter()
        .map(|p| PeerDto {
            peer_id: p.peer_id.to_string(),
            addr: p.addr.to_string(),
            connected_since: p.connected_since,
            published: p.published,
            holding: p.holding,
        })
        .collect();
    Json(PeersReply { peers })
}

/// A ping's round-trip time.
#[derive(Debug, Serialize, ToSchema)]
pub struct PingReply {
    /// The pinged address.
    pub addr: String,
    /// Round-trip time in milliseconds.
    pub rtt_ms: f64,
}

#[utoipa::path(post, path = "/api/ping", tag = "tracker", request_body = AddrBody,
    responses((status = 200, body = PingReply), (status = "4XX", body = ErrorBody),
        (status = 502, body = ErrorBody)))]
async fn ping(
    State(api): State<TrackerApi>,
    ApiJson(body): ApiJson<AddrBody>,
) -> Result<Json<PingReply>, ApiError> {
    let addr = parse_addr(&body.addr).await?;
    let rtt = api.tracker.ping(addr).await?;
    Ok(Json(PingReply {
        addr: addr.to_string(),
        rtt_ms: rtt.as_secs_f64() * 1000.0,
    }))
}

#[utoipa::path(get, path = "/api/discover", tag = "tracker", params(AddrQuery),
    responses((status = 200, body = DiscoverReply), (status = "4XX", body = ErrorBody)))]
async fn discover(
    State(api): State<TrackerApi>,
    ApiQuery(q): ApiQuery<AddrQuery>,
) -> Result<Json<DiscoverReply>, ApiError> {
    let addr = parse_addr(&q.addr).await?;
    let (id, files) = api.tracker.discover(addr)?;
    Ok(Json(DiscoverReply::new(addr, id, &files)))
}

#[utoipa::path(get, path = "/api/files", tag = "tracker",
    responses((status = 200, body = FilesReply)))]
async fn files(State(api): State<TrackerApi>) -> Json<FilesReply> {
    Json(FilesReply {
        files: api.tracker.files().iter().map(FileDto::from).collect(),
    })
}

/// A name a content is published under.
#[derive(Debug, Serialize, ToSchema)]
pub struct NameDto {
    /// Published name.
    pub name: String,
    /// Publisher address.
    pub publisher: String,
}

/// One holder of a content.
#[derive(Debug, Serialize, ToSchema)]
pub struct HolderDto {
    /// Peer id.
    pub peer_id: String,
    /// Address.
    pub addr: String,
    /// Chunks it holds.
    pub have: u32,
    /// Whether it holds every chunk.
    pub complete: bool,
}

/// Who holds a content's chunks.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContentDto {
    /// Content id.
    pub content_id: String,
    /// Names it is published under.
    pub names: Vec<NameDto>,
    /// Number of chunks.
    pub chunks: u32,
    /// Online holders.
    pub holders: Vec<HolderDto>,
    /// `/api/chunks/{content_id}` only: for each chunk, how many peers hold it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<Vec<u32>>,
}

impl ContentDto {
    fn new(c: &ChunkInfo, with_counts: bool) -> Self {
        let counts = with_counts.then(|| {
            let mut counts = vec![0u32; c.chunks as usize];
            for h in &c.holders {
                for i in h.have.ones() {
                    if let Some(n) = counts.get_mut(i as usize) {
                        *n += 1;
                    }
                }
            }
            counts
        });
        Self {
            content_id: c.content_id.to_string(),
            names: c
                .names
                .iter()
                .map(|(name, publisher)| NameDto {
                    name: name.clone(),
                    publisher: publisher.to_string(),
                })
                .collect(),
            chunks: c.chunks,
            holders: c
                .holders
                .iter()
                .map(|h| HolderDto {
                    peer_id: h.peer_id.to_string(),
                    addr: h.addr.to_string(),
                    have: h.have.count_ones(),
                    complete: h.have.is_full(),
                })
                .collect(),
            counts,
        }
    }
}

/// Every content with its holders.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContentsReply {
    /// Contents.
    pub contents: Vec<ContentDto>,
}

#[utoipa::path(get, path = "/api/chunks", tag = "tracker",
    responses((status = 200, body = ContentsReply)))]
async fn chunks(State(api): State<TrackerApi>) -> Json<ContentsReply> {
    Json(ContentsReply {
        contents: api
            .tracker
            .chunk_info()
            .iter()
            .map(|c| ContentDto::new(c, false))
            .collect(),
    })
}

#[utoipa::path(get, path = "/api/chunks/{content_id}", tag = "tracker",
    params(("content_id" = String, Path, description = "64 hex digits")),
    responses((status = 200, body = ContentDto), (status = "4XX", body = ErrorBody)))]
async fn chunk_map(
    State(api): State<TrackerApi>,
    Path(content_id): Path<String>,
) -> Result<Json<ContentDto>, ApiError> {
    let id = ContentId::from_hex(&content_id)
        .ok_or_else(|| ApiError::bad_request("a content id is 64 hexadecimal digits"))?;
    api.tracker
        .chunk_info()
        .iter()
        .find(|c| c.content_id == id)
        .map(|c| Json(ContentDto::new(c, true)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no online peer holds content {}", id.short()),
            )
        })
}

/// Data of the `changed` event.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangedEvent {
    /// Grows with every change.
    pub version: u64,
}

/// Shortest gap between two `changed` events.
const EVENT_GAP: Duration = Duration::from_millis(200);

#[utoipa::path(get, path = "/api/events", tag = "tracker",
    responses((status = 200, content_type = "text/event-stream",
        description = "`changed` events with data {\"version\": n}: re-read what you show")))]
async fn events(
    State(api): State<TrackerApi>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = api.tracker.subscribe();
    let stream = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first {
            tokio::time::sleep(EVENT_GAP).await;
            rx.changed().await.ok()?;
        }
        let version = *rx.borrow_and_update();
        let event = Event::default()
            .event("changed")
            .json_data(ChangedEvent { version })
            .unwrap_or_default();
        Some((Ok(event), (rx, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[utoipa::path(post, path = "/api/exit", tag = "tracker", request_body = Empty,
    responses((status = 202, body = ExitReply)))]
async fn exit(
    State(api): State<TrackerApi>,
    ApiJson(_empty): ApiJson<Empty>,
) -> (StatusCode, Json<ExitReply>) {
    crate::exit(&api.exit)
}

#[utoipa::path(get, path = "/api/openapi.json", tag = "tracker",
    responses((status = 200, description = "this API as OpenAPI 3.1")))]
async fn openapi_json() -> Json<OpenApi> {
    Json(openapi())
}
