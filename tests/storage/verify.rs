//! `fencelock storage --verify-tokens` through the binary, on etcd and lockd: a forged token
//! refused without moving the fence, a holder whose lease ended refused before any newer
//! holder has written, a waiter's token refused, and requests without a lock name refused.

use std::time::Duration;

use fencelock::lock::Client;
use serde_json::Value;
use tokio::time::Instant;

use crate::both_backends;
use crate::support::backend::Service;
use crate::support::storage::{StorageProcess, answer};

const TTL: Duration = Duration::from_secs(5);

async fn put(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    fence: &str,
    token: u64,
) -> (u16, Value) {
    let response = http
        .put(format!("{url}/v1/kv/{key}?fence={fence}"))
        .header("Fencing-Token", token.to_string())
        .body(format!("by {token}"))
        .send()
        .await
        .unwrap();
    answer(response).await
}

async fn tokens_are_verified_with_the_lock_service(service: Service) {
    let endpoints = service.endpoints().join(",");
    let storage =
        StorageProcess::start(&["--in-memory", "--verify-tokens", "--endpoints", &endpoints]);
    let url = &storage.url;
    let http = crate::support::http_client();
    let client = Client::connect(service.endpoints()).await.unwrap();

    println!("a forged token near i64::MAX is refused and does not lock the fence out");
    let (status, body) = put(&http, url, "a", "/orders", i64::MAX as u64).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("unknown_token")),
        "{body}"
    );
    assert_eq!(body["fence"], "/orders");
    let fence = answer(
        http.get(format!("{url}/v1/fence//orders"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_ne!(fence.1["token"], i64::MAX, "{fence:?}");

    println!("the holder writes; a waiter's token is refused");
    let first = client.session(TTL).await.unwrap();
    let guard = first.lock("/orders").await.unwrap();
    let holder_token = guard.token().get();
    let (status, body) = put(&http, url, "a", "/orders", holder_token).await;
    assert_eq!(status, 200, "{body}");
    let second = client.session(TTL).await.unwrap();
    let waiter = tokio::spawn(async move {
        let guard = second.lock("/orders").await.unwrap();
        (guard, second)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let waiter_token = loop {
        let keys = client.lock_keys("/orders").await.unwrap();
        if let Some(key) = keys.iter().find(|k| k.token.get() != holder_token) {
            break key.token.get();
        }
        assert!(Instant::now() < deadline, "the waiter never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (status, body) = put(&http, url, "a", "/orders", waiter_token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("not_holder")),
        "{body}"
    );

    println!("the holder's lease ends: its token is refused before the next holder writes");
    client.revoke(first.lease()).await.unwrap();
    // The storage learns of the deletion through its watch, a moment after the lock service
    // made it; a request in that moment is still judged by the fence alone.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut accepted_late = 0;
    loop {
        let (status, body) = put(&http, url, "a", "/orders", holder_token).await;
        if status == 409 {
            assert_eq!(body["error"], "holder_gone", "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        accepted_late += 1;
        assert!(
            Instant::now() < deadline,
            "the ended holder's token was never refused"
        );
    }
    println!("writes accepted after the revoke, before the storage saw it: {accepted_late}");
    let (guard2, _second) = waiter.await.unwrap();
    let (status, body) = put(&http, url, "a", "/orders", guard2.token().get()).await;
    assert_eq!(status, 200, "the new holder writes: {body}");

    println!("a fenced request must name its lock");
    let response = http
        .put(format!("{url}/v1/kv/own"))
        .header("Fencing-Token", guard2.token().get().to_string())
        .body("x")
        .send()
        .await
        .unwrap();
    let (status, body) = answer(response).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("lock_name_required")),
        "{body}"
    );
    drop(guard);
}
both_backends!(tokens_are_verified_with_the_lock_service);
