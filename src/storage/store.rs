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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use indexmap::IndexMap;
use indexmap::map;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use super::backend::{Backend, BackendError, Entry, FenceId, Record};
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
/// batch must see. Emptied after every commit (the maps keep their capacity).
///
/// Each key and each fence the batch changed is there once, as the batch leaves it (a later
/// request of the batch replaces it), so the commit writes one record per key, in the order
/// the batch first touched them. (A `HashMap`, which hands them to the engine in hash order,
/// made 16-key transactions 5-10% slower.)
#[derive(Default)]
struct Pending {
    records: IndexMap<String, Record>,
    fences: IndexMap<FenceId, FencingToken>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.fences.is_empty()
    }

    fn clear(&mut self) {
        self.records.clear();
        self.fences.clear();
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
        if self.failure.is_none() && !self.pending.is_empty() {
            let started = Instant::now();
            match self
                .backend
                .commit(&self.pending.records, &self.pending.fences)
            {
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
                let mut record = self.record(&key)?;
                if self.pass_fence(Access::Read, &key, &mut record, fence.as_deref(), token)? {
                    self.pending.records.insert(key.clone(), record.clone());
                }
                let Record { binding, value } = record;
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
                let mut record = self.record(&key)?;
                self.pass_fence(Access::Write, &key, &mut record, fence.as_deref(), token)?;
                record.value = Some(Entry { value, token });
                self.pending.records.insert(key, record);
                Ok(Reply::Written)
            }
            Op::Txn { fence, token, ops } => self.txn(&fence, token, ops),
            Op::Fence { name } => Ok(Reply::Fence(self.current_fence(&FenceId::Lock(name))?)),
        }
    }

    /// Applies the binding rule and then the fence rule to a request for `key` (whose record
    /// as the batch leaves it is `record`) naming `fence` (a lock name, or none for the key's
    /// own fence), and records what the rules say: a raised fence here, and on the key's
    /// first checked access its binding in `record`, for the caller to put. Returns whether
    /// it bound the key.
    fn pass_fence(
        &mut self,
        access: Access,
        key: &str,
        record: &mut Record,
        fence: Option<&str>,
        token: Option<FencingToken>,
    ) -> Result<bool, StoreError> {
        if !fence::is_checked(self.policy, access, token) {
            return Ok(false);
        }
        let requested = Binding::of(fence);
        let id = FenceId::new(key, &requested);
        let current = self.current_fence(&id)?;
        let fence_name = fence.unwrap_or(key);
        let decided = fence::bind(key, record.binding.as_ref(), &requested).and_then(|binding| {
            fence::check(self.policy, access, fence_name, token, current)
                .map(|accepted| (binding, accepted))
        });
        match decided {
            Ok((binding, accepted)) => {
                if let Some(raised) = accepted.raise_to {
                    self.pending.fences.insert(id, raised);
                }
                let bound = binding.is_some();
                if bound {
                    record.binding = binding;
                }
                Ok(bound)
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
            // The records the transaction binds or changes, as read here, put only once all
            // is decided; the steps below then find them in the batch and read none again. A
            // key named twice is read twice alike, so its second put repeats the first.
            let mut taken = Vec::new();
            for op in &ops {
                let key = op.key();
                let mut record = self.record(key)?;
                let binds = match fence::bind(key, record.binding.as_ref(), &requested) {
                    Ok(binding) => binding,
                    Err(rejection) => return Err(self.refuse(key, fence, token, None, rejection)),
                };
                let changes = !matches!(op, TxnOp::Read { .. });
                if binds.is_some() || changes {
                    record.binding = binds.or(record.binding);
                    taken.push((key.to_owned(), record));
                }
            }
            let id = FenceId::Lock(fence.to_owned());
            let current = self.current_fence(&id)?;
            let accepted = fence::check(self.policy, access, fence, token, current)
                .map_err(|rejection| self.refuse(fence, fence, token, current, rejection))?;
            self.pending.records.extend(taken);
            if let Some(raised) = accepted.raise_to {
                self.pending.fences.insert(id, raised);
            }
        }
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                TxnOp::Read { key } => TxnResult::Read(self.record(&key)?.value),
                TxnOp::Write { key, value } => {
                    self.record_mut(key)?.value = Some(Entry { value, token });
                    TxnResult::Written
                }
                TxnOp::Delete { key } => {
                    TxnResult::Deleted(self.record_mut(key)?.value.take().is_some())
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

    /// The record under `key`, as this batch left it.
    fn record(&self, key: &str) -> Result<Record, StoreError> {
        match self.pending.records.get(key) {
            Some(record) => Ok(record.clone()),
            None => self.backend.record(key).map_err(failed),
        }
    }

    /// The record under `key` as this batch leaves it, to change: taken into the batch from
    /// the engine on the batch's first change of the key.
    fn record_mut(&mut self, key: String) -> Result<&mut Record, StoreError> {
        let record = match self.pending.records.entry(key) {
            map::Entry::Occupied(taken) => taken.into_mut(),
            map::Entry::Vacant(first) => {
                let stored = self.backend.record(first.key()).map_err(failed)?;
                first.insert(stored)
            }
        };
        Ok(record)
    }

    fn current_fence(&self, id: &FenceId) -> Result<Option<FencingToken>, StoreError> {
        match self.pending.fences.get(id) {
            Some(token) => Ok(Some(*token)),
            None => self.backend.fence(id).map_err(failed),
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

    fn record(value: &'static str, n: u64) -> Record {
        Record {
            binding: Some(Binding::Lock("/lock".into())),
            value: Some(Entry {
                value: Bytes::from_static(value.as_bytes()),
                token: Some(token(n)),
            }),
        }
    }

    #[test]
    fn pending_holds_each_key_and_fence_once_as_the_batch_leaves_it() {
        let mut pending = Pending::default();
        let lock = FenceId::Lock("/lock".into());
        // The same name as a lock's fence and a key's own fence: two different fences.
        let own = FenceId::Key("/lock".into());
        assert!(pending.is_empty());
        pending.records.insert("a".into(), record("1", 3));
        pending.fences.insert(lock.clone(), token(3));
        pending.records.insert("/lock".into(), record("x", 9));
        pending.fences.insert(own.clone(), token(9));
        pending.records.insert("a".into(), Record::default());
        assert_eq!(
            pending.records.get("a"),
            Some(&Record::default()),
            "replaced"
        );
        pending.records.insert("a".into(), record("2", 4));
        pending.fences.insert(lock.clone(), token(4));

        assert_eq!(pending.records.get("a"), Some(&record("2", 4)));
        assert_eq!(pending.records.get("/lock"), Some(&record("x", 9)));
        assert_eq!(pending.records.get("b"), None, "untouched by the batch");
        assert_eq!(pending.fences.get(&lock), Some(&token(4)));
        assert_eq!(pending.fences.get(&own), Some(&token(9)));
        let mut keys: Vec<&str> = pending.records.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["/lock", "a"], "each key once");
        assert_eq!(pending.fences.len(), 2);

        pending.clear();
        assert!(pending.is_empty());
        assert_eq!(pending.records.get("a"), None);
        assert_eq!(pending.fences.get(&lock), None);
    }
}
