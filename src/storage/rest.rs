//! The REST face: `GET`/`PUT /v1/kv/{key}` (or `/v1/kv?key=K`), `GET /v1/fences/{name}`,
//! `/healthz`, `/metrics`.
//!
//! The fencing token travels in the `Fencing-Token` header and the lock name in an optional
//! `?fence=NAME`. A stale token is a `409` whose body names the fence, the presented and the
//! current token; a write without a token under a checking policy is a `400`.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::debug;

use super::fence::{Binding, Rejection};
use super::http::{AppState, error_response, json};
use super::metrics::{Op as MetricOp, Outcome};
use super::store::{KeyFence, Op, Reply, StoreError, TxnOp, TxnResult};
use super::verify::Unverified;
use super::wire::{
    DecodeError, FENCING_TOKEN, FenceState, KvValue, KvWritten, StaleBody, TxnAnswer, TxnBody,
    TxnOutcome, TxnStep, UnverifiedBody, WrongFenceBody, check_name, parse_token_header,
};
use crate::FencingToken;

#[derive(Debug, Deserialize)]
pub(super) struct FenceParam {
    fence: Option<String>,
    /// The key, for `/v1/kv?key=K`: the form for keys that a URL path cannot carry (`.` and
    /// `..` are removed from paths by every URL parser, as RFC 3986 dot segments).
    key: Option<String>,
}

/// The parts every key request shares, validated.
struct KeyRequest {
    key: String,
    fence: Option<String>,
    token: Option<FencingToken>,
}

/// Validates the path, `?fence=` and the `Fencing-Token` header; `Err` holds the message of
/// a 400.
fn key_request(
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<FenceParam>, QueryRejection>,
    headers: &HeaderMap,
) -> Result<KeyRequest, String> {
    let Query(param) = query.map_err(|e| e.body_text())?;
    let key = match (param.key, path) {
        (None, Ok(Path(key))) => key,
        (Some(key), Err(_)) => key,
        (Some(_), Ok(_)) => return Err("name the key in the path or in ?key=, not both".into()),
        (None, Err(e)) => return Err(e.body_text()),
    };
    check_name("the key", &key).map_err(|e| e.to_string())?;
    let fence = param.fence.filter(|f| !f.is_empty());
    if let Some(fence) = &fence {
        check_name("the fence name", fence).map_err(|e| e.to_string())?;
    }
    let token = parse_token_header(headers.get(FENCING_TOKEN)).map_err(|e| e.to_string())?;
    debug!(
        key = %key,
        fence = fence.as_deref().unwrap_or(&key),
        token = token.map_or(0, FencingToken::get),
        "request"
    );
    Ok(KeyRequest { key, fence, token })
}

/// The answer to a body that could not be read: `413 body_too_large` over `--max-body`,
/// otherwise the extractor's own status as `bad_request`.
fn body_refused(app: &AppState, op: MetricOp, rejection: &BytesRejection) -> Response {
    app.metrics.request(op, Outcome::BadRequest);
    let code = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        "body_too_large"
    } else {
        "bad_request"
    };
    error_response(rejection.status(), code, rejection.body_text())
}

fn bad_request(app: &AppState, op: MetricOp, message: String) -> Response {
    app.metrics.request(op, Outcome::BadRequest);
    error_response(StatusCode::BAD_REQUEST, "bad_request", message)
}

pub(super) async fn get_value(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<FenceParam>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let request = match key_request(path, query, &headers) {
        Ok(request) => request,
        Err(message) => return bad_request(&app, MetricOp::Read, message),
    };
    let op = Op::Read {
        key: request.key.clone(),
        fence: request.fence,
        token: request.token,
    };
    match app.execute(op).await {
        Ok(Reply::Value(Some(entry), KeyFence { binding, token })) => {
            app.metrics.request(MetricOp::Read, Outcome::Ok);
            let body = KvValue {
                key: request.key,
                value: String::from_utf8_lossy(&entry.value).into_owned(),
                token: entry.token,
                fence: binding
                    .as_ref()
                    .and_then(|b| b.lock_name().map(str::to_owned)),
                own_fence: binding == Some(Binding::OwnKey),
                fence_token: token,
            };
            json(StatusCode::OK, &body)
        }
        Ok(_) => {
            app.metrics.request(MetricOp::Read, Outcome::NotFound);
            error_response(
                StatusCode::NOT_FOUND,
                "key_not_found",
                format!("no value under {:?}", request.key),
            )
        }
        Err(e) => refused(&app, MetricOp::Read, e),
    }
}

pub(super) async fn put_value(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<FenceParam>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_refused(&app, MetricOp::Write, &rejection),
    };
    let request =
        key_request(path, query, &headers).and_then(|request| match std::str::from_utf8(&body) {
            Ok(_) => Ok(request),
            Err(_) => Err(DecodeError::ValueNotUtf8.to_string()),
        });
    let request = match request {
        Ok(request) => request,
        Err(message) => return bad_request(&app, MetricOp::Write, message),
    };
    let op = Op::Write {
        key: request.key.clone(),
        value: body,
        fence: request.fence,
        token: request.token,
    };
    match app.execute(op).await {
        Ok(_) => {
            app.metrics.request(MetricOp::Write, Outcome::Ok);
            let body = KvWritten {
                key: request.key,
                token: request.token,
            };
            json(StatusCode::OK, &body)
        }
        Err(e) => refused(&app, MetricOp::Write, e),
    }
}

/// `POST /v1/txn?fence=NAME`: the steps of the body under one lock and one token.
pub(super) async fn post_txn(
    State(app): State<AppState>,
    query: Result<Query<FenceParam>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_refused(&app, MetricOp::Txn, &rejection),
    };
    let decoded = (|| {
        let Query(param) = query.map_err(|e| e.body_text())?;
        let fence = param
            .fence
            .filter(|f| !f.is_empty())
            .ok_or_else(|| DecodeError::TxnWithoutFence.to_string())?;
        check_name("the fence name", &fence).map_err(|e| e.to_string())?;
        let token = parse_token_header(headers.get(FENCING_TOKEN)).map_err(|e| e.to_string())?;
        let txn = TxnBody::decode(&body).map_err(|e| e.to_string())?;
        Ok::<_, String>((fence, token, txn))
    })();
    let (fence, token, txn) = match decoded {
        Ok(decoded) => decoded,
        Err(message) => return bad_request(&app, MetricOp::Txn, message),
    };
    debug!(fence = %fence, token = token.map_or(0, FencingToken::get), ops = txn.ops.len(), "txn");
    let keys: Vec<String> = txn.ops.iter().map(|s| s.key().to_owned()).collect();
    let ops = txn
        .ops
        .into_iter()
        .map(|step| match step {
            TxnStep::Read { key } => TxnOp::Read { key },
            TxnStep::Write { key, val } => TxnOp::Write {
                key,
                value: Bytes::from(val),
            },
            TxnStep::Delete { key } => TxnOp::Delete { key },
        })
        .collect();
    match app.execute(Op::Txn { fence, token, ops }).await {
        Ok(Reply::Txn(results)) => {
            app.metrics.request(MetricOp::Txn, Outcome::Ok);
            let results = keys
                .into_iter()
                .zip(results)
                .map(|(key, result)| match result {
                    TxnResult::Read(entry) => TxnOutcome::Read {
                        key,
                        token: entry.as_ref().and_then(|e| e.token),
                        value: entry.map(|e| String::from_utf8_lossy(&e.value).into_owned()),
                    },
                    TxnResult::Written => TxnOutcome::Write { key },
                    TxnResult::Deleted(deleted) => TxnOutcome::Delete { key, deleted },
                })
                .collect();
            json(StatusCode::OK, &TxnAnswer { token, results })
        }
        Ok(_) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the store answered a transaction with something else".into(),
        ),
        Err(e) => refused(&app, MetricOp::Txn, e),
    }
}

pub(super) async fn get_fence(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let name = path.map_err(|e| e.body_text()).and_then(|Path(name)| {
        check_name("the fence name", &name).map_err(|e| e.to_string())?;
        Ok(name)
    });
    let name = match name {
        Ok(name) => name,
        Err(message) => return bad_request(&app, MetricOp::Fence, message),
    };
    match app.execute(Op::Fence { name: name.clone() }).await {
        Ok(Reply::Fence(Some(token))) => {
            app.metrics.request(MetricOp::Fence, Outcome::Ok);
            json(StatusCode::OK, &FenceState { fence: name, token })
        }
        Ok(_) => {
            app.metrics.request(MetricOp::Fence, Outcome::NotFound);
            error_response(
                StatusCode::NOT_FOUND,
                "fence_not_found",
                format!("no token has been seen for fence {name:?}"),
            )
        }
        Err(e) => refused(&app, MetricOp::Fence, e),
    }
}

pub(super) async fn healthz(State(app): State<AppState>) -> Response {
    if app.store.is_healthy() {
        json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
    } else {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_failed",
            "a commit failed; the store refuses all requests".into(),
        )
    }
}

pub(super) async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

fn refused(app: &AppState, op: MetricOp, error: StoreError) -> Response {
    match error {
        StoreError::Rejected(Rejection::Stale {
            fence,
            presented,
            current,
        }) => {
            app.metrics.request(op, Outcome::Stale);
            let body = StaleBody {
                error: "stale_token".into(),
                fence,
                presented,
                current,
            };
            json(StatusCode::CONFLICT, &body)
        }
        StoreError::Rejected(
            ref rejection @ Rejection::WrongFence {
                ref key,
                ref bound,
                ref requested,
            },
        ) => {
            app.metrics.request(op, Outcome::WrongFence);
            let body = WrongFenceBody {
                error: "wrong_fence".into(),
                message: rejection.to_string(),
                key: key.clone(),
                fence: bound.lock_name().map(str::to_owned),
                requested: requested.lock_name().map(str::to_owned),
            };
            json(StatusCode::CONFLICT, &body)
        }
        StoreError::Rejected(rejection @ Rejection::MissingToken { .. }) => {
            app.metrics.request(op, Outcome::MissingToken);
            error_response(
                StatusCode::BAD_REQUEST,
                "missing_token",
                format!("{rejection}: send it in the Fencing-Token header"),
            )
        }
        StoreError::Unverified(unverified) => {
            app.metrics.request(op, Outcome::Unverified);
            let message = unverified.to_string();
            let (code, fence, token) = match unverified {
                Unverified::UnknownToken { fence, token } => ("unknown_token", fence, token),
                Unverified::HolderGone { fence, token } => ("holder_gone", fence, token),
                Unverified::NotHolder { fence, token } => ("not_holder", fence, token),
                Unverified::NoLockName { .. } => {
                    return error_response(StatusCode::BAD_REQUEST, "lock_name_required", message);
                }
                Unverified::Unavailable(_) => {
                    return error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "lock_service_unavailable",
                        message,
                    );
                }
            };
            let body = UnverifiedBody {
                error: code.into(),
                message,
                fence,
                token,
            };
            json(StatusCode::CONFLICT, &body)
        }
        StoreError::Failed(_) | StoreError::Closed => {
            app.metrics.request(op, Outcome::Failed);
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_failed",
                error.to_string(),
            )
        }
    }
}
