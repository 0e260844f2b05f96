//! Test networks for the tests: the library's `TestNet`, and the skip rule.
//!
//! Without root, `ip` or `nft` a test prints why it is skipped and passes, unless
//! `FENCELOCK_REQUIRE_NETNS=1` (set by `.ci/run`), which makes it fail.

use fencelock::process::TestNet;

/// Whether test networks can be made here; `false` after printing why the calling test is
/// skipped, and a panic instead when `FENCELOCK_REQUIRE_NETNS=1`.
pub fn available() -> bool {
    let Err(why) = TestNet::available() else {
        return true;
    };
    let required = std::env::var("FENCELOCK_REQUIRE_NETNS").is_ok_and(|v| v == "1");
    assert!(!required, "FENCELOCK_REQUIRE_NETNS=1 but {why}");
    eprintln!("skipped: {why}");
    false
}

/// A network of `hosts` hosts for the calling test, or `None` after printing why the test is
/// skipped.
pub fn start(hosts: usize) -> Option<TestNet> {
    if !available() {
        return None;
    }
    Some(TestNet::new(hosts).unwrap_or_else(|e| panic!("cannot make a test network: {e}")))
}

/// Names in `ip netns list` that start with `prefix`.
pub fn namespaces_named(prefix: &str) -> Vec<String> {
    let output = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("cannot run ip netns list");
    assert!(output.status.success(), "ip netns list failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}
