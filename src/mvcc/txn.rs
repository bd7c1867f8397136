//! Transactions, etcd's Txn: compares evaluated against the current state, then the
//! operations of one branch (puts, range deletes, ranges, nested transactions), all at
//! one revision (writes numbered by sub-revision). A transaction that fails part-way
//! (a put with `ignore_value` on a missing key) changes nothing.
use std::collections::BTreeMap;

use super::codec::{Dec, Enc};
use super::lease::{lease_key_key, Leases};
use super::read::{KeyRange, RangeResult, ReadView};
use super::record::{encode_event, key_rev_key, rev_key, KeyMeta};
use super::store::{Engine, Meta};
use super::{Event, EventKind, KeyValue, MvccError, Revision};
use crate::raft::Entry;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(String),
    Lease(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Equal,
    Greater,
    Less,
    NotEqual,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub range: KeyRange,
    pub cmp: Cmp,
    pub target: Target,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Range {
        range: KeyRange,
        revision: Revision,
        limit: u64,
        keys_only: bool,
    },
    /// `value` None keeps the key's value (etcd's `ignore_value`), `lease` None its
    /// lease (`ignore_lease`); either needs the key to exist. Lease 0 is none.
    Put {
        key: String,
        value: Option<String>,
        lease: Option<i64>,
    },
    Delete {
        range: KeyRange,
    },
    Txn(Box<Txn>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    Range(RangeResult),
    /// The key before the put (None also when nobody on this node waits for the answer,
    /// unless the put keeps the value, `ignore_value`).
    Put {
        prev: Option<KeyValue>,
    },
    /// The keys deleted, as they were.
    Delete {
        prevs: Vec<KeyValue>,
    },
    Txn(TxnResult),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    pub results: Vec<OpResult>,
}

impl Txn {
    /// The operations of both branches, nested transactions included.
    fn ops(&self) -> impl Iterator<Item = &TxnOp> {
        self.success.iter().chain(&self.failure)
    }

    /// Whether the transaction only reads (it then needs no revision, nor the log).
    pub fn read_only(&self) -> bool {
        self.ops().all(|op| match op {
            TxnOp::Range { .. } => true,
            TxnOp::Txn(t) => t.read_only(),
            _ => false,
        })
    }

    /// Whether every key it puts is one the engine can hold (not empty, at most
    /// `MAX_KEY_BYTES`).
    pub fn puts_storable(&self) -> bool {
        self.ops().all(|op| match op {
            TxnOp::Put { key, .. } => !key.is_empty() && key.len() <= crate::config::MAX_KEY_BYTES,
            TxnOp::Txn(t) => t.puts_storable(),
            _ => true,
        })
    }

    /// Whether the transaction only writes single keys, cannot be refused, and writes
    /// only keys for which `untouched` holds: no compares, puts that carry their value
    /// and no lease or one that exists, deletes of one key (an etcd Put or DeleteRange
    /// of one key is one). It reads nothing but the current state of those keys.
    pub(super) fn blind(&self, leases: &Leases, untouched: impl Fn(&str) -> bool) -> bool {
        self.compares.is_empty()
            && self.success.iter().all(|op| match op {
                TxnOp::Put { key, value: Some(_), lease: Some(l) } => (*l == 0 || leases.exists(*l)) && untouched(key),
                TxnOp::Delete { range: KeyRange::Key(k) } => std::str::from_utf8(k).is_ok_and(&untouched),
                _ => false,
            })
    }

    /// Whether any write may add data (for the quota).
    pub fn grows_the_store(&self) -> bool {
        self.ops().any(|op| match op {
            TxnOp::Put { .. } => true,
            TxnOp::Txn(t) => t.grows_the_store(),
            _ => false,
        })
    }
}

fn compare_holds(c: &Compare, kv: Option<&KeyValue>) -> bool {
    use std::cmp::Ordering;
    let ord = match (&c.target, kv) {
        // etcd: a value compare on a missing key always fails.
        (Target::Value(_), None) => return false,
        (Target::Value(v), Some(kv)) => kv.value.as_bytes().cmp(v.as_bytes()),
        (Target::Version(v), kv) => (kv.map_or(0, |k| k.version as i64)).cmp(v),
        (Target::Create(v), kv) => (kv.map_or(0, |k| k.create_revision as i64)).cmp(v),
        (Target::Mod(v), kv) => (kv.map_or(0, |k| k.mod_revision as i64)).cmp(v),
        (Target::Lease(v), kv) => kv.map_or(0, |k| k.lease).cmp(v),
    };
    match c.cmp {
        Cmp::Equal => ord == Ordering::Equal,
        Cmp::Greater => ord == Ordering::Greater,
        Cmp::Less => ord == Ordering::Less,
        Cmp::NotEqual => ord != Ordering::Equal,
    }
}

/// Whether every compare holds in `view` (a compare over a range: for every key).
fn compares_hold(view: &ReadView, compares: &[Compare]) -> Result<bool, MvccError> {
    for c in compares {
        let found = view.range(&c.range, 0, 0, false)?;
        let holds = if found.kvs.is_empty() {
            compare_holds(c, None)
        } else {
            found.kvs.iter().all(|kv| compare_holds(c, Some(kv)))
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Answers a transaction that only reads (`Txn::read_only`) from `view`, without the
/// log (as etcd does, after a linearizable read barrier).
pub fn read_only(view: &ReadView, txn: &Txn) -> Result<TxnResult, MvccError> {
    let succeeded = compares_hold(view, &txn.compares)?;
    let ops = if succeeded { &txn.success } else { &txn.failure };
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(match op {
            TxnOp::Range { range, revision, limit, keys_only } => {
                OpResult::Range(view.range(range, *revision, *limit as usize, *keys_only)?)
            }
            TxnOp::Txn(t) => OpResult::Txn(read_only(view, t)?),
            TxnOp::Put { .. } | TxnOp::Delete { .. } => {
                return Err(MvccError::Engine("a write in a read-only transaction".into()))
            }
        });
    }
    Ok(TxnResult { succeeded, results })
}

/// A transaction being applied: the engine as of before it, and its own writes.
pub(super) struct Applying<'a> {
    pub engine: &'a Engine,
    pub view: &'a ReadView,
    pub batch: &'a mut fjall::OwnedWriteBatch,
    pub meta: &'a mut Meta,
    pub entry: &'a Entry,
    pub leases: &'a Leases,
    /// Whether anyone on this node waits for the answer: if not, a put does not read
    /// the value it replaces (unless it keeps it, `ignore_value`).
    answer: bool,
    /// Keys this transaction wrote: their state now and the sub-revision that wrote it
    /// (None: deleted).
    written: BTreeMap<String, Option<(KeyValue, u32)>>,
    /// The revision its writes get, and the next sub-revision.
    revision: Revision,
    sub: u32,
}

impl<'a> Applying<'a> {
    pub fn new(
        engine: &'a Engine,
        view: &'a ReadView,
        batch: &'a mut fjall::OwnedWriteBatch,
        meta: &'a mut Meta,
        entry: &'a Entry,
        leases: &'a Leases,
        answer: bool,
    ) -> Self {
        let revision = meta.revision + 1;
        Applying { engine, view, batch, meta, entry, leases, answer, written: BTreeMap::new(), revision, sub: 0 }
    }

    /// Runs `txn`; Err(refusal) leaves the batch to be dropped by the caller.
    pub fn run(&mut self, txn: &Txn) -> Result<TxnResult, MvccError> {
        let succeeded = compares_hold(self.view, &txn.compares)?;
        let ops = if succeeded { &txn.success } else { &txn.failure };
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                TxnOp::Range { range, revision, limit, keys_only } => {
                    OpResult::Range(self.range(range, *revision, *limit as usize, *keys_only)?)
                }
                TxnOp::Put { key, value, lease } => {
                    // The value it replaces is read only if answered or kept.
                    let needs_value = self.answer || value.is_none();
                    let prev = if needs_value { self.current(key)? } else { None };
                    let prior = if needs_value { prev.as_ref().map(Prior::from) } else { self.prior(key)? };
                    // A value kept (`ignore_value`) stays what it was, a JSON text included.
                    let (value, json) = match (value, &prev) {
                        (Some(v), _) => (v.clone(), false),
                        (None, Some(p)) => (p.value.clone(), p.json),
                        (None, None) => return Err(MvccError::KeyNotFound),
                    };
                    let lease = match (lease, prior) {
                        (Some(l), _) => *l,
                        (None, Some(p)) => p.lease,
                        (None, None) => return Err(MvccError::KeyNotFound),
                    };
                    if lease != 0 && !self.leases.exists(lease) {
                        return Err(MvccError::LeaseNotFound);
                    }
                    self.write(key, Some((value, lease, json)), prior);
                    OpResult::Put { prev }
                }
                TxnOp::Delete { range } => {
                    let prevs = self.range(range, 0, 0, false)?.kvs;
                    for kv in &prevs {
                        self.write(&kv.key, None, Some(Prior::from(kv)));
                    }
                    OpResult::Delete { prevs }
                }
                TxnOp::Txn(t) => OpResult::Txn(self.run(t)?),
            });
        }
        Ok(TxnResult { succeeded, results })
    }

    /// The revision the store is at after this transaction, and each key it wrote as
    /// the engine now holds it (None: deleted).
    pub fn finish(self) -> (Revision, impl Iterator<Item = (String, Option<KeyMeta>)> + use<>) {
        if self.sub > 0 {
            self.meta.revision = self.revision;
        }
        let metas = self.written.into_iter().map(|(key, w)| {
            let meta = w.map(|(kv, mod_sub)| KeyMeta {
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                mod_sub,
                version: kv.version,
                lease: kv.lease,
            });
            (key, meta)
        });
        (self.meta.revision, metas)
    }

    /// `key` as this transaction sees it.
    fn current(&self, key: &str) -> Result<Option<KeyValue>, MvccError> {
        match self.written.get(key) {
            Some(w) => Ok(w.as_ref().map(|(kv, _)| kv.clone())),
            None => self.view.get(key, 0),
        }
    }

    /// What a write of `key` needs of it, as this transaction sees it (its value unread).
    fn prior(&self, key: &str) -> Result<Option<Prior>, MvccError> {
        match self.written.get(key) {
            Some(w) => Ok(w.as_ref().map(|(kv, _)| Prior::from(kv))),
            None => Ok(self.view.key_meta(key.as_bytes())?.map(|m| Prior {
                create_revision: m.create_revision,
                version: m.version,
                lease: m.lease,
            })),
        }
    }

    /// A range as this transaction sees it: its own writes over the state before it
    /// (for the latest revision; a past one is read as it was).
    fn range(&self, range: &KeyRange, at: Revision, limit: usize, keys_only: bool) -> Result<RangeResult, MvccError> {
        let latest = at == 0;
        if !latest || self.written.is_empty() {
            return self.view.range(range, if latest { 0 } else { at }, limit, keys_only);
        }
        let mut all: BTreeMap<Vec<u8>, KeyValue> =
            self.view.range(range, 0, 0, false)?.kvs.into_iter().map(|kv| (kv.key.clone().into_bytes(), kv)).collect();
        for (k, w) in self.written.iter().filter(|(k, _)| range.contains(k.as_bytes())) {
            match w {
                Some((kv, _)) => all.insert(k.clone().into_bytes(), kv.clone()),
                None => all.remove(k.as_bytes()),
            };
        }
        let limit = if limit == 0 { usize::MAX } else { limit };
        let count = all.len() as u64;
        let mut kvs: Vec<KeyValue> = all.into_values().take(limit).collect();
        if keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        let more = (kvs.len() as u64) < count;
        Ok(RangeResult { kvs, count, more })
    }

    /// Writes `key` (a put of `(value, lease, json)`, or a delete) as the next
    /// sub-revision.
    fn write(&mut self, key: &str, put: Option<(String, i64, bool)>, prev: Option<Prior>) {
        let (rev, sub) = (self.revision, self.sub);
        self.sub += 1;
        let e = self.entry;
        let (value, lease, json) = match put {
            Some((v, l, json)) => (Some(v), l, json),
            None => (None, 0, false),
        };
        let put = if json { EventKind::PutJson } else { EventKind::Put };
        let (kind, create_revision, version) = match (&value, prev) {
            (None, _) => (EventKind::Delete, 0, 0),
            (Some(_), Some(p)) => (put, p.create_revision, p.version + 1),
            (Some(_), None) => (put, rev, 1),
        };
        let event = Event {
            revision: rev,
            kind,
            index: e.index,
            term: e.term,
            key: key.to_string(),
            value: value.clone().unwrap_or_default(),
            create_revision,
            version,
            lease,
        };
        let k = key.as_bytes();
        let m = value.as_ref().map(|_| KeyMeta { create_revision, mod_revision: rev, mod_sub: sub, version, lease });
        match &m {
            None => self.batch.remove(&self.engine.keys, k),
            Some(m) => self.batch.insert(&self.engine.keys, k, m.encode_record(json, &event.value).as_slice()),
        }
        attach(self.engine, self.batch, k, prev.map_or(0, |p| p.lease), lease);
        self.batch.insert(&self.engine.revs, rev_key(rev, sub).as_slice(), encode_event(&event));
        self.batch.insert(&self.engine.key_revs, key_rev_key(k, rev, sub), [].as_slice());
        self.meta.stored_bytes += event.stored_bytes();
        self.written.insert(event.key.clone(), event.key_value().map(|kv| (kv, sub)));
    }
}

/// What a write needs of the key it replaces.
#[derive(Clone, Copy)]
struct Prior {
    create_revision: Revision,
    version: u64,
    lease: i64,
}

impl From<&KeyValue> for Prior {
    fn from(kv: &KeyValue) -> Prior {
        Prior { create_revision: kv.create_revision, version: kv.version, lease: kv.lease }
    }
}

/// Moves `key`'s entry in `lease_keys` from lease `old` to lease `new` (0: none).
pub(super) fn attach(engine: &Engine, batch: &mut fjall::OwnedWriteBatch, key: &[u8], old: i64, new: i64) {
    if old == new {
        return;
    }
    if old != 0 {
        batch.remove(&engine.lease_keys, lease_key_key(old, key));
    }
    if new != 0 {
        batch.insert(&engine.lease_keys, lease_key_key(new, key), [].as_slice());
    }
}

// The log's encoding of a transaction.

fn enc_range(e: &mut Enc, r: &KeyRange) {
    match r {
        KeyRange::Key(k) => {
            e.u8(0);
            e.bytes(k);
        }
        KeyRange::Span { start, end } => {
            e.u8(1);
            e.bytes(start);
            e.opt_bytes(end.as_deref());
        }
    }
}

fn dec_range(d: &mut Dec) -> Option<KeyRange> {
    match d.u8()? {
        0 => Some(KeyRange::Key(d.bytes()?)),
        1 => Some(KeyRange::Span { start: d.bytes()?, end: d.opt_bytes()? }),
        _ => None,
    }
}

fn enc_ops(e: &mut Enc, ops: &[TxnOp]) {
    e.u64(ops.len() as u64);
    for op in ops {
        match op {
            TxnOp::Range { range, revision, limit, keys_only } => {
                e.u8(1);
                enc_range(e, range);
                e.u64(*revision);
                e.u64(*limit);
                e.u8(*keys_only as u8);
            }
            TxnOp::Put { key, value, lease: Some(0) } => {
                e.u8(2);
                e.bytes(key.as_bytes());
                e.opt_bytes(value.as_deref().map(str::as_bytes));
            }
            TxnOp::Put { key, value, lease } => {
                e.u8(5);
                e.bytes(key.as_bytes());
                e.opt_bytes(value.as_deref().map(str::as_bytes));
                match lease {
                    Some(l) => e.tagged_i64(1, *l),
                    None => e.u8(0),
                }
            }
            TxnOp::Delete { range } => {
                e.u8(3);
                enc_range(e, range);
            }
            TxnOp::Txn(t) => {
                e.u8(4);
                t.encode_into(e);
            }
        }
    }
}

fn dec_ops(d: &mut Dec, depth: u32) -> Option<Vec<TxnOp>> {
    let n = d.len()?;
    let mut ops = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        ops.push(match d.u8()? {
            1 => TxnOp::Range { range: dec_range(d)?, revision: d.u64()?, limit: d.u64()?, keys_only: d.u8()? != 0 },
            2 => TxnOp::Put { key: d.string()?, value: d.opt_string()?, lease: Some(0) },
            5 => TxnOp::Put {
                key: d.string()?,
                value: d.opt_string()?,
                lease: match d.u8()? {
                    0 => None,
                    1 => Some(d.i64()?),
                    _ => return None,
                },
            },
            3 => TxnOp::Delete { range: dec_range(d)? },
            4 if depth < MAX_DEPTH => TxnOp::Txn(Box::new(Txn::decode_from(d, depth + 1)?)),
            _ => return None,
        });
    }
    Some(ops)
}

/// Nested transactions deeper than this are refused (etcd bounds them by the op count).
pub const MAX_DEPTH: u32 = 16;

impl Txn {
    pub(super) fn encode_into(&self, e: &mut Enc) {
        e.u64(self.compares.len() as u64);
        for c in &self.compares {
            enc_range(e, &c.range);
            e.u8(c.cmp as u8);
            match &c.target {
                Target::Version(v) => e.tagged_i64(0, *v),
                Target::Create(v) => e.tagged_i64(1, *v),
                Target::Mod(v) => e.tagged_i64(2, *v),
                Target::Lease(v) => e.tagged_i64(3, *v),
                Target::Value(v) => {
                    e.u8(4);
                    e.bytes(v.as_bytes());
                }
            }
        }
        enc_ops(e, &self.success);
        enc_ops(e, &self.failure);
    }

    pub(super) fn decode_from(d: &mut Dec, depth: u32) -> Option<Txn> {
        let n = d.len()?;
        let mut compares = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let range = dec_range(d)?;
            let cmp = match d.u8()? {
                0 => Cmp::Equal,
                1 => Cmp::Greater,
                2 => Cmp::Less,
                3 => Cmp::NotEqual,
                _ => return None,
            };
            let target = match d.u8()? {
                0 => Target::Version(d.i64()?),
                1 => Target::Create(d.i64()?),
                2 => Target::Mod(d.i64()?),
                3 => Target::Lease(d.i64()?),
                4 => Target::Value(d.string()?),
                _ => return None,
            };
            compares.push(Compare { range, cmp, target });
        }
        Some(Txn { compares, success: dec_ops(d, depth)?, failure: dec_ops(d, depth)? })
    }
}

// A transaction's answer, as a forwarding node receives it from the leader.

fn enc_kv(e: &mut Enc, kv: &KeyValue) {
    e.bytes(kv.key.as_bytes());
    e.bytes(kv.value.as_bytes());
    e.u8(kv.json as u8);
    for v in [kv.create_revision, kv.mod_revision, kv.version] {
        e.u64(v);
    }
    e.u64(kv.lease as u64);
}

fn dec_kv(d: &mut Dec) -> Option<KeyValue> {
    Some(KeyValue {
        key: d.string()?,
        value: d.string()?,
        json: d.u8()? != 0,
        create_revision: d.u64()?,
        mod_revision: d.u64()?,
        version: d.u64()?,
        lease: d.i64()?,
    })
}

fn enc_kvs(e: &mut Enc, kvs: &[KeyValue]) {
    e.u64(kvs.len() as u64);
    kvs.iter().for_each(|kv| enc_kv(e, kv));
}

fn dec_kvs(d: &mut Dec) -> Option<Vec<KeyValue>> {
    let n = d.len()?;
    (0..n).map(|_| dec_kv(d)).collect()
}

impl TxnResult {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        self.encode_into(&mut e);
        e.into_inner()
    }

    fn encode_into(&self, e: &mut Enc) {
        e.u8(self.succeeded as u8);
        e.u64(self.results.len() as u64);
        for r in &self.results {
            match r {
                OpResult::Range(r) => {
                    e.u8(1);
                    enc_kvs(e, &r.kvs);
                    e.u64(r.count);
                    e.u8(r.more as u8);
                }
                OpResult::Put { prev } => {
                    e.u8(2);
                    enc_kvs(e, prev.as_slice());
                }
                OpResult::Delete { prevs } => {
                    e.u8(3);
                    enc_kvs(e, prevs);
                }
                OpResult::Txn(t) => {
                    e.u8(4);
                    t.encode_into(e);
                }
            }
        }
    }

    pub fn decode(b: &[u8]) -> Option<TxnResult> {
        let mut d = Dec::new(b);
        let r = Self::decode_from(&mut d, 0)?;
        d.is_empty().then_some(r)
    }

    fn decode_from(d: &mut Dec, depth: u32) -> Option<TxnResult> {
        let succeeded = d.u8()? != 0;
        let n = d.len()?;
        let mut results = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            results.push(match d.u8()? {
                1 => OpResult::Range(RangeResult { kvs: dec_kvs(d)?, count: d.u64()?, more: d.u8()? != 0 }),
                2 => OpResult::Put { prev: dec_kvs(d)?.pop() },
                3 => OpResult::Delete { prevs: dec_kvs(d)? },
                4 if depth < MAX_DEPTH => OpResult::Txn(Self::decode_from(d, depth + 1)?),
                _ => return None,
            });
        }
        Some(TxnResult { succeeded, results })
    }
}
