//! Generated protobuf and gRPC code (package `raftkv.v1`).
#![allow(clippy::all, missing_docs)]
tonic::include_proto!("raftkv.v1");

/// Encoded descriptors of every raftkv proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("raftkv_descriptor");
