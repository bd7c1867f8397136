//! Conversions between protobuf messages and core messages: the only place they meet.
use tonic::Status;

use crate::proto as pb;
use crate::raft::{Entry, EntryKind, Message, MessageBody, NodeId};

/// Node names by id (id = position + 1 in name order).
#[derive(Clone, Debug)]
pub struct Names(pub Vec<String>);

impl Names {
    pub fn name(&self, id: NodeId) -> &str {
        &self.0[(id - 1) as usize]
    }

    pub fn id(&self, name: &str) -> Result<NodeId, Status> {
        self.0
            .iter()
            .position(|n| n == name)
            .map(|i| i as NodeId + 1)
            .ok_or_else(|| Status::invalid_argument(format!("unknown node {name:?}")))
    }
}

fn entry_to_pb(e: Entry) -> pb::Entry {
    let kind = match e.kind {
        EntryKind::Normal => pb::EntryType::EntryNormal,
        EntryKind::Noop => pb::EntryType::EntryNoop,
    };
    pb::Entry { index: e.index, term: e.term, r#type: kind as i32, data: e.data }
}

fn entry_from_pb(e: pb::Entry) -> Result<Entry, Status> {
    let kind = match pb::EntryType::try_from(e.r#type) {
        Ok(pb::EntryType::EntryNormal) => EntryKind::Normal,
        Ok(pb::EntryType::EntryNoop) => EntryKind::Noop,
        Err(_) => return Err(Status::invalid_argument(format!("unknown entry type {}", e.r#type))),
    };
    Ok(Entry { index: e.index, term: e.term, kind, data: e.data })
}

/// A peer request, ready to send.
pub enum Request {
    Vote(pb::RequestVoteRequest),
    Append(pb::AppendEntriesRequest),
    /// Stream the newest snapshot file, with this term and leader name.
    Snapshot {
        term: u64,
        leader: String,
    },
    TimeoutNow(pb::TimeoutNowRequest),
}

pub fn request_to_pb(m: Message, names: &Names) -> Option<Request> {
    let from = names.name(m.from).to_string();
    match m.body {
        MessageBody::RequestVote { last_log_index, last_log_term, pre_vote } => {
            Some(Request::Vote(pb::RequestVoteRequest {
                term: m.term,
                candidate: from,
                last_log_index,
                last_log_term,
                pre_vote,
            }))
        }
        MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, commit, round, floor } => {
            Some(Request::Append(pb::AppendEntriesRequest {
                term: m.term,
                leader: from,
                prev_log_index,
                prev_log_term,
                entries: entries.into_iter().map(entry_to_pb).collect(),
                leader_commit: commit,
                round,
                floor,
            }))
        }
        MessageBody::InstallSnapshot { .. } => Some(Request::Snapshot { term: m.term, leader: from }),
        MessageBody::TimeoutNow => Some(Request::TimeoutNow(pb::TimeoutNowRequest { term: m.term, leader: from })),
        _ => None,
    }
}

pub fn vote_request_from_pb(r: pb::RequestVoteRequest, me: NodeId, names: &Names) -> Result<Message, Status> {
    Ok(Message {
        from: names.id(&r.candidate)?,
        to: me,
        term: r.term,
        body: MessageBody::RequestVote {
            last_log_index: r.last_log_index,
            last_log_term: r.last_log_term,
            pre_vote: r.pre_vote,
        },
    })
}

pub fn timeout_now_from_pb(r: pb::TimeoutNowRequest, me: NodeId, names: &Names) -> Result<Message, Status> {
    Ok(Message { from: names.id(&r.leader)?, to: me, term: r.term, body: MessageBody::TimeoutNow })
}

pub fn append_request_from_pb(r: pb::AppendEntriesRequest, me: NodeId, names: &Names) -> Result<Message, Status> {
    let entries = r.entries.into_iter().map(entry_from_pb).collect::<Result<Vec<_>, _>>()?;
    let contiguous = entries.iter().enumerate().all(|(i, e)| e.index == r.prev_log_index + 1 + i as u64);
    if !contiguous {
        return Err(Status::invalid_argument("entries do not follow prev_log_index contiguously"));
    }
    Ok(Message {
        from: names.id(&r.leader)?,
        to: me,
        term: r.term,
        body: MessageBody::AppendEntries {
            prev_log_index: r.prev_log_index,
            prev_log_term: r.prev_log_term,
            entries,
            commit: r.leader_commit,
            round: r.round,
            floor: r.floor,
        },
    })
}

pub fn vote_response_to_pb(m: Message) -> pb::RequestVoteResponse {
    let (granted, pre_vote) = match m.body {
        MessageBody::RequestVoteResponse { granted, pre_vote } => (granted, pre_vote),
        _ => (false, false),
    };
    pb::RequestVoteResponse { term: m.term, vote_granted: granted, pre_vote }
}

pub fn append_response_to_pb(m: Message) -> Result<pb::AppendEntriesResponse, Status> {
    match m.body {
        MessageBody::AppendEntriesResponse {
            success,
            match_index,
            reject_index,
            conflict_index,
            conflict_term,
            round,
        } => Ok(pb::AppendEntriesResponse {
            term: m.term,
            success,
            match_index,
            reject_index,
            conflict_index,
            conflict_term,
            round,
        }),
        other => Err(Status::internal(format!("core answered an append with {other:?}"))),
    }
}

/// The core message for a peer's answer to a request `to` sent it.
/// `pre_vote` is the request's: an answer belongs to the round that asked.
pub fn vote_response_from_pb(r: pb::RequestVoteResponse, me: NodeId, peer: NodeId, pre_vote: bool) -> Message {
    let body = MessageBody::RequestVoteResponse { granted: r.vote_granted, pre_vote };
    Message { from: peer, to: me, term: r.term, body }
}

pub fn append_response_from_pb(r: pb::AppendEntriesResponse, me: NodeId, peer: NodeId) -> Message {
    Message {
        from: peer,
        to: me,
        term: r.term,
        body: MessageBody::AppendEntriesResponse {
            success: r.success,
            match_index: r.match_index,
            reject_index: r.reject_index,
            conflict_index: r.conflict_index,
            conflict_term: r.conflict_term,
            round: r.round,
        },
    }
}
