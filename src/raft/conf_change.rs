//! Configuration changes (Raft thesis §4.1, single-server changes): one at a time, each
//! in force from the moment its entry is appended, committed or not. A child of `node`.
//!
//! Single-server changes rather than joint consensus: any two majorities of consecutive
//! configurations that differ by one voter overlap, so no two leaders can be elected in
//! one term across a change, and the rule "at most one change not yet committed" is all
//! the coordination needed. The one trap (the thesis' 2015 errata) is a new leader
//! changing the configuration before an entry of its own term is committed: it could
//! then overwrite a change an earlier leader had started; so a leader changes nothing
//! until it has committed an entry of its term.
use super::*;
use crate::raft::membership::{ConfChange, ConfChangeError};

/// A learner is in sync, and may be promoted, once it holds this share (in tenths) of
/// the leader's committed entries (etcd's readiness rule, 90 %).
const PROMOTE_TENTHS: u64 = 9;

impl RawNode {
    /// The configuration in force: the last one in the log, else the one at its base.
    pub fn membership(&self) -> &Membership {
        self.conf_log.last().map_or(&self.conf_base, |(_, m)| m)
    }

    /// Whether this node may campaign: it votes in its configuration, or in the
    /// committed one (thesis §4.2.2: a voter whose removal is not committed yet may be
    /// needed to commit it; it then does not count its own vote).
    pub(super) fn promotable(&self) -> bool {
        let me = self.cfg.id;
        self.is_voter(me) || self.membership_at(self.log.committed).is_some_and(|m| m.is_voter(me))
    }

    /// Every member of any configuration this node holds (the base's and those in its
    /// log): who it must still hear from while a change spreads, with the latest
    /// configuration's `next_id`. A name removed and added again is known by its
    /// newest id only.
    pub fn known_members(&self) -> Membership {
        let mut all = self.membership().clone();
        for m in self.conf_log.iter().rev().map(|(_, m)| m).chain(std::iter::once(&self.conf_base)) {
            for (id, member) in &m.members {
                if !all.members.contains_key(id) && all.id_of(&member.name).is_none() {
                    all.members.insert(*id, member.clone());
                }
            }
        }
        all
    }

    /// The configuration in force at `index` (an entry at or after the log's base), as a
    /// snapshot taken there records it.
    pub fn membership_at(&self, index: Index) -> Option<&Membership> {
        if index < self.log.first_index() - 1 || index > self.log.last_index() {
            return None;
        }
        Some(self.conf_log.iter().rev().find(|&&(i, _)| i <= index).map_or(&self.conf_base, |(_, m)| m))
    }

    /// Leader: appends a configuration change, replicated at once. Returns the entry's
    /// index and the id of the member it concerns (a new member's new id); index 0
    /// when there was nothing to append (a member already recorded as started).
    pub fn propose_conf_change(&mut self, change: &ConfChange) -> Result<(Index, NodeId), ConfChangeError> {
        if self.role != Role::Leader {
            return Err(ConfChangeError::NotLeader { leader: self.leader });
        }
        if self.transferee.is_some() {
            return Err(ConfChangeError::Transferring);
        }
        let committed = self.log.committed;
        let pending = self.conf_log.last().is_some_and(|&(index, _)| index > committed);
        if pending || self.log.term(committed) != Some(self.term) {
            return Err(ConfChangeError::Pending);
        }
        if let ConfChange::Promote(id) = *change {
            if self.membership().is_learner(id) {
                let matched = self.progress.get(&id).map_or(0, |p| p.matched);
                if matched * 10 < committed * PROMOTE_TENTHS {
                    return Err(ConfChangeError::LearnerBehind { id, matched, committed });
                }
            }
        }
        // Publishing twice changes nothing: answered without an entry.
        if let ConfChange::Publish(id) = *change {
            if self.membership().members.get(&id).is_some_and(|m| m.started) {
                return Ok((0, id));
            }
        }
        let (next, id) = self.membership().changed(change)?;
        let index = self.log.last_index() + 1;
        tracing::info!(term = self.term, index, ?change, "proposing a configuration change");
        let data = next.encode();
        self.append_entry(Entry { index, term: self.term, kind: EntryKind::ConfChange, data });
        self.eager_hi = index;
        self.replicate_pending = true;
        // A configuration that leaves a single voter (this one) commits at once.
        if self.maybe_commit() {
            self.replicate_pending = true;
        }
        Ok((index, id))
    }

    /// Appends an entry to the log; a configuration entry takes effect now.
    pub(super) fn append_entry(&mut self, e: Entry) {
        if e.kind == EntryKind::ConfChange {
            match Membership::decode(&e.data) {
                Ok(m) => {
                    self.conf_log.push((e.index, m));
                    self.on_conf_changed();
                }
                // The transport refuses such entries and the log is checksummed: this
                // is a bug, not an input. The entry stays, with no effect.
                Err(err) => tracing::error!(index = e.index, "ignored a configuration entry: {err}"),
            }
        }
        self.log.append(e);
    }

    /// Entries from `index` on were removed: so are their configurations.
    pub(super) fn truncate_conf(&mut self, index: Index) {
        let before = self.conf_log.len();
        self.conf_log.retain(|&(i, _)| i < index);
        if self.conf_log.len() != before {
            self.on_conf_changed();
        }
    }

    /// The log was compacted: configurations at or below its new base become the base.
    pub(super) fn fold_conf(&mut self) {
        let base = self.log.first_index() - 1;
        let folded = self.conf_log.iter().take_while(|&&(i, _)| i <= base).count();
        if let Some((_, m)) = self.conf_log.drain(..folded).next_back() {
            self.conf_base = m;
            // Members only older configurations knew are forgotten now.
            self.conf_changed = true;
        }
    }

    /// The configuration changed: a leader starts or stops replicating to members.
    fn on_conf_changed(&mut self) {
        self.conf_changed = true;
        if self.role != Role::Leader {
            return;
        }
        let members: Vec<NodeId> = self.peers().collect();
        self.progress.retain(|id, _| members.contains(id));
        let next = self.log.last_index() + 1;
        for id in members {
            self.progress.entry(id).or_insert_with(|| Progress::new(next));
        }
        if self.transferee.is_some_and(|t| !self.is_voter(t)) {
            self.transferee = None;
        }
    }

    /// A leader whose removal (or demotion) is committed hands over to the most
    /// up-to-date voter and steps down; until then it kept leading without counting
    /// itself (thesis §4.2.2).
    pub(super) fn step_down_if_removed(&mut self) {
        let settled = self.conf_log.last().is_none_or(|&(i, _)| i <= self.log.committed);
        if self.role != Role::Leader || self.is_voter(self.cfg.id) || !settled {
            return;
        }
        tracing::info!(term = self.term, "this leader's removal is committed: stepping down");
        let max_inflight = self.cfg.max_inflight;
        let last = self.log.last_index();
        // The others learn the commit index now rather than at the next heartbeat.
        for p in self.peers().collect::<Vec<_>>() {
            self.send_append(p, true, last, max_inflight);
        }
        let best = self
            .progress
            .iter()
            .filter(|(&id, p)| self.is_voter(id) && p.matched == last)
            .max_by_key(|(&id, p)| (p.recent_active, std::cmp::Reverse(id)))
            .map(|(&id, _)| id);
        if let Some(to) = best {
            self.send(to, MessageBody::TimeoutNow);
        }
        self.become_follower(self.term, None);
    }
}
