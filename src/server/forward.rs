//! Errors of calls forwarded to the leader: what they promise about the request.
use super::Error;

/// An error from a forwarded call: the leader's own status passes through, but one
/// that names another leader (it has just stepped down) is followed; a transport
/// failure means the leader is unreachable from here.
pub(super) fn remote_error(s: tonic::Status) -> Error {
    let leader = s.metadata().get(crate::error::LEADER_METADATA).and_then(|v| v.to_str().ok());
    match (s.code(), leader) {
        (tonic::Code::Unavailable, Some(l)) => Error::NotLeader { leader: Some(l.to_string()) },
        // The member taken for the leader cannot take it (stopping, or no longer
        // leading and knowing no leader) and did not: asked again once a leader is known.
        (tonic::Code::Unavailable, None) if s.metadata().contains_key(crate::error::NOT_APPLIED_METADATA) => {
            Error::NoLeader
        }
        (tonic::Code::Unknown | tonic::Code::Internal, _) => Error::LeaderUnreachable(s.message().to_string()),
        _ => Error::Remote(s),
    }
}

/// An error from a write forwarded to the leader. A node's own UNAVAILABLE (marked
/// "not applied") and a connection that was never made are safe to retry; any other
/// transport failure (the leader died or the connection broke with the request in
/// flight) may have left the entry appended: its outcome is unknown.
pub(super) fn remote_write_error(s: tonic::Status) -> Error {
    let from_a_node = s.metadata().contains_key(crate::error::NOT_APPLIED_METADATA);
    let never_sent = crate::error::is_connect_failure(&s);
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled
            if !from_a_node && !never_sent =>
        {
            Error::OutcomeUnknown(format!("the leader's answer was lost ({})", s.message()))
        }
        _ => remote_error(s),
    }
}
