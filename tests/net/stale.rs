//! Namespaces left by a run whose process died are removed; those of live runs are not.

use std::process::Command;

use crate::support::net;
use fencelock::process::{NETNS_PREFIX, TestNet};

#[test]
fn namespaces_of_a_dead_process_are_removed_and_live_ones_kept() {
    let Some(live) = net::start(1) else {
        return;
    };

    println!("a namespace named for a process that has exited and been reaped");
    let mut child = Command::new("true").spawn().expect("run true");
    let dead = child.id();
    child.wait().expect("reap true");
    assert!(
        !std::path::Path::new(&format!("/proc/{dead}")).exists(),
        "pid {dead} is gone"
    );
    let stale = format!("{NETNS_PREFIX}{dead}-0-h0");
    let status = Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .expect("ip netns add");
    assert!(status.success(), "ip netns add {stale}");

    TestNet::cleanup_stale().expect("cleanup_stale");
    assert_eq!(
        net::namespaces_named(&stale),
        Vec::<String>::new(),
        "stale namespace removed"
    );
    assert_eq!(
        net::namespaces_named(&live.netns_prefix()).len(),
        2,
        "the live network's host and bridge stay"
    );
}
