//! Durable node state: the data directory's identity (`meta`) and the write-ahead log
//! of entries and hard states (`wal/`). The state machine's engine file sits beside
//! them (`crate::mvcc`); the log keeps every entry after its last checkpoint.
pub mod wal;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::raft::{Entry, HardState, Index, NodeId, Term};

/// Version 2: the state machine is an engine file, no longer snapshot files.
pub const FORMAT: &str = "raftkv-data-2";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: damaged at offset {offset}: {what}; refusing to start", path.display())]
    Corrupt { path: PathBuf, offset: u64, what: String },
    #[error("{}: {what}; refusing to start", path.display())]
    Format { path: PathBuf, what: String },
    #[error("{}: {what}; refusing to start", path.display())]
    Identity { path: PathBuf, what: String },
}

/// The data directory of one node.
pub struct Storage {
    wal: wal::Wal,
}

/// What a node restarts from.
pub struct Recovered {
    pub hard_state: HardState,
    /// The log's base (index, term): `entries` follow it.
    pub base: (Index, Term),
    pub entries: Vec<Entry>,
}

fn meta_text(name: &str, cluster: &[String], id: NodeId) -> String {
    let mut members = cluster.to_vec();
    members.sort();
    format!("format {FORMAT}\nname {name}\ncluster {}\nid {id}\n", members.join(","))
}

/// Checks a directory's identity; returns the member id it records (`None` in a
/// directory from before ids were recorded: its founding position).
fn check_meta(path: &Path, text: &str, name: &str, cluster: &[String]) -> Result<Option<NodeId>, StorageError> {
    let field = |key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' '))).map(str::to_string)
    };
    let refuse = |what: String| StorageError::Identity { path: path.to_path_buf(), what };
    match field("format") {
        Some(f) if f == FORMAT => {}
        Some(f) => return Err(StorageError::Format { path: path.into(), what: format!("unknown format {f:?}") }),
        None => return Err(StorageError::Format { path: path.into(), what: "no format line".into() }),
    }
    let stored_name = field("name").unwrap_or_default();
    if stored_name != name {
        return Err(refuse(format!("belongs to node {stored_name:?}, not {name:?}")));
    }
    let mut members = cluster.to_vec();
    members.sort();
    let stored = field("cluster").unwrap_or_default();
    // Once a node has started, the membership it holds decides who the members are;
    // --initial-cluster only says where to find them, and may list others now.
    if stored != members.join(",") {
        tracing::info!(founded_with = %stored, given = %members.join(","), "--initial-cluster differs from the members this directory was founded with; the membership it holds decides");
    }
    match field("id") {
        None => Ok(None),
        Some(id) => match id.parse::<NodeId>() {
            Ok(id) if id > 0 => Ok(Some(id)),
            _ => Err(StorageError::Format { path: path.into(), what: format!("bad member id {id:?}") }),
        },
    }
}

/// Whether `dir` holds no node's data yet: it is missing, or has no `meta` (written
/// last when a node first starts) and no log.
pub fn is_fresh(dir: &Path) -> Result<bool, StorageError> {
    let io = |p: &Path, e| StorageError::Io { path: p.to_path_buf(), source: e };
    if dir.join("meta").exists() {
        return Ok(false);
    }
    let wal_dir = dir.join("wal");
    Ok(!(wal_dir.exists() && fs::read_dir(&wal_dir).map_err(|e| io(&wal_dir, e))?.next().is_some()))
}

fn write_meta(dir: &Path, text: &str) -> Result<(), StorageError> {
    let io = |p: &Path, e| StorageError::Io { path: p.to_path_buf(), source: e };
    let tmp = dir.join("meta.tmp");
    let path = dir.join("meta");
    let mut f = File::create(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, e))
}

/// Checks that `dir` is the data directory of node `name` in a cluster of `cluster`
/// (member names), or makes it one, as member `id`, when it does not exist or is empty.
/// Refuses a directory of another node or cluster, or an unknown format. Returns the
/// member id the directory records (`id` for a new one or one from before ids).
pub fn claim_dir(dir: &Path, name: &str, cluster: &[String], id: NodeId) -> Result<NodeId, StorageError> {
    let io = |p: &Path, e| StorageError::Io { path: p.to_path_buf(), source: e };
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let meta = dir.join("meta");
    if meta.exists() {
        let text = fs::read_to_string(&meta).map_err(|e| io(&meta, e))?;
        return Ok(check_meta(&meta, &text, name, cluster)?.unwrap_or(id));
    }
    let wal_dir = dir.join("wal");
    if wal_dir.exists() && fs::read_dir(&wal_dir).map_err(|e| io(&wal_dir, e))?.next().is_some() {
        return Err(StorageError::Format { path: meta, what: "missing, but the directory holds a log".into() });
    }
    if dir.join("snap").exists() {
        return Err(StorageError::Format {
            path: dir.to_path_buf(),
            what: format!("holds snapshot files of an older raftkv, not format {FORMAT}"),
        });
    }
    write_meta(dir, &meta_text(name, cluster, id))?;
    Ok(id)
}

impl Storage {
    /// Opens the data directory of node `name` in a cluster of `cluster` (see
    /// `claim_dir`) with an empty state machine.
    pub fn open(dir: &Path, name: &str, cluster: &[String]) -> Result<(Storage, Recovered), StorageError> {
        claim_dir(dir, name, cluster, 1)?;
        Self::open_log(dir, (0, 0), wal::SEGMENT_BYTES)
    }

    /// Opens the log of a claimed directory whose state machine has durably applied up
    /// to `base` (index, term): the log restarts after it, and log segments are closed
    /// past `segment_bytes`. Refuses a log that cannot continue that state.
    pub fn open_log(dir: &Path, base: (Index, Term), segment_bytes: u64) -> Result<(Storage, Recovered), StorageError> {
        let wal_dir = dir.join("wal");
        let (wal, hard_state, entries) = wal::Wal::open(&wal_dir, base.0, segment_bytes)?;
        if base.0 > 0 && hard_state.term == 0 {
            return Err(StorageError::Corrupt {
                path: wal_dir,
                offset: 0,
                what: format!("the state machine is at index {} but the log holds no term or vote", base.0),
            });
        }
        Ok((Storage { wal }, Recovered { hard_state, base, entries }))
    }

    /// Makes the hard state and entries durable: one write, one fdatasync.
    pub fn persist(&mut self, hs: Option<HardState>, entries: &[Entry]) -> Result<(), StorageError> {
        self.wal.append(hs, entries)
    }

    /// Writes the hard state and entries without waiting for the disk (see `sync`).
    pub fn write(&mut self, hs: Option<HardState>, entries: &[Entry]) -> Result<(), StorageError> {
        self.wal.write(hs, entries)
    }

    /// Makes everything written so far durable: one fdatasync for any number of writes.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.wal.sync()
    }

    /// fdatasync calls so far.
    pub fn syncs(&self) -> u64 {
        self.wal.syncs
    }

    /// Bytes of records in the segment being written (the file is preallocated).
    #[cfg(test)]
    fn log_bytes(&self) -> u64 {
        self.wal.bytes()
    }

    /// Once the state machine holds everything up to `base` durably: drops log
    /// segments at or below it.
    pub fn compact(&mut self, base: Index) -> Result<(), StorageError> {
        self.wal.compact(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::EntryKind;
    use bytes::Bytes;

    fn members() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, kind: EntryKind::Normal, data: Bytes::from(format!("value-{index}")) }
    }

    fn segment(dir: &Path) -> PathBuf {
        dir.join("wal").join(format!("{:016}.wal", 1))
    }

    /// Three batches; returns the file size after each.
    fn write_three(dir: &Path) -> Vec<u64> {
        let (mut s, _) = Storage::open(dir, "a", &members()).unwrap();
        let mut sizes = Vec::new();
        s.persist(Some(HardState { term: 1, vote: Some(1), commit: 0 }), &[entry(1, 1), entry(2, 1)]).unwrap();
        sizes.push(s.log_bytes());
        s.persist(Some(HardState { term: 2, vote: Some(2), commit: 2 }), &[entry(3, 2)]).unwrap();
        sizes.push(s.log_bytes());
        s.persist(None, &[entry(4, 2)]).unwrap();
        sizes.push(s.log_bytes());
        assert_eq!(s.syncs(), 3, "one fdatasync per batch");
        sizes
    }

    #[test]
    fn restart_recovers_everything_written() {
        let d = tempfile::tempdir().unwrap();
        write_three(d.path());
        let (_, r) = Storage::open(d.path(), "a", &members()).unwrap();
        assert_eq!(r.hard_state, HardState { term: 2, vote: Some(2), commit: 2 });
        assert_eq!(r.entries, vec![entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2)]);
    }

    #[test]
    fn torn_tail_at_every_offset_of_the_last_record_recovers_the_previous_record() {
        let d = tempfile::tempdir().unwrap();
        let sizes = write_three(d.path());
        let full = fs::read(segment(d.path())).unwrap();
        for cut in sizes[1]..sizes[2] {
            let t = tempfile::tempdir().unwrap();
            fs::create_dir_all(t.path().join("wal")).unwrap();
            fs::copy(d.path().join("meta"), t.path().join("meta")).unwrap();
            fs::write(segment(t.path()), &full[..cut as usize]).unwrap();
            let (mut s, r) = Storage::open(t.path(), "a", &members()).unwrap();
            assert_eq!(r.entries.len(), 3, "cut at {cut}");
            assert_eq!(r.hard_state.term, 2);
            assert_eq!(s.log_bytes(), sizes[1], "tail cut off");
            // And the log goes on from there.
            s.persist(None, &[entry(4, 3)]).unwrap();
            let (_, r) = Storage::open(t.path(), "a", &members()).unwrap();
            assert_eq!(r.entries.last().unwrap().term, 3);
        }
    }

    #[test]
    fn a_flipped_byte_before_the_tail_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let sizes = write_three(d.path());
        // The records alone (the preallocated zeros are the next test's).
        let full = fs::read(segment(d.path())).unwrap()[..sizes[2] as usize].to_vec();
        // Every byte of the first two batches: headers, checksums, payloads.
        for at in 8..sizes[1] as usize {
            let mut bad = full.clone();
            bad[at] ^= 0x40;
            fs::write(segment(d.path()), &bad).unwrap();
            match Storage::open(d.path(), "a", &members()) {
                Err(StorageError::Corrupt { path, .. }) => assert!(path.ends_with("0000000000000001.wal")),
                Err(e) => panic!("byte {at}: unexpected error {e}"),
                Ok(_) => panic!("byte {at}: damaged log accepted"),
            }
        }
    }

    /// A segment is preallocated: the records end where the zeros start; a restart
    /// appends after them; a torn write into the zeros is cut off; damage that records
    /// follow is refused.
    #[test]
    fn a_preallocated_segment_restarts_where_its_records_end() {
        let d = tempfile::tempdir().unwrap();
        let sizes = write_three(d.path());
        let full = fs::read(segment(d.path())).unwrap();
        assert_eq!(full.len() as u64, wal::SEGMENT_BYTES, "preallocated");
        assert!(full[sizes[2] as usize..].iter().all(|&b| b == 0));
        {
            let (mut s, r) = Storage::open(d.path(), "a", &members()).unwrap();
            assert_eq!(r.entries.len(), 4);
            assert_eq!(s.log_bytes(), sizes[2], "nothing cut, nothing added");
            s.persist(None, &[entry(5, 2)]).unwrap();
        }
        let (_, r) = Storage::open(d.path(), "a", &members()).unwrap();
        assert_eq!(r.entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        // A segment an older version wrote (records only) is preallocated when opened.
        let f = fs::OpenOptions::new().write(true).open(segment(d.path())).unwrap();
        f.set_len(sizes[2]).unwrap();
        drop(f);
        let (mut s, r) = Storage::open(d.path(), "a", &members()).unwrap();
        assert_eq!(r.entries.len(), 4);
        assert_eq!(fs::metadata(segment(d.path())).unwrap().len(), wal::SEGMENT_BYTES);
        s.persist(None, &[entry(5, 2)]).unwrap();
        drop(s);
        let (_, r) = Storage::open(d.path(), "a", &members()).unwrap();
        assert_eq!(r.entries.len(), 5);
        // The last batch torn: a damaged record, then zeros.
        let mut torn = full.clone();
        torn[sizes[1] as usize + 20] ^= 0x40;
        fs::write(segment(d.path()), &torn).unwrap();
        let (s, r) = Storage::open(d.path(), "a", &members()).unwrap();
        assert_eq!(r.entries.len(), 3);
        assert_eq!(s.log_bytes(), sizes[1], "torn tail cut off");
        let after = fs::read(segment(d.path())).unwrap();
        assert!(after[sizes[1] as usize..].iter().all(|&b| b == 0), "the cut tail reads as zeros");
        drop(s);
        // A damaged record with a valid one after it is not a torn write.
        let mut bad = full;
        bad[sizes[0] as usize + 20] ^= 0x40;
        fs::write(segment(d.path()), &bad).unwrap();
        assert!(matches!(Storage::open(d.path(), "a", &members()), Err(StorageError::Corrupt { .. })));
    }

    /// A crash can leave a write's later sectors on disk and an earlier one not: a
    /// damaged record holding a sector of zeros is torn, and the log is cut there; a
    /// record damaged otherwise, with records after it, is refused.
    #[test]
    fn a_record_with_an_unwritten_sector_is_a_torn_write() {
        let d = tempfile::tempdir().unwrap();
        let (start, end);
        {
            let (mut s, _) = Storage::open(d.path(), "a", &members()).unwrap();
            s.persist(Some(HardState { term: 1, vote: None, commit: 0 }), &[entry(1, 1), entry(2, 1)]).unwrap();
            start = s.log_bytes() as usize;
            let big = Entry { index: 3, term: 1, kind: EntryKind::Normal, data: Bytes::from(vec![7u8; 4096]) };
            s.persist(None, &[big]).unwrap();
            end = s.log_bytes() as usize;
            s.persist(None, &[entry(4, 1)]).unwrap();
        }
        let full = fs::read(segment(d.path())).unwrap();
        let sector = start.next_multiple_of(512) + 512;
        assert!(sector + 512 <= end);
        let mut torn = full.clone();
        torn[sector..sector + 512].fill(0);
        fs::write(segment(d.path()), &torn).unwrap();
        let (s, r) = Storage::open(d.path(), "a", &members()).unwrap();
        assert_eq!(r.entries.len(), 2, "cut at the torn record");
        assert_eq!(s.log_bytes() as usize, start);
        drop(s);
        let mut bad = full;
        bad[sector + 100] ^= 0x40;
        fs::write(segment(d.path()), &bad).unwrap();
        assert!(matches!(Storage::open(d.path(), "a", &members()), Err(StorageError::Corrupt { .. })));
        // A preallocated segment whose magic never reached the disk holds nothing.
        let t = tempfile::tempdir().unwrap();
        Storage::open(t.path(), "a", &members()).unwrap();
        fs::write(segment(t.path()), vec![0u8; 1 << 20]).unwrap();
        let (_, r) = Storage::open(t.path(), "a", &members()).unwrap();
        assert!(r.entries.is_empty());
    }

    #[test]
    fn another_nodes_directory_is_refused_and_another_member_list_is_not() {
        let d = tempfile::tempdir().unwrap();
        write_three(d.path());
        let e = Storage::open(d.path(), "b", &members()).err().expect("refused");
        assert!(e.to_string().contains("belongs to node \"a\""), "{e}");
        // The members change over a cluster's life; --initial-cluster may list others.
        let other: Vec<String> = vec!["a".into(), "x".into()];
        assert!(Storage::open(d.path(), "a", &other).is_ok());
        fs::write(d.path().join("meta"), "format raftkv-data-9\nname a\n").unwrap();
        let e = Storage::open(d.path(), "a", &members()).err().expect("refused");
        assert!(matches!(e, StorageError::Format { .. }), "{e}");
        fs::remove_file(d.path().join("meta")).unwrap();
        let e = Storage::open(d.path(), "a", &members()).err().expect("refused");
        assert!(e.to_string().contains("holds a log"), "{e}");
    }

    #[test]
    fn a_torn_overwrite_keeps_the_vote_and_the_old_suffix() {
        let d = tempfile::tempdir().unwrap();
        let before;
        {
            let (mut s, _) = Storage::open(d.path(), "a", &members()).unwrap();
            s.persist(Some(HardState { term: 1, vote: None, commit: 0 }), &[entry(1, 1), entry(2, 1)]).unwrap();
            // The vote of term 5 is recorded after entry 2.
            s.persist(Some(HardState { term: 5, vote: Some(3), commit: 1 }), &[]).unwrap();
            before = s.log_bytes();
            s.persist(None, &[entry(2, 5), entry(3, 5)]).unwrap();
        }
        // The overwrite's batch is torn: only part of it reached the disk.
        let full = fs::read(segment(d.path())).unwrap();
        fs::write(segment(d.path()), &full[..before as usize + 20]).unwrap();
        let (_, r) = Storage::open(d.path(), "a", &members()).unwrap();
        assert_eq!(r.hard_state, HardState { term: 5, vote: Some(3), commit: 1 }, "the vote survives");
        assert_eq!(r.entries, vec![entry(1, 1), entry(2, 1)]);
    }

    /// Found by the simulation: a follower's batch replaces entries 2.. with a new
    /// leader's and records commit 3. Torn anywhere, recovery must never pair a commit
    /// index with an entry the batch was replacing.
    #[test]
    fn a_torn_overwrite_never_commits_the_replaced_entries() {
        let d = tempfile::tempdir().unwrap();
        let (before, end);
        {
            let (mut s, _) = Storage::open(d.path(), "a", &members()).unwrap();
            s.persist(Some(HardState { term: 1, vote: None, commit: 1 }), &[entry(1, 1), entry(2, 1), entry(3, 1)])
                .unwrap();
            before = s.log_bytes();
            s.persist(Some(HardState { term: 2, vote: None, commit: 3 }), &[entry(2, 2), entry(3, 2)]).unwrap();
            end = s.log_bytes();
        }
        let full = fs::read(segment(d.path())).unwrap();
        let mut kept_commit = false;
        for cut in before..=end {
            let t = tempfile::tempdir().unwrap();
            fs::create_dir_all(t.path().join("wal")).unwrap();
            fs::copy(d.path().join("meta"), t.path().join("meta")).unwrap();
            fs::write(segment(t.path()), &full[..cut as usize]).unwrap();
            let (_, r) = Storage::open(t.path(), "a", &members()).unwrap();
            let commit = r.hard_state.commit;
            kept_commit |= commit == 3;
            for e in r.entries.iter().filter(|e| e.index >= 2 && e.index <= commit) {
                assert_eq!(e.term, 2, "cut at {cut}: commit {commit} covers replaced entry {e:?}");
            }
            // No entry is of a term beyond the recovered one, or the core raises it.
            let last_term = r.entries.last().unwrap().term;
            let node =
                crate::raft::RawNode::new(crate::raft::Config::new(1, vec![1, 2, 3]), r.hard_state, r.entries).unwrap();
            assert!(node.status().term >= last_term, "cut at {cut}");
        }
        assert!(kept_commit, "the whole batch recovers its commit");
    }

    #[test]
    fn compaction_drops_old_segments_and_the_log_restarts_after_the_state_machine() {
        let d = tempfile::tempdir().unwrap();
        let hs = HardState { term: 3, vote: Some(2), commit: 200 };
        {
            claim_dir(d.path(), "a", &members(), 1).unwrap();
            let (mut s, _) = Storage::open_log(d.path(), (0, 0), 512).unwrap();
            for batch in 0..20u64 {
                let es: Vec<Entry> = (1..=10).map(|i| entry(batch * 10 + i, 3)).collect();
                s.persist(Some(HardState { commit: batch * 10, ..hs }), &es).unwrap();
            }
            s.persist(Some(hs), &[]).unwrap();
            let segments = || fs::read_dir(d.path().join("wal")).unwrap().count();
            let before = segments();
            assert!(before > 5, "small segments: {before}");
            s.compact(150).unwrap();
            assert!(segments() < before, "old segments deleted: {} of {before}", segments());
        }
        // The state machine durably holds 180: the log restarts after it.
        let (_, r) = Storage::open_log(d.path(), (180, 3), 512).unwrap();
        assert_eq!(r.base, (180, 3));
        assert_eq!(r.entries.first().unwrap().index, 181);
        assert_eq!(r.entries.last().unwrap().index, 200);
        assert_eq!(r.hard_state, hs);
        // A state machine older than what the log kept cannot be continued: refused.
        let e = Storage::open_log(d.path(), (0, 0), 512).err().expect("refused");
        assert!(matches!(e, StorageError::Corrupt { .. }), "{e}");
        // Nor can a state machine without the log's term and vote.
        let empty = tempfile::tempdir().unwrap();
        claim_dir(empty.path(), "a", &members(), 1).unwrap();
        let e = Storage::open_log(empty.path(), (180, 3), 512).err().expect("refused");
        assert!(e.to_string().contains("no term or vote"), "{e}");
    }

    #[test]
    fn overwriting_a_suffix_keeps_the_hard_state() {
        let d = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = Storage::open(d.path(), "a", &members()).unwrap();
            s.persist(Some(HardState { term: 1, vote: None, commit: 0 }), &[entry(1, 1)]).unwrap();
            s.persist(Some(HardState { term: 5, vote: Some(3), commit: 1 }), &[entry(2, 1), entry(3, 1)]).unwrap();
            // A new leader replaces 2.. with its own entries; no hard-state change in this batch.
            s.persist(None, &[entry(2, 5)]).unwrap();
        }
        let (_, r) = Storage::open(d.path(), "a", &members()).unwrap();
        assert_eq!(r.hard_state, HardState { term: 5, vote: Some(3), commit: 1 });
        assert_eq!(r.entries, vec![entry(1, 1), entry(2, 5)]);
    }

    #[test]
    fn batches_written_together_share_one_fdatasync_and_all_recover_across_segments() {
        let d = tempfile::tempdir().unwrap();
        claim_dir(d.path(), "a", &members(), 1).unwrap();
        {
            let (mut s, _) = Storage::open_log(d.path(), (0, 0), 512).unwrap();
            // A group: a vote, entries, a suffix replaced, commit-only moves.
            s.write(Some(HardState { term: 1, vote: Some(1), commit: 0 }), &[entry(1, 1), entry(2, 1)]).unwrap();
            s.write(None, &[entry(2, 2), entry(3, 2)]).unwrap();
            s.write(Some(HardState { term: 2, vote: Some(1), commit: 3 }), &[]).unwrap();
            assert_eq!(s.syncs(), 0, "nothing synced before the group ends");
            s.sync().unwrap();
            assert_eq!(s.syncs(), 1, "one fdatasync for the group");
            // A commit-only group needs none.
            s.write(Some(HardState { term: 2, vote: Some(1), commit: 1 }), &[]).unwrap();
            s.sync().unwrap();
            assert_eq!(s.syncs(), 1, "commit-only: no fdatasync");
            // A group that spans segments (512 bytes each) closes each one synced.
            for i in 4..=40u64 {
                s.write(None, &[entry(i, 2)]).unwrap();
            }
            s.sync().unwrap();
            assert!(fs::read_dir(d.path().join("wal")).unwrap().count() > 2, "several segments");
        }
        let (_, r) = Storage::open_log(d.path(), (0, 0), 512).unwrap();
        assert_eq!(r.hard_state.term, 2);
        assert_eq!(r.entries.len(), 40);
        assert_eq!(r.entries[1], entry(2, 2));
        assert_eq!(r.entries.last(), Some(&entry(40, 2)));
    }
}
