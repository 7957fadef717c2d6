//! The peer's HTTP API: an adapter over [`PeerHandle`].

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Json, Router};
use futures::Stream;
use p2pfs_peer::{DownloadHandle, DownloadState, PeerEvent, PeerHandle, Publication};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use utoipa::openapi::OpenApi;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::dto::{AddrBody, AddrQuery, DiscoverReply, FileDto, FilesReply};
use crate::error::ErrorBody;
use crate::{parse_addr, ApiError, ApiJson, ApiQuery, Empty, ExitReply};

/// Handler state: the core handle and the daemon's exit switch.
#[derive(Clone)]
pub struct PeerApi {
    /// The peer.
    pub peer: PeerHandle,
    /// Cancelled by `POST /api/exit`.
    pub exit: CancellationToken,
}

/// The peer's router (API and web UI).
pub fn router(api: PeerApi) -> Router {
    let (router, _) = routes().split_for_parts();
    crate::finish(router.with_state(api))
}

/// The peer API's OpenAPI document.
pub fn openapi() -> OpenApi {
    let (_, mut doc) = routes().split_for_parts();
    doc.info.title = "p2pfs peer HTTP API".into();
    doc.info.version = crate::VERSION.into();
    doc.info.contact = None;
    doc.info.license = Some(utoipa::openapi::License::new("MIT OR Apache-2.0"));
    doc.info.description = Some("See API.md. Errors: {\"error\": {\"code\", \"message\"}}.".into());
    doc
}

fn routes() -> OpenApiRouter<PeerApi> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(connect))
        .routes(routes!(publish))
        .routes(routes!(repo))
        .routes(routes!(files))
        .routes(routes!(discover))
        .routes(routes!(delay))
        .routes(routes!(fetch))
        .routes(routes!(downloads))
        .routes(routes!(download))
        .routes(routes!(cancel))
        .routes(routes!(resume))
        .routes(routes!(events))
        .routes(routes!(exit))
        .routes(routes!(openapi_json))
}

/// Peer status.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeerStatus {
    /// Always `peer`.
    pub role: String,
    /// p2pfs version.
    pub version: String,
    /// Peer id.
    pub peer_id: String,
    /// Where it listens for chunk requests.
    pub listen: String,
    /// The address other peers reach it at (null when not connected).
    pub advertised: Option<String>,
    /// The tracker it is connected to (null when not connected).
    pub tracker: Option<String>,
    /// Repository folder.
    pub repo: String,
    /// Artificial delay before answering each chunk request.
    pub delay_secs: f64,
    /// Bytes uploaded since start.
    pub uploaded_bytes: u64,
    /// Chunks served since start.
    pub chunks_served: u64,
}

#[utoipa::path(get, path = "/api/status", tag = "peer",
    responses((status = 200, body = PeerStatus)))]
async fn status(State(api): State<PeerApi>) -> Json<PeerStatus> {
    let p = &api.peer;
    let (uploaded_bytes, chunks_served) = p.stats().uploaded();
    Json(PeerStatus {
        role: "peer".into(),
        version: crate::VERSION.into(),
        peer_id: p.peer_id().to_string(),
        listen: p.listen_addr().to_string(),
        advertised: p.advertised_addr().map(|a| a.to_string()),
        tracker: p.tracker_addr().map(|a| a.to_string()),
        repo: p.repo().display().to_string(),
        delay_secs: p.delay().as_secs_f64(),
        uploaded_bytes,
        chunks_served,
    })
}

/// Answer to `connect`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectReply {
    /// The tracker.
    pub tracker: String,
    /// The address other peers reach this peer at.
    pub advertised: String,
}

#[utoipa::path(post, path = "/api/connect", tag = "peer", request_body = AddrBody,
    responses((status = 200, body = ConnectReply), (status = "4XX", body = ErrorBody),
        (status = 502, body = ErrorBody)))]
async fn connect(
    State(api): State<PeerApi>,
    ApiJson(body): ApiJson<AddrBody>,
) -> Result<Json<ConnectReply>, ApiError> {
    let addr = parse_addr(&body.addr).await?;
    let advertised = api.peer.connect(addr).await?;
    Ok(Json(ConnectReply {
        tracker: addr.to_string(),
        advertised: advertised.to_string(),
    }))
}

/// `publish lname fname`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// Path of a local file (relative paths are relative to the daemon's
    /// working folder).
    pub path: String,
    /// The name to publish it under.
    pub name: String,
}

/// A file this peer published.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublicationDto {
    /// Published name.
    pub name: String,
    /// Absolute local path.
    pub path: String,
    /// Content id.
    pub content_id: String,
    /// Size in bytes.
    pub size: u64,
    /// Number of chunks.
    pub chunks: u32,
}

impl From<&Publication> for PublicationDto {
    fn from(p: &Publication) -> Self {
        Self {
            name: p.name.clone(),
            path: p.path.display().to_string(),
            content_id: p.content_id.to_string(),
            size: p.size,
            chunks: p.chunks,
        }
    }
}

#[utoipa::path(post, path = "/api/publish", tag = "peer", request_body = PublishBody,
    responses((status = 201, body = PublicationDto), (status = "4XX", body = ErrorBody),
        (status = 502, body = ErrorBody)))]
async fn publish(
    State(api): State<PeerApi>,
    ApiJson(body): ApiJson<PublishBody>,
) -> Result<(StatusCode, Json<PublicationDto>), ApiError> {
    let p = api
        .peer
        .publish(std::path::Path::new(&body.path), &body.name)
        .await?;
    Ok((StatusCode::CREATED, Json(PublicationDto::from(&p))))
}

/// A file fetched into place.
#[derive(Debug, Serialize, ToSchema)]
pub struct FetchedDto {
    /// Download id.
    pub id: u64,
    /// Published name.
    pub name: String,
    /// Where it is.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Content id.
    pub content_id: String,
}

/// This peer's own repository.
#[derive(Debug, Serialize, ToSchema)]
pub struct RepoReply {
    /// Repository folder.
    pub path: String,
    /// Files it published.
    pub published: Vec<PublicationDto>,
    /// Files it fetched.
    pub fetched: Vec<FetchedDto>,
}

#[utoipa::path(get, path = "/api/repo", tag = "peer",
    responses((status = 200, body = RepoReply)))]
async fn repo(State(api): State<PeerApi>) -> Json<RepoReply> {
    let fetched = api
        .peer
        .downloads()
        .iter()
        .filter(|d| d.snapshot().state == DownloadState::Done)
        .map(|d| FetchedDto {
            id: d.id,
            name: d.name.clone(),
            path: d.dest.display().to_string(),
            size: d.snapshot().bytes_total,
            content_id: d.content_id.to_string(),
        })
        .collect();
    Json(RepoReply {
        path: api.peer.repo().display().to_string(),
        published: api
            .peer
            .publications()
            .iter()
            .map(PublicationDto::from)
            .collect(),
        fetched,
    })
}

#[utoipa::path(get, path = "/api/files", tag = "peer",
    responses((status = 200, body = FilesReply), (status = "4XX", body = ErrorBody),
        (status = 502, body = ErrorBody)))]
async fn files(State(api): State<PeerApi>) -> Result<Json<FilesReply>, ApiError> {
    let me = api.peer.peer_id();
    let files = api
        .peer
        .files()
        .await?
        .iter()
        .map(|f| FileDto {
            own: Some(f.publisher_id == me),
            ..FileDto::from(f)
        })
        .collect();
    Ok(Json(FilesReply { files }))
}

#[utoipa::path(get, path = "/api/discover", tag = "peer", params(AddrQuery),
    responses((status = 200, body = DiscoverReply), (status = "4XX", body = ErrorBody),
        (status = 502, body = ErrorBody)))]
async fn discover(
    State(api): State<PeerApi>,
    ApiQuery(q): ApiQuery<AddrQuery>,
) -> Result<Json<DiscoverReply>, ApiError> {
    let addr = parse_addr(&q.addr).await?;
    let (id, files) = api.peer.discover(addr).await?;
    Ok(Json(DiscoverReply::new(addr, id, &files)))
}

/// `set_delay seconds`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DelayBody {
    /// Seconds to wait before answering each chunk request (0 to 3600).
    pub seconds: f64,
}

/// The delay now in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct DelayReply {
    /// Seconds.
    pub delay_secs: f64,
}

#[utoipa::path(post, path = "/api/delay", tag = "peer", request_body = DelayBody,
    responses((status = 200, body = DelayReply), (status = 400, body = ErrorBody)))]
async fn delay(
    State(api): State<PeerApi>,
    ApiJson(body): ApiJson<DelayBody>,
) -> Result<Json<DelayReply>, ApiError> {
    let d = api.peer.set_delay(body.seconds)?;
    Ok(Json(DelayReply {
        delay_secs: d.as_secs_f64(),
    }))
}

/// `fetch fname [destination] [peerIP peerPort]`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchBody {
    /// Published name.
    pub name: String,
    /// Destination file or folder (default: the repository's downloads folder).
    #[serde(default)]
    pub dest: Option<String>,
    /// Fetch only from this peer, `IP:PORT` (needed when several peers
    /// published the name).
    #[serde(default)]
    pub from: Option<String>,
}

/// A download and its progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct DownloadDto {
    /// Id, unique within this peer.
    pub id: u64,
    /// Published name.
    pub name: String,
    /// Publisher address.
    pub publisher: String,
    /// Content id.
    pub content_id: String,
    /// Final path.
    pub dest: String,
    /// `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Verified bytes.
    pub bytes_done: u64,
    /// Bytes already verified when this run started (a resumed download);
    /// this run fetched `bytes_done - bytes_at_start`.
    pub bytes_at_start: u64,
    /// File size.
    pub bytes_total: u64,
    /// Verified chunks.
    pub chunks_done: u32,
    /// Number of chunks.
    pub chunks_total: u32,
    /// Verified share, 0 to 100.
    pub percent: f64,
    /// Bytes per second (smoothed).
    pub rate: f64,
    /// Seconds left at the current rate.
    pub eta_secs: Option<f64>,
    /// Sources connected now.
    pub sources: usize,
    /// Seconds since the start.
    pub elapsed_secs: f64,
    /// `/api/downloads/{id}` only: one character per chunk, `1` = verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub have: Option<String>,
}

impl DownloadDto {
    fn new(d: &DownloadHandle, with_map: bool) -> Self {
        let p = d.snapshot();
        let (state, error) = match &p.state {
            DownloadState::Running => ("running", None),
            DownloadState::Done => ("done", None),
            DownloadState::Failed(why) => ("failed", Some(why.clone())),
            DownloadState::Cancelled => ("cancelled", None),
        };
        let percent = if p.bytes_total == 0 {
            if p.state == DownloadState::Done {
                100.0
            } else {
                0.0
            }
        } else {
            p.bytes_done as f64 * 100.0 / p.bytes_total as f64
        };
        let eta_secs = (p.state == DownloadState::Running && p.rate > 1.0)
            .then(|| p.bytes_total.saturating_sub(p.bytes_done) as f64 / p.rate);
        let have = with_map.then(|| {
            (0..p.have.len())
                .map(|i| if p.have.get(i) { '1' } else { '0' })
                .collect()
        });
        Self {
            id: d.id,
            name: d.name.clone(),
            publisher: d.publisher.to_string(),
            content_id: d.content_id.to_string(),
            dest: d.dest.display().to_string(),
            state: state.into(),
            error,
            bytes_done: p.bytes_done,
            bytes_at_start: p.bytes_at_start,
            bytes_total: p.bytes_total,
            chunks_done: p.chunks_done,
            chunks_total: p.chunks_total,
            percent,
            rate: p.rate,
            eta_secs,
            sources: p.sources,
            elapsed_secs: p.elapsed.as_secs_f64(),
            have,
        }
    }
}

/// Every download of this session.
#[derive(Debug, Serialize, ToSchema)]
pub struct DownloadsReply {
    /// Downloads, oldest first.
    pub downloads: Vec<DownloadDto>,
}

#[utoipa::path(post, path = "/api/fetch", tag = "peer", request_body = FetchBody,
    responses((status = 201, body = DownloadDto), (status = "4XX", body = ErrorBody),
        (status = 502, body = ErrorBody)))]
async fn fetch(
    State(api): State<PeerApi>,
    ApiJson(body): ApiJson<FetchBody>,
) -> Result<(StatusCode, Json<DownloadDto>), ApiError> {
    let from = match body.from.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(a) => Some(parse_addr(a).await?),
    };
    let dest = body
        .dest
        .as_deref()
        .filter(|d| !d.trim().is_empty())
        .map(PathBuf::from);
    let d = api.peer.fetch(&body.name, dest.as_deref(), from).await?;
    Ok((StatusCode::CREATED, Json(DownloadDto::new(&d, false))))
}

fn all_downloads(peer: &PeerHandle) -> DownloadsReply {
    DownloadsReply {
        downloads: peer
            .downloads()
            .iter()
            .map(|d| DownloadDto::new(d, false))
            .collect(),
    }
}

#[utoipa::path(get, path = "/api/downloads", tag = "peer",
    responses((status = 200, body = DownloadsReply)))]
async fn downloads(State(api): State<PeerApi>) -> Json<DownloadsReply> {
    Json(all_downloads(&api.peer))
}

fn find_download(peer: &PeerHandle, id: &str) -> Result<Arc<DownloadHandle>, ApiError> {
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_download",
            format!("there is no download #{id}"),
        )
    };
    let id: u64 = id.parse().map_err(|_| missing())?;
    peer.download(id).ok_or_else(missing)
}

#[utoipa::path(get, path = "/api/downloads/{id}", tag = "peer",
    params(("id" = u64, Path, description = "download id")),
    responses((status = 200, body = DownloadDto), (status = 404, body = ErrorBody)))]
async fn download(
    State(api): State<PeerApi>,
    Path(id): Path<String>,
) -> Result<Json<DownloadDto>, ApiError> {
    let d = find_download(&api.peer, &id)?;
    Ok(Json(DownloadDto::new(&d, true)))
}

#[utoipa::path(post, path = "/api/downloads/{id}/cancel", tag = "peer", request_body = Empty,
    params(("id" = u64, Path, description = "download id")),
    responses((status = 200, body = DownloadDto), (status = 404, body = ErrorBody)))]
async fn cancel(
    State(api): State<PeerApi>,
    Path(id): Path<String>,
    ApiJson(_empty): ApiJson<Empty>,
) -> Result<Json<DownloadDto>, ApiError> {
    let d = find_download(&api.peer, &id)?;
    if !d.snapshot().state.is_finished() {
        d.cancel();
        // The cancel lands within a scheduler turn; answer with the outcome.
        let _ = tokio::time::timeout(Duration::from_secs(2), d.wait()).await;
    }
    Ok(Json(DownloadDto::new(&d, false)))
}

#[utoipa::path(post, path = "/api/downloads/{id}/resume", tag = "peer", request_body = Empty,
    params(("id" = u64, Path, description = "download id")),
    responses((status = 200, body = DownloadDto), (status = "4XX", body = ErrorBody)))]
async fn resume(
    State(api): State<PeerApi>,
    Path(id): Path<String>,
    ApiJson(_empty): ApiJson<Empty>,
) -> Result<Json<DownloadDto>, ApiError> {
    let d = find_download(&api.peer, &id)?;
    let d = api.peer.resume(d.id).await?;
    Ok(Json(DownloadDto::new(&d, false)))
}

/// Data of the `tracker` event.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrackerEvent {
    /// `lost` or `reconnected`.
    pub state: String,
    /// Tracker address.
    pub addr: String,
}

/// How often `downloads` events are sent while a download runs.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

struct EventFeed {
    peer: PeerHandle,
    rx: tokio::sync::broadcast::Receiver<PeerEvent>,
    tick: tokio::time::Interval,
    first: bool,
    was_running: bool,
}

impl EventFeed {
    fn downloads(&mut self) -> Event {
        let reply = all_downloads(&self.peer);
        self.was_running = reply.downloads.iter().any(|d| d.state == "running");
        json_event("downloads", &reply)
    }

    async fn next(&mut self) -> Option<Event> {
        if std::mem::take(&mut self.first) {
            return Some(self.downloads());
        }
        loop {
            tokio::select! {
                _ = self.tick.tick() => {
                    let running = self.peer.downloads().iter()
                        .any(|d| !d.snapshot().state.is_finished());
                    if running || self.was_running {
                        return Some(self.downloads());
                    }
                }
                ev = self.rx.recv() => match ev {
                    Ok(PeerEvent::DownloadEnded { id, .. }) => {
                        if let Some(d) = self.peer.download(id) {
                            // The next tick resends the list with its final state.
                            self.was_running = true;
                            return Some(json_event("ended", &DownloadDto::new(&d, false)));
                        }
                    }
                    Ok(PeerEvent::TrackerLost(addr)) => {
                        return Some(json_event("tracker", &TrackerEvent {
                            state: "lost".into(), addr: addr.to_string(),
                        }));
                    }
                    Ok(PeerEvent::TrackerReconnected(addr)) => {
                        return Some(json_event("tracker", &TrackerEvent {
                            state: "reconnected".into(), addr: addr.to_string(),
                        }));
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

fn json_event<T: Serialize>(name: &str, data: &T) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_default()
}

#[utoipa::path(get, path = "/api/events", tag = "peer",
    responses((status = 200, content_type = "text/event-stream",
        description = "`downloads` (every download, every 500 ms while one runs), `ended` (a download), `tracker` ({state, addr})")))]
async fn events(State(api): State<PeerApi>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let feed = EventFeed {
        rx: api.peer.subscribe(),
        peer: api.peer,
        tick,
        first: true,
        was_running: false,
    };
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok(event), feed))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[utoipa::path(post, path = "/api/exit", tag = "peer", request_body = Empty,
    responses((status = 202, body = ExitReply)))]
async fn exit(
    State(api): State<PeerApi>,
    ApiJson(_empty): ApiJson<Empty>,
) -> (StatusCode, Json<ExitReply>) {
    crate::exit(&api.exit)
}

#[utoipa::path(get, path = "/api/openapi.json", tag = "peer",
    responses((status = 200, description = "this API as OpenAPI 3.1")))]
async fn openapi_json() -> Json<OpenApi> {
    Json(openapi())
}
