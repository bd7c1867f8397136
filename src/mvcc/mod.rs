//! The state machine: an MVCC keyspace on an embedded storage engine (fjall, an LSM
//! tree), after etcd's model.
//!
//! Every applied write gets the next cluster-wide *revision*; a key carries its
//! `create_revision`, `mod_revision` and `version`; a delete leaves a tombstone in the
//! history. The history is kept until compacted, and reads may ask for any revision at
//! or after the compacted one.
//!
//! The engine holds seven keyspaces:
//! - `meta`: the applied Raft index and term, the current and compacted revision,
//!   how far compaction has physically removed history, the bytes stored and the
//!   sessions' log clock; and the cluster's membership as of the applied index;
//! - `keys`: each live key's current metadata (create/mod revision, version);
//! - `revs`: the history, `(revision, sub) -> event` (key, value or tombstone, the
//!   key's create revision and version, the Raft index and term of its entry);
//! - `key_revs`: `(key, revision, sub)`, to find a key's value at a past revision;
//! - `sessions`: the open client sessions (exactly-once writes, `session.rs`);
//! - `leases` and `lease_keys`: the granted leases and the keys attached to each
//!   (`lease.rs`).
//!
//! Applying writes one atomic batch that includes the applied index, without an
//! fsync; a *checkpoint* makes everything written durable (one fsync). The Raft log is the
//! write-ahead log: it keeps every entry after the last checkpoint, and recovery
//! replays them. See `store.rs` for the write path, `read.rs` for reads and
//! `snapshot.rs` for snapshots (consistent read views, streamed).
mod codec;
pub mod command;
pub mod lease;
mod read;
mod record;
mod session;
pub mod snapshot;
mod store;
pub mod txn;

pub use command::Command;
pub use read::{HistoryPage, KeyRange, RangeResult, ReadView};
pub use record::{Event, EventKind, KeyValue};
pub use store::{Applied, Store, StoreStatus};

/// A cluster-wide revision: one per applied write.
pub type Revision = u64;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MvccError {
    /// A read, Retrieve or compaction asked for history that compaction removed.
    #[error("required revision has been compacted (compacted revision {compacted})")]
    Compacted { compacted: Revision },
    #[error("required revision {requested} is a future revision (current revision {current})")]
    FutureRevision { requested: Revision, current: Revision },
    /// A session write names a session that was never opened or has expired.
    #[error("client session {client} is unknown or has expired; open a new session")]
    SessionExpired { client: u64 },
    /// A session write older than the session's last: its answer is no longer kept.
    #[error("sequence number {seq} is older than the session's last ({last}); its answer is no longer kept")]
    StaleSequence { seq: u64, last: u64 },
    #[error("too many client sessions are open ({max}); wait for idle ones to expire")]
    TooManySessions { max: u64 },
    /// A put that keeps the value (etcd's `ignore_value`) of a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A put with, a revoke of, or a time-to-live asked of a lease that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// The engine failed or holds data it cannot read: the node must stop.
    #[error("storage engine: {0}")]
    Engine(String),
}

macro_rules! engine_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for MvccError {
            fn from(e: $t) -> Self {
                MvccError::Engine(e.to_string())
            }
        }
    )*};
}
engine_errors!(fjall::Error, std::io::Error);

#[cfg(test)]
mod tests;
