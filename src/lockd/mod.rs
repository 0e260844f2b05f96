//! `lockd`: an embedded lock service that speaks etcd's v3 gRPC protocol (the subset in
//! `proto/`), so that fencelock's commands, etcd's `etcdctl` and etcd's client libraries can
//! use it for locking and leasing as they use etcd.
//!
//! - KV: Range (prefixes, limits, sorting, revision filters, past revisions, keys-only,
//!   count-only), Put, DeleteRange, Txn with compares, Compact.
//! - Watch from now or from a past revision, served from a bounded history; a start older
//!   than the history gets etcd's compacted answer.
//! - Leases on lockd's own clock: grant (TTLs below [`Config::min_ttl`] are raised to it),
//!   keep-alive streams, revoke, time-to-live with keys, listing. A lease's keys are deleted
//!   when it expires (checked at each deadline, so within milliseconds of it) or is revoked.
//! - The v3lock service (Lock/Unlock), MemberList and Status describing one member.
//! - On the same port, over HTTP/1.1, etcd's `GET /health` and a Prometheus `GET /metrics`
//!   (the routes in `http.rs`, the series in `metrics.rs`); and, as etcd's
//!   `--listen-metrics-urls` does, on plaintext HTTP listeners of their own
//!   ([`Server::serve_with_metrics`]), which is where monitoring reaches them once the
//!   client port speaks TLS.
//! - TLS on the client port, and mutual TLS ([`TlsConfig`], etcd's `--cert-file`,
//!   `--key-file`, `--trusted-ca-file`, `--client-cert-auth`), through tonic's rustls server.
//!
//! One process, one member, memory only, except for one promise: the revision, and with it
//! every fencing token, never goes back, also across a restart (kept in
//! [`Config::data_dir`], reserved [`RESERVATION_BLOCK`] revisions at a time). Keys and leases
//! do not survive a restart; a holder then finds its lease gone and its session lost, which
//! is safe: it was never told it still held the lock.

mod error;
mod fanout;
mod http;
mod meta;
mod metrics;
mod service;
mod state;
mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tokio::time::{Instant, sleep_until};
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

pub use error::EtcdError;
pub use meta::{MetaError, RESERVATION_BLOCK};
pub use service::API_VERSION;

use crate::etcd::etcdserverpb::watch_server;
use crate::etcd::etcdserverpb::{cluster_server, kv_server, lease_server, maintenance_server};
use crate::etcd::v3lockpb::lock_server;
use meta::Revisions;
use service::{Core, Services};
use state::{Limits, State};

/// The default for [`Config::min_ttl`].
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(1);
/// The default for [`Config::history`].
pub const DEFAULT_HISTORY: usize = 100_000;
/// Bytes of keys and values the history holds at most, previous versions included, so that
/// rewriting large values cannot grow it without bound.
pub const HISTORY_BYTES: usize = 64 * 1024 * 1024;
/// The default for [`Config::max_request_bytes`]: etcd's own default, 1.5 MiB, so that a
/// request etcd refuses is refused here too.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// The default for [`Config::quota_backend_bytes`]. A lock key with its value is well under
/// a kilobyte, so 256 MiB holds hundreds of thousands of lock keys, far more than any lock
/// service carries, while keeping lockd's memory (live keys, plus at most [`HISTORY_BYTES`]
/// of history) well under a gigabyte. etcd's own default, 2 GiB, is sized for a disk.
pub const DEFAULT_QUOTA_BACKEND_BYTES: usize = 256 * 1024 * 1024;
/// What gRPC may decode beyond [`Config::max_request_bytes`] (etcd's own margin), so that a
/// request a little over the limit reaches lockd's check and gets etcd's answer.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// The longest wait between two looks for expired leases. Every lease deadline is at least
/// [`DEFAULT_MIN_TTL`] away when set, so this never delays an expiry; it bounds the wait
/// should a deadline be set in a way this loop did not see.
const EXPIRY_CHECK: Duration = Duration::from_millis(50);

/// How long connections may take to close after a shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How long a client may take over its TLS handshake. Handshakes run concurrently, so a
/// silent client delays no one else; this only frees what it holds.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS on the client port, with the meaning etcd gives its flags of the same names.
#[derive(Clone)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM (`--cert-file`).
    pub cert_pem: Vec<u8>,
    /// Its private key, PEM (`--key-file`).
    pub key_pem: Vec<u8>,
    /// Authorities whose client certificates are accepted, PEM (`--trusted-ca-file`); used
    /// with `client_cert_auth`, as in etcd.
    pub trusted_ca_pem: Option<Vec<u8>>,
    /// Every client must present a certificate signed by `trusted_ca_pem`
    /// (`--client-cert-auth`): mutual TLS.
    pub client_cert_auth: bool,
}

impl std::fmt::Debug for TlsConfig {
    // The key stays out of logs and panic messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("trusted_ca", &self.trusted_ca_pem.is_some())
            .field("client_cert_auth", &self.client_cert_auth)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// tonic's server TLS for this configuration, checked: the certificate and key parse
    /// and belong together, and mutual TLS has an authority to check clients against.
    fn server_config(&self) -> Result<tonic::transport::ServerTlsConfig, LockdError> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        if self.client_cert_auth {
            let Some(ca) = &self.trusted_ca_pem else {
                return Err(LockdError::Config(
                    "client certificate authentication needs a trusted CA file",
                ));
            };
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        // tonic parses the PEM files when the configuration is applied; applying it once here
        // turns a bad file into an error at start, before lockd says it is ready.
        tonic::transport::Server::builder()
            .tls_config(config.clone())
            .map_err(|e| {
                // tonic's own message is a bare "transport error"; the cause says what is wrong.
                LockdError::Tls(match std::error::Error::source(&e) {
                    Some(cause) => error_chain(cause),
                    None => e.to_string(),
                })
            })?;
        Ok(config)
    }
}

/// `error` and its causes on one line, `: `-separated.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// How lockd runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the revision high-water mark is kept; `None` keeps nothing (revisions restart at
    /// 1 with the process: fine for a demo, wrong for tokens that must outlive it).
    pub data_dir: Option<PathBuf>,
    /// Lease TTLs below this are raised to it (etcd does the same with its own minimum). Whole
    /// seconds, at least one: the protocol counts TTLs in seconds.
    pub min_ttl: Duration,
    /// Changes kept for past-revision reads and watches, counted in events.
    pub history: usize,
    /// Longest request accepted, encoded; longer ones get etcd's "request is too large".
    pub max_request_bytes: usize,
    /// Bytes of live keys and values writes may grow the key space to; past it, writes get
    /// etcd's "database space exceeded" and deletes still work.
    pub quota_backend_bytes: usize,
    /// Chubby's lock-delay: the keys of a lease that ended without their deletion (expired,
    /// or revoked) stay this much longer, so a lock whose holder stopped renewing passes to
    /// the next waiter no sooner than this after the lease ended. A released lock (its key
    /// deleted) passes at once. Zero, the default, behaves as etcd does.
    pub lock_delay: Duration,
    /// TLS on the client port; `None` serves plaintext.
    pub tls: Option<TlsConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: None,
            min_ttl: DEFAULT_MIN_TTL,
            history: DEFAULT_HISTORY,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            quota_backend_bytes: DEFAULT_QUOTA_BACKEND_BYTES,
            lock_delay: Duration::ZERO,
            tls: None,
        }
    }
}

/// Why lockd could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum LockdError {
    /// The data directory cannot be used (see [`MetaError`]).
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A [`Config`] value out of range; the text says which and why.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// The TLS certificate, key or authority cannot be used; the text says why.
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    /// The listener's local address could not be read.
    #[error("cannot read the listening address: {0}")]
    Address(std::io::Error),
    /// The gRPC server stopped with an error; the cause is the source, not in the message.
    #[error("gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

// Written out rather than `#[from]`, so that `Serve` keeps its cause as the source only.
impl From<tonic::transport::Error> for LockdError {
    fn from(error: tonic::transport::Error) -> Self {
        Self::Serve(error)
    }
}

/// A lockd whose state is ready (and whose data dir is locked), waiting for a listener.
pub struct Server {
    state: State,
    max_request_bytes: usize,
    tls: Option<tonic::transport::ServerTlsConfig>,
}

impl Server {
    /// Checks `config`, then opens its data directory (locking it, and reserving the first
    /// revisions) or starts in memory when it has none.
    pub fn open(config: &Config) -> Result<Self, LockdError> {
        let min_ttl = config.min_ttl.as_secs();
        if min_ttl == 0 || config.min_ttl.subsec_nanos() != 0 {
            return Err(LockdError::Config(
                "the minimum TTL must be a whole number of seconds, at least 1",
            ));
        }
        if config.history == 0 {
            return Err(LockdError::Config(
                "the history must keep at least one event",
            ));
        }
        let tls = config
            .tls
            .as_ref()
            .map(TlsConfig::server_config)
            .transpose()?;
        let (revisions, start) = match &config.data_dir {
            Some(dir) => Revisions::open(dir)?,
            None => Revisions::in_memory(),
        };
        let limits = Limits {
            min_ttl: min_ttl as i64,
            history: config.history,
            history_bytes: HISTORY_BYTES,
            quota_bytes: config.quota_backend_bytes,
            lock_delay: config.lock_delay,
        };
        Ok(Self {
            state: State::new(revisions, start, limits),
            max_request_bytes: config.max_request_bytes,
            tls,
        })
    }

    /// Whether the client port speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The revision the next change will follow.
    pub fn revision(&self) -> i64 {
        self.state.revision()
    }

    /// Serves `listener` until `shutdown` resolves; then ends every stream and waiting call
    /// and returns once the connections are closed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), LockdError> {
        self.serve_with_metrics(listener, Vec::new(), shutdown)
            .await
    }

    /// Like [`serve`](Self::serve), and also serves `GET /health` and `GET /metrics` over
    /// plaintext HTTP/1.1 on each of `metrics` (etcd's `--listen-metrics-urls`), whatever the
    /// client port speaks.
    pub async fn serve_with_metrics(
        self,
        listener: TcpListener,
        metrics: Vec<TcpListener>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), LockdError> {
        let addr = listener.local_addr().map_err(LockdError::Address)?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let (stop, stopping) = signal::channel(false);
        let mut core = Core::new(self.state, format!("{scheme}://{addr}"), stopping);
        core.max_request_bytes = self.max_request_bytes;
        let core = Arc::new(core);
        let decode_limit = self.max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES);
        let services = Services(core.clone());
        let expiry = tokio::spawn(expire_leases(core.clone()));
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut stopped = stop.subscribe();
        let grpc = Routes::new(
            kv_server::KvServer::new(services.clone()).max_decoding_message_size(decode_limit),
        )
        .add_service(
            watch_server::WatchServer::new(services.clone())
                .max_decoding_message_size(decode_limit),
        )
        .add_service(
            lease_server::LeaseServer::new(services.clone())
                .max_decoding_message_size(decode_limit),
        )
        .add_service(
            lock_server::LockServer::new(services.clone()).max_decoding_message_size(decode_limit),
        )
        .add_service(cluster_server::ClusterServer::new(services.clone()))
        .add_service(maintenance_server::MaintenanceServer::new(services));
        // HTTP/1.1 for `/health` and `/metrics`; gRPC connections still speak HTTP/2 with the
        // same settings, told apart by the connection preface.
        let mut metrics_servers = tokio::task::JoinSet::new();
        for listener in metrics {
            let mut stopped = stop.subscribe();
            let router = http::metrics_router(core.clone());
            metrics_servers.spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.wait_for(|&stop| stop).await;
                    })
                    .await
            });
        }
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls)?;
        }
        let serve = builder
            .accept_http1(true)
            .add_routes(http::routes(core.clone(), grpc))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped.wait_for(|&stop| stop).await;
            });
        tokio::pin!(serve);
        let result = tokio::select! {
            result = &mut serve => result,
            () = shutdown => {
                // Streams and waiting calls end now; the connections get a moment to close.
                let _ = stop.send(true);
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut serve).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::info!("closing connections still open after {SHUTDOWN_GRACE:?}");
                        Ok(())
                    }
                }
            }
        };
        expiry.abort();
        // The metrics listeners saw the same stop; whatever they still serve ends here.
        metrics_servers.abort_all();
        result.map_err(LockdError::from)
    }
}

/// Serves an in-memory lockd with the default [`Config`] on `listener` until `shutdown`:
/// the embedded lock service of the demo and the tests.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), LockdError> {
    Server::open(&Config::default())?
        .serve(listener, shutdown)
        .await
}

/// Revokes leases as their deadlines pass: sleeps until the earliest one.
async fn expire_leases(core: Arc<Core>) {
    loop {
        let wake = {
            let mut state = core.state();
            let now = Instant::now();
            let expired = state.expire(now);
            core.metrics.leases_expired(expired.len());
            for id in expired {
                tracing::debug!(lease = %format!("{id:x}"), "lease expired");
            }
            let latest = now + EXPIRY_CHECK;
            state.next_deadline().map_or(latest, |d| d.min(latest))
        };
        tokio::select! {
            () = sleep_until(wake) => {}
            () = core.stopped() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::etcdserverpb as pb;

    fn core() -> Arc<Core> {
        let server = Server::open(&Config::default()).unwrap();
        // The sender is leaked so that the core never sees a shutdown.
        let (stop, stopping) = signal::channel(false);
        std::mem::forget(stop);
        Arc::new(Core::new(server.state, "http://test".into(), stopping))
    }

    /// On a paused clock: the expiry loop must delete a lease's keys within 100 ms of its
    /// deadline, whenever the lease was granted or last renewed.
    #[tokio::test(start_paused = true)]
    async fn a_lease_dies_within_100_ms_of_its_deadline() {
        let core = core();
        tokio::spawn(expire_leases(core.clone()));
        for offset_ms in [0u64, 13, 37, 49, 50, 77] {
            tokio::time::sleep(Duration::from_millis(offset_ms)).await;
            let (id, mut changes, granted) = {
                let mut state = core.state();
                let id = state.grant(Instant::now(), 0, 1).unwrap().id;
                let put = pb::PutRequest {
                    key: b"k".to_vec(),
                    lease: id,
                    ..Default::default()
                };
                state.put(&put).unwrap();
                let feed = state.open_feed();
                state.add_watcher(feed.id(), 0, &state::KeyRange::new(b"k", b""));
                (id, feed, Instant::now())
            };
            // Renewed half-way: the deadline moves to 1 s after the renewal.
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(core.state().renew(Instant::now(), id), Some(1));
            let renewed = Instant::now();
            let fanout::Received::Change(change) = changes.recv().await else {
                panic!("the feed ended");
            };
            let waited = renewed.elapsed();
            assert_eq!(change.events.len(), 1, "the key's deletion");
            assert!(
                waited >= Duration::from_secs(1) && waited <= Duration::from_millis(1100),
                "lease granted at +{offset_ms} ms died {waited:?} after its renewal \
                 ({:?} after its grant)",
                granted.elapsed()
            );
        }
    }

    #[test]
    fn a_minimum_ttl_below_one_second_is_refused() {
        let config = Config {
            min_ttl: Duration::from_millis(500),
            ..Config::default()
        };
        assert!(matches!(Server::open(&config), Err(LockdError::Config(_))));
    }
}
