//! The REST face, the metrics, and `StorageClient` against the real binary.

use crate::support::storage::{StorageProcess, answer, seed};
use fencelock::FencingToken;
use fencelock::storage::{ClientError, StorageClient, Stored};
use serde_json::json;

fn token(n: u64) -> FencingToken {
    FencingToken::new(n).unwrap()
}

#[tokio::test]
async fn rest_put_and_get_with_a_stale_put_answered_409_naming_fence_presented_and_current() {
    let server = StorageProcess::in_memory("strict");
    let http = crate::support::http_client();
    let url = &server.url;

    println!("PUT /v1/kv/config?fence=/lock with token 4");
    let response = http
        .put(format!("{url}/v1/kv/config?fence=/lock"))
        .header("Fencing-Token", "4")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer(response).await,
        (200, json!({"key": "config", "token": 4}))
    );

    println!("GET it back");
    let response = http
        .get(format!("{url}/v1/kv/config"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer(response).await,
        (
            200,
            json!({"key": "config", "value": "hello", "token": 4,
                   "fence": "/lock", "own_fence": false, "fence_token": 4})
        )
    );

    println!("PUT with token 3 under the same fence: 409");
    let response = http
        .put(format!("{url}/v1/kv/other?fence=/lock"))
        .header("Fencing-Token", "3")
        .body("stale")
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer(response).await,
        (
            409,
            json!({"error": "stale_token", "fence": "/lock", "presented": 3, "current": 4})
        )
    );

    println!("GET of a missing key: 404 key_not_found");
    let (status, body) = answer(
        http.get(format!("{url}/v1/kv/nothing"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("key_not_found"))
    );

    println!("a GET carrying a token raises the fence like a seed read");
    let response = http
        .get(format!("{url}/v1/kv/config?fence=/lock"))
        .header("Fencing-Token", "9")
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await.0, 200);
    let (status, body) = answer(
        http.get(format!("{url}/v1/fences//lock"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!({"fence": "/lock", "token": 9})));
}

#[tokio::test]
async fn keys_with_slashes_are_addressed_by_a_double_slash_or_percent_encoding() {
    let server = StorageProcess::in_memory("strict");
    let http = crate::support::http_client();
    let url = &server.url;

    println!("PUT /v1/kv//lock/a/b writes the key `/lock/a/b`");
    let response = http
        .put(format!("{url}/v1/kv//lock/a/b"))
        .header("Fencing-Token", "1")
        .body("deep")
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer(response).await,
        (200, json!({"key": "/lock/a/b", "token": 1}))
    );

    println!("the seed protocol sees the same key, and so does %2F encoding");
    let (_, body) = seed(&http, url, json!({"op": "read", "key": "/lock/a/b"})).await;
    assert_eq!(body, json!({"val": "deep", "version": 1, "err": ""}));
    let (status, body) = answer(
        http.get(format!("{url}/v1/kv/%2Flock%2Fa%2Fb"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["value"].as_str()), (200, Some("deep")));
}

#[tokio::test]
async fn fence_names_and_key_names_live_apart() {
    let server = StorageProcess::in_memory("strict");
    let http = crate::support::http_client();
    let url = &server.url;

    println!("key `/lock` is its own fence: writing it leaves the lock `/lock`'s fence alone");
    let write = json!({"op": "write", "key": "/lock", "val": "data", "version": 3});
    assert_eq!(seed(&http, url, write).await.1["err"], "");
    let (status, fence) = answer(
        http.get(format!("{url}/v1/fences//lock"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &fence["error"]), (404, &json!("fence_not_found")));
    let (_, value) = answer(http.get(format!("{url}/v1/kv//lock")).send().await.unwrap()).await;
    assert_eq!(
        value,
        json!({"key": "/lock", "value": "data", "token": 3,
               "fence": null, "own_fence": true, "fence_token": 3})
    );

    println!("the lock `/lock` starts from no token: a holder with token 1 writes another key");
    let response = http
        .put(format!("{url}/v1/kv/guarded?fence=/lock"))
        .header("Fencing-Token", "1")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await.0, 200);

    println!("a fence nobody used: 404");
    let (status, body) = answer(
        http.get(format!("{url}/v1/fences/none"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("fence_not_found"))
    );
}

#[tokio::test]
async fn healthz_answers_and_metrics_count_requests_rejections_and_commits() {
    let dir = tempfile::tempdir().unwrap();
    let server = StorageProcess::durable(dir.path(), "strict");
    let http = crate::support::http_client();
    let url = &server.url;

    println!("GET /healthz");
    let (status, body) = answer(http.get(format!("{url}/healthz")).send().await.unwrap()).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));

    println!("two accepted writes, one stale write, one bad request");
    for version in [5, 6, 4] {
        let write = json!({"op": "write", "key": "k", "val": "v", "version": version});
        seed(&http, url, write).await;
    }
    crate::support::storage::post_raw(&http, url, "nonsense").await;

    println!("GET /metrics");
    let response = http.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    for line in [
        "fencelock_storage_requests_total{op=\"write\",outcome=\"ok\"} 2",
        "fencelock_storage_requests_total{op=\"write\",outcome=\"stale\"} 1",
        "fencelock_storage_requests_total{op=\"unknown\",outcome=\"bad_request\"} 1",
        "fencelock_storage_stale_rejections_total 1",
        "fencelock_storage_commit_batch_size_count 2",
        "fencelock_storage_commit_seconds_count 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(text.contains("# TYPE fencelock_storage_commit_seconds histogram"));
}

#[tokio::test]
async fn storage_client_writes_reads_and_reports_stale_tokens_as_a_typed_error() {
    let server = StorageProcess::in_memory("strict");
    let client = StorageClient::new(&server.url).unwrap();

    println!("write with token 10 under fence /lock, read it back");
    client
        .write("/lock/data", "ten", token(10), Some("/lock"))
        .await
        .unwrap();
    assert_eq!(
        client
            .read("/lock/data", token(10), Some("/lock"))
            .await
            .unwrap(),
        Some(Stored {
            value: "ten".into(),
            token: Some(token(10)),
            fence: Some("/lock".into()),
        })
    );
    assert_eq!(client.fence("/lock").await.unwrap(), Some(token(10)));

    println!("an older token gets ClientError::StaleToken with fence, presented, current");
    let err = client
        .write("/lock/data", "nine", token(9), Some("/lock"))
        .await
        .unwrap_err();
    match err {
        ClientError::StaleToken {
            fence,
            presented,
            current,
        } => assert_eq!(
            (fence.as_str(), presented, current),
            ("/lock", token(9), token(10))
        ),
        other => panic!("expected StaleToken, got {other:?}"),
    }

    println!("a fenced read with a newer token raises the fence; the old holder is locked out");
    assert_eq!(
        client
            .read("missing", token(11), Some("/lock"))
            .await
            .unwrap(),
        None
    );
    assert!(matches!(
        client.read("/lock/data", token(10), Some("/lock")).await,
        Err(ClientError::StaleToken { current, .. }) if current == token(11)
    ));
    assert_eq!(client.fence("nobody").await.unwrap(), None);
}

#[tokio::test]
async fn storage_client_reports_an_unreachable_server_as_an_http_error() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    println!("no server: the client says so instead of hanging");
    let client = StorageClient::new("http://127.0.0.1:1").unwrap();
    let err = client.write("k", "v", token(1), None).await.unwrap_err();
    assert!(matches!(err, ClientError::Http(_)), "{err:?}");
    assert!(matches!(
        StorageClient::new("not a url"),
        Err(ClientError::BadUrl(_))
    ));
}
