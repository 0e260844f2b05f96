//! A lock holder cut off from every etcd member loses its lock within its TTL, and a waiter
//! on another host acquires with a higher fencing token.

use std::time::{Duration, Instant};

use crate::support::lock_cmd::{Holder, TTL};
use crate::support::{etcd, net};
use fencelock::etcd::etcdserverpb::RangeRequest;
use fencelock::etcd::prefix_end;
use fencelock::lock::{Client, ConnectOptions};
use fencelock::process::EtcdOptions;

const LOCK: &str = "/net-holder";

/// Beyond the TTL: the last renewal was at most TTL/3 before the cut, the lease ends on the
/// server TTL after it; etcd looks for expired leases every 500 ms and revokes through raft,
/// and the waiter learns of it by a watch; the holder's own deadline is its local estimate.
/// 2 s covers all of these on a loaded 2-core machine.
const MARGIN: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_holder_loses_its_lock_and_a_waiter_acquires_with_a_higher_token() {
    // Hosts 0-2: etcd members; 3: the holder; 4: the waiter.
    let Some(net) = net::start(5) else {
        return;
    };
    let options = EtcdOptions {
        hosts: net.hosts()[..3].to_vec(),
        ..EtcdOptions::default()
    };
    let Some(etcd) = etcd::start_with(3, options).await else {
        return;
    };
    let endpoints = etcd.endpoints();

    println!("the holder, on host 3, acquires through the members");
    let holder = Holder::spawn_in(net.host(3), &endpoints, LOCK);
    let acquired = holder.expect("acquired", Duration::from_secs(15));
    let first = Holder::token(&acquired);
    println!("holder: token {first}");

    println!("the waiter, on host 4, queues behind it");
    let waiter = Holder::spawn_in(net.host(4), &endpoints, LOCK);
    let keys = endpoints.clone();
    net.host(4)
        .run(move || async move {
            let options = ConnectOptions {
                timeout: Duration::from_secs(2),
                ..ConnectOptions::default()
            };
            let client = Client::connect_with(&keys, &options).await.unwrap();
            let prefix = format!("{LOCK}/").into_bytes();
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let range = RangeRequest {
                    range_end: prefix_end(&prefix),
                    key: prefix.clone(),
                    count_only: true,
                    ..RangeRequest::default()
                };
                let count = client.kv().range(range).await.unwrap().into_inner().count;
                if count == 2 {
                    return;
                }
                assert!(Instant::now() < deadline, "the waiter's key never appeared");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("enter host 4");

    println!("cut the holder's host off from everyone");
    net.isolate(3).unwrap();
    let cut = Instant::now();
    let bound = TTL + MARGIN;

    let lost = holder.expect("lost", bound);
    println!(
        "holder: lost after {:?} ({})",
        cut.elapsed(),
        lost["reason"]
    );
    let remaining = bound.saturating_sub(cut.elapsed());
    let next = waiter.expect("acquired", remaining);
    let second = Holder::token(&next);
    println!("waiter: acquired after {:?}, token {second}", cut.elapsed());
    assert!(second > first, "token {second} after {first}");
    assert_eq!(
        net::namespaces_named(&net.netns_prefix()).len(),
        6,
        "5 hosts and the bridge"
    );
}
