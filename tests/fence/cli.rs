//! `fencelock fence install` through the binary: it installs the fence into a real database
//! that psql then uses, and it refuses bad input with one line.

use std::process::Command;

use crate::support::postgres::{self, psql};
use crate::support::proc::fencelock_bin;

fn fencelock(args: &[&str]) -> std::process::Output {
    Command::new(fencelock_bin())
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run fencelock")
}

#[tokio::test]
async fn install_through_the_binary_then_fence_from_psql() {
    let Some(pg) = postgres::start().await else {
        return;
    };
    let url = pg.url();
    for _ in 0..2 {
        let out = fencelock(&[
            "fence",
            "install",
            "--database-url",
            &url,
            "--schema",
            "app_fence",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("app_fence.fence(name, token)"));
    }
    let out = psql(&url, &["-c", "SELECT app_fence.fence('/orders', 3)"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    let out = psql(&url, &["-c", "SELECT app_fence.try_fence('/orders', 2)"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "3",
        "try_fence answers the fence"
    );
    let out = psql(&url, &["-c", "SELECT app_fence.fence('/orders', 2)"]);
    assert!(!out.status.success());

    // `fence sql` prints what install ran.
    let out = fencelock(&["fence", "sql", "--schema", "app_fence"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CREATE SCHEMA IF NOT EXISTS app_fence;")
    );
}

#[test]
fn bad_input_is_one_line_and_a_non_zero_exit() {
    let bad_schema = fencelock(&["fence", "sql", "--schema", "Robert'); DROP TABLE x"]);
    assert_eq!(bad_schema.status.code(), Some(2));
    let refused = fencelock(&[
        "fence",
        "install",
        "--database-url",
        &format!(
            "postgresql://app:secret@127.0.0.1:{}/db",
            crate::support::proc::free_port()
        ),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    for out in [&bad_schema, &refused] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            !stderr.contains("secret") && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
}
