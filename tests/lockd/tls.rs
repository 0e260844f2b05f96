//! lockd with TLS and mutual TLS on its client port (`--cert-file`, `--key-file`,
//! `--trusted-ca-file`, `--client-cert-auth`, as etcd names them), with certificates made by
//! the test: `fencelock lock` acquires through it given etcdctl's flags or variables, a wrong
//! authority or a missing or foreign client certificate is one readable line and exit 1,
//! etcdctl with the same certificates checks health and puts and gets, and `/health` and
//! `/metrics` answer over plain HTTP on `--listen-metrics-urls`.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::certs::TestCerts;
use crate::support::etcd::etcdctl_bin;
use crate::support::lock_cmd::{Holder, refused};
use crate::support::lockd::LockdProcess;
use crate::support::proc::{assert_one_line, exit_and_stderr, fencelock_bin, free_port};

/// Bound for an acquisition on an idle local lockd, TLS handshake included.
const PROMPTLY: Duration = Duration::from_secs(10);

/// Starts lockd requiring client certificates signed by the test's authority, with
/// `/health` and `/metrics` on a plaintext port of their own; that port too.
fn mutual_tls_lockd(certs: &TestCerts) -> (LockdProcess, u16) {
    let file = |name: &str| certs.path(name).display().to_string();
    let metrics = free_port();
    let lockd = LockdProcess::start_with(&[
        format!("--cert-file={}", file("server.pem")),
        format!("--key-file={}", file("server-key.pem")),
        format!("--trusted-ca-file={}", file("ca.pem")),
        "--client-cert-auth".into(),
        format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"),
    ]);
    (lockd, metrics)
}

#[tokio::test]
async fn fencelock_lock_acquires_through_mutual_tls_and_a_wrong_ca_or_client_cert_is_one_line() {
    let certs = TestCerts::new();
    let (lockd, _) = mutual_tls_lockd(&certs);
    let host_port = lockd.endpoints()[0].clone();
    let file = |name: &str| certs.path(name).display().to_string();

    println!("1. etcdctl's flags, the endpoint without a scheme: TLS because a CA is given");
    let mut flags = vec![format!("--endpoints={host_port}")];
    flags.extend(certs.client_flags());
    let holder = Holder::spawn_with("/tls", &flags, &[]);
    let first = Holder::token(&holder.expect("acquired", PROMPTLY));
    holder.release();

    println!("2. the same through ETCDCTL_* variables and an https:// endpoint");
    let mut envs = vec![("ETCDCTL_ENDPOINTS", format!("https://{host_port}"))];
    envs.extend(certs.client_env());
    let holder = Holder::spawn_with("/tls", &[], &envs);
    let second = Holder::token(&holder.expect("acquired", PROMPTLY));
    assert!(
        second > first,
        "the second holder's token {second} follows {first}"
    );
    holder.release();

    println!("3. an authority that did not sign lockd's certificate");
    let mut wrong_ca = flags.clone();
    wrong_ca[1] = format!("--cacert={}", file("other-ca.pem"));
    let (code, stderr) = refused("/tls", &wrong_ca);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line(&stderr, "no etcd endpoint answered");
    assert!(stderr.contains("certificate"), "says why: {stderr}");

    println!("4. no client certificate");
    let (code, stderr) = refused("/tls", &flags[..2]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line(&stderr, "no etcd endpoint answered");

    println!("5. a client certificate signed by an authority lockd does not trust");
    let mut foreign = flags.clone();
    foreign[2] = format!("--cert={}", file("other-client.pem"));
    foreign[3] = format!("--key={}", file("other-client-key.pem"));
    let (code, stderr) = refused("/tls", &foreign);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line(&stderr, "no etcd endpoint answered");

    println!("6. plaintext against the TLS port");
    let (code, stderr) = refused("/tls", &flags[..1]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line(&stderr, "cannot hold lock /tls");

    println!("7. lockd served on through every refusal: a holder acquires again");
    let holder = Holder::spawn_with("/tls", &flags, &[]);
    let third = Holder::token(&holder.expect("acquired", PROMPTLY));
    assert!(third > second, "{third} follows {second}");
    holder.release();
}

/// Whether etcdctl runs here; when it does not, the calling test is skipped, unless
/// `FENCELOCK_REQUIRE_ETCD=1` makes that a failure.
fn etcdctl_available() -> bool {
    let runs = Command::new(etcdctl_bin())
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    let required = std::env::var("FENCELOCK_REQUIRE_ETCD").is_ok_and(|v| v == "1");
    assert!(
        runs || !required,
        "FENCELOCK_REQUIRE_ETCD=1 but etcdctl does not run"
    );
    if !runs {
        eprintln!("skipped: etcdctl not found (`{}`)", etcdctl_bin());
    }
    runs
}

#[tokio::test]
async fn etcdctl_with_the_same_certificates_works_and_metrics_answer_on_their_own_plain_port() {
    if !etcdctl_available() {
        return;
    }
    let certs = TestCerts::new();
    let (lockd, metrics_port) = mutual_tls_lockd(&certs);
    let file = |name: &str| certs.path(name).display().to_string();
    let etcdctl = |client: &str, args: &[&str]| {
        Command::new(etcdctl_bin())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=https://{}", lockd.endpoints()[0]))
            .arg("--command-timeout=5s")
            .arg("--dial-timeout=3s")
            .arg(format!("--cacert={}", file("ca.pem")))
            .arg(format!("--cert={}", file(&format!("{client}.pem"))))
            .arg(format!("--key={}", file(&format!("{client}-key.pem"))))
            .args(args)
            .output()
            .expect("cannot run etcdctl")
    };
    // stdout and stderr together: etcdctl 3.4 prints `endpoint health` on stderr.
    let ok = |output: std::process::Output| {
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "etcdctl failed: {said}");
        (
            String::from_utf8(output.stdout).expect("UTF-8 output"),
            said,
        )
    };

    println!("1. endpoint health, put and get with the client certificate");
    let (_, health) = ok(etcdctl("client", &["endpoint", "health"]));
    assert!(health.contains("is healthy"), "{health}");
    ok(etcdctl("client", &["put", "/tls/k", "over tls"]));
    let (value, _) = ok(etcdctl("client", &["get", "/tls/k", "--print-value-only"]));
    assert_eq!(value.trim(), "over tls");

    println!("2. a client certificate of another authority is refused");
    let refused = etcdctl("other-client", &["get", "/tls/k"]);
    assert!(
        !refused.status.success(),
        "a foreign certificate was accepted"
    );

    println!("3. /health and /metrics over plain HTTP on --listen-metrics-urls");
    let http = crate::support::http_client();
    let base = format!("http://127.0.0.1:{metrics_port}");
    let response = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "health": "true", "reason": "" }));
    let response = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("fencelock_lockd_keys 1\n"),
        "the put key:\n{text}"
    );
    assert!(
        text.contains(
            "fencelock_lockd_requests_total{grpc_service=\"etcdserverpb.KV\",grpc_method=\"Put\"} 1\n"
        ),
        "etcdctl's put, counted:\n{text}"
    );
    let response = http.get(format!("{base}/nothing")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "not found");

    println!("4. the TLS port does not speak plaintext HTTP");
    let plain = http
        .get(format!("http://{}/health", lockd.endpoints()[0]))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "a plaintext request was answered: {plain:?}"
    );
}

/// `fencelock lockd <args>` expected to exit before serving: its exit status and stderr.
fn lockd_refuses(args: &[String]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut cmd = Command::new(fencelock_bin());
    cmd.args(["lockd", "--listen=127.0.0.1:0", "--in-memory"])
        .args(args)
        .env("RUST_LOG", "warn")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    exit_and_stderr("fencelock lockd", &mut cmd, PROMPTLY)
}

#[test]
fn unusable_tls_flags_stop_lockd_before_it_serves_with_one_line() {
    let certs = TestCerts::new();
    let file = |name: &str| certs.path(name).display().to_string();

    println!("1. a certificate file that does not exist");
    let (code, stderr) = lockd_refuses(&[
        format!("--cert-file={}", certs.dir().join("absent.pem").display()),
        format!("--key-file={}", file("server-key.pem")),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line(&stderr, "cannot read --cert-file");

    println!("2. a key file that holds no key");
    let (code, stderr) = lockd_refuses(&[
        format!("--cert-file={}", file("server.pem")),
        format!("--key-file={}", file("ca.pem")),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line(&stderr, "invalid TLS configuration");

    println!("3. --client-cert-auth without an authority to check clients against");
    let (code, stderr) = lockd_refuses(&[
        format!("--cert-file={}", file("server.pem")),
        format!("--key-file={}", file("server-key.pem")),
        "--client-cert-auth".into(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--trusted-ca-file"), "{stderr}");

    println!("4. a metrics URL lockd cannot serve");
    let (code, stderr) = lockd_refuses(&["--listen-metrics-urls=https://127.0.0.1:1".into()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("only http://HOST:PORT"), "{stderr}");
}
