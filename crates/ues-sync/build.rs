//! Compiles `proto/*.proto` (the reconciliation messages) with prost, using protox, a protobuf
//! compiler in Rust, so building needs no `protoc` on the machine.

fn main() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let file = format!("{dir}/ues_sync.proto");
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([&file], [dir]).expect("proto/ues_sync.proto compiles");
    prost_build::Config::new().compile_fds(fds).expect("prost generates the message types");
}
