//! Real PostgreSQL for the tests: a private server per test from the library's
//! `PostgresServer`, a limit on how many run at once, and the skip rule.
//!
//! - `FENCELOCK_POSTGRES_BIN` names the directory of `initdb` and `postgres` (default:
//!   Debian's `/usr/lib/postgresql/<version>/bin`, else PATH).
//! - Without PostgreSQL a test prints "skipped: PostgreSQL not found" and passes, unless
//!   `FENCELOCK_REQUIRE_POSTGRES=1`, which makes it fail.
//! - At most two servers run at once across the tests of one binary (2 cores).

use std::ops::{Deref, DerefMut};

use fencelock::process::{PostgresServer, postgres_bin_dir};
use tokio::sync::{Semaphore, SemaphorePermit};

static SLOTS: Semaphore = Semaphore::const_new(2);

/// A server started for one test; killed and removed (and its slot freed) when dropped.
pub struct TestPostgres {
    server: PostgresServer,
    // Declared after `server` so it is gone before another test takes the slot.
    _slot: SemaphorePermit<'static>,
}

impl Deref for TestPostgres {
    type Target = PostgresServer;
    fn deref(&self) -> &PostgresServer {
        &self.server
    }
}

impl DerefMut for TestPostgres {
    fn deref_mut(&mut self) -> &mut PostgresServer {
        &mut self.server
    }
}

/// Whether PostgreSQL can run here; `false` after printing why the calling test is skipped,
/// and a panic instead when `FENCELOCK_REQUIRE_POSTGRES=1`.
pub fn available() -> bool {
    if postgres_bin_dir().is_some() {
        return true;
    }
    let required = std::env::var("FENCELOCK_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "FENCELOCK_REQUIRE_POSTGRES=1 but initdb and postgres are not installed"
    );
    eprintln!("skipped: PostgreSQL not found; install postgresql or set FENCELOCK_POSTGRES_BIN");
    false
}

/// Starts a private server for the calling test, or returns `None` after printing why the
/// test is skipped.
pub async fn start() -> Option<TestPostgres> {
    if !available() {
        return None;
    }
    let slot = SLOTS
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let server = PostgresServer::start()
        .await
        .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"));
    Some(TestPostgres {
        server,
        _slot: slot,
    })
}

/// A connected client whose connection task runs on the test's runtime.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// Runs `psql` against `url` with `args`; its output, whatever its status.
pub fn psql(url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-A", "-t"])
        .args(args)
        .output()
        .expect("cannot run psql")
}
