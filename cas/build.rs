//! Compiles cas's own copy of the ByteStream API with `bytes::Bytes` data fields, using protox (a
//! pure-Rust protobuf compiler) so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/google/bytestream/bytestream.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".google.bytestream")
        .compile_fds(fds)?;
    Ok(())
}
