//! Compiles the project's etcd protocol subset (`proto/`) into client and server stubs.
//!
//! `protox` parses the .proto files in pure Rust, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTOS: [&str; 3] = [
        "proto/mvccpb/kv.proto",
        "proto/etcdserverpb/rpc.proto",
        "proto/v3lockpb/v3lock.proto",
    ];
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Keys and values as reference-counted buffers: an event fanned out to many watchers,
        // or kept in the history, shares one copy of a large value.
        .bytes(".mvccpb.KeyValue")
        .compile_fds(descriptors)?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
