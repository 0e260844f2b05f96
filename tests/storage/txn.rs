//! `POST /v1/txn?fence=NAME`: several reads, writes and deletes under one lock's fence and
//! one token, all or none, through the real binary and through `StorageClient`.

use crate::support::storage::{StorageProcess, answer};
use fencelock::FencingToken;
use fencelock::storage::wire::{TxnOutcome, TxnStep};
use fencelock::storage::{ClientError, StorageClient};
use serde_json::json;

fn token(n: u64) -> FencingToken {
    FencingToken::new(n).unwrap()
}

fn write(key: &str, val: &str) -> TxnStep {
    TxnStep::Write {
        key: key.into(),
        val: val.into(),
    }
}

fn read(key: &str) -> TxnStep {
    TxnStep::Read { key: key.into() }
}

#[tokio::test]
async fn a_transaction_written_by_hand_applies_its_steps_in_order() {
    let server = StorageProcess::in_memory("strict");
    let http = crate::support::http_client();
    let url = &server.url;

    println!("seed c under /orders, then one transaction: write a, read b, delete c, read a");
    let response = http
        .put(format!("{url}/v1/kv/c?fence=/orders"))
        .header("Fencing-Token", "3")
        .body("old")
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await.0, 200);
    let body = r#"{"ops":[{"op":"write","key":"a","val":"1"},{"op":"read","key":"b"},
                         {"op":"delete","key":"c"},{"op":"read","key":"a"}]}"#;
    let response = http
        .post(format!("{url}/v1/txn?fence=/orders"))
        .header("Fencing-Token", "4")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer(response).await,
        (
            200,
            json!({"token": 4, "results": [
                {"op": "write", "key": "a"},
                {"op": "read", "key": "b", "value": null, "token": null},
                {"op": "delete", "key": "c", "deleted": true},
                {"op": "read", "key": "a", "value": "1", "token": 4},
            ]})
        )
    );
    let (status, body) = answer(http.get(format!("{url}/v1/kv/c")).send().await.unwrap()).await;
    assert_eq!((status, &body["error"]), (404, &json!("key_not_found")));
    let (_, fence) = answer(
        http.get(format!("{url}/v1/fences//orders"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(fence["token"], 4, "the transaction raised the fence");
}

#[tokio::test]
async fn a_stale_or_misfenced_transaction_is_refused_whole_and_changes_nothing() {
    let server = StorageProcess::in_memory("strict");
    let client = StorageClient::new(&server.url).unwrap();

    println!("token 10 writes x and y under /orders; z belongs to /other");
    client
        .txn(
            "/orders",
            token(10),
            vec![write("x", "10"), write("y", "10")],
        )
        .await
        .unwrap();
    client
        .write("z", "other", token(1), Some("/other"))
        .await
        .unwrap();

    println!("token 9 under /orders: stale, nothing of it applied");
    let err = client
        .txn(
            "/orders",
            token(9),
            vec![write("x", "9"), write("new", "9")],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::StaleToken { current, .. } if current == token(10)),
        "{err:?}"
    );

    println!("token 11 under /orders touching z: wrong fence, nothing applied, no fence raised");
    let err = client
        .txn(
            "/orders",
            token(11),
            vec![write("x", "11"), write("z", "11")],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::WrongFence { key, .. } if key == "z"),
        "{err:?}"
    );
    assert_eq!(client.fence("/orders").await.unwrap(), Some(token(10)));

    let seen = client
        .txn(
            "/orders",
            token(10),
            vec![read("x"), read("new"), read("y")],
        )
        .await
        .unwrap();
    let values: Vec<Option<String>> = seen
        .into_iter()
        .map(|outcome| match outcome {
            TxnOutcome::Read { value, .. } => value,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        values,
        vec![Some("10".into()), None, Some("10".into())],
        "the refused transactions left nothing behind"
    );
}

#[tokio::test]
async fn an_acknowledged_transaction_survives_a_restart_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = StorageProcess::durable(dir.path(), "strict");
    let client = StorageClient::new(&server.url).unwrap();
    let steps = (0..16)
        .map(|i| write(&format!("k{i}"), &format!("v{i}")))
        .collect();
    client.txn("/batch", token(7), steps).await.unwrap();
    drop(server);

    let server = StorageProcess::durable(dir.path(), "strict");
    let client = StorageClient::new(&server.url).unwrap();
    let steps = (0..16).map(|i| read(&format!("k{i}"))).collect();
    let seen = client.txn("/batch", token(7), steps).await.unwrap();
    for (i, outcome) in seen.into_iter().enumerate() {
        assert_eq!(
            outcome,
            TxnOutcome::Read {
                key: format!("k{i}"),
                value: Some(format!("v{i}")),
                token: Some(token(7)),
            }
        );
    }
}

#[tokio::test]
async fn bad_transactions_get_a_400_with_a_json_error_and_the_server_keeps_serving() {
    let server = StorageProcess::in_memory("strict");
    let http = crate::support::http_client();
    let url = &server.url;
    for (query, body) in [
        ("", r#"{"ops":[{"op":"read","key":"a"}]}"#),
        ("?fence=/l", r#"{"ops":[]}"#),
        ("?fence=/l", r#"{"ops":[{"op":"drop","key":"a"}]}"#),
        ("?fence=/l", r#"{"ops":[{"op":"write","key":"a"}]}"#),
        ("?fence=/l", r#"{"ops":[{"op":"read","key":""}]}"#),
        ("?fence=/l", "not json"),
    ] {
        let response = http
            .post(format!("{url}/v1/txn{query}"))
            .header("Fencing-Token", "1")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, answer) = answer(response).await;
        println!("{query} {body}: {status} {answer}");
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer["error"], "bad_request", "{answer}");
    }
    let response = http
        .post(format!("{url}/v1/txn?fence=/l"))
        .header("Fencing-Token", "1")
        .body(r#"{"ops":[{"op":"write","key":"a","val":"ok"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await.0, 200);
}
