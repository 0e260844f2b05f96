//! The engines under the store: fjall on disk, or maps in memory, behind one trait.
//!
//! Four maps (fjall keyspaces): values, lock fences (by lock name), keys' own fences (by
//! key), and bindings (which fence each key belongs to). Lock fences and keys' own fences
//! are apart, so an unfenced write to the key `/lock` never moves the fence of the lock
//! `/lock`. A value is stored as the 8-byte big-endian token of the write that stored it (0
//! for none) followed by the value's bytes; a fence as its 8-byte token; a binding as `L`
//! and the lock name, or `K` for the key's own fence.
//!
//! Invariants:
//! - [`Backend::commit`] applies all its changes or none, and when it returns `Ok` on the
//!   disk engine they survive `kill -9` (fjall batch, `PersistMode::SyncData`), so a key's
//!   binding is as durable as the write or fenced read that made it.
//! - A data directory of the earlier layout (one `fences` keyspace holding lock names and
//!   keys alike, no bindings) is refused when opened, never reinterpreted: its fences
//!   cannot be told apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::fence::Binding;
use crate::FencingToken;

/// A stored value and the token of the write that stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Always UTF-8: both protocols only accept text.
    pub value: Bytes,
    /// The token of the write that stored the value, if it carried one.
    pub token: Option<FencingToken>,
}

/// Which fence: a lock name's, or a key's own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FenceId {
    /// The fence of this lock name.
    Lock(String),
    /// This key's own fence.
    Key(String),
}

impl FenceId {
    /// The fence a request for `key` names through `binding`.
    pub fn new(key: &str, binding: &Binding) -> Self {
        match binding {
            Binding::Lock(name) => FenceId::Lock(name.clone()),
            Binding::OwnKey => FenceId::Key(key.to_owned()),
        }
    }
}

/// One effect of an accepted request, waiting to be committed.
#[derive(Clone, Debug)]
pub enum Change {
    /// A value written.
    Value {
        /// The key written.
        key: String,
        /// What it now holds.
        entry: Entry,
    },
    /// A value deleted (the key keeps its binding: it still belongs to its fence).
    Delete {
        /// The key deleted.
        key: String,
    },
    /// A fence raised.
    Fence {
        /// Which fence.
        id: FenceId,
        /// Its new token.
        token: FencingToken,
    },
    /// A key bound to its fence by its first checked access.
    Bind {
        /// The key.
        key: String,
        /// The fence it now belongs to.
        binding: Binding,
    },
}

/// A failure of the storage engine itself (not of a request).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// fjall failed.
    #[error("storage engine: {0}")]
    Engine(fjall::Error),
    /// A stored record cannot be decoded.
    #[error("corrupt record under {0:?}")]
    Corrupt(String),
    /// The data directory holds the earlier layout, whose fences cannot be told apart.
    #[error(
        "{} was written by an earlier fencelock storage whose lock fences and keys' own \
         fences cannot be told apart; keep it with that version, or start this one on a new \
         --data-dir",
        .0.display()
    )]
    EarlierLayout(PathBuf),
    /// The store's threads could not be started.
    #[error("cannot start the store's threads: {0}")]
    Thread(std::io::Error),
}

impl From<fjall::Error> for BackendError {
    fn from(e: fjall::Error) -> Self {
        BackendError::Engine(e)
    }
}

impl From<std::io::Error> for BackendError {
    fn from(e: std::io::Error) -> Self {
        BackendError::Thread(e)
    }
}

/// What the store needs from an engine. Reads and commits come from the store's writer
/// thread.
pub trait Backend: Send + Sync + 'static {
    /// The fence's token; `None` while it has seen none.
    fn fence(&self, id: &FenceId) -> Result<Option<FencingToken>, BackendError>;
    /// The fence `key` belongs to; `None` while no checked access has touched it.
    fn binding(&self, key: &str) -> Result<Option<Binding>, BackendError>;
    /// The value under `key`.
    fn value(&self, key: &str) -> Result<Option<Entry>, BackendError>;
    /// Applies `changes` in order, atomically, durably where the engine is durable.
    fn commit(&self, changes: &[Change]) -> Result<(), BackendError>;
}

const VALUES: &str = "values";
const LOCK_FENCES: &str = "lock_fences";
const KEY_FENCES: &str = "key_fences";
const BINDINGS: &str = "bindings";
/// The keyspace of the earlier layout, where lock names and keys shared one fence map.
const EARLIER_FENCES: &str = "fences";
const TOKEN_BYTES: usize = 8;

/// The durable engine: a fjall database with a keyspace per map.
///
/// fjall sizes a new journal to 64 MiB with `set_len` (a sparse file), so appends do not grow
/// the file. Filling it with zeros first would not make the syncs cheaper either: on this
/// machine's ext4, `fdatasync` after a 400-byte append took ~95 us (p50) in the sparse file
/// and ~125 us in a zero-filled one.
pub struct Fjall {
    db: Database,
    values: Keyspace,
    lock_fences: Keyspace,
    key_fences: Keyspace,
    bindings: Keyspace,
}

/// Bytes of blocks the durable engine keeps cached (filled as it reads, not reserved up
/// front). fjall's default, 32 MiB, holds the index and filter blocks of a few million keys
/// only: past that every read loads and checks them again, and fenced reads of 10 million
/// stored keys fell to a twentieth of those of one million.
pub const CACHE_BYTES: u64 = 256 << 20;

impl Fjall {
    /// Opens (or creates) the database in `dir`. Opening replays fjall's journal, so every
    /// batch committed before a crash is back.
    pub fn open(dir: &Path) -> Result<Self, BackendError> {
        let db = Database::builder(dir).cache_size(CACHE_BYTES).open()?;
        if db.keyspace_exists(EARLIER_FENCES) {
            return Err(BackendError::EarlierLayout(dir.to_owned()));
        }
        let values = db.keyspace(VALUES, KeyspaceCreateOptions::default)?;
        let lock_fences = db.keyspace(LOCK_FENCES, KeyspaceCreateOptions::default)?;
        let key_fences = db.keyspace(KEY_FENCES, KeyspaceCreateOptions::default)?;
        let bindings = db.keyspace(BINDINGS, KeyspaceCreateOptions::default)?;
        Ok(Fjall {
            db,
            values,
            lock_fences,
            key_fences,
            bindings,
        })
    }

    fn fences<'a>(&'a self, id: &'a FenceId) -> (&'a Keyspace, &'a str) {
        match id {
            FenceId::Lock(name) => (&self.lock_fences, name),
            FenceId::Key(key) => (&self.key_fences, key),
        }
    }
}

impl Backend for Fjall {
    fn fence(&self, id: &FenceId) -> Result<Option<FencingToken>, BackendError> {
        let (keyspace, name) = self.fences(id);
        match keyspace.get(name)? {
            Some(raw) => Ok(decode_token(name, &raw)?.0),
            None => Ok(None),
        }
    }

    fn binding(&self, key: &str) -> Result<Option<Binding>, BackendError> {
        match self.bindings.get(key)? {
            Some(raw) => decode_binding(key, &raw).map(Some),
            None => Ok(None),
        }
    }

    fn value(&self, key: &str) -> Result<Option<Entry>, BackendError> {
        let Some(raw) = self.values.get(key)? else {
            return Ok(None);
        };
        let (token, value) = decode_token(key, &raw)?;
        Ok(Some(Entry {
            value: Bytes::copy_from_slice(value),
            token,
        }))
    }

    fn commit(&self, changes: &[Change]) -> Result<(), BackendError> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        let mut record = Vec::new();
        for change in changes {
            match change {
                Change::Value { key, entry } => {
                    record.clear();
                    record.extend_from_slice(&raw_token(entry.token));
                    record.extend_from_slice(&entry.value);
                    batch.insert(&self.values, key.as_str(), record.as_slice());
                }
                Change::Delete { key } => batch.remove(&self.values, key.as_str()),
                Change::Fence { id, token } => {
                    let (keyspace, name) = self.fences(id);
                    batch.insert(keyspace, name, raw_token(Some(*token)));
                }
                Change::Bind { key, binding } => {
                    batch.insert(&self.bindings, key.as_str(), encode_binding(binding));
                }
            }
        }
        batch.commit()?;
        Ok(())
    }
}

fn raw_token(token: Option<FencingToken>) -> [u8; TOKEN_BYTES] {
    token.map_or(0, FencingToken::get).to_be_bytes()
}

fn decode_token<'a>(
    key: &str,
    raw: &'a [u8],
) -> Result<(Option<FencingToken>, &'a [u8]), BackendError> {
    let (head, rest) = raw
        .split_first_chunk::<TOKEN_BYTES>()
        .ok_or_else(|| BackendError::Corrupt(key.to_owned()))?;
    Ok((FencingToken::new(u64::from_be_bytes(*head)), rest))
}

fn encode_binding(binding: &Binding) -> Vec<u8> {
    match binding {
        Binding::Lock(name) => [b"L", name.as_bytes()].concat(),
        Binding::OwnKey => b"K".to_vec(),
    }
}

fn decode_binding(key: &str, raw: &[u8]) -> Result<Binding, BackendError> {
    match raw.split_first() {
        Some((b'K', [])) => Ok(Binding::OwnKey),
        Some((b'L', name)) => std::str::from_utf8(name)
            .map(|name| Binding::Lock(name.to_owned()))
            .map_err(|_| BackendError::Corrupt(key.to_owned())),
        _ => Err(BackendError::Corrupt(key.to_owned())),
    }
}

/// The volatile engine (`--in-memory`): maps, gone when the process ends.
///
/// B-trees and not hash maps: a hash map holding a million keys stalls every request for
/// tens of milliseconds each time it doubles; a B-tree grows a node at a time.
#[derive(Default)]
pub struct Memory {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    values: BTreeMap<String, Entry>,
    lock_fences: BTreeMap<String, FencingToken>,
    key_fences: BTreeMap<String, FencingToken>,
    bindings: BTreeMap<String, Binding>,
}

impl Memory {
    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // No code panics while holding the lock, and every update is a single map insert, so a
        // poisoned lock still guards consistent maps.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MemoryState {
    fn fences<'a>(
        &'a mut self,
        id: &'a FenceId,
    ) -> (&'a mut BTreeMap<String, FencingToken>, &'a str) {
        match id {
            FenceId::Lock(name) => (&mut self.lock_fences, name),
            FenceId::Key(key) => (&mut self.key_fences, key),
        }
    }
}

impl Backend for Memory {
    fn fence(&self, id: &FenceId) -> Result<Option<FencingToken>, BackendError> {
        let mut state = self.state();
        let (fences, name) = state.fences(id);
        Ok(fences.get(name).copied())
    }

    fn binding(&self, key: &str) -> Result<Option<Binding>, BackendError> {
        Ok(self.state().bindings.get(key).cloned())
    }

    fn value(&self, key: &str) -> Result<Option<Entry>, BackendError> {
        Ok(self.state().values.get(key).cloned())
    }

    fn commit(&self, changes: &[Change]) -> Result<(), BackendError> {
        let mut state = self.state();
        for change in changes {
            match change {
                Change::Value { key, entry } => {
                    state.values.insert(key.clone(), entry.clone());
                }
                Change::Delete { key } => {
                    state.values.remove(key);
                }
                Change::Fence { id, token } => {
                    let (fences, name) = state.fences(id);
                    fences.insert(name.to_owned(), *token);
                }
                Change::Bind { key, binding } => {
                    state.bindings.insert(key.clone(), binding.clone());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u64) -> FencingToken {
        FencingToken::new(n).unwrap()
    }

    fn lock(name: &str) -> FenceId {
        FenceId::Lock(name.into())
    }

    fn exercise(backend: &dyn Backend) {
        assert_eq!(backend.value("/lock").unwrap(), None);
        backend
            .commit(&[
                Change::Value {
                    key: "/lock".into(),
                    entry: Entry {
                        value: Bytes::from_static(b"v1"),
                        token: Some(token(3)),
                    },
                },
                Change::Fence {
                    id: lock("/lock"),
                    token: token(3),
                },
                Change::Fence {
                    id: FenceId::Key("/lock".into()),
                    token: token(9),
                },
                Change::Bind {
                    key: "k".into(),
                    binding: Binding::Lock("/lock".into()),
                },
                Change::Bind {
                    key: "/lock".into(),
                    binding: Binding::OwnKey,
                },
            ])
            .unwrap();
        let entry = backend.value("/lock").unwrap().unwrap();
        assert_eq!(entry.value, Bytes::from_static(b"v1"));
        assert_eq!(entry.token, Some(token(3)));
        assert_eq!(backend.fence(&lock("/lock")).unwrap(), Some(token(3)));
        assert_eq!(
            backend.fence(&FenceId::Key("/lock".into())).unwrap(),
            Some(token(9)),
            "a key's own fence and a lock's fence of the same name are apart"
        );
        assert_eq!(backend.fence(&lock("other")).unwrap(), None);
        assert_eq!(
            backend.binding("k").unwrap(),
            Some(Binding::Lock("/lock".into()))
        );
        assert_eq!(backend.binding("/lock").unwrap(), Some(Binding::OwnKey));
        assert_eq!(backend.binding("unbound").unwrap(), None);
    }

    #[test]
    fn memory_engine_keeps_values_fences_and_bindings_apart() {
        exercise(&Memory::default());
    }

    #[test]
    fn fjall_engine_keeps_values_fences_and_bindings_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&Fjall::open(dir.path()).unwrap());
        let reopened = Fjall::open(dir.path()).unwrap();
        assert_eq!(reopened.fence(&lock("/lock")).unwrap(), Some(token(3)));
        assert_eq!(
            reopened.binding("k").unwrap(),
            Some(Binding::Lock("/lock".into()))
        );
        assert_eq!(
            reopened.value("/lock").unwrap().map(|e| e.value),
            Some(Bytes::from_static(b"v1"))
        );
    }

    #[test]
    fn a_data_dir_of_the_earlier_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::builder(dir.path()).open().unwrap();
            let fences = db
                .keyspace(EARLIER_FENCES, KeyspaceCreateOptions::default)
                .unwrap();
            fences.insert("/lock", raw_token(Some(token(3)))).unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
        }
        let Err(error) = Fjall::open(dir.path()) else {
            panic!("an earlier layout was opened");
        };
        assert!(matches!(error, BackendError::EarlierLayout(_)), "{error}");
        assert!(error.to_string().contains("earlier fencelock storage"));
    }
}
