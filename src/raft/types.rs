//! Plain-Rust types of the consensus core. No protobuf, no I/O.
use bytes::Bytes;

use super::membership::Membership;

/// A node's numeric id inside the core. The server maps names to ids.
pub type NodeId = u64;
pub type Term = u64;
pub type Index = u64;

/// The highest term a node accepts or reaches. No honest cluster comes near it (a new
/// term every microsecond would take over 2,000 years), and below it `term + 1` can
/// never wrap: a forged `u64::MAX` is refused instead of freezing every election.
pub const MAX_TERM: Term = 1 << 56;
/// The most terms a message may be ahead of the receiver's: more means a forged or
/// broken sender (2^20 elections, at one per election timeout, take days).
pub const MAX_TERM_JUMP: Term = 1 << 20;
/// The highest log index a node accepts from the network, for the same reason.
pub const MAX_INDEX: Index = 1 << 62;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A client command; `data` is opaque to the core.
    Normal,
    /// Appended by a new leader so that it can commit entries of earlier terms (§5.4.2).
    Noop,
    /// A configuration change: `data` is the whole new `Membership`, in force from the
    /// moment the entry is appended (Raft thesis §4.1).
    ConfChange,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: Index,
    pub term: Term,
    pub kind: EntryKind,
    pub data: Bytes,
}

impl Entry {
    /// Approximate size on the wire, used to bound batches.
    pub fn size(&self) -> usize {
        self.data.len() + 24
    }
}

/// The state that must be durable before the node answers anything that depends on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    pub commit: Index,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// With `pre_vote`, a PreVote (Raft thesis §9.6): "would you vote for me in the
    /// message's term?", which changes no one's term or vote.
    RequestVote {
        last_log_index: Index,
        last_log_term: Term,
        pre_vote: bool,
        /// The election was asked for (by the leader handing over, or by the operator),
        /// so voters grant it even while they still hear from a leader; an ordinary
        /// candidate is ignored then (Raft thesis §4.2.3).
        transfer: bool,
    },
    RequestVoteResponse {
        granted: bool,
        pre_vote: bool,
    },
    AppendEntries {
        prev_log_index: Index,
        prev_log_term: Term,
        entries: Vec<Entry>,
        commit: Index,
        /// Leader's heartbeat round, echoed back; confirms ReadIndex requests.
        round: u64,
        /// The highest index every member is known to hold durably: no node compacts
        /// its log beyond it, so no member can ever need a compacted entry.
        floor: Index,
    },
    AppendEntriesResponse {
        success: bool,
        /// On success, the last index known to match the leader's log.
        match_index: Index,
        /// On rejection, the `prev_log_index` of the rejected request.
        reject_index: Index,
        /// On rejection: first index of `conflict_term` in the follower's log,
        /// or its last index + 1 (with `conflict_term` 0) when its log is too short.
        conflict_index: Index,
        conflict_term: Term,
        round: u64,
    },
    /// The leader's snapshot, for a follower whose next entry is compacted away. The
    /// transport streams the snapshot itself; the answer is an `AppendEntriesResponse`
    /// whose `match_index` is the installed snapshot's index.
    InstallSnapshot {
        index: Index,
        term: Term,
        /// The membership as of `index`, which the snapshot's state machine records too.
        membership: Membership,
    },
    /// Leadership transfer (Raft thesis §3.10): the leader tells an up-to-date
    /// follower to start an election at once, without waiting for its timeout and
    /// without a PreVote round. It has no answer.
    TimeoutNow,
    /// Local only: the transport could not deliver a request to `from`.
    Unreachable,
    /// Local only: streaming a snapshot to `from` failed or timed out.
    SnapshotFailed,
}

impl Message {
    /// What the transport tells node `me` when a request to `peer` was not delivered
    /// or not answered.
    pub fn unreachable(peer: NodeId, me: NodeId) -> Message {
        Message { from: peer, to: me, term: 0, body: MessageBody::Unreachable }
    }

    /// `unreachable` for the request `sent`; `SnapshotFailed` for a snapshot.
    pub fn undelivered(sent: &MessageBody, peer: NodeId, me: NodeId) -> Message {
        match sent {
            MessageBody::InstallSnapshot { .. } => {
                Message { from: peer, to: me, term: 0, body: MessageBody::SnapshotFailed }
            }
            _ => Message::unreachable(peer, me),
        }
    }
}

impl MessageBody {
    /// A successful AppendEntries (or InstallSnapshot) answer.
    pub fn append_ok(match_index: Index, round: u64) -> MessageBody {
        MessageBody::AppendEntriesResponse {
            success: true,
            match_index,
            reject_index: 0,
            conflict_index: 0,
            conflict_term: 0,
            round,
        }
    }

    /// A rejected AppendEntries answer, with the conflict hint.
    pub fn append_reject(reject_index: Index, conflict_index: Index, conflict_term: Term, round: u64) -> MessageBody {
        MessageBody::AppendEntriesResponse {
            success: false,
            match_index: 0,
            reject_index,
            conflict_index,
            conflict_term,
            round,
        }
    }

    pub fn is_request(&self) -> bool {
        matches!(
            self,
            MessageBody::RequestVote { .. }
                | MessageBody::AppendEntries { .. }
                | MessageBody::InstallSnapshot { .. }
                | MessageBody::TimeoutNow
        )
    }
}

/// A linearizable read confirmed by a quorum: safe to serve once `index` is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub ctx: u64,
    pub index: Index,
}

/// What the driver must do, in this order: install `snapshot`; send `messages` (they
/// may go before the write); persist `hard_state` and `entries` (truncating the stored
/// log from `entries[0].index` first) as write number `number`; once every write up to
/// `wait_for` is durable, send `persisted_messages` and report `on_persisted(number)`;
/// apply `committed`; serve `reads`. Writes are reported in order, and a write's
/// durability implies every earlier one's.
#[derive(Debug, Default)]
pub struct Ready {
    /// This ready's write, when it has something to persist (`must_persist`).
    pub number: u64,
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    /// Messages that may go at once, before the write: a leader's AppendEntries (Raft
    /// §10.2.1: the leader counts itself in a majority only once its own write is
    /// reported, so followers may hold the entries first).
    pub messages: Vec<Message>,
    /// Messages that promise what this ready (or an earlier one) persists: requests
    /// for votes, TimeoutNow. They go once every write up to `wait_for` is durable.
    pub persisted_messages: Vec<Message>,
    /// The write `persisted_messages` wait for: this ready's own, or the latest one
    /// not yet reported durable; `None` when nothing is being written.
    pub wait_for: Option<u64>,
    pub committed: Vec<Entry>,
    pub reads: Vec<ReadState>,
    /// Install the leader's snapshot at (index, term) before anything else: the state
    /// machine is replaced by it and the log now starts after it.
    pub snapshot: Option<(Index, Term)>,
    /// The membership, when it changed since the last ready (an entry appended or
    /// truncated, a snapshot installed): the driver connects to new members and drops
    /// removed ones.
    pub membership: Option<Membership>,
}

impl Ready {
    /// Whether `hard_state` or `entries` must be written (as write `number`).
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || !self.entries.is_empty()
    }
}

/// A snapshot of the node's volatile and persistent state, for status and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub vote: Option<NodeId>,
    pub leader: Option<NodeId>,
    pub commit: Index,
    pub applied: Index,
    pub last_index: Index,
    /// Leader: the follower leadership is being handed to, while a transfer is under way.
    pub transferee: Option<NodeId>,
}
