//! Lock names, against both lock services (`crate::support::backend`): the names the library refuses,
//! a name that starts like the library's own keys, and locks named under one another.

use crate::both_backends;

use std::time::Duration;

use crate::support::backend::Service;
use fencelock::lock::{Client, Error, RESERVED_PREFIX, Session};
use tokio::time::timeout;

const TTL: Duration = Duration::from_secs(10);

/// Bound on anything that should happen at once on an idle service.
const PROMPTLY: Duration = Duration::from_secs(3);

async fn client(service: &Service) -> Client {
    Client::connect(service.endpoints()).await.expect("connect")
}

async fn session(client: &Client) -> Session {
    client.session(TTL).await.expect("session")
}

/// `/fencelock` once waited for itself: the session's attempt key lay under its range.
async fn a_lock_named_like_the_library_acquires_at_once(service: Service) {
    let client = client(&service).await;
    let session = session(&client).await;
    for name in ["/fencelock", "/fencelock/attempts", "/_fencelock"] {
        let guard = timeout(PROMPTLY, session.lock(name))
            .await
            .unwrap_or_else(|_| panic!("{name} is free but was not acquired"))
            .unwrap();
        let keys = client.lock_keys(name).await.unwrap();
        assert_eq!(
            keys.len(),
            1,
            "only the holder's key under {name}: {keys:?}"
        );
        assert_eq!(keys[0].key, guard.key());
        guard.unlock().await.unwrap();
    }
}

async fn names_that_could_reach_other_keys_are_refused(service: Service) {
    let client = client(&service).await;
    let session = session(&client).await;
    let reserved = RESERVED_PREFIX.trim_end_matches('/');
    for name in ["", "orders", "/", "/orders/", reserved, RESERVED_PREFIX] {
        match session.try_lock(name, PROMPTLY).await {
            Err(Error::InvalidLockName { name: refused, .. }) => assert_eq!(refused, name),
            other => panic!("{name:?} must be refused, got {other:?}"),
        }
        assert!(
            matches!(
                client.lock_keys(name).await,
                Err(Error::InvalidLockName { .. })
            ),
            "lock_keys({name:?}) must be refused too"
        );
    }
    // Nothing was written: the only key of the session's lease would be an attempt key.
    let response = client
        .kv()
        .range(fencelock::etcd::etcdserverpb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            keys_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ours: Vec<_> = response
        .kvs
        .iter()
        .filter(|kv| kv.lease == session.lease().get())
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    assert!(ours.is_empty(), "refused names wrote {ours:?}");
    // The names the tools use stay valid.
    for name in ["/lock", "/fencelock-check", "/fencelock-demo/123-1"] {
        let guard = timeout(PROMPTLY, session.lock(name))
            .await
            .unwrap()
            .unwrap();
        guard.unlock().await.unwrap();
    }
}

/// `/a/b`'s keys lie in `/a`'s range (`/a/b/<lease>` starts with `/a/`); they are keys of
/// another lock and must neither block `/a` nor be taken for its holder.
async fn a_lock_named_under_another_is_independent_of_it(service: Service) {
    let client = client(&service).await;
    let (inner, outer, waiter) = (
        session(&client).await,
        session(&client).await,
        session(&client).await,
    );
    let nested = inner.lock("/tree/leaf").await.unwrap();
    let held = timeout(PROMPTLY, outer.lock("/tree"))
        .await
        .expect("/tree is free although /tree/leaf is held")
        .unwrap();
    let keys = client.lock_keys("/tree").await.unwrap();
    assert_eq!(keys.len(), 1, "only /tree's own key: {keys:?}");
    assert_eq!(keys[0].key, held.key());
    // A holder of /tree/leaf does not wait for /tree either.
    let other_leaf = timeout(PROMPTLY, waiter.lock("/tree/leaf2"))
        .await
        .expect("/tree/leaf2 is free")
        .unwrap();
    other_leaf.unlock().await.unwrap();
    // /tree is still one lock: a second session waits for its holder.
    match waiter.try_lock("/tree", Duration::from_millis(500)).await {
        Err(Error::Timeout { .. }) => {}
        other => panic!("/tree is held, got {other:?}"),
    }
    held.unlock().await.unwrap();
    let next = timeout(PROMPTLY, waiter.lock("/tree"))
        .await
        .expect("/tree was released")
        .unwrap();
    next.unlock().await.unwrap();
    nested.unlock().await.unwrap();
}

/// A waiter whose predecessor lies behind many keys of locks named under its own (more than
/// one read's worth) still finds it, and waits for it.
async fn a_waiter_finds_its_predecessor_behind_many_nested_keys(service: Service) {
    let client = client(&service).await;
    let holder = session(&client).await;
    let held = holder.lock("/deep").await.unwrap();
    let mut nested = Vec::new();
    for i in 0..9 {
        let session = session(&client).await;
        let guard = session.lock(&format!("/deep/n{i}")).await.unwrap();
        nested.push((session, guard));
    }
    let waiter = session(&client).await;
    match waiter.try_lock("/deep", Duration::from_millis(500)).await {
        Err(Error::Timeout { .. }) => {}
        other => panic!("/deep is held behind nine nested keys, got {other:?}"),
    }
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.lock("/deep").await })
    };
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while client.lock_keys("/deep").await.unwrap().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the waiter never queued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!waiting.is_finished(), "acquired while /deep was held");
    held.unlock().await.unwrap();
    let next = timeout(PROMPTLY, waiting)
        .await
        .expect("the waiter acquires once /deep is released")
        .unwrap()
        .unwrap();
    assert_eq!(client.lock_keys("/deep").await.unwrap()[0].key, next.key());
    next.unlock().await.unwrap();
}

both_backends!(
    a_lock_named_like_the_library_acquires_at_once,
    names_that_could_reach_other_keys_are_refused,
    a_lock_named_under_another_is_independent_of_it,
    a_waiter_finds_its_predecessor_behind_many_nested_keys,
);
