//! A 3-member etcd with each member on a host of its own: the leader cut off from the other
//! two is replaced, the majority keeps serving, and the old leader catches up after heal.

use std::time::Duration;

use crate::support::{etcd, net};
use fencelock::etcd::etcdserverpb::{PutRequest, RangeRequest, StatusRequest, StatusResponse};
use fencelock::lock::{Client, ConnectOptions};
use fencelock::process::{EtcdOptions, NetHost};
use tokio::time::{Instant, sleep};

/// Bound for one request of a poll: a member that is cut off does not answer at all.
const REQUEST: Duration = Duration::from_secs(1);

/// Bound for an election after the leader is cut off: the followers campaign one election
/// timeout (500 ms here) after the last heartbeat, and the cut-off leader steps down after one
/// too (etcd's check-quorum); a few rounds of split votes on a loaded machine stay well
/// within it.
const ELECTION: Duration = Duration::from_secs(15);

/// Runs `f` with a client of `endpoint` made inside `from`; `Err` when the member does not
/// answer within [`REQUEST`].
async fn ask<T, F, Fut>(from: &NetHost, endpoint: &str, f: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let endpoint = endpoint.to_owned();
    from.run(move || async move {
        let options = ConnectOptions {
            timeout: REQUEST,
            ..ConnectOptions::default()
        };
        let client = Client::connect_with([endpoint], &options)
            .await
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(REQUEST, f(client)).await {
            Ok(answer) => answer.map_err(|status| status.to_string()),
            Err(_) => Err(format!("no answer within {REQUEST:?}")),
        }
    })
    .await
    .expect("enter the host")
}

async fn status(from: &NetHost, endpoint: &str) -> Result<StatusResponse, String> {
    ask(from, endpoint, |client| async move {
        client
            .maintenance()
            .status(StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
    })
    .await
}

/// A linearizable read of `key` through `endpoint`: answered only by a member that is part
/// of a quorum with a leader.
async fn read(from: &NetHost, endpoint: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
    let key = key.as_bytes().to_vec();
    ask(from, endpoint, |client| async move {
        let range = RangeRequest {
            key,
            ..RangeRequest::default()
        };
        let response = client.kv().range(range).await?.into_inner();
        Ok(response.kvs.into_iter().next().map(|kv| kv.value.to_vec()))
    })
    .await
}

fn member_id(status: &StatusResponse) -> u64 {
    status.header.as_ref().map_or(0, |h| h.member_id)
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout`.
async fn until<T>(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_by_the_majority_and_catches_up_after_heal() {
    let Some(net) = net::start(3) else {
        return;
    };
    let options = EtcdOptions {
        hosts: net.hosts().to_vec(),
        ..EtcdOptions::default()
    };
    let Some(etcd) = etcd::start_with(3, options).await else {
        return;
    };
    let endpoints = etcd.endpoints();
    let hosts = net.hosts().to_vec();
    println!("members at {endpoints:?}");

    println!("every member names the same leader");
    let (old_leader, ids, old_term) = until("one leader", ELECTION, async || {
        let mut statuses = Vec::new();
        for (host, endpoint) in hosts.iter().zip(&endpoints) {
            statuses.push(status(host, endpoint).await.ok()?);
        }
        let leader = statuses[0].leader;
        let ids: Vec<u64> = statuses.iter().map(member_id).collect();
        let agreed = leader != 0 && statuses.iter().all(|s| s.leader == leader);
        let index = ids.iter().position(|&id| id == leader)?;
        agreed.then(|| (index, ids, statuses[0].raft_term))
    })
    .await;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old_leader).collect();
    println!("leader: member {old_leader} (term {old_term}); isolating its host");

    net.isolate(old_leader).unwrap();
    let new_leader = until("a new leader among the other two", ELECTION, async || {
        let mut leaders = Vec::new();
        for &i in &survivors {
            let s = status(&hosts[i], &endpoints[i]).await.ok()?;
            leaders.push((s.leader, s.raft_term));
        }
        let (leader, term) = leaders[0];
        let index = ids.iter().position(|&id| id == leader)?;
        (survivors.contains(&index) && leaders.iter().all(|&(l, _)| l == leader))
            .then_some((index, term))
    })
    .await;
    println!(
        "new leader: member {} (term {})",
        new_leader.0, new_leader.1
    );
    assert!(new_leader.1 > old_term, "a new term");

    println!("the majority takes a write; the isolated member cannot serve a linearizable read");
    let (s0, key) = (survivors[0], "/net/written-while-isolated");
    ask(&hosts[s0], &endpoints[s0], move |client| async move {
        let put = PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"majority".to_vec(),
            ..PutRequest::default()
        };
        client.kv().put(put).await.map(drop)
    })
    .await
    .expect("the majority accepts a write");
    let isolated = read(&hosts[old_leader], &endpoints[old_leader], key).await;
    assert!(
        isolated.is_err(),
        "the isolated member answered a linearizable read: {isolated:?}"
    );

    println!("heal: the old leader follows a leader again and has the write");
    net.heal().unwrap();
    until("the old leader to rejoin", ELECTION, async || {
        let value = read(&hosts[old_leader], &endpoints[old_leader], key)
            .await
            .ok()??;
        assert_eq!(value, b"majority");
        let mine = status(&hosts[old_leader], &endpoints[old_leader])
            .await
            .ok()?;
        let theirs = status(&hosts[s0], &endpoints[s0]).await.ok()?;
        (mine.leader != 0 && mine.leader == theirs.leader).then_some(())
    })
    .await;
    drop(etcd);
    drop(net);
}
