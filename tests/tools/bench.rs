//! `fencelock bench lock` as a user runs it: lockd and a loopback etcd (`crate::support::etcd`'s
//! binary) measured in one run, each row with cycles, and the lockd/etcd median ratio.

use std::process::Command;

use crate::support::etcd;
use crate::support::proc::fencelock_bin;

#[test]
fn the_lock_benchmark_measures_lockd_next_to_etcd_and_compares_them() {
    if !etcd::available() {
        return;
    }
    let output = Command::new(fencelock_bin())
        .args([
            "bench",
            "lock",
            "--services",
            "lockd,etcd",
            "--members",
            "1",
        ])
        .args([
            "--sessions",
            "1,2",
            "--duration",
            "0.3",
            "--watch-start",
            "now",
            "--idle-watchers",
            "0,50",
        ])
        .env("FENCELOCK_ETCD_BIN", etcd::etcd_bin())
        .output()
        .expect("run fencelock bench lock");
    let stdout = crate::support::proc::stdout_of_success(&output);
    for service in ["lockd", "etcd"] {
        let label = format!("{service} ");
        let rows: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with(&label) && !l.contains("cycles/s,"))
            .collect();
        assert_eq!(
            rows.len(),
            4,
            "one row per session count and idle watcher count for {service}"
        );
        for row in rows {
            // The idle watchers and the cycle count follow the watch-start label.
            let mut columns = row
                .split("needed)")
                .nth(1)
                .unwrap_or_else(|| panic!("no watch-start label in {row:?}"))
                .split_whitespace();
            let idle = columns.next().and_then(|c| c.parse::<u64>().ok());
            assert!(matches!(idle, Some(0 | 50)), "{row}");
            let cycles: u64 = columns
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("no cycle count in {row:?}"));
            assert!(cycles > 0, "{row}");
        }
        let idle_ratios = stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{service} cycles/s, 50 over 0 idle watchers")))
            .count();
        assert_eq!(idle_ratios, 2, "an idle-watcher ratio per session count");
        let session_ratios = stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{service} cycles/s, 2 over 1 sessions")))
            .count();
        assert_eq!(session_ratios, 2, "a session ratio per idle watcher count");
    }
    let ratios = stdout
        .lines()
        .filter(|l| l.starts_with("lockd/etcd median"))
        .count();
    assert_eq!(ratios, 4, "a ratio per session and idle watcher count");
}

#[test]
fn the_memory_benchmark_prints_a_row_per_count_with_bytes_per_held_lock() {
    let output = std::process::Command::new(crate::support::proc::fencelock_bin())
        .args(["bench", "memory", "--sessions", "300,600"])
        .output()
        .expect("run fencelock bench memory");
    let stdout = crate::support::proc::stdout_of_success(&output);
    for sessions in ["300", "600"] {
        let cols: Vec<&str> = stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&sessions))
            .unwrap_or_else(|| panic!("no row for {sessions} sessions"));
        // sessions, before, MiB, after, MiB, bytes/lock, fill
        let before: f64 = cols[1].parse().unwrap();
        let after: f64 = cols[3].parse().unwrap();
        assert!(before > 0.0 && after >= before, "{cols:?}");
    }
}
