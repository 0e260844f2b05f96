//! The plain HTTP/1.1 endpoints lockd serves next to gRPC on its client port, as etcd does:
//! `GET /health` in etcd's JSON and `GET /metrics` in Prometheus' text format.
//!
//! They are routes of the same router as the gRPC services, so a gRPC call is routed as
//! before (by its `/service/method` path) and pays nothing for them; only the connection's
//! first bytes are read once more, to tell HTTP/2 from HTTP/1.1. A path nothing serves gets
//! gRPC's `UNIMPLEMENTED` when the request is gRPC (what etcd's clients expect of a service
//! a server lacks) and a JSON 404 otherwise.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use tonic::service::Routes;

use super::service::Core;

/// The content type of the Prometheus text exposition this module renders.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `grpc` (lockd's gRPC services) with `/health`, `/metrics` and the fallback added.
pub fn routes(core: Arc<Core>, grpc: Routes) -> Routes {
    // Replaces tonic's fallback, which answers every unknown path as an unknown gRPC service.
    grpc.into_axum_router()
        .merge(http_routes(core))
        .fallback(not_found)
        .into()
}

/// `/health` and `/metrics` alone, for a listener of their own (`--listen-metrics-urls`).
pub fn metrics_router(core: Arc<Core>) -> axum::Router {
    http_routes(core).fallback(not_found)
}

fn http_routes(core: Arc<Core>) -> axum::Router {
    axum::Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(core)
}

/// Why lockd cannot serve now, or `None` when it can.
fn unhealthy(core: &Core) -> Option<String> {
    if core.is_stopping() {
        return Some("lockd is shutting down".into());
    }
    core.state()
        .write_failure()
        .map(|why| format!("cannot reserve revisions in the data dir: {why}"))
}

/// etcd's answer (3.4, 3.5): `{"health":"true","reason":""}` with 200, or
/// `"health":"false"` with the reason and 503.
async fn health(State(core): State<Arc<Core>>) -> Response {
    let (status, health, reason) = match unhealthy(&core) {
        None => (StatusCode::OK, "true", String::new()),
        Some(reason) => {
            tracing::debug!(%reason, "health check answered unhealthy");
            (StatusCode::SERVICE_UNAVAILABLE, "false", reason)
        }
    };
    json(
        status,
        serde_json::json!({ "health": health, "reason": reason }),
    )
}

async fn metrics(State(core): State<Arc<Core>>) -> Response {
    // The gauges are copied out first, so the state is locked only for the copy.
    let gauges = core.state().gauges();
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        core.metrics.render(&gauges),
    )
        .into_response()
}

async fn not_found(uri: Uri, headers: HeaderMap) -> Response {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"));
    if grpc {
        let service = uri.path().trim_start_matches('/');
        let service = service.split('/').next().unwrap_or_default();
        let status = tonic::Status::unimplemented(format!("unknown service {service}"));
        let (parts, ()) = status.into_http::<()>().into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    json(
        StatusCode::NOT_FOUND,
        serde_json::json!({ "error": "not found", "path": uri.path() }),
    )
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::etcdserverpb as pb;
    use crate::lockd::meta::{RESERVATION_BLOCK, Revisions};
    use crate::lockd::state::{Limits, State as LockdState};
    use tokio::sync::watch;

    fn limits() -> Limits {
        Limits {
            min_ttl: 1,
            history: 16,
            history_bytes: 1 << 20,
            quota_bytes: 1 << 20,
            lock_delay: std::time::Duration::ZERO,
        }
    }

    async fn answer(core: Arc<Core>) -> (StatusCode, serde_json::Value) {
        let response = health(State(core)).await;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn health_is_false_with_a_reason_once_shutdown_begins() {
        let (revisions, start) = Revisions::in_memory();
        let (stop, stopping) = watch::channel(false);
        let core = Arc::new(Core::new(
            LockdState::new(revisions, start, limits()),
            "http://test".into(),
            stopping,
        ));
        let (status, body) = answer(core.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!({ "health": "true", "reason": "" }));

        stop.send(true).unwrap();
        let (status, body) = answer(core).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["health"], "false");
        assert_eq!(body["reason"], "lockd is shutting down");
    }

    /// The data dir vanishes under a running lockd: the next reservation fails, writes are
    /// refused, and health says so until a reservation succeeds again.
    #[tokio::test]
    async fn health_is_false_while_revisions_cannot_be_reserved() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (revisions, start) = Revisions::open(&data).unwrap();
        let (stop, stopping) = watch::channel(false);
        let core = Arc::new(Core::new(
            LockdState::new(revisions, start, limits()),
            "http://test".into(),
            stopping,
        ));
        let put = pb::PutRequest {
            key: b"k".to_vec(),
            ..Default::default()
        };
        std::fs::remove_dir_all(&data).unwrap();
        // The first block was reserved at start; writes within it need no disk.
        let refused = (0..=RESERVATION_BLOCK)
            .find_map(|_| core.state().put(&put).err())
            .expect("a write past the reserved block is refused");
        assert!(matches!(refused, crate::lockd::EtcdError::Storage(_)));
        let (status, body) = answer(core.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let reason = body["reason"].as_str().unwrap();
        assert!(reason.starts_with("cannot reserve revisions"), "{reason}");

        std::fs::create_dir_all(&data).unwrap();
        core.state().put(&put).unwrap();
        assert_eq!(answer(core).await.0, StatusCode::OK);
        drop(stop);
    }
}
