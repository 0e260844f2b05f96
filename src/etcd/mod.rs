//! The etcd v3 protocol subset that the lock client and lockd share: the generated message
//! types and gRPC stubs (client and server), compiled from `proto/` at build time, and the
//! key-range helpers both sides need.
//!
//! This module is the only thing `lock` and `lockd` have in common; neither imports the
//! other. Package paths mirror etcd's (`etcdserverpb`, `mvccpb`, `v3lockpb`) because the
//! generated code refers to sibling packages as `super::mvccpb`. Wrappers import from here
//! with a `Pb` prefix or through a module path, so generated names never leak into the
//! public API of the client by accident.

mod range;

pub use range::prefix_end;

/// etcd's `mvccpb` package: stored key-values and watch events.
#[allow(clippy::all, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's `etcdserverpb` package: the KV, Watch, Lease, Cluster and Maintenance services.
#[allow(clippy::all, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's `v3lockpb` package: the server-side Lock and Unlock RPCs.
#[allow(clippy::all, missing_docs)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
