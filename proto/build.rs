//! Compiles `proto/cohort/v1/*.proto` with protox (pure Rust, no system
//! `protoc`) and generates the prost messages and tonic services from it.
//! The encoded descriptor set is kept for server reflection.
//!
//! Messages and clients go to `pb`. The servers are generated apart, into
//! `server`, against the same messages, except that the master's side of
//! the Join stream sends `frame::OutFrame`: a `MasterFrame` whose
//! deliveries may already be encoded (the same bytes on the wire).

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/cohort/v1/cohort.proto"];
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("cohort_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .bytes(".cohort.v1")
        .build_server(false)
        .compile_fds(fds.clone())?;
    let server = out.join("server");
    std::fs::create_dir_all(&server)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&server)
        .extern_path(".cohort.v1", "crate::pb")
        .extern_path(".cohort.v1.MasterFrame", "crate::frame::OutFrame")
        .codec_path("crate::codec::SmallCodec")
        .compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
