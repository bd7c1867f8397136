//! Elections (Raft §5.2, thesis §9.6 PreVote, §4.2.3 leader lease): campaigns, votes
//! and their answers. A child of `node`, so it reaches the core's state directly.
use std::collections::BTreeMap;

use super::*;

impl RawNode {
    /// Starts an election now, asked for (the leader's TimeoutNow, or the controller's
    /// TIMEOUT): voters grant it even while they hear from a leader.
    pub fn campaign(&mut self) {
        self.start_election(true);
    }

    pub(super) fn start_election(&mut self, transfer: bool) {
        // Asked for, or a PreVote round that ended after this node learned it no
        // longer votes.
        if !self.promotable() {
            tracing::info!(term = self.term, "not a voting member: not campaigning");
            return;
        }
        if self.term >= MAX_TERM {
            tracing::error!(term = self.term, "the term is at its limit: this node cannot start an election");
            return;
        }
        self.become_candidate();
        if self.tally(&self.votes).0 >= self.quorum() {
            self.become_leader();
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for p in self.voter_peers().collect::<Vec<_>>() {
            self.send(p, MessageBody::RequestVote { last_log_index, last_log_term, pre_vote: false, transfer });
        }
    }

    /// The election timer fired: a PreVote round first, then a real election only if a
    /// majority would vote for this node.
    pub(super) fn pre_campaign(&mut self) {
        self.leader = None;
        self.reset_election_timer();
        self.prevotes = Some(BTreeMap::from([(self.cfg.id, true)]));
        if self.term >= MAX_TERM {
            tracing::error!(term = self.term, "the term is at its limit: this node cannot start an election");
            return;
        }
        if self.tally(self.prevotes.as_ref().expect("set above")).0 >= self.quorum() {
            self.start_election(false);
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        let term = self.term + 1;
        for p in self.voter_peers().collect::<Vec<_>>() {
            let body = MessageBody::RequestVote { last_log_index, last_log_term, pre_vote: true, transfer: false };
            self.msgs.push(Message { from: self.cfg.id, to: p, term, body });
        }
    }

    /// A PreVote request changes nothing here. It is granted when the candidate's log is
    /// up to date and this node has not heard from a leader within the (minimum)
    /// election timeout: while a leader is alive, nobody may start an election.
    pub(super) fn handle_pre_vote(&mut self, m: &Message, last_index: Index, last_term: Term) -> Message {
        let granted = m.term > self.term && !self.leader_alive() && self.log.is_up_to_date(last_index, last_term);
        let term = if granted { m.term } else { self.term };
        Message {
            from: self.cfg.id,
            to: m.from,
            term,
            body: MessageBody::RequestVoteResponse { granted, pre_vote: true },
        }
    }

    /// This node is the leader, or heard from one within the (minimum) election timeout.
    pub(super) fn leader_alive(&self) -> bool {
        self.role == Role::Leader || (self.leader.is_some() && self.election_elapsed < self.cfg.election_ticks)
    }

    pub(super) fn handle_pre_vote_response(&mut self, m: &Message, granted: bool) {
        if !granted && m.term > self.term {
            self.become_follower(m.term, None);
            return;
        }
        let Some(prevotes) = self.prevotes.as_mut() else { return };
        if m.term != self.term + 1 {
            return;
        }
        prevotes.entry(m.from).or_insert(granted);
        let (yes, no) = self.tally(self.prevotes.as_ref().expect("set above"));
        if yes >= self.quorum() {
            self.start_election(false);
        } else if no >= self.quorum() {
            self.prevotes = None;
        }
    }

    pub(super) fn handle_request_vote(&mut self, from: NodeId, last_index: Index, last_term: Term) -> Message {
        // Answered whatever this node's configuration says (thesis §4.1): a member whose
        // removal is not committed yet may be needed to commit it, and configurations
        // differ while a change spreads. A removed member cannot disrupt a live leader
        // (PreVote, and `leader_alive` above).
        let can_vote = self.vote.is_none_or(|v| v == from) && self.leader.is_none_or(|l| l == from);
        let granted = can_vote && self.log.is_up_to_date(last_index, last_term);
        if granted {
            self.vote = Some(from);
            // A vote resets the voter's election timer (§5.2).
            self.reset_election_timer();
        }
        self.reply(from, MessageBody::RequestVoteResponse { granted, pre_vote: false })
    }

    /// Granted and refused answers from members that vote in the current configuration.
    fn tally(&self, answers: &BTreeMap<NodeId, bool>) -> (usize, usize) {
        let voting = answers.iter().filter(|(&id, _)| self.is_voter(id));
        voting.fold((0, 0), |(yes, no), (_, &g)| if g { (yes + 1, no) } else { (yes, no + 1) })
    }

    pub(super) fn handle_vote_response(&mut self, from: NodeId, granted: bool) {
        if self.role != Role::Candidate {
            return;
        }
        self.votes.entry(from).or_insert(granted);
        let (yes, no) = self.tally(&self.votes);
        if yes >= self.quorum() {
            tracing::info!(term = self.term, votes = yes, "won the election");
            self.become_leader();
        } else if no >= self.quorum() {
            self.become_follower(self.term, None);
        }
    }
}
