//! `fencelock bench storage` as a user runs it: the baseline (and, with a durable store, the
//! synced baseline), then every scenario on the durable and the in-memory store, each row
//! with positive throughput, and the transaction-over-single-key ratio per store.

use std::process::Command;

use crate::support::proc::fencelock_bin;

#[test]
fn the_storage_benchmark_measures_every_scenario_next_to_the_baseline() {
    // 1. A short run with one connection: 8 runs of half a second.
    let stdout = bench_storage(&["--duration", "500ms", "--connections", "1"]);

    // 2. One row per server and scenario, read by the header's column names.
    let col = column_of(&stdout);
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
    let share = |text: &str, what: &str| {
        let number = text
            .strip_suffix('%')
            .unwrap_or_else(|| panic!("{what}: {text:?} is not a share"));
        positive(number, what);
    };
    // "of base" is the first of the two-word column names, so its index is also the row's,
    // and "of sync" follows it.
    let of_base = col("of");
    let of_sync = of_base + 1;
    let baseline = row("baseline", "fixed");
    assert_eq!(baseline[col("conns")], "1", "connections");
    positive(&baseline[col("requests/s")], "baseline requests/s");
    // The same server answering after a group sync, measured since a durable store is.
    let synced = row("synced", "fixed");
    assert_eq!(
        synced[col("conns")],
        "1",
        "connections of the synced baseline"
    );
    positive(&synced[col("requests/s")], "synced requests/s");
    share(
        &synced[of_base],
        "the synced baseline's share of the baseline",
    );
    for store in ["durable", "in-memory"] {
        for scenario in ["one-key", "distinct", "txn"] {
            let cols = row(store, scenario);
            assert_eq!(cols[col("conns")], "1", "connections of {store} {scenario}");
            positive(
                &cols[col("requests/s")],
                &format!("{store} {scenario} requests/s"),
            );
            positive(&cols[col("keys/s")], &format!("{store} {scenario} keys/s"));
            share(
                &cols[of_base],
                &format!("{store} {scenario}'s share of the baseline"),
            );
            // Only a durable store is set against the synced baseline.
            match store {
                "durable" => share(
                    &cols[of_sync],
                    &format!("{store} {scenario}'s share of the synced baseline"),
                ),
                _ => assert_eq!(cols[of_sync], "-", "{store} {scenario}"),
            }
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
    let stdout = bench_storage(&[
        "--duration",
        "300ms",
        "--connections",
        "2",
        "--stores",
        "in-memory",
        "--scenarios",
        "one-key",
        "--verify-tokens",
    ]);
    let col = column_of(&stdout);
    // Both rows, and the ratio between them (the loader fails a run on any answer but 2xx,
    // so a verified row means verified writes were accepted).
    for server in ["in-memory", "in-memory+verify"] {
        let cols: Vec<&str> = stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.len() > 4 && cols[0] == server && cols[1] == "one-key")
            .unwrap_or_else(|| panic!("no row for {server}"));
        let keys: f64 = cols[col("keys/s")].parse().unwrap();
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

#[test]
fn reads_of_a_filled_storage_and_large_values_are_measured_and_charted() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let svg = dir.path().join("keys.svg");
    let stdout = bench_storage(&[
        "--duration",
        "300ms",
        "--connections",
        "2",
        "--stores",
        "in-memory",
        "--scenarios",
        "read,distinct",
        "--stored-keys",
        "10,3k",
        "--value-size",
        "64KiB",
        "--svg",
        svg.to_str().expect("a UTF-8 path"),
    ]);
    let col = column_of(&stdout);
    // One row per scenario and stored-key count, each with its count and value size.
    for scenario in ["read", "distinct"] {
        for stored in ["10", "3k"] {
            let cols: Vec<&str> = stdout
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|cols| {
                    cols.len() > 4
                        && cols[0] == "in-memory"
                        && cols[1] == scenario
                        && cols[col("stored")] == stored
                })
                .unwrap_or_else(|| panic!("no row for {scenario} over {stored} keys:\n{stdout}"));
            // Reads write no value; the writes' values are the size asked for.
            let value = if scenario == "read" { "-" } else { "64KiB" };
            assert_eq!(cols[col("value")], value, "{scenario} {stored}");
            let keys: f64 = cols[col("keys/s")].parse().unwrap();
            assert!(keys > 0.0, "{scenario} over {stored} keys");
        }
    }
    let chart = std::fs::read_to_string(&svg).expect("the chart was written");
    assert!(
        chart.starts_with("<svg") || chart.starts_with("<?xml"),
        "{chart}"
    );
    assert!(chart.contains("read"), "the chart names the read curve");
}

#[test]
fn with_rounds_every_run_is_set_against_its_own_rounds_baseline_and_ratios_are_medians() {
    let stdout = bench_storage(&[
        "--duration",
        "300ms",
        "--connections",
        "2",
        "--stores",
        "in-memory",
        "--scenarios",
        "distinct,txn",
        "--rounds",
        "2",
    ]);
    // Table rows, not the ratio lines after the table (which also start with the server).
    let rows = |server: &str| {
        stdout
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(server) && !l.contains(':'))
            .count()
    };
    assert_eq!(rows("baseline"), 2, "a baseline per round:\n{stdout}");
    assert_eq!(
        rows("synced"),
        0,
        "no synced baseline without a durable store:\n{stdout}"
    );
    assert_eq!(rows("in-memory"), 4, "each run once per round:\n{stdout}");
    for prefix in [
        "txn/distinct keys/s, in-memory, 2 connection(s): ",
        "in-memory txn over the baseline, requests/s, 2 connection(s): ",
        "in-memory distinct over the baseline, requests/s, 2 connection(s): ",
    ] {
        let rest = stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{stdout}"));
        let (median, each) = rest
            .split_once(" median of 2 rounds (")
            .unwrap_or_else(|| panic!("{prefix}{rest}"));
        let median: f64 = median.parse().unwrap();
        let each: Vec<f64> = each
            .trim_end_matches(')')
            .split(", ")
            .map(|r| r.parse().unwrap())
            .collect();
        assert_eq!(each.len(), 2, "{rest}");
        assert!(each[0] > 0.0 && each[0] <= each[1], "{rest}");
        assert!((median - (each[0] + each[1]) / 2.0).abs() < 0.011, "{rest}");
    }
}

#[test]
fn a_read_without_stored_keys_is_refused_in_one_line() {
    let output = Command::new(fencelock_bin())
        .args(["bench", "storage", "--scenarios", "read"])
        .output()
        .expect("run fencelock bench storage");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    crate::support::proc::assert_one_line(&stderr, "stored");
}

/// `fencelock bench storage ARGS`'s output, after checking that it succeeded.
fn bench_storage(args: &[&str]) -> String {
    let output = Command::new(fencelock_bin())
        .args(["bench", "storage"])
        .args(args)
        .output()
        .expect("run fencelock bench storage");
    crate::support::proc::stdout_of_success(&output)
}

/// The index of a column in the table, by its name in the header line (the names before
/// the first two-word name, "of base", are one word each, so the index is also the row's).
fn column_of(stdout: &str) -> impl Fn(&str) -> usize + '_ {
    let header: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("server "))
        .unwrap_or_else(|| panic!("no header line in:\n{stdout}"))
        .split_whitespace()
        .collect();
    move |name| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name:?} in {header:?}"))
    }
}
