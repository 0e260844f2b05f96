//! Each key belongs to one fence: the real `fencelock storage` binary over real HTTP, refusing
//! a stale holder that names another fence, or none, for a key bound to a lock.

use crate::support::storage::{Answer, StorageProcess, answer, seed};
use fencelock::FencingToken;
use fencelock::storage::{ClientError, StorageClient};
use serde_json::json;

fn token(n: u64) -> FencingToken {
    FencingToken::new(n).unwrap()
}

async fn put(http: &reqwest::Client, url: &str, path: &str, token: u64, value: &str) -> Answer {
    let response = http
        .put(format!("{url}{path}"))
        .header("Fencing-Token", token.to_string())
        .body(value.to_owned())
        .send()
        .await
        .unwrap();
    answer(response).await
}

async fn get(http: &reqwest::Client, url: &str, path: &str) -> Answer {
    answer(http.get(format!("{url}{path}")).send().await.unwrap()).await
}

/// The sequence that defeated fencing when the fence was chosen per request: a key written
/// under `/lock` with token 10, then a seed write naming no fence with token 5, then a REST
/// write naming `/other` with token 3. Both late writes are refused and the value stays.
async fn a_key_bound_to_a_lock_refuses_other_fences(server: &StorageProcess) {
    let http = crate::support::http_client();
    let url = &server.url;

    println!("PUT key0 under fence /lock with token 10: accepted, key0 now belongs to /lock");
    assert_eq!(
        put(&http, url, "/v1/kv/key0?fence=/lock", 10, "ten").await,
        (200, json!({"key": "key0", "token": 10}))
    );

    println!("a seed write of key0 naming no fence, version 5: refused, naming key0's fence");
    let (status, body) = seed(
        &http,
        url,
        json!({"op": "write", "key": "key0", "val": "five", "version": 5}),
    )
    .await;
    assert_eq!((status, &body["version"]), (200, &json!(-1)), "{body}");
    let err = body["err"].as_str().unwrap();
    assert!(
        err.contains("\"/lock\""),
        "the refusal names the fence: {err}"
    );

    println!("PUT key0 under fence /other with token 3: 409 wrong_fence");
    let (status, body) = put(&http, url, "/v1/kv/key0?fence=/other", 3, "three").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "wrong_fence");
    assert_eq!(body["key"], "key0");
    assert_eq!(body["fence"], "/lock");
    assert_eq!(body["requested"], "/other");

    println!("a fenced read under /other is refused the same way, and moves no fence");
    let response = http
        .get(format!("{url}/v1/kv/key0?fence=/other"))
        .header("Fencing-Token", "99")
        .send()
        .await
        .unwrap();
    let (status, body) = answer(response).await;
    assert_eq!((status, &body["error"]), (409, &json!("wrong_fence")));
    assert_eq!(
        get(&http, url, "/v1/fences//other").await.0,
        404,
        "/other saw no token"
    );

    println!("the value is the one written under /lock, and GET shows the key's fence");
    assert_eq!(
        get(&http, url, "/v1/kv/key0").await,
        (
            200,
            json!({"key": "key0", "value": "ten", "token": 10,
                   "fence": "/lock", "own_fence": false, "fence_token": 10})
        )
    );
}

#[tokio::test]
async fn a_key_bound_to_a_lock_refuses_writes_and_reads_under_other_fences() {
    let server = StorageProcess::in_memory("strict");
    a_key_bound_to_a_lock_refuses_other_fences(&server).await;
}

#[tokio::test]
async fn a_keys_binding_is_durable_with_the_write_that_made_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = StorageProcess::durable(dir.path(), "strict");
    a_key_bound_to_a_lock_refuses_other_fences(&server).await;
    drop(server);

    println!("restart on the same data directory: key0 still belongs to /lock");
    let server = StorageProcess::durable(dir.path(), "strict");
    let http = crate::support::http_client();
    let (_, body) = seed(
        &http,
        &server.url,
        json!({"op": "write", "key": "key0", "val": "five", "version": 50}),
    )
    .await;
    assert_eq!(body["version"], -1, "{body}");
    let (status, body) = put(&http, &server.url, "/v1/kv/key0?fence=/lock", 11, "11").await;
    assert_eq!((status, &body["token"]), (200, &json!(11)), "{body}");
}

#[tokio::test]
async fn a_key_that_is_its_own_fence_refuses_a_lock_and_leaves_the_locks_fence_alone() {
    let server = StorageProcess::in_memory("strict");
    let http = crate::support::http_client();
    let url = &server.url;

    println!("seed write of key `/lock` with version 7 and no fence: the key is its own fence");
    let (_, body) = seed(
        &http,
        url,
        json!({"op": "write", "key": "/lock", "val": "v", "version": 7}),
    )
    .await;
    assert_eq!(body["err"], "", "{body}");
    assert_eq!(
        get(&http, url, "/v1/fences//lock").await.0,
        404,
        "the lock /lock's fence did not move"
    );

    println!("a write of `/lock` under the lock /lock: refused, the key is its own fence");
    let (status, body) = put(&http, url, "/v1/kv//lock?fence=/lock", 8, "x").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        (&body["error"], &body["fence"], &body["requested"]),
        (&json!("wrong_fence"), &json!(null), &json!("/lock"))
    );

    println!("the lock /lock guards other keys from token 1 on");
    assert_eq!(
        put(&http, url, "/v1/kv/data?fence=/lock", 1, "one").await.0,
        200
    );
}

#[tokio::test]
async fn storage_client_reports_a_wrong_fence_as_a_typed_error() {
    let server = StorageProcess::in_memory("strict");
    let client = StorageClient::new(&server.url).unwrap();
    client
        .write("orders", "1", token(4), Some("/orders-lock"))
        .await
        .unwrap();
    let stored = client
        .read("orders", token(4), Some("/orders-lock"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.fence.as_deref(), Some("/orders-lock"));

    let err = client
        .write("orders", "2", token(9), None)
        .await
        .unwrap_err();
    match err {
        ClientError::WrongFence {
            ref key,
            ref fence,
            ref requested,
        } => {
            assert_eq!(key, "orders");
            assert_eq!(fence.as_deref(), Some("/orders-lock"));
            assert_eq!(requested.as_deref(), None);
        }
        other => panic!("expected WrongFence, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "key \"orders\" belongs to fence \"/orders-lock\", not to its own fence"
    );
}

#[tokio::test]
async fn storage_client_round_trips_every_key_and_each_read_raises_its_fence() {
    let server = StorageProcess::in_memory("strict");
    let client = StorageClient::new(&server.url).unwrap();
    let keys = [
        ".", "..", "%", "%2e", "%2F", "a/../b", "/lock", "ключ", "键/值", " space ", "?&#=",
    ];
    for (i, key) in keys.iter().enumerate() {
        let fence = format!("/keys-{i}");
        println!("{key:?} under {fence}: write with token 5, read it back with token 6");
        client
            .write(key, &format!("value of {key}"), token(5), Some(&fence))
            .await
            .unwrap_or_else(|e| panic!("write {key:?}: {e}"));
        let stored = client
            .read(key, token(6), Some(&fence))
            .await
            .unwrap_or_else(|e| panic!("read {key:?}: {e}"))
            .unwrap_or_else(|| panic!("{key:?} read back as missing"));
        assert_eq!(stored.value, format!("value of {key}"));
        assert_eq!(
            client.fence(&fence).await.unwrap(),
            Some(token(6)),
            "the read of {key:?} raised its fence"
        );
        let err = client.write(key, "late", token(5), Some(&fence)).await;
        assert!(
            matches!(err, Err(ClientError::StaleToken { .. })),
            "{key:?}: {err:?}"
        );
    }
}
