//! What the HTTP handlers share: the state behind every route and the JSON answers, so that
//! the server (routes, start-up) and the handlers (`seed`, `rest`) each depend on this file
//! and not on each other.

use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::fence::Policy;
use super::metrics::Metrics;
use super::store::StoreHandle;
use super::wire::ErrorBody;

/// What every handler shares, behind one `Arc` so that handing it to a handler costs one
/// reference count, not one per field.
pub(super) type AppState = Arc<App>;

/// The store, the metrics and the policy, shared by every request.
pub(super) struct App {
    pub store: StoreHandle,
    pub metrics: Arc<Metrics>,
    pub policy: Policy,
}

/// A JSON response. Serializing our own plain structs cannot fail; if it somehow did, the
/// client still gets a JSON 500 rather than a dropped connection.
pub(super) fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            format!(r#"{{"error":"internal","message":"cannot encode the answer: {e}"}}"#),
        )
            .into_response(),
    }
}

/// `{"error": code, "message": text}` with `status`.
pub(super) fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    json(
        status,
        &ErrorBody {
            error: code.to_owned(),
            message,
        },
    )
}
