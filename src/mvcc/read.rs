//! Reads: a consistent view of the store at its applied index (an engine snapshot).
use std::sync::Arc;

use fjall::{Readable, Snapshot};

use super::record::{decode_event, decode_key_rev_key, decode_rev_key, key_prefix, key_rev_key, rev_key, KeyMeta};
use super::store::{Engine, Meta};
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
    engine: Arc<Engine>,
    snap: Snapshot,
}

impl ReadView {
    pub(super) fn new(engine: Arc<Engine>) -> Result<ReadView, MvccError> {
        let snap = engine.db.snapshot();
        let meta = engine.load_meta(&snap)?;
        Ok(ReadView { meta, engine, snap })
    }

    pub(super) fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Every history event in revision order: (revision, sub, encoded event).
    pub(super) fn raw_history(&self) -> impl Iterator<Item = Result<(Revision, u32, Vec<u8>), MvccError>> + '_ {
        self.snap.iter(&self.engine.revs).map(|g| {
            let (k, v) = g.into_inner()?;
            let (rev, sub) = decode_rev_key(&k)?;
            Ok((rev, sub, v.to_vec()))
        })
    }

    /// Every open client session: (id as stored, encoded session).
    pub(super) fn raw_sessions(&self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), MvccError>> + '_ {
        self.snap.iter(&self.engine.sessions).map(|g| {
            let (k, v) = g.into_inner()?;
            Ok((k.to_vec(), v.to_vec()))
        })
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
        let raw = self
            .snap
            .get(&self.engine.revs, rev_key(rev, sub))?
            .ok_or_else(|| MvccError::Engine(format!("revision {rev} is missing")))?;
        decode_event(rev, &raw)
    }

    /// `key` at revision `at` (0: the latest).
    pub fn get(&self, key: &str, at: Revision) -> Result<Option<KeyValue>, MvccError> {
        if at == 0 || at == self.meta.revision {
            let Some(m) = self.snap.get(&self.engine.keys, key.as_bytes())? else { return Ok(None) };
            let m = KeyMeta::decode(&m)?;
            return Ok(self.event(m.mod_revision, m.mod_sub)?.key_value());
        }
        self.check_revision(at)?;
        let k = key.as_bytes();
        let versions = key_prefix(k)..=key_rev_key(k, at, u32::MAX);
        let Some(newest) = self.snap.range(&self.engine.key_revs, versions).next_back() else { return Ok(None) };
        let (_, rev, sub) = decode_key_rev_key(&newest.key()?)?;
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
        for item in self.snap.range(&self.engine.revs, rev_key(from, 0)..) {
            let (k, v) = item.into_inner()?;
            let (rev, _) = decode_rev_key(&k)?;
            if page.events.len() >= limit || (bytes + v.len() > max_bytes && !page.events.is_empty()) {
                page.next = rev;
                break;
            }
            bytes += v.len();
            page.events.push(decode_event(rev, &v)?);
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
        for item in self.snap.range(&self.engine.revs, rev_key(self.meta.compacted + 1, 0)..).rev() {
            let (k, v) = item.into_inner()?;
            let (rev, _) = decode_rev_key(&k)?;
            bytes += v.len();
            if bytes > max_bytes {
                cut = true;
                break;
            }
            events.push(decode_event(rev, &v)?);
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
        let add = |h: &mut crc32fast::Hasher, found: Option<(Vec<u8>, u64, u32)>| -> Result<(), MvccError> {
            if let Some((_, rev, sub)) = found {
                if let Some(kv) = self.event(rev, sub)?.key_value() {
                    h.update(&(kv.key.len() as u64).to_le_bytes());
                    h.update(kv.key.as_bytes());
                    for v in [kv.create_revision, kv.mod_revision, kv.version, kv.value.len() as u64] {
                        h.update(&v.to_le_bytes());
                    }
                    h.update(kv.value.as_bytes());
                }
            }
            Ok(())
        };
        // Each key's newest version at or below `at`, in key order.
        let mut current: Option<(Vec<u8>, u64, u32)> = None;
        for item in self.snap.iter(&self.engine.key_revs) {
            let (key, rev, sub) = decode_key_rev_key(&item.key()?)?;
            if current.as_ref().is_some_and(|(c, _, _)| *c != key) {
                add(&mut h, current.take())?;
            }
            if rev <= at {
                current = Some((key, rev, sub));
            }
        }
        add(&mut h, current)?;
        h.update(&at.to_le_bytes());
        Ok(h.finalize())
    }
}
