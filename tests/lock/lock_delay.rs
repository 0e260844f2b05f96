//! Lock-delay with a frozen holder: the next holder acquires no sooner than the delay after
//! the holder's lease ended (on etcd the waiting client applies it, on lockd the server
//! does), and a released lock passes at once.

use std::time::Duration;

use fencelock::etcd::etcdserverpb as pb;
use fencelock::lock::{Client, LockOptions, Session};
use tokio::time::Instant;

use crate::support::backend::wait_for_keys;
use crate::support::etcd;
use crate::support::lock_cmd::Holder;
use crate::support::lockd::LockdProcess;
use crate::support::proc::Signal;

const DELAY: Duration = Duration::from_secs(3);

/// The lease ID in a lock key `<name>/<lease hex>`.
fn lease_of(key: &str) -> i64 {
    let hex = key.rsplit_once('/').expect("a lock key").1;
    i64::from_str_radix(hex, 16).expect("a lease ID in hex")
}

/// Asks for `lease` every 20 ms until it is gone; the time the last "alive" answer was asked
/// for. The lease ended after that instant.
async fn last_seen_alive(client: &Client, lease: i64) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut alive_at = Instant::now();
    loop {
        let asked = Instant::now();
        let ttl = client
            .lease()
            .lease_time_to_live(pb::LeaseTimeToLiveRequest {
                id: lease,
                keys: false,
            })
            .await
            .expect("LeaseTimeToLive")
            .into_inner()
            .ttl;
        if ttl < 0 {
            return alive_at;
        }
        alive_at = asked;
        assert!(
            Instant::now() < deadline,
            "the frozen holder's lease never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `fencelock lock` holder frozen past its lease; a waiter with `options` in this process.
/// Returns how long after the lease was last seen alive the waiter acquired.
async fn acquire_after_a_frozen_holder(endpoints: &[String], options: LockOptions) -> Duration {
    let holder = Holder::spawn_with(
        "/delayed",
        &[format!("--endpoints={}", endpoints.join(","))],
        &[],
    );
    let acquired = holder.expect("acquired", Duration::from_secs(10));
    let lease = lease_of(acquired["key"].as_str().expect("the lock key"));

    let client = Client::connect(endpoints).await.unwrap();
    let session = Session::grant(client.clone(), Duration::from_secs(5))
        .await
        .unwrap();
    let waiter = tokio::spawn(async move {
        let guard = session.lock_with("/delayed", options).await.unwrap();
        (Instant::now(), guard, session)
    });
    wait_for_keys(&client, "/delayed", 2).await;

    holder.signal(Signal::STOP);
    let alive = last_seen_alive(&client, lease).await;
    let (acquired_at, guard, _session) = tokio::time::timeout(DELAY * 4, waiter)
        .await
        .expect("the waiter acquires after the delay")
        .unwrap();
    drop(guard);
    acquired_at - alive
}

/// A holder that releases: the waiter acquires well within the delay.
async fn acquire_after_a_release(endpoints: &[String], options: LockOptions) -> Duration {
    let client = Client::connect(endpoints).await.unwrap();
    let first = client.session(Duration::from_secs(5)).await.unwrap();
    let guard = first.lock("/released").await.unwrap();
    let second = client.session(Duration::from_secs(5)).await.unwrap();
    let waiter = tokio::spawn(async move {
        let guard = second.lock_with("/released", options).await.unwrap();
        (Instant::now(), guard, second)
    });
    wait_for_keys(&client, "/released", 2).await;
    let released = Instant::now();
    guard.unlock().await.unwrap();
    let (acquired_at, _guard, _second) = waiter.await.unwrap();
    acquired_at - released
}

fn client_side_delay() -> LockOptions {
    LockOptions {
        lock_delay: DELAY,
        ..LockOptions::default()
    }
}

#[tokio::test]
async fn on_etcd_the_waiting_client_applies_the_lock_delay() {
    let Some(cluster) = etcd::start(1).await else {
        return;
    };
    let endpoints = cluster.endpoints();
    let after = acquire_after_a_frozen_holder(&endpoints, client_side_delay()).await;
    println!("acquired {after:?} after the frozen holder's lease was last seen alive");
    assert!(
        after >= DELAY,
        "acquired {after:?} after the lease ended, delay {DELAY:?}"
    );
    assert!(
        after < DELAY + Duration::from_secs(4),
        "acquired only {after:?} after"
    );

    let after = acquire_after_a_release(&endpoints, client_side_delay()).await;
    assert!(after < DELAY, "a released lock was delayed {after:?}");
}

#[tokio::test]
async fn lockd_applies_its_lock_delay_to_every_waiter() {
    let lockd = LockdProcess::start_with(&["--lock-delay".into(), "3s".into()]);
    let endpoints = lockd.endpoints();
    // The waiter asks for no delay of its own.
    let after = acquire_after_a_frozen_holder(&endpoints, LockOptions::default()).await;
    println!("acquired {after:?} after the frozen holder's lease was last seen alive");
    assert!(
        after >= DELAY,
        "acquired {after:?} after the lease ended, delay {DELAY:?}"
    );
    assert!(
        after < DELAY + Duration::from_secs(4),
        "acquired only {after:?} after"
    );

    let after = acquire_after_a_release(&endpoints, LockOptions::default()).await;
    assert!(after < DELAY, "a released lock was delayed {after:?}");
}

#[tokio::test]
async fn without_a_lock_delay_a_frozen_holders_lock_passes_when_its_lease_ends() {
    // The control: the same story without the delay hands the lock over at once, so the
    // tests above measure the delay and not the hand-over.
    let lockd = LockdProcess::start();
    let after = acquire_after_a_frozen_holder(&lockd.endpoints(), LockOptions::default()).await;
    assert!(
        after < DELAY,
        "acquired {after:?} after the lease ended with no delay"
    );
}
