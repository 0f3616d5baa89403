//! Compiles `proto/**/*.proto` with protox (a protobuf compiler in Rust, so building needs no
//! system `protoc`) and generates the prost messages and tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const FILES: [&str; 4] = [
        "proto/skein/cluster/v1/raft.proto",
        "proto/skein/cluster/v1/registry.proto",
        "proto/skein/cluster/v1/cluster.proto",
        "proto/skein/cluster/v1/dataplane.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(FILES, ["proto"])?;
    tonic_prost_build::configure()
        // A forwarded publish's payload moves between the broker and the wire without a copy.
        .bytes(".skein.cluster.v1.ForwardedPublish.payload")
        .bytes(".skein.cluster.v1.ForwardedPublish.correlation_data")
        // A received batch's publishes are slices of the received buffer (no copy).
        .bytes(".skein.cluster.v1.PublishBatchFrames.publishes")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
