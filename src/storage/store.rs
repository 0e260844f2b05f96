//! The store: requests are decided one at a time, in the handler that carries them, and
//! their effects committed in groups; replies leave only after the commit.
//!
//! ```text
//!  handlers ──lock──▶ decide: apply the fence rule and the effects to the open batch
//!     ▲                 │ in memory: commit it there and then, answer at once
//!     │                 ▼ durable: wake the committer thread when it is idle
//!     └──batch done──── committer thread: take the open batch, one durable engine
//!                       commit for it, then tell every request of it
//! ```
//!
//! Invariants:
//! - Requests take effect in the order they take the store's lock, and the fence check and
//!   its effect are one step under it: nobody decides anything outside the lock.
//! - A key's binding to its fence is checked before the fence itself, and recorded in the
//!   same batch as the access that made it, so no request ever sees a key under two fences.
//! - A reply leaves only after everything it saw or did is committed: a request that changed
//!   something, or saw a change not yet durable, waits for the open batch's commit. So an
//!   acknowledged write, and a fence raised by a read, are durable before anyone hears of
//!   them, and nobody reads a value that could still vanish in a crash. A request that saw
//!   only committed state and changed nothing is answered at once.
//! - Batches grow with load by themselves: while the committer waits for the disk, requests
//!   join the open batch, and its next commit takes them all.
//! - At most one batch is being committed. Requests decided meanwhile see its effects (its
//!   records and fences come before the engine's), and their batch is committed after it,
//!   so batches are committed in order and a batch is never answered before the one whose
//!   effects it saw. Once a commit fails, every later batch is refused whole with the
//!   failure, and so is every later request.
//!
//! Why decide in the handler, not on a writer thread that owns the state: handing every
//! request to a thread and its answer back cost two thread wake-ups per request, which on 2
//! cores under 32 connections made in-memory requests take twice the CPU of a fixed HTTP
//! answer. The lock is held for the decision only (a few engine reads), never for a commit.
//! The durable engine's commit stays on its own thread so that a sync never blocks an async
//! worker; waking it costs one wake-up per batch, not per request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LockResult, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use indexmap::{IndexMap, map};
use tokio::sync::watch;
use tracing::{error, warn};

use super::backend::{Backend, BackendError, Entry, FenceId, Record};
use super::fence::{self, Access, Binding, Policy, Rejection};
use super::metrics::Metrics;
use crate::FencingToken;

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

/// Which engine holds the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Engine {
    /// fjall on disk.
    Durable {
        /// The data directory, created when missing.
        dir: std::path::PathBuf,
        /// Bytes of blocks cached, filled as the engine reads
        /// ([`DEFAULT_CACHE_BYTES`](super::backend::DEFAULT_CACHE_BYTES) unless told).
        cache_bytes: u64,
    },
    /// Maps in memory: nothing survives the process.
    Memory,
}

impl Engine {
    /// fjall in `dir`, with the default block cache.
    pub fn durable(dir: impl Into<std::path::PathBuf>) -> Self {
        Engine::Durable {
            dir: dir.into(),
            cache_bytes: super::backend::DEFAULT_CACHE_BYTES,
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Engine::Durable { dir, .. } => write!(f, "durable in {}", dir.display()),
            Engine::Memory => f.write_str("in memory"),
        }
    }
}

/// A cheap, cloneable way to send requests to the store.
#[derive(Clone)]
pub struct StoreHandle {
    shared: Arc<Shared>,
}

impl StoreHandle {
    /// Runs `op` and waits until its effect (if any) is durable.
    pub async fn execute(&self, op: Op) -> Result<Reply, StoreError> {
        let (result, batch) = self.shared.decide(op);
        let Some(mut done) = batch else {
            return result;
        };
        match done.wait_for(Option::is_some).await {
            Ok(outcome) => settle(result, outcome.as_ref()),
            // The committer thread ended without committing the batch.
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// False once a commit has failed; the store then refuses every request.
    pub fn is_healthy(&self) -> bool {
        !self.shared.broken.load(Ordering::Acquire)
    }
}

/// The running store: its state and, for the durable engine, the committer thread.
pub struct Store {
    handle: StoreHandle,
    committer: Option<JoinHandle<()>>,
}

impl Store {
    /// Opens the engine (and, for the durable engine, starts the committer thread).
    pub fn open(
        engine: &Engine,
        policy: Policy,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BackendError> {
        let backend: Arc<dyn Backend> = match engine {
            Engine::Durable { dir, cache_bytes } => {
                Arc::new(super::backend::Fjall::open_with_cache(dir, *cache_bytes)?)
            }
            Engine::Memory => Arc::new(super::backend::Memory::default()),
        };
        let durable = matches!(engine, Engine::Durable { .. });
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(backend.clone(), policy, durable)),
            work: Condvar::new(),
            broken: AtomicBool::new(false),
            backend,
            metrics,
        });
        let committer = if durable {
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name("fencelock-commit".into())
                .spawn(move || shared.commit_batches())?;
            Some(thread)
        } else {
            None
        };
        Ok(Store {
            handle: StoreHandle { shared },
            committer,
        })
    }

    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// Refuses every request from now on, commits and answers every one already decided,
    /// then stops the committer thread. Blocks: call it off the async runtime.
    pub fn close(self) {
        let shared = &self.handle.shared;
        shared.state().closing = true;
        shared.work.notify_one();
        if let Some(thread) = self.committer
            && thread.join().is_err()
        {
            error!("the store's committer thread panicked");
        }
    }
}

/// What every handle shares.
struct Shared {
    state: Mutex<State>,
    /// Wakes the committer thread when a request joins the open batch while it is idle, or
    /// when the store closes.
    work: Condvar,
    /// Set with the first failure, for health checks that do not take the lock.
    broken: AtomicBool,
    /// The engine, for the committer thread (the state has its own handle to read with).
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
}

/// How a committed batch ended: `Err` with the failure when it was not committed.
type Outcome = Result<(), Arc<str>>;
/// Where the requests of a batch hear how it ended: `None` until it has.
type Done = watch::Receiver<Option<Outcome>>;

/// A request's answer once the commit it waited for ended: a success becomes the failure
/// when that commit failed; a refusal stays what it was.
fn settle(
    result: Result<Reply, StoreError>,
    outcome: Option<&Outcome>,
) -> Result<Reply, StoreError> {
    match (outcome, result) {
        (Some(Err(failure)), Ok(_)) => Err(StoreError::Failed(failure.clone())),
        (_, result) => result,
    }
}

impl Shared {
    /// The state; a panic while it was held leaves it untrusted, so the store then refuses
    /// every request, as after a failed commit.
    fn state(&self) -> MutexGuard<'_, State> {
        self.trusted(self.state.lock())
    }

    /// Sleeps on [`Shared::work`] until woken, and takes the state back as [`Shared::state`]
    /// does.
    fn wait<'a>(&'a self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.trusted(self.work.wait(state))
    }

    /// The state from a lock or a wait, failed when a panic poisoned it.
    fn trusted<'a>(&self, locked: LockResult<MutexGuard<'a, State>>) -> MutexGuard<'a, State> {
        locked.unwrap_or_else(|poisoned| {
            let mut state = poisoned.into_inner();
            self.fail(&mut state, "a request panicked while being decided".into());
            state
        })
    }

    /// Refuses every request from now on with `failure`, unless an earlier one already is.
    fn fail(&self, state: &mut State, failure: Arc<str>) {
        if state.failure.is_none() {
            error!("the store refuses all further requests: {failure}");
            state.failure = Some(failure);
            self.broken.store(true, Ordering::Release);
        }
    }

    /// One engine commit of `pending`, for `requests` requests, timed in the metrics.
    fn commit(&self, pending: &Pending, requests: usize) -> Outcome {
        let started = Instant::now();
        self.backend
            .commit(&pending.records, &pending.fences)
            .map_err(|e| {
                error!("commit failed: {e}");
                Arc::<str>::from(e.to_string())
            })?;
        self.metrics.commit(requests, started.elapsed());
        Ok(())
    }

    /// Decides `op`; with the batch to wait for when its answer must wait for a commit.
    fn decide(&self, op: Op) -> (Result<Reply, StoreError>, Option<Done>) {
        let mut state = self.state();
        if state.closing {
            return (Err(StoreError::Closed), None);
        }
        let result = state.apply(op);
        if state.pending.is_empty() && state.committing.is_none() {
            // Nothing the request saw or did waits for a commit.
            return (result, None);
        }
        if !state.durable {
            // A commit in memory takes less than handing it to another thread would.
            let outcome = self.commit(&state.pending, 1);
            state.pending.clear();
            if let Err(failure) = &outcome {
                self.fail(&mut state, failure.clone());
            }
            return (settle(result, Some(&outcome)), None);
        }
        if result
            .as_ref()
            .is_err_and(|e| matches!(e, StoreError::Failed(_)))
        {
            return (result, None);
        }
        let done = state.open.join();
        let wake = std::mem::take(&mut state.committer_idle);
        drop(state);
        if wake {
            self.work.notify_one();
        }
        (result, Some(done))
    }

    /// The committer thread: commits the open batch whenever it has requests, one batch at
    /// a time, until the store closes and every decided request is answered.
    fn commit_batches(&self) {
        let _stopped = CommitterStopped(self);
        let mut state = self.state();
        loop {
            if state.open.requests == 0 {
                if state.closing {
                    return;
                }
                state.committer_idle = true;
                state = self.wait(state);
                continue;
            }
            let next = state.spare.take().unwrap_or_default();
            let pending = Arc::new(std::mem::replace(&mut state.pending, next));
            state.committing = Some(pending.clone());
            let batch = std::mem::take(&mut state.open);
            let failed_before = state.failure.clone();
            drop(state);

            let outcome = match failed_before {
                Some(failure) => Err(failure),
                None if pending.is_empty() => Ok(()),
                None => self.commit(&pending, batch.requests),
            };
            state = self.state();
            state.committing = None;
            if let Err(failure) = &outcome {
                self.fail(&mut state, failure.clone());
            }
            if let Ok(mut maps) = Arc::try_unwrap(pending) {
                maps.clear();
                state.spare = Some(maps);
            }
            drop(state);
            // A request whose handler gave up (its client hung up) no longer listens.
            batch.done.send_replace(Some(outcome));
            state = self.state();
        }
    }
}

/// Ends the store when the committer thread ends for any reason, a panic included: later
/// requests hear that it closed, and so do those of the open batch, which nobody would
/// commit now.
struct CommitterStopped<'a>(&'a Shared);

impl Drop for CommitterStopped<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        if !state.closing {
            error!("the store's committer thread stopped; the store refuses all requests");
            state.closing = true;
            self.0.broken.store(true, Ordering::Release);
        }
        // Dropping its sender tells the batch's requests.
        state.open = OpenBatch::default();
    }
}

/// The batch requests join while the one before it is committed.
struct OpenBatch {
    /// Requests waiting for it.
    requests: usize,
    done: watch::Sender<Option<Outcome>>,
}

impl Default for OpenBatch {
    fn default() -> Self {
        OpenBatch {
            requests: 0,
            done: watch::channel(None).0,
        }
    }
}

impl OpenBatch {
    fn join(&mut self) -> Done {
        self.requests += 1;
        self.done.subscribe()
    }
}

/// Effects of a batch not yet committed: what later requests must see. Emptied after its
/// commit (the maps keep their capacity).
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

/// Everything decisions are made on, behind the store's lock.
struct State {
    backend: Arc<dyn Backend>,
    policy: Policy,
    /// Whether batches are committed on the committer thread; in memory, each request's
    /// effects are committed as it is decided.
    durable: bool,
    /// The open batch's effects.
    pending: Pending,
    /// The batch the committer thread is committing: requests decided meanwhile see its
    /// effects here, before the engine has them, and their batch waits for it.
    committing: Option<Arc<Pending>>,
    /// A committed batch's maps, emptied, for the next batch.
    spare: Option<Pending>,
    open: OpenBatch,
    /// Whether the committer thread waits for work, to be woken by the next request.
    committer_idle: bool,
    closing: bool,
    /// Set by the first failed commit; every later request is refused with it.
    failure: Option<Arc<str>>,
}

impl State {
    fn new(backend: Arc<dyn Backend>, policy: Policy, durable: bool) -> Self {
        State {
            backend,
            policy,
            durable,
            pending: Pending::default(),
            committing: None,
            spare: None,
            open: OpenBatch::default(),
            committer_idle: false,
            closing: false,
            failure: None,
        }
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
            None => self.committed_record(key),
        }
    }

    /// The record under `key` as the batches before this one left it.
    fn committed_record(&self, key: &str) -> Result<Record, StoreError> {
        committed_record(self.committing.as_deref(), &*self.backend, key)
    }

    /// The record under `key` as this batch leaves it, to change: taken into the batch on
    /// the batch's first change of the key.
    fn record_mut(&mut self, key: String) -> Result<&mut Record, StoreError> {
        Ok(match self.pending.records.entry(key) {
            map::Entry::Occupied(taken) => taken.into_mut(),
            map::Entry::Vacant(first) => {
                let stored =
                    committed_record(self.committing.as_deref(), &*self.backend, first.key())?;
                first.insert(stored)
            }
        })
    }

    fn current_fence(&self, id: &FenceId) -> Result<Option<FencingToken>, StoreError> {
        let committing = || self.committing.as_deref()?.fences.get(id);
        match self.pending.fences.get(id).or_else(committing) {
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

/// The record under `key` in the batch being `committing`, else in the engine.
fn committed_record(
    committing: Option<&Pending>,
    backend: &dyn Backend,
    key: &str,
) -> Result<Record, StoreError> {
    match committing.and_then(|batch| batch.records.get(key)) {
        Some(record) => Ok(record.clone()),
        None => backend.record(key).map_err(failed),
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

    fn txn_write(keys: std::ops::Range<usize>) -> Vec<TxnOp> {
        keys.map(|i| TxnOp::Write {
            key: format!("k{i}"),
            value: Bytes::from_static(b"v"),
        })
        .collect()
    }

    /// The state over an empty engine while `committing` is being committed.
    fn state_during(committing: Pending) -> State {
        let backend: Arc<dyn Backend> = Arc::new(super::super::backend::Memory::default());
        let mut state = State::new(backend, Policy::Strict, true);
        state.committing = Some(Arc::new(committing));
        state
    }

    /// What the batch being committed did (a binding, a raised fence, a value) decides the
    /// requests applied meanwhile, although the engine does not have it yet.
    #[test]
    fn requests_are_decided_on_the_batch_being_committed() {
        let mut committing = Pending::default();
        committing.records.insert("k".into(), record("v", 10));
        committing
            .fences
            .insert(FenceId::Lock("/lock".into()), token(10));
        let mut state = state_during(committing);

        let other_lock = state.apply(Op::Write {
            key: "k".into(),
            value: Bytes::from_static(b"x"),
            fence: Some("/other".into()),
            token: Some(token(99)),
        });
        assert!(
            matches!(
                other_lock,
                Err(StoreError::Rejected(Rejection::WrongFence { .. }))
            ),
            "{other_lock:?}"
        );
        let stale = state.apply(Op::Txn {
            fence: "/lock".into(),
            token: Some(token(9)),
            ops: txn_write(0..1),
        });
        assert!(
            matches!(stale, Err(StoreError::Rejected(Rejection::Stale { .. }))),
            "{stale:?}"
        );
        let read = state.apply(Op::Read {
            key: "k".into(),
            fence: Some("/lock".into()),
            token: Some(token(10)),
        });
        match read {
            Ok(Reply::Value(Some(entry), fence)) => {
                assert_eq!(entry.value, "v");
                assert_eq!(fence.token, Some(token(10)));
            }
            other => panic!("the committing batch's value unseen: {other:?}"),
        }
        // A change is taken into this batch from the committing one, not from the engine.
        let write = state.apply(Op::Txn {
            fence: "/lock".into(),
            token: Some(token(11)),
            ops: vec![TxnOp::Delete { key: "k".into() }],
        });
        assert_eq!(write.unwrap(), Reply::Txn(vec![TxnResult::Deleted(true)]));
        assert_eq!(
            state.pending.records.get("k").map(|r| r.binding.clone()),
            Some(Some(Binding::Lock("/lock".into())))
        );
    }

    /// The committer thread end to end: a large transaction committed there while the
    /// requests behind it are decided, every reply given, and the store closing once they
    /// are.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_queued_behind_a_large_transaction_see_it() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let store = Store::open(&Engine::durable(dir.path()), Policy::Strict, metrics).unwrap();
        let handle = store.handle();
        let txn = |fence: &str, n: u64, ops| Op::Txn {
            fence: fence.into(),
            token: Some(token(n)),
            ops,
        };
        for round in 0..20_usize {
            let base = round * 1000;
            let keys = base..base + 128;
            let n = 10 + round as u64;
            // Polled in this order, so decided in this order (a request is decided when first
            // polled), most of the later ones while the first is committed.
            let (big, other_lock, stale, read) = tokio::join!(
                handle.execute(txn("/a", n, txn_write(keys.clone()))),
                handle.execute(Op::Write {
                    key: format!("k{}", keys.end - 1),
                    value: Bytes::from_static(b"b"),
                    fence: Some("/b".into()),
                    token: Some(token(1000)),
                }),
                handle.execute(txn("/a", n - 1, txn_write(base + 5000..base + 5001))),
                handle.execute(Op::Read {
                    key: format!("k{}", keys.start),
                    fence: Some("/a".into()),
                    token: Some(token(n)),
                }),
            );
            assert!(matches!(big, Ok(Reply::Txn(_))), "{big:?}");
            assert!(
                matches!(
                    other_lock,
                    Err(StoreError::Rejected(Rejection::WrongFence { .. }))
                ),
                "round {round}: a key of the committing batch taken by another lock: {other_lock:?}"
            );
            assert!(
                matches!(stale, Err(StoreError::Rejected(Rejection::Stale { .. }))),
                "round {round}: the fence the committing batch raised was missed: {stale:?}"
            );
            match read {
                Ok(Reply::Value(Some(entry), _)) => assert_eq!(entry.value, "v"),
                other => panic!("round {round}: the committing batch's value unseen: {other:?}"),
            }
        }
        drop(handle);
        store.close();
    }

    /// Which answers wait for a commit: a change, and anything decided on a change not yet
    /// durable; a read of committed state that changes nothing does not. And once the store
    /// closes, what was decided is answered and nothing more is taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_answers_resting_on_uncommitted_effects_wait_for_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let store = Store::open(&Engine::durable(dir.path()), Policy::Strict, metrics).unwrap();
        let shared = store.handle().shared.clone();
        let write = |n: u64| Op::Write {
            key: "k".into(),
            value: Bytes::from_static(b"v"),
            fence: Some("/lock".into()),
            token: Some(token(n)),
        };
        let plain_read = || Op::Read {
            key: "k".into(),
            fence: None,
            token: None,
        };

        let (written, batch) = shared.decide(write(5));
        assert!(written.is_ok(), "{written:?}");
        let mut done = batch.expect("a write waits for its commit");
        assert_eq!(
            done.wait_for(Option::is_some).await.unwrap().clone(),
            Some(Ok(()))
        );
        // Nothing is pending now: a plain read answers at once, a stale write too.
        let (read, batch) = shared.decide(plain_read());
        assert!(matches!(read, Ok(Reply::Value(Some(_), _))), "{read:?}");
        assert!(batch.is_none(), "a read of committed state waited");
        let (stale, batch) = shared.decide(write(4));
        assert!(matches!(stale, Err(StoreError::Rejected(_))), "{stale:?}");
        assert!(batch.is_none(), "a refusal on committed state waited");
        // A fenced read with a newer token raises the fence: that is a change.
        let (raised, batch) = shared.decide(Op::Read {
            key: "k".into(),
            fence: Some("/lock".into()),
            token: Some(token(6)),
        });
        assert!(raised.is_ok(), "{raised:?}");
        let raised_batch = batch.expect("a raised fence waits for its commit");
        // Decided before that commit is known done, a refusal on the raised fence waits too,
        // unless the commit already finished.
        let (stale, batch) = shared.decide(write(5));
        assert!(matches!(stale, Err(StoreError::Rejected(_))), "{stale:?}");
        if let Some(mut batch) = batch {
            assert_eq!(
                batch.wait_for(Option::is_some).await.unwrap().clone(),
                Some(Ok(()))
            );
        }
        drop(raised_batch);

        let handle = store.handle();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .unwrap();
        assert!(matches!(
            handle.execute(plain_read()).await,
            Err(StoreError::Closed)
        ));
    }

    /// A panic under the lock while the committer sleeps on it fails the store for the
    /// committer too: it wakes to the failure, so it never commits what the panic left.
    #[test]
    fn a_panic_under_the_lock_fails_the_store_for_a_sleeping_committer() {
        let metrics = Arc::new(Metrics::default());
        let store = Store::open(&Engine::Memory, Policy::Strict, metrics).unwrap();
        let shared = store.handle().shared.clone();
        let (locked, is_locked) = std::sync::mpsc::channel();
        let (woke, has_woken) = std::sync::mpsc::channel();
        let sleeper = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut state = shared.state();
                locked.send(()).unwrap();
                while state.failure.is_none() {
                    state = shared.wait(state);
                }
                woke.send(()).unwrap();
            })
        };
        is_locked.recv().unwrap();
        // The lock is free only once the sleeper waits on it.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _state = shared.state.lock();
            panic!("a request panicked");
        }));
        assert!(panicked.is_err());
        shared.work.notify_one();
        has_woken
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the sleeper woke to a store not failed");
        sleeper.join().unwrap();
        assert!(!store.handle().is_healthy());
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
