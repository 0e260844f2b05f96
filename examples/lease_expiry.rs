//! How late a lock service deletes the keys of an expired lease: grants leases with TTL 1,
//! attaches a key to each, and times the key's delete event from the grant's answer.
//!
//! `cargo run --release --example lease_expiry -- 127.0.0.1:2379 [rounds]`

use std::time::{Duration, Instant};

use fencelock::etcd::etcdserverpb::{
    LeaseGrantRequest, PutRequest, WatchCreateRequest, WatchRequest, watch_request::RequestUnion,
};
use fencelock::etcd::mvccpb::event::EventType;
use fencelock::lock::Client;
use tokio_stream::wrappers::ReceiverStream;

const TTL: Duration = Duration::from_secs(1);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoint = args.next().unwrap_or_else(|| "127.0.0.1:2379".into());
    let rounds: usize = args.next().map_or(Ok(10), |n| n.parse())?;
    anyhow::ensure!(rounds > 0, "rounds must be at least 1");
    let client = Client::connect([endpoint]).await?;
    let mut late = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let key = format!("/fencelock-lease-expiry/{round}").into_bytes();
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: key.clone(),
                ..Default::default()
            })),
        };
        // The sender lives until the round ends: closing it would end the watch.
        let (requests, rx) = tokio::sync::mpsc::channel(1);
        requests.send(create).await?;
        let mut answers = client
            .watch()
            .watch(ReceiverStream::new(rx))
            .await?
            .into_inner();
        answers.message().await?;
        let grant = LeaseGrantRequest {
            ttl: TTL.as_secs() as i64,
            id: 0,
        };
        let lease = client.lease().lease_grant(grant).await?.into_inner().id;
        let granted = Instant::now();
        let put = PutRequest {
            key,
            lease,
            ..Default::default()
        };
        client.kv().put(put).await?;
        'deleted: while let Some(answer) = answers.message().await? {
            if answer
                .events
                .iter()
                .any(|e| e.r#type == EventType::Delete as i32)
            {
                break 'deleted;
            }
        }
        late.push(granted.elapsed().saturating_sub(TTL));
        drop(requests);
    }
    late.sort();
    println!(
        "{rounds} leases of TTL {TTL:?}: keys deleted after the TTL by min {:.2?}, median {:.2?}, max {:.2?}",
        late[0],
        late[late.len() / 2],
        late[late.len() - 1]
    );
    Ok(())
}
