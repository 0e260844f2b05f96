//! Real network faults between real processes: test networks of namespaces on a bridge
//! (`fencelock::process::TestNet`), links cut and healed, an etcd cluster across hosts losing
//! its leader, and a lock holder cut off from the lock service.
//!
//! Every case needs root, `ip` and `nft`; without them it prints why it is skipped, unless
//! `FENCELOCK_REQUIRE_NETNS=1`. One test binary per topic, each case in a file of its own.

#[path = "../support/mod.rs"]
mod support;

mod etcd_leader;
mod holder;
mod panic;
mod reach;
mod stale;
