//! The lock client over TLS, against a real etcd whose client port requires mutual TLS
//! (certificates made by the test): the library, and `fencelock lock` given etcdctl's flags
//! or its environment variables; a wrong authority or a missing client certificate is one
//! readable line and a non-zero exit.

use std::time::Duration;

use crate::support::certs::TestCerts;
use crate::support::etcd;
use crate::support::lock_cmd::{Holder, assert_one_line, refused};
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
