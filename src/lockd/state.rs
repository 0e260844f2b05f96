//! lockd's state machine: a multi-version key space, leases, and the event history, behind
//! one lock and free of I/O apart from revision reservations.
//!
//! Invariants:
//! - `revision` grows by one per committed change (a Put, a DeleteRange that deleted
//!   something, a Txn that wrote, a lease revocation that deleted keys) and never goes back;
//!   every revision is reserved durably ([`Revisions::ensure`]) before it is used.
//! - `history` holds every change with a revision of at least `oldest_kept`, oldest first,
//!   each with the key's previous version; that is what lets a Range read a past revision
//!   (by undoing newer changes) and a Watch start in the past.
//! - Each change is published on `fanout` while the state is still locked, so a watcher
//!   added under the lock sees exactly the changes after what it read.
//! - A lease's `keys` are exactly the live keys whose `lease` field names it.
//! - `dirs` holds exactly the live keys, each under its directory with its create_revision.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque, btree_map};
use std::ops::{Bound, RangeBounds, RangeFull};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

use super::error::EtcdError;
use super::fanout::{Fanout, Feed, StreamId};
use super::meta::{Identity, Revisions};
use super::metrics::Gauges;
use crate::etcd::etcdserverpb::{self as pb, compare, range_request, request_op, response_op};
use crate::etcd::mvccpb::{Event, KeyValue, event::EventType};
use crate::etcd::prefix_end;

/// etcd's upper bound on a lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// etcd's default limit on operations in one branch of a Txn.
pub const MAX_TXN_OPS: usize = 128;

/// One committed change: everything written at `revision`, in order, each event carrying the
/// key's previous version (`prev_kv`) whether or not a watcher asked for it.
#[derive(Debug)]
pub struct Change {
    pub revision: i64,
    pub events: Vec<Event>,
}

impl Change {
    /// Bytes of keys and values held, previous versions included.
    fn size(&self) -> usize {
        let kv_size =
            |kv: &Option<KeyValue>| kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len());
        self.events
            .iter()
            .map(|e| kv_size(&e.kv) + kv_size(&e.prev_kv))
            .sum()
    }
}

/// A key range as etcd's requests give it: `range_end` empty means the key alone, `"\0"`
/// means every key from `key` on, anything else is the exclusive end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    start: Vec<u8>,
    end: End,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    Single,
    Unbounded,
    Before(Vec<u8>),
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        let end = match range_end {
            [] => End::Single,
            [0] => End::Unbounded,
            end => End::Before(end.to_vec()),
        };
        Self {
            start: key.to_vec(),
            end,
        }
    }

    /// The one key of a single-key range.
    pub fn single_key(&self) -> Option<&[u8]> {
        (self.end == End::Single).then_some(self.start.as_slice())
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            End::Single => key == self.start.as_slice(),
            End::Unbounded => key >= self.start.as_slice(),
            End::Before(end) => key >= self.start.as_slice() && key < end.as_slice(),
        }
    }

    /// Whether every key starting with `prefix` is in the range.
    fn holds_prefix(&self, prefix: &[u8]) -> bool {
        let after = prefix_end(prefix);
        prefix >= self.start.as_slice()
            && match &self.end {
                End::Single => false,
                End::Unbounded => true,
                End::Before(end) => after != [0] && after <= *end,
            }
    }

    /// Bounds for a `BTreeMap` scan, or `None` for an empty range (an end at or before the
    /// start), which `BTreeMap::range` would refuse.
    fn bounds(&self) -> Option<KeyBounds<'_>> {
        let start = Bound::Included(self.start.as_slice());
        match &self.end {
            End::Single => Some((start, Bound::Included(self.start.as_slice()))),
            End::Unbounded => Some((start, Bound::Unbounded)),
            End::Before(end) if end.as_slice() > self.start.as_slice() => {
                Some((start, Bound::Excluded(end.as_slice())))
            }
            End::Before(_) => None,
        }
    }
}

/// Bounds of a `BTreeMap<Vec<u8>, _>` scan.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

struct Lease {
    /// Granted TTL in seconds.
    ttl: i64,
    deadline: Instant,
    keys: BTreeSet<Vec<u8>>,
}

/// Where a v3lock waiter stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Turn {
    Owner,
    /// Behind the key named: the newest older key under the lock's prefix. Only its
    /// deletion (or the waiter's own) can change the answer.
    Waiting(Vec<u8>),
    /// Its key is gone (lease expired or revoked, or unlocked by someone else).
    Gone,
}

/// Tunables fixed at start-up.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Shorter TTLs are raised to this, in seconds.
    pub min_ttl: i64,
    /// Events kept for past-revision reads and watches.
    pub history: usize,
    /// Bytes of keys and values the history may hold, whatever its length in events.
    pub history_bytes: usize,
    /// Bytes of live keys and values a write may grow the key space to (etcd's backend
    /// quota): a Put or Txn that would grow it further is refused; deletes always work.
    pub quota_bytes: usize,
    /// How long the keys of a lease that ended without their deletion (it expired or was
    /// revoked) outlive it: a lock key left by a holder that stopped renewing keeps the next
    /// waiter out this much longer (Chubby's lock-delay). Zero deletes them with the lease.
    pub lock_delay: Duration,
}

/// The keys of a lease that ended, kept until `until` (the lock-delay).
struct Lingering {
    until: Instant,
    lease: i64,
    /// Each key with its create_revision: only that incarnation is deleted at the end.
    keys: Vec<(Vec<u8>, i64)>,
}

pub struct State {
    keys: BTreeMap<Vec<u8>, KeyValue>,
    /// The live keys by directory (the key up to and including its last `/`, empty for a
    /// key without one), each directory's by create_revision, then key: what lets a lock's
    /// waiter find and count the keys of its lock created before its own (`<lock>/<lease>`)
    /// without reading every key of the lock.
    dirs: BTreeMap<Bytes, DirKeys>,
    /// Bytes of keys and values in `keys`.
    live_bytes: usize,
    revision: i64,
    history: VecDeque<Arc<Change>>,
    history_events: usize,
    history_size: usize,
    oldest_kept: i64,
    leases: HashMap<i64, Lease>,
    deadlines: BTreeSet<(Instant, i64)>,
    /// Keys of ended leases kept for the lock-delay, soonest end first.
    lingering: VecDeque<Lingering>,
    revisions: Revisions,
    identity: Identity,
    limits: Limits,
    /// The change feed of every watch stream, indexed by the keys and ranges watched.
    fanout: Fanout,
    /// v3lock waiters to wake when a key is deleted, by key.
    on_delete: HashMap<Vec<u8>, Vec<Weak<Notify>>>,
}

impl State {
    /// A state starting at `revision` with nothing in it. Changes before `revision`, if any,
    /// belong to an earlier run and are reported as compacted.
    pub fn new(revisions: Revisions, revision: i64, limits: Limits) -> Self {
        let identity = revisions.identity();
        Self {
            keys: BTreeMap::new(),
            dirs: BTreeMap::new(),
            live_bytes: 0,
            revision,
            history: VecDeque::new(),
            history_events: 0,
            history_size: 0,
            // A fresh store has had no changes: its whole history, from revision 1, is kept.
            // After a restart, the changes up to `revision` are gone with the old process.
            oldest_kept: if revision <= 1 { 1 } else { revision + 1 },
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            lingering: VecDeque::new(),
            revisions,
            identity,
            limits,
            fanout: Fanout::default(),
            on_delete: HashMap::new(),
        }
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// Why writes fail now, if the revision reservation cannot be made durable.
    pub fn write_failure(&self) -> Option<&str> {
        self.revisions.failure()
    }

    /// What a scrape of `/metrics` reports about the state.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            revision: self.revision,
            keys: self.keys.len(),
            key_bytes: self.size(),
            leases: self.leases.len(),
            watch_streams: self.fanout.streams(),
            watchers: self.fanout.watchers(),
        }
    }

    /// Oldest revision a watch can start from and a Range can read.
    pub fn oldest_kept(&self) -> i64 {
        self.oldest_kept
    }

    pub fn header(&self) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision: self.revision,
            raft_term: self.identity.term,
        }
    }

    /// A feed for a new watch stream; it carries the changes its watchers cover from the
    /// moment each is added ([`State::add_watcher`]).
    pub fn open_feed(&mut self) -> Feed {
        self.fanout.open()
    }

    /// Forgets a watch stream and its watchers.
    pub fn close_feed(&mut self, stream: StreamId) {
        self.fanout.close(stream);
    }

    /// From now on, the changes covering `range` go to `stream`'s feed, for watcher `id`.
    pub fn add_watcher(&mut self, stream: StreamId, id: i64, range: &KeyRange) {
        self.fanout.add(stream, id, range);
    }

    /// Watcher `id` of `stream` hears nothing more.
    pub fn remove_watcher(&mut self, stream: StreamId, id: i64) {
        self.fanout.remove(stream, id);
    }

    /// Bytes of keys and values held, reported as the database size.
    pub fn size(&self) -> i64 {
        self.live_bytes as i64
    }

    /// Refuses `puts` if together they would grow the live keys and values past the quota.
    fn check_quota<'a>(
        &self,
        puts: impl Iterator<Item = &'a pb::PutRequest>,
    ) -> Result<(), EtcdError> {
        let mut grown = self.live_bytes as i128;
        for put in puts {
            let prev = self.keys.get(&put.key);
            let value = match (prev, put.ignore_value) {
                (Some(prev), true) => prev.value.len(),
                _ => put.value.len(),
            };
            grown += (put.key.len() + value) as i128;
            grown -= prev.map_or(0, |kv| (kv.key.len() + kv.value.len()) as i128);
        }
        if grown > self.live_bytes as i128 && grown > self.limits.quota_bytes as i128 {
            return Err(EtcdError::NoSpace);
        }
        Ok(())
    }

    // ---- reads ----

    fn scan<'a>(&'a self, range: &KeyRange) -> impl Iterator<Item = &'a KeyValue> + 'a {
        range
            .bounds()
            .map(|bounds| self.keys.range::<[u8], _>(bounds))
            .into_iter()
            .flatten()
            .map(|(_, kv)| kv)
    }

    /// Whether a read at `revision` sees the live keys as they are.
    fn reads_now(revision: i64, current: i64, pending: &[Event]) -> bool {
        revision <= 0 || (revision == current && pending.is_empty())
    }

    /// The keys in `range` changed since `revision` (0: now), each with its version then
    /// (`None`: absent then); `pending` are the writes of the Txn reading, which a read at the
    /// current revision does not see. Empty for a read that sees the live keys as they are.
    fn changed_since<'a>(
        &'a self,
        range: &KeyRange,
        revision: i64,
        pending: &'a [Event],
    ) -> Result<HashMap<&'a [u8], Option<&'a KeyValue>>, EtcdError> {
        if revision > self.revision {
            return Err(EtcdError::FutureRevision);
        }
        let mut then = HashMap::new();
        if Self::reads_now(revision, self.revision, pending) {
            return Ok(then);
        }
        if revision < self.oldest_kept {
            return Err(EtcdError::Compacted);
        }
        // Walked newest first, so the version before a key's oldest change is the one left.
        let newer = self
            .history
            .iter()
            .rev()
            .take_while(|change| change.revision > revision)
            .flat_map(|change| change.events.iter().rev());
        for event in pending.iter().rev().chain(newer) {
            let Some(kv) = &event.kv else { continue };
            if range.contains(&kv.key) {
                then.insert(&kv.key[..], event.prev_kv.as_ref());
            }
        }
        Ok(then)
    }

    /// Calls `visit` with each key in `range` as it was when the keys `changed` had the
    /// versions given: the live keys unchanged since, in key order, then the earlier versions
    /// of the changed ones. Nothing is collected: a range (a lock's waiters) may hold
    /// thousands of keys, of which a Range usually answers one or two.
    fn visit<'a>(
        &'a self,
        range: &KeyRange,
        changed: &HashMap<&'a [u8], Option<&'a KeyValue>>,
        mut visit: impl FnMut(&'a KeyValue),
    ) {
        if changed.is_empty() {
            return self.scan(range).for_each(visit);
        }
        // The changed keys are skipped by walking them in key order beside the live ones:
        // few keys change between a read and the revision it asks for.
        let mut skip: Vec<&[u8]> = changed.keys().copied().collect();
        skip.sort_unstable();
        let mut skip = skip.into_iter().peekable();
        for kv in self.scan(range) {
            while skip.next_if(|key| *key < &kv.key[..]).is_some() {}
            if skip.next_if_eq(&&kv.key[..]).is_none() {
                visit(kv);
            }
        }
        changed.values().flatten().copied().for_each(visit);
    }

    /// The directories that hold every live key of `range`, each with whether all its keys
    /// are in the range; `None` for a single key, or when they are too many, or when one
    /// only partly in the range is too large to sift.
    fn dirs_of(&self, range: &KeyRange) -> Option<Vec<(&DirKeys, bool)>> {
        if range.single_key().is_some() {
            return None;
        }
        let Some((_, end)) = range.bounds() else {
            return Some(Vec::new());
        };
        let start = &range.start[..];
        let sifted = |keys: &DirKeys| keys.len() <= MAX_SIFTED;
        let mut dirs = Vec::new();
        // A key's directory is a prefix of it: either one of the start's own (its keys past
        // the start may be in the range) or one from the start on.
        let above = std::iter::once(0).chain(
            start
                .iter()
                .enumerate()
                .filter(|&(i, b)| *b == b'/' && i + 1 < start.len())
                .map(|(i, _)| i + 1),
        );
        for len in above {
            if let Some(keys) = self.dirs.get(&start[..len]) {
                dirs.push((keys, false));
            }
        }
        for (dir, keys) in self.dirs.range::<[u8], _>((Bound::Included(start), end)) {
            dirs.push((keys, range.holds_prefix(dir)));
            if dirs.len() > MAX_DIRS {
                return None;
            }
        }
        dirs.iter()
            .all(|(keys, whole)| *whole || sifted(keys))
            .then_some(dirs)
    }

    /// How many keys `range` holds when the keys `changed` had the versions given, of the
    /// `live` it holds now.
    fn count_then(&self, live: usize, changed: &HashMap<&[u8], Option<&KeyValue>>) -> usize {
        let live_changed = changed.keys().filter(|k| self.keys.contains_key(**k));
        let then = changed.values().flatten().count();
        live - live_changed.count() + then
    }

    /// The keys `request`, a Range ordered by create_revision, answers, into `pick`, found by
    /// walking the directories `dirs` of its `range` in that order from the bound it asks.
    fn pick_by_create<'a, F>(
        &'a self,
        range: &KeyRange,
        dirs: &[(&'a DirKeys, bool)],
        changed: &HashMap<&'a [u8], Option<&'a KeyValue>>,
        request: &pb::RangeRequest,
        pick: &mut Pick<'a, F>,
    ) where
        F: Fn(&&'a KeyValue, &&'a KeyValue) -> Ordering,
    {
        let passes = |kv: &KeyValue| passes_filters(request, kv);
        for kv in changed.values().flatten() {
            if passes(kv) {
                pick.offer(kv);
            }
        }
        let descend = request.sort_order() == range_request::SortOrder::Descend;
        let (min, max) = (request.min_create_revision, request.max_create_revision);
        let lower = match min {
            0 => Bound::Unbounded,
            min => Bound::Included((min, Bytes::new())),
        };
        let upper = match max {
            0 => Bound::Unbounded,
            max => Bound::Excluded((max.saturating_add(1), Bytes::new())),
        };
        for (keys, whole) in dirs {
            for (created, key) in keys.walk((lower.clone(), upper.clone()), descend) {
                // Every key of this directory from here on comes after the last one picked.
                if let Some(last) = pick.last_if_full()
                    && match descend {
                        true => *created < last.create_revision,
                        false => *created > last.create_revision,
                    }
                {
                    break;
                }
                if !(*whole || range.contains(key)) || changed.contains_key(&key[..]) {
                    continue;
                }
                if let Some(kv) = self.keys.get(&key[..])
                    && passes(kv)
                {
                    pick.offer(kv);
                }
            }
        }
    }

    pub fn range(&self, request: &pb::RangeRequest) -> Result<pb::RangeResponse, EtcdError> {
        self.range_within(request, &[])
    }

    /// A Range inside a Txn whose writes so far are `pending`.
    fn range_within(
        &self,
        request: &pb::RangeRequest,
        pending: &[Event],
    ) -> Result<pb::RangeResponse, EtcdError> {
        if request.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        let range = KeyRange::new(&request.key, &request.range_end);
        let limit = usize::try_from(request.limit).unwrap_or(0);
        let filtered = request.min_mod_revision != 0
            || request.max_mod_revision != 0
            || request.min_create_revision != 0
            || request.max_create_revision != 0;
        let (target, order) = (request.sort_target(), request.sort_order());
        // Like etcd: without an explicit order or a filter, only the first `limit + 1` keys
        // in key order are read (one more than asked, to know whether there are more), and
        // only those are then sorted by a non-key target. Otherwise the keys answered are the
        // first `limit + 1` in the order asked.
        let picked_by = match order == range_request::SortOrder::None && !filtered {
            true => range_request::SortTarget::Key,
            false => target,
        };
        // Filtered and picked by reference; only the keys answered are copied.
        let changed = self.changed_since(&range, request.revision, pending)?;
        let mut picked = Pick::new(limit, ordering(picked_by, order));
        let by_create = picked_by == range_request::SortTarget::Create;
        let dirs = match by_create && (1..MAX_PICKED).contains(&limit) {
            true => self.dirs_of(&range),
            false => None,
        };
        let count = match dirs {
            Some(dirs) => {
                let live = dirs.iter().map(|(keys, whole)| match whole {
                    true => keys.len(),
                    false => keys
                        .walk(RangeFull, false)
                        .filter(|(_, key)| range.contains(key))
                        .count(),
                });
                self.pick_by_create(&range, &dirs, &changed, request, &mut picked);
                self.count_then(live.sum(), &changed)
            }
            None => {
                let mut count = 0;
                self.visit(&range, &changed, |kv| {
                    count += 1;
                    if passes_filters(request, kv) {
                        picked.offer(kv);
                    }
                });
                count
            }
        };
        let mut kvs = picked.into_vec();
        kvs.sort_unstable_by(ordering(target, order));
        let mut more = false;
        if limit > 0 && kvs.len() > limit {
            kvs.truncate(limit);
            more = true;
        }
        if request.count_only {
            kvs.clear();
            more = false;
        }
        let kvs = kvs
            .into_iter()
            .map(|kv| {
                if request.keys_only {
                    KeyValue {
                        value: Bytes::new(),
                        key: kv.key.clone(),
                        ..*kv
                    }
                } else {
                    kv.clone()
                }
            })
            .collect();
        Ok(pb::RangeResponse {
            header: Some(self.header()),
            kvs,
            more,
            count: count as i64,
        })
    }

    fn compare_holds(&self, compare: &pb::Compare) -> bool {
        let range = KeyRange::new(&compare.key, &compare.range_end);
        let mut kvs = self.scan(&range).peekable();
        if kvs.peek().is_none() {
            // A missing key compares as a zero key, except on its value, which it lacks.
            return compare.target() != compare::CompareTarget::Value
                && compare_kv(compare, &KeyValue::default());
        }
        kvs.all(|kv| compare_kv(compare, kv))
    }

    // ---- writes ----

    /// Reserves the next revision, before anything is changed.
    fn begin(&mut self) -> Result<i64, EtcdError> {
        let next = self.revision + 1;
        self.revisions
            .ensure(next)
            .map_err(|e| EtcdError::Storage(e.to_string()))?;
        Ok(next)
    }

    /// Makes `events`, written at `revision`, the newest change.
    fn commit(&mut self, revision: i64, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        debug_assert_eq!(revision, self.revision + 1);
        self.revision = revision;
        let change = Arc::new(Change { revision, events });
        self.history_events += change.events.len();
        self.history_size += change.size();
        self.history.push_back(change.clone());
        while (self.history_events > self.limits.history
            || self.history_size > self.limits.history_bytes)
            && self.history.len() > 1
        {
            let oldest = self.drop_oldest();
            self.oldest_kept = oldest.revision + 1;
        }
        if !self.on_delete.is_empty() {
            for event in &change.events {
                if event.r#type != EventType::Delete as i32 {
                    continue;
                }
                let Some(kv) = &event.kv else { continue };
                for waiter in self.on_delete.remove(&kv.key[..]).into_iter().flatten() {
                    if let Some(waiter) = waiter.upgrade() {
                        waiter.notify_one();
                    }
                }
            }
        }
        self.fanout.publish(&change);
    }

    fn drop_oldest(&mut self) -> Arc<Change> {
        let oldest = self.history.pop_front().expect("history is not empty");
        self.history_events -= oldest.events.len();
        self.history_size -= oldest.size();
        oldest
    }

    fn attach(&mut self, lease: i64, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&lease) {
            lease.keys.insert(key.to_vec());
        }
    }

    fn detach(&mut self, lease: i64, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&lease) {
            lease.keys.remove(key);
        }
    }

    /// etcd's checks of a Put against the state (made on a Txn's chosen path only): the key
    /// must exist to keep its value or lease, and a lease must exist to be attached.
    fn check_put_state(&self, request: &pb::PutRequest) -> Result<(), EtcdError> {
        if (request.ignore_value || request.ignore_lease) && !self.keys.contains_key(&request.key) {
            return Err(EtcdError::KeyNotFound);
        }
        if request.lease != 0 && !self.leases.contains_key(&request.lease) {
            return Err(EtcdError::LeaseNotFound);
        }
        Ok(())
    }

    fn apply_put(
        &mut self,
        revision: i64,
        request: &pb::PutRequest,
        events: &mut Vec<Event>,
    ) -> pb::PutResponse {
        let prev = self.keys.get(&request.key).cloned();
        let lease = match (&prev, request.ignore_lease) {
            (Some(prev), true) => prev.lease,
            _ => request.lease,
        };
        let value = match (&prev, request.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => Bytes::from(request.value.clone()),
        };
        let kv = KeyValue {
            key: Bytes::from(request.key.clone()),
            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        if let Some(prev) = &prev
            && prev.lease != lease
        {
            self.detach(prev.lease, &prev.key);
        }
        self.attach(lease, &kv.key);
        self.live_bytes += kv.key.len() + kv.value.len();
        if let Some(prev) = &prev {
            self.live_bytes -= prev.key.len() + prev.value.len();
        }
        if prev.is_none() {
            let entry = (kv.create_revision, kv.key.clone());
            match self.dirs.entry(dir_of(&kv.key)) {
                btree_map::Entry::Vacant(dir) => {
                    dir.insert(DirKeys::One(entry));
                }
                btree_map::Entry::Occupied(mut dir) => dir.get_mut().insert(entry),
            }
        }
        self.keys.insert(request.key.clone(), kv.clone());
        events.push(Event {
            r#type: EventType::Put as i32,
            prev_kv: before_revision(events, &kv.key, &prev),
            kv: Some(kv),
        });
        pb::PutResponse {
            header: Some(self.header()),
            prev_kv: prev.filter(|_| request.prev_kv),
        }
    }

    fn apply_delete(
        &mut self,
        revision: i64,
        range: &KeyRange,
        want_prev: bool,
        events: &mut Vec<Event>,
    ) -> pb::DeleteRangeResponse {
        let doomed = self.scan(range).map(|kv| kv.key.to_vec()).collect();
        self.delete_keys(revision, doomed, want_prev, events)
    }

    /// Deletes `keys`, which exist and are distinct, at `revision`.
    fn delete_keys(
        &mut self,
        revision: i64,
        keys: Vec<Vec<u8>>,
        want_prev: bool,
        events: &mut Vec<Event>,
    ) -> pb::DeleteRangeResponse {
        // Only the Txn's earlier operations can have touched these keys already.
        let earlier = events.len();
        let mut prev_kvs = Vec::new();
        for key in &keys {
            let prev = self.keys.remove(key).expect("deleted keys exist");
            let dir = dir_of(&prev.key);
            if let Some(keys) = self.dirs.get_mut(&dir[..])
                && keys.remove(&(prev.create_revision, prev.key.clone()))
            {
                self.dirs.remove(&dir[..]);
            }
            self.live_bytes -= prev.key.len() + prev.value.len();
            self.detach(prev.lease, key);
            let event = Event {
                r#type: EventType::Delete as i32,
                prev_kv: before_revision(&events[..earlier], key, &Some(prev.clone())),
                kv: Some(KeyValue {
                    key: Bytes::from(key.clone()),
                    mod_revision: revision,
                    ..Default::default()
                }),
            };
            events.push(event);
            if want_prev {
                prev_kvs.push(prev);
            }
        }
        pb::DeleteRangeResponse {
            header: Some(self.header()),
            deleted: keys.len() as i64,
            prev_kvs,
        }
    }

    pub fn put(&mut self, request: &pb::PutRequest) -> Result<pb::PutResponse, EtcdError> {
        check_put_form(request)?;
        // Like etcd, the quota is checked before anything else about the state.
        self.check_quota(std::iter::once(request))?;
        // etcd looks the lease up before the key here, and after it inside a Txn.
        if request.lease != 0 && !self.leases.contains_key(&request.lease) {
            return Err(EtcdError::LeaseNotFound);
        }
        self.check_put_state(request)?;
        let revision = self.begin()?;
        let mut events = Vec::with_capacity(1);
        let mut response = self.apply_put(revision, request, &mut events);
        self.commit(revision, events);
        response.header = Some(self.header());
        Ok(response)
    }

    pub fn delete_range(
        &mut self,
        request: &pb::DeleteRangeRequest,
    ) -> Result<pb::DeleteRangeResponse, EtcdError> {
        if request.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        let revision = self.begin()?;
        let range = KeyRange::new(&request.key, &request.range_end);
        let mut events = Vec::new();
        let mut response = self.apply_delete(revision, &range, request.prev_kv, &mut events);
        self.commit(revision, events);
        response.header = Some(self.header());
        Ok(response)
    }

    pub fn txn(&mut self, request: &pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        check_txn_form(request)?;
        check_txn_intervals(request)?;
        // Like etcd, every compare, nested ones included, reads the state before the Txn.
        let mut path = Vec::new();
        self.choose_path(request, &mut path);
        let mut chosen_ops = Vec::new();
        chosen(request, &mut path.iter().copied(), &mut chosen_ops);
        self.check_quota(chosen_ops.iter().filter_map(|op| match &op.request {
            Some(request_op::Request::RequestPut(put)) => Some(put),
            _ => None,
        }))?;
        self.check_chosen(&chosen_ops)?;
        let revision = self.begin()?;
        let mut events = Vec::new();
        let mut response = self.apply_txn(revision, request, &mut path.into_iter(), &mut events)?;
        self.commit(revision, events);
        set_headers(&mut response, &self.header());
        Ok(response)
    }

    fn choose_path(&self, txn: &pb::TxnRequest, path: &mut Vec<bool>) {
        let succeeded = txn.compare.iter().all(|c| self.compare_holds(c));
        path.push(succeeded);
        for op in branch(txn, succeeded) {
            if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
                self.choose_path(nested, path);
            }
        }
    }

    /// etcd's checks of a Txn's chosen operations against the state, in etcd's order: every
    /// Put first, then every Range's revision.
    fn check_chosen(&self, ops: &[&pb::RequestOp]) -> Result<(), EtcdError> {
        for op in ops {
            if let Some(request_op::Request::RequestPut(put)) = &op.request {
                self.check_put_state(put)?;
            }
        }
        for op in ops {
            if let Some(request_op::Request::RequestRange(range)) = &op.request {
                if range.revision > self.revision {
                    return Err(EtcdError::FutureRevision);
                }
                if range.revision > 0 && range.revision < self.oldest_kept {
                    return Err(EtcdError::Compacted);
                }
            }
        }
        Ok(())
    }

    fn apply_txn(
        &mut self,
        revision: i64,
        txn: &pb::TxnRequest,
        path: &mut impl Iterator<Item = bool>,
        events: &mut Vec<Event>,
    ) -> Result<pb::TxnResponse, EtcdError> {
        let succeeded = path.next().expect("a path entry per txn");
        let mut responses = Vec::new();
        for op in branch(txn, succeeded) {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(range)) => {
                    response_op::Response::ResponseRange(self.range_within(range, events)?)
                }
                Some(request_op::Request::RequestPut(put)) => {
                    response_op::Response::ResponsePut(self.apply_put(revision, put, events))
                }
                Some(request_op::Request::RequestDeleteRange(delete)) => {
                    let range = KeyRange::new(&delete.key, &delete.range_end);
                    response_op::Response::ResponseDeleteRange(self.apply_delete(
                        revision,
                        &range,
                        delete.prev_kv,
                        events,
                    ))
                }
                Some(request_op::Request::RequestTxn(nested)) => {
                    response_op::Response::ResponseTxn(
                        self.apply_txn(revision, nested, path, events)?,
                    )
                }
                None => continue,
            };
            responses.push(pb::ResponseOp {
                response: Some(response),
            });
        }
        Ok(pb::TxnResponse {
            header: None,
            succeeded,
            responses,
        })
    }

    /// Drops the history before `revision`: older watches and reads become "compacted".
    pub fn compact(&mut self, revision: i64) -> Result<pb::CompactionResponse, EtcdError> {
        if revision < self.oldest_kept {
            return Err(EtcdError::Compacted);
        }
        if revision > self.revision {
            return Err(EtcdError::FutureRevision);
        }
        while self.history.front().is_some_and(|c| c.revision < revision) {
            self.drop_oldest();
        }
        self.oldest_kept = revision;
        Ok(pb::CompactionResponse {
            header: Some(self.header()),
        })
    }

    /// The changes from `from` on, for a watch catching up; `Err` when `from` is older than
    /// the history (the compacted answer).
    pub fn changes_since(&self, from: i64) -> Result<Vec<Arc<Change>>, EtcdError> {
        if from < self.oldest_kept {
            return Err(EtcdError::Compacted);
        }
        let first = self.history.partition_point(|c| c.revision < from);
        Ok(self.history.range(first..).cloned().collect())
    }

    // ---- leases ----

    pub fn grant(
        &mut self,
        now: Instant,
        id: i64,
        ttl: i64,
    ) -> Result<pb::LeaseGrantResponse, EtcdError> {
        if ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        let ttl = ttl.max(self.limits.min_ttl);
        let id = match id {
            0 => loop {
                // Positive, like etcd's, and never 0 ("no lease").
                let candidate = (rand::random::<u64>() >> 1) as i64;
                if candidate != 0 && !self.leases.contains_key(&candidate) {
                    break candidate;
                }
            },
            id if self.leases.contains_key(&id) => return Err(EtcdError::LeaseExists),
            id => id,
        };
        let deadline = now + Duration::from_secs(ttl as u64);
        self.leases.insert(
            id,
            Lease {
                ttl,
                deadline,
                keys: BTreeSet::new(),
            },
        );
        self.deadlines.insert((deadline, id));
        Ok(pb::LeaseGrantResponse {
            header: Some(self.header()),
            id,
            ttl,
            error: String::new(),
        })
    }

    /// Renews lease `id` for its TTL; `None` when it does not exist (or just expired).
    pub fn renew(&mut self, now: Instant, id: i64) -> Option<i64> {
        let lease = self.leases.get_mut(&id)?;
        if lease.deadline <= now {
            // Past its deadline but not yet reaped: it is dead, and a renewal cannot save it.
            let _ = self.revoke(id);
            return None;
        }
        self.deadlines.remove(&(lease.deadline, id));
        lease.deadline = now + Duration::from_secs(lease.ttl as u64);
        self.deadlines.insert((lease.deadline, id));
        Some(lease.ttl)
    }

    /// Ends lease `id` and deletes its keys, all at one revision; with a lock-delay, the keys
    /// stay that much longer (the lease itself is gone at once: no renewal, no new key).
    pub fn revoke(&mut self, id: i64) -> Result<pb::LeaseRevokeResponse, EtcdError> {
        self.end_lease(id, Instant::now())
    }

    fn end_lease(&mut self, id: i64, now: Instant) -> Result<pb::LeaseRevokeResponse, EtcdError> {
        if !self.leases.contains_key(&id) {
            return Err(EtcdError::LeaseNotFound);
        }
        // The keys go at a revision of their own, taken before anything changes; with a
        // lock-delay they stay for now and nothing is written.
        let revision = match self.limits.lock_delay.is_zero() {
            true => Some(self.begin()?),
            false => None,
        };
        let lease = self.leases.remove(&id).expect("checked above");
        self.deadlines.remove(&(lease.deadline, id));
        match revision {
            Some(revision) => {
                let mut events = Vec::with_capacity(lease.keys.len());
                self.delete_keys(
                    revision,
                    lease.keys.into_iter().collect(),
                    false,
                    &mut events,
                );
                self.commit(revision, events);
            }
            None => self.linger(id, lease.keys, now + self.limits.lock_delay),
        }
        Ok(pb::LeaseRevokeResponse {
            header: Some(self.header()),
        })
    }

    /// Keeps the keys of ended lease `lease` until `until`, each with its create_revision.
    fn linger(&mut self, lease: i64, keys: BTreeSet<Vec<u8>>, until: Instant) {
        let keys: Vec<(Vec<u8>, i64)> = keys
            .into_iter()
            .filter_map(|key| {
                let created = self.keys.get(&key)?.create_revision;
                Some((key, created))
            })
            .collect();
        if keys.is_empty() {
            return;
        }
        // In order of `until`, also when callers' clocks interleave.
        let at = self.lingering.partition_point(|l| l.until <= until);
        self.lingering.insert(at, Lingering { until, lease, keys });
    }

    /// Deletes the lingering keys whose lock-delay has passed, each only while it is still
    /// the incarnation its lease left (not deleted, nor deleted and created again since).
    fn end_lingering(&mut self, now: Instant) {
        while self.lingering.front().is_some_and(|l| l.until <= now) {
            let lingering = self.lingering.pop_front().expect("checked above");
            let keys: Vec<Vec<u8>> = lingering
                .keys
                .into_iter()
                .filter(|(key, created)| {
                    self.keys.get(key).is_some_and(|kv| {
                        kv.create_revision == *created && kv.lease == lingering.lease
                    })
                })
                .map(|(key, _)| key)
                .collect();
            if keys.is_empty() {
                continue;
            }
            let revision = match self.begin() {
                Ok(revision) => revision,
                Err(e) => {
                    tracing::error!("cannot delete keys after the lock-delay: {e}");
                    return;
                }
            };
            let mut events = Vec::with_capacity(keys.len());
            self.delete_keys(revision, keys, false, &mut events);
            self.commit(revision, events);
        }
    }

    /// The earliest lease deadline or end of a lock-delay, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let lease = self.deadlines.first().map(|&(deadline, _)| deadline);
        let lingering = self.lingering.front().map(|l| l.until);
        lease.into_iter().chain(lingering).min()
    }

    /// Revokes every lease whose deadline has passed; returns their IDs.
    pub fn expire(&mut self, now: Instant) -> Vec<i64> {
        let due: Vec<i64> = self
            .deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|&(_, id)| id)
            .collect();
        self.end_lingering(now);
        due.into_iter()
            .filter(|&id| match self.end_lease(id, now) {
                Ok(_) => true,
                Err(e) => {
                    tracing::error!(lease = %format!("{id:x}"), "cannot expire the lease: {e}");
                    false
                }
            })
            .collect()
    }

    pub fn time_to_live(
        &self,
        now: Instant,
        request: &pb::LeaseTimeToLiveRequest,
    ) -> pb::LeaseTimeToLiveResponse {
        let header = Some(self.header());
        match self.leases.get(&request.id) {
            None => pb::LeaseTimeToLiveResponse {
                header,
                id: request.id,
                ttl: -1,
                ..Default::default()
            },
            Some(lease) => pb::LeaseTimeToLiveResponse {
                header,
                id: request.id,
                ttl: lease.deadline.saturating_duration_since(now).as_secs() as i64,
                granted_ttl: lease.ttl,
                keys: if request.keys {
                    lease.keys.iter().cloned().collect()
                } else {
                    Vec::new()
                },
            },
        }
    }

    pub fn leases(&self) -> pb::LeaseLeasesResponse {
        let mut ids: Vec<i64> = self.leases.keys().copied().collect();
        ids.sort_unstable();
        pb::LeaseLeasesResponse {
            header: Some(self.header()),
            leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }
    }

    // ---- the v3lock service ----

    /// Puts the lock key `name/<lease hex>` (or finds it, when this lease already queued for
    /// `name`) and returns it with its create_revision.
    pub fn enqueue(&mut self, name: &[u8], lease: i64) -> Result<(Vec<u8>, i64), EtcdError> {
        if !self.leases.contains_key(&lease) {
            return Err(EtcdError::LeaseNotFound);
        }
        let mut key = name.to_vec();
        key.extend_from_slice(format!("/{lease:x}").as_bytes());
        if let Some(kv) = self.keys.get(&key) {
            return Ok((key, kv.create_revision));
        }
        let put = pb::PutRequest {
            key: key.clone(),
            lease,
            ..Default::default()
        };
        self.put(&put)?;
        Ok((key, self.revision))
    }

    /// Whether the lock key `key`, created at `created`, holds the lock `name`.
    pub fn turn(&self, name: &[u8], key: &[u8], created: i64) -> Turn {
        if self.keys.get(key).map(|kv| kv.create_revision) != Some(created) {
            return Turn::Gone;
        }
        // No key is older than one created at the first revision (a bound of 0 is none).
        if created <= 1 {
            return Turn::Owner;
        }
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        // The newest key of the lock created before this one: what a Range reads through
        // the lock's directory, without a scan of every waiter's key.
        let ahead = pb::RangeRequest {
            range_end: prefix_end(&prefix),
            key: prefix,
            max_create_revision: created - 1,
            sort_target: range_request::SortTarget::Create as i32,
            sort_order: range_request::SortOrder::Descend as i32,
            limit: 1,
            keys_only: true,
            ..Default::default()
        };
        match self
            .range(&ahead)
            .ok()
            .and_then(|answer| answer.kvs.into_iter().next())
        {
            Some(ahead) => Turn::Waiting(ahead.key.to_vec()),
            None => Turn::Owner,
        }
    }

    /// Wakes `waiter` (once) when any of `keys` is deleted. A waiter that went away is
    /// forgotten with the key it waited on, or sooner when others queue on that key.
    pub fn notify_on_delete(&mut self, keys: [&[u8]; 2], waiter: &Arc<Notify>) {
        for key in keys {
            let waiters = self.on_delete.entry(key.to_vec()).or_default();
            waiters.retain(|w| w.strong_count() > 0);
            waiters.push(Arc::downgrade(waiter));
        }
    }

    /// Deletes the lock key `key` if it is still the one created at `created`.
    pub fn withdraw(&mut self, key: &[u8], created: i64) {
        if self.keys.get(key).map(|kv| kv.create_revision) == Some(created) {
            let delete = pb::DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            };
            if let Err(e) = self.delete_range(&delete) {
                tracing::error!("cannot withdraw lock key: {e}");
            }
        }
    }
}

/// The previous version an event reports for `key`: the key as it was before this revision,
/// like etcd, even when an earlier operation of the same Txn already changed it (`events`
/// holds this revision's events so far; `current` is the key just before this operation).
fn before_revision(events: &[Event], key: &[u8], current: &Option<KeyValue>) -> Option<KeyValue> {
    let earlier = events
        .iter()
        .find(|e| e.kv.as_ref().is_some_and(|kv| kv.key == key));
    match earlier {
        Some(event) => event.prev_kv.clone(),
        None => current.clone(),
    }
}

fn branch(txn: &pb::TxnRequest, succeeded: bool) -> &[pb::RequestOp] {
    if succeeded {
        &txn.success
    } else {
        &txn.failure
    }
}

/// The operations a Txn runs, nested ones included, in order, for the branches in `path`.
fn chosen<'a>(
    txn: &'a pb::TxnRequest,
    path: &mut impl Iterator<Item = bool>,
    ops: &mut Vec<&'a pb::RequestOp>,
) {
    let succeeded = path.next().expect("a path entry per txn");
    for op in branch(txn, succeeded) {
        ops.push(op);
        if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
            chosen(nested, path, ops);
        }
    }
}

/// etcd's checks of a Put's form, made before anything is read: a key, and neither a value
/// nor a lease given along with the flag that keeps the old one.
fn check_put_form(request: &pb::PutRequest) -> Result<(), EtcdError> {
    if request.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

/// etcd's checks of a Txn's form, made before anything is read, over both branches and
/// nested Txns, in etcd's order: at most [`MAX_TXN_OPS`] compares or operations per branch,
/// then a key on every compare, then each operation's form.
fn check_txn_form(txn: &pb::TxnRequest) -> Result<(), EtcdError> {
    let widest = txn
        .compare
        .len()
        .max(txn.success.len())
        .max(txn.failure.len());
    if widest > MAX_TXN_OPS {
        return Err(EtcdError::TooManyOps);
    }
    if txn.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(request_op::Request::RequestPut(put)) => check_put_form(put)?,
            Some(request_op::Request::RequestRange(range)) if range.key.is_empty() => {
                return Err(EtcdError::EmptyKey);
            }
            Some(request_op::Request::RequestDeleteRange(delete)) if delete.key.is_empty() => {
                return Err(EtcdError::EmptyKey);
            }
            Some(request_op::Request::RequestTxn(nested)) => check_txn_form(nested)?,
            _ => {}
        }
    }
    Ok(())
}

/// etcd's rule that a Txn writes a key once: no two Puts of a key, and no Put inside a range
/// deleted at its level or above, nested Txns included (a key put in both branches of one
/// nested Txn is fine: only one runs).
///
/// Like etcd, this takes a delete's range literally: a range ending in `"\0"` ("to the
/// end") reads as an empty interval here, so a Put beside such a delete is let through.
fn check_txn_intervals(txn: &pb::TxnRequest) -> Result<(), EtcdError> {
    check_intervals(&txn.success)?;
    check_intervals(&txn.failure)?;
    Ok(())
}

/// A deleted range as etcd's duplicate check sees it: `[start, end)`, or one key.
type Deleted = (Vec<u8>, Option<Vec<u8>>);

fn hits(deleted: &[Deleted], key: &[u8]) -> bool {
    deleted.iter().any(|(start, end)| match end {
        None => start.as_slice() == key,
        Some(end) => start.as_slice() <= key && key < end.as_slice(),
    })
}

/// The keys `ops` put and the ranges they delete, nested Txns included, or the duplicate.
fn check_intervals(ops: &[pb::RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<Deleted>), EtcdError> {
    let mut deleted: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some((
                d.key.clone(),
                (!d.range_end.is_empty()).then(|| d.range_end.clone()),
            )),
            _ => None,
        })
        .collect();
    let mut puts = BTreeSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, deleted_then) = check_intervals(&nested.success)?;
        let (puts_else, deleted_else) = check_intervals(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || hits(&deleted, key) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        for key in &puts_else {
            if (puts.contains(key) && !puts_then.contains(key)) || hits(&deleted, key) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        deleted.extend(deleted_then);
        deleted.extend(deleted_else);
    }
    for op in ops {
        if let Some(request_op::Request::RequestPut(put)) = &op.request {
            if puts.contains(&put.key) || hits(&deleted, &put.key) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(put.key.clone());
        }
    }
    Ok((puts, deleted))
}

fn set_headers(txn: &mut pb::TxnResponse, header: &pb::ResponseHeader) {
    txn.header = Some(*header);
    for op in &mut txn.responses {
        match &mut op.response {
            Some(response_op::Response::ResponseRange(r)) => r.header = Some(*header),
            Some(response_op::Response::ResponsePut(r)) => r.header = Some(*header),
            Some(response_op::Response::ResponseDeleteRange(r)) => r.header = Some(*header),
            Some(response_op::Response::ResponseTxn(r)) => set_headers(r, header),
            None => {}
        }
    }
}

fn compare_kv(compare: &pb::Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let wanted = compare.target_union.as_ref();
    let ordering = match compare.target() {
        CompareTarget::Version => kv.version.cmp(match wanted {
            Some(TargetUnion::Version(v)) => v,
            _ => &0,
        }),
        CompareTarget::Create => kv.create_revision.cmp(match wanted {
            Some(TargetUnion::CreateRevision(v)) => v,
            _ => &0,
        }),
        CompareTarget::Mod => kv.mod_revision.cmp(match wanted {
            Some(TargetUnion::ModRevision(v)) => v,
            _ => &0,
        }),
        CompareTarget::Lease => kv.lease.cmp(match wanted {
            Some(TargetUnion::Lease(v)) => v,
            _ => &0,
        }),
        CompareTarget::Value => kv.value[..].cmp(match wanted {
            Some(TargetUnion::Value(v)) => v.as_slice(),
            _ => &[],
        }),
    };
    match compare.result() {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::NotEqual => ordering != Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
    }
}

/// Whether `kv` is within the create and mod revisions `request` bounds (0: no bound).
fn passes_filters(request: &pb::RangeRequest, kv: &KeyValue) -> bool {
    let within =
        |value: i64, min: i64, max: i64| (min == 0 || value >= min) && (max == 0 || value <= max);
    within(
        kv.mod_revision,
        request.min_mod_revision,
        request.max_mod_revision,
    ) && within(
        kv.create_revision,
        request.min_create_revision,
        request.max_create_revision,
    )
}

/// The order a Range answers in, as etcd's: by `target` in `order` (ascending when none is
/// given), ties by key, ascending; by key alone for the key target.
fn ordering(
    target: range_request::SortTarget,
    order: range_request::SortOrder,
) -> impl Fn(&&KeyValue, &&KeyValue) -> Ordering + Copy {
    use range_request::{SortOrder, SortTarget};
    let by_target = move |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    move |a: &&KeyValue, b: &&KeyValue| {
        let ordered = match order {
            SortOrder::Descend => by_target(b, a),
            _ => by_target(a, b),
        };
        ordered.then_with(|| a.key.cmp(&b.key))
    }
}

/// A Range ordered by create_revision reads its keys through their directories when it
/// spans at most this many.
const MAX_DIRS: usize = 16;

/// A directory only partly in such a Range is sifted key by key when it holds at most this
/// many keys; a larger one makes the Range read its range instead.
const MAX_SIFTED: usize = 64;

/// The live keys of one directory, by create_revision, then key. Most directories hold one
/// key (a lock of its own per session, each session's attempt key), which needs no tree.
enum DirKeys {
    One((i64, Bytes)),
    Many(BTreeSet<(i64, Bytes)>),
}

impl DirKeys {
    fn len(&self) -> usize {
        match self {
            DirKeys::One(_) => 1,
            DirKeys::Many(keys) => keys.len(),
        }
    }

    fn insert(&mut self, entry: (i64, Bytes)) {
        match self {
            DirKeys::One(one) => *self = DirKeys::Many(BTreeSet::from([one.clone(), entry])),
            DirKeys::Many(keys) => {
                keys.insert(entry);
            }
        }
    }

    /// Removes `entry`; whether the directory is now empty.
    fn remove(&mut self, entry: &(i64, Bytes)) -> bool {
        match self {
            DirKeys::One(one) => one == entry,
            DirKeys::Many(keys) => {
                keys.remove(entry);
                if keys.len() == 1
                    && let Some(last) = keys.pop_first()
                {
                    *self = DirKeys::One(last);
                }
                false
            }
        }
    }

    /// The keys within `bounds`, in create order or against it.
    fn walk(
        &self,
        bounds: impl RangeBounds<(i64, Bytes)>,
        descend: bool,
    ) -> Box<dyn Iterator<Item = &(i64, Bytes)> + '_> {
        match (self, descend) {
            (DirKeys::One(one), _) => Box::new(bounds.contains(one).then_some(one).into_iter()),
            (DirKeys::Many(keys), false) => Box::new(keys.range(bounds)),
            (DirKeys::Many(keys), true) => Box::new(keys.range(bounds).rev()),
        }
    }
}

/// The directory of `key`: up to and including its last `/`, empty for a key without one.
fn dir_of(key: &Bytes) -> Bytes {
    let end = key.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    key.slice(..end)
}

/// Past this many keys picked, a Range collects every key and selects among them.
const MAX_PICKED: usize = 256;

/// The first `limit + 1` keys offered in an order (all of them for no limit), kept as they
/// come: one more than a Range answers, to know whether there are more.
struct Pick<'a, F> {
    keep: Option<usize>,
    kvs: Vec<&'a KeyValue>,
    order: F,
}

impl<'a, F: Fn(&&'a KeyValue, &&'a KeyValue) -> Ordering> Pick<'a, F> {
    fn new(limit: usize, order: F) -> Self {
        let keep = (limit > 0).then(|| limit.saturating_add(1));
        let capacity = keep.filter(|&keep| keep <= MAX_PICKED).unwrap_or(0);
        Pick {
            keep,
            kvs: Vec::with_capacity(capacity),
            order,
        }
    }

    fn offer(&mut self, kv: &'a KeyValue) {
        let keep = match self.keep {
            Some(keep) if keep <= MAX_PICKED => keep,
            _ => return self.kvs.push(kv),
        };
        // Sorted, at most `keep` long: a key past the last of a full pick is out.
        if self.kvs.len() == keep {
            match self.kvs.last() {
                Some(last) if (self.order)(&kv, last) == Ordering::Less => {
                    self.kvs.truncate(keep - 1)
                }
                _ => return,
            }
        }
        let (Ok(at) | Err(at)) = self.kvs.binary_search_by(|held| (self.order)(held, &kv));
        self.kvs.insert(at, kv);
    }

    /// The last key picked, when no later one can be.
    fn last_if_full(&self) -> Option<&'a KeyValue> {
        match self.keep {
            Some(keep) if keep <= MAX_PICKED && self.kvs.len() == keep => self.kvs.last().copied(),
            _ => None,
        }
    }

    /// The keys picked, in no promised order.
    fn into_vec(mut self) -> Vec<&'a KeyValue> {
        if let Some(keep) = self.keep
            && self.kvs.len() > keep
        {
            self.kvs.select_nth_unstable_by(keep - 1, &self.order);
            self.kvs.truncate(keep);
        }
        self.kvs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        let (revisions, start) = Revisions::in_memory();
        State::new(
            revisions,
            start,
            Limits {
                min_ttl: 1,
                history: 100,
                history_bytes: 10_000,
                quota_bytes: usize::MAX,
                lock_delay: Duration::ZERO,
            },
        )
    }

    fn put(state: &mut State, key: &str, value: &str) -> i64 {
        let request = pb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        };
        state.put(&request).unwrap();
        state.revision()
    }

    fn get(state: &State, key: &str, revision: i64) -> Result<Option<KeyValue>, EtcdError> {
        let request = pb::RangeRequest {
            key: key.into(),
            revision,
            ..Default::default()
        };
        Ok(state.range(&request)?.kvs.into_iter().next())
    }

    #[test]
    fn revisions_versions_and_create_revisions_follow_etcd() {
        let mut s = state();
        assert_eq!(s.revision(), 1);
        let first = put(&mut s, "k", "a");
        assert_eq!(first, 2);
        put(&mut s, "k", "b");
        let kv = get(&s, "k", 0).unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        let delete = pb::DeleteRangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        };
        assert_eq!(s.delete_range(&delete).unwrap().deleted, 1);
        // Deleting nothing is not a change.
        assert_eq!(s.delete_range(&delete).unwrap().deleted, 0);
        assert_eq!(s.revision(), 4);
        put(&mut s, "k", "c");
        let kv = get(&s, "k", 0).unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.version), (5, 1));
    }

    #[test]
    fn past_revisions_read_as_they_were_until_compacted() {
        let mut s = state();
        let r1 = put(&mut s, "k", "a");
        let r2 = put(&mut s, "k", "b");
        s.delete_range(&pb::DeleteRangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(get(&s, "k", r1).unwrap().unwrap().value, &b"a"[..]);
        assert_eq!(get(&s, "k", r2).unwrap().unwrap().value, &b"b"[..]);
        assert_eq!(get(&s, "k", 1).unwrap(), None);
        assert_eq!(get(&s, "k", 0).unwrap(), None);
        assert_eq!(get(&s, "k", 99), Err(EtcdError::FutureRevision));
        s.compact(r2).unwrap();
        assert_eq!(get(&s, "k", r1), Err(EtcdError::Compacted));
        assert_eq!(get(&s, "k", r2).unwrap().unwrap().value, &b"b"[..]);
        assert_eq!(s.changes_since(r1).err(), Some(EtcdError::Compacted));
        assert_eq!(s.changes_since(r2).unwrap()[0].revision, r2);
    }

    #[test]
    fn a_range_at_a_past_revision_swaps_in_the_changed_keys_versions_in_key_order() {
        let mut s = state();
        for i in 0..50 {
            put(&mut s, &format!("r/{i:02}"), "old");
        }
        let then = s.revision();
        // After it: an update, a deletion, a new key between others and one at each end.
        put(&mut s, "r/10", "new");
        s.delete_range(&pb::DeleteRangeRequest {
            key: b"r/20".to_vec(),
            ..Default::default()
        })
        .unwrap();
        put(&mut s, "r/10a", "new");
        put(&mut s, "r/", "new");
        put(&mut s, "r/99", "new");
        let read = |revision: i64| {
            let answer = s
                .range(&pb::RangeRequest {
                    key: b"r/".to_vec(),
                    range_end: b"r0".to_vec(),
                    revision,
                    ..Default::default()
                })
                .unwrap();
            answer
                .kvs
                .into_iter()
                .map(|kv| {
                    let key = String::from_utf8(kv.key.to_vec()).unwrap();
                    (key, String::from_utf8(kv.value.to_vec()).unwrap())
                })
                .collect::<Vec<_>>()
        };
        let expected: Vec<(String, String)> = (0..50)
            .map(|i| (format!("r/{i:02}"), "old".to_string()))
            .collect();
        assert_eq!(read(then), expected);
        let now = read(0);
        assert_eq!(now.len(), 50 - 1 + 3);
        assert!(
            now.windows(2).all(|w| w[0].0 < w[1].0),
            "key order: {now:?}"
        );
        assert!(now.contains(&("r/10".into(), "new".into())));
        assert!(!now.iter().any(|(k, _)| k == "r/20"));
    }

    #[test]
    fn the_history_is_bounded_and_its_floor_moves_up() {
        let mut s = state();
        for i in 0..250 {
            put(&mut s, &format!("k{}", i % 7), "v");
        }
        assert!(s.history_events <= 100);
        assert_eq!(s.oldest_kept(), s.revision() - 99);
        assert!(s.changes_since(s.oldest_kept() - 1).is_err());
        assert_eq!(s.changes_since(s.oldest_kept()).unwrap().len(), 100);
    }

    #[test]
    fn large_values_bound_the_history_by_bytes_too() {
        let mut s = state();
        let big = "x".repeat(1_000);
        for _ in 0..20 {
            put(&mut s, "big", &big);
        }
        // Each change holds the value and the previous one: 2,003 bytes.
        assert!(s.history_size <= 10_000, "{} bytes kept", s.history_size);
        assert_eq!(s.changes_since(s.oldest_kept()).unwrap().len(), 4);
        assert!(s.changes_since(s.oldest_kept() - 1).is_err());
    }

    #[test]
    fn ranges_sort_limit_filter_and_count_like_etcd() {
        let mut s = state();
        for (key, value) in [("a/1", "z"), ("a/2", "y"), ("a/3", "x"), ("b", "w")] {
            put(&mut s, key, value);
        }
        put(&mut s, "a/1", "zz");
        let request = pb::RangeRequest {
            key: b"a/".to_vec(),
            range_end: prefix_end(b"a/"),
            sort_target: range_request::SortTarget::Mod as i32,
            sort_order: range_request::SortOrder::Descend as i32,
            limit: 2,
            ..Default::default()
        };
        let response = s.range(&request).unwrap();
        let keys: Vec<_> = response.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, [b"a/1".to_vec(), b"a/3".to_vec()]);
        assert!(response.more);
        assert_eq!(response.count, 3);

        let filtered = pb::RangeRequest {
            max_create_revision: 3,
            sort_target: range_request::SortTarget::Value as i32,
            sort_order: range_request::SortOrder::None as i32,
            limit: 0,
            keys_only: true,
            ..request.clone()
        };
        let response = s.range(&filtered).unwrap();
        let keys: Vec<_> = response.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, [b"a/2".to_vec(), b"a/1".to_vec()]);
        assert!(response.kvs.iter().all(|kv| kv.value.is_empty()));

        let all = pb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        };
        let response = s.range(&all).unwrap();
        assert_eq!((response.count, response.kvs.len()), (4, 0));
        assert_eq!(
            s.range(&pb::RangeRequest::default()).err(),
            Some(EtcdError::EmptyKey)
        );
    }

    /// What a Range at `revision` answers, worked out the plain way from a copy of the keys
    /// as they were then: every key of the range, filtered, sorted in full, cut to the limit.
    fn range_of_snapshot(
        keys: &BTreeMap<Vec<u8>, KeyValue>,
        request: &pb::RangeRequest,
    ) -> (Vec<Vec<u8>>, bool, i64) {
        use range_request::{SortOrder, SortTarget};
        let range = KeyRange::new(&request.key, &request.range_end);
        let mut kvs: Vec<&KeyValue> = keys.values().filter(|kv| range.contains(&kv.key)).collect();
        let count = kvs.len() as i64;
        let bound = |v: i64, min: i64, max: i64| (min == 0 || v >= min) && (max == 0 || v <= max);
        kvs.retain(|kv| {
            bound(
                kv.mod_revision,
                request.min_mod_revision,
                request.max_mod_revision,
            ) && bound(
                kv.create_revision,
                request.min_create_revision,
                request.max_create_revision,
            )
        });
        let filtered = [
            request.min_mod_revision,
            request.max_mod_revision,
            request.min_create_revision,
            request.max_create_revision,
        ] != [0; 4];
        let limit = request.limit as usize;
        if limit > 0 && request.sort_order() == SortOrder::None && !filtered {
            kvs.truncate(limit + 1);
        }
        let value = |kv: &KeyValue| match request.sort_target() {
            SortTarget::Key => (0, kv.key.to_vec()),
            SortTarget::Version => (kv.version, Vec::new()),
            SortTarget::Create => (kv.create_revision, Vec::new()),
            SortTarget::Mod => (kv.mod_revision, Vec::new()),
            SortTarget::Value => (0, kv.value.to_vec()),
        };
        kvs.sort_by(|a, b| {
            let by = value(a).cmp(&value(b));
            match request.sort_order() {
                SortOrder::Descend => by.reverse(),
                _ => by,
            }
            .then(a.key.cmp(&b.key))
        });
        let more = limit > 0 && kvs.len() > limit;
        if limit > 0 {
            kvs.truncate(limit);
        }
        (kvs.iter().map(|kv| kv.key.to_vec()).collect(), more, count)
    }

    proptest::proptest! {
        /// Ranges over a history of puts and deletes, at any kept revision, with every
        /// order, limit and filter, answer as the plain evaluation of the keys then does.
        #[test]
        fn ranges_at_any_revision_answer_as_the_keys_then_do(
            writes in proptest::collection::vec((0u8..12, 0u8..4, 0u8..10), 1..60),
            reads in proptest::collection::vec(
                (0usize..12, 0usize..15, 0i32..5, 0i32..3, 0usize..5, 0i64..4, 0i64..6, 0i64..4),
                1..40,
            ),
        ) {
            let mut s = state();
            let mut then = BTreeMap::new();
            then.insert(s.revision(), s.keys.clone());
            // Keys in four directories ("", "d/", "d/s/", "e/"), and more under some of them.
            for (key, value, kind) in writes {
                let key = match key {
                    0..3 => format!("k{key}"),
                    3..6 => format!("d/k{key}"),
                    6..9 => format!("d/s/k{key}"),
                    _ => format!("e/k{key}"),
                };
                match kind {
                    0..3 => {
                        s.delete_range(&pb::DeleteRangeRequest { key: key.into(), ..Default::default() }).unwrap();
                    }
                    // Keys created in one Txn share a create_revision.
                    3 => {
                        let all = ["", "b", "c", "/c"].map(|end| put_op(&format!("{key}{end}")));
                        s.txn(&pb::TxnRequest { success: all.to_vec(), ..Default::default() }).unwrap();
                    }
                    _ => {
                        put(&mut s, &key, &format!("v{value}"));
                    }
                }
                then.insert(s.revision(), s.keys.clone());
            }
            let bounds = ["d", "d/", "d/k", "d/k4", "d/s/", "d/s0", "d0", "e/", "e0", "k", "k1", "z"];
            for (from, to, target, order, limit, back, create, max_mod) in reads {
                let revision = (s.revision() - back).max(s.oldest_kept());
                let start = bounds[from].as_bytes();
                let request = pb::RangeRequest {
                    key: start.to_vec(),
                    range_end: match to {
                        12 => vec![0],
                        13 => prefix_end(start),
                        14 => Vec::new(),
                        to => bounds[to].into(),
                    },
                    sort_target: target,
                    sort_order: order,
                    limit: [0, 1, 2, 3, 300][limit],
                    revision: if back == 0 { 0 } else { revision },
                    min_create_revision: if matches!(create, 1 | 2) { s.revision() - create * 5 } else { 0 },
                    max_create_revision: if create >= 3 { s.revision() - (create - 2) * 3 } else { 0 },
                    max_mod_revision: if max_mod == 0 { 0 } else { s.revision() - max_mod * 3 },
                    keys_only: true,
                    ..Default::default()
                };
                let at = if back == 0 { s.revision() } else { revision };
                let answer = s.range(&request).unwrap();
                let keys: Vec<Vec<u8>> = answer.kvs.iter().map(|kv| kv.key.to_vec()).collect();
                proptest::prop_assert_eq!(
                    (keys, answer.more, answer.count),
                    range_of_snapshot(&then[&at], &request),
                    "{:?}", request
                );
            }
        }
    }

    /// A lock's waiter asks for the newest keys of its prefix created before its own; keys
    /// of other directories created in between are not in the way.
    #[test]
    fn the_newest_keys_of_a_prefix_are_found_past_newer_keys_elsewhere() {
        let mut s = state();
        let first = put(&mut s, "lock/a", "");
        let second = put(&mut s, "lock/b", "");
        for i in 0..300 {
            put(&mut s, &format!("other/{i:03}"), "");
        }
        let third = put(&mut s, "lock/c", "");
        let newest = |s: &State, max_create_revision: i64, revision: i64| {
            let answer = s
                .range(&pb::RangeRequest {
                    key: b"lock/".to_vec(),
                    range_end: prefix_end(b"lock/"),
                    max_create_revision,
                    sort_target: range_request::SortTarget::Create as i32,
                    sort_order: range_request::SortOrder::Descend as i32,
                    limit: 2,
                    revision,
                    ..Default::default()
                })
                .unwrap();
            let keys: Vec<_> = answer.kvs.iter().map(|kv| kv.create_revision).collect();
            (keys, answer.more, answer.count)
        };
        assert_eq!(newest(&s, 0, 0), (vec![third, second], true, 3));
        assert_eq!(newest(&s, third - 1, 0), (vec![second, first], false, 3));
        s.delete_range(&pb::DeleteRangeRequest {
            key: b"lock/b".to_vec(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(newest(&s, 0, 0), (vec![third, first], false, 2));
        // As it was before the deletion: the deleted key's version then is answered.
        assert_eq!(newest(&s, 0, third), (vec![third, second], true, 3));
    }

    #[test]
    fn a_limit_past_what_is_picked_one_by_one_selects_among_all_keys() {
        let mut s = state();
        let mut revisions = Vec::new();
        for i in 0..600 {
            revisions.push((
                put(&mut s, &format!("p/{:03}", (i * 7) % 600), "v"),
                (i * 7) % 600,
            ));
        }
        let limit = MAX_PICKED + 14;
        let answer = s
            .range(&pb::RangeRequest {
                key: b"p/".to_vec(),
                range_end: prefix_end(b"p/"),
                sort_target: range_request::SortTarget::Create as i32,
                sort_order: range_request::SortOrder::Descend as i32,
                limit: limit as i64,
                ..Default::default()
            })
            .unwrap();
        let expected: Vec<Vec<u8>> = revisions
            .iter()
            .rev()
            .take(limit)
            .map(|(_, i)| format!("p/{i:03}").into_bytes())
            .collect();
        let keys: Vec<Vec<u8>> = answer.kvs.iter().map(|kv| kv.key.to_vec()).collect();
        assert_eq!(keys, expected);
        assert!(answer.more);
        assert_eq!(answer.count, 600);
    }

    fn create_is_zero(key: &str) -> pb::Compare {
        pb::Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: key.into(),
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
            ..Default::default()
        }
    }

    fn put_op(key: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(request_op::Request::RequestPut(pb::PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_txn_writes_at_one_revision_and_takes_the_branch_its_compares_choose() {
        let mut s = state();
        let txn = pb::TxnRequest {
            compare: vec![create_is_zero("x")],
            success: vec![put_op("x"), put_op("y")],
            failure: vec![pb::RequestOp {
                request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                    key: b"x".to_vec(),
                    ..Default::default()
                })),
            }],
        };
        let first = s.txn(&txn).unwrap();
        assert!(first.succeeded);
        assert_eq!(s.revision(), 2);
        let x = get(&s, "x", 0).unwrap().unwrap();
        let y = get(&s, "y", 0).unwrap().unwrap();
        assert_eq!((x.mod_revision, y.mod_revision), (2, 2));
        let second = s.txn(&txn).unwrap();
        assert!(!second.succeeded);
        assert_eq!(s.revision(), 2, "a read-only branch is not a change");
        let Some(response_op::Response::ResponseRange(range)) = &second.responses[0].response
        else {
            panic!("expected a range response: {second:?}");
        };
        assert_eq!(range.kvs[0].create_revision, 2);

        let twice = pb::TxnRequest {
            success: vec![put_op("z"), put_op("z")],
            ..Default::default()
        };
        assert_eq!(s.txn(&twice).err(), Some(EtcdError::DuplicateKey));
        let value_compare_on_missing = pb::TxnRequest {
            compare: vec![pb::Compare {
                target: compare::CompareTarget::Value as i32,
                key: b"missing".to_vec(),
                target_union: Some(compare::TargetUnion::Value(Vec::new())),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(!s.txn(&value_compare_on_missing).unwrap().succeeded);
    }

    #[test]
    fn a_put_with_an_unknown_lease_changes_nothing() {
        let mut s = state();
        let request = pb::PutRequest {
            key: b"k".to_vec(),
            lease: 42,
            ..Default::default()
        };
        assert_eq!(s.put(&request).err(), Some(EtcdError::LeaseNotFound));
        assert_eq!(s.revision(), 1);
        let txn = pb::TxnRequest {
            success: vec![
                put_op("a"),
                pb::RequestOp {
                    request: Some(request_op::Request::RequestPut(request)),
                },
            ],
            ..Default::default()
        };
        assert_eq!(s.txn(&txn).err(), Some(EtcdError::LeaseNotFound));
        assert_eq!(get(&s, "a", 0).unwrap(), None);
    }

    #[test]
    fn leases_raise_short_ttls_expire_at_their_deadline_and_take_their_keys() {
        let mut s = state();
        let now = Instant::now();
        let grant = s.grant(now, 0, 0).unwrap();
        assert_eq!(grant.ttl, 1, "raised to the minimum");
        assert!(grant.id > 0);
        assert_eq!(
            s.grant(now, grant.id, 5).err(),
            Some(EtcdError::LeaseExists)
        );
        let request = pb::PutRequest {
            key: b"owned".to_vec(),
            lease: grant.id,
            ..Default::default()
        };
        s.put(&request).unwrap();
        let ttl = s.time_to_live(
            now,
            &pb::LeaseTimeToLiveRequest {
                id: grant.id,
                keys: true,
            },
        );
        assert_eq!(ttl.keys, [b"owned".to_vec()]);
        assert_eq!(ttl.granted_ttl, 1);

        let half = now + Duration::from_millis(500);
        assert!(s.expire(half).is_empty());
        assert_eq!(s.renew(half, grant.id), Some(1));
        // Renewed at +0.5 s: alive at +1.4 s, dead at +1.5 s.
        assert!(s.expire(now + Duration::from_millis(1400)).is_empty());
        let before = s.revision();
        assert_eq!(s.expire(now + Duration::from_millis(1500)), vec![grant.id]);
        assert_eq!(get(&s, "owned", 0).unwrap(), None);
        assert_eq!(s.revision(), before + 1);
        assert_eq!(s.renew(now, grant.id), None);
        assert_eq!(s.revoke(grant.id).err(), Some(EtcdError::LeaseNotFound));
        let gone = s.time_to_live(
            now,
            &pb::LeaseTimeToLiveRequest {
                id: grant.id,
                keys: false,
            },
        );
        assert_eq!(gone.ttl, -1);
        assert_eq!(
            s.grant(now, 0, MAX_LEASE_TTL + 1).err(),
            Some(EtcdError::LeaseTtlTooLarge)
        );
    }

    #[test]
    fn with_a_lock_delay_an_ended_lease_leaves_its_keys_for_the_delay() {
        let mut s = state();
        s.limits.lock_delay = Duration::from_secs(3);
        let now = Instant::now();
        let put_leased = |s: &mut State, key: &str, lease: i64| {
            let request = pb::PutRequest {
                key: key.into(),
                lease,
                ..Default::default()
            };
            s.put(&request).unwrap();
        };
        let expiring = s.grant(now, 0, 1).unwrap().id;
        put_leased(&mut s, "/lock/a", expiring);
        put_leased(&mut s, "/lock/reused", expiring);
        let revoked = s.grant(now, 0, 10).unwrap().id;
        put_leased(&mut s, "/lock/b", revoked);

        let ended = now + Duration::from_secs(1);
        assert_eq!(s.expire(ended), vec![expiring]);
        let before = s.revision();
        // The lease is gone at once: no renewal, no new key on it, TTL -1.
        assert_eq!(s.renew(ended, expiring), None);
        let ttl = pb::LeaseTimeToLiveRequest {
            id: expiring,
            keys: false,
        };
        assert_eq!(s.time_to_live(ended, &ttl).ttl, -1);
        // Its keys stay, with the lease they had.
        assert_eq!(get(&s, "/lock/a", 0).unwrap().unwrap().lease, expiring);
        // One is deleted and created again meanwhile: that new incarnation is not the lease's.
        let delete = pb::DeleteRangeRequest {
            key: b"/lock/reused".to_vec(),
            ..Default::default()
        };
        s.delete_range(&delete).unwrap();
        put(&mut s, "/lock/reused", "new");
        let reused = s.revision();
        assert!(reused > before);

        // Revoked (at the real clock's now, before `ended`): its key stays 3 s from then.
        let revoked_at = Instant::now();
        assert!(s.revoke(revoked).is_ok());
        assert!(get(&s, "/lock/b", 0).unwrap().is_some());
        let next = s.next_deadline().unwrap();
        assert!(
            next >= revoked_at + Duration::from_secs(3) && next < ended + Duration::from_secs(3)
        );

        s.expire(revoked_at + Duration::from_millis(2900));
        assert!(get(&s, "/lock/b", 0).unwrap().is_some());
        s.expire(ended + Duration::from_millis(2999));
        assert_eq!(get(&s, "/lock/b", 0).unwrap(), None);
        assert!(get(&s, "/lock/a", 0).unwrap().is_some());
        s.expire(ended + Duration::from_secs(3));
        assert_eq!(get(&s, "/lock/a", 0).unwrap(), None);
        assert_eq!(
            get(&s, "/lock/reused", 0).unwrap().unwrap().mod_revision,
            reused
        );
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn moving_a_key_to_another_lease_detaches_it_from_the_first() {
        let mut s = state();
        let now = Instant::now();
        let a = s.grant(now, 0, 10).unwrap().id;
        let b = s.grant(now, 0, 10).unwrap().id;
        for lease in [a, b] {
            let request = pb::PutRequest {
                key: b"k".to_vec(),
                lease,
                ..Default::default()
            };
            s.put(&request).unwrap();
        }
        s.revoke(a).unwrap();
        assert!(get(&s, "k", 0).unwrap().is_some(), "the key moved to b");
        s.revoke(b).unwrap();
        assert!(get(&s, "k", 0).unwrap().is_none());
    }

    #[test]
    fn lock_keys_queue_in_create_revision_order() {
        let mut s = state();
        let now = Instant::now();
        let a = s.grant(now, 0, 10).unwrap().id;
        let b = s.grant(now, 0, 10).unwrap().id;
        let (key_a, rev_a) = s.enqueue(b"/l", a).unwrap();
        let (key_b, rev_b) = s.enqueue(b"/l", b).unwrap();
        assert_eq!(key_a, format!("/l/{a:x}").into_bytes());
        assert!(rev_b > rev_a);
        assert_eq!(s.enqueue(b"/l", a).unwrap(), (key_a.clone(), rev_a));
        assert_eq!(s.turn(b"/l", &key_a, rev_a), Turn::Owner);
        assert_eq!(s.turn(b"/l", &key_b, rev_b), Turn::Waiting(key_a.clone()));
        // Behind the newest key ahead, not the oldest.
        let c = s.grant(now, 0, 10).unwrap().id;
        let (key_c, rev_c) = s.enqueue(b"/l", c).unwrap();
        assert_eq!(s.turn(b"/l", &key_c, rev_c), Turn::Waiting(key_b.clone()));
        s.withdraw(&key_a, rev_a);
        assert_eq!(s.turn(b"/l", &key_a, rev_a), Turn::Gone);
        assert_eq!(s.turn(b"/l", &key_b, rev_b), Turn::Owner);
        assert_eq!(s.enqueue(b"/l", 7).err(), Some(EtcdError::LeaseNotFound));
    }

    /// Whether `waiter` was woken since it registered, without waiting.
    fn woken(waiter: &Notify) -> bool {
        use futures::FutureExt as _;
        waiter.notified().now_or_never().is_some()
    }

    #[test]
    fn a_lock_waiter_wakes_only_when_the_key_ahead_of_it_or_its_own_goes() {
        let mut s = state();
        let now = Instant::now();
        let leases: Vec<i64> = (0..4).map(|_| s.grant(now, 0, 10).unwrap().id).collect();
        let queued: Vec<(Vec<u8>, i64)> = leases
            .iter()
            .map(|&lease| s.enqueue(b"/l", lease).unwrap())
            .collect();
        let waiters: Vec<Arc<Notify>> = (0..4).map(|_| Arc::new(Notify::new())).collect();
        for (i, (key, created)) in queued.iter().enumerate().skip(1) {
            let Turn::Waiting(ahead) = s.turn(b"/l", key, *created) else {
                panic!("waiter {i} is not waiting");
            };
            assert_eq!(
                ahead,
                queued[i - 1].0,
                "waiter {i} waits on the key just ahead"
            );
            s.notify_on_delete([&ahead, key], &waiters[i]);
        }
        // Changes elsewhere, even under the lock's prefix, wake nobody.
        for key in ["other", "/l/zzz"] {
            let put = pb::PutRequest {
                key: key.into(),
                ..Default::default()
            };
            s.put(&put).unwrap();
        }
        assert!(!waiters.iter().any(|w| woken(w)));
        // The holder unlocks: only the next in line wakes.
        s.withdraw(&queued[0].0, queued[0].1);
        assert!(woken(&waiters[1]));
        assert!(!woken(&waiters[2]) && !woken(&waiters[3]));
        // A waiter in the middle gives up: the one behind it wakes, to wait on the one ahead.
        s.withdraw(&queued[2].0, queued[2].1);
        assert!(woken(&waiters[3]));
        let Turn::Waiting(ahead) = s.turn(b"/l", &queued[3].0, queued[3].1) else {
            panic!("the last waiter is not waiting");
        };
        assert_eq!(ahead, queued[1].0);
        // A waiter whose own key goes with its lease wakes to find it gone.
        s.notify_on_delete([&ahead, &queued[3].0], &waiters[3]);
        s.revoke(leases[3]).unwrap();
        assert!(woken(&waiters[3]));
        assert_eq!(s.turn(b"/l", &queued[3].0, queued[3].1), Turn::Gone);
        assert!(!woken(&waiters[1]));
    }

    #[test]
    fn key_ranges_follow_etcds_conventions() {
        let single = KeyRange::new(b"a", b"");
        assert!(single.contains(b"a") && !single.contains(b"ab"));
        let from = KeyRange::new(b"b", b"\0");
        assert!(from.contains(b"zzz") && !from.contains(b"a"));
        let empty = KeyRange::new(b"b", b"a");
        assert!(empty.bounds().is_none() && !empty.contains(b"b"));
        let prefix = KeyRange::new(b"p/", &prefix_end(b"p/"));
        assert!(prefix.contains(b"p/x") && !prefix.contains(b"q"));
    }
}
