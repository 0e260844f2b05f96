//! `fence::postgres` against a real PostgreSQL: stale transactions refused with nothing
//! applied, equal and higher tokens accepted, concurrent holders serialised by the fence row,
//! no acknowledged transaction lost to a crash, the SQL function from psql alone, and the SQL
//! rule agreeing with the storage's.

use std::time::Duration;

use fencelock::FencingToken;
use fencelock::fence::StaleToken;
use fencelock::fence::postgres::{PgFence, PgFenceError, STALE_TOKEN_SQLSTATE};
use fencelock::storage::fence::{Access, Policy, check};
use rand::{Rng as _, SeedableRng as _};

use crate::support::postgres::{self, connect, psql};

fn t(n: u64) -> FencingToken {
    FencingToken::new(n).unwrap()
}

async fn installed(url: &str) -> (tokio_postgres::Client, PgFence) {
    let mut client = connect(url).await;
    let fence = PgFence::new();
    fence.install(&mut client).await.expect("install the fence");
    client
        .batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY, by_token bigint NOT NULL)")
        .await
        .unwrap();
    (client, fence)
}

async fn insert_order(
    fence: &PgFence,
    client: &mut tokio_postgres::Client,
    id: i64,
    token: u64,
) -> Result<(), PgFenceError> {
    let tx = fence.begin(client, "orders", t(token)).await?;
    tx.execute(
        "INSERT INTO orders (id, by_token) VALUES ($1, $2)",
        &[&id, &(token as i64)],
    )
    .await?;
    tx.commit().await
}

async fn order_ids(client: &tokio_postgres::Client) -> Vec<i64> {
    client
        .query("SELECT id FROM orders ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn a_stale_transaction_is_refused_and_nothing_of_it_is_applied() {
    let Some(pg) = postgres::start().await else {
        return;
    };
    let (mut client, fence) = installed(&pg.url()).await;
    insert_order(&fence, &mut client, 1, 7).await.unwrap();

    let refused = insert_order(&fence, &mut client, 2, 6).await;
    match refused {
        Err(PgFenceError::Stale(stale)) => assert_eq!(
            stale,
            StaleToken {
                fence: "orders".into(),
                presented: t(6),
                current: t(7)
            }
        ),
        other => panic!("token 6 after 7 was not refused as stale: {other:?}"),
    }
    assert_eq!(order_ids(&client).await, [1]);
    assert_eq!(fence.current(&client, "orders").await.unwrap(), Some(t(7)));
    // Other lock names have fences of their own.
    assert_eq!(fence.current(&client, "invoices").await.unwrap(), None);
}

#[tokio::test]
async fn equal_and_higher_tokens_are_accepted_and_a_higher_one_raises_the_fence() {
    let Some(pg) = postgres::start().await else {
        return;
    };
    let (mut client, fence) = installed(&pg.url()).await;
    insert_order(&fence, &mut client, 1, 5).await.unwrap();
    insert_order(&fence, &mut client, 2, 5).await.unwrap();
    assert_eq!(fence.current(&client, "orders").await.unwrap(), Some(t(5)));
    insert_order(&fence, &mut client, 3, 9).await.unwrap();
    assert_eq!(fence.current(&client, "orders").await.unwrap(), Some(t(9)));
    assert!(matches!(
        insert_order(&fence, &mut client, 4, 5).await,
        Err(PgFenceError::Stale(_))
    ));
    assert_eq!(order_ids(&client).await, [1, 2, 3]);

    // A transaction rolled back by its caller leaves the fence where it was.
    let tx = fence.begin(&mut client, "orders", t(12)).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(fence.current(&client, "orders").await.unwrap(), Some(t(9)));
}

/// Waits until some backend waits on a lock (the fence row): the second holder's check is
/// queued behind the first holder's transaction.
async fn wait_until_a_backend_waits_on_a_lock(observer: &tokio_postgres::Client) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no backend came to wait on the fence row"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn concurrent_holders_are_serialised_by_the_fence_row() {
    let Some(pg) = postgres::start().await else {
        return;
    };
    let (mut newer, fence) = installed(&pg.url()).await;
    let observer = connect(&pg.url()).await;

    // The newer holder (token 20) is inside its transaction; the older one (token 10), which
    // woke from a pause, begins its own: it must wait for the row, then be refused.
    let tx = fence.begin(&mut newer, "orders", t(20)).await.unwrap();
    tx.execute("INSERT INTO orders (id, by_token) VALUES (20, 20)", &[])
        .await
        .unwrap();
    let older = {
        let url = pg.url();
        let fence = fence.clone();
        tokio::spawn(async move {
            let mut client = connect(&url).await;
            insert_order(&fence, &mut client, 10, 10).await
        })
    };
    wait_until_a_backend_waits_on_a_lock(&observer).await;
    assert!(
        !older.is_finished(),
        "the older holder went past the fence row"
    );
    tx.commit().await.unwrap();
    assert!(matches!(
        older.await.unwrap(),
        Err(PgFenceError::Stale(StaleToken { current, .. })) if current == t(20)
    ));

    // The other order: an older holder's open transaction holds the row; a newer holder
    // waits for it, then goes through and raises the fence.
    let mut client = connect(&pg.url()).await;
    let fence2 = fence.clone();
    let tx = fence2.begin(&mut client, "orders", t(20)).await.unwrap();
    tx.execute("INSERT INTO orders (id, by_token) VALUES (21, 20)", &[])
        .await
        .unwrap();
    let newest = {
        let url = pg.url();
        let fence = fence.clone();
        tokio::spawn(async move {
            let mut client = connect(&url).await;
            insert_order(&fence, &mut client, 30, 30).await
        })
    };
    wait_until_a_backend_waits_on_a_lock(&observer).await;
    tx.commit().await.unwrap();
    newest
        .await
        .unwrap()
        .expect("the newer holder goes through");
    assert_eq!(order_ids(&observer).await, [20, 21, 30]);
    assert_eq!(
        fence.current(&observer, "orders").await.unwrap(),
        Some(t(30))
    );
}

#[tokio::test]
async fn a_crash_in_the_middle_loses_no_acknowledged_transaction() {
    let Some(mut pg) = postgres::start().await else {
        return;
    };
    let (mut client, fence) = installed(&pg.url()).await;
    let mut acknowledged = Vec::new();
    for id in 1..=40_i64 {
        insert_order(&fence, &mut client, id, 100 + id as u64)
            .await
            .unwrap();
        acknowledged.push(id);
    }
    // A transaction in flight when the server dies: its outcome is unknown to the caller,
    // but the acknowledged ones must all be there after crash recovery.
    let tx = fence.begin(&mut client, "orders", t(500)).await.unwrap();
    tx.execute("INSERT INTO orders (id, by_token) VALUES (500, 500)", &[])
        .await
        .unwrap();
    let backend: i32 = tx
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    pg.crash();
    // The backend leads its own session, outside the postmaster's process group; a crash
    // that left it running would let it commit what it was sent next.
    let state = std::fs::read_to_string(format!("/proc/{backend}/stat")).unwrap_or_default();
    assert!(
        state.is_empty()
            || state
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
        "the backend outlived the crash: {state}"
    );
    assert!(
        tx.commit().await.is_err(),
        "a commit to a dead server succeeded"
    );
    drop(client);
    pg.restart().await.expect("restart on the same data");

    let mut client = connect(&pg.url()).await;
    assert_eq!(order_ids(&client).await, acknowledged);
    assert_eq!(
        fence.current(&client, "orders").await.unwrap(),
        Some(t(140))
    );
    // The fence survived: a stale holder is refused after the restart too.
    assert!(matches!(
        insert_order(&fence, &mut client, 41, 139).await,
        Err(PgFenceError::Stale(_))
    ));
    insert_order(&fence, &mut client, 41, 141).await.unwrap();
}

#[tokio::test]
async fn psql_alone_enforces_the_fence_with_one_select() {
    let Some(pg) = postgres::start().await else {
        return;
    };
    let url = pg.url();
    let (_client, _fence) = installed(&url).await;
    let txn = |token: u64, id: u64| {
        format!(
            "BEGIN; SELECT fencelock.fence('orders', {token}); \
             INSERT INTO orders (id, by_token) VALUES ({id}, {token}); COMMIT;"
        )
    };
    let ok = psql(&url, &["-c", &txn(8, 1)]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let ok = psql(&url, &["-c", &txn(8, 2)]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let stale = psql(&url, &["-v", "VERBOSITY=verbose", "-c", &txn(7, 3)]);
    assert!(!stale.status.success(), "a stale token went through psql");
    let stderr = String::from_utf8_lossy(&stale.stderr);
    assert!(
        stderr.contains(STALE_TOKEN_SQLSTATE)
            && stderr.contains("stale fencing token for fence \"orders\": presented 7, current 8"),
        "{stderr}"
    );
    let rows = psql(
        &url,
        &[
            "-c",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM orders",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&rows.stdout).trim(), "1,2");

    // A token that is no token is refused by the function, not taken as "no fence".
    let zero = psql(&url, &["-c", "SELECT fencelock.fence('orders', 0)"]);
    assert!(!zero.status.success());
    assert!(String::from_utf8_lossy(&zero.stderr).contains("between 1 and"));
}

#[tokio::test]
async fn the_sql_rule_agrees_with_the_storage_rule() {
    let Some(pg) = postgres::start().await else {
        return;
    };
    let mut client = connect(&pg.url()).await;
    let fence = PgFence::in_schema("fence_rule").unwrap();
    fence.install(&mut client).await.unwrap();
    // Installing again (a second program starting up) changes nothing.
    fence.install(&mut client).await.unwrap();

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let names = ["a", "b", "c"];
    let mut model: std::collections::HashMap<&str, Option<FencingToken>> =
        names.iter().map(|n| (*n, None)).collect();
    for step in 0..300 {
        let name = names[rng.random_range(0..names.len())];
        let token = t(rng.random_range(1..40));
        let expected = check(
            Policy::Strict,
            Access::Write,
            name,
            Some(token),
            model[name],
        );
        let got = match fence.begin(&mut client, name, token).await {
            Ok(tx) => {
                tx.commit().await.unwrap();
                Ok(())
            }
            Err(PgFenceError::Stale(stale)) => Err(stale.current),
            Err(e) => panic!("step {step}: {e}"),
        };
        match (&expected, &got) {
            (Ok(accepted), Ok(())) => {
                if let Some(raised) = accepted.raise_to {
                    model.insert(name, Some(raised));
                }
            }
            (Err(_), Err(current)) => assert_eq!(Some(*current), model[name], "step {step}"),
            _ => {
                panic!("step {step}: {name} token {token}: storage rule {expected:?}, SQL {got:?}")
            }
        }
        assert_eq!(fence.current(&client, name).await.unwrap(), model[name]);
    }
}
