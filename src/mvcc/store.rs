//! The engine (a fjall database), its write path (apply, checkpoint, compaction) and
//! its swap for an installed snapshot. One thread writes (the node's applier); any
//! thread reads.
//!
//! A node's engine lives in `kv-<generation>/`; the file `kv.current` names the one in
//! use. Installing a snapshot builds the next generation beside it and switches
//! `kv.current` with one atomic rename, so a crash leaves either the old or the new
//! state; other generations are removed when the store opens or installs.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use fjall::config::PinningPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use tokio::sync::watch;

use super::lease::{Granted, LeaseMap, Leases, LEASE_BYTES};
use super::read::KeyRange;
use super::record::{
    decode_event, decode_key_rev_key, decode_rev_key, encode_event, key_prefix, key_rev_key, rev_key, KeyMeta,
};
use super::session::{Session, Sessions, Verdict};
use super::txn::{attach, Applying, Txn, TxnOp, TxnResult};
use super::{Command, Event, EventKind, MvccError, ReadView, Revision};
use crate::raft::{Entry, EntryKind, Index, Membership, Term};

/// Names the engine directory in use.
const CURRENT: &str = "kv.current";
const META_KEY: &[u8] = b"meta";
/// The cluster's membership as of the applied index (the last configuration entry
/// applied, or the founding members): beside the meta record, in the same batches.
pub(super) const MEMBERSHIP_KEY: &[u8] = b"membership";
/// The revision of an empty store (etcd's: its first write is revision 2).
const FIRST_REVISION: Revision = 1;
/// Compaction removes at most this many history events per batch.
const COMPACT_BATCH: usize = 10_000;

/// The `meta` record: where the state machine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Meta {
    pub applied: Index,
    pub applied_term: Term,
    pub revision: Revision,
    pub compacted: Revision,
    /// History events at or below this revision have been examined by compaction.
    pub compact_cursor: Revision,
    /// Bytes of keys and values stored (history included), for the quota.
    pub stored_bytes: u64,
    /// Log time: the latest leader clock (ms) among the session entries applied.
    pub session_clock: u64,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            applied: 0,
            applied_term: 0,
            revision: FIRST_REVISION,
            compacted: 0,
            compact_cursor: 0,
            stored_bytes: 0,
            session_clock: 0,
        }
    }
}

impl Meta {
    pub fn encode(&self) -> [u8; 56] {
        let mut b = [0u8; 56];
        let v = [
            self.applied,
            self.applied_term,
            self.revision,
            self.compacted,
            self.compact_cursor,
            self.stored_bytes,
            self.session_clock,
        ];
        for (chunk, v) in b.chunks_mut(8).zip(v) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Also reads the 48-byte record of stores made before sessions (clock 0).
    pub fn decode(b: &[u8]) -> Result<Meta, MvccError> {
        if b.len() != 48 && b.len() != 56 {
            return Err(MvccError::Engine("damaged meta record in the store".into()));
        }
        let v: Vec<u64> = b.chunks(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        Ok(Meta {
            applied: v[0],
            applied_term: v[1],
            revision: v[2],
            compacted: v[3],
            compact_cursor: v[4],
            stored_bytes: v[5],
            session_clock: v.get(6).copied().unwrap_or(0),
        })
    }
}

/// What applying a client entry did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub index: Index,
    pub term: Term,
    /// The store's revision after the entry (a write's own revision).
    pub revision: Revision,
    /// A transaction's answer.
    pub txn: Option<Arc<TxnResult>>,
}

impl Applied {
    pub fn new(index: Index, term: Term, revision: Revision) -> Applied {
        Applied { index, term, revision, txn: None }
    }
}

/// Cheap figures for Status and the quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStatus {
    pub applied: Index,
    pub revision: Revision,
    pub compacted: Revision,
    /// Bytes of keys and values stored, history included.
    pub stored_bytes: u64,
    /// The engine's files on disk, as of the last checkpoint.
    pub file_bytes: u64,
}

/// One open engine directory and its keyspaces.
pub(super) struct Engine {
    pub db: Database,
    pub meta: Keyspace,
    pub keys: Keyspace,
    pub revs: Keyspace,
    pub key_revs: Keyspace,
    pub sessions: Keyspace,
    pub leases: Keyspace,
    pub lease_keys: Keyspace,
}

impl Engine {
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<Engine, MvccError> {
        let cache = cache_bytes as u64;
        // A batch's journal bytes stay in the journal's buffer until it fills, a
        // memtable flush syncs the journal first (so no table holds what the journal
        // lacks) or a checkpoint does: the Raft log is the write-ahead log, and a crash
        // loses at most what was applied since the last checkpoint however much reached
        // the OS (fjall's recovery cuts a torn tail).
        let db = Database::builder(dir)
            .cache_size(cache / 2)
            .max_journaling_size(64 << 20)
            .manual_journal_persist(true)
            .open()?;
        let memtable = (cache / 8).max(1 << 20);
        // Filter and index blocks go through the block cache rather than being pinned,
        // so memory is bounded by the cache, not by the amount of data.
        let ks = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(if name == "keys" { 2 * memtable } else { memtable })
                    .filter_block_pinning_policy(PinningPolicy::all(false))
                    .index_block_pinning_policy(PinningPolicy::all(false))
            })
        };
        Ok(Engine {
            meta: ks("meta")?,
            keys: ks("keys")?,
            revs: ks("revs")?,
            key_revs: ks("key_revs")?,
            sessions: ks("sessions")?,
            leases: ks("leases")?,
            lease_keys: ks("lease_keys")?,
            db,
        })
    }

    pub fn load_meta(&self, r: &impl Readable) -> Result<Meta, MvccError> {
        match r.get(&self.meta, META_KEY)? {
            Some(v) => Meta::decode(&v),
            None => Ok(Meta::default()),
        }
    }
}

pub struct Store {
    dir: PathBuf,
    cache_bytes: usize,
    /// Replaced whole when a snapshot is installed (readers hold the old one
    /// meanwhile); None once closed.
    engine: RwLock<Option<Arc<Engine>>>,
    /// The applier's copy of the meta record (it is the only writer).
    meta: Mutex<Meta>,
    /// The applier's copy of the open client sessions.
    sessions: Mutex<Sessions>,
    /// The applier's copy of the granted leases.
    leases: Mutex<Leases>,
    /// A copy of them for readers (the lessor), replaced after each batch that changed
    /// them: readers never wait for the applier.
    leases_published: RwLock<Arc<LeaseMap>>,
    applied: watch::Sender<Index>,
    revision: AtomicU64,
    compacted: AtomicU64,
    compact_cursor: AtomicU64,
    stored_bytes: AtomicU64,
    file_bytes: AtomicU64,
    /// The last durable (checkpointed) meta.
    durable: RwLock<Meta>,
}

fn generation_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Removes engine directories other than those in `keep`: older generations and builds
/// a crash interrupted.
fn remove_other_generations(dir: &Path, keep: &[&str]) -> Result<(), MvccError> {
    for ent in std::fs::read_dir(dir)? {
        let ent = ent?;
        let name = ent.file_name().to_string_lossy().to_string();
        let is_dir = ent.file_type()?.is_dir();
        let stale_dir = is_dir && name.starts_with("kv-") && !keep.contains(&name.as_str());
        let stale_file = !is_dir && name.ends_with(".receiving");
        if stale_dir {
            std::fs::remove_dir_all(ent.path())?;
        } else if stale_file {
            std::fs::remove_file(ent.path())?;
        }
    }
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

impl Store {
    /// Opens (or creates) the store in `dir`. Its durable state is what the last
    /// checkpoint wrote; the caller replays the log from its applied index.
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<Store, MvccError> {
        std::fs::create_dir_all(dir)?;
        let current = match std::fs::read_to_string(dir.join(CURRENT)) {
            Ok(name) => name.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "kv-0".to_string(),
            Err(e) => return Err(e.into()),
        };
        if !current.starts_with("kv-") || current.contains('/') {
            return Err(MvccError::Engine(format!("{}: names {current:?}, not an engine", CURRENT)));
        }
        remove_other_generations(dir, &[&current])?;
        let engine = Engine::open(&generation_dir(dir, &current), cache_bytes)?;
        let meta = engine.load_meta(&engine.db.snapshot())?;
        let sessions = Sessions::load(&engine.db.snapshot(), &engine.sessions)?;
        let leases = Leases::load(&engine.db.snapshot(), &engine.leases)?;
        let store = Store {
            dir: dir.to_path_buf(),
            cache_bytes,
            engine: RwLock::new(Some(Arc::new(engine))),
            meta: Mutex::new(meta),
            sessions: Mutex::new(sessions),
            leases_published: RwLock::new(Arc::new(leases.all().clone())),
            leases: Mutex::new(leases),
            applied: watch::channel(meta.applied).0,
            revision: AtomicU64::new(0),
            compacted: AtomicU64::new(0),
            compact_cursor: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            file_bytes: AtomicU64::new(dir_bytes(&generation_dir(dir, &current))),
            durable: RwLock::new(meta),
        };
        store.publish(&meta);
        Ok(store)
    }

    pub(super) fn engine(&self) -> Result<Arc<Engine>, MvccError> {
        self.engine.read().unwrap().clone().ok_or_else(|| MvccError::Engine("the store is closed".into()))
    }

    /// Closes the engine (once the last read in flight ends): the node stopped.
    pub fn close(&self) {
        self.engine.write().unwrap().take();
    }

    fn publish(&self, m: &Meta) {
        self.revision.store(m.revision, Ordering::Relaxed);
        self.compacted.store(m.compacted, Ordering::Relaxed);
        self.compact_cursor.store(m.compact_cursor, Ordering::Relaxed);
        self.stored_bytes.store(m.stored_bytes, Ordering::Relaxed);
        self.applied.send_replace(m.applied);
    }

    /// A consistent read view of the applied state.
    pub fn read(&self) -> Result<ReadView, MvccError> {
        ReadView::new(self.engine()?)
    }

    pub fn applied(&self) -> Index {
        *self.applied.borrow()
    }

    /// Follows the applied index (to wait until a read index is applied).
    pub fn applied_watch(&self) -> watch::Receiver<Index> {
        self.applied.subscribe()
    }

    /// Every lease that exists, as of the last applied batch.
    pub fn leases(&self) -> Arc<LeaseMap> {
        self.leases_published.read().unwrap().clone()
    }

    /// Lease `id`, if it exists.
    pub fn lease(&self, id: i64) -> Option<Granted> {
        self.leases_published.read().unwrap().get(&id).copied()
    }

    pub fn status(&self) -> StoreStatus {
        StoreStatus {
            applied: self.applied(),
            revision: self.revision.load(Ordering::Relaxed),
            compacted: self.compacted.load(Ordering::Relaxed),
            stored_bytes: self.stored_bytes.load(Ordering::Relaxed),
            file_bytes: self.file_bytes.load(Ordering::Relaxed),
        }
    }

    /// The applied (index, term) as of the last checkpoint: what a crash keeps.
    pub fn durable(&self) -> (Index, Term) {
        let m = self.durable.read().unwrap();
        (m.applied, m.applied_term)
    }

    /// Applies committed entries in order, each exactly once (entries at or below the
    /// applied index are skipped), in one atomic batch that records the applied index.
    /// Not durable: a checkpoint is. Returns the outcome of each client entry; a
    /// compaction that asks for a compacted or future revision fails without effect.
    #[allow(clippy::type_complexity)]
    pub fn apply(&self, entries: &[Entry]) -> Result<Vec<(Index, Result<Applied, MvccError>)>, MvccError> {
        self.apply_answering(entries, |_| true)
    }

    /// `apply`, where only the entries `answered` holds for have anyone waiting here:
    /// the others change the store alike, but a transaction's put among them does not
    /// read the value it replaces, and its answer holds no previous key, unless the put
    /// keeps that value (`ignore_value`). A follower applies most entries for nobody.
    #[allow(clippy::type_complexity)]
    pub fn apply_answering(
        &self,
        entries: &[Entry],
        answered: impl Fn(Index) -> bool,
    ) -> Result<Vec<(Index, Result<Applied, MvccError>)>, MvccError> {
        let engine = self.engine()?;
        let mut meta_guard = self.meta.lock().unwrap();
        let mut meta = *meta_guard;
        let mut sessions = self.sessions.lock().unwrap();
        let mut leases = self.leases.lock().unwrap();
        let mut leases_changed = false;
        let mut batch = engine.db.batch();
        // A batch does not read its own writes: keys written earlier in it are here.
        let mut written: HashMap<String, Option<KeyMeta>> = HashMap::new();
        let mut out = Vec::new();
        let before = meta.applied;
        // The applied index the engine holds (what a transaction's read view sees).
        let mut committed = meta.applied;
        // A read view of the engine as of `committed`, shared by the transactions
        // until the next commit.
        let mut view: Option<(Index, ReadView)> = None;
        for e in entries {
            if e.index <= meta.applied {
                continue;
            }
            if e.index != meta.applied + 1 {
                return Err(MvccError::Engine(format!("entry {} applied after {}", e.index, meta.applied)));
            }
            let prev_term = meta.applied_term;
            meta.applied = e.index;
            meta.applied_term = e.term;
            if e.kind == EntryKind::ConfChange {
                batch.insert(&engine.meta, MEMBERSHIP_KEY, &e.data[..]);
            }
            if e.kind != EntryKind::Normal {
                continue;
            }
            let Some(command) = Command::decode(&e.data) else {
                tracing::error!(index = e.index, "undecodable command in the log; skipped");
                continue;
            };
            let outcome = match command {
                Command::Compact { revision } => {
                    if revision <= meta.compacted {
                        Err(MvccError::Compacted { compacted: meta.compacted })
                    } else if revision > meta.revision {
                        Err(MvccError::FutureRevision { requested: revision, current: meta.revision })
                    } else {
                        meta.compacted = revision;
                        Ok(Applied::new(e.index, e.term, meta.revision))
                    }
                }
                Command::OpenSession { time_ms, ttl_ms, max_sessions } => {
                    meta.session_clock = meta.session_clock.max(time_ms);
                    sessions.expire(meta.session_clock, &mut batch, &engine.sessions);
                    let answer = Applied::new(e.index, e.term, meta.revision);
                    let session =
                        Session { last_seq: 0, last_active: meta.session_clock, ttl_ms, answer: answer.clone() };
                    // The session's id is this entry's index.
                    sessions.open(e.index, session, max_sessions, &mut batch, &engine.sessions).map(|()| answer)
                }
                Command::Session { client, seq, time_ms, write } => {
                    meta.session_clock = meta.session_clock.max(time_ms);
                    sessions.expire(meta.session_clock, &mut batch, &engine.sessions);
                    match sessions.verdict(client, seq) {
                        Verdict::Apply => {
                            let a = write_one(&engine, &mut batch, &mut written, &mut meta, e, *write)?;
                            sessions.record(client, seq, meta.session_clock, a.clone(), &mut batch, &engine.sessions);
                            Ok(a)
                        }
                        Verdict::Duplicate(a) => Ok(a),
                        Verdict::Refused(why) => Err(why),
                    }
                }
                Command::Txn(txn) => {
                    // A transaction reads the engine. One that writes single keys none of
                    // the writes since the batch's last engine commit touched, and cannot
                    // be refused, reads only what the engine holds already: it joins the
                    // batch (an etcd Put is one).
                    // Any other goes after everything applied before it, its meta included
                    // (a compaction writes nothing else, yet changes what the transaction
                    // may read). Else members that batch entries differently would decide
                    // differently.
                    let joins = txn.blind(&leases, |k| !written.contains_key(k));
                    if !joins {
                        flush_before(&engine, &mut batch, &meta, (e.index, prev_term), &mut committed, &mut written)?;
                    }
                    if view.as_ref().is_none_or(|(at, _)| *at != committed) {
                        view = Some((committed, ReadView::new(engine.clone())?));
                    }
                    let (_, txn_view) = view.as_ref().expect("made above");
                    let mut txn_meta = meta;
                    let mut applying =
                        Applying::new(&engine, txn_view, &mut batch, &mut txn_meta, e, &leases, answered(e.index));
                    match applying.run(&txn) {
                        Ok(result) => {
                            let (revision, metas) = applying.finish();
                            meta = txn_meta;
                            if joins {
                                // Later entries of this batch find what it wrote here.
                                written.extend(metas);
                            } else {
                                // Later entries of this batch read the engine for what it wrote.
                                commit_with(&engine, &mut batch, &meta)?;
                                committed = e.index;
                            }
                            Ok(Applied { index: e.index, term: e.term, revision, txn: Some(Arc::new(result)) })
                        }
                        Err(e @ MvccError::Engine(_)) => return Err(e),
                        // Its writes cannot be taken out of the batch it joined.
                        Err(refused) if joins => {
                            return Err(MvccError::Engine(format!(
                                "entry {}: a transaction that cannot be refused was: {refused}",
                                e.index
                            )))
                        }
                        Err(refused) => {
                            // Nothing of it is kept.
                            batch = engine.db.batch();
                            Err(refused)
                        }
                    }
                }
                Command::LeaseGrant { id, ttl } => {
                    match leases.grant(id, Granted { ttl, since: e.index }, &mut batch, &engine.leases) {
                        Ok(()) => {
                            leases_changed = true;
                            meta.stored_bytes += LEASE_BYTES;
                            Ok(Applied::new(e.index, e.term, meta.revision))
                        }
                        Err(refused) => Err(refused),
                    }
                }
                Command::LeaseRevoke { id, since } if !leases.current(id, since) => Err(MvccError::LeaseNotFound),
                Command::LeaseRevoke { id, .. } => {
                    // Its keys are found in the engine: what this batch wrote goes in first.
                    flush_before(&engine, &mut batch, &meta, (e.index, prev_term), &mut committed, &mut written)?;
                    let view = ReadView::new(engine.clone())?;
                    let keys = view.lease_keys(id)?;
                    let stale: Vec<Vec<u8>> =
                        view.raw_prefix(&engine.lease_keys, &super::lease::lease_key(id)).collect::<Result<_, _>>()?;
                    // Every key is deleted at one revision, as one transaction.
                    let txn = Txn {
                        success: keys
                            .into_iter()
                            .map(|k| TxnOp::Delete { range: KeyRange::Key(k.into_bytes()) })
                            .collect(),
                        ..Txn::default()
                    };
                    let mut txn_meta = meta;
                    let mut applying = Applying::new(&engine, &view, &mut batch, &mut txn_meta, e, &leases, false);
                    applying.run(&txn)?;
                    let (revision, _) = applying.finish();
                    meta = txn_meta;
                    for k in stale {
                        batch.remove(&engine.lease_keys, k);
                    }
                    leases.remove(id, &mut batch, &engine.leases);
                    leases_changed = true;
                    meta.stored_bytes = meta.stored_bytes.saturating_sub(LEASE_BYTES);
                    commit_with(&engine, &mut batch, &meta)?;
                    committed = e.index;
                    Ok(Applied::new(e.index, e.term, revision))
                }
                write => Ok(write_one(&engine, &mut batch, &mut written, &mut meta, e, write)?),
            };
            out.push((e.index, outcome));
        }
        if meta.applied == before {
            return Ok(out);
        }
        // Its engine snapshot need not outlive the batch.
        drop(view);
        commit_with(&engine, &mut batch, &meta)?;
        *meta_guard = meta;
        drop(meta_guard);
        drop(sessions);
        if leases_changed {
            *self.leases_published.write().unwrap() = Arc::new(leases.all().clone());
        }
        drop(leases);
        self.publish(&meta);
        // Compaction keeps pace with the writes that feed it.
        if self.compaction_pending() {
            self.compact(2 * entries.len() + 256)?;
        }
        Ok(out)
    }

    /// Whether a write may have to wait for the engine: a memtable is being flushed
    /// (at four queued, writes halt until one is) or level 0 fills up (writes slow
    /// down at 20 tables). Such writes belong on the applier's thread. (fjall 3.1
    /// marks the two counts `doc(hidden)`; Cargo.lock pins the version.)
    pub fn engine_busy(&self) -> bool {
        let Ok(engine) = self.engine() else { return true };
        [
            &engine.keys,
            &engine.revs,
            &engine.key_revs,
            &engine.meta,
            &engine.sessions,
            &engine.leases,
            &engine.lease_keys,
        ]
        .iter()
        .any(|k| k.sealed_memtable_count() > 0 || k.l0_table_count() >= 16)
    }

    /// Whether history below the compacted revision is still to be removed.
    pub fn compaction_pending(&self) -> bool {
        self.compact_cursor.load(Ordering::Relaxed) < self.compacted.load(Ordering::Relaxed)
    }

    /// Removes a batch of compacted history (when the applier is idle).
    pub fn compact_some(&self) -> Result<(), MvccError> {
        self.compact(COMPACT_BATCH)
    }

    /// Removes up to `budget` events of compacted history: every event at or below the
    /// compacted revision that a later event of its key at or below it supersedes, and
    /// every tombstone there. A key's newest version at the compacted revision stays,
    /// so reads at that revision still see it.
    fn compact(&self, budget: usize) -> Result<(), MvccError> {
        let engine = self.engine()?;
        let mut meta_guard = self.meta.lock().unwrap();
        let mut meta = *meta_guard;
        if meta.compact_cursor >= meta.compacted {
            return Ok(());
        }
        let snap = engine.db.snapshot();
        let lo = rev_key(meta.compact_cursor + 1, 0);
        let hi = rev_key(meta.compacted, u32::MAX);
        let mut examined = Vec::new();
        for item in snap.range(&engine.revs, lo..=hi).take(budget) {
            let (k, v) = item.into_inner()?;
            let (rev, sub) = decode_rev_key(&k)?;
            examined.push((rev, sub, decode_event(rev, &v)?));
        }
        let mut batch = engine.db.batch();
        let mut removed = std::collections::HashSet::new();
        for (rev, sub, event) in &examined {
            let key = event.key.as_bytes();
            // Every older version of the key is superseded by this one, which is at or
            // below the compacted revision. (An earlier pass, under a lower compacted
            // revision, may have kept one: removing this event while it stayed would
            // bring a deleted key back in reads of the past.)
            for older in snap.range(&engine.key_revs, key_prefix(key)..key_rev_key(key, *rev, *sub)) {
                let (_, r, s) = decode_key_rev_key(&older.key()?)?;
                if removed.insert((r, s)) {
                    if let Some(v) = snap.get(&engine.revs, rev_key(r, s))? {
                        meta.stored_bytes = meta.stored_bytes.saturating_sub(decode_event(r, &v)?.stored_bytes());
                    }
                    batch.remove(&engine.revs, rev_key(r, s).as_slice());
                    batch.remove(&engine.key_revs, key_rev_key(key, r, s));
                }
            }
            let later = key_rev_key(key, *rev, sub + 1)..=key_rev_key(key, meta.compacted, u32::MAX);
            let superseded = snap.range(&engine.key_revs, later).next().is_some();
            if (superseded || event.kind == EventKind::Delete) && removed.insert((*rev, *sub)) {
                batch.remove(&engine.revs, rev_key(*rev, *sub).as_slice());
                batch.remove(&engine.key_revs, key_rev_key(key, *rev, *sub));
                meta.stored_bytes = meta.stored_bytes.saturating_sub(event.stored_bytes());
            }
        }
        // A batch cut inside a revision's sub-revisions examines that revision again.
        meta.compact_cursor = match (examined.len() < budget, examined.last()) {
            (true, _) | (_, None) => meta.compacted,
            (false, Some((rev, _, _))) => (*rev - 1).max(meta.compact_cursor + 1),
        };
        commit_with(&engine, &mut batch, &meta)?;
        *meta_guard = meta;
        drop(meta_guard);
        self.publish(&meta);
        Ok(())
    }

    /// The membership as of the applied index, if one was recorded.
    pub fn membership(&self) -> Result<Option<Membership>, MvccError> {
        self.read()?.membership()
    }

    /// Records the founding membership of a store that has none (a new node, or one
    /// from before membership changes): valid as of any index, since no configuration
    /// entry was ever applied to it. Durable when it returns.
    pub fn found_membership(&self, m: &Membership) -> Result<(), MvccError> {
        let engine = self.engine()?;
        if self.membership()?.is_some() {
            return Ok(());
        }
        let mut batch = engine.db.batch();
        batch.insert(&engine.meta, MEMBERSHIP_KEY, &m.encode()[..]);
        batch.commit()?;
        engine.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Makes everything applied durable (one fsync of the engine's journal); returns the
    /// durable applied (index, term). The log may then be compacted up to that index.
    pub fn checkpoint(&self) -> Result<(Index, Term), MvccError> {
        let engine = self.engine()?;
        let meta = *self.meta.lock().unwrap();
        engine.db.persist(PersistMode::SyncAll)?;
        *self.durable.write().unwrap() = meta;
        self.measure_disk();
        Ok((meta.applied, meta.applied_term))
    }

    /// Refreshes the engine's size on disk (a walk of its directory).
    pub fn measure_disk(&self) {
        self.file_bytes.store(dir_bytes(&self.dir.join(self.current_name())), Ordering::Relaxed);
    }

    /// A new engine directory for a snapshot being received, unique to this install.
    pub fn install_path(&self) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("kv-{}-{n}", std::process::id()))
    }

    pub(super) fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// Replaces the state by a built snapshot (verified, durable, already open):
    /// `kv.current` is switched to it with one atomic rename. Returns the new applied
    /// (index, term).
    pub fn install(&self, mut built: super::snapshot::Built) -> Result<(Index, Term), MvccError> {
        let path = built.path.clone();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .filter(|n| n.starts_with("kv-") && path.parent() == Some(self.dir.as_path()))
            .ok_or_else(|| MvccError::Engine(format!("{} is not an engine of this store", path.display())))?;
        let engine = built.engine.take().ok_or_else(|| MvccError::Engine("snapshot installed twice".into()))?;
        let meta = engine.load_meta(&engine.db.snapshot())?;
        let sessions = Sessions::load(&engine.db.snapshot(), &engine.sessions)?;
        let leases = Leases::load(&engine.db.snapshot(), &engine.leases)?;
        let old = self.current_name();
        let mut slot = self.engine.write().unwrap();
        let tmp = self.dir.join(format!("{CURRENT}.tmp"));
        std::fs::write(&tmp, format!("{name}\n"))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(CURRENT))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        // Readers of the old state keep it until they are done, so its directory stays
        // until the next install or start; any older one goes now.
        *slot = Some(Arc::new(engine));
        drop(slot);
        *self.meta.lock().unwrap() = meta;
        *self.sessions.lock().unwrap() = sessions;
        *self.leases_published.write().unwrap() = Arc::new(leases.all().clone());
        *self.leases.lock().unwrap() = leases;
        *self.durable.write().unwrap() = meta;
        self.publish(&meta);
        remove_other_generations(&self.dir, &[&name, &old])?;
        self.measure_disk();
        Ok((meta.applied, meta.applied_term))
    }

    fn current_name(&self) -> String {
        std::fs::read_to_string(self.dir.join(CURRENT)).map_or_else(|_| "kv-0".to_string(), |s| s.trim().to_string())
    }
}

/// Commits what `batch` holds of the entries before entry `index` (whose predecessor
/// has term `prev_term`), with the meta record as of that predecessor, unless the engine
/// already holds them: a command that reads the engine (a transaction, a revoke) then
/// decides as it would alone, however the entries were batched.
fn flush_before(
    engine: &Engine,
    batch: &mut fjall::OwnedWriteBatch,
    meta: &Meta,
    (index, prev_term): (Index, Term),
    committed: &mut Index,
    written: &mut HashMap<String, Option<KeyMeta>>,
) -> Result<(), MvccError> {
    if index - 1 > *committed {
        commit_with(engine, batch, &Meta { applied: index - 1, applied_term: prev_term, ..*meta })?;
        written.clear();
        *committed = index - 1;
    }
    Ok(())
}

/// Commits `batch` with `meta` as the meta record, in one atomic engine batch, and
/// leaves a fresh batch in its place.
fn commit_with(engine: &Engine, batch: &mut fjall::OwnedWriteBatch, meta: &Meta) -> Result<(), MvccError> {
    batch.insert(&engine.meta, META_KEY, meta.encode().as_slice());
    std::mem::replace(batch, engine.db.batch()).commit()?;
    Ok(())
}

/// Applies one plain write (a put or a delete) of entry `e` into `batch`: the next
/// revision, the key's metadata and the history event. Deleting an absent key writes
/// nothing and makes no revision (as etcd).
fn write_one(
    engine: &Engine,
    batch: &mut fjall::OwnedWriteBatch,
    written: &mut HashMap<String, Option<KeyMeta>>,
    meta: &mut Meta,
    e: &Entry,
    write: Command,
) -> Result<Applied, MvccError> {
    let (kind, key, value) = match write {
        Command::Put { key, value } => (EventKind::Put, key, value),
        Command::PutJson { key, json } => (EventKind::PutJson, key, json),
        Command::Delete { key } => (EventKind::Delete, key, String::new()),
        other => return Err(MvccError::Engine(format!("not a plain write: {other:?}"))),
    };
    let old = match written.get(&key) {
        Some(m) => *m,
        None => engine.keys.get(key.as_bytes())?.map(|v| KeyMeta::decode(&v)).transpose()?,
    };
    if kind == EventKind::Delete && old.is_none() {
        return Ok(Applied::new(e.index, e.term, meta.revision));
    }
    // A plain write leaves the key with no lease.
    attach(engine, batch, key.as_bytes(), old.map_or(0, |m| m.lease), 0);
    let revision = meta.revision + 1;
    let (create_revision, version) = match (kind, old) {
        (EventKind::Delete, _) => (0, 0),
        (_, Some(m)) => (m.create_revision, m.version + 1),
        (_, None) => (revision, 1),
    };
    let event = Event { revision, kind, index: e.index, term: e.term, key, value, create_revision, version, lease: 0 };
    let key = event.key.as_bytes();
    if kind == EventKind::Delete {
        batch.remove(&engine.keys, key);
        written.insert(event.key.clone(), None);
    } else {
        let m = KeyMeta { create_revision, mod_revision: revision, mod_sub: 0, version, lease: 0 };
        batch.insert(&engine.keys, key, m.encode_record(kind == EventKind::PutJson, &event.value).as_slice());
        written.insert(event.key.clone(), Some(m));
    }
    batch.insert(&engine.revs, rev_key(revision, 0).as_slice(), encode_event(&event));
    batch.insert(&engine.key_revs, key_rev_key(key, revision, 0), [].as_slice());
    meta.stored_bytes += event.stored_bytes();
    meta.revision = revision;
    Ok(Applied::new(e.index, e.term, revision))
}
