//! Generates the gRPC code for `proto/eia/v1/eia.proto` (and the bench floor's
//! `proto/eia/echo/v1/echo.proto`) with protox (a pure-Rust protobuf
//! compiler), so building needs no system `protoc`, no nvcc and no GPU.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["eia/v1/eia.proto", "eia/echo/v1/echo.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // eia's `bytes` fields (tensor chunks, program writes and reads) decode as `bytes::Bytes`:
        // reference-counted slices of the received buffer instead of fresh `Vec`s. The echo
        // floor keeps prost's default `Vec<u8>` (a plain tonic service).
        .bytes(".eia.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
