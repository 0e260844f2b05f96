//! The fence inside PostgreSQL: a fence row per lock name, checked and raised inside the
//! caller's own transaction.
//!
//! [`PgFence::install`] creates, in a schema of its own (`fencelock` unless told otherwise):
//! - the table `fences (name text primary key, token bigint, raised_at timestamptz)`;
//! - `try_fence(name text, token bigint) returns bigint`: the fence rule. It inserts the
//!   fence row or raises its token when the presented one is higher (`INSERT ... ON CONFLICT
//!   DO UPDATE ... WHERE`), and returns the fence's token afterwards: equal to the presented
//!   token when accepted, higher when the token is stale;
//! - `fence(name text, token bigint) returns bigint`: the same, raising SQLSTATE
//!   [`STALE_TOKEN_SQLSTATE`] on a stale token, so that a program in any language fences its
//!   transaction with one `SELECT fencelock.fence('orders', 42)` as its first statement.
//!
//! Why it holds at READ COMMITTED: `INSERT ... ON CONFLICT DO UPDATE` locks the fence row
//! whether or not its `WHERE` lets the update happen, and re-reads the newest committed row
//! after waiting for a concurrent holder of that lock. So every fenced transaction on a lock
//! name holds the row until it ends: two holders' transactions are serialised by it, and the
//! check sees every earlier commit. A stale token makes the transaction roll back before any
//! of the caller's statements ran; an accepted one commits the fence together with them.
//!
//! [`PgFence::begin`] is the Rust face: it opens the transaction, runs `try_fence`, and hands
//! back a [`FencedTransaction`] for the caller's statements, or [`PgFenceError::Stale`] with
//! nothing applied.

use std::ops::Deref;

use tokio_postgres::{Client, Transaction};

use super::StaleToken;
use crate::FencingToken;

/// The SQLSTATE `fence()` raises for a stale token: class `FL` is PostgreSQL's to leave
/// unused, so no server error shares it.
pub const STALE_TOKEN_SQLSTATE: &str = "FL001";

/// The schema the fence lives in unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "fencelock";

/// Why a fenced transaction did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PgFenceError {
    /// The token is behind the fence; the transaction was rolled back with nothing applied.
    #[error(transparent)]
    Stale(StaleToken),
    /// PostgreSQL failed (connection, permission, the fence not installed). A failure of
    /// `commit` leaves the outcome unknown, as for any PostgreSQL commit.
    #[error("postgres: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The fence answered a token outside `1..=i64::MAX`; only a changed fence table can.
    #[error("the fence table holds {0}, which is not a fencing token")]
    Corrupt(i64),
}

/// The error and, when the server sent one, its message and detail.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        },
        None => error.to_string(),
    }
}

/// A schema name that is not a plain lower-case SQL identifier.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a schema name for the fence: use lower-case letters, digits and _")]
pub struct InvalidSchema(pub String);

/// The fence's place in a database: the schema holding its table and functions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgFence {
    schema: String,
}

impl Default for PgFence {
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
        }
    }
}

impl PgFence {
    /// The fence in schema `fencelock`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The fence in `schema`: 1 to 63 lower-case ASCII letters, digits and `_`, not starting
    /// with a digit (a name that needs no quoting, so it reads the same in every program).
    pub fn in_schema(schema: &str) -> Result<Self, InvalidSchema> {
        let valid = (1..=63).contains(&schema.len())
            && !schema.starts_with(|c: char| c.is_ascii_digit())
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(InvalidSchema(schema.to_owned()));
        }
        Ok(Self {
            schema: schema.to_owned(),
        })
    }

    /// The schema's name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The SQL that creates the schema, the table and the functions; idempotent.
    pub fn install_sql(&self) -> String {
        let s = &self.schema;
        format!(
            r#"
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.fences (
    name      text        PRIMARY KEY,
    token     bigint      NOT NULL CHECK (token > 0),
    raised_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE {s}.fences IS
    'fencelock: per lock name, the highest fencing token a transaction was accepted under';

CREATE OR REPLACE FUNCTION {s}.try_fence(lock_name text, token bigint) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    current bigint;
BEGIN
    IF lock_name IS NULL OR token IS NULL OR token < 1 THEN
        RAISE EXCEPTION 'a fencing token must be between 1 and 9223372036854775807, got %',
            coalesce(token::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Locks the fence row until the transaction ends, also when the WHERE is false.
    INSERT INTO {s}.fences AS f (name, token) VALUES (lock_name, token)
        ON CONFLICT (name) DO UPDATE SET token = excluded.token, raised_at = now()
        WHERE f.token < excluded.token
        RETURNING f.token INTO current;
    IF current IS NULL THEN
        -- Equal or stale: the row is locked by the INSERT above, this reads its newest token.
        SELECT f.token INTO current FROM {s}.fences AS f WHERE f.name = lock_name;
    END IF;
    RETURN current;
END
$fn$;
COMMENT ON FUNCTION {s}.try_fence(text, bigint) IS
    'fencelock: the fence rule; returns the fence''s token, higher than the argument when stale';

CREATE OR REPLACE FUNCTION {s}.fence(lock_name text, token bigint) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    current bigint := {s}.try_fence(lock_name, token);
BEGIN
    IF current > token THEN
        RAISE EXCEPTION 'stale fencing token for fence "%": presented %, current %',
            lock_name, token, current
            USING ERRCODE = '{STALE_TOKEN_SQLSTATE}', DETAIL = format('current=%s', current);
    END IF;
    RETURN current;
END
$fn$;
COMMENT ON FUNCTION {s}.fence(text, bigint) IS
    'fencelock: the fence rule; raises SQLSTATE {STALE_TOKEN_SQLSTATE} on a stale token';
"#
        )
    }

    /// Creates the schema, the fence table and the functions if they are missing (replacing
    /// the functions by this version's). Safe to run concurrently and repeatedly: it takes a
    /// transaction-scoped advisory lock first.
    pub async fn install(&self, client: &mut Client) -> Result<(), PgFenceError> {
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('fencelock.install:' || $1::text))",
            &[&self.schema],
        )
        .await?;
        tx.batch_execute(&self.install_sql()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Opens a transaction on `client` fenced by lock name `fence` under `token`: the fence
    /// row is checked and raised first, and the caller's statements follow on the returned
    /// transaction. A stale token rolls it back at once and answers [`PgFenceError::Stale`].
    /// The fence row stays locked until the transaction ends, so keep it short.
    pub async fn begin<'a>(
        &self,
        client: &'a mut Client,
        fence: &str,
        token: FencingToken,
    ) -> Result<FencedTransaction<'a>, PgFenceError> {
        let tx = client.transaction().await?;
        let current = self.try_fence(&tx, fence, token).await?;
        if current > token {
            tx.rollback().await?;
            return Err(PgFenceError::Stale(StaleToken {
                fence: fence.to_owned(),
                presented: token,
                current,
            }));
        }
        Ok(FencedTransaction { tx, token })
    }

    /// Runs the rule in `tx`, a transaction of the caller's: the fence's token afterwards,
    /// higher than `token` when it is stale (the caller must then roll back).
    pub async fn try_fence(
        &self,
        tx: &Transaction<'_>,
        fence: &str,
        token: FencingToken,
    ) -> Result<FencingToken, PgFenceError> {
        let sql = format!("SELECT {}.try_fence($1, $2)", self.schema);
        let row = tx.query_one(&sql, &[&fence, &as_bigint(token)]).await?;
        from_bigint(row.get(0))
    }

    /// The fence's token as last committed, `None` when no transaction was accepted under it.
    pub async fn current(
        &self,
        client: &Client,
        fence: &str,
    ) -> Result<Option<FencingToken>, PgFenceError> {
        let sql = format!("SELECT token FROM {}.fences WHERE name = $1", self.schema);
        match client.query_opt(&sql, &[&fence]).await? {
            Some(row) => from_bigint(row.get(0)).map(Some),
            None => Ok(None),
        }
    }
}

fn as_bigint(token: FencingToken) -> i64 {
    // Tokens never exceed i64::MAX (FencingToken's invariant).
    i64::try_from(token.get()).unwrap_or(i64::MAX)
}

fn from_bigint(value: i64) -> Result<FencingToken, PgFenceError> {
    u64::try_from(value)
        .ok()
        .and_then(FencingToken::new)
        .ok_or(PgFenceError::Corrupt(value))
}

/// A transaction whose fence check passed: the caller's statements run on it (it derefs to
/// tokio-postgres's [`Transaction`]) and [`commit`](FencedTransaction::commit) makes them
/// durable together with the fence. Dropped without a commit, it rolls back.
pub struct FencedTransaction<'a> {
    tx: Transaction<'a>,
    token: FencingToken,
}

impl<'a> FencedTransaction<'a> {
    /// The token the transaction was accepted under.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// Commits the caller's statements and the fence together.
    pub async fn commit(self) -> Result<(), PgFenceError> {
        Ok(self.tx.commit().await?)
    }

    /// Rolls back everything, the fence's raise included.
    pub async fn rollback(self) -> Result<(), PgFenceError> {
        Ok(self.tx.rollback().await?)
    }
}

impl<'a> Deref for FencedTransaction<'a> {
    type Target = Transaction<'a>;

    fn deref(&self) -> &Transaction<'a> {
        &self.tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_need_no_quoting() {
        assert!(PgFence::in_schema("fencelock").is_ok());
        assert!(PgFence::in_schema("app_fence2").is_ok());
        for bad in [
            "",
            "Fence",
            "2fence",
            "a-b",
            "a;drop",
            "x".repeat(64).as_str(),
        ] {
            assert_eq!(
                PgFence::in_schema(bad),
                Err(InvalidSchema(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_install_script_names_only_its_schema() {
        let sql = PgFence::in_schema("app_fence").unwrap().install_sql();
        assert!(sql.contains("CREATE SCHEMA IF NOT EXISTS app_fence;"));
        assert!(sql.contains("app_fence.try_fence(lock_name, token)"));
        assert!(!sql.contains("fencelock."));
    }
}
