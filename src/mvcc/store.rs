//! The engine file, its write path (apply, checkpoint, compaction) and its swap for an
//! installed snapshot. One thread writes (the node's applier); any thread reads.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::watch;

use super::record::{decode_event, encode_event, KeyMeta};
use super::{Command, Event, EventKind, MvccError, ReadView, Revision};
use crate::raft::{Entry, EntryKind, Index, Term};

pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("keys");
pub(super) const REVS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("revs");
pub(super) const KEY_REVS: TableDefinition<(&[u8], u64, u32), ()> = TableDefinition::new("key_revs");

/// The engine file inside a node's data directory.
pub const FILE: &str = "kv.redb";
pub(super) const FORMAT: u64 = 1;
/// The revision of an empty store (etcd's: its first write is revision 2).
const FIRST_REVISION: Revision = 1;
/// Compaction removes at most this many history events per transaction.
const COMPACT_BATCH: usize = 10_000;

/// The `meta` table, as one value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Meta {
    pub applied: Index,
    pub applied_term: Term,
    pub revision: Revision,
    pub compacted: Revision,
    /// History events at or below this revision have been examined by compaction.
    pub compact_cursor: Revision,
    /// Bytes of keys and values stored (history included), for the quota.
    pub stored_bytes: u64,
}

const META_FIELDS: [&str; 6] = ["applied", "applied_term", "revision", "compacted", "compact_cursor", "stored_bytes"];

impl Meta {
    pub fn load(t: &impl ReadableTable<&'static str, u64>) -> Result<Meta, MvccError> {
        let mut v = [0u64; 6];
        for (slot, name) in v.iter_mut().zip(META_FIELDS) {
            *slot = t.get(name)?.map(|g| g.value()).unwrap_or(0);
        }
        Ok(Meta {
            applied: v[0],
            applied_term: v[1],
            revision: v[2].max(FIRST_REVISION),
            compacted: v[3],
            compact_cursor: v[4],
            stored_bytes: v[5],
        })
    }

    pub fn fields(&self) -> [(&'static str, u64); 6] {
        let v =
            [self.applied, self.applied_term, self.revision, self.compacted, self.compact_cursor, self.stored_bytes];
        let mut out = [("", 0); 6];
        for (slot, (name, value)) in out.iter_mut().zip(META_FIELDS.into_iter().zip(v)) {
            *slot = (name, value);
        }
        out
    }

    /// The inverse of `fields`; None if one is missing.
    pub fn from_fields(fields: &[(String, u64)]) -> Option<Meta> {
        let get = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        Some(Meta {
            applied: get("applied")?,
            applied_term: get("applied_term")?,
            revision: get("revision")?,
            compacted: get("compacted")?,
            compact_cursor: get("compact_cursor")?,
            stored_bytes: get("stored_bytes")?,
        })
    }

    pub fn save(&self, t: &mut redb::Table<&'static str, u64>) -> Result<(), MvccError> {
        for (name, value) in self.fields() {
            t.insert(name, value)?;
        }
        Ok(())
    }
}

/// What applying a client entry did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub index: Index,
    pub term: Term,
    /// The store's revision after the entry (a write's own revision).
    pub revision: Revision,
}

/// Cheap figures for Status and the quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStatus {
    pub applied: Index,
    pub revision: Revision,
    pub compacted: Revision,
    /// Bytes of keys and values stored, history included.
    pub stored_bytes: u64,
    /// The engine file's size at the last checkpoint.
    pub file_bytes: u64,
}

pub struct Store {
    dir: PathBuf,
    cache_bytes: usize,
    /// Replaced whole when a snapshot is installed (readers hold the old one
    /// meanwhile); None once closed.
    db: RwLock<Option<Arc<Database>>>,
    applied: watch::Sender<Index>,
    revision: AtomicU64,
    compacted: AtomicU64,
    compact_cursor: AtomicU64,
    stored_bytes: AtomicU64,
    file_bytes: AtomicU64,
    /// The last durable (checkpointed) meta.
    durable: RwLock<Meta>,
}

fn open_db(path: &Path, cache_bytes: usize) -> Result<Database, MvccError> {
    let db = redb::Builder::new().set_cache_size(cache_bytes).create(path)?;
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut meta = txn.open_table(META)?;
        let format = meta.get("format")?.map(|g| g.value());
        match format {
            None => {
                meta.insert("format", FORMAT)?;
            }
            Some(FORMAT) => {}
            Some(f) => return Err(MvccError::Engine(format!("{}: unknown store format {f}", path.display()))),
        }
        txn.open_table(KEYS)?;
        txn.open_table(REVS)?;
        txn.open_table(KEY_REVS)?;
    }
    txn.commit()?;
    Ok(db)
}

impl Store {
    /// Opens (or creates) the store in `dir`. Its durable state is what the last
    /// checkpoint wrote; the caller replays the log from its applied index.
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<Store, MvccError> {
        std::fs::create_dir_all(dir)?;
        // Installs that a crash interrupted never replaced anything: drop them.
        for ent in std::fs::read_dir(dir)? {
            let path = ent?.path();
            if path.extension().is_some_and(|e| e == "installing" || e == "receiving") {
                std::fs::remove_file(&path)?;
            }
        }
        let db = open_db(&dir.join(FILE), cache_bytes)?;
        let meta = Meta::load(&db.begin_read()?.open_table(META)?)?;
        let store = Store {
            dir: dir.to_path_buf(),
            cache_bytes,
            db: RwLock::new(Some(Arc::new(db))),
            applied: watch::channel(meta.applied).0,
            revision: AtomicU64::new(0),
            compacted: AtomicU64::new(0),
            compact_cursor: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            file_bytes: AtomicU64::new(0),
            durable: RwLock::new(meta),
        };
        store.publish(&meta);
        store.file_bytes.store(std::fs::metadata(dir.join(FILE))?.len(), Ordering::Relaxed);
        Ok(store)
    }

    fn db(&self) -> Result<Arc<Database>, MvccError> {
        self.db.read().unwrap().clone().ok_or_else(|| MvccError::Engine("the store is closed".into()))
    }

    /// Closes the engine file (once the last read in flight ends): the node stopped.
    pub fn close(&self) {
        self.db.write().unwrap().take();
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
        ReadView::new(self.db()?.begin_read()?)
    }

    pub fn applied(&self) -> Index {
        *self.applied.borrow()
    }

    /// Follows the applied index (to wait until a read index is applied).
    pub fn applied_watch(&self) -> watch::Receiver<Index> {
        self.applied.subscribe()
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

    fn begin_write(db: &Database, durability: Durability) -> Result<WriteTransaction, MvccError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(durability)?;
        txn.set_quick_repair(true);
        Ok(txn)
    }

    /// Applies committed entries in order, each exactly once (entries at or below the
    /// applied index are skipped), in one transaction that records the applied index.
    /// Not durable: a checkpoint is. Returns the outcome of each client entry; a
    /// compaction that asks for a compacted or future revision fails without effect.
    #[allow(clippy::type_complexity)]
    pub fn apply(&self, entries: &[Entry]) -> Result<Vec<(Index, Result<Applied, MvccError>)>, MvccError> {
        let db = self.db()?;
        let txn = Self::begin_write(&db, Durability::None)?;
        let mut out = Vec::new();
        let mut meta;
        {
            let mut meta_t = txn.open_table(META)?;
            let mut keys = txn.open_table(KEYS)?;
            let mut revs = txn.open_table(REVS)?;
            let mut key_revs = txn.open_table(KEY_REVS)?;
            meta = Meta::load(&meta_t)?;
            let before = meta.applied;
            for e in entries {
                if e.index <= meta.applied {
                    continue;
                }
                if e.index != meta.applied + 1 {
                    return Err(MvccError::Engine(format!("entry {} applied after {}", e.index, meta.applied)));
                }
                meta.applied = e.index;
                meta.applied_term = e.term;
                if e.kind != EntryKind::Normal {
                    continue;
                }
                let Some(command) = Command::decode(&e.data) else {
                    tracing::error!(index = e.index, "undecodable command in the log; skipped");
                    continue;
                };
                let kind = match &command {
                    Command::Put { .. } => EventKind::Put,
                    Command::PutJson { .. } => EventKind::PutJson,
                    Command::Delete { .. } => EventKind::Delete,
                    Command::Compact { revision } => {
                        let r = if *revision <= meta.compacted {
                            Err(MvccError::Compacted { compacted: meta.compacted })
                        } else if *revision > meta.revision {
                            Err(MvccError::FutureRevision { requested: *revision, current: meta.revision })
                        } else {
                            meta.compacted = *revision;
                            Ok(Applied { index: e.index, term: e.term, revision: meta.revision })
                        };
                        out.push((e.index, r));
                        continue;
                    }
                };
                let (key, value) = match command {
                    Command::Put { key, value } | Command::PutJson { key, json: value } => (key, value),
                    Command::Delete { key } => (key, String::new()),
                    Command::Compact { .. } => unreachable!("handled above"),
                };
                let old = keys.get(key.as_bytes())?.map(|g| KeyMeta::decode(g.value())).transpose()?;
                if kind == EventKind::Delete && old.is_none() {
                    // Deleting nothing writes nothing (etcd: no new revision).
                    out.push((e.index, Ok(Applied { index: e.index, term: e.term, revision: meta.revision })));
                    continue;
                }
                let revision = meta.revision + 1;
                let (create_revision, version) = match (kind, old) {
                    (EventKind::Delete, _) => (0, 0),
                    (_, Some(m)) => (m.create_revision, m.version + 1),
                    (_, None) => (revision, 1),
                };
                let event =
                    Event { revision, kind, index: e.index, term: e.term, key, value, create_revision, version };
                if kind == EventKind::Delete {
                    keys.remove(event.key.as_bytes())?;
                } else {
                    let m = KeyMeta { create_revision, mod_revision: revision, mod_sub: 0, version };
                    keys.insert(event.key.as_bytes(), m.encode().as_slice())?;
                }
                revs.insert((revision, 0), encode_event(&event).as_slice())?;
                key_revs.insert((event.key.as_bytes(), revision, 0), ())?;
                meta.stored_bytes += event.stored_bytes();
                meta.revision = revision;
                out.push((e.index, Ok(Applied { index: e.index, term: e.term, revision })));
            }
            if meta.applied == before {
                drop((meta_t, keys, revs, key_revs));
                txn.abort()?;
                return Ok(out);
            }
            // Compaction keeps pace with the writes that feed it.
            let budget = 2 * entries.len() + 256;
            compact_step(&mut meta, &mut revs, &mut key_revs, budget)?;
            meta.save(&mut meta_t)?;
        }
        txn.commit()?;
        self.publish(&meta);
        Ok(out)
    }

    /// Whether history below the compacted revision is still to be removed.
    pub fn compaction_pending(&self) -> bool {
        self.compact_cursor.load(Ordering::Relaxed) < self.compacted.load(Ordering::Relaxed)
    }

    /// Removes a batch of compacted history (when the applier is idle).
    pub fn compact_some(&self) -> Result<(), MvccError> {
        let db = self.db()?;
        let txn = Self::begin_write(&db, Durability::None)?;
        let meta = {
            let mut meta_t = txn.open_table(META)?;
            let mut revs = txn.open_table(REVS)?;
            let mut key_revs = txn.open_table(KEY_REVS)?;
            let mut meta = Meta::load(&meta_t)?;
            compact_step(&mut meta, &mut revs, &mut key_revs, COMPACT_BATCH)?;
            meta.save(&mut meta_t)?;
            meta
        };
        txn.commit()?;
        self.publish(&meta);
        Ok(())
    }

    /// Makes everything applied durable (one fsync); returns the durable applied
    /// (index, term). The log may then be compacted up to that index.
    pub fn checkpoint(&self) -> Result<(Index, Term), MvccError> {
        let db = self.db()?;
        let txn = Self::begin_write(&db, Durability::Immediate)?;
        let meta = Meta::load(&txn.open_table(META)?)?;
        txn.commit()?;
        *self.durable.write().unwrap() = meta;
        if let Ok(m) = std::fs::metadata(self.dir.join(FILE)) {
            self.file_bytes.store(m.len(), Ordering::Relaxed);
        }
        Ok((meta.applied, meta.applied_term))
    }

    /// A new engine file for a snapshot being received, unique to this install.
    pub fn install_path(&self) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        self.dir.join(format!("kv.{}-{}.installing", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)))
    }

    pub(super) fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// Replaces the state by the engine file at `path` (a verified, durable snapshot):
    /// renamed into place, so that a crash leaves either the old or the new state.
    /// Returns the new applied (index, term).
    pub fn install(&self, path: &Path) -> Result<(Index, Term), MvccError> {
        let mut slot = self.db.write().unwrap();
        let target = self.dir.join(FILE);
        std::fs::rename(path, &target)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        // Readers of the old state keep their handle (and its unlinked file) until done.
        let db = open_db(&target, self.cache_bytes)?;
        let meta = Meta::load(&db.begin_read()?.open_table(META)?)?;
        *slot = Some(Arc::new(db));
        drop(slot);
        *self.durable.write().unwrap() = meta;
        self.publish(&meta);
        self.file_bytes.store(std::fs::metadata(&target)?.len(), Ordering::Relaxed);
        Ok((meta.applied, meta.applied_term))
    }
}

/// Removes up to `budget` events of compacted history: every event at or below the
/// compacted revision that a later event of its key at or below it supersedes, and
/// every tombstone there. A key's newest version at the compacted revision stays, so
/// reads at that revision still see it.
fn compact_step(
    meta: &mut Meta,
    revs: &mut redb::Table<(u64, u32), &[u8]>,
    key_revs: &mut redb::Table<(&[u8], u64, u32), ()>,
    budget: usize,
) -> Result<(), MvccError> {
    if meta.compact_cursor >= meta.compacted {
        return Ok(());
    }
    let mut batch = Vec::new();
    for item in revs.range((meta.compact_cursor + 1, 0)..=(meta.compacted, u32::MAX))?.take(budget) {
        let (k, v) = item?;
        let (rev, sub) = k.value();
        batch.push((rev, sub, decode_event(rev, v.value())?));
    }
    let done = batch.len() < budget;
    for (rev, sub, event) in &batch {
        let key = event.key.as_bytes();
        // Tuples order lexicographically: this is every later event of the key up to
        // the compacted revision.
        let superseded = key_revs.range((key, *rev, *sub + 1)..=(key, meta.compacted, u32::MAX))?.next().is_some();
        if superseded || event.kind == EventKind::Delete {
            revs.remove((*rev, *sub))?;
            key_revs.remove((key, *rev, *sub))?;
            meta.stored_bytes = meta.stored_bytes.saturating_sub(event.stored_bytes());
        }
    }
    // A batch cut inside a revision's sub-revisions examines that revision again.
    meta.compact_cursor = match (done, batch.last()) {
        (true, _) | (_, None) => meta.compacted,
        (false, Some((rev, _, _))) => (*rev - 1).max(meta.compact_cursor + 1),
    };
    Ok(())
}
