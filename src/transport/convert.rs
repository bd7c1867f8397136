//! Conversions between protobuf messages and core messages: the only place they meet.
use std::sync::{Arc, RwLock};

use tonic::Status;

use crate::proto as pb;
use crate::raft::{
    ConfChange, Entry, EntryKind, Index, Membership, Message, MessageBody, NodeId, Term, MAX_INDEX, MAX_TERM,
};

/// The members by id and name, as the core last reported them (the driver updates
/// them), shared by everything that meets the wire: the configuration in force, and
/// every member of a configuration still in the log (who may still send).
#[derive(Clone, Debug)]
pub struct Names(Arc<RwLock<(Arc<Membership>, Arc<Membership>)>>);

impl Names {
    pub fn new(current: Membership, known: Membership) -> Names {
        Names(Arc::new(RwLock::new((Arc::new(current), Arc::new(known)))))
    }

    pub fn set(&self, current: Membership, known: Membership) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = (Arc::new(current), Arc::new(known));
    }

    /// The configuration in force.
    pub fn membership(&self) -> Arc<Membership> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    fn known(&self) -> Arc<Membership> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    /// A member's name; an id this node does not know yet (a member added since its
    /// configuration) reads as the id in hex, as etcd prints ids.
    pub fn name(&self, id: NodeId) -> String {
        self.known().members.get(&id).map_or_else(|| format!("{id:x}"), |m| m.name.clone())
    }

    /// Whether `id` is a member of a configuration this node knows.
    pub fn knows(&self, id: NodeId) -> bool {
        self.known().contains(id)
    }

    pub fn id(&self, name: &str) -> Result<NodeId, Status> {
        self.known().id_of(name).ok_or_else(|| Status::invalid_argument(format!("unknown node {name:?}")))
    }

    /// The id of the member that sent a request to `me`, named `name` and claiming id
    /// `claimed` (0 from a sender that does not say). A name this node knows must come
    /// with its id. An unknown one is accepted only with an id newer than any this node
    /// has seen given out (a member added since its configuration, whose entries it has
    /// yet to receive); a removed member is refused.
    pub fn sender(&self, name: &str, claimed: NodeId, me: NodeId) -> Result<NodeId, Status> {
        let m = self.known();
        let id = match m.id_of(name) {
            Some(id) if claimed == 0 || claimed == id => id,
            Some(id) => {
                return Err(Status::permission_denied(format!(
                    "{name:?} is member {id:x} of this cluster, not {claimed:x}"
                )))
            }
            None if claimed >= m.next_id && claimed <= crate::raft::membership::MAX_ID => claimed,
            None => return Err(Status::permission_denied(format!("{name:?} is not a member of this cluster"))),
        };
        if id == me {
            return Err(Status::permission_denied(format!("{name:?} is this node's own name")));
        }
        Ok(id)
    }
}

/// The members a certificate's DNS names name: `NAME`, or `NAME.` followed by a domain
/// (a StatefulSet pod's `raftkv-0.raftkv-peer.ns.svc`).
pub fn members_named(names: &Names, dns: &[String]) -> Vec<String> {
    names
        .known()
        .members
        .values()
        .map(|m| &m.name)
        .filter(|m| dns.iter().any(|d| d == *m || d.strip_prefix(m.as_str()).is_some_and(|rest| rest.starts_with('.'))))
        .cloned()
        .collect()
}

/// Refuses a term past `MAX_TERM`.
pub fn check_term(what: &str, term: Term) -> Result<(), Status> {
    if term > MAX_TERM {
        return Err(Status::invalid_argument(format!("{what} {term} is out of range (at most {MAX_TERM})")));
    }
    Ok(())
}

/// Refuses an index past `MAX_INDEX`.
pub fn check_index(what: &str, index: Index) -> Result<(), Status> {
    if index > MAX_INDEX {
        return Err(Status::invalid_argument(format!("{what} {index} is out of range (at most {MAX_INDEX})")));
    }
    Ok(())
}

/// A log term never exceeds the term of the message that carries it.
fn check_log_term(what: &str, log_term: Term, term: Term) -> Result<(), Status> {
    if log_term > term {
        return Err(Status::invalid_argument(format!("{what} {log_term} is past the message's term {term}")));
    }
    Ok(())
}

fn entry_to_pb(e: Entry) -> pb::Entry {
    let kind = match e.kind {
        EntryKind::Normal => pb::EntryType::EntryNormal,
        EntryKind::Noop => pb::EntryType::EntryNoop,
        EntryKind::ConfChange => pb::EntryType::EntryConfChange,
    };
    pb::Entry { index: e.index, term: e.term, r#type: kind as i32, data: e.data }
}

fn entry_from_pb(e: pb::Entry) -> Result<Entry, Status> {
    let kind = match pb::EntryType::try_from(e.r#type) {
        Ok(pb::EntryType::EntryNormal) => EntryKind::Normal,
        Ok(pb::EntryType::EntryNoop) => EntryKind::Noop,
        Ok(pb::EntryType::EntryConfChange) => {
            // Checked here, before the core sees it: a configuration it cannot read
            // would split the cluster's view of who votes.
            crate::raft::Membership::decode(&e.data)
                .map_err(|err| Status::invalid_argument(format!("entry {}: {err}", e.index)))?;
            EntryKind::ConfChange
        }
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
        sender_id: NodeId,
    },
    TimeoutNow(pb::TimeoutNowRequest),
}

/// A request from this node (`me`, the message's sender), for the wire.
pub fn request_to_pb(m: Message, me: &str) -> Option<Request> {
    let (from, sender_id) = (me.to_string(), m.from);
    match m.body {
        MessageBody::RequestVote { last_log_index, last_log_term, pre_vote, transfer } => {
            Some(Request::Vote(pb::RequestVoteRequest {
                term: m.term,
                candidate: from,
                last_log_index,
                last_log_term,
                pre_vote,
                leader_transfer: transfer,
                sender_id,
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
                sender_id,
            }))
        }
        MessageBody::InstallSnapshot { .. } => Some(Request::Snapshot { term: m.term, leader: from, sender_id }),
        MessageBody::TimeoutNow => {
            Some(Request::TimeoutNow(pb::TimeoutNowRequest { term: m.term, leader: from, sender_id }))
        }
        _ => None,
    }
}

pub fn vote_request_from_pb(r: pb::RequestVoteRequest, me: NodeId, names: &Names) -> Result<Message, Status> {
    let from = names.sender(&r.candidate, r.sender_id, me)?;
    check_term("term", r.term)?;
    check_index("last_log_index", r.last_log_index)?;
    check_log_term("last_log_term", r.last_log_term, r.term)?;
    Ok(Message {
        from,
        to: me,
        term: r.term,
        body: MessageBody::RequestVote {
            last_log_index: r.last_log_index,
            last_log_term: r.last_log_term,
            pre_vote: r.pre_vote,
            transfer: r.leader_transfer,
        },
    })
}

pub fn timeout_now_from_pb(r: pb::TimeoutNowRequest, me: NodeId, names: &Names) -> Result<Message, Status> {
    let from = names.sender(&r.leader, r.sender_id, me)?;
    check_term("term", r.term)?;
    Ok(Message { from, to: me, term: r.term, body: MessageBody::TimeoutNow })
}

pub fn append_request_from_pb(r: pb::AppendEntriesRequest, me: NodeId, names: &Names) -> Result<Message, Status> {
    let from = names.sender(&r.leader, r.sender_id, me)?;
    check_term("term", r.term)?;
    check_index("prev_log_index", r.prev_log_index)?;
    check_index("leader_commit", r.leader_commit)?;
    check_index("floor", r.floor)?;
    check_log_term("prev_log_term", r.prev_log_term, r.term)?;
    let entries = r.entries.into_iter().map(entry_from_pb).collect::<Result<Vec<_>, _>>()?;
    // Indices follow prev_log_index one by one, and terms never go down (Log Matching)
    // nor past the leader's.
    let mut last_term = r.prev_log_term;
    for (i, e) in entries.iter().enumerate() {
        if Some(e.index) != r.prev_log_index.checked_add(1 + i as u64) || e.index > MAX_INDEX {
            return Err(Status::invalid_argument("entries do not follow prev_log_index contiguously"));
        }
        if e.term < last_term || e.term > r.term {
            return Err(Status::invalid_argument(format!(
                "entry {} has term {}, out of order (after {last_term}, leader's term {})",
                e.index, e.term, r.term
            )));
        }
        last_term = e.term;
    }
    Ok(Message {
        from,
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

/// The core message for a peer's answer to a request `to` sent it, or why it is refused.
/// `pre_vote` is the request's: an answer belongs to the round that asked.
pub fn vote_response_from_pb(
    r: pb::RequestVoteResponse,
    me: NodeId,
    peer: NodeId,
    pre_vote: bool,
) -> Result<Message, Status> {
    check_term("term", r.term)?;
    let body = MessageBody::RequestVoteResponse { granted: r.vote_granted, pre_vote };
    Ok(Message { from: peer, to: me, term: r.term, body })
}

pub fn append_response_from_pb(r: pb::AppendEntriesResponse, me: NodeId, peer: NodeId) -> Result<Message, Status> {
    check_term("term", r.term)?;
    check_term("conflict_term", r.conflict_term)?;
    check_index("match_index", r.match_index)?;
    check_index("reject_index", r.reject_index)?;
    check_index("conflict_index", r.conflict_index)?;
    Ok(Message {
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
    })
}

/// A configuration change, for forwarding to the leader.
pub fn conf_change_to_pb(change: &ConfChange) -> pb::ChangeMembershipRequest {
    use pb::change_membership_request::Kind;
    match change {
        ConfChange::Add { name, peer_url, learner } => pb::ChangeMembershipRequest {
            kind: Kind::Add as i32,
            name: name.clone(),
            peer_url: peer_url.clone(),
            learner: *learner,
            id: 0,
        },
        ConfChange::Promote(id) => {
            pb::ChangeMembershipRequest { kind: Kind::Promote as i32, id: *id, ..Default::default() }
        }
        ConfChange::Remove(id) => {
            pb::ChangeMembershipRequest { kind: Kind::Remove as i32, id: *id, ..Default::default() }
        }
        ConfChange::Publish(id) => {
            pb::ChangeMembershipRequest { kind: Kind::Publish as i32, id: *id, ..Default::default() }
        }
        ConfChange::Update { id, peer_url } => pb::ChangeMembershipRequest {
            kind: Kind::Update as i32,
            id: *id,
            peer_url: peer_url.clone(),
            ..Default::default()
        },
    }
}

/// A forwarded configuration change; its names and URLs are checked by the leader's core.
pub fn conf_change_from_pb(r: pb::ChangeMembershipRequest) -> Result<ConfChange, Status> {
    use pb::change_membership_request::Kind;
    match Kind::try_from(r.kind) {
        Ok(Kind::Add) => Ok(ConfChange::Add { name: r.name, peer_url: r.peer_url, learner: r.learner }),
        Ok(Kind::Promote) => Ok(ConfChange::Promote(r.id)),
        Ok(Kind::Remove) => Ok(ConfChange::Remove(r.id)),
        Ok(Kind::Publish) => Ok(ConfChange::Publish(r.id)),
        Ok(Kind::Update) => Ok(ConfChange::Update { id: r.id, peer_url: r.peer_url }),
        Err(_) => Err(Status::invalid_argument(format!("unknown configuration change kind {}", r.kind))),
    }
}
