//! Snapshots: a consistent read view of the store, streamed; and the building of a new
//! engine file from such a stream on the receiving side.
//!
//! Stream: the magic `RKVSNAP2`, then records `[tag u8][len u32 LE][payload]`:
//! tag 1 a meta field (`[name_len u8][name][value u64]`), tag 2 a history event
//! (`[revision u64][sub u32][event]`), in revision order; the end is tag 255 with the
//! crc32 of every byte after the magic and before it. The live keys and the per-key
//! index are rebuilt from the events, so a snapshot carries each value once.
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use redb::{Durability, ReadableTable};

use super::record::{decode_event, KeyMeta};
use super::store::{Meta, KEYS, KEY_REVS, META, REVS};
use super::{EventKind, MvccError, Store};
use crate::raft::{Index, Term};

const MAGIC: &[u8; 8] = b"RKVSNAP2";
const TAG_META: u8 = 1;
const TAG_EVENT: u8 = 2;
const TAG_END: u8 = 255;
/// A record larger than this is damage, not data (values are at most 1 MiB).
const MAX_RECORD: usize = 16 << 20;
/// Records inserted per transaction while building.
const BUILD_BATCH: usize = 50_000;

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
    for (name, value) in meta.fields() {
        w.record(TAG_META, &[&[name.len() as u8], name.as_bytes(), &value.to_le_bytes()])?;
    }
    for item in view.revs_table().iter()? {
        let (k, v) = item?;
        let (rev, sub) = k.value();
        w.record(TAG_EVENT, &[&rev.to_le_bytes(), &sub.to_le_bytes(), v.value()])?;
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

/// Builds a new engine file from the snapshot stream in `file` (next to the store's,
/// unique to this install) and makes it durable. Returns its path and the (index,
/// term) it holds; a damaged or truncated stream builds nothing.
pub fn build(store: &Store, file: &Path) -> Result<(PathBuf, Index, Term), MvccError> {
    let path = store.install_path();
    match build_at(store, file, &path) {
        Ok((index, term)) => Ok((path, index, term)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
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

fn build_at(store: &Store, file: &Path, path: &Path) -> Result<(Index, Term), MvccError> {
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(file)?);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| damaged("too short"))?;
    if &magic != MAGIC {
        return Err(damaged("not a raftkv snapshot"));
    }
    let db = redb::Builder::new().set_cache_size(store.cache_bytes()).create(path)?;
    let mut crc = crc32fast::Hasher::new();
    let mut fields = Vec::new();
    let mut ended = false;
    loop {
        let txn = db.begin_write()?;
        {
            let mut revs = txn.open_table(REVS)?;
            let mut key_revs = txn.open_table(KEY_REVS)?;
            let mut keys = txn.open_table(KEYS)?;
            for _ in 0..BUILD_BATCH {
                let (tag, payload) = next_record(&mut r, &mut crc)?;
                match tag {
                    TAG_END => {
                        ended = true;
                        break;
                    }
                    TAG_META => {
                        let n = *payload.first().ok_or_else(|| damaged("empty meta record"))? as usize;
                        let (Some(name), Some(value)) = (payload.get(1..1 + n), payload.get(1 + n..)) else {
                            return Err(damaged("short meta record"));
                        };
                        let name = String::from_utf8(name.to_vec()).map_err(|_| damaged("meta name"))?;
                        let value = u64::from_le_bytes(value.try_into().map_err(|_| damaged("meta value"))?);
                        fields.push((name, value));
                    }
                    TAG_EVENT if payload.len() >= 12 => {
                        let rev = u64::from_le_bytes(payload[0..8].try_into().expect("8 bytes"));
                        let sub = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes"));
                        let event =
                            decode_event(rev, &payload[12..]).map_err(|_| damaged(format!("revision {rev}")))?;
                        let key = event.key.as_bytes();
                        revs.insert((rev, sub), &payload[12..])?;
                        key_revs.insert((key, rev, sub), ())?;
                        if event.kind == EventKind::Delete {
                            keys.remove(key)?;
                        } else {
                            let m = KeyMeta {
                                create_revision: event.create_revision,
                                mod_revision: rev,
                                mod_sub: sub,
                                version: event.version,
                            };
                            keys.insert(key, m.encode().as_slice())?;
                        }
                    }
                    tag => return Err(damaged(format!("unknown record {tag}"))),
                }
            }
        }
        let mut txn = txn;
        if ended {
            let meta = Meta::from_fields(&fields).ok_or_else(|| damaged("meta fields missing"))?;
            if meta.applied == 0 {
                return Err(damaged("it holds no applied index"));
            }
            meta.save(&mut txn.open_table(META)?)?;
            txn.set_durability(Durability::Immediate)?;
            txn.commit()?;
            drop(db);
            return Ok((meta.applied, meta.applied_term));
        }
        txn.set_durability(Durability::None)?;
        txn.commit()?;
    }
}
