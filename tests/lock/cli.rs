//! `fencelock lock` as a process of its own, against both lock services (`crate::support::backend`:
//! a real etcd from `crate::support::etcd`, and `fencelock lockd`): a holder the tests can freeze with
//! SIGSTOP, and its JSON events and exit statuses.

use crate::both_backends;

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::backend::{Service, wait_for_keys};
use crate::support::etcd::within_ttl;
use crate::support::lock_cmd::{Holder, TTL};
use crate::support::proc::{Signal, fencelock_bin};
use fencelock::lock::Client;
use tokio::time::{Instant, timeout};

async fn a_frozen_holder_loses_the_lock_within_its_ttl_and_reports_the_loss_when_resumed(
    service: Service,
) {
    let endpoints = service.endpoints();
    let holder = Holder::spawn(&endpoints, "/frozen");
    let acquired = holder.expect("acquired", Duration::from_secs(10));
    println!("holder process acquired: {acquired}");
    assert_eq!(acquired["ttl"], TTL.as_secs());

    let client = Client::connect(&endpoints).await.unwrap();
    let session = client.session(TTL).await.unwrap();
    let waiter = tokio::spawn(async move { session.lock("/frozen").await.unwrap() });
    wait_for_keys(&client, "/frozen", 2).await;

    println!("freezing the holder (SIGSTOP)");
    let frozen = Instant::now();
    holder.child.signal(Signal::STOP);
    let guard = timeout(within_ttl(TTL), waiter)
        .await
        .expect("the waiter acquires within TTL + 1 s")
        .unwrap();
    println!(
        "waiter acquired {:?} after the freeze, token {}",
        frozen.elapsed(),
        guard.token()
    );
    assert!(guard.token() > Holder::token(&acquired));

    println!("resuming the holder (SIGCONT)");
    let mut holder = holder;
    holder.child.signal(Signal::CONT);
    let lost = holder.expect("lost", Duration::from_secs(2));
    println!("the resumed holder reports: {lost}");
    let status = holder.child.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(3), "a lost lock exits with status 3");
}
both_backends!(a_frozen_holder_loses_the_lock_within_its_ttl_and_reports_the_loss_when_resumed);

async fn the_lock_command_releases_on_stdin_eof_and_on_sigterm(service: Service) {
    let endpoints = service.endpoints();
    let client = Client::connect(&endpoints).await.unwrap();

    let mut first = Holder::spawn(&endpoints, "/released");
    let first_acquired = first.expect("acquired", Duration::from_secs(10));
    let session = client.session(TTL).await.unwrap();
    let waiter = tokio::spawn(async move { session.lock("/released").await.unwrap() });
    wait_for_keys(&client, "/released", 2).await;

    println!("closing the holder's stdin");
    drop(first.stdin.take());
    first.expect("released", Duration::from_secs(5));
    assert!(first.child.wait_exit(Duration::from_secs(5)).success());
    let guard = timeout(Duration::from_secs(2), waiter)
        .await
        .expect("handover")
        .unwrap();
    assert!(guard.token() > Holder::token(&first_acquired));

    let mut second = Holder::spawn(&endpoints, "/released");
    wait_for_keys(&client, "/released", 2).await;
    guard.unlock().await.unwrap();
    let second_acquired = second.expect("acquired", Duration::from_secs(5));
    println!("second holder acquired: {second_acquired}; sending SIGTERM");
    second.child.signal(Signal::TERM);
    second.expect("released", Duration::from_secs(5));
    assert!(second.child.wait_exit(Duration::from_secs(5)).success());
    assert!(client.lock_keys("/released").await.unwrap().is_empty());
}
both_backends!(the_lock_command_releases_on_stdin_eof_and_on_sigterm);

#[test]
fn the_lock_command_reports_an_unreachable_etcd_in_one_line() {
    let endpoint = format!("127.0.0.1:{}", crate::support::proc::free_port());
    let output = Command::new(fencelock_bin())
        .args(["lock", "/nowhere", "--endpoints", &endpoint])
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("stderr: {stderr}");
    assert!(!output.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&endpoint), "names the endpoint: {stderr}");
    assert!(!stderr.contains("panicked"));
    assert!(output.stdout.is_empty());
}
