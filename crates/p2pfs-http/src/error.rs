//! JSON errors with stable codes, and extractors whose rejections become
//! such errors (so malformed input always gets a clear 4xx in JSON).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use p2pfs_peer::PeerError;
use p2pfs_tracker::TrackerError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A stable code for programs and a message for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `name_taken`.
    pub code: String,
    /// What went wrong, worded for people.
    pub message: String,
}

/// An error answer: status, code and message.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Human message.
    pub message: String,
}

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// A 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "HTTP API error");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// The HTTP status for a stable error code.
pub(crate) fn status_for(code: &str) -> StatusCode {
    match code {
        "bad_request" | "invalid_name" | "bad_local_file" | "bad_destination" | "bad_address"
        | "bad_delay" | "ping_self" | "refused" => StatusCode::BAD_REQUEST,
        "not_found" | "unknown_peer" | "no_such_download" | "no_such_route" => {
            StatusCode::NOT_FOUND
        }
        "cannot_resume" | "not_connected" | "already_started" | "name_taken" | "path_taken"
        | "own_file" | "destination_exists" | "already_held" | "ambiguous" => StatusCode::CONFLICT,
        "tracker_unreachable" | "tracker_refused" | "peer_unreachable" => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<PeerError> for ApiError {
    fn from(e: PeerError) -> Self {
        let code = e.code();
        Self::new(status_for(code), code, e.to_string())
    }
}

impl From<TrackerError> for ApiError {
    fn from(e: TrackerError) -> Self {
        let code = e.code();
        Self::new(status_for(code), code, e.to_string())
    }
}

fn rejection(status: StatusCode, text: String) -> ApiError {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "bad_request",
    };
    let status = match status {
        // Type errors and missing fields are the client's fault too; one
        // status keeps clients simple.
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        s => s,
    };
    ApiError::new(status, code, text)
}

/// `Json<T>` whose rejections are JSON [`ApiError`]s.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> ApiError {
    let text = match &e {
        JsonRejection::MissingJsonContentType(_) => {
            "send a JSON body with the header Content-Type: application/json".to_string()
        }
        JsonRejection::BytesRejection(_) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            format!(
                "the request body is larger than the limit of {} KiB",
                crate::BODY_LIMIT / 1024
            )
        }
        _ => tidy(&e.body_text()),
    };
    rejection(e.status(), text)
}

/// `Query<T>` whose rejections are JSON [`ApiError`]s.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(e) => Err(query_rejection(e)),
        }
    }
}

fn query_rejection(e: QueryRejection) -> ApiError {
    rejection(e.status(), tidy(&e.body_text()))
}

/// Rewords axum's rejection texts ("Failed to deserialize the JSON body
/// into the target type: missing field `name`") for people.
fn tidy(text: &str) -> String {
    for (prefix, ours) in [
        (
            "Failed to deserialize the JSON body into the target type: ",
            "invalid request body: ",
        ),
        (
            "Failed to parse the request body as JSON: ",
            "the request body is not valid JSON: ",
        ),
        ("Failed to deserialize query string: ", "invalid query: "),
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return format!("{ours}{rest}");
        }
    }
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_and_tracker_code_has_a_client_or_gateway_status() {
        for code in [
            "not_connected",
            "name_taken",
            "path_taken",
            "own_file",
            "destination_exists",
            "already_held",
            "ambiguous",
            "invalid_name",
            "bad_local_file",
            "bad_destination",
            "not_found",
            "refused",
            "tracker_unreachable",
            "tracker_refused",
            "already_started",
            "ping_self",
            "peer_unreachable",
            "unknown_peer",
        ] {
            let s = status_for(code);
            assert!(
                s.is_client_error() || s == StatusCode::BAD_GATEWAY,
                "{code} -> {s}"
            );
        }
        assert_eq!(status_for("io"), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
