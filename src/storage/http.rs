//! What the HTTP handlers share: the state behind every route and the JSON answers, so that
//! the server (routes, start-up) and the handlers (`seed`, `rest`) each depend on this file
//! and not on each other.

use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::fence::{self, Access, Policy};
use super::metrics::Metrics;
use super::store::{Op, Reply, StoreError, StoreHandle};
use super::verify::{Unverified, Verifier};
use super::wire::ErrorBody;

/// What every handler shares, behind one `Arc` so that handing it to a handler costs one
/// reference count, not one per field.
pub(super) type AppState = Arc<App>;

/// The store, the metrics and the policy, shared by every request.
pub(super) struct App {
    pub store: StoreHandle,
    pub metrics: Arc<Metrics>,
    pub policy: Policy,
    /// Set when tokens are verified against the lock service.
    pub verifier: std::sync::OnceLock<Arc<Verifier>>,
}

impl App {
    /// Runs `op` on the store, after verifying its token with the lock service when the
    /// server does (`--verify-tokens`) and the policy checks the op at all.
    pub async fn execute(&self, op: Op) -> Result<Reply, StoreError> {
        if let Some(verifier) = self.verifier.get()
            && let Some((key, lock_name, token)) = self.checked(&op)
        {
            let Some(lock_name) = lock_name else {
                return Err(StoreError::Unverified(Unverified::NoLockName {
                    key: key.to_owned(),
                }));
            };
            verifier.verify(lock_name, token).await?;
        }
        self.store.execute(op).await
    }

    /// The key, lock name and token of an op whose token the policy checks.
    fn checked<'a>(&self, op: &'a Op) -> Option<(&'a str, Option<&'a str>, crate::FencingToken)> {
        let (key, access, fence, token) = match op {
            Op::Read { key, fence, token } => (key, Access::Read, fence.as_deref(), *token),
            Op::Write {
                key, fence, token, ..
            } => (key, Access::Write, fence.as_deref(), *token),
            Op::Txn { fence, token, .. } => (fence, Access::Write, Some(fence.as_str()), *token),
            Op::Fence { .. } => return None,
        };
        let token = token?;
        fence::is_checked(self.policy, access, Some(token)).then_some((key.as_str(), fence, token))
    }
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
