//! lockd's HTTP/1.1 endpoints on its gRPC port, as etcd serves them: `GET /health` answers
//! etcd's JSON, `GET /metrics` shows the state in Prometheus' text format, an unknown path is
//! a JSON 404, and gRPC clients on the same port are unaffected. lockd runs as
//! `fencelock lockd` (`crate::support::lockd`).

use std::process::Command;
use std::time::{Duration, Instant};

use fencelock::etcd::etcdserverpb::kv_client::KvClient;
use fencelock::etcd::etcdserverpb::lease_client::LeaseClient;
use fencelock::etcd::etcdserverpb::watch_client::WatchClient;
use fencelock::etcd::etcdserverpb::{
    LeaseGrantRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
    watch_request::RequestUnion,
};
use fencelock::etcd::v3lockpb::{LockRequest, lock_client::LockClient};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::support::etcd::etcdctl_bin;
use crate::support::lockd::LockdProcess;

/// Bound for anything a healthy local service does at once (an answer, a gauge catching up).
const PROMPTLY: Duration = Duration::from_secs(5);

fn base_url(lockd: &LockdProcess) -> String {
    format!("http://{}", lockd.endpoints()[0])
}

async fn channel(lockd: &LockdProcess) -> Channel {
    Channel::from_shared(base_url(lockd))
        .unwrap()
        .connect()
        .await
        .expect("gRPC connection to lockd")
}

/// The value of the unlabelled series `name` in `text`, if it is there.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.split_once(' ')?;
        (series == name).then(|| value.parse().ok()).flatten()
    })
}

/// Scrapes `/metrics` until `series` reaches `wanted`, or fails after [`PROMPTLY`] with the
/// last exposition.
async fn await_metric(http: &reqwest::Client, url: &str, series: &str, wanted: f64) -> String {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let response = http.get(format!("{url}/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = response.text().await.unwrap();
        if sample(&text, series) == Some(wanted) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {:?}, not {wanted}, after {PROMPTLY:?}:\n{text}",
            sample(&text, series)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_answers_etcds_json_and_an_unknown_path_a_json_404() {
    let lockd = LockdProcess::start();
    let url = base_url(&lockd);
    let http = crate::support::http_client();

    // 1. /health: 200 and etcd's body, exactly.
    let response = http.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "health": "true", "reason": "" }));

    // 2. A path nothing serves: 404 with a JSON error naming it.
    let response = http
        .get(format!("{url}/no/such/path"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["path"], "/no/such/path", "{body}");
    assert!(body["error"].is_string(), "{body}");

    // 3. etcd's own health check, which goes over gRPC, on the same port: a Range of the
    //    key `health`, and with etcdctl 3.5 the alarm list.
    match Command::new(etcdctl_bin()).arg("version").output() {
        Ok(output) if output.status.success() => {
            let output = Command::new(etcdctl_bin())
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", lockd.endpoints()[0]))
                .args(["--command-timeout=5s", "endpoint", "health"])
                .output()
                .expect("cannot run etcdctl");
            let said = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "etcdctl endpoint health: {said}");
            assert!(said.contains("is healthy"), "{said}");
        }
        _ => eprintln!("etcdctl not found (`{}`): its check skipped", etcdctl_bin()),
    }
}

#[tokio::test]
async fn metrics_show_keys_leases_watchers_and_lock_waiters_and_grpc_still_works() {
    let lockd = LockdProcess::start();
    let url = base_url(&lockd);
    let http = crate::support::http_client();
    let channel = channel(&lockd).await;
    let mut kv = KvClient::new(channel.clone());
    let mut leases = LeaseClient::new(channel.clone());

    // 1. Nothing yet: no keys, leases or watchers.
    let text = await_metric(&http, &url, "fencelock_lockd_keys", 0.0).await;
    assert_eq!(sample(&text, "fencelock_lockd_leases"), Some(0.0));
    assert_eq!(sample(&text, "fencelock_lockd_watchers"), Some(0.0));

    // 2. A put key and a granted lease show in their gauges, the revision with the put.
    let put = kv
        .put(PutRequest {
            key: b"/http/key".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let revision = put.header.unwrap().revision;
    let lease = leases
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let text = await_metric(&http, &url, "fencelock_lockd_keys", 1.0).await;
    assert_eq!(sample(&text, "fencelock_lockd_leases"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "fencelock_lockd_revision"),
        Some(revision as f64),
        "{text}"
    );
    assert!(
        text.contains(
            "fencelock_lockd_requests_total{grpc_service=\"etcdserverpb.KV\",grpc_method=\"Put\"} 1\n"
        ),
        "{text}"
    );

    // 3. An open watcher shows on one watch stream; the stream stays open while `_requests`
    //    and `answers` live.
    let (requests, rx) = mpsc::channel(1);
    requests
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"/http/key".to_vec(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    let mut answers = WatchClient::new(channel.clone())
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let created = answers.message().await.unwrap().expect("created answer");
    assert!(created.created);
    let text = await_metric(&http, &url, "fencelock_lockd_watchers", 1.0).await;
    assert_eq!(sample(&text, "fencelock_lockd_watch_streams"), Some(1.0));

    // 4. A Lock call queued behind the lease's own lock counts as a waiter.
    let mut locks = LockClient::new(channel.clone());
    locks
        .lock(LockRequest {
            name: b"/http/lock".to_vec(),
            lease,
        })
        .await
        .unwrap();
    let other = leases
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut waiting_client = LockClient::new(channel.clone());
    let waiting = tokio::spawn(async move {
        waiting_client
            .lock(LockRequest {
                name: b"/http/lock".to_vec(),
                lease: other,
            })
            .await
    });
    await_metric(&http, &url, "fencelock_lockd_lock_waiters", 1.0).await;
    waiting.abort();
    await_metric(&http, &url, "fencelock_lockd_lock_waiters", 0.0).await;

    // 5. gRPC on the same port still answers, on the connection used before the scrapes.
    let range = kv
        .range(RangeRequest {
            key: b"/http/key".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(range.kvs.len(), 1);
    assert_eq!(range.kvs[0].value.as_ref(), b"v");

    // 6. A lease left to expire (TTL 1 s, the minimum) is counted once its deadline passes.
    leases
        .lease_grant(LeaseGrantRequest { ttl: 1, id: 0 })
        .await
        .unwrap();
    await_metric(&http, &url, "fencelock_lockd_lease_expiries_total", 1.0).await;
    drop(requests);
}
