//! Take a fenced lock on etcd, use its token, release it.
//!
//! ```text
//! cargo run --example lock -- /orders            # etcd on 127.0.0.1:2379
//! ETCDCTL_ENDPOINTS=127.0.0.1:2379,127.0.0.1:22379 cargo run --example lock -- /orders
//! cargo run --example lock -- /orders http://127.0.0.1:8080   # also write to `fencelock storage`
//! ```

use std::time::Duration;

use anyhow::Context;
use fencelock::lock::Client;
use fencelock::storage::{ClientError, StorageClient};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/fencelock-example".into());
    let storage = std::env::args().nth(2);
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

    // The protected work: every request to the shared resource carries `token`, and the
    // resource rejects tokens lower than the highest it has seen for the lock name. Meanwhile,
    // `guard.lost()` resolves if the lock is lost.
    if let Some(url) = storage {
        let storage = StorageClient::new(&url)?;
        let value = format!("written under token {token}");
        match storage
            .write("example-key", &value, token, Some(&name))
            .await
        {
            Ok(()) => println!("wrote example-key with token {token}"),
            Err(ClientError::StaleToken { current, .. }) => {
                println!("rejected: a newer holder (token {current}) has used the storage")
            }
            Err(e) => return Err(e).context("cannot write to the storage"),
        }
    }

    guard.unlock().await?;
    session.close().await?;
    println!("unlocked {name}");
    Ok(())
}
