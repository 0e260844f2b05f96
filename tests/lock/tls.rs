//! The lock client over TLS, against a real etcd whose client port requires mutual TLS
//! (certificates made by the test): the library, and `fencelock lock` given etcdctl's flags
//! or its environment variables; a wrong authority or a missing client certificate is one
//! readable line and a non-zero exit; and the main story (a second holder acquires once the
//! first unlocks, with a later token) on a 3-member cluster with `--client-cert-auth`.

use std::time::Duration;

use crate::support::certs::TestCerts;
use crate::support::etcd;
use crate::support::lock_cmd::{Holder, refused};
use crate::support::proc::assert_one_line;
use fencelock::lock::{Client, ConnectOptions};

const TTL: Duration = Duration::from_secs(2);

#[tokio::test]
async fn the_library_locks_and_unlocks_through_mutual_tls() {
    let certs = TestCerts::new();
    let Some(etcd) = etcd::start_with(1, certs.mutual_tls()).await else {
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
    let Some(etcd) = etcd::start_with(1, certs.mutual_tls()).await else {
        return;
    };
    let url = etcd.endpoint(0);
    let host_port = url.trim_start_matches("https://").to_string();
    let file = |name: &str| certs.path(name).display().to_string();

    println!("flags, and an endpoint without a scheme: TLS because a CA was given");
    let mut flags = vec![format!("--endpoints={host_port}")];
    flags.extend(certs.client_flags());
    let holder = Holder::spawn_with("/tls-cli", &flags, &[]);
    let event = holder.expect("acquired", Duration::from_secs(10));
    assert_eq!(event["event"], "acquired", "{event}");
    holder.release();

    println!("the same through ETCDCTL_* variables and an https:// endpoint");
    let mut envs = vec![("ETCDCTL_ENDPOINTS", url.clone())];
    envs.extend(certs.client_env());
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

/// The lock suite's main story over mutual TLS against three members: each holder a client
/// of its own, through a different member, so that the handover crosses the cluster.
#[tokio::test]
async fn holders_on_different_members_of_a_mutual_tls_cluster_hand_over_in_token_order() {
    let certs = TestCerts::new();
    let Some(etcd) = etcd::start_with(3, certs.mutual_tls()).await else {
        return;
    };
    let options = ConnectOptions {
        tls: Some(certs.client()),
        ..ConnectOptions::default()
    };
    let connect = |endpoints: Vec<String>| {
        let options = options.clone();
        async move {
            Client::connect_with(endpoints, &options)
                .await
                .expect("connect over mutual TLS")
        }
    };
    let a = connect(vec![etcd.endpoint(0)]).await;
    let b = connect(vec![etcd.endpoint(2)]).await;
    let observer = connect(etcd.endpoints()).await;

    println!("1. A acquires through member 0");
    let a_session = a.session(TTL).await.unwrap();
    let first = a_session.lock("/tls-cluster").await.unwrap();

    println!("2. B, through member 2, queues behind it");
    let b_session = b.session(TTL).await.unwrap();
    let waiter = tokio::spawn(async move {
        let guard = b_session.lock("/tls-cluster").await.unwrap();
        (guard, b_session)
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while observer.lock_keys("/tls-cluster").await.unwrap().len() != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never queued behind A"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!waiter.is_finished(), "B acquired while A held the lock");

    println!("3. A unlocks; B acquires with a later token");
    let first_token = first.token();
    first.unlock().await.unwrap();
    let (second, b_session) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("B acquires once A unlocked")
        .unwrap();
    assert!(
        second.token() > first_token,
        "B's token {} follows A's {first_token}",
        second.token()
    );
    let keys = observer.lock_keys("/tls-cluster").await.unwrap();
    assert_eq!(keys.len(), 1, "only B's key is left: {keys:?}");
    assert_eq!(keys[0].token, second.token());
    let second_token = second.token();
    second.unlock().await.unwrap();
    b_session.close().await.unwrap();
    a_session.close().await.unwrap();

    println!("4. `fencelock lock` through all three members, etcdctl's flags");
    let mut flags = vec![format!("--endpoints={}", etcd.endpoints().join(","))];
    flags.extend(certs.client_flags());
    let holder = Holder::spawn_with("/tls-cluster", &flags, &[]);
    let third = Holder::token(&holder.expect("acquired", Duration::from_secs(10)));
    assert!(third > second_token, "{third} follows {second_token}");
    holder.release();
}
