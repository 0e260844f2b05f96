//! `POST /`: the seed's JSON protocol, answered the way the seed's storage answers.
//!
//! Outcomes of the protocol itself (success, a missing key, a stale or missing token) are
//! `200` with `err` set or empty, as the seed answers them, because the seed's client reads
//! only the body. Requests that cannot be decoded are `400` (`413` when too large) with the
//! same `{"val","version","err"}` shape, so a seed client still decodes the answer.

use std::borrow::Cow;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::Response;
use tracing::debug;

use super::fence::{Policy, Rejection};
use super::http::{AppState, json};
use super::metrics::{Op as MetricOp, Outcome};
use super::store::{Op, Reply, StoreError};
use super::verify::Unverified;
use super::wire::{KEY_NOT_FOUND, SeedOp, SeedRequest, SeedResponse};
use crate::FencingToken;

pub(super) async fn handle(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let decoded = body
        .map_err(|rejection| (rejection.status(), rejection.body_text()))
        .and_then(|body| {
            SeedRequest::decode(&body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))
        });
    let request = match decoded {
        Ok(request) => request,
        Err((status, message)) => {
            debug!(%status, "undecodable request: {message}");
            app.metrics.request(MetricOp::Unknown, Outcome::BadRequest);
            return json(status, &SeedResponse::error(&message));
        }
    };
    debug!(
        op = ?request.op,
        key = %request.key,
        fence = request.fence.as_deref().unwrap_or(&request.key),
        token = request.token.map_or(0, FencingToken::get),
        "request"
    );
    let token = request.token;
    match request.op {
        SeedOp::Read => {
            let op = Op::Read {
                key: request.key,
                fence: request.fence,
                token,
            };
            match app.execute(op).await {
                Ok(Reply::Value(Some(entry), _)) => {
                    app.metrics.request(MetricOp::Read, Outcome::Ok);
                    let val = String::from_utf8_lossy(&entry.value);
                    json(StatusCode::OK, &SeedResponse::ok(&val, entry.token))
                }
                Ok(_) => {
                    app.metrics.request(MetricOp::Read, Outcome::NotFound);
                    json(StatusCode::OK, &SeedResponse::error(KEY_NOT_FOUND))
                }
                Err(e) => refused(&app, MetricOp::Read, e),
            }
        }
        SeedOp::Write => {
            let value = Bytes::from(request.val);
            let op = Op::Write {
                key: request.key,
                value: value.clone(),
                fence: request.fence,
                token,
            };
            match app.execute(op).await {
                Ok(_) => {
                    app.metrics.request(MetricOp::Write, Outcome::Ok);
                    // Bytes made from a String: always UTF-8, so this borrows.
                    let val = String::from_utf8_lossy(&value);
                    json(StatusCode::OK, &SeedResponse::ok(&val, token))
                }
                Err(e) => refused(&app, MetricOp::Write, e),
            }
        }
    }
}

/// The answer to a request the store did not carry out.
fn refused(app: &AppState, op: MetricOp, error: StoreError) -> Response {
    let (status, outcome, text): (_, _, Cow<str>) = match &error {
        StoreError::Rejected(Rejection::Stale {
            presented, current, ..
        }) if app.policy == Policy::Seed => (
            StatusCode::OK,
            Outcome::Stale,
            // The seed's own words, so its client prints what the seed's walkthrough shows.
            format!(
                "given version ({:x}) is different from the existing version ({:x})",
                presented.map_or(0, FencingToken::get),
                current.get()
            )
            .into(),
        ),
        StoreError::Rejected(Rejection::Stale { .. }) => {
            (StatusCode::OK, Outcome::Stale, error.to_string().into())
        }
        StoreError::Rejected(Rejection::WrongFence { .. }) => (
            StatusCode::OK,
            Outcome::WrongFence,
            error.to_string().into(),
        ),
        StoreError::Rejected(Rejection::MissingToken { .. }) => (
            StatusCode::OK,
            Outcome::MissingToken,
            error.to_string().into(),
        ),
        StoreError::Unverified(Unverified::Unavailable(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Outcome::Failed,
            error.to_string().into(),
        ),
        // The seed's protocol answers refusals with 200 and an error text.
        StoreError::Unverified(_) => (
            StatusCode::OK,
            Outcome::Unverified,
            error.to_string().into(),
        ),
        StoreError::Failed(_) | StoreError::Closed => (
            StatusCode::SERVICE_UNAVAILABLE,
            Outcome::Failed,
            error.to_string().into(),
        ),
    };
    app.metrics.request(op, outcome);
    json(status, &SeedResponse::error(&text))
}
