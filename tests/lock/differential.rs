//! lockd against a real etcd (`crate::support::etcd`), request by request: the same random sequence
//! of Puts, DeleteRanges, Ranges (limits, sorting, filters, past revisions, keys-only,
//! count-only), Txns (compares on every target, over single keys and ranges) and lease
//! grants, revocations and time-to-live queries (keys attached and detached) goes to a
//! fresh etcd and a fresh lockd, and every answer must be the same: keys, values, versions,
//! create and mod revisions, counts, `more`, `succeeded`, previous values, the header's
//! revision, and for refusals the gRPC code and message.
//!
//! Four live watchers on one stream per service (a prefix with previous values, one key
//! without puts, a range without deletes, everything from a key on), created before the
//! sequence and not read while it runs, must then report the same events; and a watch from
//! revision 1 with previous values must replay the same history on both.
//!
//! The sequences come from fixed seeds, so a failure names the seed and the step that
//! diverged and reproduces exactly.

use std::time::Duration;

use crate::support::etcd;
use crate::support::lockd::LockdProcess;
use fencelock::etcd::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest, RequestOp, ResponseHeader, ResponseOp, TxnRequest, compare,
    request_op, response_op,
};
use fencelock::etcd::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_request,
};
use fencelock::etcd::mvccpb::{Event, KeyValue};
use fencelock::lock::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_stream::wrappers::ReceiverStream;

/// Steps per seed.
const STEPS: usize = 400;
/// Seeds run by the suite; others are worth a run after a change to lockd's KV.
const SEEDS: [u64; 5] = [1, 2, 3, 4, 5];
const KEYS: [&str; 6] = ["/d/a", "/d/b", "/d/b/x", "/d/c", "/d/d", "/d/e"];
const VALUES: [&str; 4] = ["", "1", "2", "10"];

/// One request of the sequence.
#[derive(Clone, Debug)]
enum Op {
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Range(RangeRequest),
    Txn(TxnRequest),
    Grant(LeaseGrantRequest),
    Revoke(i64),
    TimeToLive(i64),
}

/// An answer with what differs between any two services (cluster and member IDs, the term)
/// taken out.
#[derive(Debug, PartialEq)]
enum Answer {
    Refused(tonic::Code, String),
    Put(Option<i64>, Option<Vec<u8>>),
    Delete(i64, i64, Vec<Vec<u8>>),
    Range(i64, String),
    Txn(i64, bool, Vec<String>),
    /// A lease operation's header revision and what it reports (not the seconds left, which
    /// depend on timing).
    Lease(i64, String),
}

fn key(rng: &mut StdRng) -> Vec<u8> {
    KEYS[rng.random_range(0..KEYS.len())].as_bytes().to_vec()
}

fn value(rng: &mut StdRng) -> Vec<u8> {
    VALUES[rng.random_range(0..VALUES.len())]
        .as_bytes()
        .to_vec()
}

/// A key range: one key, a prefix, everything from a key on, or an arbitrary end (possibly
/// before the start, which is an empty range).
fn range(rng: &mut StdRng) -> (Vec<u8>, Vec<u8>) {
    let start = key(rng);
    let end = match rng.random_range(0..4) {
        0 => Vec::new(),
        1 => {
            let mut end = start.clone();
            *end.last_mut().unwrap() += 1;
            end
        }
        2 => vec![0],
        _ => key(rng),
    };
    (start, end)
}

/// Lease IDs the sequence uses, chosen by the client so that both services use the same
/// ones; a grant of one that exists is refused, an operation on one that does not exist too.
const LEASES: [i64; 3] = [0x51, 0x52, 0x53];
/// Long enough that no lease expires during a sequence.
const LEASE_TTL: i64 = 600;

fn lease(rng: &mut StdRng) -> i64 {
    LEASES[rng.random_range(0..LEASES.len())]
}

fn put(rng: &mut StdRng) -> PutRequest {
    PutRequest {
        key: key(rng),
        value: value(rng),
        prev_kv: rng.random_bool(0.5),
        // Refused when the key is missing, or when a value is given along: both sides must
        // refuse alike.
        ignore_value: rng.random_bool(0.1),
        lease: if rng.random_bool(0.2) { lease(rng) } else { 0 },
        ignore_lease: rng.random_bool(0.05),
    }
}

/// A delete. In a Txn its range never runs "to the end" (`"\0"`): etcd's check that a Txn
/// writes a key once takes that range literally, as empty, and so lets a Put of a key it
/// covers through; etcd then reports no previous value for such a key re-created in the
/// same revision, where lockd reports the one before the revision. That corner is left out.
fn delete(rng: &mut StdRng, in_txn: bool) -> DeleteRangeRequest {
    let (key, mut range_end) = range(rng);
    if in_txn && range_end == [0] {
        range_end.clear();
    }
    DeleteRangeRequest {
        key,
        range_end,
        prev_kv: rng.random_bool(0.5),
    }
}

fn read(rng: &mut StdRng, revision: i64) -> RangeRequest {
    let (key, range_end) = range(rng);
    let bound = |rng: &mut StdRng| {
        if rng.random_bool(0.8) {
            0
        } else {
            rng.random_range(1..=revision.max(1))
        }
    };
    RangeRequest {
        key,
        range_end,
        limit: rng.random_range(0..4),
        // A past revision, the current one, or one in the future (refused).
        revision: match rng.random_range(0..6) {
            0 => rng.random_range(1..=revision + 2),
            _ => 0,
        },
        sort_order: rng.random_range(0..3),
        sort_target: rng.random_range(0..5),
        keys_only: rng.random_bool(0.2),
        count_only: rng.random_bool(0.1),
        min_mod_revision: bound(rng),
        max_mod_revision: bound(rng),
        min_create_revision: bound(rng),
        max_create_revision: bound(rng),
        ..Default::default()
    }
}

fn compare(rng: &mut StdRng, revision: i64) -> Compare {
    use compare::TargetUnion;
    let number = |rng: &mut StdRng| rng.random_range(0..=revision.max(1));
    let target = rng.random_range(0..5);
    let target_union = match target {
        0 => TargetUnion::Version(rng.random_range(0..3)),
        1 => TargetUnion::CreateRevision(number(rng)),
        2 => TargetUnion::ModRevision(number(rng)),
        3 => TargetUnion::Value(value(rng)),
        _ => TargetUnion::Lease(0),
    };
    let (key, range_end) = if rng.random_bool(0.7) {
        (key(rng), Vec::new())
    } else {
        range(rng)
    };
    Compare {
        result: rng.random_range(0..4),
        target,
        key,
        target_union: Some(target_union),
        range_end,
    }
}

/// A Txn, with Txns nested in it down to `depth` levels.
fn txn(rng: &mut StdRng, revision: i64, depth: u32) -> TxnRequest {
    let ops = |rng: &mut StdRng| {
        (0..rng.random_range(0..4))
            .map(|_| RequestOp {
                request: Some(match rng.random_range(0..7) {
                    0 | 1 => request_op::Request::RequestPut(put(rng)),
                    2 => request_op::Request::RequestDeleteRange(delete(rng, true)),
                    3 if depth > 0 => {
                        request_op::Request::RequestTxn(txn(rng, revision, depth - 1))
                    }
                    _ => request_op::Request::RequestRange(read(rng, revision)),
                }),
            })
            .collect()
    };
    TxnRequest {
        compare: (0..rng.random_range(0..3))
            .map(|_| compare(rng, revision))
            .collect(),
        success: ops(rng),
        failure: ops(rng),
    }
}

fn op(rng: &mut StdRng, revision: i64) -> Op {
    match rng.random_range(0..13) {
        0..=3 => Op::Put(put(rng)),
        4 => Op::Delete(delete(rng, false)),
        5..=7 => Op::Range(read(rng, revision)),
        8 => Op::Grant(LeaseGrantRequest {
            ttl: LEASE_TTL,
            id: lease(rng),
        }),
        9 => Op::Revoke(lease(rng)),
        10 => Op::TimeToLive(lease(rng)),
        _ => Op::Txn(txn(rng, revision, 1)),
    }
}

fn revision(header: &Option<ResponseHeader>) -> i64 {
    header.as_ref().map_or(-1, |h| h.revision)
}

/// Keys and values of a Range answer, with every field that must match, as one string.
fn describe_range(range: &fencelock::etcd::etcdserverpb::RangeResponse) -> String {
    let kvs: Vec<String> = range.kvs.iter().map(describe_kv).collect();
    format!(
        "[{}] count {} more {}",
        kvs.join(", "),
        range.count,
        range.more
    )
}

fn describe_op(response: &ResponseOp) -> String {
    match &response.response {
        Some(response_op::Response::ResponseRange(r)) => describe_range(r),
        Some(response_op::Response::ResponsePut(p)) => format!(
            "put prev {:?}",
            p.prev_kv
                .as_ref()
                .map(|kv| (kv.version, kv.mod_revision, kv.value.clone()))
        ),
        Some(response_op::Response::ResponseDeleteRange(d)) => {
            let prev: Vec<_> = d.prev_kvs.iter().map(|kv| kv.key.clone()).collect();
            format!("deleted {} prev {prev:?}", d.deleted)
        }
        Some(response_op::Response::ResponseTxn(t)) => format!("txn {}", t.succeeded),
        None => "none".into(),
    }
}

async fn run(client: &Client, op: &Op) -> Answer {
    let refused = |s: tonic::Status| Answer::Refused(s.code(), s.message().to_string());
    match op {
        Op::Put(request) => match client.kv().put(request.clone()).await {
            Ok(r) => {
                let r = r.into_inner();
                Answer::Put(
                    Some(revision(&r.header)),
                    r.prev_kv.map(|kv| format!("{kv:?}").into_bytes()),
                )
            }
            Err(s) => refused(s),
        },
        Op::Delete(request) => match client.kv().delete_range(request.clone()).await {
            Ok(r) => {
                let r = r.into_inner();
                let prev = r.prev_kvs.iter().map(|kv| format!("{kv:?}").into_bytes());
                Answer::Delete(revision(&r.header), r.deleted, prev.collect())
            }
            Err(s) => refused(s),
        },
        Op::Range(request) => match client.kv().range(request.clone()).await {
            Ok(r) => {
                let r = r.into_inner();
                Answer::Range(revision(&r.header), describe_range(&r))
            }
            Err(s) => refused(s),
        },
        Op::Txn(request) => match client.kv().txn(request.clone()).await {
            Ok(r) => {
                let r = r.into_inner();
                let ops = r.responses.iter().map(describe_op).collect();
                Answer::Txn(revision(&r.header), r.succeeded, ops)
            }
            Err(s) => refused(s),
        },
        Op::Grant(request) => match client.lease().lease_grant(*request).await {
            Ok(r) => {
                let r = r.into_inner();
                Answer::Lease(
                    revision(&r.header),
                    format!("granted {:x} ttl {}", r.id, r.ttl),
                )
            }
            Err(s) => refused(s),
        },
        Op::Revoke(id) => match client
            .lease()
            .lease_revoke(LeaseRevokeRequest { id: *id })
            .await
        {
            Ok(r) => Answer::Lease(revision(&r.into_inner().header), "revoked".into()),
            Err(s) => refused(s),
        },
        Op::TimeToLive(id) => {
            let request = LeaseTimeToLiveRequest {
                id: *id,
                keys: true,
            };
            match client.lease().lease_time_to_live(request).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let mut keys: Vec<_> = r
                        .keys
                        .iter()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect();
                    keys.sort();
                    let alive = if r.ttl < 0 { "gone" } else { "alive" };
                    let what = format!("{alive} granted {} keys {keys:?}", r.granted_ttl);
                    Answer::Lease(revision(&r.header), what)
                }
                Err(s) => refused(s),
            }
        }
    }
}

/// An event with every field a watcher sees, on one line.
fn describe_event(event: Event) -> String {
    let kv = event.kv.unwrap_or_default();
    let prev = event.prev_kv.map(|p| {
        format!(
            "{} c{} m{} v{}",
            String::from_utf8_lossy(&p.value),
            p.create_revision,
            p.mod_revision,
            p.version
        )
    });
    format!("{} {} prev {prev:?}", event.r#type, describe_kv(&kv))
}

/// A key with every field that must match, on one line.
fn describe_kv(kv: &KeyValue) -> String {
    format!(
        "{}={} c{} m{} v{} l{}",
        String::from_utf8_lossy(&kv.key),
        String::from_utf8_lossy(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        kv.lease
    )
}

/// A watch stream with `creates` queued before the call: etcd answers the call only once it
/// has a request to answer.
async fn open_watch(
    client: &Client,
    creates: Vec<WatchCreateRequest>,
) -> (
    tokio::sync::mpsc::Sender<WatchRequest>,
    tonic::Streaming<WatchResponse>,
) {
    let (requests, rx) = tokio::sync::mpsc::channel(creates.len() + 1);
    for create in creates {
        let request = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
        };
        requests.send(request).await.unwrap();
    }
    let answers = client
        .watch()
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (requests, answers)
}

/// The stream's next answer, within 10 s.
async fn next_answer(answers: &mut tonic::Streaming<WatchResponse>, what: &str) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 10 s"))
        .unwrap()
        .expect("the watch stays open")
}

/// Live watchers on one stream, created before the sequence runs: a prefix with previous
/// values, one key without puts, a range without deletes and with previous values, and
/// everything from `/d/` on. etcd and lockd number them alike, from 0.
struct LiveWatch {
    requests: tokio::sync::mpsc::Sender<WatchRequest>,
    answers: tonic::Streaming<WatchResponse>,
}

impl LiveWatch {
    /// On a connection of its own: the stream is not read while the sequence runs, and its
    /// unread answers must not hold up the requests' answers on a shared connection.
    async fn start(endpoints: Vec<String>) -> Self {
        use fencelock::etcd::etcdserverpb::watch_create_request::FilterType;
        let client = Client::connect(endpoints).await.unwrap();
        let watchers = [
            ("/d/", "/d0", vec![], true),
            ("/d/b", "", vec![FilterType::Noput as i32], false),
            ("/d/b", "/d/d", vec![FilterType::Nodelete as i32], true),
            ("/d/", "\0", vec![], false),
        ];
        let count = watchers.len();
        let creates = watchers
            .into_iter()
            .map(|(key, end, filters, prev_kv)| WatchCreateRequest {
                key: key.as_bytes().to_vec(),
                // `"\0"`: every key from `key` on.
                range_end: end.as_bytes().to_vec(),
                filters,
                prev_kv,
                ..Default::default()
            })
            .collect();
        let (requests, mut answers) = open_watch(&client, creates).await;
        for _ in 0..count {
            let created = next_answer(&mut answers, "the watcher is created").await;
            assert!(created.created, "{created:?}");
        }
        Self { requests, answers }
    }

    /// Every event each watcher received, by watch ID, once the stream reports progress at
    /// `last` or later (a progress answer comes after every event before it).
    async fn events(mut self, last: i64) -> std::collections::BTreeMap<i64, Vec<String>> {
        let progress = WatchRequest {
            request_union: Some(watch_request::RequestUnion::ProgressRequest(
                fencelock::etcd::etcdserverpb::WatchProgressRequest {},
            )),
        };
        self.requests.send(progress).await.unwrap();
        let mut events = std::collections::BTreeMap::<i64, Vec<String>>::new();
        loop {
            let answer = next_answer(&mut self.answers, "the live watch goes on").await;
            assert!(!answer.canceled, "{answer:?}");
            let at = answer.header.as_ref().map_or(0, |h| h.revision);
            if answer.events.is_empty() && at >= last {
                return events;
            }
            let list = events.entry(answer.watch_id).or_default();
            list.extend(answer.events.into_iter().map(describe_event));
        }
    }
}

/// Every event on `/d/` from revision 1 to `last`, with previous values, one line each.
async fn replay(client: &Client, last: i64) -> Vec<String> {
    let create = WatchCreateRequest {
        key: b"/d/".to_vec(),
        range_end: b"/d0".to_vec(),
        start_revision: 1,
        prev_kv: true,
        ..Default::default()
    };
    let (requests, mut answers) = open_watch(client, vec![create]).await;
    let mut events = Vec::new();
    let mut seen = 0;
    while seen < last {
        let answer = next_answer(&mut answers, "the replay goes on").await;
        assert!(!answer.canceled, "{answer:?}");
        for event in answer.events {
            seen = event.kv.as_ref().map_or(seen, |kv| kv.mod_revision);
            events.push(describe_event(event));
        }
    }
    drop(requests);
    events
}

#[tokio::test]
async fn lockd_answers_every_kv_request_as_etcd_does() {
    for seed in SEEDS {
        // A fresh pair per seed: both start at revision 1.
        let Some(etcd) = etcd::start(1).await else {
            return;
        };
        let lockd = LockdProcess::start();
        let on_etcd = Client::connect(etcd.endpoints()).await.unwrap();
        let on_lockd = Client::connect(lockd.endpoints()).await.unwrap();
        let live = (
            LiveWatch::start(etcd.endpoints()).await,
            LiveWatch::start(lockd.endpoints()).await,
        );
        let mut rng = StdRng::seed_from_u64(seed);
        let mut revision = 1;
        let mut refusals = 0;
        for step in 0..STEPS {
            let op = op(&mut rng, revision);
            let expected = run(&on_etcd, &op).await;
            let actual = run(&on_lockd, &op).await;
            assert_eq!(
                actual, expected,
                "seed {seed}, step {step}: lockd (left) and etcd (right) differ on {op:?}"
            );
            match &expected {
                Answer::Put(Some(r), _) => revision = *r,
                Answer::Delete(r, ..)
                | Answer::Range(r, _)
                | Answer::Txn(r, ..)
                | Answer::Lease(r, _) => revision = *r,
                Answer::Refused(..) => refusals += 1,
                Answer::Put(None, _) => {}
            }
        }
        let (live_etcd, live_lockd) = live;
        let expected = live_etcd.events(revision).await;
        let actual = live_lockd.events(revision).await;
        for (id, expected) in &expected {
            let actual = actual.get(id).cloned().unwrap_or_default();
            for (step, (a, e)) in actual.iter().zip(expected).enumerate() {
                assert_eq!(
                    a, e,
                    "seed {seed}: event {step} of live watcher {id} differs"
                );
            }
            assert_eq!(
                actual.len(),
                expected.len(),
                "seed {seed}: watcher {id}'s count"
            );
        }
        assert_eq!(
            actual.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        let live_events: usize = expected.values().map(Vec::len).sum();

        let expected = replay(&on_etcd, revision).await;
        let actual = replay(&on_lockd, revision).await;
        for (step, (a, e)) in actual.iter().zip(&expected).enumerate() {
            assert_eq!(a, e, "seed {seed}: event {step} of the replay differs");
        }
        assert_eq!(
            actual.len(),
            expected.len(),
            "seed {seed}: replays differ in length"
        );
        println!(
            "seed {seed}: {STEPS} requests alike, {refusals} refused alike; {live_events} live \
             events alike; {} events replayed alike up to revision {revision}",
            expected.len()
        );
        assert!(
            revision > STEPS as i64 / 4,
            "the sequence wrote too little to mean much"
        );
    }
}
