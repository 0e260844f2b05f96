//! The lock library's suite, run against both lock services (`crate::support::backend`): a real
//! single-member etcd (`crate::support::etcd`) and `fencelock lockd`. Tokens, queueing, timeouts,
//! cancellation, and loss of the session; the same assertions hold on either.

use crate::both_backends;

use std::time::Duration;

use crate::support::backend::{Backend, Service, wait_for_keys};
use crate::support::etcd::{etcdctl, within_ttl};
use crate::support::metric;
use fencelock::etcd::etcdserverpb::LeaseTimeToLiveRequest as TimeToLive;
use fencelock::lock::{Client, Error, LossReason, Session};
use tokio::time::{Instant, timeout};

const TTL: Duration = Duration::from_secs(2);

async fn client(service: &Service) -> Client {
    Client::connect(service.endpoints()).await.expect("connect")
}

/// A session with the tests' TTL.
async fn session(client: &Client) -> Session {
    client.session(TTL).await.expect("session")
}

async fn successive_holders_get_strictly_increasing_tokens(service: Service) {
    let client = client(&service).await;
    let sessions = [session(&client).await, session(&client).await];
    let mut last = None;
    for round in 0..6 {
        let session = &sessions[round % 2];
        let guard = session.lock("/tokens").await.unwrap();
        println!("holder {} got token {}", guard.key(), guard.token());
        let keys = client.lock_keys("/tokens").await.unwrap();
        assert_eq!(
            keys[0].token,
            guard.token(),
            "the token is the key's create_revision"
        );
        assert_eq!(keys[0].key, guard.key());
        if let Some(last) = last {
            assert!(guard.token() > last, "token {} after {last}", guard.token());
        }
        last = Some(guard.token());
        guard.unlock().await.unwrap();
    }
}
both_backends!(successive_holders_get_strictly_increasing_tokens);

async fn waiters_acquire_in_arrival_order(service: Service) {
    let client = client(&service).await;
    let holder = session(&client).await;
    let first = holder.lock("/queue").await.unwrap();
    println!("holder has token {}", first.token());

    let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut waiters = Vec::new();
    for arrival in 0..4 {
        let session = session(&client).await;
        let order_tx = order_tx.clone();
        waiters.push(tokio::spawn(async move {
            let guard = session.lock("/queue").await.unwrap();
            order_tx.send((arrival, guard.token())).unwrap();
            guard.unlock().await.unwrap();
        }));
        // The next waiter starts only once this one's key exists: that is its arrival.
        wait_for_keys(&client, "/queue", arrival + 2).await;
    }
    println!("4 waiters queued; releasing the holder");
    let mut last_token = first.token();
    first.unlock().await.unwrap();
    for expected in 0..4 {
        let (arrival, token) = timeout(Duration::from_secs(5), order_rx.recv())
            .await
            .expect("a waiter acquires")
            .unwrap();
        println!("waiter {arrival} acquired with token {token}");
        assert_eq!(arrival, expected, "waiters are served in arrival order");
        assert!(token > last_token);
        last_token = token;
    }
    for waiter in waiters {
        waiter.await.unwrap();
    }
}
both_backends!(waiters_acquire_in_arrival_order);

async fn contending_sessions_hand_the_lock_over_in_token_order_without_stalling(service: Service) {
    let client = client(&service).await;
    let acquisitions = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let until = Instant::now() + Duration::from_secs(3);
    let mut workers = Vec::new();
    for _ in 0..6 {
        let session = session(&client).await;
        let acquisitions = acquisitions.clone();
        workers.push(tokio::spawn(async move {
            let mut cycles = 0;
            while Instant::now() < until {
                // A lost wake-up would leave a waiter stuck: give up loudly instead.
                let guard = session
                    .try_lock("/busy-loop", Duration::from_secs(5))
                    .await
                    .unwrap();
                acquisitions.lock().unwrap().push(guard.token());
                guard.unlock().await.unwrap();
                cycles += 1;
            }
            cycles
        }));
    }
    let mut per_session = Vec::new();
    for worker in workers {
        per_session.push(worker.await.unwrap());
    }
    let tokens = acquisitions.lock().unwrap().clone();
    println!("{} acquisitions, per session {per_session:?}", tokens.len());
    assert!(
        per_session.iter().all(|&n| n > 0),
        "every session got the lock"
    );
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens increase in the order holders acquired"
    );
}
both_backends!(contending_sessions_hand_the_lock_over_in_token_order_without_stalling);

async fn next_waiter_acquires_immediately_after_unlock(service: Service) {
    let client = client(&service).await;
    let (a, b) = (session(&client).await, session(&client).await);
    let held = a.lock("/handover").await.unwrap();
    let waiter = tokio::spawn(async move {
        let guard = b.lock("/handover").await.unwrap();
        (Instant::now(), guard.token())
    });
    wait_for_keys(&client, "/handover", 2).await;
    let released = Instant::now();
    let first_token = held.token();
    held.unlock().await.unwrap();
    let (acquired, token) = waiter.await.unwrap();
    let gap = acquired - released;
    println!("the waiter acquired {gap:?} after the unlock began");
    assert!(gap < Duration::from_secs(1), "handover took {gap:?}");
    assert!(token > first_token);
}
both_backends!(next_waiter_acquires_immediately_after_unlock);

async fn try_lock_timeout_leaves_no_key_under_the_lock_name(service: Service) {
    let client = client(&service).await;
    let (a, b) = (session(&client).await, session(&client).await);
    let held = a.lock("/busy").await.unwrap();
    let started = Instant::now();
    let err = b
        .try_lock("/busy", Duration::from_millis(300))
        .await
        .unwrap_err();
    println!("try_lock gave up after {:?}: {err}", started.elapsed());
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let keys = client.lock_keys("/busy").await.unwrap();
    assert_eq!(keys.len(), 1, "only the holder's key remains: {keys:?}");
    assert_eq!(keys[0].key, held.key());
}
both_backends!(try_lock_timeout_leaves_no_key_under_the_lock_name);

async fn a_cancelled_wait_deletes_its_waiter_key(service: Service) {
    let client = client(&service).await;
    let (a, b) = (session(&client).await, session(&client).await);
    let held = a.lock("/cancel").await.unwrap();
    let waiter = b.clone();
    let wait = tokio::spawn(async move { waiter.lock("/cancel").await });
    wait_for_keys(&client, "/cancel", 2).await;
    println!("the waiter is queued; dropping its lock future");
    wait.abort();
    assert!(wait.await.unwrap_err().is_cancelled());
    wait_for_keys(&client, "/cancel", 1).await;
    assert_eq!(
        client.lock_keys("/cancel").await.unwrap()[0].key,
        held.key()
    );

    println!("dropping lock calls at various points, also while the key is being created");
    for delay_us in [0, 200, 500, 1000, 2000, 5000] {
        let waiter = b.clone();
        let wait = tokio::spawn(async move { waiter.lock("/cancel").await });
        tokio::time::sleep(Duration::from_micros(delay_us)).await;
        wait.abort();
        let _ = wait.await;
        wait_for_keys(&client, "/cancel", 1).await;
    }
    // The name is free for the session again once its cleanup is done: the key is seen gone
    // a moment before the cleanup has its answer and releases the name.
    let again = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match b.lock("/cancel").await {
                Err(Error::AlreadyLocked { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                locked => return locked.unwrap(),
            }
        }
    });
    held.unlock().await.unwrap();
    let guard = timeout(Duration::from_secs(5), again)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        client.lock_keys("/cancel").await.unwrap()[0].key,
        guard.key()
    );
}
both_backends!(a_cancelled_wait_deletes_its_waiter_key);

async fn a_session_cannot_lock_the_same_name_twice(service: Service) {
    let client = client(&service).await;
    let session = session(&client).await;
    let held = session.lock("/twice").await.unwrap();
    let err = session
        .try_lock("/twice", Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyLocked { .. }), "{err:?}");
    held.unlock().await.unwrap();
    let again = session.lock("/twice").await.unwrap();
    println!(
        "after unlocking, the same session locks again with token {}",
        again.token()
    );
}
both_backends!(a_session_cannot_lock_the_same_name_twice);

async fn lost_fires_within_ttl_after_the_lease_is_revoked_and_the_next_waiter_acquires(
    service: Service,
) {
    let client = client(&service).await;
    let (a, b) = (session(&client).await, session(&client).await);
    let held = a.lock("/revoked").await.unwrap();
    let waiter = tokio::spawn(async move { b.lock("/revoked").await.unwrap() });
    wait_for_keys(&client, "/revoked", 2).await;

    println!("revoking lease {} with etcdctl", a.lease());
    let revoked = Instant::now();
    etcdctl(
        &service.endpoints(),
        &["lease", "revoke", &a.lease().to_string()],
    );

    let reason = timeout(within_ttl(a.ttl()), a.lost())
        .await
        .expect("session lost in time");
    println!("session lost after {:?}: {reason}", revoked.elapsed());
    assert_eq!(reason, LossReason::LeaseNotFound);
    assert_eq!(a.remaining(), Duration::ZERO);
    let guard_reason = timeout(Duration::from_secs(1), held.lost())
        .await
        .expect("guard lost");
    println!("the guard reports: {guard_reason}");
    let held_token = held.token();
    drop(held);

    let next = timeout(within_ttl(TTL), waiter)
        .await
        .expect("waiter acquires")
        .unwrap();
    assert!(next.token() > held_token);
    let err = a.lock("/revoked").await.unwrap_err();
    assert!(matches!(err, Error::SessionLost { .. }), "{err:?}");
}
both_backends!(lost_fires_within_ttl_after_the_lease_is_revoked_and_the_next_waiter_acquires);

async fn a_waiter_whose_lease_is_revoked_while_it_waits_never_gets_the_lock(service: Service) {
    let client = client(&service).await;
    let (a, b) = (session(&client).await, session(&client).await);
    let held = a.lock("/revoked-waiter").await.unwrap();
    let b_lease = b.lease();
    let waiter = tokio::spawn(async move { b.lock("/revoked-waiter").await });
    wait_for_keys(&client, "/revoked-waiter", 2).await;

    println!("revoking the waiter's lease {b_lease}, then releasing the holder at once");
    client.revoke(b_lease).await.unwrap();
    held.unlock().await.unwrap();
    let outcome = timeout(within_ttl(TTL), waiter)
        .await
        .expect("the waiter ends")
        .unwrap();
    println!("the waiter ends with: {outcome:?}");
    assert!(
        matches!(outcome, Err(Error::SessionLost { .. })),
        "{outcome:?}"
    );
    assert!(
        client
            .lock_keys("/revoked-waiter")
            .await
            .unwrap()
            .is_empty()
    );
}
both_backends!(a_waiter_whose_lease_is_revoked_while_it_waits_never_gets_the_lock);

async fn the_granted_ttl_is_reported_and_the_lease_stays_alive_past_it(service: Service) {
    let client = client(&service).await;
    let tiny = client.session(Duration::from_millis(1)).await.unwrap();
    println!(
        "asked for 1 ms, the {:?} lock service granted {:?}",
        service.backend(),
        tiny.ttl()
    );
    assert!(
        tiny.ttl() >= Duration::from_secs(1),
        "the lock service raises TTLs to its minimum"
    );
    tiny.close().await.unwrap();

    let session = session(&client).await;
    let guard = session.lock("/alive").await.unwrap();
    // Nothing should happen for two TTLs: keepalives run in the background.
    let quiet = timeout(TTL * 2 + Duration::from_millis(500), guard.lost()).await;
    assert!(quiet.is_err(), "lost while keepalives run: {quiet:?}");
    assert!(session.remaining() > Duration::ZERO);
    let keys = client.lock_keys("/alive").await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].lease, session.lease());
}
both_backends!(the_granted_ttl_is_reported_and_the_lease_stays_alive_past_it);

async fn dropping_a_session_stops_its_keepalive_and_the_lease_expires(service: Service) {
    let client = client(&service).await;
    let session = session(&client).await;
    let (lease, ttl) = (session.lease(), session.ttl());
    drop(session);
    let dropped = Instant::now();
    loop {
        let request = TimeToLive {
            id: lease.get(),
            keys: false,
        };
        let left = client
            .lease()
            .lease_time_to_live(request)
            .await
            .unwrap()
            .into_inner()
            .ttl;
        if left < 0 {
            break;
        }
        assert!(
            dropped.elapsed() < within_ttl(ttl),
            "lease {lease} still alive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "lease {lease} expired {:?} after its session was dropped",
        dropped.elapsed()
    );
}
both_backends!(dropping_a_session_stops_its_keepalive_and_the_lease_expires);

/// The service's gauges of open watch streams and watchers, as its `/metrics` shows them.
async fn watch_gauges(service: &Service) -> (f64, f64) {
    let (streams, watchers) = match service.backend() {
        Backend::Etcd => (
            "etcd_debugging_mvcc_watch_stream_total",
            "etcd_debugging_mvcc_watcher_total",
        ),
        Backend::Lockd => ("fencelock_lockd_watch_streams", "fencelock_lockd_watchers"),
    };
    let url = format!("http://{}/metrics", service.endpoints()[0]);
    (metric(&url, streams).await, metric(&url, watchers).await)
}

/// Polls the watch gauges until they are `wanted` (streams, watchers), or fails after 5 s.
async fn await_watch_gauges(service: &Service, wanted: (f64, f64)) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let gauges = watch_gauges(service).await;
        if gauges == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "(watch streams, watchers) are {gauges:?}, not {wanted:?}, after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every wait of one client goes on one watch stream, as with etcd's Go client: three
/// waiters queued behind a holder are one stream, each wait's watchers are cancelled when it
/// ends while the stream stays open, and the stream closes with the client.
async fn the_waits_of_one_client_share_one_watch_stream_that_closes_with_it(service: Service) {
    let client = client(&service).await;
    let holder = session(&client).await;
    let held = holder.lock("/shared").await.unwrap();
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let session = session(&client).await;
        waiters.spawn(async move {
            session.lock("/shared").await?.unlock().await?;
            session.close().await
        });
    }
    // Each waiter watches its predecessor with two watchers (the second one closes the
    // window of etcd's registration race).
    await_watch_gauges(&service, (1.0, 6.0)).await;
    held.unlock().await.unwrap();
    while let Some(done) = waiters.join_next().await {
        done.unwrap().unwrap();
    }
    // The stream stays open for the client's next wait.
    await_watch_gauges(&service, (1.0, 0.0)).await;
    holder.close().await.unwrap();
    drop(client);
    await_watch_gauges(&service, (0.0, 0.0)).await;
}
both_backends!(the_waits_of_one_client_share_one_watch_stream_that_closes_with_it);

#[tokio::test]
async fn connecting_to_a_dead_endpoint_fails_clearly_within_the_timeout() {
    let port = crate::support::proc::free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let err = Client::connect_with_timeout([endpoint.as_str()], Duration::from_secs(1))
        .await
        .unwrap_err();
    let took = started.elapsed();
    println!("failed after {took:?}: {err}");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&endpoint),
        "the error names the endpoint: {err}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}
