//! The lock client against a real etcd with authentication enabled: a user confined by its
//! role to one lock prefix and the library's own keys locks there with `--user` or
//! `ETCDCTL_USER`/`ETCDCTL_PASSWORD`; a wrong password, a missing one, and a lock outside
//! the role's prefix are each one readable line and a non-zero exit.

use std::time::Duration;

use tokio::time::Instant;

use crate::support::etcd::{self, etcdctl};
use crate::support::lock_cmd::{Holder, refused};
use crate::support::metric;
use crate::support::proc::assert_one_line;
use fencelock::lock::{Client, ConnectOptions, Credentials, RESERVED_PREFIX, Session};
use fencelock::process::EtcdOptions;

/// Turns authentication on: a root user, and `locker`, whose role reads and writes only
/// under `/app/` and the library's bookkeeping keys.
fn enable_auth(endpoints: &[String]) {
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "locker"],
        &[
            "role",
            "grant-permission",
            "locker",
            "--prefix=true",
            "readwrite",
            "/app/",
        ],
        &[
            "role",
            "grant-permission",
            "locker",
            "--prefix=true",
            "readwrite",
            RESERVED_PREFIX,
        ],
        &["user", "add", "locker:lockerpw"],
        &["user", "grant-role", "locker", "locker"],
        &["auth", "enable"],
    ] {
        etcdctl(endpoints, args);
    }
}

#[tokio::test]
async fn a_user_confined_to_a_prefix_locks_there_and_is_refused_elsewhere_in_one_line() {
    // Tokens that expire after 1 s without use, so the test sees the client fetch a new one.
    let options = EtcdOptions {
        args: vec!["--auth-token-ttl=1".into()],
        ..EtcdOptions::default()
    };
    let Some(etcd) = etcd::start_with(1, options).await else {
        return;
    };
    let endpoints = etcd.endpoints();
    enable_auth(&endpoints);
    let at = format!("--endpoints={}", endpoints.join(","));

    println!("the library, as locker: two acquisitions with increasing tokens");
    let options = ConnectOptions {
        user: Some(Credentials {
            name: "locker".into(),
            password: "lockerpw".into(),
        }),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(&endpoints, &options).await.unwrap();
    let session = client.session(Duration::from_secs(2)).await.unwrap();
    let first = session.lock("/app/orders").await.unwrap();
    let token = first.token();
    first.unlock().await.unwrap();
    let second = session.lock("/app/orders").await.unwrap();
    assert!(second.token() > token);
    second.unlock().await.unwrap();
    session.close().await.unwrap();

    println!("a wait, on the client's shared watch stream");
    let metrics = format!("http://{}/metrics", endpoints[0]);
    let waiter = client.session(Duration::from_secs(2)).await.unwrap();
    contended_hand_over(&client, &waiter, &metrics).await;
    assert_eq!(watch_streams_started(&metrics).await, 1.0);

    println!("idle past the token's TTL: etcd forgets the token, the client fetches another");
    // Waiting out a TTL etcd enforces; nothing here races it: the next lock must succeed
    // however long the wait, and fails without re-authentication.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let session = client.session(Duration::from_secs(2)).await.unwrap();
    let third = session.lock("/app/orders").await.unwrap();
    assert!(third.token() > token);
    third.unlock().await.unwrap();
    session.close().await.unwrap();

    println!(
        "a wait after the token expired: the shared stream, opened with the old token, refuses the watch and is replaced"
    );
    contended_hand_over(&client, &waiter, &metrics).await;
    assert_eq!(watch_streams_started(&metrics).await, 2.0);
    waiter.close().await.unwrap();

    println!("fencelock lock --user name:password");
    let holder = Holder::spawn_with(
        "/app/cli",
        &[at.clone(), "--user=locker:lockerpw".into()],
        &[],
    );
    let event = holder.expect("acquired", Duration::from_secs(10));
    assert_eq!(event["event"], "acquired", "{event}");
    holder.release();

    println!("ETCDCTL_USER and ETCDCTL_PASSWORD");
    let envs = [
        ("ETCDCTL_USER", "locker".to_string()),
        ("ETCDCTL_PASSWORD", "lockerpw".to_string()),
    ];
    let holder = Holder::spawn_with("/app/cli", std::slice::from_ref(&at), &envs);
    let event = holder.expect("acquired", Duration::from_secs(10));
    assert_eq!(event["event"], "acquired", "{event}");
    holder.release();

    println!("a wrong password");
    let (code, stderr) = refused("/app/cli", &[at.clone(), "--user=locker:nope".into()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line(&stderr, "authentication failed");
    assert!(stderr.contains("locker"), "names the user: {stderr}");

    println!("a user without a password: a usage error");
    let (code, stderr) = refused("/app/cli", &[at.clone(), "--user=locker".into()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--password"), "{stderr}");

    println!("a lock outside the role's prefix");
    let (code, stderr) = refused("/elsewhere", &[at.clone(), "--user=locker:lockerpw".into()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line(&stderr, "permission denied");
    assert!(stderr.contains("/elsewhere"), "names the lock: {stderr}");

    println!("no credentials at all");
    let (code, stderr) = refused("/app/cli", std::slice::from_ref(&at));
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// One hand-over: a new session holds `/app/orders` while `waiter` queues behind it and
/// watches, then releases; `waiter` acquires and releases in turn.
async fn contended_hand_over(client: &Client, waiter: &Session, metrics: &str) {
    let holder = client.session(Duration::from_secs(2)).await.unwrap();
    let held = holder.lock("/app/orders").await.unwrap();
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.lock("/app/orders").await?.unlock().await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(metrics, "etcd_debugging_mvcc_watcher_total").await < 1.0 {
        assert!(Instant::now() < deadline, "the waiter never watched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.unlock().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiter acquires within 10 s of the release")
        .unwrap()
        .unwrap();
    holder.close().await.unwrap();
}

/// Watch streams etcd has seen opened.
async fn watch_streams_started(metrics: &str) -> f64 {
    metric(
        metrics,
        "grpc_server_started_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"}",
    )
    .await
}
