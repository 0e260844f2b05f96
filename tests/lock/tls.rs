//! The lock client over TLS, against a real etcd whose client port requires mutual TLS
//! (certificates made by the test): the library, and `fencelock lock` given etcdctl's flags
//! or its environment variables; a wrong authority or a missing client certificate is one
//! readable line and a non-zero exit.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cli::Holder;
use crate::support::certs::TestCerts;
use crate::support::etcd;
use crate::support::proc::{ChildGuard, fencelock_bin};
use fencelock::lock::{Client, ConnectOptions};
use fencelock::process::EtcdOptions;

const TTL: Duration = Duration::from_secs(2);

fn tls(certs: &TestCerts) -> EtcdOptions {
    EtcdOptions {
        tls: Some(certs.server()),
        ..EtcdOptions::default()
    }
}

#[tokio::test]
async fn the_library_locks_and_unlocks_through_mutual_tls() {
    let certs = TestCerts::new();
    let Some(etcd) = etcd::start_with(1, tls(&certs)).await else {
        return;
    };
    let options = ConnectOptions {
        tls: Some(certs.client()),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(etcd.endpoints(), &options)
        .await
        .expect("connect over mutual TLS");
    let session = client.session(TTL).await.unwrap();
    let first = session.lock("/tls").await.unwrap();
    let token = first.token();
    first.unlock().await.unwrap();
    let second = session.lock("/tls").await.unwrap();
    assert!(second.token() > token, "each acquisition has a newer token");
    second.unlock().await.unwrap();
    session.close().await.unwrap();

    println!("without a client certificate the cluster refuses the connection");
    let no_identity = ConnectOptions {
        timeout: Duration::from_secs(2),
        tls: Some(fencelock::lock::TlsOptions {
            identity: None,
            ..certs.client()
        }),
        ..ConnectOptions::default()
    };
    let refused = Client::connect_with(etcd.endpoints(), &no_identity).await;
    assert!(
        matches!(refused, Err(fencelock::lock::Error::Unavailable { .. })),
        "{:?}",
        refused.err()
    );
}

/// Runs `fencelock lock NAME` expected to fail: its exit status and stderr. Its stdin stays
/// open (at EOF it would stop before trying), and its log is kept to warnings.
pub(crate) fn refused(name: &str, args: &[String]) -> (Option<i32>, String) {
    use std::io::Read;
    let mut cmd = Command::new(fencelock_bin());
    cmd.args(["lock", name, "--ttl", "2"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn(format!("fencelock lock {name}"), &mut cmd);
    let _stdin = child.child_mut().stdin.take();
    let mut stderr = String::new();
    child
        .child_mut()
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("readable stderr");
    let status = child.wait_exit(Duration::from_secs(30));
    (status.code(), stderr)
}

pub(crate) fn assert_one_line(stderr: &str, mentions: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr:?}");
    assert!(lines[0].starts_with("fencelock: "), "{stderr:?}");
    assert!(
        lines[0].contains(mentions),
        "{stderr:?} mentions {mentions:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr:?}");
}

#[tokio::test]
async fn fencelock_lock_takes_etcdctls_tls_flags_and_variables_and_refuses_bad_ones_in_one_line() {
    let certs = TestCerts::new();
    let Some(etcd) = etcd::start_with(1, tls(&certs)).await else {
        return;
    };
    let url = etcd.endpoint(0);
    let host_port = url.trim_start_matches("https://").to_string();
    let file = |name: &str| certs.path(name).display().to_string();

    println!("flags, and an endpoint without a scheme: TLS because a CA was given");
    let flags = vec![
        format!("--endpoints={host_port}"),
        format!("--cacert={}", file("ca.pem")),
        format!("--cert={}", file("client.pem")),
        format!("--key={}", file("client-key.pem")),
    ];
    let holder = Holder::spawn_with("/tls-cli", &flags, &[]);
    let event = holder.expect("acquired", Duration::from_secs(10));
    assert_eq!(event["event"], "acquired", "{event}");
    holder.release();

    println!("the same through ETCDCTL_* variables and an https:// endpoint");
    let envs = [
        ("ETCDCTL_ENDPOINTS", url.clone()),
        ("ETCDCTL_CACERT", file("ca.pem")),
        ("ETCDCTL_CERT", file("client.pem")),
        ("ETCDCTL_KEY", file("client-key.pem")),
    ];
    let holder = Holder::spawn_with("/tls-cli", &[], &envs);
    let event = holder.expect("acquired", Duration::from_secs(10));
    assert_eq!(event["event"], "acquired", "{event}");
    holder.release();

    println!("an authority that did not sign the server's certificate");
    let mut wrong_ca = flags.clone();
    wrong_ca[1] = format!("--cacert={}", file("other-ca.pem"));
    let (code, stderr) = refused("/tls-cli", &wrong_ca);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line(&stderr, "no etcd endpoint answered");
    assert!(stderr.contains("certificate"), "says why: {stderr}");

    println!("no client certificate");
    let (code, stderr) = refused("/tls-cli", &flags[..2]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line(&stderr, "no etcd endpoint answered");

    println!("a certificate without its key: a usage error");
    let (code, stderr) = refused("/tls-cli", &flags[..3]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--key"), "{stderr}");

    println!("a CA file that does not exist");
    let mut missing = flags.clone();
    missing[1] = format!("--cacert={}", certs.dir().join("absent.pem").display());
    let (code, stderr) = refused("/tls-cli", &missing);
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line(&stderr, "cannot read the CA bundle");
}
