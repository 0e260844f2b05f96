//! The change feed, indexed by key: a committed change goes only to the watch streams with a
//! watcher whose range covers one of its keys, as etcd's watcher groups do. Single-key
//! watchers (every lock waiter's) are found by hash; range watchers (prefix watches of the
//! tools) by a scan of the ranges alone. A hand-over therefore costs the same with 8 waiters
//! or 1,000, and idle watchers on other keys cost nothing.
//!
//! Invariant: from the moment a watcher is added (with the state locked), every change
//! covering its range is either queued on its stream's feed, in commit order, or, if the
//! feed was full, the feed is marked with the first revision it missed; nothing after that
//! revision is queued until the stream has caught up from the history ([`Feed::resume`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::mpsc;

use super::state::{Change, KeyRange};

/// Changes a stream may have queued before it counts as left behind and catches up from the
/// history instead.
const FEED_CAPACITY: usize = 4096;

/// A watch stream's identity in the index.
pub type StreamId = u64;

/// The index of watchers and the feeds of their streams; lives in the state, behind its lock.
#[derive(Default)]
pub struct Fanout {
    next_stream: StreamId,
    streams: HashMap<StreamId, Outlet>,
    /// Single-key watchers: key → streams watching it, with how many watchers each has there.
    keys: HashMap<Vec<u8>, HashMap<StreamId, usize>>,
    /// Range watchers, by stream and watch ID.
    ranges: HashMap<(StreamId, i64), KeyRange>,
    /// Watchers indexed, single-key and range: kept as a count so that a scrape of
    /// `/metrics` does not walk every stream with the state locked.
    watchers: usize,
}

/// The sending end of one stream's feed.
struct Outlet {
    queue: mpsc::Sender<Arc<Change>>,
    /// First revision not queued because the feed was full; 0 while nothing was missed.
    missed: Arc<AtomicI64>,
    /// This stream's watchers and their ranges.
    watchers: HashMap<i64, KeyRange>,
}

/// What a stream's feed gives next.
#[derive(Debug)]
pub enum Received {
    /// A change that covers one of the stream's watchers, in commit order.
    Change(Arc<Change>),
    /// The feed was full: changes from this revision on were not queued and must come from
    /// the history.
    Missed(i64),
    /// The state is gone.
    Closed,
}

/// The receiving end of one stream's feed.
pub struct Feed {
    id: StreamId,
    queue: mpsc::Receiver<Arc<Change>>,
    missed: Arc<AtomicI64>,
}

impl Feed {
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The next change, or the news that the feed missed some.
    pub async fn recv(&mut self) -> Received {
        if let Some(received) = self.try_recv() {
            return received;
        }
        // Empty and nothing missed: the feed can only be marked missed once it is full, so
        // the next thing to come is a queued change.
        match self.queue.recv().await {
            Some(change) => Received::Change(change),
            None => Received::Closed,
        }
    }

    /// Like [`Feed::recv`], without waiting: `None` when nothing is queued or missed.
    pub fn try_recv(&mut self) -> Option<Received> {
        match self.queue.try_recv() {
            Ok(change) => return Some(Received::Change(change)),
            Err(mpsc::error::TryRecvError::Disconnected) => return Some(Received::Closed),
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        match self.missed.load(Ordering::Acquire) {
            0 => None,
            revision => Some(Received::Missed(revision)),
        }
    }

    /// Takes the feed out of its missed state; call it with the state locked, after taking
    /// the history from the revision [`Received::Missed`] gave, so that the feed carries
    /// exactly the changes after that history.
    pub fn resume(&mut self) {
        self.missed.store(0, Ordering::Release);
    }
}

impl Fanout {
    /// A feed for a new stream; it receives nothing until a watcher is added.
    pub fn open(&mut self) -> Feed {
        let id = self.next_stream;
        self.next_stream += 1;
        let (queue, receiver) = mpsc::channel(FEED_CAPACITY);
        let missed = Arc::new(AtomicI64::new(0));
        self.streams.insert(
            id,
            Outlet {
                queue,
                missed: missed.clone(),
                watchers: HashMap::new(),
            },
        );
        Feed {
            id,
            queue: receiver,
            missed,
        }
    }

    /// Forgets a stream and all its watchers.
    pub fn close(&mut self, stream: StreamId) {
        if let Some(outlet) = self.streams.remove(&stream) {
            for (watch_id, range) in outlet.watchers {
                self.unindex(stream, watch_id, &range);
            }
        }
    }

    /// Sends the changes covering `range` to `stream`'s feed as watcher `watch_id`.
    pub fn add(&mut self, stream: StreamId, watch_id: i64, range: &KeyRange) {
        if self
            .streams
            .get(&stream)
            .is_some_and(|o| o.watchers.contains_key(&watch_id))
        {
            self.remove(stream, watch_id);
        }
        let Some(outlet) = self.streams.get_mut(&stream) else {
            return;
        };
        outlet.watchers.insert(watch_id, range.clone());
        self.watchers += 1;
        match range.single_key() {
            Some(key) => {
                *self
                    .keys
                    .entry(key.to_vec())
                    .or_default()
                    .entry(stream)
                    .or_default() += 1;
            }
            None => {
                self.ranges.insert((stream, watch_id), range.clone());
            }
        }
    }

    /// Stops sending changes for watcher `watch_id` of `stream`.
    pub fn remove(&mut self, stream: StreamId, watch_id: i64) {
        let Some(outlet) = self.streams.get_mut(&stream) else {
            return;
        };
        if let Some(range) = outlet.watchers.remove(&watch_id) {
            self.unindex(stream, watch_id, &range);
        }
    }

    fn unindex(&mut self, stream: StreamId, watch_id: i64, range: &KeyRange) {
        self.watchers -= 1;
        match range.single_key() {
            Some(key) => {
                if let Some(streams) = self.keys.get_mut(key) {
                    if let Some(count) = streams.get_mut(&stream) {
                        *count -= 1;
                        if *count == 0 {
                            streams.remove(&stream);
                        }
                    }
                    if streams.is_empty() {
                        self.keys.remove(key);
                    }
                }
            }
            None => {
                self.ranges.remove(&(stream, watch_id));
            }
        }
    }

    /// Queues `change` on the feed of every stream with a watcher that covers one of its
    /// keys; a full feed is marked with the change's revision instead.
    pub fn publish(&mut self, change: &Arc<Change>) {
        if self.streams.is_empty() {
            return;
        }
        // Usually one stream or none: a short list, sorted and deduplicated, rather than a
        // set allocated for every commit.
        let mut targets: Vec<StreamId> = Vec::new();
        for event in &change.events {
            let Some(kv) = &event.kv else { continue };
            if let Some(streams) = self.keys.get(&kv.key[..]) {
                targets.extend(streams.keys().copied());
            }
            targets.extend(
                self.ranges
                    .iter()
                    .filter(|(_, range)| range.contains(&kv.key))
                    .map(|((stream, _), _)| *stream),
            );
        }
        if targets.is_empty() {
            return;
        }
        targets.sort_unstable();
        targets.dedup();
        let mut gone = Vec::new();
        for stream in targets {
            let Some(outlet) = self.streams.get(&stream) else {
                continue;
            };
            if outlet.missed.load(Ordering::Acquire) != 0 {
                // Already behind: it will read this change from the history.
                continue;
            }
            match outlet.queue.try_send(change.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    outlet.missed.store(change.revision, Ordering::Release);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(stream),
            }
        }
        for stream in gone {
            self.close(stream);
        }
    }

    /// Watchers indexed, single-key and range.
    pub fn watchers(&self) -> usize {
        debug_assert_eq!(
            self.watchers,
            self.streams
                .values()
                .map(|o| o.watchers.len())
                .sum::<usize>()
        );
        self.watchers
    }

    /// Streams open.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::mvccpb::{Event, KeyValue};

    fn change(revision: i64, key: &str) -> Arc<Change> {
        Arc::new(Change {
            revision,
            events: vec![Event {
                kv: Some(KeyValue {
                    key: key.as_bytes().to_vec().into(),
                    mod_revision: revision,
                    ..Default::default()
                }),
                ..Default::default()
            }],
        })
    }

    fn queued(feed: &mut Feed) -> Vec<i64> {
        let mut revisions = Vec::new();
        while let Some(Received::Change(change)) = feed.try_recv() {
            revisions.push(change.revision);
        }
        revisions
    }

    #[test]
    fn a_change_reaches_only_the_streams_that_watch_its_key() {
        let mut fanout = Fanout::default();
        let mut waiter = fanout.open();
        let mut prefix = fanout.open();
        let mut idle = fanout.open();
        fanout.add(waiter.id(), 0, &KeyRange::new(b"/l/1", b""));
        fanout.add(prefix.id(), 0, &KeyRange::new(b"/l/", b"/l0"));
        fanout.add(idle.id(), 0, &KeyRange::new(b"/other", b""));
        fanout.publish(&change(2, "/l/1"));
        fanout.publish(&change(3, "/l/2"));
        fanout.publish(&change(4, "/elsewhere"));
        assert_eq!(queued(&mut waiter), [2]);
        assert_eq!(queued(&mut prefix), [2, 3]);
        assert_eq!(queued(&mut idle), Vec::<i64>::new());

        fanout.remove(waiter.id(), 0);
        fanout.publish(&change(5, "/l/1"));
        assert_eq!(queued(&mut waiter), Vec::<i64>::new(), "removed");
        fanout.close(prefix.id());
        assert!(fanout.ranges.is_empty() && fanout.keys.len() == 1);
        assert_eq!(fanout.watchers(), 1);
    }

    #[test]
    fn a_full_feed_is_marked_with_the_first_revision_it_missed() {
        let mut fanout = Fanout::default();
        let mut feed = fanout.open();
        fanout.add(feed.id(), 7, &KeyRange::new(b"k", b""));
        let last = FEED_CAPACITY as i64 + 3;
        for revision in 1..=last {
            fanout.publish(&change(revision, "k"));
        }
        assert_eq!(queued(&mut feed).len(), FEED_CAPACITY);
        let first_missed = FEED_CAPACITY as i64 + 1;
        assert!(matches!(feed.try_recv(), Some(Received::Missed(r)) if r == first_missed));
        // Nothing more is queued while it is behind, and after it resumes the feed goes on.
        fanout.publish(&change(last + 1, "k"));
        feed.resume();
        fanout.publish(&change(last + 2, "k"));
        assert_eq!(queued(&mut feed), [last + 2]);
        assert!(feed.try_recv().is_none());
    }
}
