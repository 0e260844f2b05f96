//! A lock call whose enqueuing Txn is never answered, because the lock service is frozen
//! (SIGSTOP) for longer than the client's request timeout, against both lock services
//! (`crate::support::backend`). The frozen service still holds the Txn, and hedged copies of it, and
//! may apply them once it runs again: the failed call must leave no lock key behind, now or
//! later, so that other sessions are not blocked until this one ends.

use crate::both_backends;

use std::time::Duration;

use crate::support::backend::Service;
use crate::support::proc::Signal;
use fencelock::etcd::etcdserverpb::{self as pb, compare, request_op};
use fencelock::lock::{Client, Error, RESERVED_PREFIX, Session};
use tokio::time::{Instant, timeout};

/// The request timeout of the client under test: short, so its Txn is given up while the
/// service is still frozen.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);

/// Long enough that the freeze does not end the session, so its keys stay until deleted.
const TTL: Duration = Duration::from_secs(30);

/// Bound on anything that should happen soon after the service runs again.
const PROMPTLY: Duration = Duration::from_secs(10);

const NAME: &str = "/enqueue-frozen";

fn freeze(service: &Service, frozen: bool) {
    match service {
        Service::Lockd(lockd) if frozen => lockd.freeze(),
        Service::Lockd(lockd) => lockd.signal(Signal::CONT),
        Service::Etcd(etcd) if frozen => etcd.pause(0),
        Service::Etcd(etcd) => etcd.resume(0),
    }
}

/// The session's attempt key for `name` (README: `_fencelock/attempts/<lease><name>`).
fn attempt_key(session: &Session, name: &str) -> Vec<u8> {
    format!("{RESERVED_PREFIX}attempts/{}{name}", session.lease()).into_bytes()
}

async fn version(client: &Client, key: &[u8]) -> i64 {
    let request = pb::RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    };
    let response = client.kv().range(request).await.unwrap().into_inner();
    response.kvs.first().map_or(0, |kv| kv.version)
}

/// A copy of the enqueuing Txn the session sent while its attempt key was at `attempt`: create
/// the lock key (and bump the attempt key) if the key is absent and the count unchanged.
fn enqueue_copy(session: &Session, key: &[u8], attempt_key: &[u8], attempt: i64) -> pb::TxnRequest {
    let put = |key: &[u8]| pb::RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            lease: session.lease().get(),
            ..Default::default()
        })),
    };
    pb::TxnRequest {
        compare: vec![
            pb::Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Create as i32,
                key: key.to_vec(),
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
                ..Default::default()
            },
            pb::Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Version as i32,
                key: attempt_key.to_vec(),
                target_union: Some(compare::TargetUnion::Version(attempt)),
                ..Default::default()
            },
        ],
        success: vec![put(key), put(attempt_key)],
        failure: Vec::new(),
    }
}

async fn a_lock_call_failed_by_a_frozen_service_leaves_no_key_behind(service: Service) {
    let observer = Client::connect(service.endpoints()).await.expect("connect");
    let client = Client::connect_with_timeout(service.endpoints(), CLIENT_TIMEOUT)
        .await
        .expect("connect");
    let session = client.session(TTL).await.expect("session");
    let key = format!("{NAME}/{}", session.lease()).into_bytes();
    let attempts = attempt_key(&session, NAME);
    let before = version(&observer, &attempts).await;

    // 1. The service freezes; the lock call's Txn (and its hedged copies) go unanswered.
    freeze(&service, true);
    let started = Instant::now();
    let failed = timeout(PROMPTLY, session.try_lock(NAME, PROMPTLY))
        .await
        .expect("the lock call gives up after its request timeout");
    assert!(
        matches!(failed, Err(Error::Unavailable { .. })),
        "expected Unavailable, got {failed:?}"
    );
    println!("the lock call failed after {:?}", started.elapsed());

    // 2. Frozen a while longer, past the timeout of whatever the call sends to clean up.
    tokio::time::sleep(CLIENT_TIMEOUT * 2).await;
    freeze(&service, false);

    // 3. Once the service runs again, the session's clean-up (with the copies the service held
    //    applied in whatever order) ends with no lock key and the attempt count moved past the
    //    one those copies compare against, so that none can create the key any more.
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let keys = observer.lock_keys(NAME).await.unwrap();
        let moved = version(&observer, &attempts).await > before;
        if keys.is_empty() && moved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the failed call: keys {keys:?}, attempt count moved: {moved}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 4. A copy of the failed Txn applied now (a member could have held it longer) changes
    //    nothing.
    let late = enqueue_copy(&session, &key, &attempts, before);
    let replayed = observer.kv().txn(late).await.unwrap().into_inner();
    assert!(
        !replayed.succeeded,
        "a late copy of the failed Txn created the key"
    );
    assert!(observer.lock_keys(NAME).await.unwrap().is_empty());

    // 5. Another session acquires at once, and this session can lock the name again once its
    //    clean-up has let go of it.
    let other = observer.session(TTL).await.unwrap();
    let taken = timeout(Duration::from_secs(2), other.lock(NAME))
        .await
        .expect("nothing blocks another session")
        .unwrap();
    taken.unlock().await.unwrap();
    let deadline = Instant::now() + PROMPTLY;
    let again = loop {
        match session.try_lock(NAME, PROMPTLY).await {
            Err(Error::AlreadyLocked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other.expect("this session locks the name again"),
        }
    };
    assert_eq!(again.key().as_bytes(), key);
    again.unlock().await.unwrap();
    other.close().await.unwrap();
    session.close().await.unwrap();
}

both_backends!(a_lock_call_failed_by_a_frozen_service_leaves_no_key_behind);
