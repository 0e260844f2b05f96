//! Fenced writes to keys in etcd (or lockd): applied by one Txn only while this process still
//! holds the lock, with a fence key that readers holding no lock can check.
//!
//! ```console
//! $ fencelock lockd --in-memory &
//! $ cargo run --example fence_etcd -- 127.0.0.1:2379
//! ```

use std::time::Duration;

use fencelock::fence::etcd::{EtcdFence, EtcdFenceError, Holder, Op};
use fencelock::lock::Client;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2379".into());
    let client = Client::connect([endpoint]).await?;
    let fence = EtcdFence::new(client.clone());

    let session = client.session(Duration::from_secs(10)).await?;
    let guard = session.lock("/config").await?;
    let holder = Holder::of(&guard);

    // Both keys change together, and only while the lock key still exists with this token.
    let written = fence
        .apply_fenced(
            &holder,
            holder.lock_name(),
            &[Op::put("config/mode", "active"), Op::delete("config/draft")],
        )
        .await;
    match written {
        Ok(revision) => println!(
            "written at revision {revision} under token {}",
            holder.token
        ),
        Err(EtcdFenceError::LockGone { .. }) => println!("the lock was lost: nothing written"),
        Err(e) => return Err(e.into()),
    }

    // A reader without the lock: the data and the token that wrote it, at one revision.
    let read = fence.read("/config", &["config/mode"]).await?;
    println!(
        "read at revision {}: written under token {:?}",
        read.revision, read.token
    );

    guard.unlock().await?;
    session.close().await?;
    Ok(())
}
