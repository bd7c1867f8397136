//! Reads: a consistent view of the store at its applied index (an engine snapshot).
use std::sync::Arc;

use fjall::{Readable, Snapshot};

use super::lease::lease_key;
use super::record::{decode_event, decode_key_rev_key, decode_rev_key, key_prefix, key_rev_key, rev_key, KeyMeta};
use super::store::{Engine, Meta};
use super::{Event, KeyValue, MvccError, Revision};
use crate::config::MAX_KEY_BYTES;
use crate::raft::Membership;
use crate::raft::{Index, Term};

/// One page of the history.
#[derive(Debug, Default)]
pub struct HistoryPage {
    pub events: Vec<Event>,
    /// The revision the next page starts at; 0 when this page reaches the end.
    pub next: Revision,
}

/// Which keys a range read covers (etcd's `key` and `range_end`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// One key.
    Key(Vec<u8>),
    /// Keys in `[start, end)`; `end` None: every key from `start` on.
    Span { start: Vec<u8>, end: Option<Vec<u8>> },
}

impl KeyRange {
    /// From etcd's encoding: an empty `range_end` is one key, `"\0"` every key from
    /// `key` on, anything else `[key, range_end)`.
    pub fn from_etcd(key: &[u8], range_end: &[u8]) -> KeyRange {
        match range_end {
            [] => KeyRange::Key(key.to_vec()),
            [0] => KeyRange::Span { start: key.to_vec(), end: None },
            end => KeyRange::Span { start: key.to_vec(), end: Some(end.to_vec()) },
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Key(key) => k == key.as_slice(),
            KeyRange::Span { start, end } => k >= start.as_slice() && end.as_ref().is_none_or(|e| k < e.as_slice()),
        }
    }

    /// Bounds for the engine: (first, one past the last) in `keys`' order; None when
    /// no key can be in the range (one key that is empty or longer than any stored).
    /// The engine takes no key past 64 KiB: a bound longer than any stored key is cut
    /// to its first `MAX_KEY_BYTES` bytes and a 0, and the same stored keys fall
    /// within it.
    fn bounds(&self) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
        let cut = |b: &[u8]| {
            if b.len() <= MAX_KEY_BYTES {
                return b.to_vec();
            }
            let mut c = b[..MAX_KEY_BYTES].to_vec();
            c.push(0);
            c
        };
        match self {
            KeyRange::Key(k) if !storable(k) => None,
            KeyRange::Key(k) => {
                let mut next = k.clone();
                next.push(0);
                Some((k.clone(), Some(next)))
            }
            KeyRange::Span { start, end } => Some((cut(start), end.as_deref().map(cut))),
        }
    }
}

/// Whether a key can be stored (puts refuse others); the engine takes none past 64 KiB.
fn storable(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_BYTES
}

/// What a range read found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResult {
    /// In key order, at most the limit asked.
    pub kvs: Vec<KeyValue>,
    /// Every key in the range (the limit does not apply).
    pub count: u64,
    /// Whether the limit left keys out.
    pub more: bool,
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

    /// Every record of keyspace `ks` as stored: (key, value).
    pub(super) fn raw<'a>(
        &'a self,
        ks: &'a fjall::Keyspace,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), MvccError>> + 'a {
        self.snap.iter(ks).map(|g| {
            let (k, v) = g.into_inner()?;
            Ok((k.to_vec(), v.to_vec()))
        })
    }

    /// The membership recorded as of this view's applied index.
    pub fn membership(&self) -> Result<Option<Membership>, MvccError> {
        match self.snap.get(&self.engine.meta, super::store::MEMBERSHIP_KEY)? {
            Some(v) => Membership::decode(&v).map(Some).map_err(|e| MvccError::Engine(e.to_string())),
            None => Ok(None),
        }
    }

    pub(super) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The keys of keyspace `ks` that start with `prefix`, as stored.
    pub(super) fn raw_prefix<'a>(
        &'a self,
        ks: &'a fjall::Keyspace,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<Vec<u8>, MvccError>> + 'a {
        self.snap.prefix(ks, prefix).map(|g| Ok(g.key()?.to_vec()))
    }

    /// The keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<String>, MvccError> {
        let mut keys = Vec::new();
        for item in self.snap.prefix(&self.engine.lease_keys, lease_key(id)) {
            let k = item.key()?;
            let key = std::str::from_utf8(&k[8..])
                .map_err(|_| MvccError::Engine("damaged lease key record in the store".into()))?;
            // The index follows every write; checked against the key all the same.
            if self.get(key, 0)?.is_some_and(|kv| kv.lease == id) {
                keys.push(key.to_string());
            }
        }
        Ok(keys)
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

    /// A live key's metadata at the latest revision (its value unread).
    pub(super) fn key_meta(&self, key: &[u8]) -> Result<Option<KeyMeta>, MvccError> {
        self.snap.get(&self.engine.keys, key)?.map(|m| KeyMeta::decode(&m)).transpose()
    }

    /// The live key `key` whose record is `record`, as the latest revision holds it:
    /// its value from the record if kept there, else from its history event.
    fn live(&self, key: &[u8], record: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        let (m, inline) = KeyMeta::decode_record(record)?;
        let Some(inline) = inline else { return Ok(self.event(m.mod_revision, m.mod_sub)?.key_value()) };
        let key = std::str::from_utf8(key).map_err(|_| MvccError::Engine("damaged key record in the store".into()))?;
        Ok(Some(KeyValue {
            key: key.to_string(),
            value: inline.value.to_string(),
            json: inline.json,
            create_revision: m.create_revision,
            mod_revision: m.mod_revision,
            version: m.version,
            lease: m.lease,
        }))
    }

    /// The live key `key` whose record is `record`, its value left out and never read
    /// (a keys-only range: a value too large for the record would take a read of its
    /// history event).
    fn live_key(&self, key: &[u8], record: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        let m = KeyMeta::decode(record)?;
        let key = std::str::from_utf8(key).map_err(|_| MvccError::Engine("damaged key record in the store".into()))?;
        Ok(Some(KeyValue {
            key: key.to_string(),
            value: String::new(),
            json: false,
            create_revision: m.create_revision,
            mod_revision: m.mod_revision,
            version: m.version,
            lease: m.lease,
        }))
    }

    /// `key` at revision `at` (0: the latest).
    pub fn get(&self, key: &str, at: Revision) -> Result<Option<KeyValue>, MvccError> {
        let unstorable = !storable(key.as_bytes());
        if at == 0 || at == self.meta.revision {
            if unstorable {
                return Ok(None);
            }
            let Some(record) = self.snap.get(&self.engine.keys, key)? else { return Ok(None) };
            return self.live(key.as_bytes(), &record);
        }
        self.check_revision(at)?;
        if unstorable {
            return Ok(None);
        }
        let k = key.as_bytes();
        let versions = key_prefix(k)..=key_rev_key(k, at, u32::MAX);
        let Some(newest) = self.snap.range(&self.engine.key_revs, versions).next_back() else { return Ok(None) };
        let (_, rev, sub) = decode_key_rev_key(&newest.key()?)?;
        Ok(self.event(rev, sub)?.key_value())
    }

    /// The live keys of `range` at revision `at` (0: the latest), at most `limit` of
    /// them (0: all), values included unless `keys_only`; every key is counted.
    pub fn range(
        &self,
        range: &KeyRange,
        at: Revision,
        limit: usize,
        keys_only: bool,
    ) -> Result<RangeResult, MvccError> {
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut out = RangeResult::default();
        let take = |out: &mut RangeResult, kv: Option<KeyValue>| {
            if let Some(mut kv) = kv {
                out.count += 1;
                if out.kvs.len() < limit {
                    if keys_only {
                        kv.value.clear();
                    }
                    out.kvs.push(kv);
                } else {
                    out.more = true;
                }
            }
        };
        let latest = at == 0 || at == self.meta.revision;
        if !latest {
            self.check_revision(at)?;
        }
        if let (true, KeyRange::Key(k)) = (latest, range) {
            // A point read: the engine's filters skip the tables without the key, which
            // a scan of one key's range would still search.
            if !storable(k) {
                return Ok(out);
            }
            if let Some(record) = self.snap.get(&self.engine.keys, k)? {
                let kv = if keys_only { self.live_key(k, &record)? } else { self.live(k, &record)? };
                take(&mut out, kv);
            }
            return Ok(out);
        }
        let Some((start, end)) = range.bounds() else { return Ok(out) };
        if latest {
            let items = match &end {
                Some(e) if *e <= start => return Ok(out),
                Some(e) => self.snap.range(&self.engine.keys, start.clone()..e.clone()),
                None => self.snap.range(&self.engine.keys, start.clone()..),
            };
            for item in items {
                let (k, record) = item.into_inner()?;
                if out.kvs.len() >= limit {
                    // Past the limit a live key is only counted: its value is not read.
                    KeyMeta::decode(&record)?;
                    out.count += 1;
                    out.more = true;
                    continue;
                }
                let kv = if keys_only { self.live_key(&k, &record)? } else { self.live(&k, &record)? };
                take(&mut out, kv);
            }
            return Ok(out);
        }
        if end.as_ref().is_some_and(|e| *e <= start) {
            return Ok(out);
        }
        // Each key's newest version at or below `at`, in key order.
        let lo = key_prefix(&start);
        let items = match &end {
            Some(e) => self.snap.range(&self.engine.key_revs, lo..key_prefix(e)),
            None => self.snap.range(&self.engine.key_revs, lo..),
        };
        let mut current: Option<(Vec<u8>, Revision, u32)> = None;
        for item in items {
            let (key, rev, sub) = decode_key_rev_key(&item.key()?)?;
            if current.as_ref().is_some_and(|(c, _, _)| *c != key) {
                let (_, r, s) = current.take().expect("checked");
                take(&mut out, self.event(r, s)?.key_value());
            }
            if rev <= at {
                current = Some((key, rev, sub));
            }
        }
        if let Some((_, r, s)) = current {
            take(&mut out, self.event(r, s)?.key_value());
        }
        Ok(out)
    }

    /// The history from revision `from` on (0: from the oldest kept), at most `limit`
    /// events and about `max_bytes`, except that a page always holds whole revisions
    /// (more events when one revision has more). Refused when compaction removed part
    /// of it.
    pub fn history(&self, from: Revision, limit: usize, max_bytes: usize) -> Result<HistoryPage, MvccError> {
        if from <= self.meta.compacted && self.meta.compacted > 0 {
            return Err(MvccError::Compacted { compacted: self.meta.compacted });
        }
        let mut page = HistoryPage::default();
        let mut bytes = 0;
        for item in self.snap.range(&self.engine.revs, rev_key(from, 0)..) {
            let (k, v) = item.into_inner()?;
            let (rev, _) = decode_rev_key(&k)?;
            let full = page.events.len() >= limit || (bytes + v.len() > max_bytes && !page.events.is_empty());
            // A page never ends inside a revision (a transaction's events share one):
            // the next page starts at a revision of its own, and every page advances.
            if full && page.events.last().is_none_or(|last| last.revision != rev) {
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
                    if kv.lease != 0 {
                        h.update(&kv.lease.to_le_bytes());
                    }
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
