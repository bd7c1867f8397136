//! Snapshots: a consistent read view of the store, streamed; and the building of a new
//! engine file from such a stream on the receiving side.
//!
//! Stream: the magic `RKVSNAP2`, then records `[tag u8][len u32 LE][payload]`:
//! tag 1 the meta record (56 bytes), tag 2 a history event
//! (`[revision u64][sub u32][event]`), in revision order, tag 3 an open client session
//! (`[id u64 BE][session]`), tag 4 a lease (`[id i64 BE][granted ttl i64 LE][index u64 LE]`), tag 5 a
//! key attached to a lease (`[id i64 BE][key]`), tag 6 the membership as of the
//! snapshot (`raft::Membership::encode`); the end is tag 255 with the
//! crc32 of every byte after the magic and before it. The live keys and the per-key
//! index are rebuilt from the events, so a snapshot carries each value once.
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::lease::decode_lease;
use super::record::{decode_event, key_rev_key, rev_key, KeyMeta};
use super::session::Session;
use super::store::{Engine, Meta};
use super::{EventKind, MvccError, Store};
use crate::raft::{Index, Membership, Term};

const MAGIC: &[u8; 8] = b"RKVSNAP2";
const TAG_META: u8 = 1;
const TAG_EVENT: u8 = 2;
const TAG_SESSION: u8 = 3;
const TAG_LEASE: u8 = 4;
const TAG_LEASE_KEY: u8 = 5;
const TAG_MEMBERSHIP: u8 = 6;
const TAG_END: u8 = 255;
/// A record larger than this is damage, not data (values are at most 1 MiB).
const MAX_RECORD: usize = 16 << 20;
/// Bytes of records written per batch while building: a batch is held in memory, and
/// then in the engine's memtables until they are flushed.
const BUILD_BATCH_BYTES: usize = 8 << 20;
/// How long a build waits for the engine to flush before it fails.
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

struct Writer<F: FnMut(Vec<u8>) -> bool> {
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    chunk: usize,
    sink: F,
}

impl<F: FnMut(Vec<u8>) -> bool> Writer<F> {
    fn record(&mut self, tag: u8, parts: &[&[u8]]) -> Result<(), MvccError> {
        let start = self.buf.len();
        self.buf.push(tag);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.buf.extend_from_slice(&(len as u32).to_le_bytes());
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        self.crc.update(&self.buf[start..]);
        if self.buf.len() >= self.chunk {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), MvccError> {
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk + 1024));
        if !(self.sink)(full) {
            return Err(MvccError::Engine("snapshot receiver went away".into()));
        }
        Ok(())
    }
}

/// Streams a consistent view of `store` to `sink` in chunks of about `chunk` bytes
/// (`sink` returns false to stop). Blocking. Returns the (index, term) it reflects.
pub fn stream(store: &Store, chunk: usize, sink: impl FnMut(Vec<u8>) -> bool) -> Result<(Index, Term), MvccError> {
    let view = store.read()?;
    let meta = *view.meta();
    let mut w = Writer { buf: MAGIC.to_vec(), crc: crc32fast::Hasher::new(), chunk, sink };
    w.record(TAG_META, &[&meta.encode()])?;
    if let Some(m) = view.membership()? {
        w.record(TAG_MEMBERSHIP, &[&m.encode()])?;
    }
    for item in view.raw_history() {
        let (rev, sub, event) = item?;
        w.record(TAG_EVENT, &[&rev.to_le_bytes(), &sub.to_le_bytes(), &event])?;
    }
    let engine = view.engine();
    for item in view.raw(&engine.sessions) {
        let (id, session) = item?;
        w.record(TAG_SESSION, &[&id, &session])?;
    }
    for item in view.raw(&engine.leases) {
        let (id, ttl) = item?;
        w.record(TAG_LEASE, &[&id, &ttl])?;
    }
    for item in view.raw(&engine.lease_keys) {
        let (k, _) = item?;
        w.record(TAG_LEASE_KEY, &[&k])?;
    }
    let crc = w.crc.clone().finalize();
    w.buf.push(TAG_END);
    w.buf.extend_from_slice(&4u32.to_le_bytes());
    w.buf.extend_from_slice(&crc.to_le_bytes());
    w.flush()?;
    Ok((meta.applied, meta.applied_term))
}

fn damaged(what: impl std::fmt::Display) -> MvccError {
    MvccError::Engine(format!("received snapshot: {what}"))
}

/// A snapshot built into a new engine, open and durable, waiting to be installed
/// (`Store::install`). Dropped without being installed, it removes itself.
pub struct Built {
    pub(super) path: PathBuf,
    pub(super) engine: Option<Engine>,
    pub index: Index,
    pub term: Term,
    /// The membership as of `index`.
    pub membership: Membership,
}

impl Drop for Built {
    fn drop(&mut self) {
        if self.engine.take().is_some() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Builds a new engine from the snapshot stream in `file` (a directory beside the
/// store's, unique to this install) and makes it durable. A damaged or truncated
/// stream builds nothing.
pub fn build(store: &Store, file: &Path) -> Result<Built, MvccError> {
    let path = store.install_path();
    let engine = Engine::open(&path, store.cache_bytes())?;
    let mut built = Built { path, engine: Some(engine), index: 0, term: 0, membership: Membership::of_voters(&[]) };
    let (index, term, membership) = build_into(built.engine.as_ref().expect("just opened"), file)?;
    (built.index, built.term, built.membership) = (index, term, membership);
    Ok(built)
}

/// Reads one record: (tag, payload).
fn next_record(r: &mut impl Read, crc: &mut crc32fast::Hasher) -> Result<(u8, Vec<u8>), MvccError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).map_err(|_| damaged("truncated"))?;
    let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
    if len > MAX_RECORD {
        return Err(damaged(format!("a record of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|_| damaged("truncated"))?;
    if head[0] == TAG_END {
        if payload != crc.clone().finalize().to_le_bytes() {
            return Err(damaged("checksum mismatch"));
        }
    } else {
        crc.update(&head);
        crc.update(&payload);
    }
    Ok((head[0], payload))
}

fn build_into(engine: &Engine, file: &Path) -> Result<(Index, Term, Membership), MvccError> {
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(file)?);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| damaged("too short"))?;
    if &magic != MAGIC {
        return Err(damaged("not a raftkv snapshot"));
    }
    let mut crc = crc32fast::Hasher::new();
    let mut meta = None;
    let mut membership = None;
    let mut batch = engine.db.batch();
    let mut batched = 0;
    loop {
        let (tag, payload) = next_record(&mut r, &mut crc)?;
        batched += payload.len();
        match tag {
            TAG_END => break,
            TAG_META => meta = Some(Meta::decode(&payload).map_err(|_| damaged("meta record"))?),
            TAG_MEMBERSHIP => {
                membership = Some(Membership::decode(&payload).map_err(damaged)?);
                batch.insert(&engine.meta, super::store::MEMBERSHIP_KEY, &payload[..]);
            }
            TAG_EVENT if payload.len() >= 12 => {
                let rev = u64::from_le_bytes(payload[0..8].try_into().expect("8 bytes"));
                let sub = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes"));
                let event = decode_event(rev, &payload[12..]).map_err(|_| damaged(format!("revision {rev}")))?;
                let key = event.key.as_bytes();
                // Checked before the engine sees it (the checksum comes at the end).
                if key.is_empty() || key.len() > crate::config::MAX_KEY_BYTES {
                    return Err(damaged(format!("revision {rev} has a key of {} bytes", key.len())));
                }
                batch.insert(&engine.revs, rev_key(rev, sub).as_slice(), &payload[12..]);
                batch.insert(&engine.key_revs, key_rev_key(key, rev, sub), [].as_slice());
                // Events come in revision order: the last one of a key says what it is now.
                if event.kind == EventKind::Delete {
                    batch.remove(&engine.keys, key);
                } else {
                    let m = KeyMeta {
                        create_revision: event.create_revision,
                        mod_revision: rev,
                        mod_sub: sub,
                        version: event.version,
                        lease: event.lease,
                    };
                    batch.insert(
                        &engine.keys,
                        key,
                        m.encode_record(event.kind == EventKind::PutJson, &event.value).as_slice(),
                    );
                }
            }
            TAG_SESSION if payload.len() == 8 + 48 => {
                Session::decode(&payload[8..]).map_err(|_| damaged("a session record"))?;
                batch.insert(&engine.sessions, &payload[..8], &payload[8..]);
            }
            TAG_LEASE if payload.len() == 24 => {
                decode_lease(&payload[..8], &payload[8..]).map_err(|_| damaged("a lease record"))?;
                batch.insert(&engine.leases, &payload[..8], &payload[8..]);
            }
            TAG_LEASE_KEY
                if payload.len() > 8
                    && payload.len() <= 8 + crate::config::MAX_KEY_BYTES
                    && std::str::from_utf8(&payload[8..]).is_ok() =>
            {
                batch.insert(&engine.lease_keys, &payload[..], [].as_slice());
            }
            tag => return Err(damaged(format!("unknown record {tag}"))),
        }
        if batched >= BUILD_BATCH_BYTES {
            batched = 0;
            std::mem::replace(&mut batch, engine.db.batch()).commit()?;
            // The engine lets up to 4 full memtables per keyspace wait for their flush;
            // a build outruns the flushes, so it waits for them itself: what a build
            // holds in memory stays near one memtable per keyspace.
            // A flush that fails (a full or failing disk) leaves its memtables sealed
            // for good: the build then fails instead of waiting forever.
            let give_up = std::time::Instant::now() + FLUSH_WAIT;
            while [&engine.revs, &engine.key_revs, &engine.keys].iter().any(|k| k.sealed_memtable_count() > 1) {
                if std::time::Instant::now() > give_up {
                    return Err(MvccError::Engine(format!(
                        "the engine did not flush its memtables within {} s while building a snapshot",
                        FLUSH_WAIT.as_secs()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
    let meta = meta.ok_or_else(|| damaged("no meta record"))?;
    if meta.applied == 0 {
        return Err(damaged("it holds no applied index"));
    }
    let membership = membership.ok_or_else(|| damaged("it holds no membership (sent by an older raftkv?)"))?;
    batch.insert(&engine.meta, b"meta".as_slice(), meta.encode().as_slice());
    batch.commit()?;
    engine.db.persist(fjall::PersistMode::SyncAll)?;
    Ok((meta.applied, meta.applied_term, membership))
}
