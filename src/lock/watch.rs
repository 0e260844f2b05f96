//! Waiting for a key's deletion with etcd's Watch service.
//!
//! Invariant: `deleted` returns only when the key is gone or when its caller must look again
//! (the watch was cancelled, e.g. for a compacted start revision, or its stream failed); it
//! never reports a deletion that did not happen. Callers re-read the key with a Range, which
//! makes a lost or failed watch harmless.

use tokio::sync::mpsc;
use tokio::time::sleep;
use tokio_stream::wrappers::ReceiverStream;

use super::client::RETRY_PAUSE;
use super::{Client, Error, Result};
use crate::etcd::etcdserverpb as pb;
use crate::etcd::mvccpb::Event;
use crate::etcd::mvccpb::event::EventType;

/// Where a waiter's watch on its predecessor starts. Every choice is correct; they differ
/// in how fast etcd delivers the deletion.
///
/// etcd keeps a watcher whose start revision is not in the future in an "unsynced" group,
/// which it catches up on a 100 ms tick, and serves the others ("synced") at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum WatchStart {
    /// The revision after the one at which the predecessor was seen: the first at which it
    /// can be deleted. Synced when nothing was written between the read and the watch; under
    /// contention other waiters' writes often land in between, and the watch is unsynced.
    #[cfg_attr(feature = "cli", value(name = "next"))]
    AfterRange,
    /// The Range's own revision, as etcd's Go `concurrency.Mutex` does. Equally correct, but
    /// a start revision that is not in the future puts the watcher in etcd's "unsynced" group,
    /// which is caught up on a 100 ms tick. Kept to measure the difference.
    #[cfg_attr(feature = "cli", value(name = "read"))]
    AtRange,
    /// The current revision (etcd's "from now"), which etcd serves from its synced group
    /// unless a write lands during the watch's registration; a second watcher on the same
    /// stream, registered just after the first, makes that rare twice over. If anything was
    /// written since the predecessor was seen, one read of the predecessor covers the gap.
    /// The default: it keeps contended handovers off the 100 ms tick.
    #[default]
    #[cfg_attr(feature = "cli", value(name = "now"))]
    Latest,
}

/// A watch on every key under a prefix, for tools that follow a lock name from outside (the
/// demo, the checker). The watch lives as long as this value.
pub struct PrefixWatch {
    answers: tonic::Streaming<pb::WatchResponse>,
    // Closing the request side of the stream could end the watch early.
    _requests: mpsc::Sender<pb::WatchRequest>,
}

impl PrefixWatch {
    /// Watches the keys starting with `prefix` from `start_revision` (0: from now), with
    /// previous values on deletions, and returns once the lock service has confirmed the
    /// watch: nothing written after this returns can be missed.
    pub async fn start(client: &Client, prefix: &[u8], start_revision: i64) -> Result<Self> {
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: prefix.to_vec(),
                    range_end: crate::etcd::prefix_end(prefix),
                    start_revision,
                    prev_kv: true,
                    ..Default::default()
                },
            )),
        };
        let (requests, rx) = mpsc::channel(1);
        // The channel is new and has room for the one create request.
        let _ = requests.try_send(create);
        let mut answers = client
            .watch()
            .watch(ReceiverStream::new(rx))
            .await
            .map_err(|status| Error::rpc("watch", status))?
            .into_inner();
        match answers.message().await {
            Ok(Some(answer)) if answer.created && !answer.canceled => Ok(Self {
                answers,
                _requests: requests,
            }),
            Ok(Some(answer)) => Err(Error::Protocol {
                op: "watch",
                detail: format!("the watch was not created: {}", answer.cancel_reason),
            }),
            Ok(None) => Err(Error::Protocol {
                op: "watch",
                detail: "the stream ended before the watch was created".into(),
            }),
            Err(status) => Err(Error::rpc("watch", status)),
        }
    }

    /// The next batch of events, all of one revision or more; `Ok(None)` when the lock
    /// service ended the watch (it was cancelled, for example compacted).
    pub async fn next(&mut self) -> Result<Option<Vec<Event>>> {
        loop {
            match self.answers.message().await {
                Ok(Some(answer)) if answer.canceled => return Ok(None),
                Ok(Some(answer)) if answer.events.is_empty() => continue,
                Ok(Some(answer)) => return Ok(Some(answer.events)),
                Ok(None) => return Ok(None),
                Err(status) => return Err(Error::rpc("watch", status)),
            }
        }
    }
}

/// Outcome of one watch: the key was deleted (it was absent at revision `at`), or the caller
/// must read again to know.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Watched {
    Deleted { at: i64 },
    LookAgain,
}

/// Waits for the deletion of `key`, which existed at revision `seen_at` with create_revision
/// `created`. A lock key's name is reused when its session locks again, so a key of that name
/// with another create_revision means this one was deleted.
pub(crate) async fn deleted(
    client: &Client,
    key: &[u8],
    created: i64,
    seen_at: i64,
    start: WatchStart,
) -> Watched {
    let start_revision = match start {
        WatchStart::AfterRange => seen_at + 1,
        WatchStart::AtRange => seen_at,
        WatchStart::Latest => 0,
    };
    let create = || pb::WatchCreateRequest {
        key: key.to_vec(),
        start_revision,
        // Only deletes matter; etcd drops the rest before sending.
        filters: vec![pb::watch_create_request::FilterType::Noput as i32],
        ..Default::default()
    };
    // The watchers live until this function returns, on the client's shared stream.
    let mut answers = client.shared_watch().subscribe(client, create());
    let mut second_sent = false;
    loop {
        let Some(answer) = answers.next().await else {
            sleep(RETRY_PAUSE).await;
            return Watched::LookAgain;
        };
        let deletion = deletion_after(&answer.events, seen_at);
        if let Some(at) = deletion {
            return Watched::Deleted { at };
        }
        if answer.canceled {
            tracing::debug!(reason = %answer.cancel_reason, "watch cancelled");
            return Watched::LookAgain;
        }
        if !answer.created || start != WatchStart::Latest || second_sent {
            continue;
        }
        // etcd registers a "from now" watcher as unsynced (caught up only on its 100 ms
        // tick) when a write commits between its reading of the current revision and the
        // registration, which under contention happens to about one watch in a hundred. A
        // second watcher on the same stream, registered a moment later, is unlucky too only
        // rarely; the first still covers any deletion before the second's registration.
        second_sent = answers.add(create());
        // A "from now" watch reports deletions after the revision in its created answer; one
        // between `seen_at` and that revision shows in a read.
        let created_at = answer.header.map_or(i64::MAX, |h| h.revision);
        if created_at > seen_at {
            let read = pb::RangeRequest {
                key: key.to_vec(),
                keys_only: true,
                ..Default::default()
            };
            match client.range(read).await {
                Ok(range) if range.kvs.first().map(|kv| kv.create_revision) != Some(created) => {
                    let at = range.header.map_or(created_at, |h| h.revision);
                    return Watched::Deleted { at };
                }
                // Still there at a revision the watch covers: keep waiting on it.
                Ok(_) => {}
                Err(_) => return Watched::LookAgain,
            }
        }
    }
}

/// The revision of the first deletion in `events` after `seen_at`, when the key was known to
/// exist. A delete event carries the key with mod_revision set to the deletion's revision.
/// One at or before `seen_at` deleted an earlier key of the same name (lock key names are
/// reused): a "from now" watch on a member that lags behind the one that answered the read
/// starts before `seen_at` and reports it.
fn deletion_after(events: &[Event], seen_at: i64) -> Option<i64> {
    events.iter().find_map(|e| {
        let at = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        (e.r#type == EventType::Delete as i32 && at > seen_at).then_some(at)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::mvccpb::KeyValue;

    fn deleted_at(revision: i64) -> Event {
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: b"/l/1"[..].into(),
                mod_revision: revision,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn a_deletion_of_an_earlier_key_of_the_same_name_is_not_this_keys() {
        assert_eq!(deletion_after(&[deleted_at(7)], 9), None);
        assert_eq!(deletion_after(&[deleted_at(9)], 9), None);
        assert_eq!(
            deletion_after(&[deleted_at(7), deleted_at(12)], 9),
            Some(12)
        );
    }
}

/// Runs against an in-process lockd, so only when the crate is built with it.
#[cfg(all(test, feature = "lockd"))]
mod lockd_tests {
    use super::*;

    /// A prefix watch sees every change under its prefix, previous values on deletions
    /// included, and nothing outside it.
    #[tokio::test]
    async fn a_prefix_watch_reports_changes_under_its_prefix_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::lockd::serve(listener, async {
            let _ = stopped.await;
        }));
        let client = Client::connect([endpoint]).await.unwrap();
        let mut watch = PrefixWatch::start(&client, b"/w/", 0).await.unwrap();
        let put = |key: &str| pb::PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        client.kv().put(put("/x/outside")).await.unwrap();
        client.kv().put(put("/w/a")).await.unwrap();
        client
            .kv()
            .delete_range(pb::DeleteRangeRequest {
                key: b"/w/a".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        let created = watch.next().await.unwrap().unwrap();
        assert_eq!(created.len(), 1);
        assert_eq!(created[0].kv.as_ref().unwrap().key, &b"/w/a"[..]);
        assert_eq!(created[0].r#type, EventType::Put as i32);
        let deleted = watch.next().await.unwrap().unwrap();
        assert_eq!(deleted[0].r#type, EventType::Delete as i32);
        let previous = deleted[0].prev_kv.as_ref().expect("previous value");
        assert_eq!(
            previous.create_revision,
            created[0].kv.as_ref().unwrap().create_revision
        );
    }
}
