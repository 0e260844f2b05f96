//! `fencelock lockd` restarted on its data directory (`crate::support::lockd`), after `kill -9` and
//! after SIGTERM: the revision, and with it every fencing token, only goes up; leases do not
//! survive, so a session held across a restart is lost.

use std::time::Duration;

use crate::support::lockd::LockdProcess;
use fencelock::FencingToken;
use fencelock::etcd::etcdserverpb::{LeaseTimeToLiveRequest, RangeRequest};
use fencelock::lock::{Client, LossReason};
use tokio::time::{Instant, timeout};

const TTL: Duration = Duration::from_secs(2);

/// How soon after a restart a session held across it must notice: the lease is unknown to
/// the new process at once, and a renewal is due at least every TTL/3; a second covers a
/// reconnect.
const NOTICE_WITHIN: Duration = Duration::from_secs(3);

/// The revision in the header of a read: the highest revision handed out so far.
async fn header_revision(client: &Client) -> u64 {
    let request = RangeRequest {
        key: b"/restart/probe".to_vec(),
        ..Default::default()
    };
    let response = client.kv().range(request).await.expect("range");
    let header = response.into_inner().header.expect("a response header");
    u64::try_from(header.revision).expect("a positive revision")
}

/// A client of a lockd that has just (re)started; `connect` waits until it answers.
async fn connect(lockd: &LockdProcess) -> Client {
    Client::connect(lockd.endpoints()).await.expect("connect")
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Kill9,
    Sigterm,
}

#[tokio::test]
async fn tokens_and_the_revision_keep_rising_across_restarts() {
    let mut lockd = LockdProcess::start();
    let mut issued: Vec<FencingToken> = Vec::new();
    for stop in [Stop::Kill9, Stop::Sigterm, Stop::Kill9] {
        let client = connect(&lockd).await;
        let first_after_start = header_revision(&client).await;
        let session = client.session(TTL).await.unwrap();
        for _ in 0..3 {
            let guard = session.lock("/restart").await.unwrap();
            let token = guard.token();
            if let Some(&highest) = issued.iter().max() {
                assert!(
                    token > highest,
                    "token {token} after tokens up to {highest}"
                );
            }
            assert!(
                token.get() > first_after_start,
                "token {token} is not above the revision {first_after_start} lockd started with"
            );
            issued.push(token);
            guard.unlock().await.unwrap();
        }
        let before = header_revision(&client).await;
        drop(session);
        drop(client);

        match stop {
            Stop::Kill9 => lockd.kill9(),
            Stop::Sigterm => {
                let status = lockd.stop();
                assert!(status.success(), "lockd exits cleanly on SIGTERM: {status}");
            }
        }
        lockd.restart();
        let client = connect(&lockd).await;
        let after = header_revision(&client).await;
        println!("tokens so far {issued:?}; revision {before} before {stop:?}, {after} after");
        assert!(
            after > before,
            "the revision went from {before} to {after} across a restart"
        );
    }
    let client = connect(&lockd).await;
    let session = client.session(TTL).await.unwrap();
    let last = session.lock("/restart").await.unwrap();
    println!("after the last restart: token {}", last.token());
    assert!(issued.iter().all(|&token| last.token() > token));
}

#[tokio::test]
async fn a_session_held_across_a_kill_9_is_lost_after_the_restart() {
    let mut lockd = LockdProcess::start();
    let client = connect(&lockd).await;
    let session = client.session(TTL).await.unwrap();
    let held = session.lock("/held").await.unwrap();
    println!("holding {} with token {}", held.key(), held.token());

    lockd.kill9();
    lockd.restart();
    let restarted = Instant::now();
    let reason = timeout(NOTICE_WITHIN, session.lost())
        .await
        .expect("the session is lost within TTL + 1 s of the restart");
    println!(
        "session lost {:?} after the restart: {reason}",
        restarted.elapsed()
    );
    assert!(
        matches!(reason, LossReason::LeaseNotFound | LossReason::Expired),
        "{reason:?}"
    );
    let guard_reason = timeout(Duration::from_secs(1), held.lost())
        .await
        .expect("the guard reports the loss too");
    println!("the guard reports: {guard_reason}");

    let fresh = connect(&lockd).await;
    let request = LeaseTimeToLiveRequest {
        id: session.lease().get(),
        keys: false,
    };
    let left = fresh
        .lease()
        .lease_time_to_live(request)
        .await
        .unwrap()
        .into_inner()
        .ttl;
    assert_eq!(left, -1, "lease {} survived the restart", session.lease());
    assert!(
        fresh.lock_keys("/held").await.unwrap().is_empty(),
        "the lock key did not survive the restart"
    );
    let next = fresh.session(TTL).await.unwrap();
    let guard = timeout(Duration::from_secs(5), next.lock("/held"))
        .await
        .expect("the lock is free at once")
        .unwrap();
    println!("a new holder has token {}", guard.token());
    assert!(guard.token() > held.token());
}
