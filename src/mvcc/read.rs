//! Reads: a consistent view of the store at its applied index.
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable};

use super::record::{decode_event, KeyMeta};
use super::store::{Meta, KEYS, KEY_REVS, META, REVS};
use super::{Event, KeyValue, MvccError, Revision};
use crate::raft::{Index, Term};

/// One page of the history.
#[derive(Debug, Default)]
pub struct HistoryPage {
    pub events: Vec<Event>,
    /// The revision the next page starts at; 0 when this page reaches the end.
    pub next: Revision,
}

pub struct ReadView {
    meta: Meta,
    keys: ReadOnlyTable<&'static [u8], &'static [u8]>,
    revs: ReadOnlyTable<(u64, u32), &'static [u8]>,
    key_revs: ReadOnlyTable<(&'static [u8], u64, u32), ()>,
}

impl ReadView {
    pub(super) fn new(txn: ReadTransaction) -> Result<ReadView, MvccError> {
        Ok(ReadView {
            meta: Meta::load(&txn.open_table(META)?)?,
            keys: txn.open_table(KEYS)?,
            revs: txn.open_table(REVS)?,
            key_revs: txn.open_table(KEY_REVS)?,
        })
    }

    pub(super) fn meta(&self) -> &Meta {
        &self.meta
    }

    pub(super) fn revs_table(&self) -> &ReadOnlyTable<(u64, u32), &'static [u8]> {
        &self.revs
    }

    pub fn revision(&self) -> Revision {
        self.meta.revision
    }

    pub fn compacted(&self) -> Revision {
        self.meta.compacted
    }

    /// The applied Raft index and term this view reflects.
    pub fn applied(&self) -> (Index, Term) {
        (self.meta.applied, self.meta.applied_term)
    }

    /// Refuses a revision compaction removed or that does not exist yet.
    fn check_revision(&self, at: Revision) -> Result<(), MvccError> {
        if at < self.meta.compacted {
            return Err(MvccError::Compacted { compacted: self.meta.compacted });
        }
        if at > self.meta.revision {
            return Err(MvccError::FutureRevision { requested: at, current: self.meta.revision });
        }
        Ok(())
    }

    fn event(&self, rev: Revision, sub: u32) -> Result<Event, MvccError> {
        let raw = self.revs.get((rev, sub))?.ok_or_else(|| MvccError::Engine(format!("revision {rev} is missing")))?;
        decode_event(rev, raw.value())
    }

    /// `key` at revision `at` (0: the latest).
    pub fn get(&self, key: &str, at: Revision) -> Result<Option<KeyValue>, MvccError> {
        if at == 0 || at == self.meta.revision {
            let Some(m) = self.keys.get(key.as_bytes())? else { return Ok(None) };
            let m = KeyMeta::decode(m.value())?;
            return Ok(self.event(m.mod_revision, m.mod_sub)?.key_value());
        }
        self.check_revision(at)?;
        let k = key.as_bytes();
        let newest = self.key_revs.range((k, 0, 0)..=(k, at, u32::MAX))?.next_back().transpose()?;
        let Some((found, _)) = newest else { return Ok(None) };
        let (_, rev, sub) = found.value();
        Ok(self.event(rev, sub)?.key_value())
    }

    /// The history from revision `from` on (0: from the oldest kept), at most `limit`
    /// events and about `max_bytes`. Refused when compaction removed part of it.
    pub fn history(&self, from: Revision, limit: usize, max_bytes: usize) -> Result<HistoryPage, MvccError> {
        if from <= self.meta.compacted && self.meta.compacted > 0 {
            return Err(MvccError::Compacted { compacted: self.meta.compacted });
        }
        let mut page = HistoryPage::default();
        let mut bytes = 0;
        for item in self.revs.range((from, 0)..)? {
            let (k, v) = item?;
            let (rev, _) = k.value();
            let size = v.value().len();
            if page.events.len() >= limit || (bytes + size > max_bytes && !page.events.is_empty()) {
                page.next = rev;
                break;
            }
            bytes += size;
            page.events.push(decode_event(rev, v.value())?);
        }
        Ok(page)
    }

    /// The newest events whose encoded size adds up to at most `max_bytes`, oldest
    /// first, and whether older history exists that they leave out (or that compaction
    /// removed).
    pub fn history_tail(&self, max_bytes: usize) -> Result<(Vec<Event>, bool), MvccError> {
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut cut = false;
        for item in self.revs.range((self.meta.compacted + 1, 0)..)?.rev() {
            let (k, v) = item?;
            let (rev, _) = k.value();
            bytes += v.value().len();
            if bytes > max_bytes {
                cut = true;
                break;
            }
            events.push(decode_event(rev, v.value())?);
        }
        events.reverse();
        Ok((events, cut || self.meta.compacted > 0))
    }

    /// A hash of the keyspace at revision `at` (0: the latest), like etcd's HashKV:
    /// members that applied the same history agree on it at every revision.
    pub fn hash(&self, at: Revision) -> Result<u32, MvccError> {
        let at = if at == 0 { self.meta.revision } else { at };
        self.check_revision(at)?;
        let mut h = crc32fast::Hasher::new();
        let mut current: Option<(Vec<u8>, u64, u32)> = None;
        let add = |h: &mut crc32fast::Hasher, found: Option<(Vec<u8>, u64, u32)>| -> Result<(), MvccError> {
            if let Some((_, rev, sub)) = found {
                if let Some(kv) = self.event(rev, sub)?.key_value() {
                    h.update(kv.key.as_bytes());
                    h.update(&(kv.key.len() as u64).to_le_bytes());
                    for v in [kv.create_revision, kv.mod_revision, kv.version, kv.value.len() as u64] {
                        h.update(&v.to_le_bytes());
                    }
                    h.update(kv.value.as_bytes());
                }
            }
            Ok(())
        };
        for item in self.key_revs.iter()? {
            let (k, _) = item?;
            let (key, rev, sub) = k.value();
            if current.as_ref().is_some_and(|(c, _, _)| c != key) {
                add(&mut h, current.take())?;
            }
            if rev <= at {
                current = Some((key.to_vec(), rev, sub));
            }
        }
        add(&mut h, current)?;
        h.update(&at.to_le_bytes());
        Ok(h.finalize())
    }
}
