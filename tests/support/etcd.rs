//! Real etcd for the tests: clusters from the library's `EtcdCluster`, a process-wide limit on
//! how many run at once, the skip rule, and `etcdctl`.
//!
//! - `FENCELOCK_ETCD_BIN` / `FENCELOCK_ETCDCTL_BIN` choose the binaries (default: `etcd` and
//!   `etcdctl` on PATH).
//! - Without etcd a test prints "skipped: etcd not found" and passes, unless
//!   `FENCELOCK_REQUIRE_ETCD=1`, which makes it fail.
//! - At most one 3-member cluster, or two 1-member ones, run at once across the tests of one
//!   binary: the tests run on parallel threads, the machine has 2 cores, and an overloaded
//!   etcd misses heartbeats and makes timing tests lie.

use std::ops::{Deref, DerefMut};
use std::process::{Command, Output};
use std::time::Duration;

use fencelock::process::{EtcdCluster, EtcdOptions};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Slots per test binary: a 1-member cluster takes one, a larger cluster takes all.
const SLOTS_TOTAL: u32 = 2;
static SLOTS: Semaphore = Semaphore::const_new(SLOTS_TOTAL as usize);

/// A cluster started for one test; killed (and its slots freed) when dropped.
pub struct TestEtcd {
    cluster: EtcdCluster,
    // Declared after `cluster` so the members are gone before another test takes the slots.
    _slots: SemaphorePermit<'static>,
}

impl Deref for TestEtcd {
    type Target = EtcdCluster;
    fn deref(&self) -> &EtcdCluster {
        &self.cluster
    }
}

impl DerefMut for TestEtcd {
    fn deref_mut(&mut self) -> &mut EtcdCluster {
        &mut self.cluster
    }
}

pub fn etcd_bin() -> String {
    std::env::var("FENCELOCK_ETCD_BIN").unwrap_or_else(|_| "etcd".into())
}

pub fn etcdctl_bin() -> String {
    std::env::var("FENCELOCK_ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".into())
}

fn runs(binary: &str) -> bool {
    Command::new(binary)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether etcd can run here; `false` after printing why the calling test is skipped, and a
/// panic instead when `FENCELOCK_REQUIRE_ETCD=1`.
pub fn available() -> bool {
    let binary = etcd_bin();
    if runs(&binary) {
        return true;
    }
    let required = std::env::var("FENCELOCK_REQUIRE_ETCD").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "FENCELOCK_REQUIRE_ETCD=1 but `{binary} --version` does not run"
    );
    eprintln!("skipped: etcd not found (`{binary}`); set FENCELOCK_ETCD_BIN or install etcd");
    false
}

/// Starts an etcd cluster of `members` for the calling test, or returns `None` after printing
/// why the test is skipped.
pub async fn start(members: u32) -> Option<TestEtcd> {
    start_with(members, EtcdOptions::default()).await
}

/// Like [`start`], with TLS or extra flags.
pub async fn start_with(members: u32, options: EtcdOptions) -> Option<TestEtcd> {
    if !available() {
        return None;
    }
    let binary = etcd_bin();
    let slots = SLOTS
        .acquire_many(members.min(SLOTS_TOTAL))
        .await
        .expect("the semaphore is never closed");
    let cluster = EtcdCluster::start_with(members as usize, &binary, options)
        .await
        .unwrap_or_else(|e| panic!("cannot start a {members}-member etcd from {binary}: {e}"));
    Some(TestEtcd {
        cluster,
        _slots: slots,
    })
}

/// Takes the slots of a `members`-member cluster that something else starts (the binary
/// under test), or returns `None` after printing why the calling test is skipped. The
/// cluster must be gone before the permit is dropped.
pub async fn reserve(members: u32) -> Option<SemaphorePermit<'static>> {
    if !available() {
        return None;
    }
    Some(
        SLOTS
            .acquire_many(members.min(SLOTS_TOTAL))
            .await
            .expect("the semaphore is never closed"),
    )
}

/// Runs `etcdctl` (API v3) against `endpoints`; panics with its output if it fails.
pub fn etcdctl(endpoints: &[String], args: &[&str]) -> Output {
    let output = Command::new(etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--command-timeout=5s")
        .args(args)
        .output()
        .expect("cannot run etcdctl");
    assert!(
        output.status.success(),
        "etcdctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Generous bound for anything that should happen "within the lease TTL": TTL + 1 s.
pub fn within_ttl(ttl: Duration) -> Duration {
    ttl + Duration::from_secs(1)
}
