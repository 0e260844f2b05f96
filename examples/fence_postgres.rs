//! A fenced PostgreSQL transaction: take a lock on the lock service, then insert a row in a
//! transaction that the fence row guards, so a holder that wakes up late changes nothing.
//!
//! ```console
//! $ fencelock lockd --in-memory &
//! $ cargo run --example fence_postgres -- postgresql://app@127.0.0.1:5432/app 127.0.0.1:2379
//! ```

use std::time::Duration;

use fencelock::fence::postgres::{PgFence, PgFenceError};
use fencelock::lock::Client;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "postgresql://postgres@127.0.0.1:5432/postgres".into());
    let endpoint = args.next().unwrap_or_else(|| "127.0.0.1:2379".into());

    let (mut db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let fence = PgFence::new();
    // Idempotent: creates fencelock.fences and the functions when missing.
    fence.install(&mut db).await?;
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, token bigint NOT NULL)",
    )
    .await?;

    let client = Client::connect([endpoint]).await?;
    let session = client.session(Duration::from_secs(10)).await?;
    let guard = session.lock("/orders").await?;
    let token = guard.token();

    // The fence row for "/orders" is checked and raised first; the insert follows in the
    // same transaction, and the commit makes both durable together.
    match fence.begin(&mut db, "/orders", token).await {
        Ok(tx) => {
            tx.execute(
                "INSERT INTO orders (token) VALUES ($1)",
                &[&(token.get() as i64)],
            )
            .await?;
            tx.commit().await?;
            println!("inserted under token {token}");
        }
        Err(PgFenceError::Stale(stale)) => {
            // A newer holder has written: nothing of this transaction was applied.
            println!("refused: {stale}");
        }
        Err(e) => return Err(e.into()),
    }
    guard.unlock().await?;
    session.close().await?;
    Ok(())
}
