//! Take a fenced lock on etcd, use its token, release it.
//!
//! ```text
//! cargo run --example lock -- /orders            # etcd on 127.0.0.1:2379
//! ETCDCTL_ENDPOINTS=127.0.0.1:2379,127.0.0.1:22379 cargo run --example lock -- /orders
//! ```

use std::time::Duration;

use anyhow::Context;
use fencelock::lock::Client;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/fencelock-example".into());
    let endpoints = std::env::var("ETCDCTL_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());

    let client = Client::connect(endpoints.split(','))
        .await
        .context("cannot reach etcd")?;
    // The lease behind the lock: if this process stops renewing it (crash, freeze), etcd
    // releases the lock after the TTL.
    let session = client.session(Duration::from_secs(10)).await?;
    let guard = session.lock(&name).await?;
    let token = guard.token();
    println!("locked {name}: key {} fencing token {token}", guard.key());

    // Do the protected work here, passing `token` with every request to the shared
    // resource, which rejects tokens lower than the highest it has seen. With fencelock's
    // storage server that is one call per request through its StorageClient, e.g. a write
    // of a key with `token`. Meanwhile, `guard.lost()` resolves if the lock is lost.

    guard.unlock().await?;
    session.close().await?;
    println!("unlocked {name}");
    Ok(())
}
