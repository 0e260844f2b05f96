//! The lock library against a real 3-member etcd (`crate::support::etcd`): fencing tokens across
//! members, and a cluster that loses a member.
//!
//! etcd only: these tests are about members (killed, frozen, lease IDs carrying member bits),
//! and `fencelock lockd` is a single member. The single-member suite runs on both services in
//! `lock_suite.rs`.

use std::time::Duration;

use crate::support::etcd;
use fencelock::etcd::etcdserverpb::StatusRequest;
use fencelock::lock::Client;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(2);

#[tokio::test]
async fn tokens_increase_through_every_member_while_lease_ids_are_not_ordered() {
    let Some(etcd) = etcd::start(3).await else {
        return;
    };
    let mut sessions = Vec::new();
    for i in 0..3 {
        let client = Client::connect([etcd.endpoint(i)]).await.unwrap();
        sessions.push(client.session(TTL).await.unwrap());
    }

    println!("holders take turns, each through its own member");
    let mut last = None;
    for round in 0..9 {
        let session = &sessions[round % 3];
        let guard = session.lock("/members").await.unwrap();
        println!(
            "  via member {}: lease {} token {}",
            round % 3,
            session.lease(),
            guard.token()
        );
        if let Some(last) = last {
            assert!(guard.token() > last, "token {} after {last}", guard.token());
        }
        last = Some(guard.token());
        guard.unlock().await.unwrap();
    }

    // A lease ID starts with bits of the ID of the member that granted it, so the member
    // decides the order, not the time.
    let prefix = |s: &fencelock::lock::Session| s.lease().get() >> 48;
    let high = (0..3).max_by_key(|&i| prefix(&sessions[i])).unwrap();
    let low = (0..3).min_by_key(|&i| prefix(&sessions[i])).unwrap();
    assert_ne!(
        prefix(&sessions[high]),
        prefix(&sessions[low]),
        "members share an ID prefix"
    );

    let earlier = sessions[high].client().session(TTL).await.unwrap();
    let first = earlier.lock("/lease-order").await.unwrap();
    let first_token = first.token();
    first.unlock().await.unwrap();
    let later = sessions[low].client().session(TTL).await.unwrap();
    let second = later.lock("/lease-order").await.unwrap();
    println!(
        "earlier holder: lease {} token {first_token}; later holder: lease {} token {}",
        earlier.lease(),
        later.lease(),
        second.token()
    );
    assert!(
        second.token() > first_token,
        "tokens follow the order of holders"
    );
    assert!(
        later.lease().get() < earlier.lease().get(),
        "the later lease ID is lower: lease IDs cannot fence"
    );
}

#[tokio::test]
async fn sessions_and_locks_keep_working_with_one_member_of_three_killed() {
    let Some(mut etcd) = etcd::start(3).await else {
        return;
    };
    let client = Client::connect(etcd.endpoints()).await.unwrap();
    let session = client.session(TTL).await.unwrap();
    let before = session.lock("/ha").await.unwrap();
    let mut last = before.token();
    before.unlock().await.unwrap();

    let leader = leader_index(&etcd).await;
    println!("killing member {leader}, the leader");
    etcd.kill(leader);

    // Keep locking for more than two TTLs: renewals must go through the survivors.
    let until = Instant::now() + TTL * 2 + Duration::from_millis(500);
    let mut rounds = 0;
    while Instant::now() < until {
        let guard = session.lock("/ha").await.unwrap();
        assert!(guard.token() > last);
        last = guard.token();
        guard.unlock().await.unwrap();
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("{rounds} lock/unlock rounds with a member down; last token {last}");
    assert!(session.lost_reason().is_none(), "the session survived");
    assert!(session.remaining() > Duration::ZERO);

    let fresh = client.session(TTL).await.unwrap();
    let guard = fresh.lock("/ha").await.unwrap();
    assert!(guard.token() > last, "a new session locks too");
    last = guard.token();
    guard.unlock().await.unwrap();

    println!("restarting member {leader} on its data");
    etcd.restart(leader).await.unwrap();
    let through_it = Client::connect([etcd.endpoint(leader)]).await.unwrap();
    let session = through_it.session(TTL).await.unwrap();
    let guard = session.lock("/ha").await.unwrap();
    println!("through the restarted member: token {}", guard.token());
    assert!(
        guard.token() > last,
        "the restarted member knows every earlier revision"
    );
    guard.unlock().await.unwrap();
}

#[tokio::test]
async fn sessions_survive_a_frozen_member() {
    let Some(etcd) = etcd::start(3).await else {
        return;
    };
    let client = Client::connect(etcd.endpoints()).await.unwrap();
    let session = client.session(TTL).await.unwrap();
    let frozen = (leader_index(&etcd).await + 1) % etcd.len();
    println!("freezing member {frozen}, a follower, for two TTLs");
    etcd.pause(frozen);
    let woken = tokio::time::timeout(TTL * 2, session.lost()).await;
    etcd.resume(frozen);
    assert!(woken.is_err(), "the session was lost: {woken:?}");
    let guard = session.lock("/frozen-member").await.unwrap();
    println!(
        "after the freeze: lease {} still renewed, token {}",
        session.lease(),
        guard.token()
    );
    guard.unlock().await.unwrap();
}

/// Waiters whose watches may run through a frozen member still take their turn promptly:
/// a waiter looks again on its own every few seconds, through any member that answers,
/// instead of waiting for the frozen connection to be declared dead.
#[tokio::test]
async fn waiters_take_their_turn_promptly_while_a_member_is_frozen() {
    let Some(etcd) = etcd::start(3).await else {
        return;
    };
    let leader = leader_index(&etcd).await;
    let frozen = (leader + 1) % etcd.len();
    let other = (leader + 2) % etcd.len();
    let holder_client = Client::connect([etcd.endpoint(leader)]).await.unwrap();
    let holder = holder_client.session(TTL).await.unwrap();
    let held = holder.lock("/frozen-watch").await.unwrap();

    // Each waiter has its own client on the member to be frozen and one other; where its
    // watch runs is up to the client's balancer.
    const WAITERS: usize = 4;
    let (acquired_tx, mut acquired) = tokio::sync::mpsc::unbounded_channel();
    let mut waiters = Vec::new();
    for i in 0..WAITERS {
        let client = Client::connect([etcd.endpoint(frozen), etcd.endpoint(other)])
            .await
            .unwrap();
        let session = client.session(TTL).await.unwrap();
        let acquired_tx = acquired_tx.clone();
        waiters.push(tokio::spawn(async move {
            let guard = session.lock("/frozen-watch").await.unwrap();
            acquired_tx.send((i, Instant::now())).unwrap();
            guard.unlock().await.unwrap();
            session.close().await.unwrap();
        }));
        let deadline = Instant::now() + Duration::from_secs(5);
        while holder_client
            .lock_keys("/frozen-watch")
            .await
            .unwrap()
            .len()
            < i + 2
        {
            assert!(Instant::now() < deadline, "waiter {i} did not queue");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    println!("{WAITERS} waiters queued; freezing member {frozen} (a follower)");
    etcd.pause(frozen);
    // Let the watches' connections to the frozen member go quiet before the hand-overs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut last = Instant::now();
    held.unlock().await.unwrap();
    // A look again is due every 2 s; its read is sent through another member after 0.5 s
    // without an answer, and may reach the frozen one twice (through the balancer, then in
    // the rotation over members): about 3 s at worst. Waiting for the frozen connection to
    // be declared dead instead would take the client's HTTP/2 ping interval and timeout, 15 s.
    let bound = Duration::from_secs(6);
    for expected in 0..WAITERS {
        let (i, at) = tokio::time::timeout(bound, acquired.recv())
            .await
            .unwrap_or_else(|_| panic!("no hand-over within {bound:?} (waiter {expected})"))
            .unwrap();
        println!(
            "waiter {i} acquired {:?} after the previous release",
            at - last
        );
        assert_eq!(i, expected, "waiters keep their order");
        last = at;
    }
    etcd.resume(frozen);
    for waiter in waiters {
        waiter.await.unwrap();
    }
}

/// Index of the member that currently leads, as the members themselves report it.
async fn leader_index(etcd: &etcd::TestEtcd) -> usize {
    let mut ids = Vec::new();
    let mut leader = 0;
    for i in 0..etcd.len() {
        let client = Client::connect([etcd.endpoint(i)]).await.unwrap();
        let status = client
            .maintenance()
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        ids.push(status.header.unwrap().member_id);
        leader = status.leader;
    }
    ids.iter()
        .position(|&id| id == leader)
        .expect("a member leads")
}
