//! The store: one writer applying requests in arrival order, one committer making them
//! durable in groups, replies only after the commit.
//!
//! ```text
//!  handlers ──mpsc──▶ writer thread ──batches──▶ committer thread ──oneshot──▶ handlers
//!                     (fence rule, effects         (one engine commit for
//!                      on a pending overlay)        every queued batch)
//! ```
//!
//! Invariants:
//! - Requests take effect in the order they reach the writer, and the fence check and its
//!   effect are one step: only the writer thread decides.
//! - A reply leaves only after every batch up to and including its own is committed, so an
//!   acknowledged write, and a fence raised by a read, are durable before anyone hears of
//!   them; and nobody reads a value that could still vanish in a crash.
//! - Batches grow with load by themselves: while the committer waits for the disk, the writer
//!   keeps applying what arrives, and the committer then takes everything queued at once.
//!
//! The writer decides against the engine's committed state plus the *pending overlay*: the
//! effects of batches handed to the committer and not yet committed, tagged with their batch
//! number and dropped once the committer reports that number done.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use super::backend::{Backend, BackendError, Change, Entry};
use super::fence::{self, Access, Policy, Rejection};
use super::metrics::Metrics;
use crate::FencingToken;

/// Requests waiting for the writer. Enough for every connection of a heavy load to have one
/// in flight; past it, handlers wait, which pushes back on the clients.
const REQUEST_QUEUE: usize = 4096;
/// Most requests the writer puts in one batch, so that one batch's replies are not held back
/// by an endless stream of new arrivals.
const MAX_BATCH: usize = 1024;
/// Batches the writer may run ahead of the committer before it waits.
const COMMIT_QUEUE: usize = 64;

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
}

/// A successful answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Value(Option<Entry>),
    Written,
    Fence(Option<FencingToken>),
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
}

type Responder = oneshot::Sender<Result<Reply, StoreError>>;

/// Which engine holds the data.
#[derive(Clone, Debug)]
pub enum Engine {
    Durable(std::path::PathBuf),
    Memory,
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
    committer: JoinHandle<()>,
}

impl Store {
    /// Opens the engine and starts the writer and committer threads.
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
        let (to_committer, batches) = std_mpsc::sync_channel(COMMIT_QUEUE);
        let broken = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));

        let writer = Writer {
            backend: backend.clone(),
            policy,
            pending: Pending::default(),
            committed: committed.clone(),
            broken: broken.clone(),
        };
        let committer = Committer {
            backend,
            committed,
            broken: broken.clone(),
            metrics,
            failure: None,
        };
        let writer = spawn("fencelock-writer", move || writer.run(inbox, to_committer))?;
        let committer = spawn("fencelock-committer", move || committer.run(batches))?;
        Ok(Store {
            handle: StoreHandle { requests, broken },
            writer,
            committer,
        })
    }

    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// Waits until every handle is dropped and every accepted request is committed and
    /// answered, then stops the threads. Blocks: call it off the async runtime.
    pub fn close(self) {
        drop(self.handle);
        for thread in [self.writer, self.committer] {
            if thread.join().is_err() {
                error!("a store thread panicked");
            }
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, BackendError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(BackendError::Thread)
}

/// Effects handed to the committer and not yet committed, with the batch that made them.
#[derive(Default)]
struct Pending {
    values: HashMap<String, (u64, Entry)>,
    fences: HashMap<String, (u64, FencingToken)>,
    /// Batches up to this one are known committed and already dropped from the maps.
    forgotten_through: u64,
}

impl Pending {
    /// Drops what the engine now holds itself.
    fn forget_through(&mut self, committed: u64) {
        if committed > self.forgotten_through {
            self.values.retain(|_, (batch, _)| *batch > committed);
            self.fences.retain(|_, (batch, _)| *batch > committed);
            self.forgotten_through = committed;
        }
    }
}

/// A batch on its way to the committer.
struct Batch {
    number: u64,
    changes: Vec<Change>,
    replies: Vec<(Responder, Result<Reply, StoreError>)>,
}

struct Writer {
    backend: Arc<dyn Backend>,
    policy: Policy,
    pending: Pending,
    committed: Arc<AtomicU64>,
    broken: Arc<AtomicBool>,
}

impl Writer {
    fn run(
        mut self,
        mut inbox: mpsc::Receiver<(Op, Responder)>,
        to_committer: std_mpsc::SyncSender<Batch>,
    ) {
        let mut number = 0;
        while let Some(first) = inbox.blocking_recv() {
            number += 1;
            self.pending
                .forget_through(self.committed.load(Ordering::Acquire));
            let mut batch = Batch {
                number,
                changes: Vec::new(),
                replies: Vec::with_capacity(inbox.len() + 1),
            };
            let mut next = Some(first);
            while let Some((op, responder)) = next {
                let result = self.apply(number, op, &mut batch.changes);
                batch.replies.push((responder, result));
                if batch.replies.len() == MAX_BATCH {
                    break;
                }
                next = inbox.try_recv().ok();
            }
            if to_committer.send(batch).is_err() {
                error!("the committer is gone; the store stops");
                return;
            }
        }
    }

    /// Decides one request and records its effects in `changes` and the pending overlay.
    fn apply(
        &mut self,
        batch: u64,
        op: Op,
        changes: &mut Vec<Change>,
    ) -> Result<Reply, StoreError> {
        if self.broken.load(Ordering::Acquire) {
            return Err(StoreError::Failed("an earlier commit failed".into()));
        }
        match op {
            Op::Read { key, fence, token } => {
                let fence = fence.unwrap_or_else(|| key.clone());
                self.pass_fence(batch, Access::Read, fence, token, changes)?;
                let value = match self.pending.values.get(&key) {
                    Some((_, entry)) => Some(entry.clone()),
                    None => self.backend.value(&key).map_err(failed)?,
                };
                Ok(Reply::Value(value))
            }
            Op::Write {
                key,
                value,
                fence,
                token,
            } => {
                let fence = match fence {
                    Some(fence) => fence,
                    None => key.clone(),
                };
                self.pass_fence(batch, Access::Write, fence, token, changes)?;
                let entry = Entry { value, token };
                self.pending
                    .values
                    .insert(key.clone(), (batch, entry.clone()));
                changes.push(Change::Value { key, entry });
                Ok(Reply::Written)
            }
            Op::Fence { name } => Ok(Reply::Fence(self.current_fence(&name)?)),
        }
    }

    /// Applies the fence rule and raises the fence when the rule says so.
    fn pass_fence(
        &mut self,
        batch: u64,
        access: Access,
        fence: String,
        token: Option<FencingToken>,
        changes: &mut Vec<Change>,
    ) -> Result<(), StoreError> {
        if self.policy == Policy::Off {
            return Ok(());
        }
        let current = self.current_fence(&fence)?;
        match fence::check(self.policy, access, &fence, token, current) {
            Ok(accepted) => {
                if let Some(raised) = accepted.raise_to {
                    self.pending.fences.insert(fence.clone(), (batch, raised));
                    changes.push(Change::Fence {
                        name: fence,
                        token: raised,
                    });
                }
                Ok(())
            }
            Err(rejection) => {
                warn!(
                    fence = %fence,
                    token = token.map_or(0, FencingToken::get),
                    current = current.map_or(0, FencingToken::get),
                    "rejected: {rejection}"
                );
                Err(rejection.into())
            }
        }
    }

    fn current_fence(&self, name: &str) -> Result<Option<FencingToken>, StoreError> {
        match self.pending.fences.get(name) {
            Some((_, token)) => Ok(Some(*token)),
            None => self.backend.fence(name).map_err(failed),
        }
    }
}

fn failed(e: BackendError) -> StoreError {
    StoreError::Failed(e.to_string().into())
}

struct Committer {
    backend: Arc<dyn Backend>,
    committed: Arc<AtomicU64>,
    broken: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// Set by the first failed commit; every later batch is answered with it.
    failure: Option<Arc<str>>,
}

impl Committer {
    fn run(mut self, batches: std_mpsc::Receiver<Batch>) {
        let mut changes = Vec::new();
        let mut replies = Vec::new();
        while let Ok(first) = batches.recv() {
            let mut last = first.number;
            changes.extend(first.changes);
            replies.extend(first.replies);
            // Everything already queued shares this commit: that is the group commit.
            while let Ok(batch) = batches.try_recv() {
                last = batch.number;
                changes.extend(batch.changes);
                replies.extend(batch.replies);
            }
            self.commit(last, &changes, replies.len());
            for (responder, mut result) in replies.drain(..) {
                if let Some(failure) = &self.failure {
                    if result.is_ok() {
                        result = Err(StoreError::Failed(failure.clone()));
                    }
                }
                // A handler that gave up (its client hung up) no longer listens; nothing to do.
                let _ = responder.send(result);
            }
            changes.clear();
        }
    }

    fn commit(&mut self, last: u64, changes: &[Change], requests: usize) {
        if self.failure.is_some() {
            return;
        }
        if !changes.is_empty() {
            let started = Instant::now();
            if let Err(e) = self.backend.commit(changes) {
                error!("commit failed, the store refuses all further requests: {e}");
                self.failure = Some(e.to_string().into());
                self.broken.store(true, Ordering::Release);
                return;
            }
            self.metrics.commit(requests, started.elapsed());
        }
        self.committed.store(last, Ordering::Release);
    }
}
