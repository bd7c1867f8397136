//! raftkv: a Raft-replicated, strongly consistent key-value service.
//!
//! - [`raft`]: the sans-IO consensus core.
//! - [`server`]: the tokio driver that owns a core, and node startup.
//! - [`transport`]: peer gRPC (`raftkv.v1.Raft`), one channel per peer, fault injection.
//! - [`api`]: client gRPC (`raftkv.v1.KeyValue`).
//! - [`etcd`]: etcd's v3 API (KV, Cluster.MemberList, Maintenance.Status) on the same keyspace.
//! - [`mvcc`]: the state machine: an MVCC keyspace on an embedded engine.
//! - [`bridge`]: the UDP JSON controller bridge.
//! - [`client`]: an exactly-once client (sessions, safe retries), for the CLI and bench.
// tonic::Status (176 bytes) is the error type of every gRPC handler and of the
// conversions feeding them; boxing it everywhere would only add allocations.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod bridge;
pub mod client;
pub mod config;
pub mod error;

pub mod etcd;
pub mod kube;
pub mod mvcc;
pub mod proto;
pub mod raft;
pub mod server;
pub mod storage;
pub mod tls;
pub mod transport;
pub mod view;
