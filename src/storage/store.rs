//! The store: one writer thread applies requests in arrival order and commits them in
//! groups; replies leave only after the commit.
//!
//! ```text
//!  handlers ──mpsc──▶ writer thread: take everything queued, apply the fence rule and the
//!      ▲              effects, one durable engine commit for the whole batch
//!      └──oneshot──── then answer every request of the batch
//! ```
//!
//! Invariants:
//! - Requests take effect in the order they reach the writer, and the fence check and its
//!   effect are one step: only the writer thread decides.
//! - A key's binding to its fence is checked before the fence itself, and recorded in the
//!   same batch as the access that made it, so no request ever sees a key under two fences.
//! - A reply leaves only after its batch is committed, so an acknowledged write, and a fence
//!   raised by a read, are durable before anyone hears of them; and nobody reads a value that
//!   could still vanish in a crash.
//! - Batches grow with load by themselves: while the writer waits for the disk, requests
//!   queue, and the next batch takes them all.
//!
//! Why one thread, and not a writer handing batches to a separate syncer so that deciding
//! the next batch overlaps the running sync: fjall holds its journal lock for the whole
//! sync, so the next batch could not be written meanwhile anyway, and the extra hand-over
//! between threads costs a wake-up per batch. Measured on 2 cores under `wrk -c32`, the
//! two-thread version was 15-25% slower. One thread that is busy in `fdatasync` while
//! requests queue needs no wake-ups at all under load.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use hashbrown::HashTable;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use super::backend::{Backend, BackendError, Change, Entry, FenceId};
use super::fence::{self, Access, Binding, Policy, Rejection};
use super::metrics::Metrics;
use crate::FencingToken;

/// Requests waiting for the writer. Enough for every connection of a heavy load to have one
/// in flight; past it, handlers wait, which pushes back on the clients.
const REQUEST_QUEUE: usize = 4096;
/// Most requests the writer puts in one batch, so that one batch's replies are not held back
/// by an endless stream of new arrivals.
const MAX_BATCH: usize = 1024;

/// What a request asks the store to do.
#[derive(Debug)]
pub enum Op {
    Read {
        key: String,
        fence: Option<String>,
        token: Option<FencingToken>,
    },
    Write {
        key: String,
        value: Bytes,
        fence: Option<String>,
        token: Option<FencingToken>,
    },
    /// The fence's current token.
    Fence { name: String },
    /// Several reads, writes and deletes under one lock's fence and one token, applied all or
    /// nothing: refused whole when the token is stale or any key belongs to another fence.
    Txn {
        fence: String,
        token: Option<FencingToken>,
        ops: Vec<TxnOp>,
    },
}

/// One step of a [`Op::Txn`].
#[derive(Debug)]
pub enum TxnOp {
    /// Read the value under `key`.
    Read { key: String },
    /// Store `value` under `key`.
    Write { key: String, value: Bytes },
    /// Remove the value under `key`.
    Delete { key: String },
}

/// What one step of a transaction saw or did.
#[derive(Debug, PartialEq, Eq)]
pub enum TxnResult {
    /// The value read, if the key held one.
    Read(Option<Entry>),
    /// The value was stored.
    Written,
    /// Whether the key held a value before the delete.
    Deleted(bool),
}

/// A successful answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// The value under the key, if any.
    Value(Option<Entry>, KeyFence),
    Written,
    Fence(Option<FencingToken>),
    /// The results of a transaction's steps, in order.
    Txn(Vec<TxnResult>),
}

/// The fence a key belongs to, as a read shows it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeyFence {
    /// The key's binding; `None` while no checked access has touched it.
    pub binding: Option<Binding>,
    /// The token of that fence; `None` while unbound or while the fence has seen none.
    pub token: Option<FencingToken>,
}

/// Why the store did not carry a request out.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("the store cannot commit: {0}")]
    Failed(Arc<str>),
    #[error("the store is shut down")]
    Closed,
    /// Refused by token verification before reaching the store.
    #[error(transparent)]
    Unverified(#[from] super::verify::Unverified),
}

type Responder = oneshot::Sender<Result<Reply, StoreError>>;

/// Which engine holds the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Engine {
    /// fjall in this directory (created when missing).
    Durable(std::path::PathBuf),
    /// Maps in memory: nothing survives the process.
    Memory,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Engine::Durable(dir) => write!(f, "durable in {}", dir.display()),
            Engine::Memory => f.write_str("in memory"),
        }
    }
}

/// A cheap, cloneable way to send requests to the store.
#[derive(Clone)]
pub struct StoreHandle {
    requests: mpsc::Sender<(Op, Responder)>,
    broken: Arc<AtomicBool>,
}

impl StoreHandle {
    /// Runs `op` and waits until its effect (if any) is durable.
    pub async fn execute(&self, op: Op) -> Result<Reply, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send((op, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// False once a commit has failed; the store then refuses every request.
    pub fn is_healthy(&self) -> bool {
        !self.broken.load(Ordering::Acquire)
    }
}

/// The running store: its threads and the first handle.
pub struct Store {
    handle: StoreHandle,
    writer: JoinHandle<()>,
}

impl Store {
    /// Opens the engine and starts the writer thread.
    pub fn open(
        engine: &Engine,
        policy: Policy,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BackendError> {
        let backend: Arc<dyn Backend> = match engine {
            Engine::Durable(dir) => Arc::new(super::backend::Fjall::open(dir)?),
            Engine::Memory => Arc::new(super::backend::Memory::default()),
        };
        let (requests, inbox) = mpsc::channel(REQUEST_QUEUE);
        let broken = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            backend,
            policy,
            pending: Pending::default(),
            broken: broken.clone(),
            metrics,
            failure: None,
        };
        let writer = std::thread::Builder::new()
            .name("fencelock-writer".into())
            .spawn(move || writer.run(inbox))?;
        Ok(Store {
            handle: StoreHandle { requests, broken },
            writer,
        })
    }

    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// Waits until every handle is dropped and every accepted request is committed and
    /// answered, then stops the writer. Blocks: call it off the async runtime.
    pub fn close(self) {
        drop(self.handle);
        if self.writer.join().is_err() {
            error!("the store's writer thread panicked");
        }
    }
}

/// Effects of the batch being applied, not yet committed: what later requests of the same
/// batch must see. Emptied after every commit.
///
/// The changes are kept once, in commit order; the tables index them by key (the latest
/// value change and the binding of each key, the latest raise of each fence), so recording
/// a change copies neither its key nor its value.
#[derive(Default)]
struct Pending {
    changes: Vec<Change>,
    /// Indexes in `changes` of each key's latest `Value` or `Delete`.
    values: HashTable<usize>,
    /// Indexes in `changes` of each key's `Bind`.
    bindings: HashTable<usize>,
    /// Indexes in `changes` of each fence's latest `Fence`.
    fences: HashTable<usize>,
    /// std's keyed SipHash, as in `HashMap`: the keys come from clients.
    hasher: RandomState,
}

/// Which of [`Pending`]'s tables indexes a change, and under what.
enum Slot<'a> {
    Value(&'a str),
    Binding(&'a str),
    Fence(&'a FenceId),
}

impl Slot<'_> {
    fn of(change: &Change) -> Slot<'_> {
        match change {
            Change::Value { key, .. } | Change::Delete { key } => Slot::Value(key),
            Change::Bind { key, .. } => Slot::Binding(key),
            Change::Fence { id, .. } => Slot::Fence(id),
        }
    }

    fn hash(&self, hasher: &RandomState) -> u64 {
        match self {
            Slot::Value(key) | Slot::Binding(key) => hasher.hash_one(key),
            Slot::Fence(id) => hasher.hash_one(id),
        }
    }

    fn same(&self, other: &Slot<'_>) -> bool {
        match (self, other) {
            (Slot::Value(a), Slot::Value(b)) | (Slot::Binding(a), Slot::Binding(b)) => a == b,
            (Slot::Fence(a), Slot::Fence(b)) => a == b,
            _ => false,
        }
    }
}

impl Pending {
    /// Appends `change`; later lookups of its key or fence find it.
    fn record(&mut self, change: Change) {
        let index = self.changes.len();
        self.changes.push(change);
        let Pending {
            changes,
            values,
            bindings,
            fences,
            hasher,
        } = self;
        let slot = Slot::of(&changes[index]);
        let table = match slot {
            Slot::Value(_) => values,
            Slot::Binding(_) => bindings,
            Slot::Fence(_) => fences,
        };
        let hash = slot.hash(hasher);
        let entry = table.entry(
            hash,
            |&i| slot.same(&Slot::of(&changes[i])),
            |&i| Slot::of(&changes[i]).hash(hasher),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(mut latest) => *latest.get_mut() = index,
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(index);
            }
        }
    }

    fn find(&self, table: &HashTable<usize>, slot: Slot<'_>) -> Option<&Change> {
        table
            .find(slot.hash(&self.hasher), |&i| {
                slot.same(&Slot::of(&self.changes[i]))
            })
            .map(|&i| &self.changes[i])
    }

    /// `key`'s value as this batch left it: `None` when the batch has not touched it,
    /// `Some(None)` when it deleted it.
    fn value(&self, key: &str) -> Option<Option<&Entry>> {
        match self.find(&self.values, Slot::Value(key))? {
            Change::Value { entry, .. } => Some(Some(entry)),
            _ => Some(None),
        }
    }

    fn binding(&self, key: &str) -> Option<&Binding> {
        match self.find(&self.bindings, Slot::Binding(key))? {
            Change::Bind { binding, .. } => Some(binding),
            _ => None,
        }
    }

    fn fence(&self, id: &FenceId) -> Option<FencingToken> {
        match self.find(&self.fences, Slot::Fence(id))? {
            Change::Fence { token, .. } => Some(*token),
            _ => None,
        }
    }

    fn clear(&mut self) {
        self.values.clear();
        self.fences.clear();
        self.bindings.clear();
        self.changes.clear();
    }
}

struct Writer {
    backend: Arc<dyn Backend>,
    policy: Policy,
    pending: Pending,
    broken: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// Set by the first failed commit; every later request is refused with it.
    failure: Option<Arc<str>>,
}

impl Writer {
    fn run(mut self, mut inbox: mpsc::Receiver<(Op, Responder)>) {
        let mut replies = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = inbox.blocking_recv() {
            // Everything that queued up while the last commit waited for the disk joins this
            // batch: that is the group commit, and why batches grow with load.
            let mut next = Some(first);
            while let Some((op, responder)) = next {
                let result = self.apply(op);
                replies.push((responder, result));
                if replies.len() == MAX_BATCH {
                    break;
                }
                next = inbox.try_recv().ok();
            }
            self.commit(replies.len());
            for (responder, mut result) in replies.drain(..) {
                if let (Some(failure), Ok(_)) = (&self.failure, &result) {
                    result = Err(StoreError::Failed(failure.clone()));
                }
                // A handler that gave up (its client hung up) no longer listens; nothing to do.
                let _ = responder.send(result);
            }
        }
    }

    /// Makes the pending effects durable in one engine commit.
    fn commit(&mut self, requests: usize) {
        if self.failure.is_none() && !self.pending.changes.is_empty() {
            let started = Instant::now();
            match self.backend.commit(&self.pending.changes) {
                Ok(()) => self.metrics.commit(requests, started.elapsed()),
                Err(e) => {
                    error!("commit failed, the store refuses all further requests: {e}");
                    self.failure = Some(e.to_string().into());
                    self.broken.store(true, Ordering::Release);
                }
            }
        }
        self.pending.clear();
    }

    /// Decides one request and records its effects as pending.
    fn apply(&mut self, op: Op) -> Result<Reply, StoreError> {
        if let Some(failure) = &self.failure {
            return Err(StoreError::Failed(failure.clone()));
        }
        match op {
            Op::Read { key, fence, token } => {
                self.pass_fence(Access::Read, &key, fence.as_deref(), token)?;
                let value = self.value(&key)?;
                let binding = self.binding(&key)?;
                let token = match &binding {
                    Some(binding) => self.current_fence(&FenceId::new(&key, binding))?,
                    None => None,
                };
                Ok(Reply::Value(value, KeyFence { binding, token }))
            }
            Op::Write {
                key,
                value,
                fence,
                token,
            } => {
                self.pass_fence(Access::Write, &key, fence.as_deref(), token)?;
                let entry = Entry { value, token };
                self.pending.record(Change::Value { key, entry });
                Ok(Reply::Written)
            }
            Op::Txn { fence, token, ops } => self.txn(&fence, token, ops),
            Op::Fence { name } => Ok(Reply::Fence(self.current_fence(&FenceId::Lock(name))?)),
        }
    }

    /// Applies the binding rule and then the fence rule to a request for `key` naming
    /// `fence` (a lock name, or none for the key's own fence), and records what the rules
    /// say: the key's binding on its first checked access, a raised fence.
    fn pass_fence(
        &mut self,
        access: Access,
        key: &str,
        fence: Option<&str>,
        token: Option<FencingToken>,
    ) -> Result<(), StoreError> {
        if !fence::is_checked(self.policy, access, token) {
            return Ok(());
        }
        let requested = Binding::of(fence);
        let bound = self.binding(key)?;
        let id = FenceId::new(key, &requested);
        let current = self.current_fence(&id)?;
        let fence_name = fence.unwrap_or(key);
        let decided = fence::bind(key, bound.as_ref(), &requested).and_then(|binding| {
            fence::check(self.policy, access, fence_name, token, current)
                .map(|accepted| (binding, accepted))
        });
        match decided {
            Ok((binding, accepted)) => {
                if let Some(binding) = binding {
                    self.pending.record(Change::Bind {
                        key: key.to_owned(),
                        binding,
                    });
                }
                if let Some(raised) = accepted.raise_to {
                    self.pending.record(Change::Fence { id, token: raised });
                }
                Ok(())
            }
            Err(rejection) => Err(self.refuse(key, fence_name, token, current, rejection)),
        }
    }

    /// A transaction: every key's binding and the fence are decided before any effect is
    /// recorded, so a refusal leaves nothing of the transaction behind, and its effects join
    /// the batch's one commit.
    fn txn(
        &mut self,
        fence: &str,
        token: Option<FencingToken>,
        ops: Vec<TxnOp>,
    ) -> Result<Reply, StoreError> {
        let writes = ops.iter().any(|op| !matches!(op, TxnOp::Read { .. }));
        let access = if writes { Access::Write } else { Access::Read };
        if fence::is_checked(self.policy, access, token) {
            let requested = Binding::Lock(fence.to_owned());
            let mut new_bindings = Vec::new();
            for key in ops.iter().map(TxnOp::key) {
                let bound = self.binding(key)?;
                let decided = fence::bind(key, bound.as_ref(), &requested);
                match decided {
                    Ok(Some(binding)) => new_bindings.push((key.to_owned(), binding)),
                    Ok(None) => {}
                    Err(rejection) => return Err(self.refuse(key, fence, token, None, rejection)),
                }
            }
            let id = FenceId::Lock(fence.to_owned());
            let current = self.current_fence(&id)?;
            let accepted = fence::check(self.policy, access, fence, token, current)
                .map_err(|rejection| self.refuse(fence, fence, token, current, rejection))?;
            for (key, binding) in new_bindings {
                self.pending.record(Change::Bind { key, binding });
            }
            if let Some(raised) = accepted.raise_to {
                self.pending.record(Change::Fence { id, token: raised });
            }
        }
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                TxnOp::Read { key } => TxnResult::Read(self.value(&key)?),
                TxnOp::Write { key, value } => {
                    let entry = Entry { value, token };
                    self.pending.record(Change::Value { key, entry });
                    TxnResult::Written
                }
                TxnOp::Delete { key } => {
                    let existed = self.value(&key)?.is_some();
                    self.pending.record(Change::Delete { key });
                    TxnResult::Deleted(existed)
                }
            });
        }
        Ok(Reply::Txn(results))
    }

    /// Logs a refusal and turns it into the request's error.
    fn refuse(
        &self,
        key: &str,
        fence: &str,
        token: Option<FencingToken>,
        current: Option<FencingToken>,
        rejection: Rejection,
    ) -> StoreError {
        warn!(
            key,
            fence = %fence,
            token = token.map_or(0, FencingToken::get),
            current = current.map_or(0, FencingToken::get),
            "rejected: {rejection}"
        );
        rejection.into()
    }

    /// The value under `key`, as this batch left it.
    fn value(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        match self.pending.value(key) {
            Some(entry) => Ok(entry.cloned()),
            None => self.backend.value(key).map_err(failed),
        }
    }

    fn current_fence(&self, id: &FenceId) -> Result<Option<FencingToken>, StoreError> {
        match self.pending.fence(id) {
            Some(token) => Ok(Some(token)),
            None => self.backend.fence(id).map_err(failed),
        }
    }

    fn binding(&self, key: &str) -> Result<Option<Binding>, StoreError> {
        match self.pending.binding(key) {
            Some(binding) => Ok(Some(binding.clone())),
            None => self.backend.binding(key).map_err(failed),
        }
    }
}

impl TxnOp {
    /// The key this step touches.
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Read { key } | TxnOp::Write { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

fn failed(e: BackendError) -> StoreError {
    StoreError::Failed(e.to_string().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u64) -> FencingToken {
        FencingToken::new(n).unwrap()
    }

    fn write(key: &str, value: &'static str, n: u64) -> Change {
        Change::Value {
            key: key.into(),
            entry: Entry {
                value: Bytes::from_static(value.as_bytes()),
                token: Some(token(n)),
            },
        }
    }

    #[test]
    fn pending_answers_each_keys_latest_change_and_keeps_every_change_in_order() {
        let mut pending = Pending::default();
        let lock = FenceId::Lock("/lock".into());
        // The same name as a lock's fence, a key's own fence and a key: three different slots.
        let own = FenceId::Key("/lock".into());
        pending.record(write("a", "1", 3));
        pending.record(Change::Bind {
            key: "a".into(),
            binding: Binding::Lock("/lock".into()),
        });
        pending.record(Change::Fence {
            id: lock.clone(),
            token: token(3),
        });
        pending.record(Change::Delete { key: "a".into() });
        pending.record(write("/lock", "x", 9));
        pending.record(Change::Fence {
            id: own.clone(),
            token: token(9),
        });
        assert_eq!(pending.value("a"), Some(None), "the delete came last");
        pending.record(write("a", "2", 4));
        pending.record(Change::Fence {
            id: lock.clone(),
            token: token(4),
        });

        let a = pending.value("a").unwrap().unwrap();
        assert_eq!(
            (a.value.as_ref(), a.token),
            (b"2".as_slice(), Some(token(4)))
        );
        assert_eq!(
            pending.value("/lock").unwrap().unwrap().token,
            Some(token(9))
        );
        assert_eq!(pending.value("b"), None, "untouched by the batch");
        assert_eq!(pending.binding("a"), Some(&Binding::Lock("/lock".into())));
        assert_eq!(pending.binding("/lock"), None, "written, never bound");
        assert_eq!(pending.fence(&lock), Some(token(4)));
        assert_eq!(pending.fence(&own), Some(token(9)));
        assert_eq!(
            pending.changes.len(),
            8,
            "every change is committed, in order"
        );
        assert!(matches!(pending.changes[3], Change::Delete { .. }));

        pending.clear();
        assert_eq!(pending.value("a"), None);
        assert_eq!(pending.binding("a"), None);
        assert_eq!(pending.fence(&lock), None);
        assert!(pending.changes.is_empty());
    }
}
