//! `Client`: one gRPC channel to an etcd cluster, balanced over every endpoint.
//!
//! Invariants:
//! - A `Client` exists only after an endpoint answered a real request: tonic channels connect
//!   lazily, so `connect` sends a Maintenance.Status and fails with
//!   [`Error::Unavailable`], naming the endpoints, when none answers within the timeout.
//! - Unary requests are retried on transient failures (an endpoint that is down, a leader
//!   election) until the request timeout, so one dead member of three goes unnoticed. Every
//!   request the library retries is idempotent, or made so by its caller (see `mutex.rs`).
//! - A first attempt goes through the balanced channel; retries go to the endpoints in turn,
//!   each through a channel of its own, because the balancer cannot tell a frozen member (its
//!   connection open, nothing answered) from a busy one and may pick it again and again.
//! - Requests that may run twice (reads, and writes made idempotent by a compare) are also
//!   hedged: without an answer after [`HEDGE_AFTER`], the same request goes through the next
//!   member too, and the first answer wins. Only a lease grant, which would leave a second
//!   lease behind, waits for a whole attempt before it is retried.
//! - Cloning is cheap and clones share the connections.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use tokio::time::{Instant, sleep, timeout};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::shared_watch::SharedWatch;
use super::{Error, LeaseId, Result, Session};
use crate::FencingToken;
use crate::etcd::etcdserverpb::{
    self as pb, auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, watch_client::WatchClient,
};
use crate::etcd::mvccpb::KeyValue as PbKeyValue;
use crate::etcd::v3lockpb::lock_client::LockClient;

/// How long `connect` waits for an answer, and how long a request keeps retrying.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one attempt of a unary request may take before it is tried again. A member
/// frozen by SIGSTOP accepts requests and never answers them; this bounds the damage.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a hedged request waits for an answer before it is sent through another member
/// as well.
/// Far above a healthy member's answer on a LAN, far below the attempt timeout.
const HEDGE_AFTER: Duration = Duration::from_millis(500);

/// Pause between attempts: long enough not to spin on a refused connection, short next to
/// a lease TTL (a second or more).
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// HTTP/2 pings on busy connections detect a member that stopped answering (SIGSTOP, a cut
/// network). etcd refuses pings more often than every 5 s (its `--grpc-keepalive-min-time`)
/// by closing the connection, so the interval stays above that.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(10);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach a cluster: how long to wait, and TLS when its members speak it.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// How long `connect` waits for an endpoint to answer; also bounds every request's
    /// retries.
    pub timeout: Duration,
    /// TLS for every endpoint. `None` speaks plaintext to `http://` endpoints (and to
    /// endpoints without a scheme) and TLS with the system's roots to `https://` ones.
    pub tls: Option<TlsOptions>,
    /// A user to authenticate as, for a cluster with authentication enabled.
    pub user: Option<Credentials>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: DEFAULT_TIMEOUT,
            tls: None,
            user: None,
        }
    }
}

/// An etcd user and password (etcdctl's `--user name:password`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user's name.
    pub name: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The channel every generated client of a [`Client`] sends on: it adds the current
/// authentication token, if any, to each request.
pub type Transport = InterceptedService<Channel, AuthToken>;

/// The token from etcd's Authenticate, shared by a client and its clones, replaced when etcd
/// says it expired.
#[derive(Clone, Default)]
pub struct AuthToken(Arc<std::sync::RwLock<Option<tonic::metadata::AsciiMetadataValue>>>);

impl Interceptor for AuthToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        let token = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(token) = token {
            request.metadata_mut().insert("token", token);
        }
        Ok(request)
    }
}

/// TLS towards the members: whom to trust, and who this client is (mutual TLS).
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM certificates of the authorities that sign the members' certificates (etcdctl's
    /// `--cacert`); the system's roots when `None`.
    pub ca_pem: Option<Vec<u8>>,
    /// This client's PEM certificate and key (`--cert`, `--key`), for members that ask for
    /// one (`--client-cert-auth`).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the members' certificates must carry, when it is not the endpoint's host.
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// Reads the CA bundle and the client certificate and key from PEM files; `cert` and
    /// `key` go together.
    pub fn from_files(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<Self> {
        let read = |what: &str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| Error::Tls(format!("cannot read the {what} {}: {e}", path.display())))
        };
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((read("certificate", cert)?, read("key", key)?)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::Tls("a client certificate needs its key".into()));
            }
            (None, Some(_)) => {
                return Err(Error::Tls("a client key needs its certificate".into()));
            }
        };
        Ok(TlsOptions {
            ca_pem: ca.map(|ca| read("CA bundle", ca)).transpose()?,
            identity,
            server_name: None,
        })
    }

    fn client_config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        config
    }
}

/// A connection to an etcd cluster (or anything speaking its v3 API).
#[derive(Clone)]
pub struct Client {
    /// The channel this handle sends on: the balanced one, or one member's for a retry.
    channel: Channel,
    balanced: Channel,
    /// One lazily connected channel per endpoint, in `endpoints` order.
    members: Arc<[Channel]>,
    /// Which member the next retry goes to.
    next_member: Arc<AtomicUsize>,
    endpoints: Arc<[String]>,
    timeout: Duration,
    token: AuthToken,
    user: Option<Arc<Credentials>>,
    /// The Watch stream every wait of this client (and of its clones) shares.
    shared_watch: Arc<SharedWatch>,
}

/// A lock key as stored in etcd: who holds or waits, in create_revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockKey {
    /// The full etcd key, under the lock name's prefix.
    pub key: String,
    /// The key's create_revision, which is its fencing token.
    pub token: FencingToken,
    /// The lease the key is attached to: the session that holds or waits.
    pub lease: LeaseId,
}

impl Client {
    /// Connects to the cluster behind `endpoints` (`host:port` or `http://host:port`) with
    /// [`DEFAULT_TIMEOUT`].
    pub async fn connect<I, S>(endpoints: I) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::connect_with_timeout(endpoints, DEFAULT_TIMEOUT).await
    }

    /// Connects, waiting at most `timeout` for an endpoint to answer; the same value bounds
    /// the retries of every later request.
    pub async fn connect_with_timeout<I, S>(endpoints: I, timeout: Duration) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let options = ConnectOptions {
            timeout,
            ..ConnectOptions::default()
        };
        Self::connect_with(endpoints, &options).await
    }

    /// Connects with `options`: TLS to every endpoint when `options.tls` is set (endpoints
    /// without a scheme then mean `https://`), and the given timeout.
    pub async fn connect_with<I, S>(endpoints: I, options: &ConnectOptions) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let timeout = options.timeout;
        let tls_default = options.tls.is_some();
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| normalize_endpoint(e.as_ref(), tls_default))
            .collect::<Result<_>>()?;
        if endpoints.is_empty() {
            return Err(Error::InvalidEndpoint {
                endpoint: String::new(),
                reason: "no endpoints given".into(),
            });
        }
        let mut list = Vec::with_capacity(endpoints.len());
        let mut members = Vec::with_capacity(endpoints.len());
        for uri in &endpoints {
            let mut endpoint = Endpoint::from_shared(uri.clone())
                .map_err(|e| Error::InvalidEndpoint {
                    endpoint: uri.clone(),
                    reason: e.to_string(),
                })?
                .connect_timeout(timeout.min(ATTEMPT_TIMEOUT))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(HTTP2_PING_INTERVAL)
                .keep_alive_timeout(HTTP2_PING_TIMEOUT);
            if uri.starts_with("https://") {
                let tls = options.tls.clone().unwrap_or_default();
                endpoint = endpoint
                    .tls_config(tls.client_config())
                    .map_err(|e| Error::Tls(format!("{uri}: {e}")))?;
            }
            members.push(endpoint.connect_lazy());
            list.push(endpoint);
        }
        let tls_probe = list
            .first()
            .filter(|_| endpoints[0].starts_with("https://"))
            .cloned();
        let balanced = Channel::balance_list(list.into_iter());
        let client = Client {
            channel: balanced.clone(),
            balanced,
            members: members.into(),
            next_member: Arc::new(AtomicUsize::new(0)),
            endpoints: endpoints.into(),
            timeout,
            token: AuthToken::default(),
            user: options.user.clone().map(Arc::new),
            shared_watch: Arc::default(),
        };
        if client.user.is_some() {
            client.authenticate().await?;
        }
        let status = client
            .hedged("status", |c| async move {
                c.maintenance().status(pb::StatusRequest {}).await
            })
            .await;
        if let Err(e) = status {
            // A TLS handshake that fails reaches a lazy channel's call only as "connection
            // closed"; connecting eagerly to the first endpoint tells why.
            let Some(first) = tls_probe else {
                return Err(e);
            };
            let cause = match first.connect().await {
                Err(cause) => error_chain(&cause),
                // The handshake went through, and the member closed the connection: TLS 1.3
                // servers refuse a client certificate only after the handshake.
                Ok(_) => format!(
                    "{e}; the connection was closed after the TLS handshake: the member may \
                     require a client certificate (--cert, --key) signed by an authority it trusts"
                ),
            };
            return Err(Error::Unavailable {
                endpoints: client.endpoints.join(","),
                timeout,
                cause,
            });
        }
        Ok(client)
    }

    /// The endpoints this client balances over, as URIs.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Grants a lease of `ttl` (rounded up to whole seconds) and keeps it alive.
    pub async fn session(&self, ttl: Duration) -> Result<Session> {
        Session::grant(self.clone(), ttl).await
    }

    /// The lock keys of lock `name`, holder first, then the waiters in the order they will be
    /// served. Keys of locks named under it (`/a/b/<lease>` for `/a`) are not among them.
    pub async fn lock_keys(&self, name: &str) -> Result<Vec<LockKey>> {
        super::mutex::check_name(name)?;
        let prefix = format!("{name}/");
        let request = pb::RangeRequest {
            range_end: crate::etcd::prefix_end(prefix.as_bytes()),
            key: prefix.clone().into_bytes(),
            sort_target: pb::range_request::SortTarget::Create as i32,
            sort_order: pb::range_request::SortOrder::Ascend as i32,
            ..Default::default()
        };
        let response = self.range(request).await?;
        response
            .kvs
            .iter()
            .filter(|kv| super::mutex::is_lock_key(&prefix, &kv.key))
            .map(lock_key)
            .collect()
    }

    /// Revokes a lease: every key attached to it is deleted. Revoking a lease that no longer
    /// exists is not an error.
    pub async fn revoke(&self, lease: LeaseId) -> Result<()> {
        let request = pb::LeaseRevokeRequest { id: lease.get() };
        match self
            .hedged("lease revoke", |c| async move {
                c.lease().lease_revoke(request).await
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::Rpc { status, .. }) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Generated KV client on this client's channel, for requests the library does not wrap.
    pub fn kv(&self) -> KvClient<Transport> {
        KvClient::with_interceptor(self.channel.clone(), self.token.clone())
    }

    /// Generated Lease client on this client's channel.
    pub fn lease(&self) -> LeaseClient<Transport> {
        LeaseClient::with_interceptor(self.channel.clone(), self.token.clone())
    }

    /// Generated Watch client on this client's channel.
    pub fn watch(&self) -> WatchClient<Transport> {
        WatchClient::with_interceptor(self.channel.clone(), self.token.clone())
    }

    /// The Watch stream this client's waits share.
    pub(crate) fn shared_watch(&self) -> &SharedWatch {
        &self.shared_watch
    }

    /// Generated Cluster client on this client's channel.
    pub fn cluster(&self) -> ClusterClient<Transport> {
        ClusterClient::with_interceptor(self.channel.clone(), self.token.clone())
    }

    /// Generated Maintenance client on this client's channel.
    pub fn maintenance(&self) -> MaintenanceClient<Transport> {
        MaintenanceClient::with_interceptor(self.channel.clone(), self.token.clone())
    }

    /// Generated client of etcd's v3lock service (server-side Lock/Unlock) on this client's
    /// channel.
    pub fn v3lock(&self) -> LockClient<Transport> {
        LockClient::with_interceptor(self.channel.clone(), self.token.clone())
    }

    /// Asks etcd for a token for this client's user and sends it with every request from
    /// now on; a wrong password or an unknown user is an error naming the user.
    pub(crate) async fn authenticate(&self) -> Result<()> {
        let Some(user) = self.user.clone() else {
            return Ok(());
        };
        let request = pb::AuthenticateRequest {
            name: user.name.clone(),
            password: user.password.clone(),
        };
        let answer = self
            .unary("authenticate", |c| {
                let request = request.clone();
                async move { AuthClient::new(c.channel).authenticate(request).await }
            })
            .await
            .map_err(|e| match e {
                Error::Rpc { status, .. } if !is_transient(&status) => {
                    Error::Auth(format!("user {:?}: {}", user.name, status.message()))
                }
                e => e,
            })?;
        let token = answer
            .token
            .parse()
            .map_err(|_| Error::protocol("authenticate", "a token that is not ASCII"))?;
        *self.token.0.write().unwrap_or_else(|e| e.into_inner()) = Some(token);
        Ok(())
    }

    /// Whether `status` says the token is missing, invalid or expired and a user is
    /// configured to get a new one.
    fn token_refused(&self, status: &tonic::Status) -> bool {
        self.user.is_some() && status.code() == tonic::Code::Unauthenticated
    }

    /// A handle for attempt number `attempt` (0 = first) of a request: the first goes
    /// through the balancer, later ones to the members in turn.
    pub(crate) fn for_attempt(&self, attempt: usize) -> Client {
        if attempt == 0 || self.members.len() < 2 {
            return Client {
                channel: self.balanced.clone(),
                ..self.clone()
            };
        }
        let member = self.next_member.fetch_add(1, Ordering::Relaxed) % self.members.len();
        Client {
            channel: self.members[member].clone(),
            ..self.clone()
        }
    }

    pub(crate) async fn range(&self, request: pb::RangeRequest) -> Result<pb::RangeResponse> {
        self.hedged("range", |c| {
            let request = request.clone();
            async move { c.kv().range(request).await }
        })
        .await
    }

    pub(crate) async fn txn(&self, request: pb::TxnRequest) -> Result<pb::TxnResponse> {
        self.hedged("txn", |c| {
            let request = request.clone();
            async move { c.kv().txn(request).await }
        })
        .await
    }

    /// Deletes `key` only while it is the incarnation created at revision `created`.
    ///
    /// A lock key's name is reused by its session's next lock of the same name, and a
    /// request that timed out may still be applied later, after its retry succeeded. A plain
    /// delete applied that late would remove the next incarnation; this one cannot.
    pub(crate) async fn delete_created(&self, key: &str, created: i64) -> Result<()> {
        let request = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Create as i32,
                key: key.as_bytes().to_vec(),
                target_union: Some(pb::compare::TargetUnion::CreateRevision(created)),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestDeleteRange(
                    pb::DeleteRangeRequest {
                        key: key.as_bytes().to_vec(),
                        ..Default::default()
                    },
                )),
            }],
            failure: Vec::new(),
        };
        self.txn(request).await.map(drop)
    }

    /// Runs one unary request, retrying transient failures until the client's timeout.
    pub(crate) async fn unary<T, F, Fut>(&self, op: &'static str, mut attempt: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut failures = 0usize;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let handle = self.for_attempt(failures);
            let cause = match timeout(left.min(ATTEMPT_TIMEOUT), attempt(handle)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if self.token_refused(&status) && op != "authenticate" => {
                    Box::pin(self.authenticate()).await?;
                    status.message().to_string()
                }
                Ok(Err(status)) if !is_transient(&status) => return Err(Error::rpc(op, status)),
                Ok(Err(status)) => status.message().to_string(),
                Err(_) => format!("no answer within {:?}", left.min(ATTEMPT_TIMEOUT)),
            };
            tracing::debug!(op, %cause, "retrying");
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(self.unavailable(cause));
            }
            // The retries go to the members in turn, so an immediate one most likely reaches
            // a live member. Pause only once every endpoint may have had its chance.
            failures += 1;
            if failures.is_multiple_of(self.endpoints.len()) {
                sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// Runs a request that may run twice, sending it again through the next member each
    /// time [`HEDGE_AFTER`] passes without an answer, and returns the first answer. Every
    /// request sent this way reads, or is idempotent by its compare (a lock key's
    /// put-if-absent, its delete by create_revision, a revoke); in exchange, a frozen member
    /// (its connection open, nothing answered) delays it by [`HEDGE_AFTER`] instead of an
    /// attempt timeout.
    pub(crate) async fn hedged<T, F, Fut>(&self, op: &'static str, mut attempt: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut running = futures::stream::FuturesUnordered::new();
        let mut cause = String::from("no answer");
        let mut launched = 0usize;
        let mut next_launch = Instant::now();
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if now >= next_launch {
                let budget = deadline.saturating_duration_since(now).min(ATTEMPT_TIMEOUT);
                running.push(timeout(budget, attempt(self.for_attempt(launched))));
                launched += 1;
                next_launch = now + HEDGE_AFTER;
            }
            // Answers are taken while waiting for the next launch, which comes when an attempt
            // fails or when the running ones are slow to answer.
            tokio::select! {
                Some(done) = running.next() => {
                    match done {
                        Ok(Ok(response)) => return Ok(response.into_inner()),
                        Ok(Err(status)) if self.token_refused(&status) => {
                            // Expired: a new token, then the request again.
                            Box::pin(self.authenticate()).await?;
                            cause = status.message().to_string();
                        }
                        Ok(Err(status)) if !is_transient(&status) => {
                            return Err(Error::rpc(op, status));
                        }
                        Ok(Err(status)) => cause = status.message().to_string(),
                        Err(_) => cause = format!("no answer within {ATTEMPT_TIMEOUT:?}"),
                    }
                    tracing::debug!(op, %cause, "retrying");
                    // Once every endpoint has had its chance, pause: do not spin on refusals.
                    let pause = if launched.is_multiple_of(self.endpoints.len()) {
                        RETRY_PAUSE
                    } else {
                        Duration::ZERO
                    };
                    next_launch = next_launch.min(Instant::now() + pause);
                }
                () = tokio::time::sleep_until(next_launch.min(deadline)) => {
                    if !running.is_empty() {
                        tracing::debug!(op, "no answer yet; asking another member as well");
                    }
                }
            }
        }
        Err(self.unavailable(cause))
    }

    /// A client that has not checked its endpoints, for unit tests that never reach them.
    #[cfg(test)]
    pub(crate) fn unconnected(endpoints: &[&str]) -> Client {
        let list: Vec<Endpoint> = endpoints
            .iter()
            .map(|e| Endpoint::from_shared(e.to_string()).expect("test endpoint"))
            .collect();
        let balanced = Channel::balance_list(list.clone().into_iter());
        Client {
            channel: balanced.clone(),
            balanced,
            members: list.iter().map(Endpoint::connect_lazy).collect(),
            next_member: Arc::new(AtomicUsize::new(0)),
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            timeout: DEFAULT_TIMEOUT,
            token: AuthToken::default(),
            user: None,
            shared_watch: Arc::default(),
        }
    }

    pub(crate) fn unavailable(&self, cause: String) -> Error {
        Error::Unavailable {
            endpoints: self.endpoints.join(","),
            timeout: self.timeout,
            cause,
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// Failures worth another attempt: the endpoint is unreachable or the cluster is between
/// leaders. etcd reports both as UNAVAILABLE; tonic reports a broken connection the same way.
/// An error and its causes, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn is_transient(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown => status.message().contains("transport"),
        _ => false,
    }
}

/// `host:port` or a URL, as a URL: `https://` when `tls` is set and no scheme is given,
/// `http://` otherwise. A URL needs its port, as etcdctl's endpoints do.
fn normalize_endpoint(endpoint: &str, tls: bool) -> Result<String> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    let invalid = |reason: &str| Error::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    if endpoint.is_empty() {
        return Err(invalid("empty endpoint"));
    }
    let uri = if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_string()
    } else if endpoint.contains("://") {
        return Err(invalid("only http:// and https:// endpoints are supported"));
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    };
    let parsed: http::Uri = uri.parse().map_err(|_| invalid("not a URI"))?;
    if parsed.port_u16().is_none() {
        return Err(invalid("a port is required, e.g. 127.0.0.1:2379"));
    }
    Ok(uri)
}

pub(crate) fn lock_key(kv: &PbKeyValue) -> Result<LockKey> {
    Ok(LockKey {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        token: token_of(kv.create_revision)?,
        lease: LeaseId::new(kv.lease),
    })
}

pub(crate) fn token_of(create_revision: i64) -> Result<FencingToken> {
    u64::try_from(create_revision)
        .ok()
        .and_then(FencingToken::new)
        .ok_or_else(|| Error::protocol("range", format!("create_revision {create_revision}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_host_port_and_http_uris() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:2379", false).unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            normalize_endpoint(" http://localhost:2379/ ", false).unwrap(),
            "http://localhost:2379"
        );
        assert_eq!(
            normalize_endpoint("127.0.0.1:2379", true).unwrap(),
            "https://127.0.0.1:2379"
        );
        assert_eq!(
            normalize_endpoint("https://127.0.0.1:2379", false).unwrap(),
            "https://127.0.0.1:2379"
        );
        assert!(normalize_endpoint("unix:///tmp/etcd", false).is_err());
        assert!(normalize_endpoint("127.0.0.1", false).is_err());
        assert!(normalize_endpoint("", false).is_err());
    }
}
