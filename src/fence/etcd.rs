//! Fenced writes to keys in etcd itself (or lockd): the caller's puts and deletes, applied by
//! one Txn only while the holder still holds the lock.
//!
//! - [`EtcdFence::apply_held`] is etcd's own recommended pattern: the Txn compares the
//!   holder's lock key's create_revision with the token, so it applies only while that lock
//!   key exists, the incarnation the token was handed out for. A holder whose lease expired
//!   (its key is gone) is refused by etcd itself, atomically with the writes, however late
//!   its request arrives.
//! - [`EtcdFence::apply_fenced`] also keeps a *fence key* (`_fencelock/fence/<name>`, value
//!   the token as decimal) raised in the same Txn, through the [`CasResource`] rule: readers
//!   that hold no lock read the data and the fence key at one revision
//!   ([`EtcdFence::read`]) and learn which token last wrote it, and two locks that guard the
//!   same data under one fence name are ordered by token.
//!
//! Requests are retried only on transient errors, and a Txn that timed out may still have
//! been applied, as any etcd write.

use bytes::Bytes;

use super::{CasResource, FenceError, StaleToken, apply};
use crate::FencingToken;
use crate::etcd::etcdserverpb as pb;
use crate::lock::{Client, Error, LockGuard, RESERVED_PREFIX};

/// One change to a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Deletes `key` (nothing if it does not exist).
    Delete {
        /// The key.
        key: Bytes,
    },
}

impl Op {
    /// A put.
    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// A delete.
    pub fn delete(key: impl Into<Bytes>) -> Op {
        Op::Delete { key: key.into() }
    }

    fn request(&self) -> pb::RequestOp {
        let request = match self {
            Op::Put { key, value } => pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                ..Default::default()
            }),
            Op::Delete { key } => {
                pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                })
            }
        };
        pb::RequestOp {
            request: Some(request),
        }
    }
}

/// Who writes: a lock key and the token (its create_revision) it was handed out with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The lock key, `<lock name>/<lease id hex>`.
    pub key: String,
    /// The fencing token, the key's create_revision.
    pub token: FencingToken,
}

impl Holder {
    /// The holder of `guard`.
    pub fn of(guard: &LockGuard) -> Holder {
        Holder {
            key: guard.key().to_owned(),
            token: guard.token(),
        }
    }

    /// The lock name: the lock key without its last segment.
    pub fn lock_name(&self) -> &str {
        self.key.rsplit_once('/').map_or("", |(name, _)| name)
    }
}

/// Why a fenced write was not applied.
#[derive(Debug, thiserror::Error)]
pub enum EtcdFenceError {
    /// The holder's lock key is gone (released, or its lease ended): the lock is not held, and
    /// nothing was applied.
    #[error("lock key {key} created at {token} is gone: the lock is not held; nothing was written")]
    LockGone {
        /// The holder's lock key.
        key: String,
        /// Its token.
        token: FencingToken,
    },
    /// The fence key holds a higher token: a newer holder has written under this fence.
    #[error(transparent)]
    Stale(StaleToken),
    /// The fence key's value is not a token (someone else wrote it).
    #[error("fence key {key} holds {value:?}, which is not a fencing token")]
    Corrupt {
        /// The fence key.
        key: String,
        /// Its value.
        value: String,
    },
    /// etcd failed or refused (permissions); a timed-out write may have been applied.
    #[error(transparent)]
    Etcd(#[from] Error),
}

/// The data and the fence key read at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FencedRead {
    /// The token that last wrote under the fence, `None` if none did.
    pub token: Option<FencingToken>,
    /// The revision all values were read at.
    pub revision: i64,
    /// The keys' values in the order asked, `None` for a missing key.
    pub values: Vec<Option<Bytes>>,
}

/// Fenced writes to etcd keys through a [`Client`].
#[derive(Clone, Debug)]
pub struct EtcdFence {
    client: Client,
}

impl EtcdFence {
    /// Fenced writes through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The fence key of fence `name`: `_fencelock/fence/<name>`, among the library's
    /// bookkeeping keys, out of every lock's range.
    pub fn fence_key(name: &str) -> String {
        format!("{RESERVED_PREFIX}fence/{name}")
    }

    /// Applies `ops` in one Txn only while `holder`'s lock key exists with its token as
    /// create_revision; the revision of the write.
    pub async fn apply_held(&self, holder: &Holder, ops: &[Op]) -> Result<i64, EtcdFenceError> {
        let request = pb::TxnRequest {
            compare: vec![still_held(holder)],
            success: ops.iter().map(Op::request).collect(),
            failure: Vec::new(),
        };
        let response = self.txn(request).await?;
        if !response.succeeded {
            return Err(lock_gone(holder));
        }
        Ok(revision(&response))
    }

    /// Like [`apply_held`](Self::apply_held), and raises fence `fence` (conventionally the
    /// lock name, [`Holder::lock_name`]) to the holder's token in the same Txn; refused as
    /// [`EtcdFenceError::Stale`] when the fence is already higher.
    pub async fn apply_fenced(
        &self,
        holder: &Holder,
        fence: &str,
        ops: &[Op],
    ) -> Result<i64, EtcdFenceError> {
        let resource = FenceKeyTxn { etcd: self, holder };
        apply(&resource, fence, holder.token, ops)
            .await
            .map_err(|e| match e {
                FenceError::Stale(stale) => EtcdFenceError::Stale(stale),
                FenceError::Resource(e) => e,
            })
    }

    /// Reads fence `fence`'s token and `keys` at one revision, for readers that hold no
    /// lock. (Linearizable: it sees every write acknowledged before it began.)
    pub async fn read(&self, fence: &str, keys: &[&str]) -> Result<FencedRead, EtcdFenceError> {
        let fence_key = Self::fence_key(fence);
        let range = |key: &str| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })),
        };
        let request = pb::TxnRequest {
            compare: Vec::new(),
            success: std::iter::once(fence_key.as_str())
                .chain(keys.iter().copied())
                .map(range)
                .collect(),
            failure: Vec::new(),
        };
        let response = self.txn(request).await?;
        let mut values = response.responses.iter().map(|r| match &r.response {
            Some(pb::response_op::Response::ResponseRange(range)) => {
                range.kvs.first().map(|kv| kv.value.clone())
            }
            _ => None,
        });
        let token = values
            .next()
            .flatten()
            .map(|value| parse_token(&fence_key, &value))
            .transpose()?;
        Ok(FencedRead {
            token,
            revision: revision(&response),
            values: values.collect(),
        })
    }

    async fn txn(&self, request: pb::TxnRequest) -> Result<pb::TxnResponse, Error> {
        // Not hedged: a Txn sent to two members could apply twice.
        self.client
            .unary("txn", |c| {
                let request = request.clone();
                async move { c.kv().txn(request).await }
            })
            .await
    }
}

/// The Txn of [`EtcdFence::apply_fenced`] as a compare-and-swap resource: the fence key's
/// mod_revision is its version (0 while it does not exist).
struct FenceKeyTxn<'a> {
    etcd: &'a EtcdFence,
    holder: &'a Holder,
}

impl CasResource for FenceKeyTxn<'_> {
    type Version = i64;
    type Change = [Op];
    type Output = i64;
    type Error = EtcdFenceError;

    async fn read_fence(&self, fence: &str) -> Result<(Option<FencingToken>, i64), Self::Error> {
        let key = EtcdFence::fence_key(fence);
        let response = self
            .etcd
            .client
            .range(pb::RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })
            .await?;
        match response.kvs.first() {
            Some(kv) => Ok((Some(parse_token(&key, &kv.value)?), kv.mod_revision)),
            None => Ok((None, 0)),
        }
    }

    async fn swap(
        &self,
        fence: &str,
        version: &i64,
        raise_to: Option<FencingToken>,
        ops: &[Op],
    ) -> Result<Option<i64>, Self::Error> {
        let key = EtcdFence::fence_key(fence);
        let unmoved = pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Mod as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(pb::compare::TargetUnion::ModRevision(*version)),
            ..Default::default()
        };
        let mut success: Vec<pb::RequestOp> = ops.iter().map(Op::request).collect();
        if let Some(token) = raise_to {
            success.push(Op::put(key.clone(), token.to_string()).request());
        }
        let request = pb::TxnRequest {
            compare: vec![still_held(self.holder), unmoved],
            success,
            // Tells the two failures apart in the same revision.
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: self.holder.key.as_bytes().to_vec(),
                    keys_only: true,
                    ..Default::default()
                })),
            }],
        };
        let response = self.etcd.txn(request).await?;
        if response.succeeded {
            return Ok(Some(revision(&response)));
        }
        let held = response.responses.first().is_some_and(|r| {
            matches!(&r.response, Some(pb::response_op::Response::ResponseRange(range))
                if range.kvs.first().is_some_and(|kv| kv.create_revision == token_revision(self.holder.token)))
        });
        if held {
            Ok(None)
        } else {
            Err(lock_gone(self.holder))
        }
    }
}

fn still_held(holder: &Holder) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: holder.key.as_bytes().to_vec(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(token_revision(
            holder.token,
        ))),
        ..Default::default()
    }
}

fn token_revision(token: FencingToken) -> i64 {
    // Tokens never exceed i64::MAX (FencingToken's invariant).
    i64::try_from(token.get()).unwrap_or(i64::MAX)
}

fn lock_gone(holder: &Holder) -> EtcdFenceError {
    EtcdFenceError::LockGone {
        key: holder.key.clone(),
        token: holder.token,
    }
}

fn revision(response: &pb::TxnResponse) -> i64 {
    response.header.as_ref().map_or(0, |h| h.revision)
}

fn parse_token(key: &str, value: &[u8]) -> Result<FencingToken, EtcdFenceError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .and_then(FencingToken::new)
        .ok_or_else(|| EtcdFenceError::Corrupt {
            key: key.to_owned(),
            value: String::from_utf8_lossy(value).into_owned(),
        })
}
