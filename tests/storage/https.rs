//! `fencelock storage` over real HTTPS (`--cert-file`, `--key-file`, certificates made by the
//! test) and with a bearer token (`--auth-token-file`): both faces answer over TLS to a
//! client that trusts the authority and to no other; without the right token every route,
//! `/healthz` and `/metrics` included, is a JSON 401 and the server serves on; `--open-health`
//! opens those two only; `fencelock client` reaches such a storage with `--storage-cacert` and
//! `--storage-token-file`; unusable files stop the server with one line.

use std::process::{Command, Stdio};
use std::time::Duration;

use fencelock::FencingToken;
use fencelock::storage::{ClientError, Protocol, StorageClient, StorageOptions};
use serde_json::Value;

use crate::support::certs::TestCerts;
use crate::support::lockd::LockdProcess;
use crate::support::proc::{assert_one_line, exit_and_stderr, fencelock_bin};
use crate::support::storage::StorageProcess;

const TOKEN: &str = "s3cret-token";

fn token(n: u64) -> FencingToken {
    FencingToken::new(n).expect("non-zero")
}

/// The test's certificates and a token file holding [`TOKEN`] (with the newline an editor
/// leaves).
fn files() -> TestCerts {
    let certs = TestCerts::new();
    std::fs::write(certs.dir().join("token"), format!("{TOKEN}\n")).expect("write the token");
    certs
}

/// `fencelock storage --in-memory` over HTTPS with `more` flags.
fn https_storage(certs: &TestCerts, more: &[&str]) -> StorageProcess {
    let cert = certs.path("server.pem");
    let key = certs.path("server-key.pem");
    let mut args = vec![
        "--in-memory",
        "--cert-file",
        cert.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    StorageProcess::start(&args)
}

/// A reqwest client that trusts the test's authority, with `bearer` if given.
fn http(certs: &TestCerts, bearer: Option<&str>) -> reqwest::Client {
    let options = StorageOptions {
        ca_pem: Some(std::fs::read(certs.path("ca.pem")).unwrap()),
        bearer_token: bearer.map(str::to_owned),
    };
    fencelock::storage::http_client_builder(&options)
        .unwrap()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text = format!("{text}: {e}");
        cause = e.source();
    }
    text
}

#[tokio::test]
async fn both_faces_answer_over_https_to_a_client_that_trusts_the_authority_only() {
    let certs = files();
    let storage = https_storage(&certs, &[]);
    assert!(storage.url.starts_with("https://"), "{}", storage.url);
    let trusting = StorageOptions::from_files(Some(&certs.path("ca.pem")), None).unwrap();

    println!("1. the REST face: a fenced write and read over HTTPS");
    let rest = StorageClient::with_options(&storage.url, &trusting).unwrap();
    rest.write("k", "v1", token(5), Some("/lock"))
        .await
        .unwrap();
    let stored = rest.read("k", token(5), Some("/lock")).await.unwrap();
    assert_eq!(stored.expect("stored").value, "v1");
    let stale = rest.write("k", "old", token(4), Some("/lock")).await;
    assert!(
        matches!(stale, Err(ClientError::StaleToken { .. })),
        "{stale:?}"
    );

    println!("2. the seed's face, POST /, over HTTPS");
    let seed = rest.clone().with_protocol(Protocol::Seed);
    seed.write("seed-key", "s1", token(7), None).await.unwrap();
    let stored = seed.read("seed-key", token(7), None).await.unwrap();
    assert_eq!(stored.expect("stored").value, "s1");

    println!("3. a client trusting another authority fails its handshake");
    let wrong = StorageOptions::from_files(Some(&certs.path("other-ca.pem")), None).unwrap();
    let refused = StorageClient::with_options(&storage.url, &wrong)
        .unwrap()
        .write("k", "x", token(9), Some("/lock"))
        .await
        .expect_err("a server the client's authority did not sign");
    let said = chain(&refused);
    println!("   {said}");
    assert!(
        said.contains("certificate") || said.contains("Unknown"),
        "{said}"
    );

    println!("4. plaintext HTTP to the HTTPS port gets no answer");
    let plain = crate::support::http_client()
        .get(storage.url.replacen("https://", "http://", 1) + "/healthz")
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plaintext was answered: {plain:?}");

    println!("5. the server served on through both refusals");
    let health = http(&certs, None)
        .get(format!("{}/healthz", storage.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let stored = rest.read("k", token(5), Some("/lock")).await.unwrap();
    assert_eq!(stored.expect("stored").value, "v1");
}

/// Status, `WWW-Authenticate` and JSON body of `method path` without `bearer`'s approval.
async fn refused(http: &reqwest::Client, method: reqwest::Method, url: String) -> Value {
    let response = http
        .request(method, &url)
        .header("content-type", "application/json")
        .body(r#"{"op":"read","key":"k","version":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "{url}");
    assert_eq!(response.headers()["www-authenticate"], "Bearer", "{url}");
    response.json().await.expect("a JSON body")
}

#[tokio::test]
async fn without_the_bearer_token_every_route_is_a_json_401_and_the_server_serves_on() {
    let certs = files();
    let token_file = certs.dir().join("token");
    let storage = https_storage(&certs, &["--auth-token-file", token_file.to_str().unwrap()]);
    let url = &storage.url;
    use reqwest::Method;

    println!("1. no token: both faces, /healthz, /metrics and an unknown path are refused");
    let anonymous = http(&certs, None);
    for (method, path) in [
        (Method::PUT, "/v1/kv/k"),
        (Method::GET, "/v1/kv/k"),
        (Method::POST, "/"),
        (Method::GET, "/v1/fences/lock"),
        (Method::GET, "/healthz"),
        (Method::GET, "/metrics"),
        (Method::GET, "/no/such/path"),
    ] {
        let body = refused(&anonymous, method, format!("{url}{path}")).await;
        assert_eq!(body["error"], "unauthorized", "{path}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("Bearer"),
            "{body}"
        );
    }

    println!("2. a wrong token, and the right one under another scheme");
    let wrong = http(&certs, Some("guess"));
    let body = refused(&wrong, Method::GET, format!("{url}/v1/kv/k")).await;
    assert_eq!(body["error"], "unauthorized", "{body}");
    let basic = anonymous
        .get(format!("{url}/healthz"))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);

    println!("3. the token from the file: the client reads and writes, health answers");
    let options =
        StorageOptions::from_files(Some(&certs.path("ca.pem")), Some(&token_file)).unwrap();
    let client = StorageClient::with_options(url, &options).unwrap();
    client.write("k", "v", token(3), None).await.unwrap();
    let stored = client.read("k", token(3), None).await.unwrap();
    assert_eq!(stored.expect("stored").value, "v");
    let seed = client.clone().with_protocol(Protocol::Seed);
    seed.write("s", "v", token(3), None).await.unwrap();
    let authorized = http(&certs, Some(TOKEN));
    for path in ["/healthz", "/metrics"] {
        let response = authorized.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }

    println!("4. StorageClient without the token gets a typed 401");
    let anonymous_client = StorageClient::with_options(
        url,
        &StorageOptions::from_files(Some(&certs.path("ca.pem")), None).unwrap(),
    )
    .unwrap();
    let refusal = anonymous_client.read("k", token(3), None).await;
    assert!(
        matches!(&refusal, Err(ClientError::Server { status, error, .. })
            if status.as_u16() == 401 && error == "unauthorized"),
        "{refusal:?}"
    );
}

#[tokio::test]
async fn open_health_leaves_healthz_and_metrics_open_and_nothing_else() {
    let certs = files();
    let token_file = certs.dir().join("token");
    let storage = https_storage(
        &certs,
        &[
            "--auth-token-file",
            token_file.to_str().unwrap(),
            "--open-health",
        ],
    );
    let anonymous = http(&certs, None);
    let health = anonymous
        .get(format!("{}/healthz", storage.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    let metrics = anonymous
        .get(format!("{}/metrics", storage.url))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("fencelock_storage_"));
    let body = refused(
        &anonymous,
        reqwest::Method::GET,
        format!("{}/v1/kv/k", storage.url),
    )
    .await;
    assert_eq!(body["error"], "unauthorized");
}

/// `fencelock client 2` writing to `storage` through `lockd`, with `more` flags: exit status
/// and output.
fn client_2(lockd: &LockdProcess, storage: &str, more: &[String]) -> (Option<i32>, String) {
    let output = Command::new(fencelock_bin())
        .args(["client", "2", "--json", "--lock", "/https", "--key", "k"])
        .arg(format!("--endpoints={}", lockd.endpoints().join(",")))
        .args(["--storage", storage])
        .args(more)
        .env_remove("ETCDCTL_ENDPOINTS")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run fencelock client");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), said)
}

#[tokio::test]
async fn fencelock_client_writes_to_an_https_storage_with_its_ca_and_token() {
    let certs = files();
    let token_file = certs.dir().join("token");
    let storage = https_storage(&certs, &["--auth-token-file", token_file.to_str().unwrap()]);
    let lockd = LockdProcess::start();
    let cacert = format!("--storage-cacert={}", certs.path("ca.pem").display());
    let token = format!("--storage-token-file={}", token_file.display());

    println!("1. with the CA and the token: the write is accepted");
    let (code, said) = client_2(&lockd, &storage.url, &[cacert.clone(), token.clone()]);
    assert_eq!(code, Some(0), "{said}");

    println!("2. without the token: refused, one line on stderr, exit 1");
    let (code, said) = client_2(&lockd, &storage.url, std::slice::from_ref(&cacert));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("401"), "{said}");
    let errors: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("fencelock: "))
        .collect();
    assert_eq!(errors.len(), 1, "{said}");

    println!("3. a token file that does not exist: one line, exit 1");
    let absent = format!(
        "--storage-token-file={}",
        certs.dir().join("absent").display()
    );
    let (code, said) = client_2(&lockd, &storage.url, &[cacert, absent]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("cannot read the token file"), "{said}");
}

/// `fencelock storage <args>` expected to exit before serving: its exit status and stderr.
fn storage_refuses(args: &[String]) -> (Option<i32>, String) {
    let mut cmd = Command::new(fencelock_bin());
    cmd.args(["storage", "--listen=127.0.0.1:0", "--in-memory"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    exit_and_stderr("fencelock storage", &mut cmd, Duration::from_secs(10))
}

#[test]
fn unusable_certificate_key_or_token_files_stop_the_storage_with_assert_one_line() {
    let certs = files();
    let file = |name: &str| certs.path(name).display().to_string();
    std::fs::write(certs.dir().join("empty"), "\n").unwrap();

    let (code, stderr) = storage_refuses(&[
        format!("--cert-file={}", certs.dir().join("absent.pem").display()),
        format!("--key-file={}", file("server-key.pem")),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line(&stderr, "cannot read --cert-file");

    let (code, stderr) = storage_refuses(&[
        format!("--cert-file={}", file("server.pem")),
        format!("--key-file={}", file("ca.pem")),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line(&stderr, "invalid TLS configuration");

    let (code, stderr) = storage_refuses(&[format!("--auth-token-file={}", file("empty"))]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line(&stderr, "no token on its first line");

    let (code, stderr) = storage_refuses(&["--open-health".into()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--auth-token-file"), "{stderr}");
}
