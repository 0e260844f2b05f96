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
        ])
        .env("FENCELOCK_ETCD_BIN", etcd::etcd_bin())
        .output()
        .expect("run fencelock bench lock");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for service in ["lockd", "etcd"] {
        let label = format!("{service} ");
        let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with(&label)).collect();
        assert_eq!(rows.len(), 2, "one row per session count for {service}");
        for row in rows {
            // The cycle count follows the watch-start label.
            let cycles: u64 = row
                .split("needed)")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("no cycle count in {row:?}"));
            assert!(cycles > 0, "{row}");
        }
    }
    let ratios = stdout
        .lines()
        .filter(|l| l.starts_with("lockd/etcd median"))
        .count();
    assert_eq!(ratios, 2, "a ratio per session count");
}
