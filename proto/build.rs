//! Compiles `hsmd/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed,
//! and writes the encoded descriptor set for server reflection. Also compiles the
//! vendored Kubernetes KMS v2 plugin API (`k8s/kms/apis/v2/api.proto`, package `v2`),
//! kept out of the reflection set: it is served on its own Unix socket.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "hsmd/v1/keys.proto",
        "hsmd/v1/audit.proto",
        "hsmd/v1/token.proto",
        "hsmd/v1/certs.proto",
        "hsmd/v1/images.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("hsmd_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;

    let kms = "k8s/kms/apis/v2/api.proto";
    println!("cargo:rerun-if-changed={kms}");
    tonic_prost_build::configure().compile_fds(protox::compile([kms], ["."])?)?;
    Ok(())
}
