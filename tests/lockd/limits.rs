//! lockd keeps etcd's limits: progress answers never run ahead of the events a stream has
//! delivered, requests over `--max-request-bytes` and writes past `--quota-backend-bytes`
//! get etcd's answers, and v3lock waiters still take the lock in order. lockd runs
//! in-process (`lockd::Server`) on a loopback listener.

use std::time::Duration;

use fencelock::etcd::etcdserverpb::kv_client::KvClient;
use fencelock::etcd::etcdserverpb::watch_client::WatchClient;
use fencelock::etcd::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, PutRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest, lease_client::LeaseClient, watch_request::RequestUnion,
};
use fencelock::etcd::v3lockpb::{LockRequest, UnlockRequest, lock_client::LockClient};
use fencelock::lockd::{self, Config};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

struct Lockd {
    endpoint: String,
    channel: Channel,
    stop: Option<oneshot::Sender<()>>,
}

impl Lockd {
    async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let server = lockd::Server::open(&config).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{endpoint}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            endpoint: format!("http://{endpoint}"),
            channel,
            stop: Some(stop),
        }
    }

    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone()).max_encoding_message_size(usize::MAX)
    }
}

impl Drop for Lockd {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
    }
}

fn put(key: &str, bytes: usize) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: vec![b'v'; bytes],
        ..Default::default()
    }
}

fn progress_request() -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    }
}

/// Rounds of: many puts in the watched range while the stream is not read (so the server
/// has changes queued for it), then a progress request. etcd's clients resume after the
/// revision of a progress answer, so that revision must never be above the last event
/// delivered before it: every change here is in the watched range.
#[tokio::test]
async fn a_progress_answer_never_runs_ahead_of_the_events_delivered() {
    const ROUNDS: usize = 5;
    const PUTS: usize = 300;
    let lockd = Lockd::start(Config::default()).await;
    let (requests, rx) = mpsc::channel(8);
    requests
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"/p/".to_vec(),
                range_end: b"/p0".to_vec(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    // A connection of its own with small HTTP/2 windows: the server soon cannot send more
    // while the test is not reading, so the changes queue up for the stream.
    let watch_channel = Channel::from_shared(lockd.endpoint.clone())
        .unwrap()
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .unwrap();
    let mut answers = WatchClient::new(watch_channel)
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let created = answers.message().await.unwrap().unwrap();
    assert!(created.created);
    let mut kv = lockd.kv();
    let mut last_event = created.header.unwrap().revision;
    for round in 0..ROUNDS {
        let mut written = 0;
        for i in 0..PUTS {
            let answer = kv.put(put(&format!("/p/{i}"), 1_000)).await.unwrap();
            written = answer.into_inner().header.unwrap().revision;
        }
        requests.send(progress_request()).await.unwrap();
        loop {
            let answer = tokio::time::timeout(Duration::from_secs(10), answers.message())
                .await
                .expect("an answer within 10 s")
                .unwrap()
                .expect("the stream stays open");
            if answer.events.is_empty() {
                let revision = answer.header.unwrap().revision;
                assert!(
                    revision <= last_event,
                    "round {round}: progress at revision {revision} while the last event \
                     delivered is at {last_event}: a client resuming there skips events"
                );
                break;
            }
            for event in answer.events {
                let revision = event.kv.unwrap().mod_revision;
                assert_eq!(
                    revision,
                    last_event + 1,
                    "events arrive once each, in order"
                );
                last_event = revision;
            }
        }
        assert_eq!(last_event, written, "round {round}: every put delivered");
    }
}

/// etcd's default limit is 1.5 MiB: a 2 MB put gets etcd's "request is too large"
/// (InvalidArgument), not gRPC's own decoding error; a 1 MB put goes through.
#[tokio::test]
async fn a_request_over_the_limit_gets_etcds_answer() {
    let lockd = Lockd::start(Config::default()).await;
    let mut kv = lockd.kv();
    let refused = kv.put(put("/big", 2_000_000)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(refused.message(), "etcdserver: request is too large");
    kv.put(put("/big", 1_000_000))
        .await
        .expect("1 MB is under the limit");
}

/// etcd's real server gives the same answer for the same request, when etcd is installed.
#[tokio::test]
async fn etcd_refuses_the_same_request_with_the_same_answer() {
    let Some(cluster) = crate::support::etcd::start(1).await else {
        return;
    };
    let channel = Channel::from_shared(format!("http://{}", cluster.endpoints()[0]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut kv = KvClient::new(channel).max_encoding_message_size(usize::MAX);
    let refused = kv.put(put("/big", 2_000_000)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(refused.message(), "etcdserver: request is too large");
    kv.put(put("/big", 1_000_000))
        .await
        .expect("1 MB is under the limit");
}

/// With a 10 kB quota: writes that fit go through, the one that would pass it gets etcd's
/// "database space exceeded" (ResourceExhausted), a delete still works and frees room.
#[tokio::test]
async fn writes_past_the_quota_are_refused_and_deletes_still_work() {
    let lockd = Lockd::start(Config {
        quota_backend_bytes: 10_000,
        ..Config::default()
    })
    .await;
    let mut kv = lockd.kv();
    for i in 0..4 {
        kv.put(put(&format!("/q/{i}"), 2_000)).await.unwrap();
    }
    let refused = kv.put(put("/q/4", 4_000)).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert_eq!(
        refused.message(),
        "etcdserver: mvcc: database space exceeded"
    );
    kv.delete_range(DeleteRangeRequest {
        key: b"/q/0".to_vec(),
        ..Default::default()
    })
    .await
    .expect("a delete works past the quota");
    kv.put(put("/q/4", 3_000))
        .await
        .expect("room again after the delete");
}

/// Many waiters queue on one lock with the server-side Lock RPC; each unlock hands the lock
/// to the next waiter in create_revision order, and to nobody else.
#[tokio::test]
async fn v3lock_waiters_take_the_lock_one_by_one_in_order() {
    const WAITERS: usize = 20;
    let lockd = Lockd::start(Config::default()).await;
    let mut leases = LeaseClient::new(lockd.channel.clone());
    let (acquired, mut order) = mpsc::unbounded_channel();
    let mut queued = Vec::new();
    for i in 0..WAITERS {
        let lease = leases
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
            .await
            .unwrap()
            .into_inner()
            .id;
        let mut lock = LockClient::new(lockd.channel.clone());
        let acquired = acquired.clone();
        tokio::spawn(async move {
            let key = lock
                .lock(LockRequest {
                    name: b"/l".to_vec(),
                    lease,
                })
                .await
                .unwrap()
                .into_inner()
                .key;
            acquired.send((i, key)).unwrap();
        });
        // The next waiter queues only once this one's key exists.
        let key = format!("/l/{lease:x}").into_bytes();
        let mut kv = lockd.kv();
        loop {
            let range = fencelock::etcd::etcdserverpb::RangeRequest {
                key: key.clone(),
                ..Default::default()
            };
            if kv.range(range).await.unwrap().into_inner().count == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        queued.push(key);
    }
    let mut unlock = LockClient::new(lockd.channel.clone());
    for expected in 0..WAITERS {
        let (i, key) = tokio::time::timeout(Duration::from_secs(10), order.recv())
            .await
            .expect("the next waiter takes the lock")
            .unwrap();
        assert_eq!(
            i, expected,
            "waiters take the lock in the order they queued"
        );
        assert_eq!(key, queued[i]);
        assert!(order.try_recv().is_err(), "only one holder at a time");
        unlock.unlock(UnlockRequest { key }).await.unwrap();
    }
}
