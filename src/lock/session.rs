//! `Session`: a lease plus the task that keeps it alive and notices when it is lost.
//!
//! Invariants:
//! - The local deadline is an *under*-estimate of the lease's expiry on the lock service:
//!   each renewal moves it to (time the keepalive request was sent) + granted TTL. The server
//!   starts its TTL when it receives the request, later than we sent it, so the lease never
//!   dies on the server before our deadline (up to clock-rate drift).
//! - Loss is sticky: once the deadline passes, a keepalive answers TTL <= 0, or the session is
//!   closed, the session stays lost even if a late renewal answer arrives. A process frozen
//!   past its deadline (SIGSTOP) therefore sees `lost()` fire as soon as it runs again,
//!   whatever is still buffered on its sockets.
//! - The keepalive task runs while the `Session` or any `LockGuard` made from it exists; it is
//!   aborted when the last of them is dropped (the lease then expires after its TTL).
//! - These signals are hints that let a holder stop early. Safety comes from fencing tokens.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_stream::wrappers::ReceiverStream;

use super::client::RETRY_PAUSE;
use super::{Client, Error, LeaseId, LossReason, Result};
use crate::etcd::etcdserverpb as pb;

/// Keepalives per TTL, as etcd's own clients do: two may be lost before the lease expires.
const RENEWALS_PER_TTL: u32 = 3;

/// A lease kept alive in the background. Cheap to clone; clones share the lease.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    lease: LeaseId,
    ttl: Duration,
    liveness: Arc<watch::Sender<Liveness>>,
    keepalive: AbortHandle,
    /// Lock names this session holds or waits for: a second lock on the same name would
    /// share the first one's lock key (it is named by the lease) and so its token.
    names: Mutex<HashSet<String>>,
    /// Per lock name, the version of this session's attempt key as last seen (absent: 0).
    attempts: Mutex<HashMap<String, i64>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// What the session knows about its lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Liveness {
    /// Before this instant the lease surely exists on the lock service.
    deadline: Instant,
    lost: Option<LossReason>,
}

impl Liveness {
    fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            lost: None,
        }
    }

    /// Records a renewal of a request sent at `sent` for `ttl`; refused (false) once lost or
    /// past the deadline, because a lease may have expired on the server in between.
    fn renew(&mut self, sent: Instant, ttl: Duration, now: Instant) -> bool {
        if self.lost.is_some() {
            return false;
        }
        if now >= self.deadline {
            self.lost = Some(LossReason::Expired);
            return true;
        }
        self.deadline = self.deadline.max(sent + ttl);
        true
    }

    /// Marks the session lost, keeping the first reason; true if this changed anything.
    fn lose(&mut self, reason: LossReason) -> bool {
        if self.lost.is_some() {
            return false;
        }
        self.lost = Some(reason);
        true
    }

    fn remaining(&self, now: Instant) -> Duration {
        match self.lost {
            Some(_) => Duration::ZERO,
            None => self.deadline.saturating_duration_since(now),
        }
    }
}

impl Session {
    /// Grants a lease of `ttl` (rounded up to whole seconds; the lock service may raise it to
    /// its minimum) and starts keeping it alive.
    pub async fn grant(client: Client, ttl: Duration) -> Result<Session> {
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let request = pb::LeaseGrantRequest {
            ttl: seconds.max(1) as i64,
            id: 0,
        };
        let sent = Instant::now();
        let response = client
            .unary("lease grant", |c| async move {
                c.lease().lease_grant(request).await
            })
            .await?;
        if !response.error.is_empty() {
            return Err(Error::protocol("lease grant", response.error));
        }
        if response.ttl <= 0 {
            return Err(Error::protocol(
                "lease grant",
                format!("TTL {}", response.ttl),
            ));
        }
        let lease = LeaseId::new(response.id);
        let ttl = Duration::from_secs(response.ttl as u64);
        let liveness = Arc::new(watch::Sender::new(Liveness::new(sent + ttl)));
        let task = tokio::spawn(keep_alive(
            client.clone(),
            lease,
            ttl,
            Arc::clone(&liveness),
        ));
        tracing::info!(%lease, ttl = ttl.as_secs(), "session started");
        Ok(Session {
            shared: Arc::new(Shared {
                client,
                lease,
                ttl,
                liveness,
                keepalive: task.abort_handle(),
                names: Mutex::new(HashSet::new()),
                attempts: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The session's lease.
    pub fn lease(&self) -> LeaseId {
        self.shared.lease
    }

    /// The TTL the lock service granted (it may be more than requested).
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// The client this session talks through.
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Local estimate of the time before the lease may expire; zero once lost.
    pub fn remaining(&self) -> Duration {
        self.check_deadline();
        self.shared.liveness.borrow().remaining(Instant::now())
    }

    /// Why the session was lost, if it was.
    pub fn lost_reason(&self) -> Option<LossReason> {
        self.check_deadline();
        self.shared.liveness.borrow().lost
    }

    /// Resolves once the lease is gone or may be gone. Cancel-safe; may be called many times.
    pub async fn lost(&self) -> LossReason {
        let mut rx = self.shared.liveness.subscribe();
        loop {
            let now = *rx.borrow_and_update();
            if let Some(reason) = now.lost {
                return reason;
            }
            tokio::select! {
                changed = rx.changed() => {
                    // The sender lives in `Shared`, which `self` keeps alive.
                    debug_assert!(changed.is_ok());
                }
                _ = sleep_until(now.deadline) => self.check_deadline(),
            }
        }
    }

    /// Stops the keepalive and revokes the lease, releasing every lock the session holds.
    pub async fn close(self) -> Result<()> {
        self.shared.keepalive.abort();
        self.shared
            .liveness
            .send_if_modified(|l| l.lose(LossReason::Closed));
        self.shared.client.revoke(self.shared.lease).await?;
        tracing::info!(lease = %self.shared.lease, "session closed");
        Ok(())
    }

    /// Marks the session lost if its deadline passed: whoever looks first after a freeze
    /// decides, so `lost()`, `remaining()` and the keepalive task always agree.
    fn check_deadline(&self) {
        let expired = {
            let now = self.shared.liveness.borrow();
            now.lost.is_none() && Instant::now() >= now.deadline
        };
        if expired {
            lose(
                &self.shared.liveness,
                self.shared.lease,
                LossReason::Expired,
            );
        }
    }

    /// The version of this session's attempt key for lock `name`, as last seen.
    pub(crate) fn attempts(&self, name: &str) -> i64 {
        let attempts = self
            .shared
            .attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        attempts.get(name).copied().unwrap_or(0)
    }

    /// Records that the attempt key for `name`, expected at `expected`, is now at `seen`.
    /// Concurrent copies of one request may answer in any order; the count only grows.
    pub(crate) fn attempted(&self, name: &str, expected: i64, seen: i64) {
        let mut attempts = self
            .shared
            .attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let count = attempts.entry(name.to_string()).or_insert(expected);
        *count = (*count).max(seen);
    }

    /// Claims `name` for one lock call of this session; released when the claim drops.
    pub(crate) fn claim(&self, name: &str) -> Result<NameClaim> {
        let mut names = self.shared.names.lock().unwrap_or_else(|e| e.into_inner());
        if !names.insert(name.to_string()) {
            return Err(Error::AlreadyLocked {
                name: name.to_string(),
            });
        }
        Ok(NameClaim {
            session: self.clone(),
            name: name.to_string(),
        })
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("lease", &self.shared.lease)
            .field("ttl", &self.shared.ttl)
            .finish()
    }
}

/// A lock name in use by one lock call or guard of a session.
pub(crate) struct NameClaim {
    pub(crate) session: Session,
    name: String,
}

impl Drop for NameClaim {
    fn drop(&mut self) {
        let mut names = self
            .session
            .shared
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        names.remove(&self.name);
    }
}

fn lose(liveness: &watch::Sender<Liveness>, lease: LeaseId, reason: LossReason) {
    if liveness.send_if_modified(|l| l.lose(reason)) {
        tracing::info!(%lease, %reason, "session lost");
    }
}

/// Renews `lease` every TTL/3 until it is lost. Each renewal is one request/answer on a
/// LeaseKeepAlive stream; a stream that fails or stays silent for a renewal interval is
/// replaced, which lets the balanced channel pick another member.
async fn keep_alive(
    client: Client,
    lease: LeaseId,
    ttl: Duration,
    liveness: Arc<watch::Sender<Liveness>>,
) {
    let interval = ttl / RENEWALS_PER_TTL;
    let mut stream: Option<KeepAliveStream> = None;
    // Streams that failed or stayed silent in a row: each new one goes to another member.
    let mut failures = 0usize;
    loop {
        let Liveness { deadline, lost } = *liveness.borrow();
        if lost.is_some() {
            return;
        }
        if Instant::now() >= deadline {
            lose(&liveness, lease, LossReason::Expired);
            return;
        }
        let sent = Instant::now();
        let attempt = async {
            match stream.take() {
                Some(mut open) => {
                    let answer = open.renew(lease).await;
                    (Some(open), answer)
                }
                None => match KeepAliveStream::open(&client.for_attempt(failures), lease).await {
                    Ok((open, answer)) => (Some(open), Ok(answer)),
                    Err(status) => (None, Err(status)),
                },
            }
        };
        // A renewal normally gets a whole interval. After a failure the time left is shared
        // among the members, so that trying a frozen one first still leaves time for the rest.
        let patience = match failures {
            0 => interval,
            _ => (deadline - sent) / client.endpoints().len().max(1) as u32,
        };
        let answer = match timeout_at((sent + patience).min(deadline), attempt).await {
            Ok((open, answer)) => {
                stream = open;
                answer
            }
            Err(_) => {
                // Silent for a whole renewal interval (a frozen member): a new stream lets
                // the balanced channel pick another member.
                tracing::debug!(%lease, "keepalive unanswered; reopening the stream");
                stream = None;
                failures += 1;
                continue;
            }
        };
        match answer {
            Ok(Some(granted)) if granted > 0 => {
                failures = 0;
                let granted = Duration::from_secs(granted as u64);
                liveness.send_if_modified(|l| l.renew(sent, granted, Instant::now()));
                if liveness.borrow().lost.is_some() {
                    tracing::info!(%lease, reason = %LossReason::Expired, "session lost");
                    return;
                }
                tracing::trace!(%lease, "lease renewed");
                sleep_until(sent + interval).await;
            }
            Ok(Some(_)) => {
                lose(&liveness, lease, LossReason::LeaseNotFound);
                return;
            }
            Ok(None) | Err(_) => {
                tracing::debug!(%lease, "keepalive stream ended; reopening");
                stream = None;
                failures += 1;
                sleep_until((Instant::now() + RETRY_PAUSE).min(deadline)).await;
            }
        }
    }
}

/// One LeaseKeepAlive stream: requests in, answers out, in the same order.
struct KeepAliveStream {
    requests: mpsc::Sender<pb::LeaseKeepAliveRequest>,
    answers: tonic::Streaming<pb::LeaseKeepAliveResponse>,
}

impl KeepAliveStream {
    /// Opens a stream with a first renewal already queued, and returns that renewal's
    /// answer: etcd sends a stream's response headers only with its first message, so the
    /// call cannot complete before a request is in flight.
    async fn open(
        client: &Client,
        lease: LeaseId,
    ) -> std::result::Result<(Self, Option<i64>), tonic::Status> {
        let (requests, rx) = mpsc::channel(1);
        // The channel is new and has room for one request.
        let _ = requests.try_send(pb::LeaseKeepAliveRequest { id: lease.get() });
        let mut answers = client
            .lease()
            .lease_keep_alive(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = answers.message().await?.map(|answer| answer.ttl);
        Ok((Self { requests, answers }, first))
    }

    /// Sends one keepalive; the granted TTL in seconds (<= 0: the lease is gone), or `None`
    /// if the stream ended.
    async fn renew(&mut self, lease: LeaseId) -> std::result::Result<Option<i64>, tonic::Status> {
        let request = pb::LeaseKeepAliveRequest { id: lease.get() };
        if self.requests.send(request).await.is_err() {
            return Ok(None);
        }
        Ok(self.answers.message().await?.map(|answer| answer.ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(2);

    #[tokio::test(start_paused = true)]
    async fn deadline_counts_from_the_request_not_the_answer() {
        let start = Instant::now();
        let mut l = Liveness::new(start + TTL);
        let sent = start + Duration::from_millis(600);
        let answered = sent + Duration::from_millis(900);
        assert!(l.renew(sent, TTL, answered));
        assert_eq!(l.deadline, sent + TTL);
        assert_eq!(l.remaining(answered), TTL - Duration::from_millis(900));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_answered_after_the_deadline_does_not_revive_the_session() {
        let start = Instant::now();
        let mut l = Liveness::new(start + TTL);
        assert!(l.renew(start + Duration::from_secs(1), TTL, start + TTL));
        assert_eq!(l.lost, Some(LossReason::Expired));
        assert!(!l.renew(start + TTL, TTL, start + TTL));
        assert_eq!(l.remaining(start), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_loss_reason_wins() {
        let mut l = Liveness::new(Instant::now() + TTL);
        assert!(l.lose(LossReason::LeaseNotFound));
        assert!(!l.lose(LossReason::Closed));
        assert_eq!(l.lost, Some(LossReason::LeaseNotFound));
    }

    /// A session whose keepalive never answers (a stand-in task that does nothing) must
    /// report the loss exactly at its deadline, as it would after a freeze.
    #[tokio::test(start_paused = true)]
    async fn lost_fires_at_the_local_deadline_without_renewals() {
        let start = Instant::now();
        let liveness = Arc::new(watch::Sender::new(Liveness::new(start + TTL)));
        let idle = tokio::spawn(std::future::pending::<()>());
        let client = test_client();
        let session = Session {
            shared: Arc::new(Shared {
                client,
                lease: LeaseId::new(1),
                ttl: TTL,
                liveness,
                keepalive: idle.abort_handle(),
                names: Mutex::new(HashSet::new()),
                attempts: Mutex::new(HashMap::new()),
            }),
        };
        assert_eq!(session.remaining(), TTL);
        let reason = session.lost().await;
        assert_eq!(reason, LossReason::Expired);
        assert_eq!(Instant::now(), start + TTL);
        assert_eq!(session.remaining(), Duration::ZERO);
        assert_eq!(session.lost_reason(), Some(LossReason::Expired));
    }

    fn test_client() -> Client {
        Client::unconnected(&["http://127.0.0.1:9"])
    }
}
