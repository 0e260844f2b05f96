//! The Watch service: one task per stream, holding that stream's watchers.
//!
//! Invariant: a watcher has reported every matching change before `next`, and nothing at or
//! after it. A watcher is created with the state locked: its past changes come from the
//! history, and the stream's feed (`fanout`), which carries only changes some watcher of the
//! stream covers, has everything after; the overlap is skipped by `next`. A stream whose feed
//! filled up learns the first revision it missed, resumes the feed with the state locked and
//! catches up from the history, or, if the history no longer reaches back that far, gets
//! etcd's compacted answer.
//!
//! Invariant: a progress answer (asked for or periodic) is sent only after every change at or
//! below its header's revision has been delivered on the stream.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::{Duration, MissedTickBehavior, interval};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::error::EtcdError;
use super::fanout::{Feed, Received, StreamId};
use super::metrics::Method;
use super::service::{Core, Services};
use super::state::{Change, KeyRange, State};
use crate::etcd::etcdserverpb::{
    self as pb, watch_create_request::FilterType, watch_request::RequestUnion, watch_server,
};
use crate::etcd::mvccpb::{Event, event::EventType};

/// How often a watcher that asked for progress notifications gets one while idle (etcd's
/// default).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(600);
/// Events per answer when catching up from the history.
const CATCH_UP_BATCH: usize = 1000;
/// etcd's watch ID for answers that concern the whole stream (progress).
const STREAM_WATCH_ID: i64 = -1;

struct Watcher {
    range: KeyRange,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    /// First revision not yet reported.
    next: i64,
    /// Whether anything was sent since the last progress tick.
    active: bool,
}

impl Watcher {
    /// The events of `change` this watcher reports.
    fn select(&self, change: &Change) -> Vec<Event> {
        change
            .events
            .iter()
            .filter(|event| {
                let put = event.r#type == EventType::Put as i32;
                !(put && self.no_put || !put && self.no_delete)
                    && event
                        .kv
                        .as_ref()
                        .is_some_and(|kv| self.range.contains(&kv.key))
            })
            .map(|event| Event {
                prev_kv: event.prev_kv.clone().filter(|_| self.prev_kv),
                ..event.clone()
            })
            .collect()
    }
}

type Outbox = mpsc::Sender<Result<pb::WatchResponse, Status>>;

struct Stream {
    core: Arc<Core>,
    /// This stream in the state's index of watchers.
    id: StreamId,
    watchers: Watchers,
    /// The watch ID the next create without one gets: IDs only grow, as etcd's do, so an
    /// answer for a cancelled watcher can never be taken for a newer one's.
    next_id: i64,
    out: Outbox,
}

/// A stream's watchers, with an index of the single-key ones by key: a client that shares
/// one stream among all its waits (as etcd's Go client does) has thousands of watchers on
/// it, and a change must reach the few that cover it without a walk of all of them.
#[derive(Default)]
struct Watchers {
    all: BTreeMap<i64, Watcher>,
    by_key: HashMap<Vec<u8>, BTreeSet<i64>>,
    /// Watchers of a range of keys: each change is offered to all of them.
    ranges: BTreeSet<i64>,
}

impl Watchers {
    fn contains(&self, id: i64) -> bool {
        self.all.contains_key(&id)
    }

    fn insert(&mut self, id: i64, watcher: Watcher) {
        match watcher.range.single_key() {
            Some(key) => {
                self.by_key.entry(key.to_vec()).or_default().insert(id);
            }
            None => {
                self.ranges.insert(id);
            }
        }
        self.all.insert(id, watcher);
    }

    fn remove(&mut self, id: i64) -> Option<Watcher> {
        let watcher = self.all.remove(&id)?;
        match watcher.range.single_key() {
            Some(key) => {
                if let Some(ids) = self.by_key.get_mut(key) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.by_key.remove(key);
                    }
                }
            }
            None => {
                self.ranges.remove(&id);
            }
        }
        Some(watcher)
    }

    /// The IDs of the watchers that may cover one of `change`'s keys, in ID order.
    fn covering(&self, change: &Change) -> Vec<i64> {
        let mut ids: Vec<i64> = self.ranges.iter().copied().collect();
        for event in &change.events {
            if let Some(watching) = event
                .kv
                .as_ref()
                .and_then(|kv| self.by_key.get(&kv.key[..]))
            {
                ids.extend(watching);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// The stream is gone (client went away): stop.
struct Closed;

#[tonic::async_trait]
impl watch_server::Watch for Services {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.0.count(Method::Watch);
        let (out, answers) = mpsc::channel(64);
        let feed = self.0.state().open_feed();
        let stream = Stream {
            core: self.0.clone(),
            id: feed.id(),
            watchers: Watchers::default(),
            next_id: 0,
            out,
        };
        tokio::spawn(stream.run(request.into_inner(), feed));
        Ok(Response::new(ReceiverStream::new(answers)))
    }
}

impl Stream {
    async fn run(mut self, mut requests: Streaming<pb::WatchRequest>, mut changes: Feed) {
        let mut progress = interval(PROGRESS_INTERVAL);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        progress.reset();
        let core = self.core.clone();
        loop {
            let step = tokio::select! {
                request = requests.message() => match request {
                    Ok(Some(request)) => self.handle(request, &mut changes).await,
                    // The client closed its side, or the connection failed.
                    Ok(None) | Err(_) => Err(Closed),
                },
                change = changes.recv() => match change {
                    Received::Change(change) => self.deliver(&change).await,
                    Received::Missed(from) => self.resync(&mut changes, from).await,
                    Received::Closed => Err(Closed),
                },
                _ = progress.tick() => self.notify_progress(&mut changes).await,
                () = core.stopped() => Err(Closed),
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&self, response: pb::WatchResponse) -> Result<(), Closed> {
        self.out.send(Ok(response)).await.map_err(|_| Closed)
    }

    fn answer(&self, state: &State, watch_id: i64) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(state.header()),
            watch_id,
            ..Default::default()
        }
    }

    async fn handle(
        &mut self,
        request: pb::WatchRequest,
        changes: &mut Feed,
    ) -> Result<(), Closed> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                // Like etcd, a cancel of a watcher this stream does not have goes unanswered.
                if self.watchers.remove(cancel.watch_id).is_none() {
                    return Ok(());
                }
                let response = {
                    let mut state = self.core.state();
                    state.remove_watcher(self.id, cancel.watch_id);
                    pb::WatchResponse {
                        canceled: true,
                        ..self.answer(&state, cancel.watch_id)
                    }
                };
                self.send(response).await
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                let header = self.catch_up_with_feed(changes).await?;
                let response = pb::WatchResponse {
                    header: Some(header),
                    watch_id: STREAM_WATCH_ID,
                    ..Default::default()
                };
                self.send(response).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: pb::WatchCreateRequest) -> Result<(), Closed> {
        let id = match create.watch_id {
            0 => {
                while self.watchers.contains(self.next_id) {
                    self.next_id += 1;
                }
                self.next_id += 1;
                self.next_id - 1
            }
            id => id,
        };
        let mut watcher = Watcher {
            range: KeyRange::new(&create.key, &create.range_end),
            no_put: create.filters.contains(&(FilterType::Noput as i32)),
            no_delete: create.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: create.prev_kv,
            progress_notify: create.progress_notify,
            next: 0,
            active: false,
        };
        // Decided with the state locked; sent after.
        let (created, past) = {
            let mut state = self.core.state();
            let created = pb::WatchResponse {
                created: true,
                ..self.answer(&state, id)
            };
            if self.watchers.contains(id) {
                let refused = pb::WatchResponse {
                    canceled: true,
                    cancel_reason: EtcdError::DuplicateWatchId.to_string(),
                    ..created
                };
                (refused, Err(None))
            } else {
                let now = state.revision();
                watcher.next = if create.start_revision > 0 {
                    create.start_revision
                } else {
                    now + 1
                };
                let past = if watcher.next > now {
                    Ok(Vec::new())
                } else {
                    state.changes_since(watcher.next).map_err(|_| {
                        Some(pb::WatchResponse {
                            compact_revision: state.oldest_kept(),
                            canceled: true,
                            cancel_reason: EtcdError::Compacted.to_string(),
                            ..self.answer(&state, id)
                        })
                    })
                };
                if past.is_ok() {
                    state.add_watcher(self.id, id, &watcher.range);
                }
                (created, past)
            }
        };
        self.send(created).await?;
        match past {
            Ok(changes) => {
                self.watchers.insert(id, watcher);
                self.catch_up(id, &changes).await
            }
            // Like etcd, the watcher is created, then cancelled as compacted.
            Err(Some(compacted)) => self.send(compacted).await,
            // Refused (a duplicate ID): the answer sent was the refusal.
            Err(None) => Ok(()),
        }
    }

    /// Reports `changes` (in revision order) to watcher `id`, in answers of about
    /// [`CATCH_UP_BATCH`] events, each sent before the next is built: a watcher far behind
    /// never holds more than one answer's events at a time.
    async fn catch_up(&mut self, id: i64, changes: &[Arc<Change>]) -> Result<(), Closed> {
        let header = self.core.state().header();
        let Some(watcher) = self.watchers.all.get_mut(&id) else {
            return Ok(());
        };
        let mut events = Vec::new();
        let first = changes.partition_point(|c| c.revision < watcher.next);
        let mut pending = changes[first..].iter().peekable();
        while let Some(change) = pending.next() {
            events.extend(watcher.select(change));
            watcher.next = change.revision + 1;
            let last = pending.peek().is_none();
            if events.len() >= CATCH_UP_BATCH || last && !events.is_empty() {
                watcher.active = true;
                let response = pb::WatchResponse {
                    header: Some(pb::ResponseHeader {
                        revision: change.revision.max(header.revision),
                        ..header
                    }),
                    watch_id: id,
                    events: std::mem::take(&mut events),
                    ..Default::default()
                };
                self.out.send(Ok(response)).await.map_err(|_| Closed)?;
            }
        }
        Ok(())
    }

    async fn deliver(&mut self, change: &Change) -> Result<(), Closed> {
        let header = {
            let state = self.core.state();
            pb::ResponseHeader {
                revision: change.revision,
                ..state.header()
            }
        };
        let mut responses = Vec::new();
        for id in self.watchers.covering(change) {
            let Some(watcher) = self.watchers.all.get_mut(&id) else {
                continue;
            };
            if change.revision < watcher.next {
                continue;
            }
            watcher.next = change.revision + 1;
            let events = watcher.select(change);
            if events.is_empty() {
                continue;
            }
            watcher.active = true;
            responses.push(pb::WatchResponse {
                header: Some(header),
                watch_id: id,
                events,
                ..Default::default()
            });
        }
        for response in responses {
            self.send(response).await?;
        }
        Ok(())
    }

    /// After the feed missed changes from revision `from` on: every watcher caught up from
    /// the history (or cancelled as compacted), and the feed resumed. Everything before `from`
    /// that a watcher covers was queued, and has been delivered.
    async fn resync(&mut self, changes: &mut Feed, from: i64) -> Result<(), Closed> {
        let mut catch_ups = Vec::new();
        let mut compacted = Vec::new();
        let cancellations: Vec<pb::WatchResponse> = {
            let mut state = self.core.state();
            changes.resume();
            for (&id, watcher) in &mut self.watchers.all {
                watcher.next = watcher.next.max(from);
                match state.changes_since(watcher.next) {
                    Ok(past) => catch_ups.push((id, past)),
                    Err(_) => compacted.push(id),
                }
            }
            for &id in &compacted {
                state.remove_watcher(self.id, id);
            }
            compacted
                .iter()
                .map(|&id| pb::WatchResponse {
                    compact_revision: state.oldest_kept(),
                    canceled: true,
                    cancel_reason: EtcdError::Compacted.to_string(),
                    ..self.answer(&state, id)
                })
                .collect()
        };
        for response in cancellations {
            self.watchers.remove(response.watch_id);
            self.send(response).await?;
        }
        for (id, past) in catch_ups {
            self.catch_up(id, &past).await?;
        }
        Ok(())
    }

    /// Delivers every change already on the feed and returns the header of the state they
    /// lead up to: a progress answer with this header never runs ahead of the events sent.
    /// etcd's clients resume a watch after the revision of a progress answer, so a header
    /// taken while changes at or below it still wait on the feed would make a reconnect
    /// skip them.
    async fn catch_up_with_feed(
        &mut self,
        changes: &mut Feed,
    ) -> Result<pb::ResponseHeader, Closed> {
        loop {
            // Drained with the state locked: the feed is published under that lock, so
            // nothing can be committed between the last change taken and the header.
            let mut pending = Vec::new();
            let (header, missed) = {
                let state = self.core.state();
                let missed = loop {
                    match changes.try_recv() {
                        Some(Received::Change(change)) => pending.push(change),
                        None => break None,
                        Some(Received::Missed(from)) => break Some(from),
                        Some(Received::Closed) => return Err(Closed),
                    }
                };
                (state.header(), missed)
            };
            for change in &pending {
                self.deliver(change).await?;
            }
            let Some(from) = missed else {
                return Ok(header);
            };
            // The feed missed changes: catch up from the history, then look again.
            self.resync(changes, from).await?;
        }
    }

    async fn notify_progress(&mut self, changes: &mut Feed) -> Result<(), Closed> {
        let header = self.catch_up_with_feed(changes).await?;
        let mut due = Vec::new();
        for (&id, watcher) in &mut self.watchers.all {
            if watcher.progress_notify && !watcher.active {
                due.push(id);
            }
            watcher.active = false;
        }
        for id in due {
            let response = pb::WatchResponse {
                header: Some(header),
                watch_id: id,
                ..Default::default()
            };
            self.send(response).await?;
        }
        Ok(())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.core.state().close_feed(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::mvccpb::KeyValue;

    #[test]
    fn watchers_share_one_copy_of_a_large_value() {
        let value = bytes::Bytes::from(vec![7u8; 1 << 20]);
        let kv = KeyValue {
            key: b"big"[..].into(),
            value: value.clone(),
            ..Default::default()
        };
        let change = Change {
            revision: 2,
            events: vec![Event {
                r#type: EventType::Put as i32,
                kv: Some(kv.clone()),
                prev_kv: Some(kv),
            }],
        };
        let watcher = Watcher {
            range: KeyRange::new(b"", b"\0"),
            no_put: false,
            no_delete: false,
            prev_kv: true,
            progress_notify: false,
            next: 0,
            active: false,
        };
        for _ in 0..100 {
            let events = watcher.select(&change);
            let sent = events[0].kv.as_ref().unwrap();
            assert_eq!(sent.value.len(), value.len());
            assert_eq!(sent.value.as_ptr(), value.as_ptr(), "the value was copied");
            let prev = events[0].prev_kv.as_ref().unwrap();
            assert_eq!(
                prev.value.as_ptr(),
                value.as_ptr(),
                "the previous value was copied"
            );
        }
    }
}
