//! etcd's v3 API on the client port, beside `raftkv.v1.KeyValue` and on the same
//! keyspace: KV (Range, Put, DeleteRange, Txn, Compact), Watch, Lease,
//! Cluster.MemberList, Maintenance.Status and HashKV. Requests become the state machine's transactions
//! (`mvcc::txn`); answers and errors are etcd's, so `etcdctl` and etcd's client
//! libraries work unchanged.
//!
//! Where raftkv differs from etcd, it says so with a clear error: keys and values are
//! UTF-8 text, and keys at most 4096 bytes.
mod cluster;
mod convert;
mod kv;
mod lease;
mod maintenance;
mod watch;

use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

pub use cluster::EtcdCluster;
pub use kv::EtcdKv;
pub use lease::EtcdLease;
pub use maintenance::EtcdMaintenance;
pub use watch::EtcdWatch;

use crate::config::Member;
use crate::error::Error;
use crate::mvcc::MvccError;
use crate::proto::etcd::etcdserverpb as epb;
use crate::server::NodeHandle;

/// The etcd version raftkv answers as (Maintenance.Status): the API it follows.
pub const ETCD_VERSION: &str = "3.5.0";
/// etcd's default `--max-txn-ops`: operations per transaction branch.
pub const MAX_TXN_OPS: usize = 128;

/// What every etcd service of a node shares.
#[derive(Clone)]
pub struct Context {
    node: NodeHandle,
    cluster_id: u64,
    member_id: u64,
    quota_bytes: u64,
    /// How long an idle watcher that asked for progress notifications waits for one.
    progress_interval: std::time::Duration,
    /// Compact needs a client certificate of the trusted CA (as raftkv's own Compact).
    admin_needs_cert: bool,
}

/// FNV-1a, 64 bits: stable ids from names.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// A member's etcd id: derived from its name, the same on every node.
pub fn member_id(name: &str) -> u64 {
    fnv(&["raftkv-member", name])
}

impl Context {
    pub fn new(
        node: NodeHandle,
        members: Vec<Member>,
        quota_bytes: u64,
        admin_needs_cert: bool,
        progress_interval: std::time::Duration,
    ) -> Context {
        let mut parts: Vec<String> = members.iter().map(|m| format!("{}={}", m.name, m.peer_addr)).collect();
        parts.sort();
        let parts: Vec<&str> = std::iter::once("raftkv-cluster").chain(parts.iter().map(String::as_str)).collect();
        Context {
            member_id: member_id(node.name()),
            cluster_id: fnv(&parts),
            node,
            quota_bytes,
            admin_needs_cert,
            progress_interval,
        }
    }

    /// etcd's response header at the store's current revision.
    fn header_now(&self) -> Option<epb::ResponseHeader> {
        self.header(self.node.store().status().revision)
    }

    /// etcd's response header, at `revision`.
    fn header(&self, revision: u64) -> Option<epb::ResponseHeader> {
        Some(epb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision: revision as i64,
            raft_term: self.node.status().term,
        })
    }
}

fn with_metadata(code: Code, msg: &str, md: &MetadataMap) -> Status {
    Status::with_metadata(code, msg, md.clone())
}

/// A node error as etcd's clients expect it: etcd's code and text (they match on
/// them), with raftkv's metadata (leader hint, not-applied marker) kept.
pub fn etcd_status(e: Error) -> Status {
    // An error the leader answered a forwarded request with: known by its text.
    if let Error::Remote(s) = &e {
        let known = [
            ("required revision has been compacted", "etcdserver: mvcc: required revision has been compacted"),
            ("is a future revision", "etcdserver: mvcc: required revision is a future revision"),
            ("database space exceeded", "etcdserver: mvcc: database space exceeded"),
            ("too many requests", "etcdserver: too many requests"),
            ("etcdserver: ", ""),
        ];
        for (pattern, etcd) in known {
            if s.message().contains(pattern) {
                return if etcd.is_empty() { s.clone() } else { with_metadata(s.code(), etcd, s.metadata()) };
            }
        }
    }
    let text = match &e {
        Error::Mvcc(MvccError::Compacted { .. }) => Some("etcdserver: mvcc: required revision has been compacted"),
        Error::Mvcc(MvccError::FutureRevision { .. }) => {
            Some("etcdserver: mvcc: required revision is a future revision")
        }
        Error::Mvcc(MvccError::KeyNotFound) => Some("etcdserver: key not found"),
        Error::QuotaExceeded { .. } => Some("etcdserver: mvcc: database space exceeded"),
        Error::TooManyRequests(_) => Some("etcdserver: too many requests"),
        Error::NoLeader | Error::NotLeader { .. } | Error::Dropped | Error::LeaderUnreachable(_) => {
            Some("etcdserver: no leader")
        }
        // etcd answers a request whose outcome it does not know with UNAVAILABLE
        // "request timed out"; its clients never retry a write on it.
        Error::Timeout | Error::OutcomeUnknown(_) => Some("etcdserver: request timed out"),
        _ => None,
    };
    let code = match &e {
        Error::Timeout | Error::OutcomeUnknown(_) => Some(Code::Unavailable),
        _ => None,
    };
    let base = Status::from(e);
    match text {
        Some(t) => with_metadata(code.unwrap_or(base.code()), t, base.metadata()),
        None => base,
    }
}

/// An etcd-style refusal of bad input.
fn invalid(msg: &str) -> Status {
    Status::invalid_argument(msg)
}
