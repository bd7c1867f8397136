//! State machine snapshots: `snap/<index>.snap` files.
//!
//! File: the magic `RKVSNAP1`, then `index u64, term u64, base_index u64, base_term u64`,
//! the state machine's body, and a trailing crc32 of everything after the magic. A
//! snapshot is written to a temporary file, fsynced, renamed into place and the
//! directory fsynced, so a crash leaves either the old or the new snapshot. `base` is
//! where the log was compacted to with this snapshot (at most `index`: compaction
//! stops at what every member holds), so that the log is restored from there.
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::StorageError;
use crate::kv::KvState;
use crate::raft::{Index, Term};

const MAGIC: &[u8; 8] = b"RKVSNAP1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    /// The log's base after compaction with this snapshot: (index, term).
    pub base: (Index, Term),
}

fn io(path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Io { path: path.to_path_buf(), source: e }
}

fn path_of(dir: &Path, index: Index) -> PathBuf {
    dir.join(format!("{index:016}.snap"))
}

/// A writer that checksums what passes through it.
struct Crc<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `state` as the snapshot `meta` and removes older snapshots. Blocking: run it
/// off the driver.
pub fn save(dir: &Path, meta: SnapshotMeta, state: &KvState) -> Result<(), StorageError> {
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let tmp = dir.join("snapshot.tmp");
    let path = path_of(dir, meta.index);
    let file = File::create(&tmp).map_err(|e| io(&tmp, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(MAGIC).map_err(|e| io(&tmp, e))?;
    let mut c = Crc { inner: w, crc: crc32fast::Hasher::new() };
    let header = [meta.index, meta.term, meta.base.0, meta.base.1];
    for v in header {
        c.write_all(&v.to_le_bytes()).map_err(|e| io(&tmp, e))?;
    }
    state.encode(&mut c).map_err(|e| io(&tmp, e))?;
    let crc = c.crc.finalize();
    let mut w = c.inner;
    w.write_all(&crc.to_le_bytes()).map_err(|e| io(&tmp, e))?;
    let file = w.into_inner().map_err(|e| io(&tmp, e.into_error()))?;
    file.sync_all().map_err(|e| io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, e))?;
    for (index, old) in list(dir)? {
        if index < meta.index {
            fs::remove_file(&old).map_err(|e| io(&old, e))?;
        }
    }
    Ok(())
}

fn list(dir: &Path) -> Result<Vec<(Index, PathBuf)>, StorageError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for ent in fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let ent = ent.map_err(|e| io(dir, e))?;
        let name = ent.file_name().to_string_lossy().to_string();
        if let Some(index) = name.strip_suffix(".snap").and_then(|s| s.parse::<Index>().ok()) {
            out.push((index, ent.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest snapshot file, if any.
pub fn latest_path(dir: &Path) -> Result<Option<PathBuf>, StorageError> {
    Ok(list(dir)?.pop().map(|(_, p)| p))
}

/// The newest snapshot, if any. A damaged one is refused, not skipped: falling back
/// to an older state would silently lose what the log has compacted away.
pub fn load_latest(dir: &Path) -> Result<Option<(SnapshotMeta, KvState)>, StorageError> {
    let Some((_, path)) = list(dir)?.pop() else { return Ok(None) };
    load_file(&path).map(Some)
}

/// Reads and verifies one snapshot file.
pub fn load_file(path: &Path) -> Result<(SnapshotMeta, KvState), StorageError> {
    let path = path.to_path_buf();
    let mut data = Vec::new();
    File::open(&path).and_then(|mut f| f.read_to_end(&mut data)).map_err(|e| io(&path, e))?;
    let corrupt = |what: &str| StorageError::Corrupt { path: path.clone(), offset: 0, what: what.into() };
    if data.len() < MAGIC.len() + 36 || &data[..MAGIC.len()] != MAGIC {
        return Err(StorageError::Format { path: path.clone(), what: "not a raftkv snapshot".into() });
    }
    let (body, crc) = data[MAGIC.len()..].split_at(data.len() - MAGIC.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupt("snapshot checksum mismatch"));
    }
    let u = |i: usize| u64::from_le_bytes(body[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let meta = SnapshotMeta { index: u(0), term: u(1), base: (u(2), u(3)) };
    let state = KvState::decode(&body[32..]).ok_or_else(|| corrupt("undecodable snapshot body"))?;
    if state.applied() != meta.index || meta.base.0 > meta.index {
        return Err(corrupt("snapshot header does not match its body"));
    }
    Ok((meta, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Command;
    use crate::raft::{Entry, EntryKind};

    fn state(n: u64) -> KvState {
        let mut kv = KvState::default();
        let entries: Vec<Entry> = (1..=n)
            .map(|i| Entry {
                index: i,
                term: 3,
                kind: EntryKind::Normal,
                data: Command::Put { key: format!("k{i}"), value: "v".into() }.encode(),
            })
            .collect();
        kv.apply(&entries);
        kv
    }

    #[test]
    fn save_load_replaces_older_and_refuses_damage() {
        let d = tempfile::tempdir().unwrap();
        assert!(load_latest(d.path()).unwrap().is_none());
        let m1 = SnapshotMeta { index: 5, term: 3, base: (4, 3) };
        save(d.path(), m1, &state(5)).unwrap();
        let m2 = SnapshotMeta { index: 9, term: 3, base: (7, 3) };
        save(d.path(), m2, &state(9)).unwrap();
        let (meta, kv) = load_latest(d.path()).unwrap().unwrap();
        assert_eq!(meta, m2);
        assert_eq!(kv, state(9));
        assert_eq!(list(d.path()).unwrap().len(), 1, "the older snapshot is gone");
        let p = path_of(d.path(), 9);
        let mut bytes = fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        fs::write(&p, &bytes).unwrap();
        assert!(matches!(load_latest(d.path()), Err(StorageError::Corrupt { .. })));
    }
}
