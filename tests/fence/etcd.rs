//! `fence::etcd` against real etcd (1 and 3 members) and lockd: writes applied only while
//! the lock is held, a holder whose lease ended refused with nothing written, the fence key
//! raised with the writes and read back at one revision, and two locks ordered by one fence.

use std::time::Duration;

use fencelock::fence::StaleToken;
use fencelock::fence::etcd::{EtcdFence, EtcdFenceError, Holder, Op};
use fencelock::lock::Client;

use crate::both_backends;
use crate::support::backend::Service;
use crate::support::etcd;

const TTL: Duration = Duration::from_secs(5);

async fn value(fence: &EtcdFence, key: &str) -> Option<String> {
    let read = fence.read("unused", &[key]).await.unwrap();
    read.values[0]
        .as_ref()
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The main story on any endpoints: the holder writes; its lease is revoked (what expiry
/// does) and a second holder takes the lock and writes; the first holder's late write is
/// refused and changes nothing.
async fn a_holder_whose_lease_ended_writes_nothing(endpoints: Vec<String>) {
    let client = Client::connect(endpoints).await.unwrap();
    let fence = EtcdFence::new(client.clone());

    let first = client.session(TTL).await.unwrap();
    let guard = first.lock("/orders").await.unwrap();
    let old = Holder::of(&guard);
    assert_eq!(old.lock_name(), "/orders");
    fence
        .apply_held(&old, &[Op::put("orders/1", "a"), Op::put("orders/2", "a")])
        .await
        .unwrap();

    client.revoke(first.lease()).await.unwrap();
    let second = client.session(TTL).await.unwrap();
    let guard2 = second.lock("/orders").await.unwrap();
    let new = Holder::of(&guard2);
    assert!(new.token > old.token);
    fence
        .apply_held(&new, &[Op::put("orders/1", "b"), Op::delete("orders/2")])
        .await
        .unwrap();

    for late in [
        fence
            .apply_held(
                &old,
                &[Op::put("orders/1", "stale"), Op::put("orders/3", "stale")],
            )
            .await,
        fence
            .apply_fenced(&old, "/orders", &[Op::put("orders/1", "stale")])
            .await,
    ] {
        match late {
            Err(EtcdFenceError::LockGone { key, token }) => {
                assert_eq!((key, token), (old.key.clone(), old.token));
            }
            other => panic!("a holder whose lease ended was not refused: {other:?}"),
        }
    }
    assert_eq!(value(&fence, "orders/1").await.as_deref(), Some("b"));
    assert_eq!(value(&fence, "orders/2").await, None);
    assert_eq!(value(&fence, "orders/3").await, None);
    guard2.unlock().await.unwrap();
}

async fn a_lease_ended_holder_is_refused(service: Service) {
    a_holder_whose_lease_ended_writes_nothing(service.endpoints()).await;
}
both_backends!(a_lease_ended_holder_is_refused);

#[tokio::test]
async fn a_lease_ended_holder_is_refused_by_a_three_member_cluster() {
    let Some(cluster) = etcd::start(3).await else {
        return;
    };
    a_holder_whose_lease_ended_writes_nothing(cluster.endpoints()).await;
}

async fn the_fence_key_orders_writers_and_informs_readers(service: Service) {
    let client = Client::connect(service.endpoints()).await.unwrap();
    let fence = EtcdFence::new(client.clone());

    // Two locks wrongly guarding the same data under one fence name: the older token is
    // refused once the newer one has written, whatever the lock service thinks.
    let older_session = client.session(TTL).await.unwrap();
    // The guards are kept: dropping one releases its lock.
    let older_guard = older_session.lock("/billing-a").await.unwrap();
    let older = Holder::of(&older_guard);
    let newer_session = client.session(TTL).await.unwrap();
    let newer_guard = newer_session.lock("/billing-b").await.unwrap();
    let newer = Holder::of(&newer_guard);
    assert!(older.token < newer.token);

    let read = fence.read("billing", &["billing/total"]).await.unwrap();
    assert_eq!((read.token, read.values.clone()), (None, vec![None]));

    fence
        .apply_fenced(&older, "billing", &[Op::put("billing/total", "10")])
        .await
        .unwrap();
    fence
        .apply_fenced(&newer, "billing", &[Op::put("billing/total", "20")])
        .await
        .unwrap();
    // Equal tokens go through and leave the fence where it is.
    let revision = fence
        .apply_fenced(&newer, "billing", &[Op::put("billing/total", "25")])
        .await
        .unwrap();
    match fence
        .apply_fenced(&older, "billing", &[Op::put("billing/total", "11")])
        .await
    {
        Err(EtcdFenceError::Stale(stale)) => assert_eq!(
            stale,
            StaleToken {
                fence: "billing".into(),
                presented: older.token,
                current: newer.token
            }
        ),
        other => panic!("the older token was not refused: {other:?}"),
    }

    let read = fence
        .read("billing", &["billing/total", "billing/none"])
        .await
        .unwrap();
    assert_eq!(read.token, Some(newer.token));
    assert!(read.revision >= revision);
    assert_eq!(read.values, vec![Some("25".into()), None]);
    // The fence key is one of the library's bookkeeping keys, outside every lock's range.
    let out = service.etcdctl(&[
        "get",
        "--print-value-only",
        &EtcdFence::fence_key("billing"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        newer.token.to_string()
    );
    drop((older_guard, newer_guard));
}
both_backends!(the_fence_key_orders_writers_and_informs_readers);

async fn concurrent_fenced_writers_of_one_holder_all_apply(service: Service) {
    // The compare-and-swap loop under contention: writers sharing a token race on the fence
    // key's mod_revision; each retries until its write goes through, none is lost.
    let client = Client::connect(service.endpoints()).await.unwrap();
    let fence = EtcdFence::new(client.clone());
    let session = client.session(TTL).await.unwrap();
    let guard = session.lock("/counter").await.unwrap();
    let holder = Holder::of(&guard);
    let writers = (0..8).map(|i| {
        let fence = fence.clone();
        let holder = holder.clone();
        tokio::spawn(async move {
            fence
                .apply_fenced(&holder, "/counter", &[Op::put(format!("counter/{i}"), "x")])
                .await
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        writer.await.unwrap().unwrap();
    }
    let keys: Vec<String> = (0..8).map(|i| format!("counter/{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let read = fence.read("/counter", &keys).await.unwrap();
    assert_eq!(read.token, Some(holder.token));
    assert!(read.values.iter().all(|v| v.as_deref() == Some(&b"x"[..])));
    guard.unlock().await.unwrap();
}
both_backends!(concurrent_fenced_writers_of_one_holder_all_apply);
