//! The Raft state machine: `tick`, `step`, `propose`, `read_index`, `ready`, `on_persisted`.
//!
//! Deterministic: time is counted in ticks, randomness comes from a seeded RNG,
//! and nothing here performs I/O. The driver feeds it and carries out `Ready`.
use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::log::RaftLog;
use super::membership::{Membership, MembershipError};
use super::progress::{quorum_index, Progress, ProgressState};
use super::types::*;

#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// The founding voters, this node included: the membership when `membership` is
    /// `None` (a new cluster, or one whose log never changed its configuration).
    pub voters: Vec<NodeId>,
    /// The membership as of the log's base, as the state machine recorded it; the log's
    /// configuration entries after the base take over from it.
    pub membership: Option<Membership>,
    /// Minimum election timeout; each timeout is drawn from `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    /// Appends carrying entries outstanding per follower.
    pub max_inflight: usize,
    /// Entries kept below the applied index when compacting past the floor, so that a
    /// follower a little behind catches up from the log rather than a snapshot.
    pub keep_entries: u64,
    pub max_batch_bytes: usize,
    pub max_batch_entries: usize,
    /// A leader that has not heard from a quorum within an election timeout steps down.
    pub check_quorum: bool,
    /// An election timeout first runs a PreVote round: a node that cannot win (cut off,
    /// or behind) never raises its term and so never disrupts a working leader.
    pub pre_vote: bool,
    pub seed: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("node id {0} is not among the voters")]
    NotAVoter(NodeId),
    #[error("heartbeat ticks must be at least 1 and at most half the election ticks ({heartbeat} vs {election})")]
    Timing { heartbeat: u32, election: u32 },
    #[error("max_inflight, max_batch_bytes and max_batch_entries must be positive")]
    Batch,
    #[error("configuration entry {index}: {source}")]
    Membership { index: Index, source: MembershipError },
}

impl Config {
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Self {
        Config {
            id,
            voters,
            membership: None,
            election_ticks: 15,
            heartbeat_ticks: 5,
            max_inflight: 2,
            keep_entries: 5000,
            max_batch_bytes: 1 << 20,
            max_batch_entries: 4096,
            check_quorum: true,
            pre_vote: true,
            seed: id,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.membership.is_none() && !self.voters.contains(&self.id) {
            return Err(ConfigError::NotAVoter(self.id));
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks * 2 > self.election_ticks {
            return Err(ConfigError::Timing { heartbeat: self.heartbeat_ticks, election: self.election_ticks });
        }
        if self.max_inflight == 0 || self.max_batch_bytes == 0 || self.max_batch_entries == 0 {
            return Err(ConfigError::Batch);
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("not the leader")]
    NotLeader { leader: Option<NodeId> },
    /// The leader is handing leadership over; nothing new is appended meanwhile, so
    /// that the transferee can catch up (Raft thesis §3.10). Retry once it is done.
    #[error("leadership transfer in progress")]
    Transferring,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransferError {
    #[error("not the leader")]
    NotLeader { leader: Option<NodeId> },
    #[error("there is no other member to hand leadership to")]
    NoOtherMember,
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
}

#[derive(Debug)]
struct PendingRead {
    ctx: u64,
    index: Index,
    round: u64,
}

pub struct RawNode {
    cfg: Config,
    rng: ChaCha8Rng,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,
    /// Leader only: one entry per other voter.
    progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    /// PreVote answers while a PreVote round (for `term + 1`) is under way.
    prevotes: Option<BTreeMap<NodeId, bool>>,
    election_elapsed: u32,
    randomized_timeout: u32,
    heartbeat_elapsed: u32,
    /// Leader: heartbeat round stamped on appends; reads wait for a quorum to ack it.
    round: u64,
    round_bump: bool,
    /// Leader: the heartbeat is due: send every follower an append carrying all new entries.
    heartbeat_due: bool,
    /// Leader: send an append (possibly empty) to every follower at the next ready,
    /// for a new leader or a ReadIndex round.
    broadcast_pending: bool,
    /// Leader: entries up to here may go out before the next heartbeat; entries
    /// proposed lazily after it wait for the heartbeat.
    eager_hi: Index,
    /// Leader: send new entries, or a commit index they do not know, to followers.
    replicate_pending: bool,
    pending_reads: Vec<PendingRead>,
    /// Reads received before this leader committed an entry of its term.
    waiting_reads: Vec<u64>,
    ready_reads: Vec<ReadState>,
    /// Highest index every member is known to hold durably (see `MessageBody::AppendEntries`).
    floor: Index,
    /// A snapshot accepted from the leader, for the next ready to install.
    pending_snapshot: Option<(Index, Term)>,
    /// Leader: the follower leadership is being handed to, and the ticks since the
    /// transfer began (it is given up after an election timeout).
    transferee: Option<NodeId>,
    transfer_elapsed: u32,
    msgs: Vec<Message>,
    last_hard_state: HardState,
    /// The number of the last ready that had something to persist, and of the last
    /// write reported durable.
    last_write: u64,
    persisted_write: u64,
    /// Writes not yet reported durable that carry entries: their number and last entry.
    unstable_writes: VecDeque<(u64, (Index, Term))>,
    /// The membership as of the log's base, and the configuration entries after it:
    /// the last of them is the configuration in force.
    conf_base: Membership,
    conf_log: Vec<(Index, Membership)>,
    /// The configuration changed since the last ready.
    conf_changed: bool,
}

impl RawNode {
    /// A node starting from durable state (`HardState::default()` and no entries when new).
    pub fn new(cfg: Config, hs: HardState, entries: Vec<Entry>) -> Result<Self, ConfigError> {
        Self::restore(cfg, hs, (0, 0), entries, 0)
    }

    /// A node restarting from a snapshot at `applied` and the log entries after `base`
    /// (the index and term of the entry before them; `base.0 <= applied`).
    pub fn restore(
        cfg: Config,
        hs: HardState,
        base: (Index, Term),
        entries: Vec<Entry>,
        applied: Index,
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let mut voters = cfg.voters.clone();
        voters.sort_unstable();
        voters.dedup();
        let conf_base = cfg.membership.clone().unwrap_or_else(|| Membership::of_voters(&voters));
        let cfg = Config { voters, ..cfg };
        let mut conf_log = Vec::new();
        for e in entries.iter().filter(|e| e.kind == EntryKind::ConfChange) {
            let m = Membership::decode(&e.data).map_err(|source| ConfigError::Membership { index: e.index, source })?;
            conf_log.push((e.index, m));
        }
        let log = RaftLog::restore(base, entries, hs.commit, applied);
        // A batch's entries are written before its hard state: a crash in between keeps
        // entries of a term the node never durably recorded. It takes that term, with no
        // vote (any vote it granted in that term would have been durable first).
        let (term, vote) = if log.last_term() > hs.term { (log.last_term(), None) } else { (hs.term, hs.vote) };
        let mut node = RawNode {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            term,
            vote,
            role: Role::Follower,
            leader: None,
            log,
            // Relearned from the leader: a base may come from an installed snapshot,
            // which says nothing of what the other members hold.
            floor: 0,
            pending_snapshot: None,
            transferee: None,
            transfer_elapsed: 0,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            prevotes: None,
            election_elapsed: 0,
            randomized_timeout: 0,
            heartbeat_elapsed: 0,
            round: 0,
            round_bump: false,
            heartbeat_due: false,
            broadcast_pending: false,
            eager_hi: 0,
            replicate_pending: false,
            pending_reads: Vec::new(),
            waiting_reads: Vec::new(),
            ready_reads: Vec::new(),
            msgs: Vec::new(),
            last_hard_state: hs,
            last_write: 0,
            persisted_write: 0,
            unstable_writes: VecDeque::new(),
            conf_base,
            conf_log,
            conf_changed: true,
            cfg,
        };
        node.reset_election_timer();
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.cfg.id,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            commit: self.log.committed,
            applied: self.log.applied,
            last_index: self.log.last_index(),
            transferee: self.transferee,
        }
    }

    /// Leader: the follower leadership is being handed to, while a transfer is under way.
    pub fn transferee(&self) -> Option<NodeId> {
        self.transferee
    }

    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }

    fn quorum(&self) -> usize {
        self.membership().voter_count() / 2 + 1
    }

    /// Every other member, learners included: the leader replicates to them all.
    fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.cfg.id;
        self.membership().members.keys().copied().filter(move |&v| v != me)
    }

    /// Every other voter: the members asked for votes.
    fn voter_peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.cfg.id;
        self.membership().voters().filter(move |&v| v != me)
    }

    fn is_voter(&self, id: NodeId) -> bool {
        self.membership().is_voter(id)
    }

    /// Leader: what a majority of the voters has reached, `of` each voter's progress
    /// and `mine` for this node if it votes (a leader being removed does not).
    fn quorum_of(&self, of: impl Fn(&Progress) -> u64, mine: u64) -> Option<u64> {
        let mut values: Vec<u64> =
            self.progress.iter().filter(|(&id, _)| self.is_voter(id)).map(|(_, p)| of(p)).collect();
        if self.is_voter(self.cfg.id) {
            values.push(mine);
        }
        (!values.is_empty()).then(|| quorum_index(values))
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let base = self.cfg.election_ticks;
        self.randomized_timeout = base + self.rng.gen_range(0..base);
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.msgs.push(Message { from: self.cfg.id, to, term: self.term, body });
    }

    // ---- role transitions -------------------------------------------------

    pub fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.transferee = None;
        self.progress.clear();
        self.votes.clear();
        self.prevotes = None;
        self.pending_reads.clear();
        self.waiting_reads.clear();
        self.heartbeat_due = false;
        self.broadcast_pending = false;
        self.replicate_pending = false;
        self.reset_election_timer();
    }

    fn become_candidate(&mut self) {
        self.term += 1;
        self.vote = Some(self.cfg.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.transferee = None;
        self.prevotes = None;
        self.progress.clear();
        self.pending_reads.clear();
        self.waiting_reads.clear();
        self.votes.clear();
        self.votes.insert(self.cfg.id, true);
        self.reset_election_timer();
    }

    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.transferee = None;
        self.heartbeat_elapsed = 0;
        self.election_elapsed = 0;
        self.round = 0;
        self.round_bump = false;
        let next = self.log.last_index() + 1;
        self.progress = self.peers().map(|p| (p, Progress::new(next))).collect();
        self.votes.clear();
        // §5.4.2: a leader commits entries of earlier terms only through one of its own.
        let noop = Entry { index: next, term: self.term, kind: EntryKind::Noop, data: Bytes::new() };
        self.log.append(noop);
        self.eager_hi = next;
        self.broadcast_pending = true;
    }

    // ---- time -------------------------------------------------------------

    pub fn tick(&mut self) {
        match self.role {
            Role::Leader => self.tick_leader(),
            Role::Follower | Role::Candidate => {
                self.election_elapsed = self.election_elapsed.saturating_add(1);
                // A learner, or a node no longer (or not yet) a member, never campaigns.
                if self.election_elapsed >= self.randomized_timeout && self.promotable() {
                    if self.cfg.pre_vote {
                        self.pre_campaign();
                    } else {
                        self.campaign();
                    }
                }
            }
        }
    }

    fn tick_leader(&mut self) {
        if let Some(to) = self.transferee {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.cfg.election_ticks {
                tracing::info!(term = self.term, to, "leadership transfer timed out; keeping leadership");
                self.transferee = None;
            }
        }
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let me = self.is_voter(self.cfg.id) as usize;
                let active = me + self.progress.iter().filter(|(&id, p)| p.recent_active && self.is_voter(id)).count();
                if active < self.quorum() {
                    tracing::info!(term = self.term, "leader lost its quorum, stepping down");
                    self.become_follower(self.term, None);
                    return;
                }
                for p in self.progress.values_mut() {
                    p.recent_active = false;
                }
            }
        }
        self.heartbeat_elapsed += 1;
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            // The periodic AppendEntries is the heartbeat; it also carries new entries
            // and re-sends an unanswered probe.
            for p in self.progress.values_mut() {
                p.on_heartbeat();
            }
            self.heartbeat_due = true;
            // A TimeoutNow may have been lost: say it again while the transferee is
            // caught up (a stale copy, after it has campaigned, is ignored).
            if let Some(to) = self.transferee {
                if self.progress.get(&to).is_some_and(|p| p.matched == self.log.last_index()) {
                    self.send(to, MessageBody::TimeoutNow);
                }
            }
        }
    }

    // ---- client requests --------------------------------------------------

    /// Appends a client command. With `replicate_now` the followers are sent it at
    /// the next ready; otherwise it waits for the next heartbeat.
    pub fn propose(&mut self, data: Bytes, replicate_now: bool) -> Result<(Index, Term), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        // Handing over, or removing itself (it leads only until the removal commits,
        // and then learns nothing more of what it appended after it): refused, not
        // appended, so the client retries at the next leader.
        if self.transferee.is_some() || !self.is_voter(self.cfg.id) {
            return Err(ProposeError::Transferring);
        }
        let index = self.log.last_index() + 1;
        self.log.append(Entry { index, term: self.term, kind: EntryKind::Normal, data });
        if replicate_now {
            self.eager_hi = index;
            self.replicate_pending = true;
        }
        Ok((index, self.term))
    }

    /// Hands leadership to `to`, or to the most up-to-date follower (Raft thesis §3.10).
    /// New proposals are refused meanwhile; the transferee is brought up to date and
    /// then sent `TimeoutNow`, so it campaigns at once. Leadership moves when it wins;
    /// if that has not happened within an election timeout, the transfer is given up.
    /// Returns the transferee; a transfer to this node itself is a no-op.
    pub fn transfer_leader(&mut self, to: Option<NodeId>) -> Result<NodeId, TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader { leader: self.leader });
        }
        let to = match to {
            Some(id) if id == self.cfg.id => return Ok(id),
            Some(id) if self.progress.contains_key(&id) && self.is_voter(id) => id,
            Some(id) => return Err(TransferError::NotAMember(id)),
            // The voter that needs the least catching up; among equals, one heard from.
            None => {
                let best = self
                    .progress
                    .iter()
                    .filter(|(&id, _)| self.is_voter(id))
                    .max_by_key(|(id, p)| (p.matched, p.recent_active, std::cmp::Reverse(**id)));
                *best.ok_or(TransferError::NoOtherMember)?.0
            }
        };
        if self.transferee == Some(to) {
            return Ok(to);
        }
        tracing::info!(term = self.term, to, "transferring leadership");
        self.transferee = Some(to);
        self.transfer_elapsed = 0;
        self.maybe_send_timeout_now();
        Ok(to)
    }

    /// Leader: sends `TimeoutNow` once the transferee holds the whole log, else sends
    /// it what it lacks.
    fn maybe_send_timeout_now(&mut self) {
        let Some(to) = self.transferee else { return };
        let last = self.log.last_index();
        if self.progress.get(&to).is_some_and(|p| p.matched == last) {
            self.send(to, MessageBody::TimeoutNow);
        } else {
            let max_inflight = self.cfg.max_inflight;
            self.send_append(to, false, last, max_inflight);
        }
    }

    /// Asks for a linearizable read point (Raft thesis §6.4). The answer comes in a
    /// later `Ready::reads` with the same `ctx`, or never if leadership is lost.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        if self.log.term(self.log.committed) != Some(self.term) {
            self.waiting_reads.push(ctx);
            return Ok(());
        }
        self.add_read(ctx);
        Ok(())
    }

    fn add_read(&mut self, ctx: u64) {
        if self.quorum() == 1 && self.is_voter(self.cfg.id) {
            self.ready_reads.push(ReadState { ctx, index: self.log.committed });
            return;
        }
        if !self.round_bump {
            self.round_bump = true;
            self.broadcast_pending = true;
        }
        self.pending_reads.push(PendingRead { ctx, index: self.log.committed, round: self.round + 1 });
    }

    fn check_reads(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        let Some(confirmed) = self.quorum_of(|p| p.acked_round, self.round) else { return };
        let ready = &mut self.ready_reads;
        self.pending_reads.retain(|r| {
            if r.round <= confirmed {
                ready.push(ReadState { ctx: r.ctx, index: r.index });
                false
            } else {
                true
            }
        });
    }

    // ---- messages ---------------------------------------------------------

    /// Feeds one message. A request returns its response, which may promise what the
    /// next ready persists: it goes once the write `pending_write()` names after that
    /// ready (if any) is durable.
    pub fn step(&mut self, m: Message) -> Option<Message> {
        // A lost append makes a pipelined follower fall back to probing. A follower
        // being sent a snapshot stays paused until the snapshot's own outcome: a lost
        // heartbeat says nothing of the stream, and probing meanwhile would start a
        // second snapshot while the first is being installed.
        match (&m.body, self.progress.get_mut(&m.from)) {
            (MessageBody::Unreachable, Some(p)) if p.state == ProgressState::Replicate => {
                p.become_probe(p.matched + 1);
                return None;
            }
            (MessageBody::SnapshotFailed, Some(p)) if p.state == ProgressState::Snapshot => {
                p.become_probe(p.matched + 1);
                return None;
            }
            (MessageBody::Unreachable | MessageBody::SnapshotFailed, _) => return None,
            _ => {}
        }
        // Transport refuses these; a term past the limit must never be adopted. Nor a
        // jump of more than MAX_TERM_JUMP terms at once: no honest cluster holds that
        // many elections while a member is away, and one forged message near the limit
        // would otherwise stop every election for good.
        if m.term > MAX_TERM || m.term > self.term.saturating_add(MAX_TERM_JUMP) {
            tracing::warn!(
                term = m.term,
                from = m.from,
                my_term = self.term,
                "dropped a message with a term out of reach"
            );
            return None;
        }
        // PreVotes never change a term: answered (or counted) before the term rules.
        match m.body {
            MessageBody::RequestVote { last_log_index, last_log_term, pre_vote: true, .. } => {
                return Some(self.handle_pre_vote(&m, last_log_index, last_log_term));
            }
            MessageBody::RequestVoteResponse { granted, pre_vote: true } => {
                self.handle_pre_vote_response(&m, granted);
                return None;
            }
            _ => {}
        }
        // While a leader is alive, an election nobody asked for is ignored, and its term
        // adopted by no one (Raft thesis §4.2.3): a member that was cut off, or a forged
        // request, cannot depose a healthy leader.
        if let MessageBody::RequestVote { transfer: false, .. } = m.body {
            if m.term > self.term && self.cfg.check_quorum && self.leader_alive() {
                return Some(self.reply(m.from, MessageBody::RequestVoteResponse { granted: false, pre_vote: false }));
            }
        }
        if m.term > self.term {
            let leader = matches!(m.body, MessageBody::AppendEntries { .. } | MessageBody::InstallSnapshot { .. })
                .then_some(m.from);
            if self.role == Role::Leader {
                tracing::info!(
                    term = self.term,
                    new_term = m.term,
                    from = m.from,
                    "leader saw a higher term, stepping down"
                );
            }
            self.become_follower(m.term, leader);
        } else if m.term < self.term {
            // A stale request gets our term so that its sender steps down; stale responses are dropped.
            return match m.body {
                MessageBody::RequestVote { .. } => {
                    Some(self.reply(m.from, MessageBody::RequestVoteResponse { granted: false, pre_vote: false }))
                }
                MessageBody::AppendEntries { prev_log_index, round, .. } => {
                    Some(self.reply(m.from, MessageBody::append_reject(prev_log_index, 0, 0, round)))
                }
                MessageBody::InstallSnapshot { index, .. } => {
                    Some(self.reply(m.from, MessageBody::append_reject(index, 0, 0, 0)))
                }
                _ => None,
            };
        }
        match m.body {
            MessageBody::RequestVote { last_log_index, last_log_term, .. } => {
                Some(self.handle_request_vote(m.from, last_log_index, last_log_term))
            }
            MessageBody::RequestVoteResponse { granted, .. } => {
                self.handle_vote_response(m.from, granted);
                None
            }
            MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, commit, round, floor } => {
                let resp = self.handle_append(m.from, prev_log_index, prev_log_term, entries, commit, round);
                if matches!(resp.body, MessageBody::AppendEntriesResponse { success: true, .. }) {
                    self.floor = self.floor.max(floor.min(self.log.committed));
                }
                Some(resp)
            }
            MessageBody::AppendEntriesResponse {
                success,
                match_index,
                reject_index,
                conflict_index,
                conflict_term,
                round,
            } => {
                self.handle_append_response(
                    m.from,
                    success,
                    match_index,
                    reject_index,
                    conflict_index,
                    conflict_term,
                    round,
                );
                None
            }
            MessageBody::InstallSnapshot { index, term, membership } => {
                Some(self.handle_snapshot(m.from, index, term, membership))
            }
            MessageBody::TimeoutNow => {
                // Only this term's leader may hand over; the election skips PreVote, as
                // the leader itself asked for it.
                if self.role == Role::Follower {
                    tracing::info!(term = self.term, from = m.from, "leader handed over leadership; campaigning now");
                    self.campaign();
                }
                None
            }
            MessageBody::Unreachable | MessageBody::SnapshotFailed => None,
        }
    }

    /// A follower receives the leader's snapshot (Raft Figure 13). If its log already
    /// holds the snapshot's last entry, it keeps the log and just commits; otherwise
    /// the log and the state machine are replaced (`Ready::snapshot`).
    fn handle_snapshot(&mut self, from: NodeId, index: Index, term: Term, membership: Membership) -> Message {
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(self.term, Some(from));
        }
        self.election_elapsed = 0;
        let matched = if index <= self.log.committed {
            self.log.committed
        } else if self.log.term(index) == Some(term) {
            self.log.committed = index;
            index
        } else {
            tracing::info!(index, term, "installing the leader's snapshot");
            self.log.reset_to_snapshot(index, term);
            self.conf_base = membership;
            self.conf_log.clear();
            self.conf_changed = true;
            self.pending_snapshot = Some((index, term));
            index
        };
        self.reply(from, MessageBody::append_ok(matched, 0))
    }

    fn reply(&self, to: NodeId, body: MessageBody) -> Message {
        Message { from: self.cfg.id, to, term: self.term, body }
    }

    // ---- ready / on_persisted ---------------------------------------------

    pub fn has_ready(&self) -> bool {
        !self.msgs.is_empty()
            || self.hard_state() != self.last_hard_state
            || self.log.has_unstable()
            || self.log.has_committed_to_apply()
            || !self.ready_reads.is_empty()
            || self.pending_snapshot.is_some()
            || self.conf_changed
            || (self.role == Role::Leader && (self.heartbeat_due || self.broadcast_pending || self.replicate_pending))
    }

    /// Collects what the driver must do now; see `Ready` for the order.
    pub fn ready(&mut self) -> Ready {
        self.flush_appends();
        let hs = self.hard_state();
        let hard_state = (hs != self.last_hard_state).then_some(hs);
        self.last_hard_state = hs;
        let (messages, persisted_messages) = std::mem::take(&mut self.msgs)
            .into_iter()
            .partition(|m| matches!(m.body, MessageBody::AppendEntries { .. }));
        let mut rd = Ready {
            hard_state,
            entries: self.log.take_unstable(),
            messages,
            persisted_messages,
            committed: self.log.take_committed(usize::MAX),
            reads: std::mem::take(&mut self.ready_reads),
            snapshot: self.pending_snapshot.take(),
            membership: std::mem::take(&mut self.conf_changed).then(|| self.membership().clone()),
            ..Ready::default()
        };
        if rd.must_persist() {
            self.last_write += 1;
            rd.number = self.last_write;
            if let Some(last) = rd.entries.last() {
                self.unstable_writes.push_back((rd.number, (last.index, last.term)));
            }
        }
        rd.wait_for = self.pending_write();
        rd
    }

    /// The latest write handed out by `ready` and not yet reported durable.
    pub fn pending_write(&self) -> Option<u64> {
        (self.last_write > self.persisted_write).then_some(self.last_write)
    }

    /// Reports that ready `number`'s write, and so every earlier one, is durable.
    pub fn on_persisted(&mut self, number: u64) {
        if number <= self.persisted_write || number > self.last_write {
            tracing::warn!(
                number,
                persisted = self.persisted_write,
                last = self.last_write,
                "ignored a report of a write not pending"
            );
            return;
        }
        self.persisted_write = number;
        let mut stable = None;
        while let Some(&(n, last)) = self.unstable_writes.front() {
            if n > number {
                break;
            }
            stable = Some(last);
            self.unstable_writes.pop_front();
        }
        // A later write may have replaced these entries (a follower's log truncated by
        // a new leader); `stable_to` ignores a mark whose term no longer matches.
        if let Some((index, term)) = stable {
            self.log.stable_to(index, term);
            if self.role == Role::Leader && self.maybe_commit() {
                self.replicate_pending = true;
            }
        }
    }
}

#[path = "conf_change.rs"]
mod conf_change;
#[path = "election.rs"]
mod election;
#[path = "replication.rs"]
mod replication;

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
