//! Where the demo's clients write: fencelock's storage, a PostgreSQL table, or a key in the
//! lock service itself; fenced or not.
//!
//! - `storage`: the storage server checks the token (its `--fencing` policy decides).
//! - `postgres`: the table `fencelock_demo (key, value)`; fenced, each write is a transaction
//!   begun by `fence::postgres` under the lock name and the token; unfenced, a plain upsert.
//! - `etcd`: the key in the lock service; fenced, a Txn applied only while the writer's lock
//!   key exists (`fence::etcd::apply_held`); unfenced, a plain put.

use anyhow::Context as _;
use fencelock::FencingToken;
use fencelock::etcd::etcdserverpb as pb;
use fencelock::fence::etcd::{EtcdFence, EtcdFenceError, Holder, Op};
use fencelock::fence::postgres::{PgFence, PgFenceError};
use fencelock::lock::{Client, LockGuard};
use fencelock::storage::{ClientError, Protocol, StorageClient};

pub use fencelock::fence::Resource;

/// The table the demo writes to in PostgreSQL.
pub const TABLE: &str = "fencelock_demo";

/// How a write was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The fence had seen this newer token.
    Stale(FencingToken),
    /// The writer's lock key was gone (etcd's compare failed).
    LockGone,
}

/// A client's connection to its resource.
pub enum Target {
    /// The storage server.
    Storage(StorageClient),
    /// PostgreSQL, fenced by the lock name or not.
    Postgres {
        /// The connection.
        db: tokio_postgres::Client,
        /// Whether writes go through the fence.
        fenced: bool,
    },
    /// Keys in the lock service, fenced by the lock key or not.
    Etcd {
        /// The lock service.
        client: Client,
        /// Whether writes go through the fence.
        fenced: bool,
    },
}

impl Target {
    /// Connects to PostgreSQL at `url`, creating the fence and the demo's table if missing.
    pub async fn postgres(url: &str, fenced: bool) -> anyhow::Result<Target> {
        let mut db = connect_postgres(url).await?;
        PgFence::new()
            .install(&mut db)
            .await
            .context("cannot install the fence")?;
        db.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (key text PRIMARY KEY, value text NOT NULL)"
        ))
        .await
        .context("cannot create the demo's table")?;
        Ok(Target::Postgres { db, fenced })
    }

    /// Writes `value` under `key` on behalf of `guard`'s holder of lock `lock`.
    pub async fn write(
        &mut self,
        guard: &LockGuard,
        lock: &str,
        protocol: Protocol,
        key: &str,
        value: &str,
    ) -> anyhow::Result<Option<Refused>> {
        let token = guard.token();
        match self {
            Target::Storage(storage) => {
                // The seed protocol names no fence: there the key is its own fence.
                let fence = (protocol == Protocol::Rest).then_some(lock);
                match storage.write(key, value, token, fence).await {
                    Ok(()) => Ok(None),
                    Err(ClientError::StaleToken { current, .. }) => {
                        Ok(Some(Refused::Stale(current)))
                    }
                    Err(e) => Err(anyhow::Error::new(e).context("cannot write to the storage")),
                }
            }
            Target::Postgres { db, fenced } => {
                let upsert = format!(
                    "INSERT INTO {TABLE} (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                );
                if !*fenced {
                    db.execute(&upsert, &[&key, &value])
                        .await
                        .context("cannot write to PostgreSQL")?;
                    return Ok(None);
                }
                let tx = match PgFence::new().begin(db, lock, token).await {
                    Ok(tx) => tx,
                    Err(PgFenceError::Stale(stale)) => {
                        return Ok(Some(Refused::Stale(stale.current)));
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context("cannot write to PostgreSQL"));
                    }
                };
                tx.execute(&upsert, &[&key, &value])
                    .await
                    .context("cannot write to PostgreSQL")?;
                tx.commit().await.context("cannot commit to PostgreSQL")?;
                Ok(None)
            }
            Target::Etcd { client, fenced } => {
                let ops = [Op::put(key.to_owned(), value.to_owned())];
                if *fenced {
                    let fence = EtcdFence::new(client.clone());
                    return match fence.apply_held(&Holder::of(guard), &ops).await {
                        Ok(_) => Ok(None),
                        Err(EtcdFenceError::LockGone { .. }) => Ok(Some(Refused::LockGone)),
                        Err(e) => Err(anyhow::Error::new(e).context("cannot write to etcd")),
                    };
                }
                let put = pb::PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                };
                client.kv().put(put).await.map_err(|status| {
                    anyhow::anyhow!("cannot write to etcd: {}", status.message())
                })?;
                Ok(None)
            }
        }
    }
}

/// A PostgreSQL connection whose connection task runs on the current runtime.
pub async fn connect_postgres(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("cannot connect to PostgreSQL")?;
    tokio::spawn(connection);
    Ok(db)
}

/// The value under `key` in the demo's PostgreSQL table.
pub async fn postgres_value(url: &str, key: &str) -> anyhow::Result<Option<String>> {
    let db = connect_postgres(url).await?;
    let row = db
        .query_opt(
            &format!("SELECT value FROM {TABLE} WHERE key = $1"),
            &[&key],
        )
        .await
        .context("cannot read PostgreSQL")?;
    Ok(row.map(|row| row.get(0)))
}

/// The value under `key` in the lock service.
pub async fn etcd_value(client: &Client, key: &str) -> anyhow::Result<Option<String>> {
    let range = pb::RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    let answer = client
        .kv()
        .range(range)
        .await
        .map_err(|status| anyhow::anyhow!("cannot read etcd: {}", status.message()))?
        .into_inner();
    Ok(answer
        .kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}
