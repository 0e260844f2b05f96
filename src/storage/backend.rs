//! The engines under the store: fjall on disk, or a map in memory, behind one trait.
//!
//! Values and fences live in separate keyspaces (maps), so a fence named `/lock` and a key
//! named `/lock` never collide. A value is stored as the 8-byte big-endian token of the write
//! that stored it (0 for none) followed by the value's bytes; a fence as its 8-byte token.
//!
//! Invariant: [`Backend::commit`] applies all its changes or none, and when it returns `Ok`
//! on the disk engine they survive `kill -9` (fjall batch, `PersistMode::SyncData`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::FencingToken;

/// A stored value and the token of the write that stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Always UTF-8: both protocols only accept text.
    pub value: Bytes,
    pub token: Option<FencingToken>,
}

/// One effect of an accepted request, waiting to be committed.
#[derive(Clone, Debug)]
pub enum Change {
    Value { key: String, entry: Entry },
    Fence { name: String, token: FencingToken },
}

/// A failure of the storage engine itself (not of a request).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("storage engine: {0}")]
    Engine(#[from] fjall::Error),
    #[error("corrupt record under {0:?}: shorter than its 8-byte token")]
    Corrupt(String),
    #[error("cannot start the store's threads: {0}")]
    Thread(#[from] std::io::Error),
}

/// What the store needs from an engine. Reads come from the store's writer thread, commits
/// from its committer thread, concurrently.
pub trait Backend: Send + Sync + 'static {
    fn fence(&self, name: &str) -> Result<Option<FencingToken>, BackendError>;
    fn value(&self, key: &str) -> Result<Option<Entry>, BackendError>;
    /// Applies `changes` in order, atomically, durably where the engine is durable.
    fn commit(&self, changes: &[Change]) -> Result<(), BackendError>;
}

const VALUES: &str = "values";
const FENCES: &str = "fences";
const TOKEN_BYTES: usize = 8;

/// The durable engine: a fjall database with one keyspace for values and one for fences.
///
/// fjall sizes a new journal to 64 MiB with `set_len` (a sparse file), so appends do not grow
/// the file. Filling it with zeros first would not make the syncs cheaper either: on this
/// machine's ext4, `fdatasync` after a 400-byte append took ~95 us (p50) in the sparse file
/// and ~125 us in a zero-filled one.
pub struct Fjall {
    db: Database,
    values: Keyspace,
    fences: Keyspace,
}

impl Fjall {
    /// Opens (or creates) the database in `dir`. Opening replays fjall's journal, so every
    /// batch committed before a crash is back.
    pub fn open(dir: &Path) -> Result<Self, BackendError> {
        let db = Database::builder(dir).open()?;
        let values = db.keyspace(VALUES, KeyspaceCreateOptions::default)?;
        let fences = db.keyspace(FENCES, KeyspaceCreateOptions::default)?;
        Ok(Fjall { db, values, fences })
    }
}

impl Backend for Fjall {
    fn fence(&self, name: &str) -> Result<Option<FencingToken>, BackendError> {
        match self.fences.get(name)? {
            Some(raw) => Ok(decode_token(name, &raw)?.0),
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
                Change::Fence { name, token } => {
                    batch.insert(&self.fences, name.as_str(), raw_token(Some(*token)));
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

/// The volatile engine (`--in-memory`): two maps, gone when the process ends.
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
    fences: BTreeMap<String, FencingToken>,
}

impl Memory {
    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // No code panics while holding the lock, and every update is a single map insert, so a
        // poisoned lock still guards consistent maps.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backend for Memory {
    fn fence(&self, name: &str) -> Result<Option<FencingToken>, BackendError> {
        Ok(self.state().fences.get(name).copied())
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
                Change::Fence { name, token } => {
                    state.fences.insert(name.clone(), *token);
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
                    name: "/lock".into(),
                    token: token(3),
                },
            ])
            .unwrap();
        let entry = backend.value("/lock").unwrap().unwrap();
        assert_eq!(entry.value, Bytes::from_static(b"v1"));
        assert_eq!(entry.token, Some(token(3)));
        assert_eq!(backend.fence("/lock").unwrap(), Some(token(3)));
        assert_eq!(backend.fence("other").unwrap(), None);
    }

    #[test]
    fn memory_engine_keeps_values_and_fences_apart() {
        exercise(&Memory::default());
    }

    #[test]
    fn fjall_engine_keeps_values_and_fences_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&Fjall::open(dir.path()).unwrap());
        let reopened = Fjall::open(dir.path()).unwrap();
        assert_eq!(reopened.fence("/lock").unwrap(), Some(token(3)));
        assert_eq!(
            reopened.value("/lock").unwrap().map(|e| e.value),
            Some(Bytes::from_static(b"v1"))
        );
    }
}
