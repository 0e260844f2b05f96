//! The HTTP server: routes, shared state, start-up and graceful shutdown.
//!
//! Routes (keys and fence names may contain `/`: they are matched by a catch-all segment, so
//! `/v1/kv//lock` and `/v1/kv/%2Flock` both name the key `/lock`):
//!
//! | route | handler |
//! |---|---|
//! | `POST /` | the seed's JSON protocol (`seed.rs`) |
//! | `GET`, `PUT /v1/kv/{key}`, `/v1/kv?key=K` | the REST face (`rest.rs`) |
//! | `POST /v1/txn?fence=NAME` | several steps under one lock and one token, all or none |
//! | `GET /v1/fences/{name}` | a fence's current token |
//! | `GET /healthz`, `GET /metrics` | liveness, Prometheus metrics |
//!
//! Every refusal, including an unknown path, a wrong method, a body over `--max-body`, a
//! request past the bounds of `limits` and one without the bearer token (`auth`), is answered
//! with a JSON body; the server itself never stops on bad input. With [`Config::tls`] every
//! route is served over HTTPS only.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::Listener;
use tokio::net::TcpListener;
use tracing::info;

use super::auth::{AuthConfig, require_token};
use super::fence::Policy;
use super::http::{App, AppState, error_response};
use super::limits::{AdmitLayer, BodyQueue, BoundedListener, Limits, LimitsError};
use super::metrics::Metrics;
use super::store::{Engine, Store};
use super::tls::{TlsConfig, TlsListener};
use super::{rest, seed};
use crate::storage::backend::BackendError;

/// How the server stores data and which fence policy it enforces.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the data lives (on disk or in memory).
    pub engine: Engine,
    /// Which requests the fences check.
    pub policy: Policy,
    /// Bounds on bodies and connections.
    pub limits: Limits,
    /// HTTPS instead of HTTP; `None` serves plaintext.
    pub tls: Option<TlsConfig>,
    /// A bearer token every request must carry; `None` lets anyone in.
    pub auth: Option<AuthConfig>,
}

/// Why the server could not start or stopped with an error.
///
/// Each variant shows its cause in its message and has no `source()`, so a cause chain
/// (`{:#}`) prints it once, and a plain `{}` (the demo logs one that way) still shows it.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The storage engine could not open its data.
    #[error("cannot open the store: {0}")]
    Store(BackendError),
    /// Accepting or serving a connection failed.
    #[error("server I/O: {0}")]
    Io(std::io::Error),
    /// The limits cannot work together.
    #[error("{0}")]
    Limits(LimitsError),
    /// The certificate or key cannot be used; the text says why.
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    /// The blocking task that opens or closes the store panicked.
    #[error("opening or closing the store panicked: {0}")]
    Join(tokio::task::JoinError),
}

// Written out rather than `#[from]`, which would also make the cause the `source()`.
impl From<BackendError> for ServerError {
    fn from(e: BackendError) -> Self {
        ServerError::Store(e)
    }
}

impl From<std::io::Error> for ServerError {
    fn from(e: std::io::Error) -> Self {
        ServerError::Io(e)
    }
}

impl From<tokio::task::JoinError> for ServerError {
    fn from(e: tokio::task::JoinError) -> Self {
        ServerError::Join(e)
    }
}

/// A server whose store is open, ready to serve a listener.
pub struct Server {
    store: Store,
    state: AppState,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    auth: Option<Arc<AuthConfig>>,
}

impl Server {
    /// Opens the store (replaying its journal when durable). Blocking work runs off the
    /// async threads.
    pub async fn open(config: Config) -> Result<Self, ServerError> {
        config.limits.check().map_err(ServerError::Limits)?;
        let tls = config
            .tls
            .as_ref()
            .map(TlsConfig::acceptor)
            .transpose()
            .map_err(ServerError::Tls)?;
        let metrics = Arc::new(Metrics::default());
        let store = {
            let metrics = metrics.clone();
            let engine = config.engine.clone();
            tokio::task::spawn_blocking(move || Store::open(&engine, config.policy, metrics))
                .await??
        };
        let state = Arc::new(App {
            store: store.handle(),
            metrics,
            policy: config.policy,
            verifier: std::sync::OnceLock::new(),
        });
        Ok(Server {
            store,
            state,
            limits: config.limits,
            tls,
            auth: config.auth.map(Arc::new),
        })
    }

    /// Verifies every checked token with the lock service behind `verifier` before the
    /// store sees the request ([`verify`](super::verify)). Call before serving.
    pub fn verify_tokens(self, verifier: Arc<super::verify::Verifier>) -> Self {
        // Only ever set here, once per server.
        let _ = self.state.verifier.set(verifier);
        self
    }

    /// Whether the server speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves `listener` until `shutdown` resolves, then lets open requests finish, commits
    /// everything accepted and closes the store.
    ///
    /// On the work-stealing runtime, on purpose. Measured under `wrk -t2 -c32` durable strict
    /// on 2 cores: one current-thread runtime per core with connections dealt round-robin
    /// was no faster (onekey 53-58k vs 58-63k req/s, manykeys 49-53k vs 46-50k), nor were
    /// 3 workers instead of 2. Each request already costs one `recvfrom` and one `writev`;
    /// what remains is about 0.25 context switches per request in memory and 0.5 durable
    /// (the committer thread's wake-ups and the syncs).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let metrics = self.state.metrics.clone();
        let queue = BodyQueue::new(self.limits, metrics.clone());
        let mut app = router(self.state, self.limits.max_body);
        if let Some(auth) = self.auth {
            // Around every route and the fallbacks, so that without the token even an
            // unknown path is a 401: the routes are not shown to strangers.
            app = app.layer(axum::middleware::from_fn_with_state(auth, require_token));
        }
        let app = app.layer(AdmitLayer(queue));
        let served = match self.tls {
            None => {
                let listener = BoundedListener::new(listener, self.limits.max_connections, metrics);
                serve_on(listener, app, shutdown).await
            }
            Some(acceptor) => {
                // A connection over the bound is closed rather than answered: a plaintext
                // 503 would break the client's handshake anyway.
                let listener = BoundedListener::new(listener, self.limits.max_connections, metrics)
                    .closing_refusals();
                serve_on(TlsListener::new(listener, acceptor)?, app, shutdown).await
            }
        };
        let store = self.store;
        tokio::task::spawn_blocking(move || store.close()).await?;
        info!("storage stopped");
        Ok(served?)
    }
}

async fn serve_on<L>(
    listener: L,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener<Addr = std::net::SocketAddr>,
{
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Opens the store and serves `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    Server::open(config).await?.serve(listener, shutdown).await
}

fn router(state: AppState, max_body: usize) -> Router {
    Router::new()
        .route("/", post(seed::handle))
        .route("/v1/kv/{*key}", get(rest::get_value).put(rest::put_value))
        .route("/v1/kv", get(rest::get_value).put(rest::put_value))
        .route("/v1/txn", post(rest::post_txn))
        .route("/v1/fences/{*name}", get(rest::get_fence))
        .route("/healthz", get(rest::healthz))
        .route("/metrics", get(rest::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
