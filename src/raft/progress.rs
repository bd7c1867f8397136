//! The leader's view of each follower (§5.3 nextIndex/matchIndex) and quorum math.
use std::collections::VecDeque;

use super::types::Index;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Unknown how far the follower's log matches: send one append at a time.
    Probe,
    /// The follower matches up to `matched`: pipeline appends optimistically.
    Replicate,
    /// A snapshot is on its way; nothing else is sent until it is answered.
    Snapshot,
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub matched: Index,
    pub next: Index,
    pub state: ProgressState,
    /// In Probe: an append is outstanding; wait for its answer or the next heartbeat.
    pub probe_sent: bool,
    /// In Replicate: last index of each outstanding append carrying entries.
    pub inflight: VecDeque<Index>,
    /// Heard from in the current CheckQuorum window.
    pub recent_active: bool,
    /// Highest heartbeat round this follower acknowledged in the current term.
    pub acked_round: u64,
    /// `matched` at the previous heartbeat, to detect appends lost in flight.
    pub matched_at_heartbeat: Index,
    /// Highest commit index this follower was sent in an append that it can apply.
    pub commit_told: Index,
}

impl Progress {
    pub fn new(next: Index) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            acked_round: 0,
            matched_at_heartbeat: 0,
            commit_told: 0,
        }
    }

    /// Called every heartbeat. A pipelined follower that made no progress over a whole
    /// heartbeat interval with appends outstanding has lost one: resend from `matched`.
    pub fn on_heartbeat(&mut self) {
        if self.state == ProgressState::Replicate
            && !self.inflight.is_empty()
            && self.matched == self.matched_at_heartbeat
        {
            self.become_probe(self.matched + 1);
        }
        self.probe_sent = false;
        self.matched_at_heartbeat = self.matched;
    }

    /// True when no append carrying entries may be sent now.
    pub fn is_paused(&self, max_inflight: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= max_inflight,
            ProgressState::Snapshot => true,
        }
    }

    /// A successful answer: returns whether `matched` moved.
    pub fn on_success(&mut self, match_index: Index) -> bool {
        while self.inflight.front().is_some_and(|&i| i <= match_index) {
            self.inflight.pop_front();
        }
        let moved = match_index > self.matched;
        if moved {
            self.matched = match_index;
        }
        self.next = self.next.max(match_index + 1);
        if self.state != ProgressState::Replicate {
            self.state = ProgressState::Replicate;
            self.probe_sent = false;
            self.inflight.clear();
            self.next = self.matched + 1;
        }
        moved
    }

    pub fn become_probe(&mut self, next: Index) {
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.next = next.max(self.matched + 1);
    }
}

/// The largest index that a majority of `matched` values has reached.
pub fn quorum_index(mut matched: Vec<Index>) -> Index {
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched[matched.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_index_is_majority_minimum() {
        assert_eq!(quorum_index(vec![5]), 5);
        assert_eq!(quorum_index(vec![5, 3, 1]), 3);
        assert_eq!(quorum_index(vec![5, 4, 3, 2, 1]), 3);
        assert_eq!(quorum_index(vec![5, 5, 1, 1]), 1);
    }

    #[test]
    fn success_in_probe_switches_to_replicate() {
        let mut p = Progress::new(10);
        p.probe_sent = true;
        assert!(p.on_success(7));
        assert_eq!(p.state, ProgressState::Replicate);
        assert_eq!(p.next, 8);
        assert!(!p.is_paused(1));
    }
}
