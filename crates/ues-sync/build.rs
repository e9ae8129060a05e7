//! Compiles `proto/*.proto` (the reconciliation messages) with prost, using protox, a protobuf
//! compiler in Rust, so building needs no `protoc` on the machine.

fn main() {
    // Read at run time: a build script binary can be reused from a checkout elsewhere.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it");
    let dir = format!("{manifest}/../../proto");
    let file = format!("{dir}/ues_sync.proto");
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([&file], [&dir]).expect("proto/ues_sync.proto compiles");
    prost_build::Config::new().compile_fds(fds).expect("prost generates the message types");
}
