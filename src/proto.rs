//! Generated protobuf and gRPC code (package `raftkv.v1`; etcd's in [`etcd`]).
#![allow(clippy::all, missing_docs)]
tonic::include_proto!("raftkv.v1");

/// etcd's v3 API: the packages `etcdserverpb` and `mvccpb`.
pub mod etcd {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }

    /// Encoded descriptors of etcd's protos, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("etcd_descriptor");
}

/// Encoded descriptors of every raftkv proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("raftkv_descriptor");
