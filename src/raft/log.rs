//! The in-memory view of the Raft log: entries, commit/apply cursors, and
//! which suffix is not yet durable.
use super::types::{Entry, Index, Term};

#[derive(Debug, Default)]
pub struct RaftLog {
    /// Entries `offset + 1 ..= last_index()`.
    entries: Vec<Entry>,
    /// Index of the entry before `entries[0]` (a snapshot's index once logs compact).
    offset: Index,
    offset_term: Term,
    pub committed: Index,
    /// Highest index handed to the driver for applying.
    pub applied: Index,
    /// Entries `> stable` are not yet durable.
    pub stable: Index,
    /// Entries `>= unstable_from` have not yet been handed out for persisting.
    unstable_from: Index,
}

impl RaftLog {
    /// A log restored from durable storage: all of it is stable. `entries` follow
    /// `base` (the index and term of the entry before them); the state machine has
    /// applied up to `applied` (a snapshot), which is at least `base.0`.
    pub fn restore(base: (Index, Term), entries: Vec<Entry>, committed: Index, applied: Index) -> Self {
        let last = entries.last().map_or(base.0, |e| e.index);
        debug_assert!(entries.iter().enumerate().all(|(i, e)| e.index == base.0 + i as Index + 1));
        debug_assert!(applied >= base.0 && applied <= last);
        RaftLog {
            entries,
            offset: base.0,
            offset_term: base.1,
            committed: committed.max(applied).min(last),
            applied,
            stable: last,
            unstable_from: last + 1,
        }
    }

    /// Replaces the whole log by a snapshot at (`index`, `term`): everything up to it is
    /// committed, applied (by installing the snapshot) and durable.
    pub fn reset_to_snapshot(&mut self, index: Index, term: Term) {
        self.entries.clear();
        self.offset = index;
        self.offset_term = term;
        self.committed = index;
        self.applied = index;
        self.stable = index;
        self.unstable_from = index + 1;
    }

    /// Drops entries `<= index`, which must be applied and durable.
    pub fn compact(&mut self, index: Index) {
        if index <= self.offset {
            return;
        }
        assert!(index <= self.applied && index <= self.stable, "compacting past applied/stable");
        let term = self.term(index).expect("within the log");
        self.entries.drain(..(index - self.offset) as usize);
        self.offset = index;
        self.offset_term = term;
    }

    pub fn first_index(&self) -> Index {
        self.offset + 1
    }

    pub fn last_index(&self) -> Index {
        self.offset + self.entries.len() as Index
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.offset_term, |e| e.term)
    }

    /// The term of the entry at `index`, if the log knows it.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.offset {
            return Some(self.offset_term);
        }
        if index < self.offset || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index - self.offset - 1) as usize].term)
    }

    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.offset || index > self.last_index() {
            return None;
        }
        Some(&self.entries[(index - self.offset - 1) as usize])
    }

    /// Entries `lo ..= hi`, stopping early once `max_bytes` is passed (at least one entry).
    pub fn slice(&self, lo: Index, hi: Index, max_bytes: usize, max_count: usize) -> Vec<Entry> {
        let hi = hi.min(self.last_index());
        if lo > hi || lo <= self.offset {
            return Vec::new();
        }
        let from = (lo - self.offset - 1) as usize;
        let to = (hi - self.offset) as usize;
        let mut out = Vec::with_capacity((to - from).min(max_count));
        let mut bytes = 0;
        for e in &self.entries[from..to] {
            if !out.is_empty() && (bytes + e.size() > max_bytes || out.len() >= max_count) {
                break;
            }
            bytes += e.size();
            out.push(e.clone());
        }
        out
    }

    /// §5.4.1: is a log ending at (`index`, `term`) at least as up to date as ours?
    pub fn is_up_to_date(&self, index: Index, term: Term) -> bool {
        term > self.last_term() || (term == self.last_term() && index >= self.last_index())
    }

    pub fn append(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1);
        self.entries.push(entry);
    }

    /// Removes entries `>= index`. Committed entries are never removed.
    pub fn truncate(&mut self, index: Index) {
        assert!(index > self.committed, "truncating committed entry {index} (commit {})", self.committed);
        if index > self.last_index() {
            return;
        }
        self.entries.truncate((index - self.offset - 1) as usize);
        self.stable = self.stable.min(index - 1);
        self.unstable_from = self.unstable_from.min(index);
    }

    /// The first index of the run of `term` that contains `index` (bounded by the log start).
    pub fn first_index_of_term(&self, mut index: Index, term: Term) -> Index {
        while index > self.first_index() && self.term(index - 1) == Some(term) {
            index -= 1;
        }
        index
    }

    /// The last index whose term is `term`, if any.
    pub fn last_index_of_term(&self, term: Term) -> Option<Index> {
        self.entries.iter().rev().find(|e| e.term == term).map(|e| e.index)
    }

    /// Entries not yet handed out for persisting; marks them handed out.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let lo = self.unstable_from;
        self.unstable_from = self.last_index() + 1;
        self.slice(lo, self.last_index(), usize::MAX, usize::MAX)
    }

    pub fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Marks entries up to `index` (of `term`) durable, unless they were replaced meanwhile.
    pub fn stable_to(&mut self, index: Index, term: Term) {
        if index > self.stable && self.term(index) == Some(term) && index < self.unstable_from {
            self.stable = index;
        }
    }

    /// Committed entries not yet handed out for applying; marks them handed out.
    pub fn take_committed(&mut self, max_bytes: usize) -> Vec<Entry> {
        // Only durable entries are applied: a follower commits what the leader says,
        // but applies it once its own copy is on disk.
        let hi = self.committed.min(self.stable);
        if hi <= self.applied {
            return Vec::new();
        }
        let out = self.slice(self.applied + 1, hi, max_bytes, usize::MAX);
        if let Some(e) = out.last() {
            self.applied = e.index;
        }
        out
    }

    pub fn has_committed_to_apply(&self) -> bool {
        self.committed.min(self.stable) > self.applied
    }

    /// All entries, for tests and invariant checks.
    pub fn all(&self) -> &[Entry] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryKind;
    use bytes::Bytes;

    fn e(index: Index, term: Term) -> Entry {
        Entry { index, term, kind: EntryKind::Normal, data: Bytes::new() }
    }

    #[test]
    fn truncate_moves_stable_and_unstable_back() {
        let mut log = RaftLog::restore((0, 0), vec![e(1, 1), e(2, 1), e(3, 2)], 1, 0);
        assert_eq!(log.stable, 3);
        log.truncate(2);
        assert_eq!(log.last_index(), 1);
        assert_eq!(log.stable, 1);
        log.append(e(2, 3));
        assert_eq!(log.take_unstable(), vec![e(2, 3)]);
        assert!(!log.has_unstable());
    }

    #[test]
    #[should_panic(expected = "truncating committed")]
    fn truncating_committed_entry_panics() {
        let mut log = RaftLog::restore((0, 0), vec![e(1, 1), e(2, 1)], 2, 0);
        log.truncate(2);
    }

    #[test]
    fn up_to_date_compares_term_then_index() {
        let log = RaftLog::restore((0, 0), vec![e(1, 1), e(2, 2)], 0, 0);
        assert!(log.is_up_to_date(1, 3));
        assert!(log.is_up_to_date(2, 2));
        assert!(!log.is_up_to_date(5, 1));
        assert!(!log.is_up_to_date(1, 2));
    }

    #[test]
    fn slice_respects_byte_budget_but_returns_one() {
        let mut log = RaftLog::default();
        for i in 1..=5 {
            log.append(Entry { index: i, term: 1, kind: EntryKind::Normal, data: Bytes::from(vec![0u8; 100]) });
        }
        assert_eq!(log.slice(1, 5, 10, 100).len(), 1);
        assert_eq!(log.slice(1, 5, 300, 100).len(), 2);
        assert_eq!(log.slice(2, 5, usize::MAX, 3).len(), 3);
    }

    #[test]
    fn compaction_keeps_the_base_term_and_restore_starts_above_it() {
        let mut log = RaftLog::restore((0, 0), vec![e(1, 1), e(2, 1), e(3, 2), e(4, 2)], 4, 3);
        log.compact(3);
        assert_eq!((log.first_index(), log.last_index()), (4, 4));
        assert_eq!(log.term(3), Some(2), "the base term is known");
        assert_eq!(log.term(2), None);
        let r = RaftLog::restore((2, 1), vec![e(3, 2), e(4, 2)], 0, 3);
        assert_eq!(r.committed, 3, "a snapshot's index is committed");
        assert_eq!(r.applied, 3);
        assert_eq!(r.slice(3, 4, usize::MAX, 10).len(), 2);
    }

    #[test]
    fn apply_waits_for_durability() {
        let mut log = RaftLog::default();
        log.append(e(1, 1));
        log.committed = 1;
        assert!(log.take_committed(usize::MAX).is_empty());
        let _ = log.take_unstable();
        log.stable_to(1, 1);
        assert_eq!(log.take_committed(usize::MAX), vec![e(1, 1)]);
    }
}
