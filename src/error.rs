//! The node's error type, and its one conversion into a gRPC status.
use tonic::{metadata::MetadataValue, Code, Status};

use crate::mvcc::MvccError;
use crate::raft::ConfChangeError;

/// Response metadata key naming the leader, when one is known.
pub const LEADER_METADATA: &str = "raftkv-leader";
/// Set on every UNAVAILABLE this node answers: the request was not applied and is safe
/// to retry. An UNAVAILABLE without it came from the transport, not from a node.
pub const NOT_APPLIED_METADATA: &str = "raftkv-not-applied";

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("this node is not the leader")]
    NotLeader { leader: Option<String> },
    #[error("no leader is known (election in progress, or no quorum)")]
    NoLeader,
    #[error("leadership changed before the entry committed; it was not applied")]
    Dropped,
    #[error("deadline exceeded before the request completed; a write may still commit")]
    Timeout,
    /// The request may have been appended to the log, and its outcome is not known:
    /// it may or may not be applied. Never safe to retry blindly.
    #[error("outcome unknown: {0}; the write may or may not have been applied")]
    OutcomeUnknown(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("the node is shutting down")]
    Shutdown,
    #[error("the leader is unreachable from this node: {0}")]
    LeaderUnreachable(String),
    /// An error returned by the leader a request was forwarded to.
    #[error("{}", .0.message())]
    Remote(Status),
    /// The state machine refused the request (a compacted or future revision), or failed.
    #[error(transparent)]
    Mvcc(#[from] crate::mvcc::MvccError),
    /// Back-pressure (etcd's "too many requests"): the state machine trails the commit
    /// index too far, or too many entries wait to be committed.
    #[error("too many requests: {0}")]
    TooManyRequests(String),
    #[error("database space exceeded: {stored} bytes stored, quota {quota} (--quota-backend-bytes); delete keys and compact the history to free space")]
    QuotaExceeded { stored: u64, quota: u64 },
    /// A configuration change refused by the leader; nothing changed.
    #[error("membership: {0}")]
    Membership(crate::raft::ConfChangeError),
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        let leader = match &e {
            Error::NotLeader { leader } => leader.clone(),
            _ => None,
        };
        let mut status = match e {
            Error::Remote(s) => return s,
            Error::NotLeader { .. }
            | Error::NoLeader
            | Error::Dropped
            | Error::Shutdown
            | Error::LeaderUnreachable(_) => Status::new(Code::Unavailable, msg),
            Error::Timeout | Error::OutcomeUnknown(_) => Status::new(Code::DeadlineExceeded, msg),
            Error::InvalidArgument(_) => Status::new(Code::InvalidArgument, msg),
            Error::FailedPrecondition(_) => Status::new(Code::FailedPrecondition, msg),
            Error::Aborted(_) => Status::new(Code::Aborted, msg),
            Error::OutOfRange(_) => Status::new(Code::OutOfRange, msg),
            Error::Mvcc(MvccError::Compacted { .. } | MvccError::FutureRevision { .. }) => {
                Status::new(Code::OutOfRange, msg)
            }
            Error::Mvcc(MvccError::SessionExpired { .. } | MvccError::StaleSequence { .. }) => {
                Status::new(Code::FailedPrecondition, msg)
            }
            Error::Mvcc(MvccError::KeyNotFound) => Status::new(Code::InvalidArgument, msg),
            Error::Mvcc(MvccError::LeaseNotFound) => Status::new(Code::NotFound, msg),
            Error::Mvcc(MvccError::LeaseExists) => Status::new(Code::FailedPrecondition, msg),
            Error::Mvcc(MvccError::Engine(_)) => Status::new(Code::Internal, msg),
            Error::Membership(ConfChangeError::NotAMember(_) | ConfChangeError::UnknownName(_)) => {
                Status::new(Code::NotFound, msg)
            }
            Error::Membership(ConfChangeError::BadName(_) | ConfChangeError::BadPeerUrl(_)) => {
                Status::new(Code::InvalidArgument, msg)
            }
            Error::Membership(_) => Status::new(Code::FailedPrecondition, msg),
            Error::TooManyRequests(_)
            | Error::QuotaExceeded { .. }
            | Error::Mvcc(MvccError::TooManySessions { .. }) => Status::new(Code::ResourceExhausted, msg),
        };
        if let Some(v) = leader.and_then(|l| MetadataValue::try_from(l).ok()) {
            status.metadata_mut().insert(LEADER_METADATA, v);
        }
        if status.code() == Code::Unavailable {
            status.metadata_mut().insert(NOT_APPLIED_METADATA, MetadataValue::from_static("1"));
        }
        status
    }
}

/// An error with all its causes, on one line ("transport error: ...: Connection refused").
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text += &format!(": {c}");
        cause = c.source();
    }
    text
}

/// Whether a transport error says the connection was never established (so the
/// request cannot have reached a node).
pub fn is_connect_failure(s: &Status) -> bool {
    let text = with_causes(s);
    ["error trying to connect", "tcp connect error", "Connection refused"].iter().any(|p| text.contains(p))
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
