//! A segmented write-ahead log of Raft entries and hard states.
//!
//! Segment file: the 8-byte magic `RKVWAL01`, then records:
//! `[len: u32][hcrc: u32 = crc32(len)][crc: u32 = crc32(type, payload)][type: u8][payload: len bytes]`,
//! little-endian. Type 1 is an entry (`index u64, term u64, kind u8, data`), type 2 a
//! hard state (`term u64, vote u64 (0 = none), commit u64`); the last hard state wins.
//!
//! The log is append-only: a conflicting suffix is replaced by appending entries whose
//! index is not above the last one, and recovery lets a later entry overwrite the
//! suffix from its index on (as etcd's WAL does). Nothing durable is ever cut off by
//! a truncation, so no hard-state record can be lost to one.
//!
//! A segment is preallocated to the segment size when it is created (zeros after the
//! records, as etcd does), so that an append does not grow the file and its fdatasync
//! need not write the inode too; a segment is cut to its records when it is closed.
//! Records end where only zeros follow (a record is never all zeros).
//!
//! Recovery keeps every valid record. A damaged record at the end of the last segment
//! (followed by nothing or by zeros only) is a torn write (a crash in the middle of an
//! append) and is cut off; damage anywhere else is refused, naming the file and offset.
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::StorageError;
use crate::raft::{Entry, EntryKind, HardState, Index};

const MAGIC: &[u8; 8] = b"RKVWAL01";
const HEADER: usize = 13;
const TYPE_ENTRY: u8 = 1;
const TYPE_HARD_STATE: u8 = 2;
/// By default a segment is closed once it passes this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;

pub struct Wal {
    dir: PathBuf,
    /// Sequence numbers of the segments, oldest first, with the highest entry index
    /// each holds; the last segment is being written.
    segments: Vec<(u64, Index)>,
    file: File,
    size: u64,
    /// Segments are closed past this size.
    segment_bytes: u64,
    /// Entries up to here are compacted into a snapshot and skipped.
    base: Index,
    /// (segment, offset) of each entry after `base`.
    positions: Vec<(u64, u64)>,
    hard_state: HardState,
    /// Bytes written to the current segment since its last fdatasync.
    unsynced: bool,
    /// Something written since the last fdatasync must be durable before it is reported.
    must_sync: bool,
    /// fdatasync calls so far (for benchmarks).
    pub syncs: u64,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.wal"))
}

fn io(path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Io { path: path.to_path_buf(), source: e }
}

fn encode(buf: &mut Vec<u8>, kind: u8, payload: &[&[u8]]) {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let len = len as u32;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    for p in payload {
        crc.update(p);
    }
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&len.to_le_bytes()).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.push(kind);
    for p in payload {
        buf.extend_from_slice(p);
    }
}

fn encode_entry(buf: &mut Vec<u8>, e: &Entry) {
    let kind = match e.kind {
        EntryKind::Normal => 0u8,
        EntryKind::Noop => 1u8,
        EntryKind::ConfChange => 2u8,
    };
    encode(buf, TYPE_ENTRY, &[&e.index.to_le_bytes(), &e.term.to_le_bytes(), &[kind], &e.data]);
}

fn encode_hard_state(buf: &mut Vec<u8>, hs: &HardState) {
    let vote = hs.vote.unwrap_or(0);
    encode(buf, TYPE_HARD_STATE, &[&hs.term.to_le_bytes(), &vote.to_le_bytes(), &hs.commit.to_le_bytes()]);
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

enum Record {
    Entry(Entry),
    HardState(HardState),
}

fn decode(kind: u8, p: &[u8]) -> Option<Record> {
    match kind {
        TYPE_ENTRY if p.len() >= 17 => {
            let kind = match p[16] {
                0 => EntryKind::Normal,
                1 => EntryKind::Noop,
                2 => EntryKind::ConfChange,
                _ => return None,
            };
            Some(Record::Entry(Entry {
                index: u64_at(p, 0),
                term: u64_at(p, 8),
                kind,
                data: Bytes::copy_from_slice(&p[17..]),
            }))
        }
        TYPE_HARD_STATE if p.len() == 24 => {
            let vote = u64_at(p, 8);
            Some(Record::HardState(HardState {
                term: u64_at(p, 0),
                vote: (vote != 0).then_some(vote),
                commit: u64_at(p, 16),
            }))
        }
        _ => None,
    }
}

/// What one segment holds, where its records end, and whether what follows them is
/// a torn write (else it is nothing, or the zeros of the preallocated rest).
struct Scan {
    records: Vec<(u64, Record)>,
    end: u64,
    torn: bool,
}

fn zeros(b: &[u8]) -> bool {
    b.iter().all(|&b| b == 0)
}

/// The disk writes in sectors of this many bytes, in any order within one write.
const SECTOR: usize = 512;

/// Whether the damaged record at `data[from..to]` holds a sector that was never
/// written (zeros, with a later one written): the tail of the last write, which a crash
/// tore out of order (etcd's `isTornEntry`). A chunk between sector boundaries counts
/// from 64 bytes, so that a value's few zero bytes do not.
fn unwritten_sector(data: &[u8], from: usize, to: usize) -> bool {
    let mut at = from;
    while at < to {
        let next = ((at / SECTOR + 1) * SECTOR).min(to);
        if next - at >= 64.min(to - from) && zeros(&data[at..next]) {
            return true;
        }
        at = next;
    }
    false
}

fn scan(path: &Path, data: &[u8]) -> Result<Scan, StorageError> {
    let corrupt = |offset: usize, what: &str| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        what: what.to_string(),
    };
    let torn = |records, pos: usize| Ok(Scan { records, end: pos as u64, torn: true });
    if data.len() < MAGIC.len() {
        // A segment whose creation was cut short.
        return torn(Vec::new(), 0);
    }
    if &data[..MAGIC.len()] != MAGIC {
        // Preallocated, and its creation cut short before the magic reached the disk.
        if zeros(data) {
            return torn(Vec::new(), 0);
        }
        return Err(StorageError::Format { path: path.to_path_buf(), what: "not a raftkv log segment".into() });
    }
    let mut records = Vec::new();
    let mut pos = MAGIC.len();
    loop {
        let rest = &data[pos..];
        // The end of the records: the end of the file, or the preallocated zeros.
        if zeros(rest) {
            return Ok(Scan { records, end: pos as u64, torn: false });
        }
        if rest.len() < HEADER {
            return torn(records, pos);
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
        let hcrc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        if crc32fast::hash(&rest[0..4]) != hcrc {
            // A header in a sector the last write never wrote (a record's length is
            // never 0), with a later sector of that write on disk: torn.
            if zeros(&rest[0..4])
                || unwritten_sector(data, pos, (pos + HEADER).max(pos.next_multiple_of(SECTOR)).min(data.len()))
            {
                return torn(records, pos);
            }
            return Err(corrupt(pos, "record header checksum mismatch"));
        }
        let end = HEADER + len as usize;
        if rest.len() < end {
            return torn(records, pos);
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&rest[12..end]);
        if h.finalize() != crc {
            // The last record, followed by nothing or zeros, or one with a sector never
            // written: the tail of the last write.
            if zeros(&rest[end..]) || unwritten_sector(data, pos, pos + end) {
                return torn(records, pos);
            }
            return Err(corrupt(pos, "record checksum mismatch"));
        }
        let record = decode(rest[12], &rest[HEADER..end]).ok_or_else(|| corrupt(pos, "unknown record"))?;
        records.push((pos as u64, record));
        pos += end;
    }
}

/// Allocates `len` bytes for `f` (zeros after what it holds), so that writes within
/// them do not change its size. Where the file system cannot, the file grows as written.
#[cfg(target_os = "linux")]
fn preallocate(f: &File, len: u64) {
    use std::os::fd::AsRawFd;
    let Ok(current) = f.metadata().map(|m| m.len()) else { return };
    if current >= len {
        return;
    }
    // SAFETY: fallocate on a file descriptor this File owns; mode 0 only allocates
    // (and extends the size to) `len`, reading back as zeros.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r != 0 {
        tracing::debug!("preallocating a log segment failed: {}", std::io::Error::last_os_error());
    }
}

#[cfg(not(target_os = "linux"))]
fn preallocate(_: &File, _: u64) {}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, e))
}

fn create_segment(dir: &Path, seq: u64, segment_bytes: u64) -> Result<File, StorageError> {
    let path = segment_path(dir, seq);
    let mut f = OpenOptions::new().create_new(true).read(true).write(true).open(&path).map_err(|e| io(&path, e))?;
    preallocate(&f, segment_bytes);
    f.write_all(MAGIC).and_then(|_| f.sync_all()).map_err(|e| io(&path, e))?;
    sync_dir(dir)?;
    Ok(f)
}

impl Wal {
    /// Opens (creating if empty) the log in `dir` and returns it with what it holds
    /// after `base` (entries up to `base` are in a snapshot and skipped).
    pub fn open(dir: &Path, base: Index, segment_bytes: u64) -> Result<(Wal, HardState, Vec<Entry>), StorageError> {
        fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut segments: Vec<u64> = Vec::new();
        for ent in fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let ent = ent.map_err(|e| io(dir, e))?;
            let name = ent.file_name().to_string_lossy().to_string();
            if let Some(seq) = name.strip_suffix(".wal").and_then(|s| s.parse::<u64>().ok()) {
                segments.push(seq);
            }
        }
        segments.sort_unstable();
        if segments.is_empty() {
            let file = create_segment(dir, 1, segment_bytes)?;
            let wal = Wal {
                dir: dir.to_path_buf(),
                segments: vec![(1, 0)],
                file,
                size: MAGIC.len() as u64,
                segment_bytes,
                base,
                positions: Vec::new(),
                hard_state: HardState::default(),
                unsynced: false,
                must_sync: false,
                syncs: 0,
            };
            return Ok((wal, HardState::default(), Vec::new()));
        }
        let mut hs = HardState::default();
        let mut entries: Vec<Entry> = Vec::new();
        let mut positions = Vec::new();
        let last_seq = *segments.last().expect("not empty");
        let mut size = 0;
        let mut segment_max = Vec::new();
        for &seq in &segments {
            let mut max_index = 0;
            let path = segment_path(dir, seq);
            let mut data = Vec::new();
            File::open(&path).and_then(|mut f| f.read_to_end(&mut data)).map_err(|e| io(&path, e))?;
            let scan = scan(&path, &data)?;
            for (offset, record) in scan.records {
                match record {
                    Record::HardState(h) => hs = h,
                    Record::Entry(e) => {
                        max_index = max_index.max(e.index);
                        if e.index <= base {
                            continue;
                        }
                        let next = base + entries.len() as Index + 1;
                        if e.index > next {
                            return Err(StorageError::Corrupt {
                                path,
                                offset,
                                what: format!("entry {} where at most {next} was expected", e.index),
                            });
                        }
                        // An entry at or below the last one replaces the suffix from there.
                        entries.truncate((e.index - base - 1) as usize);
                        positions.truncate((e.index - base - 1) as usize);
                        positions.push((seq, offset));
                        entries.push(e);
                    }
                }
            }
            size = scan.end;
            segment_max.push((seq, max_index));
            if scan.torn || (seq != last_seq && scan.end < data.len() as u64) {
                if seq != last_seq {
                    // Closed segments are cut to their records: nothing may follow them.
                    return Err(StorageError::Corrupt {
                        path,
                        offset: scan.end,
                        what: "damaged record before the last segment".into(),
                    });
                }
                let at = scan.end;
                tracing::warn!(file = %path.display(), offset = at, "cutting off a torn write at the log's tail");
                let mut f = OpenOptions::new().write(true).open(&path).map_err(|e| io(&path, e))?;
                if at == 0 {
                    f.set_len(0).map_err(|e| io(&path, e))?;
                    f.write_all(MAGIC).map_err(|e| io(&path, e))?;
                    size = MAGIC.len() as u64;
                } else {
                    f.set_len(at).map_err(|e| io(&path, e))?;
                }
                preallocate(&f, segment_bytes);
                f.sync_all().map_err(|e| io(&path, e))?;
            }
        }
        // A batch writes its entries before its hard state, so a hard state that survived
        // a torn write covers only entries that survived with it (its commit index never
        // names an older entry that the batch was replacing). A torn batch may keep
        // entries of a term its lost hard state would have recorded; the core raises
        // its term to them on restore.
        hs.commit = hs.commit.min(base + entries.len() as Index);
        let path = segment_path(dir, last_seq);
        let mut file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io(&path, e))?;
        // Appends go after the records, over the preallocated zeros (a segment an older
        // version wrote, never preallocated, is now).
        preallocate(&file, segment_bytes);
        file.seek(SeekFrom::Start(size)).map_err(|e| io(&path, e))?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            segments: segment_max,
            file,
            size,
            segment_bytes,
            base,
            positions,
            hard_state: hs,
            unsynced: false,
            must_sync: false,
            syncs: 0,
        };
        Ok((wal, hs, entries))
    }

    fn current_path(&self) -> PathBuf {
        segment_path(&self.dir, self.segments.last().expect("a segment").0)
    }

    /// Bytes of records in the segment being written.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.size
    }

    pub fn last_index(&self) -> Index {
        self.base + self.positions.len() as Index
    }

    /// Forgets entries up to `base` (now in a snapshot) and deletes every closed segment
    /// that holds nothing above it.
    pub fn compact(&mut self, base: Index) -> Result<(), StorageError> {
        if base <= self.base {
            return Ok(());
        }
        let drop = (base - self.base).min(self.positions.len() as Index) as usize;
        self.positions.drain(..drop);
        self.base = base;
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[0].1 <= base {
            let path = segment_path(&self.dir, self.segments[0].0);
            fs::remove_file(&path).map_err(|e| io(&path, e))?;
            self.segments.remove(0);
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Makes `hs` (if any) and `entries` durable with one write and one fdatasync
    /// (none when only the commit index moved). Entries continue the log, or replace a
    /// suffix of it from their first index.
    pub fn append(&mut self, hs: Option<HardState>, entries: &[Entry]) -> Result<(), StorageError> {
        self.write(hs, entries)?;
        self.sync()
    }

    /// Makes everything `write` wrote durable, with one fdatasync (none if all it wrote
    /// only moved the commit index).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.must_sync {
            let path = self.current_path();
            self.file.sync_data().map_err(|e| io(&path, e))?;
            self.syncs += 1;
            self.must_sync = false;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Writes `hs` (if any) and `entries` without waiting for the disk: several writes
    /// can share one `sync` (group commit). Entries continue the log, or replace a
    /// suffix of it from their first index.
    pub fn write(&mut self, hs: Option<HardState>, entries: &[Entry]) -> Result<(), StorageError> {
        let mut rewrite_hs = false;
        if let Some(first) = entries.first() {
            if first.index <= self.base || first.index > self.last_index() + 1 {
                return Err(StorageError::Corrupt {
                    path: self.current_path(),
                    offset: self.size,
                    what: format!("append of entry {} after {}", first.index, self.last_index()),
                });
            }
            self.positions.truncate((first.index - self.base - 1) as usize);
        }
        if self.size >= self.segment_bytes && (hs.is_some() || !entries.is_empty()) {
            // A closed segment is complete on disk, cut to its records: only the last
            // one may end torn or in zeros.
            let path = self.current_path();
            self.file.set_len(self.size).and_then(|_| self.file.sync_all()).map_err(|e| io(&path, e))?;
            self.syncs += 1;
            self.unsynced = false;
            let seq = self.segments.last().expect("a segment").0 + 1;
            self.file = create_segment(&self.dir, seq, self.segment_bytes)?;
            self.segments.push((seq, 0));
            self.size = MAGIC.len() as u64;
            // Each segment starts with the hard state, so older ones can be dropped later.
            rewrite_hs = true;
        }
        let mut buf = Vec::with_capacity(128 + entries.iter().map(|e| e.data.len() + HEADER + 17).sum::<usize>());
        if rewrite_hs {
            // The durable hard state first, so that this segment stands on its own.
            encode_hard_state(&mut buf, &self.hard_state);
        }
        let seq = self.segments.last().expect("a segment").0;
        if let Some(last) = entries.last() {
            let current = self.segments.last_mut().expect("a segment");
            current.1 = current.1.max(last.index);
        }
        for e in entries {
            self.positions.push((seq, self.size + buf.len() as u64));
            encode_entry(&mut buf, e);
        }
        // The new hard state after the entries: if a crash tears this write, a commit
        // index that survived covers entries that survived (see `open`).
        if let Some(h) = &hs {
            encode_hard_state(&mut buf, h);
        }
        if buf.is_empty() {
            return Ok(());
        }
        let path = self.current_path();
        self.file.write_all(&buf).map_err(|e| io(&path, e))?;
        self.unsynced = true;
        // A batch that only moves the commit index needs no sync of its own: commit can
        // be relearned from the leader, and the next synced batch covers this record.
        let commit_only = entries.is_empty()
            && !rewrite_hs
            && hs.is_some_and(|h| h.term == self.hard_state.term && h.vote == self.hard_state.vote);
        self.must_sync |= !commit_only;
        self.size += buf.len() as u64;
        if let Some(h) = hs {
            self.hard_state = h;
        }
        Ok(())
    }
}
