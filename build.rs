//! Compiles proto/ with tonic-build. Uses a vendored protoc so that a fresh
//! machine with only cargo builds the crate.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The vendored protoc, unless PROTOC names another one. (.cargo/config.toml points
    // PROTOC at tools/protoc for dependencies' build scripts: the same binary, found
    // through cargo's registry; ours need not depend on that lookup.)
    let other = env::var_os("PROTOC").filter(|p| !std::path::Path::new(p).ends_with("tools/protoc"));
    if other.is_none() {
        env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_build::configure()
        .file_descriptor_set_path(out.join("raftkv_descriptor.bin"))
        .bytes([
            ".raftkv.v1.Entry.data",
            ".raftkv.v1.ProposeRequest.command",
            ".raftkv.v1.ProposeResponse.txn",
            ".raftkv.v1.ProposeBatchRequest.commands",
            ".raftkv.v1.ProposeOutcome.txn",
        ])
        .compile_protos(&["proto/raftkv/v1/kv.proto", "proto/raftkv/v1/raft.proto"], &["proto"])?;
    // etcd's v3 API (a subset), in its own packages: etcdserverpb and mvccpb.
    tonic_build::configure()
        .file_descriptor_set_path(out.join("etcd_descriptor.bin"))
        .compile_protos(&["proto/etcd/etcdserverpb/rpc.proto"], &["proto/etcd"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
