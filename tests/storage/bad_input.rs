//! Bad input never stops the storage: every malformed request gets a 4xx with a JSON body,
//! and the next request is served. Checked against the real binary over real HTTP.

use crate::support::storage::{StorageProcess, answer, post_raw, seed};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

/// A request that must succeed after every bad one.
async fn assert_still_serving(http: &reqwest::Client, url: &str) {
    let write = json!({"op": "write", "key": "alive", "val": "yes", "version": 1});
    assert_eq!(
        seed(http, url, write).await,
        (200, json!({"val": "yes", "version": 1, "err": ""}))
    );
}

#[tokio::test]
async fn each_malformed_seed_request_gets_a_json_400_and_the_next_request_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = StorageProcess::durable(dir.path(), "strict");
    let http = crate::support::http_client();
    let url = &server.url;

    let mut invalid_utf8 = br#"{"op":"write","key":"k"#.to_vec();
    invalid_utf8.extend_from_slice(&[0xc3, 0x28, b'"', b'}']);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", b"".to_vec()),
        ("malformed JSON", br#"{"op":"write","key":"#.to_vec()),
        ("not an object", b"[1,2,3]".to_vec()),
        ("op of the wrong type", br#"{"op":1,"key":"k"}"#.to_vec()),
        (
            "key of the wrong type",
            br#"{"op":"read","key":{}}"#.to_vec(),
        ),
        (
            "version as a string",
            br#"{"op":"write","key":"k","val":"v","version":"7"}"#.to_vec(),
        ),
        (
            "negative version",
            br#"{"op":"write","key":"k","val":"v","version":-7}"#.to_vec(),
        ),
        (
            "fractional version",
            br#"{"op":"write","key":"k","val":"v","version":7.5}"#.to_vec(),
        ),
        (
            "version above 2^63-1",
            br#"{"op":"write","key":"k","val":"v","version":9223372036854775808}"#.to_vec(),
        ),
        (
            "version above 2^64",
            br#"{"op":"write","key":"k","val":"v","version":1e30}"#.to_vec(),
        ),
        (
            "trailing garbage",
            br#"{"op":"read","key":"k"}xyz"#.to_vec(),
        ),
        ("invalid UTF-8", invalid_utf8),
        ("unknown op", br#"{"op":"delete","key":"k"}"#.to_vec()),
        (
            "missing op",
            br#"{"key":"k","val":"v","version":1}"#.to_vec(),
        ),
        ("empty key", br#"{"op":"read","key":""}"#.to_vec()),
    ];
    for (what, body) in cases {
        println!("{what}: 400 with a seed-shaped JSON error");
        let (status, body) = post_raw(&http, url, body).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["version"], -1, "{what}: {body}");
        assert!(
            !body["err"].as_str().unwrap_or("").is_empty(),
            "{what}: {body}"
        );
        assert_still_serving(&http, url).await;
    }
}

#[tokio::test]
async fn wrong_path_and_wrong_method_get_json_404_and_405() {
    let server = StorageProcess::in_memory("strict");
    let http = crate::support::http_client();
    let url = &server.url;

    println!("GET /nowhere: 404 with a JSON error");
    let (status, body) = answer(http.get(format!("{url}/nowhere")).send().await.unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    assert_still_serving(&http, url).await;

    println!("GET / (the seed protocol wants POST): 405 with a JSON error");
    let (status, body) = answer(http.get(format!("{url}/")).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    assert_still_serving(&http, url).await;

    println!("DELETE /v1/kv/k: 405 with a JSON error");
    let (status, body) = answer(http.delete(format!("{url}/v1/kv/k")).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    assert_still_serving(&http, url).await;
}

#[tokio::test]
async fn body_over_max_body_gets_a_json_413_and_the_next_request_is_served() {
    let server = StorageProcess::start(&["--in-memory", "--max-body", "1024"]);
    let http = crate::support::http_client();
    let url = &server.url;
    let big = "x".repeat(2048);

    println!("a 2 KiB seed request against --max-body 1024: 413");
    let request = json!({"op": "write", "key": "k", "val": big, "version": 1});
    let (status, body) = seed(&http, url, request).await;
    assert_eq!((status, &body["version"]), (413, &json!(-1)), "{body}");
    assert_still_serving(&http, url).await;

    println!("a 2 KiB REST value: 413");
    let response = http
        .put(format!("{url}/v1/kv/k"))
        .header("fencing-token", "1")
        .body(big)
        .send()
        .await
        .unwrap();
    let (status, body) = answer(response).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("body_too_large"))
    );
    assert_still_serving(&http, url).await;
}

#[tokio::test]
async fn bad_rest_input_gets_a_json_400_and_the_next_request_is_served() {
    let server = StorageProcess::in_memory("strict");
    let http = crate::support::http_client();
    let url = &server.url;

    for token in ["0", "-1", "abc", "9223372036854775808", "1.5"] {
        println!("Fencing-Token: {token}: 400");
        let response = http
            .put(format!("{url}/v1/kv/k"))
            .header("fencing-token", token)
            .body("v")
            .send()
            .await
            .unwrap();
        let (status, body) = answer(response).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{body}"
        );
        assert_still_serving(&http, url).await;
    }

    println!("a value that is not UTF-8: 400");
    let response = http
        .put(format!("{url}/v1/kv/k"))
        .header("fencing-token", "1")
        .body(vec![0xff, 0xfe])
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await.0, 400);
    assert_still_serving(&http, url).await;

    println!("a PUT without a token under the strict policy: 400 missing_token");
    let response = http
        .put(format!("{url}/v1/kv/k"))
        .body("v")
        .send()
        .await
        .unwrap();
    let (status, body) = answer(response).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("missing_token"))
    );
    assert_still_serving(&http, url).await;
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![Just("read"), Just("write"), Just("")].prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("op".to_owned()),
                    Just("key".to_owned()),
                    Just("val".to_owned()),
                    Just("version".to_owned()),
                    Just("fence".to_owned()),
                    ".{0,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies to throw at `POST /`: raw bytes, any JSON, and JSON mangled by a cut or a suffix.
fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        any_json().prop_map(|v| v.to_string().into_bytes()),
        (any_json(), any::<prop::sample::Index>(), ".{0,4}").prop_map(|(v, cut, tail)| {
            let mut bytes = v.to_string().into_bytes();
            bytes.truncate(cut.index(bytes.len() + 1));
            bytes.extend_from_slice(tail.as_bytes());
            bytes
        }),
    ]
}

#[test]
fn random_bytes_and_random_json_get_2xx_or_4xx_and_the_server_survives() {
    let server = StorageProcess::in_memory("strict");
    let url = server.url.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let http = crate::support::http_client();
    let mut runner = TestRunner::new(Config {
        cases: 400,
        ..Config::default()
    });
    println!("throwing {} random bodies at POST /", 400);
    let result = runner.run(&any_body(), |body| {
        let (status, json) = runtime.block_on(post_raw(&http, &url, body.clone()));
        prop_assert!(
            (200..300).contains(&status) || (400..500).contains(&status),
            "status {status} for {:?}",
            String::from_utf8_lossy(&body)
        );
        prop_assert!(
            json.is_object(),
            "no JSON answer for {:?}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    });
    result.unwrap();
    println!("the server still answers a valid request");
    runtime.block_on(assert_still_serving(&http, &url));
}
