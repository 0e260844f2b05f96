//! `fencelock bench storage` as a user runs it: the baseline, then every scenario on the
//! durable and the in-memory store, each row with positive throughput, and the
//! transaction-over-single-key ratio per store.

use std::process::Command;

use crate::support::proc::fencelock_bin;

#[test]
fn the_storage_benchmark_measures_every_scenario_next_to_the_baseline() {
    // 1. A short run with one connection: 7 runs of half a second.
    let output = Command::new(fencelock_bin())
        .args([
            "bench",
            "storage",
            "--duration",
            "500ms",
            "--connections",
            "1",
        ])
        .output()
        .expect("run fencelock bench storage");
    let stdout = crate::support::proc::stdout_of_success(&output);

    // 2. One row per server and scenario: `server scenario conns requests/s keys/s ...`.
    let row = |server: &str, scenario: &str| -> Vec<String> {
        let rows: Vec<Vec<String>> = stdout
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .filter(|cols| cols.len() > 4 && cols[0] == server && cols[1] == scenario)
            .collect();
        assert_eq!(rows.len(), 1, "one row for {server} {scenario}");
        rows.into_iter().next().unwrap()
    };
    let positive = |text: &str, what: &str| {
        let value: f64 = text
            .parse()
            .unwrap_or_else(|_| panic!("{what}: {text:?} is not a number"));
        assert!(value > 0.0, "{what}: {value}");
    };
    let baseline = row("baseline", "fixed");
    assert_eq!(baseline[2], "1", "connections");
    positive(&baseline[3], "baseline requests/s");
    for store in ["durable", "in-memory"] {
        for scenario in ["one-key", "distinct", "txn"] {
            let cols = row(store, scenario);
            assert_eq!(cols[2], "1", "connections of {store} {scenario}");
            positive(&cols[3], &format!("{store} {scenario} requests/s"));
            positive(&cols[4], &format!("{store} {scenario} keys/s"));
            assert!(
                cols.iter().any(|c| c.ends_with('%')),
                "{store} {scenario} has its share of the baseline"
            );
        }
    }

    // 3. The transaction's keys per second over single-key writes', per store.
    for store in ["durable", "in-memory"] {
        let label = format!("txn/distinct keys/s, {store}, 1 connection(s): ");
        let ratio = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&label))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no ratio line for {store}"));
        positive(ratio, &format!("{store} ratio"));
    }
}

#[test]
fn with_verify_tokens_each_run_is_measured_plain_and_verified() {
    let output = Command::new(fencelock_bin())
        .args([
            "bench",
            "storage",
            "--duration",
            "300ms",
            "--connections",
            "2",
            "--stores",
            "in-memory",
            "--scenarios",
            "one-key",
            "--verify-tokens",
        ])
        .output()
        .expect("run fencelock bench storage");
    let stdout = crate::support::proc::stdout_of_success(&output);
    // Both rows, and the ratio between them (the loader fails a run on any answer but 2xx,
    // so a verified row means verified writes were accepted).
    for server in ["in-memory", "in-memory+verify"] {
        let cols: Vec<&str> = stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.len() > 4 && cols[0] == server && cols[1] == "one-key")
            .unwrap_or_else(|| panic!("no row for {server}"));
        let keys: f64 = cols[4].parse().unwrap();
        assert!(keys > 0.0, "{server} wrote keys");
    }
    let ratio = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("verified/plain requests/s, in-memory one-key, 2 connection(s): ")
        })
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the verified/plain ratio line");
    let ratio: f64 = ratio.parse().unwrap();
    assert!(ratio > 0.0);
}
