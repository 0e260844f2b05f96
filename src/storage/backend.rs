//! The engines under the store: fjall on disk, or maps in memory, behind one trait.
//!
//! Three maps (fjall keyspaces): keys, lock fences (by lock name) and keys' own fences (by
//! key). Lock fences and keys' own fences are apart, so an unfenced write to the key `/lock`
//! never moves the fence of the lock `/lock`.
//!
//! A key's [`Record`] holds both what it belongs to and what it holds, so a write reads one
//! record and writes one: the binding as `-` (unbound), `K` (its own fence) or `L`, the lock
//! name's length (4 bytes, big-endian) and the name; then the value as `-` (none) or `V`, the
//! 8-byte big-endian token of the write that stored it (0 for none) and the value's bytes. A
//! fence is stored as its 8-byte token.
//!
//! Invariants:
//! - [`Backend::commit`] applies all its changes or none, and when it returns `Ok` on the
//!   disk engine they survive `kill -9` (fjall batch, `PersistMode::SyncData`), so a key's
//!   binding is as durable as the write or fenced read that made it.
//! - A key stays bound when its value is deleted: only a record with neither is removed.
//! - A data directory of the layout before records (values and bindings in keyspaces of
//!   their own) is rewritten into records when opened, before anything is served; the old
//!   keyspaces are dropped only once every record is durable, so a crash during the rewrite
//!   leaves the old layout whole, and the next open starts it again.
//! - A data directory of the earliest layout (one `fences` keyspace holding lock names and
//!   keys alike, no bindings) is refused when opened, never reinterpreted: its fences
//!   cannot be told apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use indexmap::IndexMap;

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

/// Everything stored under one key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The fence the key belongs to; `None` while no checked access has touched it. It stays
    /// when the value is deleted.
    pub binding: Option<Binding>,
    /// The value; `None` when never written or deleted.
    pub value: Option<Entry>,
}

impl Record {
    /// Neither bound nor holding a value: nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.binding.is_none() && self.value.is_none()
    }
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
    /// The record under `key`: an empty one for a key never bound nor written.
    fn record(&self, key: &str) -> Result<Record, BackendError>;
    /// Stores each key's record (an empty one removes the key) and each fence's token,
    /// atomically, durably where the engine is durable.
    fn commit(
        &self,
        records: &IndexMap<String, Record>,
        fences: &IndexMap<FenceId, FencingToken>,
    ) -> Result<(), BackendError>;
}

const KEYS: &str = "keys";
const LOCK_FENCES: &str = "lock_fences";
const KEY_FENCES: &str = "key_fences";
/// The keyspaces of the layout before records: values and bindings apart.
const SPLIT_VALUES: &str = "values";
const SPLIT_BINDINGS: &str = "bindings";
/// The keyspace of the earliest layout, where lock names and keys shared one fence map.
const EARLIER_FENCES: &str = "fences";
const TOKEN_BYTES: usize = 8;
/// Records per batch while a data directory of the split layout is rewritten.
const REWRITE_BATCH: usize = 4096;

/// The durable engine: a fjall database with a keyspace per map.
///
/// fjall sizes a new journal to 64 MiB with `set_len` (a sparse file), so appends do not grow
/// the file. Filling it with zeros first would not make the syncs cheaper either: on this
/// machine's ext4, `fdatasync` after a 400-byte append took ~95 us (p50) in the sparse file
/// and ~125 us in a zero-filled one.
pub struct Fjall {
    db: Database,
    keys: Keyspace,
    lock_fences: Keyspace,
    key_fences: Keyspace,
}

/// Bytes of blocks the durable engine keeps cached (filled as it reads, not reserved up
/// front). fjall's default, 32 MiB, holds the index and filter blocks of a few million keys
/// only: past that every read loads and checks them again, and fenced reads of 10 million
/// stored keys fell to a twentieth of those of one million.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

impl Fjall {
    /// Opens (or creates) the database in `dir`, with the default block cache. Opening
    /// replays fjall's journal, so every batch committed before a crash is back.
    pub fn open(dir: &Path) -> Result<Self, BackendError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// [`Fjall::open`], caching up to `cache_bytes` of blocks.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, BackendError> {
        let db = Database::builder(dir).cache_size(cache_bytes).open()?;
        if db.keyspace_exists(EARLIER_FENCES) {
            return Err(BackendError::EarlierLayout(dir.to_owned()));
        }
        let keys = db.keyspace(KEYS, KeyspaceCreateOptions::default)?;
        let lock_fences = db.keyspace(LOCK_FENCES, KeyspaceCreateOptions::default)?;
        let key_fences = db.keyspace(KEY_FENCES, KeyspaceCreateOptions::default)?;
        rewrite_split_layout(&db, &keys)?;
        Ok(Fjall {
            db,
            keys,
            lock_fences,
            key_fences,
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

    fn record(&self, key: &str) -> Result<Record, BackendError> {
        match self.keys.get(key)? {
            Some(raw) => decode_record(key, &raw),
            None => Ok(Record::default()),
        }
    }

    fn commit(
        &self,
        records: &IndexMap<String, Record>,
        fences: &IndexMap<FenceId, FencingToken>,
    ) -> Result<(), BackendError> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        let mut raw = Vec::new();
        for (key, record) in records {
            if record.is_empty() {
                batch.remove(&self.keys, key.as_str());
            } else {
                encode_record(record, &mut raw);
                batch.insert(&self.keys, key.as_str(), raw.as_slice());
            }
        }
        for (id, token) in fences {
            let (keyspace, name) = self.fences(id);
            batch.insert(keyspace, name, raw_token(Some(*token)));
        }
        batch.commit()?;
        Ok(())
    }
}

/// Rewrites a data directory of the split layout (values and bindings in keyspaces of their
/// own) into records, then drops the split keyspaces: `values` once every record is durable,
/// `bindings` after it. So a directory with `values` has not been rewritten whole (and is
/// rewritten again: every record is derived from the split keyspaces alone), and one with
/// only `bindings` left was rewritten and only needs it dropped.
fn rewrite_split_layout(db: &Database, keys: &Keyspace) -> Result<(), BackendError> {
    if db.keyspace_exists(SPLIT_VALUES) {
        let values = db.keyspace(SPLIT_VALUES, KeyspaceCreateOptions::default)?;
        let bindings = db.keyspace(SPLIT_BINDINGS, KeyspaceCreateOptions::default)?;
        let mut batch = db.batch();
        let mut pending = 0;
        let mut raw = Vec::new();
        let mut put = |key: &[u8], record: &Record| -> Result<(), BackendError> {
            encode_record(record, &mut raw);
            batch.insert(keys, key, raw.as_slice());
            pending += 1;
            if pending == REWRITE_BATCH {
                std::mem::replace(&mut batch, db.batch()).commit()?;
                pending = 0;
            }
            Ok(())
        };
        for pair in values.iter() {
            let (key, raw_value) = pair.into_inner()?;
            let name = String::from_utf8_lossy(&key);
            let (token, value) = decode_token(&name, &raw_value)?;
            let binding = match bindings.get(&key)? {
                Some(raw) => Some(decode_binding(&name, &raw)?),
                None => None,
            };
            let value = Some(Entry {
                value: Bytes::copy_from_slice(value),
                token,
            });
            put(&key, &Record { binding, value })?;
        }
        for pair in bindings.iter() {
            let (key, raw_binding) = pair.into_inner()?;
            if values.contains_key(&key)? {
                continue;
            }
            let binding = Some(decode_binding(
                &String::from_utf8_lossy(&key),
                &raw_binding,
            )?);
            put(
                &key,
                &Record {
                    binding,
                    value: None,
                },
            )?;
        }
        batch.commit()?;
        db.persist(PersistMode::SyncAll)?;
        db.delete_keyspace(values)?;
        db.persist(PersistMode::SyncAll)?;
    }
    if db.keyspace_exists(SPLIT_BINDINGS) {
        let bindings = db.keyspace(SPLIT_BINDINGS, KeyspaceCreateOptions::default)?;
        db.delete_keyspace(bindings)?;
        db.persist(PersistMode::SyncAll)?;
    }
    Ok(())
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

/// `record` in the layout the module's documentation gives, into `raw` (emptied first).
fn encode_record(record: &Record, raw: &mut Vec<u8>) {
    raw.clear();
    match &record.binding {
        None => raw.push(b'-'),
        Some(Binding::OwnKey) => raw.push(b'K'),
        Some(Binding::Lock(name)) => {
            raw.push(b'L');
            // A lock name is at most a request's size, far below 4 GiB.
            let len = u32::try_from(name.len()).unwrap_or(u32::MAX);
            raw.extend_from_slice(&len.to_be_bytes());
            raw.extend_from_slice(name.as_bytes());
        }
    }
    match &record.value {
        None => raw.push(b'-'),
        Some(entry) => {
            raw.push(b'V');
            raw.extend_from_slice(&raw_token(entry.token));
            raw.extend_from_slice(&entry.value);
        }
    }
}

fn decode_record(key: &str, raw: &[u8]) -> Result<Record, BackendError> {
    let corrupt = || BackendError::Corrupt(key.to_owned());
    let (binding, rest) = match raw.split_first().ok_or_else(corrupt)? {
        (b'-', rest) => (None, rest),
        (b'K', rest) => (Some(Binding::OwnKey), rest),
        (b'L', rest) => {
            let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
            let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| corrupt())?;
            if rest.len() < len {
                return Err(corrupt());
            }
            let (name, rest) = rest.split_at(len);
            let name = std::str::from_utf8(name).map_err(|_| corrupt())?;
            (Some(Binding::Lock(name.to_owned())), rest)
        }
        _ => return Err(corrupt()),
    };
    let value = match rest.split_first().ok_or_else(corrupt)? {
        (b'-', []) => None,
        (b'V', rest) => {
            let (token, value) = decode_token(key, rest)?;
            Some(Entry {
                value: Bytes::copy_from_slice(value),
                token,
            })
        }
        _ => return Err(corrupt()),
    };
    Ok(Record { binding, value })
}

/// A binding as the split layout stored it: `K`, or `L` and the lock name.
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
    keys: BTreeMap<String, Record>,
    lock_fences: BTreeMap<String, FencingToken>,
    key_fences: BTreeMap<String, FencingToken>,
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

    fn record(&self, key: &str) -> Result<Record, BackendError> {
        Ok(self.state().keys.get(key).cloned().unwrap_or_default())
    }

    fn commit(
        &self,
        records: &IndexMap<String, Record>,
        fences: &IndexMap<FenceId, FencingToken>,
    ) -> Result<(), BackendError> {
        let mut state = self.state();
        for (key, record) in records {
            if record.is_empty() {
                state.keys.remove(key);
            } else {
                state.keys.insert(key.clone(), record.clone());
            }
        }
        for (id, token) in fences {
            let (map, name) = state.fences(id);
            map.insert(name.to_owned(), *token);
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

    fn entry(value: &'static str, n: u64) -> Entry {
        Entry {
            value: Bytes::from_static(value.as_bytes()),
            token: FencingToken::new(n),
        }
    }

    fn bound_to(name: &str, value: Option<Entry>) -> Record {
        Record {
            binding: Some(Binding::Lock(name.into())),
            value,
        }
    }

    fn exercise(backend: &dyn Backend) {
        assert_eq!(backend.record("/lock").unwrap(), Record::default());
        let own = Record {
            binding: Some(Binding::OwnKey),
            value: Some(entry("v1", 3)),
        };
        let unfenced = Record {
            binding: None,
            value: Some(entry("", 0)),
        };
        backend
            .commit(
                &IndexMap::from([
                    ("/lock".into(), own.clone()),
                    ("k".into(), bound_to("/lock", None)),
                    ("plain".into(), unfenced.clone()),
                    ("gone".into(), bound_to("/lock", Some(entry("x", 2)))),
                ]),
                &IndexMap::from([
                    (lock("/lock"), token(3)),
                    (FenceId::Key("/lock".into()), token(9)),
                ]),
            )
            .unwrap();
        assert_eq!(backend.record("/lock").unwrap(), own);
        assert_eq!(backend.record("k").unwrap(), bound_to("/lock", None));
        assert_eq!(
            backend.record("plain").unwrap(),
            unfenced,
            "an empty value with no token is still a value"
        );
        assert_eq!(backend.fence(&lock("/lock")).unwrap(), Some(token(3)));
        assert_eq!(
            backend.fence(&FenceId::Key("/lock".into())).unwrap(),
            Some(token(9)),
            "a key's own fence and a lock's fence of the same name are apart"
        );
        assert_eq!(backend.fence(&lock("other")).unwrap(), None);

        // A deleted value keeps its binding; a record with neither goes.
        backend
            .commit(
                &IndexMap::from([
                    ("gone".into(), bound_to("/lock", None)),
                    ("plain".into(), Record::default()),
                ]),
                &IndexMap::new(),
            )
            .unwrap();
        assert_eq!(backend.record("gone").unwrap(), bound_to("/lock", None));
        assert_eq!(backend.record("plain").unwrap(), Record::default());
    }

    #[test]
    fn memory_engine_keeps_records_and_fences_apart() {
        exercise(&Memory::default());
    }

    #[test]
    fn fjall_engine_keeps_records_and_fences_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&Fjall::open(dir.path()).unwrap());
        let reopened = Fjall::open(dir.path()).unwrap();
        assert_eq!(reopened.fence(&lock("/lock")).unwrap(), Some(token(3)));
        assert_eq!(reopened.record("k").unwrap(), bound_to("/lock", None));
        assert_eq!(
            reopened.record("/lock").unwrap().value,
            Some(entry("v1", 3))
        );
    }

    #[test]
    fn records_round_trip_and_damaged_ones_are_reported() {
        let records = [
            Record::default(),
            bound_to("", None),
            bound_to("a lock / with ünïcode", Some(entry("value", 1 << 40))),
            Record {
                binding: Some(Binding::OwnKey),
                value: Some(entry("", 0)),
            },
        ];
        let mut raw = Vec::new();
        for record in records {
            encode_record(&record, &mut raw);
            assert_eq!(decode_record("k", &raw).unwrap(), record);
            // Cut anywhere before the value's own bytes (which may be any length).
            let header = raw.len() - record.value.as_ref().map_or(0, |e| e.value.len());
            for cut in 0..header {
                assert!(
                    decode_record("k", &raw[..cut]).is_err(),
                    "{record:?} cut to {cut} bytes was read"
                );
            }
        }
        let Err(error) = decode_record("k", b"X-") else {
            panic!("an unknown binding tag was read");
        };
        assert_eq!(error.to_string(), "corrupt record under \"k\"");
    }

    /// A data directory as the split layout left it: values and bindings apart.
    fn split_layout(dir: &Path, values: &[(&str, Entry)], bindings: &[(&str, &[u8])]) {
        let db = Database::builder(dir).open().unwrap();
        let values_keyspace = db
            .keyspace(SPLIT_VALUES, KeyspaceCreateOptions::default)
            .unwrap();
        let bindings_keyspace = db
            .keyspace(SPLIT_BINDINGS, KeyspaceCreateOptions::default)
            .unwrap();
        let lock_fences = db
            .keyspace(LOCK_FENCES, KeyspaceCreateOptions::default)
            .unwrap();
        for (key, entry) in values {
            let raw = [&raw_token(entry.token)[..], &entry.value].concat();
            values_keyspace.insert(*key, raw).unwrap();
        }
        for (key, raw) in bindings {
            bindings_keyspace.insert(*key, *raw).unwrap();
        }
        lock_fences
            .insert("/lock", raw_token(Some(token(7))))
            .unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }

    #[test]
    fn a_data_dir_of_the_split_layout_is_rewritten_into_records() {
        let dir = tempfile::tempdir().unwrap();
        // More keys than one rewrite batch holds, so the rewrite spans several batches.
        let many: Vec<(String, Entry)> = (0..REWRITE_BATCH + 10)
            .map(|i| (format!("n{i:05}"), entry("n", 1)))
            .collect();
        let mut values: Vec<(&str, Entry)> = vec![
            ("both", entry("v", 5)),
            ("own", entry("o", 6)),
            ("unfenced", entry("u", 0)),
        ];
        values.extend(
            many.iter()
                .map(|(key, entry)| (key.as_str(), entry.clone())),
        );
        split_layout(
            dir.path(),
            &values,
            &[("both", b"L/lock"), ("own", b"K"), ("deleted", b"L/lock")],
        );
        let engine = Fjall::open(dir.path()).unwrap();
        assert_eq!(
            engine.record("both").unwrap(),
            bound_to("/lock", Some(entry("v", 5)))
        );
        assert_eq!(
            engine.record("own").unwrap(),
            Record {
                binding: Some(Binding::OwnKey),
                value: Some(entry("o", 6)),
            }
        );
        assert_eq!(
            engine.record("unfenced").unwrap(),
            Record {
                binding: None,
                value: Some(entry("u", 0)),
            }
        );
        assert_eq!(
            engine.record("deleted").unwrap(),
            bound_to("/lock", None),
            "a key whose value was deleted still belongs to its fence"
        );
        let last = format!("n{:05}", REWRITE_BATCH + 9);
        assert_eq!(engine.record(&last).unwrap().value, Some(entry("n", 1)));
        assert_eq!(engine.fence(&lock("/lock")).unwrap(), Some(token(7)));
        assert!(!engine.db.keyspace_exists(SPLIT_VALUES));
        assert!(!engine.db.keyspace_exists(SPLIT_BINDINGS));
        drop(engine);

        let reopened = Fjall::open(dir.path()).unwrap();
        assert_eq!(reopened.record("deleted").unwrap(), bound_to("/lock", None));
    }

    #[test]
    fn a_rewrite_cut_short_after_its_records_were_durable_only_drops_the_bindings() {
        let dir = tempfile::tempdir().unwrap();
        {
            // As a crash between dropping `values` and dropping `bindings` leaves it.
            let db = Database::builder(dir.path()).open().unwrap();
            let keys = db.keyspace(KEYS, KeyspaceCreateOptions::default).unwrap();
            let mut raw = Vec::new();
            encode_record(&bound_to("/lock", Some(entry("v", 5))), &mut raw);
            keys.insert("k", raw).unwrap();
            let bindings = db
                .keyspace(SPLIT_BINDINGS, KeyspaceCreateOptions::default)
                .unwrap();
            bindings.insert("k", b"L/other".as_slice()).unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
        }
        let engine = Fjall::open(dir.path()).unwrap();
        assert_eq!(
            engine.record("k").unwrap(),
            bound_to("/lock", Some(entry("v", 5))),
            "the records are not rewritten from what is left of the split layout"
        );
        assert!(!engine.db.keyspace_exists(SPLIT_BINDINGS));
    }

    #[test]
    fn a_damaged_split_layout_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        split_layout(dir.path(), &[("k", entry("v", 1))], &[("k", b"?")]);
        let Err(error) = Fjall::open(dir.path()) else {
            panic!("a damaged binding was rewritten");
        };
        assert!(matches!(error, BackendError::Corrupt(_)), "{error}");
        let db = Database::builder(dir.path()).open().unwrap();
        assert!(db.keyspace_exists(SPLIT_VALUES));
        assert!(db.keyspace_exists(SPLIT_BINDINGS));
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
