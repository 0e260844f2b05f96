//! Fenced locks on etcd, following etcd's client-side lock recipe.
//!
//! A lock named `/name` is a set of lock keys `/name/<lease id hex>`, one per session that
//! holds or waits for it, each attached to its session's lease. Invariants:
//! - The holder is the key with the lowest create_revision; the others wait in
//!   create_revision order, each watching only the key created just before its own, so one
//!   release wakes one waiter.
//! - The fencing token is the lock key's create_revision. etcd's revision counter only grows,
//!   so each holder's token is larger than every earlier holder's.
//! - A lock is returned only after a read that includes its own key shows no key created
//!   before it: the creating transaction's own read when the lock was free, otherwise the
//!   Range after the last predecessor's deletion. A waiter whose lease died while it waited
//!   finds its key gone and gets `SessionLost`, never a guard.
//! - A waiter that stops waiting (timeout, error, cancellation by drop) deletes its key, so it
//!   never blocks the waiters behind it; a dropped `LockGuard` releases its key the same way.
//! - A failed enqueue first makes every copy of it still in flight fail (it moves the attempt
//!   count), then deletes the incarnation of the key it may have created, by create_revision;
//!   until then the lock name stays claimed.
//! - Lock names start with `/` and do not end with one; the library's own keys start with
//!   [`RESERVED_PREFIX`], so no lock's range covers them. Locks named under another (`/a/b`
//!   under `/a`) are independent: a lock's keys are the *direct* children of `<name>/`, and
//!   keys further down (`/a/b/<lease>`) are skipped wherever a waiter reads its turn.

use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use super::client::{RETRY_PAUSE, token_of};
use super::session::NameClaim;
use super::watch::{self, WatchStart, Watched};
use super::{Client, Error, LeaseId, LossReason, Result, Session};
use crate::FencingToken;
use crate::etcd::etcdserverpb::{self as pb, compare, range_request, request_op, response_op};
use crate::etcd::prefix_end;

/// How long a waiter trusts one watch before it reads its turn again.
const LOOK_AGAIN_AFTER: Duration = Duration::from_secs(2);

/// How a lock call waits.
#[derive(Clone, Copy, Debug, Default)]
pub struct LockOptions {
    /// Give up after this long (deleting the waiter key) with [`Error::Timeout`].
    pub timeout: Option<Duration>,
    /// Where the watch on the predecessor starts; see [`WatchStart`].
    pub watch_start: WatchStart,
    /// Lock-delay, for resources that cannot check tokens: when the key ahead went because
    /// its lease ended (expired or revoked) rather than by a release, acquire no sooner than
    /// this after seeing it go, so that a holder frozen past its lease has this long to wake
    /// and find its lock lost before the next holder acts. The client tells a release from an
    /// ended lease by asking for that lease (LeaseTimeToLive); a release immediately
    /// followed by closing the session can look like an ended lease and be delayed too,
    /// never the reverse. Applies to waiters present when the key went; lockd's
    /// `--lock-delay` also covers those who come later. Zero (the default) waits for nothing.
    pub lock_delay: Duration,
}

impl Session {
    /// Waits until this session holds the lock `name` and returns its guard.
    pub async fn lock(&self, name: &str) -> Result<LockGuard> {
        self.lock_with(name, LockOptions::default()).await
    }

    /// Like [`Session::lock`], but gives up after `timeout` with [`Error::Timeout`], leaving
    /// no key behind.
    pub async fn try_lock(&self, name: &str, timeout: Duration) -> Result<LockGuard> {
        let options = LockOptions {
            timeout: Some(timeout),
            ..LockOptions::default()
        };
        self.lock_with(name, options).await
    }

    /// Locks `name` with explicit options.
    pub async fn lock_with(&self, name: &str, options: LockOptions) -> Result<LockGuard> {
        let started = Instant::now();
        check_name(name)?;
        if let Some(reason) = self.lost_reason() {
            return Err(Error::SessionLost {
                lease: self.lease(),
                reason,
            });
        }
        let claim = self.claim(name)?;
        let prefix = format!("{name}/");
        let key = format!("{prefix}{}", self.lease());
        // From here on the key exists: every way out must delete it or hand it to a guard.
        let (turn, mut pending) = enqueue_to_completion(self, name, &key, claim).await?;
        let my_revision = pending.created;
        let deadline = options.timeout.map(|t| started + t);
        let waited = tokio::select! {
            waited = wait_turn(self, &prefix, my_revision, turn, &options) => waited,
            reason = self.lost() => Err(Error::SessionLost { lease: self.lease(), reason }),
            _ = until(deadline) => Err(Error::Timeout {
                name: name.to_string(),
                waited: started.elapsed(),
            }),
        };
        let acquired_at = match waited {
            Ok(revision) => revision,
            Err(
                e @ Error::SessionLost {
                    reason: LossReason::KeyDeleted,
                    ..
                },
            ) => {
                pending.disarm();
                return Err(e);
            }
            Err(e) => {
                pending.delete().await;
                return Err(e);
            }
        };
        let token = token_of(my_revision)?;
        tracing::info!(key = %pending.key, %token, lease = %self.lease(), "lock acquired");
        Ok(LockGuard {
            session: self.clone(),
            token,
            acquired_at,
            key: pending,
        })
    }
}

/// Where a waiter stands: as of `revision`, `predecessor` is the newest lock key created
/// before its own, with its create_revision (`None`: it holds the lock).
struct Turn {
    predecessor: Option<(Vec<u8>, i64)>,
    revision: i64,
}

/// Runs `enqueue` in a task of its own, so that dropping the lock call while the request is
/// in flight cannot leave a key behind. The key travels back as an armed [`OwnedKey`]: if
/// the lock call is gone before it receives it (also just after the send), the guard is
/// dropped with the channel and deletes the key, and only then releases the lock name for
/// this session's next call. A failed `enqueue` may also have created the key (its answer
/// lost), or a copy of it may still be on its way; [`abandon`] deals with both in the
/// background, the name staying claimed until it is done.
async fn enqueue_to_completion(
    session: &Session,
    name: &str,
    key: &str,
    claim: NameClaim,
) -> Result<(Turn, OwnedKey)> {
    let (answer, received) = tokio::sync::oneshot::channel();
    let (session, name, key) = (session.clone(), name.to_string(), key.to_string());
    tokio::spawn(async move {
        match enqueue(&session, &name, &key).await {
            Ok((created, turn)) => {
                let owned = OwnedKey {
                    client: session.client().clone(),
                    key,
                    created,
                    claim: Some(claim),
                };
                // Unsent, the answer is dropped here, and with it the guard.
                let _ = answer.send(Ok((turn, owned)));
            }
            Err(e) => {
                // Refused by etcd's rules for this request and user: every copy was refused
                // alike, and so would the cleanup be, which touches the same keys as the
                // same user. Nothing is left to clean up.
                let refused = e.is_refusal();
                let _ = answer.send(Err(e));
                if !refused {
                    abandon(&session, &name, &key).await;
                }
                drop(claim);
            }
        }
    });
    received
        .await
        .map_err(|_| Error::protocol("txn", "the request task ended without an answer"))?
}

/// Deletes the incarnation of `key` created at `created`.
async fn delete_quietly(client: &Client, key: &str, created: i64) {
    if let Err(e) = client.delete_created(key, created).await {
        tracing::warn!(%key, error = %e, "could not delete the lock key");
    }
}

/// Cleans up after a failed enqueue of `key`, whose answer may have been lost while the
/// Txn, or a hedged copy of it, is still held by a frozen service or member.
///
/// A plain delete is not enough: a copy applied after it would create a key nobody owns,
/// blocking every other session until this one ends, and a late copy of the delete itself
/// could remove this session's next key of the same name. So, in this order:
/// 1. [`invalidate`] moves the attempt count past the one every copy compares against (or
///    finds it moved by a copy that was applied): from then on no copy can create the key;
/// 2. the incarnation that exists then, if any, is deleted by its create_revision.
///
/// Each step is retried until it is answered or the session is lost (its keys then go with
/// the lease); the caller keeps the lock name claimed meanwhile.
async fn abandon(session: &Session, name: &str, key: &str) {
    // Every earlier try of the failed call compared against a lower count, already passed:
    // the count as last seen is the one its last, unanswered Txn used.
    let attempt = session.attempts(name);
    let created = match retrying(session, key, || invalidate(session, name, key, attempt)).await {
        Some(Some(created)) => created,
        Some(None) | None => return,
    };
    let client = session.client();
    retrying(session, key, || client.delete_created(key, created)).await;
}

/// Runs `step` until it succeeds (`Some`), the session is lost, or the lock service refuses
/// it for good (`None`, logged).
async fn retrying<T, F, Fut>(session: &Session, key: &str, mut step: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    loop {
        match step().await {
            Ok(done) => return Some(done),
            Err(e @ Error::Unavailable { .. }) if session.lost_reason().is_none() => {
                tracing::debug!(%key, error = %e, "cleaning up after a failed enqueue; trying again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "could not clean up after a failed enqueue");
                return None;
            }
        }
    }
}

/// Makes every copy of the enqueue Txn for attempt `attempt` fail: bumps the attempt key if
/// it is still at `attempt`, else leaves it (a copy was applied and moved it). Conditional,
/// so the request is safe to send twice and a late copy of it changes nothing. Returns the
/// create_revision of the session's lock key if one exists now: no copy can create another.
async fn invalidate(session: &Session, name: &str, key: &str, attempt: i64) -> Result<Option<i64>> {
    let attempt_key = attempt_key(session.lease(), name).into_bytes();
    let get = |key: &[u8]| pb::RequestOp {
        request: Some(request_op::Request::RequestRange(pb::RangeRequest {
            key: key.to_vec(),
            keys_only: true,
            ..Default::default()
        })),
    };
    let request = pb::TxnRequest {
        compare: vec![pb::Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Version as i32,
            key: attempt_key.clone(),
            target_union: Some(compare::TargetUnion::Version(attempt)),
            ..Default::default()
        }],
        success: vec![
            pb::RequestOp {
                request: Some(request_op::Request::RequestPut(pb::PutRequest {
                    key: attempt_key.clone(),
                    lease: session.lease().get(),
                    ..Default::default()
                })),
            },
            get(key.as_bytes()),
        ],
        failure: vec![get(&attempt_key), get(key.as_bytes())],
    };
    let response = match session.client().txn(request).await {
        Ok(response) => response,
        // The lease is gone, and with it every key it had; no copy can attach a key to it.
        Err(Error::Rpc { status, .. }) if status.code() == tonic::Code::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let range = |i: usize| match response.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(range)) => Ok(range),
        _ => Err(Error::protocol("txn", "missing range answer")),
    };
    let seen = if response.succeeded {
        attempt + 1
    } else {
        range(0)?.kvs.first().map_or(0, |kv| kv.version)
    };
    session.attempted(name, attempt, seen);
    tracing::debug!(%key, attempt, seen, "failed enqueue invalidated");
    Ok(range(1)?
        .kvs
        .first()
        .filter(|kv| kv.lease == session.lease().get())
        .map(|kv| kv.create_revision))
}

/// The first bytes of every key the library writes besides lock keys (today the attempt
/// keys, `_fencelock/attempts/<lease id hex><lock name>`).
///
/// Lock names start with `/`, so no lock's range (`<name>/`) can cover a key starting with
/// `_`, and no valid name is a prefix of this space. A readable, fixed prefix rather than,
/// say, a leading NUL byte, because etcd's roles grant permissions by key prefix: a user who
/// restricts a role to its lock names adds `_fencelock/`, which can be typed into
/// `etcdctl role grant-permission`.
pub const RESERVED_PREFIX: &str = "_fencelock/";

const _: () = assert!(RESERVED_PREFIX.as_bytes()[0] != b'/');

/// Where a session counts its enqueue attempts on lock `name`: in the reserved space, so no
/// waiter of any lock ever sees it, and attached to the session's lease, so it ends with the
/// session. The lease ID has no `/`, so `<lease><name>` names one pair.
pub(crate) fn attempt_key(lease: LeaseId, name: &str) -> String {
    format!("{RESERVED_PREFIX}attempts/{lease}{name}")
}

/// Refuses lock names whose keys could be confused with other keys: a name must start with
/// `/` (which keeps every lock apart from [`RESERVED_PREFIX`]) and must not end with one (the
/// lock key appends `/<lease>`: `/orders/` would be a second lock, spelled like `/orders`,
/// whose keys have an empty path segment).
pub(crate) fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "a lock name cannot be empty"
    } else if !name.starts_with('/') {
        "a lock name starts with `/`, e.g. /orders"
    } else if name.ends_with('/') {
        "a lock name does not end with `/`"
    } else {
        return Ok(());
    };
    Err(Error::InvalidLockName {
        name: name.to_string(),
        reason,
    })
}

/// Whether `key` is a lock key of the lock whose prefix is `prefix` (`<name>/`): a direct
/// child. Keys further down belong to locks named under this one (`/a/b/<lease>` under
/// `/a/`) and never count as holders or waiters of it.
pub(crate) fn is_lock_key(prefix: &str, key: &[u8]) -> bool {
    key.strip_prefix(prefix.as_bytes())
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(&b'/'))
}

/// How many times an enqueue re-reads a moved attempt count before giving up: each retry
/// follows a change this session made itself, so more than one is already unusual.
const ENQUEUE_TRIES: usize = 3;

/// The enqueue transaction for attempt `attempt` of lock `name`: if the lock key is absent
/// and the attempt key has version `attempt`, create both and read the two newest lock keys;
/// otherwise read the lock key and the attempt key.
pub(crate) fn enqueue_request(
    session: &Session,
    name: &str,
    key: &str,
    attempt: i64,
) -> pb::TxnRequest {
    let prefix = format!("{name}/");
    let key = key.as_bytes().to_vec();
    let attempt_key = attempt_key(session.lease(), name).into_bytes();
    let put = |key: &[u8]| pb::RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            lease: session.lease().get(),
            ..Default::default()
        })),
    };
    let get = |key: &[u8]| pb::RequestOp {
        request: Some(request_op::Request::RequestRange(pb::RangeRequest {
            key: key.to_vec(),
            keys_only: true,
            ..Default::default()
        })),
    };
    pb::TxnRequest {
        compare: vec![
            pb::Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Create as i32,
                key: key.clone(),
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
                ..Default::default()
            },
            pb::Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Version as i32,
                key: attempt_key.clone(),
                target_union: Some(compare::TargetUnion::Version(attempt)),
                ..Default::default()
            },
        ],
        success: vec![
            put(&key),
            put(&attempt_key),
            pb::RequestOp {
                request: Some(request_op::Request::RequestRange(newest_keys(
                    &prefix, 0, FIRST_PAGE,
                ))),
            },
        ],
        failure: vec![get(&key), get(&attempt_key)],
    }
}

/// Creates the lock key with the session's lease unless it exists, and in the same
/// transaction reads the two newest keys of the lock: the new key and its predecessor.
/// Returns the key's create_revision (the future token) and the waiter's turn.
///
/// The key is named by the lease, so if it exists it is ours: created by an earlier copy of
/// this same request (a retry or a hedge whose answer came second). That makes the request
/// safe to send twice; two lock calls of one session on one name are refused earlier, by
/// the claim.
///
/// A copy can also arrive late, after this lock was taken and released: it would find the
/// key absent and create it again, a key nobody owns, blocking every other session until
/// this one ends. So the transaction also requires the session's attempt key for the name
/// to be at the version this call saw, and bumps it: a late copy finds it moved and changes
/// nothing.
async fn enqueue(session: &Session, name: &str, key: &str) -> Result<(i64, Turn)> {
    let prefix = format!("{name}/");
    for _ in 0..ENQUEUE_TRIES {
        let attempt = session.attempts(name);
        let request = enqueue_request(session, name, key, attempt);
        let response = session.client().txn(request).await?;
        let revision = response
            .header
            .as_ref()
            .map(|h| h.revision)
            .ok_or_else(|| Error::protocol("txn", "no header"))?;
        let range = |i: usize| match response.responses.get(i).and_then(|r| r.response.as_ref()) {
            Some(response_op::Response::ResponseRange(range)) => Ok(range),
            _ => Err(Error::protocol("txn", "missing range answer")),
        };
        if response.succeeded {
            session.attempted(name, attempt, attempt + 1);
            // Both puts share the transaction's revision, which is so the lock key's
            // create_revision, and the lock key is the newest of the lock.
            let newest = &range(2)?.kvs;
            if newest.first().map(|kv| kv.create_revision) != Some(revision) {
                return Err(Error::protocol("txn", "the new lock key is not the newest"));
            }
            let turn = match predecessor_in(&prefix, newest, FIRST_PAGE) {
                Some(predecessor) => Turn {
                    predecessor,
                    revision,
                },
                // Keys of locks named under this one filled the page: read on, as of the
                // Txn's revision.
                None => look(session, &prefix, revision, Some(revision)).await?,
            };
            return Ok((revision, turn));
        }
        let seen = range(1)?.kvs.first().map_or(0, |kv| kv.version);
        session.attempted(name, attempt, seen);
        match range(0)?.kvs.first() {
            Some(kv) if kv.lease == session.lease().get() => {
                let my_revision = kv.create_revision;
                return Ok((
                    my_revision,
                    look(session, &prefix, my_revision, None).await?,
                ));
            }
            Some(kv) => {
                return Err(Error::protocol(
                    "txn",
                    format!("lock key {key} belongs to lease {}", LeaseId::new(kv.lease)),
                ));
            }
            // The attempt count had moved (an earlier call's copy, applied late): try again
            // with the count as it is now.
            None => tracing::debug!(%key, attempt, seen, "attempt count moved; enqueuing again"),
        }
    }
    Err(Error::protocol(
        "txn",
        format!("the attempt count of {key} kept moving"),
    ))
}

/// How many keys a waiter reads first: its own and its predecessor's, when no lock is named
/// under this one.
const FIRST_PAGE: i64 = 2;

/// By how much a read that found only keys of locks named under this one grows: each read
/// starts again from the waiter's own key, so the reads stay exact whatever revisions the
/// skipped keys share, and the total stays proportional to the keys skipped.
const PAGE_GROWTH: i64 = 4;

/// The `limit` newest keys under `prefix` created at or before `max_create_revision` (0: no
/// bound): a waiter's own key first, then the keys created before it.
fn newest_keys(prefix: &str, max_create_revision: i64, limit: i64) -> pb::RangeRequest {
    pb::RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_end(prefix.as_bytes()),
        max_create_revision,
        sort_target: range_request::SortTarget::Create as i32,
        sort_order: range_request::SortOrder::Descend as i32,
        limit,
        keys_only: true,
        ..Default::default()
    }
}

/// The predecessor in a page of [`newest_keys`] whose first key is the waiter's own: the
/// first lock key of this lock after it (`Some(None)`: none, the waiter holds the lock), or
/// `None` when the page was full of other keys and the answer lies further on.
fn predecessor_in(
    prefix: &str,
    kvs: &[crate::etcd::mvccpb::KeyValue],
    limit: i64,
) -> Option<Option<(Vec<u8>, i64)>> {
    match kvs.iter().skip(1).find(|kv| is_lock_key(prefix, &kv.key)) {
        Some(kv) => Some(Some((kv.key.to_vec(), kv.create_revision))),
        None if (kvs.len() as i64) < limit => Some(None),
        None => None,
    }
}

/// Reads the waiter's turn again. This is also the re-check of the own key that comes before
/// acquiring: a waiter whose lease died while it waited finds its key gone
/// (`SessionLost`), even though its predecessor is gone too.
///
/// With `at`, the revision at which the predecessor was seen deleted, the read is of that
/// revision and served by any member that has applied it, without a round of consensus. A
/// read of revision `at` is as good as a read now: keys created before ours cannot appear
/// later, and ours could as well be deleted just after a current read. A member that has not
/// reached `at` yet refuses (a "future revision"), and the read is made linearizable.
///
/// Keys of locks named under this one are skipped; while they fill the whole read, it is
/// made again with a larger limit, at the revision of the read before.
async fn look(
    session: &Session,
    prefix: &str,
    my_revision: i64,
    mut at: Option<i64>,
) -> Result<Turn> {
    let mut limit = FIRST_PAGE;
    loop {
        let (kvs, revision) = read_newest(session, prefix, my_revision, limit, at).await?;
        if kvs.first().map(|kv| kv.create_revision) != Some(my_revision) {
            return Err(Error::SessionLost {
                lease: session.lease(),
                reason: LossReason::KeyDeleted,
            });
        }
        if let Some(predecessor) = predecessor_in(prefix, &kvs, limit) {
            return Ok(Turn {
                predecessor,
                revision,
            });
        }
        limit = limit.saturating_mul(PAGE_GROWTH);
        at = Some(revision);
    }
}

/// One read of [`newest_keys`], and the revision it shows: `at` when that past revision
/// could be read, else the current one.
async fn read_newest(
    session: &Session,
    prefix: &str,
    my_revision: i64,
    limit: i64,
    at: Option<i64>,
) -> Result<(Vec<crate::etcd::mvccpb::KeyValue>, i64)> {
    let client = session.client();
    let request = newest_keys(prefix, my_revision, limit);
    let (range, revision) = match at {
        Some(at) => {
            let past = pb::RangeRequest {
                revision: at,
                serializable: true,
                ..request.clone()
            };
            match client.range(past).await {
                Ok(range) => (range, Some(at)),
                Err(_) => (client.range(request).await?, None),
            }
        }
        None => (client.range(request).await?, None),
    };
    let revision = match revision {
        Some(at) => at,
        None => range
            .header
            .map(|h| h.revision)
            .ok_or_else(|| Error::protocol("range", "no header"))?,
    };
    Ok((range.kvs, revision))
}

/// Returns once no lock key created before `my_revision` remains.
async fn wait_turn(
    session: &Session,
    prefix: &str,
    my_revision: i64,
    mut turn: Turn,
    options: &LockOptions,
) -> Result<i64> {
    // When the last predecessor whose lease ended (not released) was seen gone.
    let mut lease_ended_seen: Option<Instant> = None;
    while let Some((predecessor, created)) = turn.predecessor {
        tracing::debug!(
            predecessor = %String::from_utf8_lossy(&predecessor),
            revision = turn.revision,
            "waiting for the predecessor's deletion"
        );
        // Deleted or not, look again: the keys before the deleted one may still be there
        // (a waiter that gave up is deleted before the holder).
        let watched = watch::deleted(
            session.client(),
            &predecessor,
            created,
            turn.revision,
            options.watch_start,
        );
        // A watch through a frozen member hears nothing until its connection is declared
        // dead, which takes the client's HTTP/2 ping interval and timeout; looking again now
        // and then, through whichever member answers, bounds the wait after a deletion.
        let at = match tokio::time::timeout(LOOK_AGAIN_AFTER, watched).await {
            Ok(Watched::Deleted { at }) => Some(at),
            Ok(Watched::LookAgain) | Err(_) => None,
        };
        turn = look(session, prefix, my_revision, at).await?;
        let gone = turn
            .predecessor
            .as_ref()
            .is_none_or(|(key, revision)| *key != predecessor || *revision != created);
        if gone && !options.lock_delay.is_zero() && !lease_alive(session, &predecessor).await? {
            lease_ended_seen = Some(Instant::now());
        }
    }
    if let Some(seen) = lease_ended_seen {
        tracing::info!(delay = ?options.lock_delay, "the lease ahead ended without a release: waiting out the lock-delay");
        sleep_until(seen + options.lock_delay).await;
    }
    Ok(turn.revision)
}

/// Whether the lease of lock key `key` (`<name>/<lease id hex>`) still exists. A key whose
/// name carries no lease ID counts as ended.
async fn lease_alive(session: &Session, key: &[u8]) -> Result<bool> {
    let id = std::str::from_utf8(key)
        .ok()
        .and_then(|key| key.rsplit_once('/'))
        .and_then(|(_, hex)| hex.parse::<LeaseId>().ok());
    let Some(id) = id else {
        return Ok(false);
    };
    let request = pb::LeaseTimeToLiveRequest {
        id: id.get(),
        keys: false,
    };
    let answer = session
        .client()
        .unary("lease_time_to_live", |c| async move {
            c.lease().lease_time_to_live(request).await
        })
        .await?;
    // etcd answers -1 for a lease it does not know; a live one has 0 or more seconds left.
    Ok(answer.ttl >= 0)
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A lock key this process must delete unless it hands it on: the key of a waiter, then of
/// a holder. Dropped while armed, it deletes the key from a spawned task.
struct OwnedKey {
    client: Client,
    key: String,
    /// The key's create_revision: deletes remove this incarnation only.
    created: i64,
    claim: Option<NameClaim>,
}

impl OwnedKey {
    /// Deletes the key now. A failure is logged, not returned: the key is attached to the
    /// lease, so it goes when the lease does.
    async fn delete(&mut self) {
        if let Some(claim) = self.claim.take() {
            delete_quietly(&self.client, &self.key, self.created).await;
            drop(claim);
        }
    }

    /// Forgets the key without deleting it (it is already gone).
    fn disarm(&mut self) {
        self.claim = None;
    }
}

impl Drop for OwnedKey {
    fn drop(&mut self) {
        if self.claim.is_none() {
            return;
        }
        // Dropped mid-wait (a cancelled lock future) or as a guard: delete in the background.
        // Without a runtime (dropped after shutdown) the key stays until the lease ends.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let key = std::mem::take(&mut self.key);
            let (claim, created) = (self.claim.take(), self.created);
            runtime.spawn(async move {
                delete_quietly(&client, &key, created).await;
                drop(claim);
            });
        }
    }
}

/// A held lock. Its token fences every request made on the lock's behalf.
///
/// Dropping the guard releases the lock in the background; [`LockGuard::unlock`] releases it
/// and waits for etcd to confirm.
pub struct LockGuard {
    session: Session,
    token: FencingToken,
    acquired_at: i64,
    key: OwnedKey,
}

impl LockGuard {
    /// The fencing token: the lock key's create_revision.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// The lock service's revision as of which this session was seen to hold the lock: the
    /// read that found no older lock key. Every deletion that let it through (an earlier
    /// holder's release or expiry) happened at this revision or before.
    pub fn acquired_revision(&self) -> i64 {
        self.acquired_at
    }

    /// The lock key, `<lock name>/<lease id hex>`.
    pub fn key(&self) -> &str {
        &self.key.key
    }

    /// The session holding the lock.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Resolves when the lock is lost: the session is lost, or the lock key was deleted
    /// (watched directly, which notices a revoked lease at once instead of at the next
    /// keepalive).
    pub async fn lost(&self) -> LossReason {
        tokio::select! {
            reason = self.session.lost() => reason,
            () = key_deleted(&self.session, &self.key.key, self.token) => LossReason::KeyDeleted,
        }
    }

    /// Releases the lock: deletes the lock key, so the next waiter acquires.
    pub async fn unlock(mut self) -> Result<()> {
        let client = self.key.client.clone();
        let result = client.delete_created(&self.key.key, self.key.created).await;
        if result.is_ok() {
            tracing::info!(key = %self.key.key, token = %self.token, lease = %self.session.lease(), "lock released");
            self.key.disarm();
        }
        result.map(drop)
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key.key)
            .field("token", &self.token)
            .finish()
    }
}

/// Resolves when `key`, created at `token`, no longer exists; pends forever if etcd cannot
/// be asked (the session's own loss detection covers that case).
async fn key_deleted(session: &Session, key: &str, token: FencingToken) {
    let client = session.client();
    loop {
        let request = pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            keys_only: true,
            ..Default::default()
        };
        let revision = match client.range(request).await {
            Ok(range)
                if range.kvs.first().map(|kv| kv.create_revision) != Some(token.get() as i64) =>
            {
                return;
            }
            Ok(range) => match range.header {
                Some(header) => header.revision,
                None => std::future::pending().await,
            },
            Err(_) => std::future::pending().await,
        };
        if let Watched::Deleted { .. } = watch::deleted(
            client,
            key.as_bytes(),
            token.get() as i64,
            revision,
            WatchStart::Latest,
        )
        .await
        {
            return;
        }
    }
}

/// These run against an in-process lockd, so only when the crate is built with it.
#[cfg(all(test, feature = "lockd"))]
mod tests {
    use super::*;

    /// An in-process lockd on a loopback port, stopped when the returned sender drops.
    async fn lockd() -> (Client, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::lockd::serve(listener, async {
            let _ = stopped.await;
        }));
        (Client::connect([endpoint]).await.unwrap(), stop)
    }

    /// A copy of an enqueue that arrives after its lock was taken and released (a retry or a
    /// hedge held up on the way) must not create the lock key again: nobody would own it,
    /// and it would block every other session until this one ends.
    #[tokio::test]
    async fn a_late_copy_of_an_enqueue_creates_no_key() {
        let (client, _stop) = lockd().await;
        let session = client.session(Duration::from_secs(10)).await.unwrap();
        let key = format!("/late-enqueue/{}", session.lease());
        let guard = session.lock("/late-enqueue").await.unwrap();
        guard.unlock().await.unwrap();

        let late = enqueue_request(&session, "/late-enqueue", &key, 0);
        let replayed = client.txn(late).await.unwrap();
        assert!(
            !replayed.succeeded,
            "the late copy must find the attempt count moved"
        );
        assert!(client.lock_keys("/late-enqueue").await.unwrap().is_empty());

        let other = client.session(Duration::from_secs(10)).await.unwrap();
        let taken = tokio::time::timeout(Duration::from_secs(2), other.lock("/late-enqueue"))
            .await
            .expect("nothing blocks another session")
            .unwrap();
        taken.unlock().await.unwrap();
        let again = session.lock("/late-enqueue").await.unwrap();
        again.unlock().await.unwrap();
    }

    /// When the attempt count moved without this session seeing it (an earlier call's copy
    /// applied after its answer was lost), the next lock reads the count and goes on.
    #[tokio::test]
    async fn a_lock_goes_on_after_its_attempt_count_moved_unseen() {
        let (client, _stop) = lockd().await;
        let session = client.session(Duration::from_secs(10)).await.unwrap();
        let bump = pb::PutRequest {
            key: attempt_key(session.lease(), "/moved").into_bytes(),
            lease: session.lease().get(),
            ..Default::default()
        };
        for _ in 0..2 {
            client.kv().put(bump.clone()).await.unwrap();
        }
        let guard = session.lock("/moved").await.unwrap();
        assert_eq!(session.attempts("/moved"), 3);
        guard.unlock().await.unwrap();
    }

    /// A late copy of an earlier unlock (a retried delete whose first attempt was only slow)
    /// must not delete the next lock key of the same name, which has the same key name.
    #[tokio::test]
    async fn a_late_delete_of_an_old_lock_key_spares_the_new_one() {
        let (client, _stop) = lockd().await;
        let session = client.session(Duration::from_secs(10)).await.unwrap();
        let first = session.lock("/late").await.unwrap();
        let old = first.token().get() as i64;
        first.unlock().await.unwrap();
        let second = session.lock("/late").await.unwrap();
        assert_eq!(second.key(), format!("/late/{}", session.lease()));

        client.delete_created(second.key(), old).await.unwrap();
        let keys = client.lock_keys("/late").await.unwrap();
        assert_eq!(keys.len(), 1, "the new incarnation survives: {keys:?}");
        assert_eq!(keys[0].token, second.token());

        second.unlock().await.unwrap();
        assert!(client.lock_keys("/late").await.unwrap().is_empty());
        session.close().await.unwrap();
    }
}
