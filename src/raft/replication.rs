//! Replication (Raft §5.3, §5.4): AppendEntries and their answers, the commit
//! index, the floor, and the leader's sending of entries. A child of `node`.
use super::*;

impl RawNode {
    pub(super) fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
        round: u64,
    ) -> Message {
        if self.role != Role::Follower || self.leader != Some(from) {
            // A candidate of this term learns who won; a follower learns the leader.
            self.become_follower(self.term, Some(from));
        }
        self.election_elapsed = 0;
        let reject = |conflict_index, conflict_term| {
            MessageBody::append_reject(prev_index, conflict_index, conflict_term, round)
        };
        if prev_index > self.log.last_index() {
            let body = reject(self.log.last_index() + 1, 0);
            return self.reply(from, body);
        }
        match self.log.term(prev_index) {
            Some(t) if t == prev_term => {}
            Some(t) => {
                let body = reject(self.log.first_index_of_term(prev_index, t), t);
                return self.reply(from, body);
            }
            // Before our first index: covered by a snapshot, hence committed and matching.
            None => {}
        }
        let last_new = prev_index + entries.len() as Index;
        for e in entries {
            if e.index <= self.log.committed {
                continue;
            }
            match self.log.term(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    self.log.truncate(e.index);
                    self.truncate_conf(e.index);
                }
                None => {}
            }
            self.append_entry(e);
        }
        let commit = commit.min(last_new);
        if commit > self.log.committed {
            self.log.committed = commit;
        }
        self.reply(from, MessageBody::append_ok(last_new, round))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        match_index: Index,
        reject_index: Index,
        conflict_index: Index,
        conflict_term: Term,
        round: u64,
    ) {
        if self.role != Role::Leader {
            return;
        }
        // An answer about entries this leader never had is not an answer to it: a
        // faulty or hostile peer must not move progress past the log.
        let last = self.log.last_index();
        if (success && match_index > last) || (!success && reject_index > last) {
            tracing::warn!(from, match_index, reject_index, last, "dropped an append answer past this leader's log");
            return;
        }
        let max_inflight = self.cfg.max_inflight;
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        p.recent_active = true;
        p.acked_round = p.acked_round.max(round);
        if success {
            if p.on_success(match_index) {
                self.maybe_commit();
                self.update_floor();
                if self.transferee == Some(from) {
                    self.maybe_send_timeout_now();
                }
            }
            self.replicate_pending = true;
        } else {
            let stale = match p.state {
                ProgressState::Replicate => reject_index <= p.matched,
                ProgressState::Probe => reject_index + 1 != p.next,
                ProgressState::Snapshot => true,
            };
            if !stale {
                let hint = if conflict_term > 0 {
                    self.log.last_index_of_term(conflict_term).map_or(conflict_index, |i| i + 1)
                } else {
                    conflict_index
                };
                let p = self.progress.get_mut(&from).expect("checked above");
                p.become_probe(hint.min(reject_index).max(1));
                self.send_append(from, true, self.eager_hi, max_inflight);
            }
        }
        self.check_reads();
    }

    /// Leader: the floor rises to what every member durably holds and is committed.
    pub(super) fn update_floor(&mut self) {
        // A leader that has just stepped down (its removal committed) knows no progress.
        if self.role != Role::Leader {
            return;
        }
        let all = self.progress.values().map(|p| p.matched).min().unwrap_or(Index::MAX);
        let f = all.min(self.log.stable).min(self.log.committed);
        self.floor = self.floor.max(f);
    }

    /// Leader: each other member's match index (the last entry known to be in its log).
    pub fn matched(&self) -> impl Iterator<Item = (NodeId, Index)> + '_ {
        self.progress.iter().map(|(&id, p)| (id, p.matched))
    }

    /// The highest index every member is known to hold durably.
    pub fn floor(&self) -> Index {
        self.floor
    }

    /// How far the log may be compacted now: applied, durable, and held by every member.
    pub fn compactable(&self) -> Index {
        let keep_from = self.log.applied.saturating_sub(self.cfg.keep_entries);
        self.floor.max(keep_from).min(self.log.applied).min(self.log.stable)
    }

    /// Drops log entries `<= index` (at most `compactable()`); a snapshot of the state
    /// machine must cover them.
    pub fn compact(&mut self, index: Index) {
        self.log.compact(index.min(self.compactable()));
        self.fold_conf();
    }

    /// Advances the commit index to what a quorum holds, if that is of this term (§5.4.2).
    pub(super) fn maybe_commit(&mut self) -> bool {
        let Some(q) = self.quorum_of(|p| p.matched, self.log.stable) else { return false };
        if q > self.log.committed && self.log.term(q) == Some(self.term) {
            self.log.committed = q;
            let reads = std::mem::take(&mut self.waiting_reads);
            for ctx in reads {
                self.add_read(ctx);
            }
            self.step_down_if_removed();
            return true;
        }
        false
    }

    /// Sends an append to `to`. Entries up to `hi` go if its progress has room. An
    /// empty append goes when `force` (heartbeat, read round) or when it tells the
    /// follower a commit index it does not know yet. To a pipelined follower an empty
    /// append carries `prev = matched`, so it cannot be rejected for overtaking an
    /// append in flight.
    pub(super) fn send_append(&mut self, to: NodeId, force: bool, hi: Index, max_inflight: usize) {
        let (max_bytes, max_count) = (self.cfg.max_batch_bytes, self.cfg.max_batch_entries);
        let committed = self.log.committed;
        let first = self.log.first_index();
        let Some(p) = self.progress.get_mut(&to) else {
            return;
        };
        if p.next < first && p.state != ProgressState::Snapshot {
            // What it needs next is compacted away: it gets the snapshot instead.
            p.state = ProgressState::Snapshot;
            p.inflight.clear();
            let (index, term) = (first - 1, self.log.term(first - 1).expect("the base term is known"));
            let membership = self.conf_base.clone();
            self.send(to, MessageBody::InstallSnapshot { index, term, membership });
            return;
        }
        let paused = p.is_paused(max_inflight);
        let entries = if paused { Vec::new() } else { self.log.slice(p.next, hi, max_bytes, max_count) };
        let is_probe = p.state == ProgressState::Probe && !paused;
        let prev_index = if entries.is_empty() && !is_probe { p.matched.max(first - 1) } else { p.next.max(first) - 1 };
        let tells = committed.min(prev_index + entries.len() as Index);
        if entries.is_empty() && !force && tells <= p.commit_told {
            return;
        }
        let Some(prev_term) = self.log.term(prev_index) else {
            unreachable!("prev {prev_index} is at or after the log's base {}", first - 1);
        };
        let p = self.progress.get_mut(&to).expect("checked above");
        p.commit_told = p.commit_told.max(tells);
        if is_probe {
            p.probe_sent = true;
        } else if let Some(last) = entries.last().map(|e| e.index) {
            p.next = last + 1;
            p.inflight.push_back(last);
        }
        let body = MessageBody::AppendEntries {
            prev_log_index: prev_index,
            prev_log_term: prev_term,
            entries,
            commit: committed,
            round: self.round,
            floor: self.floor,
        };
        self.send(to, body);
    }

    pub(super) fn flush_appends(&mut self) {
        if self.role != Role::Leader || !(self.heartbeat_due || self.broadcast_pending || self.replicate_pending) {
            return;
        }
        let force = self.heartbeat_due || self.broadcast_pending;
        if self.round_bump && force {
            self.round += 1;
            self.round_bump = false;
        }
        let hi = if self.heartbeat_due { self.log.last_index() } else { self.eager_hi };
        self.heartbeat_due = false;
        self.broadcast_pending = false;
        self.replicate_pending = false;
        let max_inflight = self.cfg.max_inflight;
        let peers: Vec<NodeId> = self.peers().collect();
        for p in peers {
            self.send_append(p, force, hi, max_inflight);
        }
    }
}
