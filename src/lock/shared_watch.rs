//! One Watch stream per [`Client`], shared by every wait, as etcd's own Go client does: a
//! wait adds its watchers to the stream and cancels them when it is done, instead of opening
//! (and closing) an HTTP/2 stream of its own. With a thousand waiters that is one stream
//! instead of a thousand, on the client and on the lock service.
//!
//! Routing: etcd answers the creates of one stream in the order they were sent, each with the
//! watch ID it chose, so a queue of the subscriptions whose creates are unanswered tells whose
//! a created answer is; after it, the watch ID does.
//!
//! Invariants:
//! - A subscription receives only answers of watchers it created, in the stream's order, and
//!   its receiver ends when the stream does; a caller treats an ended receiver as "look
//!   again", never as a deletion.
//! - Every watcher the stream creates for a subscription is cancelled once that subscription
//!   is dropped: by the drop, for watchers it has been told of, or by the reader, when the
//!   created answer arrives after the drop.
//! - A stream that refused a create (for example an auth token that expired after the stream
//!   was opened) or left one unanswered for [`SILENT_AFTER`] (a frozen member) is retired:
//!   new waits open another stream, through the balancer, and the retired one closes when its
//!   last subscription is gone.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::Client;
use crate::etcd::etcdserverpb as pb;
use crate::etcd::etcdserverpb::watch_request::RequestUnion;

/// How long a create may stay unanswered before new waits go to another stream.
const SILENT_AFTER: Duration = Duration::from_secs(1);

/// The client's current shared stream, opened on first use.
#[derive(Default)]
pub(crate) struct SharedWatch {
    current: Mutex<Option<Arc<Stream>>>,
}

/// One open Watch stream and the routes of its answers.
struct Stream {
    requests: mpsc::UnboundedSender<pb::WatchRequest>,
    routes: Arc<Mutex<Routes>>,
    /// Dropped with this value, which tells the reader to reset the stream: etcd keeps a
    /// stream whose request side was closed open until the client resets it.
    _reset: oneshot::Sender<()>,
}

#[derive(Default)]
struct Routes {
    /// Subscriptions whose creates are unanswered, in the order the creates were sent, with
    /// when each was sent.
    pending: VecDeque<(u64, Instant)>,
    /// The subscription each live watcher belongs to.
    by_watch: HashMap<i64, u64>,
    subscriptions: HashMap<u64, Route>,
    next_subscription: u64,
    /// No new creates go to this stream (it refused one, stayed silent, or ended).
    retired: bool,
}

struct Route {
    answers: mpsc::UnboundedSender<pb::WatchResponse>,
    /// Watchers created for this subscription and not yet cancelled.
    watchers: Vec<i64>,
}

/// A wait's share of the stream: the answers of its watchers. Dropping it cancels them.
pub(crate) struct Subscription {
    stream: Arc<Stream>,
    id: u64,
    answers: mpsc::UnboundedReceiver<pb::WatchResponse>,
}

fn lock(routes: &Mutex<Routes>) -> MutexGuard<'_, Routes> {
    routes.lock().unwrap_or_else(|e| e.into_inner())
}

fn create_request(create: pb::WatchCreateRequest) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    }
}

fn cancel_request(watch_id: i64) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id,
        })),
    }
}

impl SharedWatch {
    /// Creates a watcher for `create` on the client's shared stream, opening one if there is
    /// none or the current one is retired.
    pub(crate) fn subscribe(
        &self,
        client: &Client,
        create: pb::WatchCreateRequest,
    ) -> Subscription {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stream) = current.as_ref() {
            let mut routes = lock(&stream.routes);
            if !routes.retired
                && routes
                    .pending
                    .front()
                    .is_some_and(|(_, sent)| sent.elapsed() >= SILENT_AFTER)
            {
                tracing::debug!("a watch create went unanswered; new waits use another stream");
                routes.retired = true;
            }
            if !routes.retired {
                let (id, answers) = routes.subscribe();
                routes.create(id, &stream.requests, create);
                drop(routes);
                return Subscription {
                    stream: stream.clone(),
                    id,
                    answers,
                };
            }
        }
        let stream = Stream::open(client);
        let (id, answers) = {
            let mut routes = lock(&stream.routes);
            let (id, answers) = routes.subscribe();
            routes.create(id, &stream.requests, create);
            (id, answers)
        };
        *current = Some(stream.clone());
        Subscription {
            stream,
            id,
            answers,
        }
    }
}

impl Routes {
    fn subscribe(&mut self) -> (u64, mpsc::UnboundedReceiver<pb::WatchResponse>) {
        let id = self.next_subscription;
        self.next_subscription += 1;
        let (answers, receiver) = mpsc::unbounded_channel();
        self.subscriptions.insert(
            id,
            Route {
                answers,
                watchers: Vec::new(),
            },
        );
        (id, receiver)
    }

    /// Sends a create for subscription `id`; queued under the routes' lock, so the queue of
    /// pending subscriptions is in the order of the creates on the stream.
    fn create(
        &mut self,
        id: u64,
        requests: &mpsc::UnboundedSender<pb::WatchRequest>,
        create: pb::WatchCreateRequest,
    ) -> bool {
        if self.retired || requests.send(create_request(create)).is_err() {
            return false;
        }
        self.pending.push_back((id, Instant::now()));
        true
    }

    /// Routes one answer; returns the watcher to cancel, if it belongs to nobody any more.
    fn route(&mut self, answer: pb::WatchResponse) -> Option<i64> {
        let watch_id = answer.watch_id;
        if answer.created {
            let (id, _) = self.pending.pop_front()?;
            if answer.canceled {
                // Refused: this stream may refuse every create from now on.
                self.retired = true;
                if let Some(route) = self.subscriptions.get(&id) {
                    let _ = route.answers.send(answer);
                }
                return None;
            }
            let Some(route) = self.subscriptions.get_mut(&id) else {
                return Some(watch_id);
            };
            route.watchers.push(watch_id);
            self.by_watch.insert(watch_id, id);
            let _ = route.answers.send(answer);
            return None;
        }
        let id = if answer.canceled {
            self.by_watch.remove(&watch_id)?
        } else {
            *self.by_watch.get(&watch_id)?
        };
        if let Some(route) = self.subscriptions.get_mut(&id) {
            if answer.canceled {
                route.watchers.retain(|&w| w != watch_id);
            }
            let _ = route.answers.send(answer);
        }
        None
    }

    /// The stream is gone: every subscription's receiver ends.
    fn end(&mut self) {
        self.retired = true;
        self.pending.clear();
        self.by_watch.clear();
        self.subscriptions.clear();
    }
}

impl Stream {
    fn open(client: &Client) -> Arc<Stream> {
        let (requests, receiver) = mpsc::unbounded_channel();
        let (reset, mut reset_when) = oneshot::channel();
        let stream = Arc::new(Stream {
            requests,
            routes: Arc::default(),
            _reset: reset,
        });
        let routes = stream.routes.clone();
        // The reader holds the request side only weakly: the stream ends once this value is
        // dropped, when the client has moved on to another stream (or is gone) and the last
        // subscription is dropped.
        let cancels = stream.requests.downgrade();
        // A generated client only: a `Client` would keep this stream's owner, and so the
        // stream, alive.
        let mut watch = client.for_attempt(0).watch();
        tokio::spawn(async move {
            let mut request = tonic::Request::new(UnboundedReceiverStream::new(receiver));
            // Ask the member to end the stream if it loses its leader (etcd's "require
            // leader" option), so the waits behind a partitioned member look again instead
            // of hanging.
            request.metadata_mut().insert(
                "hasleader",
                tonic::metadata::MetadataValue::from_static("true"),
            );
            let read = async {
                match watch.watch(request).await {
                    Ok(answers) => {
                        let mut answers = answers.into_inner();
                        while let Ok(Some(answer)) = answers.message().await {
                            let orphan = lock(&routes).route(answer);
                            if let (Some(watch_id), Some(requests)) = (orphan, cancels.upgrade()) {
                                let _ = requests.send(cancel_request(watch_id));
                            }
                        }
                    }
                    Err(status) => tracing::debug!(%status, "watch stream failed to start"),
                }
            };
            // Leaving `read` unfinished drops the answers, which resets the stream.
            tokio::select! {
                () = read => {}
                _ = &mut reset_when => {}
            }
            lock(&routes).end();
        });
        stream
    }
}

impl Subscription {
    /// Adds another watcher to this subscription; false if the stream takes no more.
    pub(crate) fn add(&self, create: pb::WatchCreateRequest) -> bool {
        lock(&self.stream.routes).create(self.id, &self.stream.requests, create)
    }

    /// The next answer of one of this subscription's watchers; `None` once the stream ended.
    pub(crate) async fn next(&mut self) -> Option<pb::WatchResponse> {
        self.answers.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut routes = lock(&self.stream.routes);
        let Some(route) = routes.subscriptions.remove(&self.id) else {
            return;
        };
        for watch_id in route.watchers {
            routes.by_watch.remove(&watch_id);
            let _ = self.stream.requests.send(cancel_request(watch_id));
        }
    }
}
