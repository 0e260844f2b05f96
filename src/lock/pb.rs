//! Generated etcd v3 protocol types and gRPC stubs (client and server), from `proto/`.
//!
//! Package paths mirror etcd's (`etcdserverpb`, `mvccpb`, `v3lockpb`) because the generated
//! code refers to sibling packages as `super::mvccpb`. Wrappers import from here with a `Pb`
//! prefix or through `pb::`, so generated names never leak into the public API by accident.

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
