//! The gRPC services: each call locks the state, does its work, and answers; nothing waits
//! with the state locked. Streams wait on the change feed; a v3lock `Lock` waits for the
//! deletion of the key ahead of its own.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, StreamExt as _};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::error::EtcdError;
use super::metrics::{Method, Metrics};
use super::state::{State, Turn};
use crate::etcd::etcdserverpb::maintenance_server;
use crate::etcd::etcdserverpb::{self as pb, cluster_server, kv_server, lease_server};
use crate::etcd::v3lockpb::{self, lock_server};

/// The version reported by Status: the etcd API level lockd speaks. Clients read it to decide
/// which features they may use.
pub const API_VERSION: &str = "3.5.0";

/// What every call shares.
pub struct Core {
    /// A std mutex, not tokio's: it is never held across an await, every call holds it for
    /// microseconds, and the change feed is published under it so that a subscriber knows
    /// exactly where its feed starts.
    state: Mutex<State>,
    /// The URL clients reach this member at, for MemberList.
    pub client_url: String,
    /// Becomes `true` when the server shuts down; streams and waiting calls end then.
    pub stopping: watch::Receiver<bool>,
    /// Longest write request accepted, encoded (etcd's `--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Counters for `/metrics`, kept outside the state lock.
    pub metrics: Metrics,
}

impl Core {
    pub fn new(state: State, client_url: String, stopping: watch::Receiver<bool>) -> Self {
        Self {
            state: Mutex::new(state),
            client_url,
            stopping,
            max_request_bytes: super::DEFAULT_MAX_REQUEST_BYTES,
            metrics: Metrics::default(),
        }
    }

    /// The state, locked. A panic while it was locked cannot leave it half-changed (every
    /// write checks before it changes anything), so a poisoned lock is taken over.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Refuses a write request longer than the limit, as etcd does before proposing it.
    fn check_size(&self, request: &impl prost::Message) -> Result<(), EtcdError> {
        if request.encoded_len() > self.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        Ok(())
    }

    /// Whether the server has started shutting down.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Counts one call of `method`.
    pub fn count(&self, method: Method) {
        self.metrics.request(method);
    }

    /// Resolves when the server starts shutting down.
    pub async fn stopped(&self) {
        let mut stopping = self.stopping.clone();
        // An error means the sender is gone, which happens only once serving has ended.
        let _ = stopping.wait_for(|&stop| stop).await;
    }
}

/// Implements every service on one shared core.
#[derive(Clone)]
pub struct Services(pub Arc<Core>);

type Answer<T> = Result<Response<T>, Status>;

fn answer<T>(result: Result<T, EtcdError>) -> Answer<T> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl kv_server::Kv for Services {
    async fn range(&self, request: Request<pb::RangeRequest>) -> Answer<pb::RangeResponse> {
        self.0.count(Method::Range);
        answer(self.0.state().range(request.get_ref()))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Answer<pb::PutResponse> {
        self.0.count(Method::Put);
        self.0.check_size(request.get_ref())?;
        answer(self.0.state().put(request.get_ref()))
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Answer<pb::DeleteRangeResponse> {
        self.0.count(Method::DeleteRange);
        self.0.check_size(request.get_ref())?;
        answer(self.0.state().delete_range(request.get_ref()))
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Answer<pb::TxnResponse> {
        self.0.count(Method::Txn);
        self.0.check_size(request.get_ref())?;
        answer(self.0.state().txn(request.get_ref()))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Answer<pb::CompactionResponse> {
        self.0.count(Method::Compact);
        answer(self.0.state().compact(request.get_ref().revision))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl lease_server::Lease for Services {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Answer<pb::LeaseGrantResponse> {
        self.0.count(Method::LeaseGrant);
        let request = request.get_ref();
        answer(
            self.0
                .state()
                .grant(Instant::now(), request.id, request.ttl),
        )
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Answer<pb::LeaseRevokeResponse> {
        self.0.count(Method::LeaseRevoke);
        answer(self.0.state().revoke(request.get_ref().id))
    }

    type LeaseKeepAliveStream = BoxStream<pb::LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Answer<Self::LeaseKeepAliveStream> {
        self.0.count(Method::LeaseKeepAlive);
        let core = self.0.clone();
        let stop = self.0.clone();
        let answers = request
            .into_inner()
            .map(move |request| {
                let request = request?;
                let mut state = core.state();
                // A lease that no longer exists is answered with TTL 0, as etcd does.
                let ttl = state.renew(Instant::now(), request.id).unwrap_or(0);
                Ok(pb::LeaseKeepAliveResponse {
                    header: Some(state.header()),
                    id: request.id,
                    ttl,
                })
            })
            .take_until(async move { stop.stopped().await });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Answer<pb::LeaseTimeToLiveResponse> {
        self.0.count(Method::LeaseTimeToLive);
        let state = self.0.state();
        Ok(Response::new(
            state.time_to_live(Instant::now(), request.get_ref()),
        ))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Answer<pb::LeaseLeasesResponse> {
        self.0.count(Method::LeaseLeases);
        Ok(Response::new(self.0.state().leases()))
    }
}

#[tonic::async_trait]
impl cluster_server::Cluster for Services {
    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Answer<pb::MemberListResponse> {
        self.0.count(Method::MemberList);
        let state = self.0.state();
        let member = pb::Member {
            id: state.identity().member_id,
            name: "lockd".into(),
            peer_ur_ls: Vec::new(),
            client_ur_ls: vec![self.0.client_url.clone()],
            is_learner: false,
        };
        Ok(Response::new(pb::MemberListResponse {
            header: Some(state.header()),
            members: vec![member],
        }))
    }
}

#[tonic::async_trait]
impl maintenance_server::Maintenance for Services {
    async fn status(&self, _request: Request<pb::StatusRequest>) -> Answer<pb::StatusResponse> {
        self.0.count(Method::Status);
        let state = self.0.state();
        let identity = state.identity();
        let index = state.revision() as u64;
        Ok(Response::new(pb::StatusResponse {
            header: Some(state.header()),
            version: API_VERSION.into(),
            db_size: state.size(),
            leader: identity.member_id,
            raft_index: index,
            raft_term: identity.term,
            raft_applied_index: index,
            errors: Vec::new(),
            db_size_in_use: state.size(),
            is_learner: false,
        }))
    }

    /// lockd raises no alarm (a full quota refuses writes with etcd's error instead), so
    /// the list is always empty, and activating or clearing one changes nothing.
    async fn alarm(&self, _request: Request<pb::AlarmRequest>) -> Answer<pb::AlarmResponse> {
        self.0.count(Method::Alarm);
        let state = self.0.state();
        Ok(Response::new(pb::AlarmResponse {
            header: Some(state.header()),
            alarms: Vec::new(),
        }))
    }
}

/// Deletes a v3lock waiter's key when its `Lock` call ends without the lock (the client gave
/// up or went away), so it never blocks the waiters behind it.
struct Waiting {
    core: Arc<Core>,
    key: Vec<u8>,
    created: i64,
    armed: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.armed {
            self.core.state().withdraw(&self.key, self.created);
        }
    }
}

#[tonic::async_trait]
impl lock_server::Lock for Services {
    /// Queues a key `name/<lease hex>` on the caller's lease and answers once no key under
    /// `name/` is older, like etcd's v3lock service.
    async fn lock(
        &self,
        request: Request<v3lockpb::LockRequest>,
    ) -> Answer<v3lockpb::LockResponse> {
        self.0.count(Method::Lock);
        let request = request.into_inner();
        let mut waiting = {
            let mut state = self.0.state();
            let (key, created) = state.enqueue(&request.name, request.lease)?;
            Waiting {
                core: self.0.clone(),
                key,
                created,
                armed: true,
            }
        };
        let _queued = self.0.metrics.lock_waiter();
        loop {
            // Registered with the state locked, so a deletion cannot fall between the look
            // and the wait; only the key ahead (or this one) going wakes this waiter.
            let wake = Arc::new(Notify::new());
            {
                let mut state = self.0.state();
                match state.turn(&request.name, &waiting.key, waiting.created) {
                    Turn::Owner => {
                        waiting.armed = false;
                        return Ok(Response::new(v3lockpb::LockResponse {
                            header: Some(state.header()),
                            key: std::mem::take(&mut waiting.key),
                        }));
                    }
                    // The key went with its lease.
                    Turn::Gone => {
                        waiting.armed = false;
                        return Err(EtcdError::LeaseNotFound.into());
                    }
                    Turn::Waiting(ahead) => {
                        state.notify_on_delete([&ahead, &waiting.key], &wake);
                    }
                }
            }
            tokio::select! {
                () = wake.notified() => {}
                () = self.0.stopped() => {
                    return Err(Status::unavailable("lockd is shutting down"));
                }
            }
        }
    }

    async fn unlock(
        &self,
        request: Request<v3lockpb::UnlockRequest>,
    ) -> Answer<v3lockpb::UnlockResponse> {
        self.0.count(Method::Unlock);
        let delete = pb::DeleteRangeRequest {
            key: request.into_inner().key,
            ..Default::default()
        };
        let mut state = self.0.state();
        state.delete_range(&delete)?;
        Ok(Response::new(v3lockpb::UnlockResponse {
            header: Some(state.header()),
        }))
    }
}
