//! etcd's server-side lock service (v3lock `Lock`/`Unlock`) on both lock services
//! (`crate::support::backend`: a real etcd from `crate::support::etcd`, and lockd): queueing, hand-over in
//! create_revision order, a waiter that gives up, and a lease that does not exist.

use crate::both_backends;

use std::time::Duration;

use crate::support::backend::Service;
use fencelock::etcd::etcdserverpb::LeaseGrantRequest;
use fencelock::etcd::v3lockpb::{LockRequest, UnlockRequest};
use fencelock::lock::{Client, LeaseId};
use tokio::time::timeout;

async fn lease(client: &Client) -> i64 {
    let grant = LeaseGrantRequest { ttl: 30, id: 0 };
    client
        .lease()
        .lease_grant(grant)
        .await
        .unwrap()
        .into_inner()
        .id
}

fn lock(name: &str, lease: i64) -> LockRequest {
    LockRequest {
        name: name.as_bytes().to_vec(),
        lease,
    }
}

async fn waiters_get_the_lock_in_turn_and_keys_carry_growing_revisions(service: Service) {
    let client = Client::connect(service.endpoints()).await.unwrap();
    let (first, second) = (lease(&client).await, lease(&client).await);
    let held = client
        .v3lock()
        .lock(lock("/v3", first))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        held.key,
        format!("/v3/{}", LeaseId::new(first)).into_bytes(),
        "the key is the name, a slash and the lease in hex"
    );

    let mut waiter = client.v3lock();
    let waiting = tokio::spawn(async move { waiter.lock(lock("/v3", second)).await });
    let keys = loop {
        let keys = client.lock_keys("/v3").await.unwrap();
        if keys.len() == 2 {
            break keys;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("queued: {keys:?}");
    assert!(keys[1].token > keys[0].token);
    assert!(
        !waiting.is_finished(),
        "the second lock waits for the first"
    );

    let unlock = UnlockRequest {
        key: held.key.clone(),
    };
    client.v3lock().unlock(unlock).await.unwrap();
    let granted = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiter gets the lock after the unlock")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(
        granted.key,
        format!("/v3/{}", LeaseId::new(second)).into_bytes()
    );
    assert!(granted.header.unwrap().revision > held.header.unwrap().revision);
}

async fn a_waiter_that_gives_up_leaves_no_key(service: Service) {
    let client = Client::connect(service.endpoints()).await.unwrap();
    let (first, second) = (lease(&client).await, lease(&client).await);
    client
        .v3lock()
        .lock(lock("/v3-cancel", first))
        .await
        .unwrap();
    let gave_up = timeout(
        Duration::from_millis(300),
        client.v3lock().lock(lock("/v3-cancel", second)),
    )
    .await;
    assert!(gave_up.is_err(), "the lock is held: the waiter times out");
    // The server notices the cancelled call and deletes the waiter's key.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let keys = client.lock_keys("/v3-cancel").await.unwrap();
        if keys.len() == 1 {
            assert_eq!(keys[0].lease, LeaseId::new(first));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the waiter's key stayed: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn locking_with_a_lease_that_does_not_exist_fails(service: Service) {
    let client = Client::connect(service.endpoints()).await.unwrap();
    let gone = lease(&client).await;
    client.revoke(LeaseId::new(gone)).await.unwrap();
    let refused = timeout(
        Duration::from_secs(5),
        client.v3lock().lock(lock("/v3-gone", gone)),
    )
    .await
    .expect("answered at once")
    .expect_err("no lock without a lease");
    println!("refused: {refused}");
    assert!(
        refused.message().contains("requested lease not found"),
        "{refused}"
    );
    assert!(client.lock_keys("/v3-gone").await.unwrap().is_empty());
}

both_backends!(
    waiters_get_the_lock_in_turn_and_keys_carry_growing_revisions,
    a_waiter_that_gives_up_leaves_no_key,
    locking_with_a_lease_that_does_not_exist_fails,
);
