//! lockd's watches when a client does not keep up: a watcher that falls behind the change
//! feed is caught up from the history without losing or reordering an event, and one that
//! falls behind the history is cancelled with etcd's compacted answer, never silently
//! skipped. lockd runs in-process (`lockd::Server`), on a loopback listener.

use std::time::Duration;

use fencelock::etcd::etcdserverpb::watch_client::WatchClient;
use fencelock::etcd::etcdserverpb::{
    PutRequest, WatchCancelRequest, WatchCreateRequest, WatchRequest, WatchResponse,
    watch_request::RequestUnion,
};
use fencelock::lock::Client;
use fencelock::lockd::{self, Config};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Endpoint;

/// More changes than the per-stream change feed holds (4,096), so a watcher that reads
/// nothing while they happen is left behind by the feed.
const CHANGES: i64 = 10_000;

struct Lockd {
    endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), lockd::LockdError>>>,
}

impl Lockd {
    async fn start(history: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let config = Config {
            history,
            ..Config::default()
        };
        let server = lockd::Server::open(&config).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            endpoint,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// A watch on `/w/` from now, with its created answer read. It has a connection of its own
/// with small HTTP/2 flow-control windows, so that the server soon cannot send more while
/// the test is not reading.
async fn watch(endpoint: &str) -> (mpsc::Sender<WatchRequest>, Streaming<WatchResponse>) {
    let channel = Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .unwrap();
    let (requests, rx) = mpsc::channel(1);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"/w/".to_vec(),
            range_end: b"/w0".to_vec(),
            ..Default::default()
        })),
    };
    requests.send(create).await.unwrap();
    let mut answers = WatchClient::new(channel)
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let created = answers.message().await.unwrap().unwrap();
    assert!(created.created);
    (requests, answers)
}

/// Writes `/w/<i>` for every i, one revision each, on a connection of its own; returns the
/// revision of the first write.
async fn write_all(endpoint: &str) -> i64 {
    let client = Client::connect([endpoint]).await.unwrap();
    let mut first = 0;
    for i in 0..CHANGES {
        let put = PutRequest {
            key: format!("/w/{i}").into_bytes(),
            value: vec![b'v'; 100],
            ..Default::default()
        };
        let revision = client
            .kv()
            .put(put)
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
        if i == 0 {
            first = revision;
        }
    }
    first
}

async fn next(answers: &mut Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("an answer within 10 s")
        .unwrap()
        .expect("the stream stays open")
}

#[tokio::test]
async fn a_watcher_left_behind_by_the_feed_gets_every_event_in_order() {
    let lockd = Lockd::start(lockd::DEFAULT_HISTORY).await;
    let (_requests, mut answers) = watch(&lockd.endpoint).await;
    let first = write_all(&lockd.endpoint).await;
    let mut expected = first;
    while expected < first + CHANGES {
        let answer = next(&mut answers).await;
        assert!(!answer.canceled, "cancelled: {answer:?}");
        for event in answer.events {
            let kv = event.kv.unwrap();
            assert_eq!(
                kv.mod_revision, expected,
                "events arrive once each, in order"
            );
            assert_eq!(kv.key, format!("/w/{}", expected - first).into_bytes());
            expected += 1;
        }
    }
    lockd.stop().await;
}

#[tokio::test]
async fn a_watcher_left_behind_by_the_history_is_cancelled_as_compacted() {
    let lockd = Lockd::start(1_000).await;
    let (_requests, mut answers) = watch(&lockd.endpoint).await;
    let first = write_all(&lockd.endpoint).await;
    let mut expected = first;
    loop {
        let answer = next(&mut answers).await;
        if answer.canceled {
            println!(
                "cancelled after {} events, compact revision {}",
                expected - first,
                answer.compact_revision
            );
            assert!(answer.compact_revision > expected, "{answer:?}");
            assert!(answer.cancel_reason.contains("compacted"), "{answer:?}");
            break;
        }
        for event in answer.events {
            assert_eq!(event.kv.unwrap().mod_revision, expected);
            expected += 1;
        }
        assert!(
            expected < first + CHANGES,
            "every event arrived although the history keeps only 1,000"
        );
    }
    lockd.stop().await;
}

#[tokio::test]
async fn a_cancelled_watcher_hears_nothing_more_while_its_neighbour_does() {
    let lockd = Lockd::start(lockd::DEFAULT_HISTORY).await;
    // Watcher 0 from `watch`, then watcher 1 on the same stream.
    let (requests, mut answers) = watch(&lockd.endpoint).await;
    let second = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"/w/".to_vec(),
            range_end: b"/w0".to_vec(),
            ..Default::default()
        })),
    };
    requests.send(second).await.unwrap();
    let created = next(&mut answers).await;
    assert!(created.created && created.watch_id == 1, "{created:?}");
    let cancel = WatchRequest {
        request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: 0,
        })),
    };
    requests.send(cancel).await.unwrap();
    let cancelled = next(&mut answers).await;
    assert!(
        cancelled.canceled && cancelled.watch_id == 0,
        "{cancelled:?}"
    );

    let client = Client::connect([lockd.endpoint.as_str()]).await.unwrap();
    let put = PutRequest {
        key: b"/w/after".to_vec(),
        ..Default::default()
    };
    client.kv().put(put).await.unwrap();
    let event = next(&mut answers).await;
    assert_eq!(
        event.watch_id, 1,
        "only the watcher still there hears the put"
    );
    assert_eq!(event.events.len(), 1);
    lockd.stop().await;
}

/// One stream with a prefix watcher and single-key watchers, as a client that shares its
/// stream among its waits has: each change reaches exactly the watchers covering its key,
/// and a watcher created after a cancel gets a new ID, never the cancelled one's.
#[tokio::test]
async fn on_one_stream_a_change_reaches_only_its_watchers_and_ids_never_repeat() {
    let lockd = Lockd::start(lockd::DEFAULT_HISTORY).await;
    // Watcher 0 watches the prefix `/w/`.
    let (requests, mut answers) = watch(&lockd.endpoint).await;
    let create = |key: &[u8]| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    };
    requests.send(create(b"/w/a")).await.unwrap();
    let a = next(&mut answers).await;
    requests.send(create(b"/x/b")).await.unwrap();
    let b = next(&mut answers).await;
    assert!(a.created && a.watch_id == 1, "{a:?}");
    assert!(b.created && b.watch_id == 2, "{b:?}");
    let cancel = WatchRequest {
        request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: 2,
        })),
    };
    requests.send(cancel).await.unwrap();
    assert!(next(&mut answers).await.canceled);
    requests.send(create(b"/x/b")).await.unwrap();
    let again = next(&mut answers).await;
    assert!(again.created && again.watch_id == 3, "{again:?}");

    let client = Client::connect([lockd.endpoint.as_str()]).await.unwrap();
    for key in ["/x/b", "/w/a", "/w/z"] {
        let put = PutRequest {
            key: key.into(),
            ..Default::default()
        };
        client.kv().put(put).await.unwrap();
    }
    let mut heard = Vec::new();
    for _ in 0..4 {
        let answer = next(&mut answers).await;
        assert_eq!(answer.events.len(), 1, "{answer:?}");
        let key = answer.events[0].kv.as_ref().unwrap().key.clone();
        heard.push((answer.watch_id, String::from_utf8(key.to_vec()).unwrap()));
    }
    assert_eq!(
        heard,
        [
            (3, "/x/b".to_string()),
            (0, "/w/a".to_string()),
            (1, "/w/a".to_string()),
            (0, "/w/z".to_string()),
        ]
    );
    // Nothing else: a progress request is answered after every change before it.
    let progress = WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(Default::default())),
    };
    requests.send(progress).await.unwrap();
    let answer = next(&mut answers).await;
    assert!(
        answer.events.is_empty() && answer.watch_id == -1,
        "{answer:?}"
    );
    lockd.stop().await;
}
