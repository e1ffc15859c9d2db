//! Compiles the protos with protox (no system `protoc`) and keeps the encoded
//! descriptor set in `OUT_DIR` for server reflection.

use std::{env, fs, path::PathBuf};

use protox::prost::Message;

const PROTO: &str = "proto/wecom/kf/v1/upgrade.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    let out_dir =
        PathBuf::from(env::var_os("OUT_DIR").ok_or("cargo sets OUT_DIR for build scripts")?);
    // `compile_fds` generates code only; reflection needs the descriptors themselves.
    fs::write(
        out_dir.join("wecom_kf_v1_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Undecodable requests are the caller's fault, not INTERNAL.
        .codec_path("crate::grpc::codec::GatewayCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
