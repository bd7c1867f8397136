//! engine-bench: redb (copy-on-write B-tree) vs fjall (LSM) on raftkv's MVCC apply path.
//!
//! The same workload for both engines:
//! - tables `keys` (key -> 32-byte meta: create_rev, mod_rev, version, lease),
//!   `revs` (16-byte BE (revision, sub) -> event record), `key_revs` (key ++ 8-byte BE
//!   revision -> empty) and `meta` ("applied" -> applied index, term, revision), the meta
//!   entry written in the same transaction / write batch as the data;
//! - N puts of uniformly random keys `key-%07d` (fixed seed) with 256-byte random values,
//!   64 entries per transaction / batch, not fsynced; a durable checkpoint every 10,000 entries.
//!
//! Modes (see README.md): a full run (apply, snapshot stream, restore), `--crash-after N`
//! (apply, then SIGKILL itself) and `--reopen` (time opening a crashed database).
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const MIB: f64 = 1024.0 * 1024.0;
const VALUE_LEN: usize = 256;
const TERM: u64 = 1;
const FIRST_REVISION: u64 = 1;

// ---------------------------------------------------------------- options

#[derive(Clone, Debug)]
struct Opts {
    engine: String,
    dir: PathBuf,
    n: u64,
    key_space: u64,
    batch: usize,
    checkpoint_every: u64,
    cache_mib: u64,
    seed: u64,
    crash_after: Option<u64>,
    reopen: bool,
    skip_snapshot: bool,
    fjall_restore: String,
    fjall_max_journal_mib: Option<u64>,
}

fn usage() -> ! {
    eprintln!(
        "usage: engine-bench --engine redb|fjall [--dir DIR] [--n N] [--keys K] [--batch B]\n\
         \x20                 [--checkpoint-every C] [--cache-mib M] [--seed S]\n\
         \x20                 [--crash-after N | --reopen] [--skip-snapshot] [--fjall-restore ingest|batch]\n\
         \x20                 [--fjall-max-journal-mib M (>= 64; fjall's default is 512)]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        engine: String::new(),
        dir: PathBuf::new(),
        n: 1_000_000,
        key_space: 1_000_000,
        batch: 64,
        checkpoint_every: 10_000,
        cache_mib: 64,
        seed: 0x5eed_2026,
        crash_after: None,
        reopen: false,
        skip_snapshot: false,
        fjall_restore: "ingest".into(),
        fjall_max_journal_mib: None,
    };
    let mut dir = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let val = |i: &mut usize| -> String {
        *i += 1;
        args.get(*i).cloned().unwrap_or_else(|| usage())
    };
    let num = |s: String| -> u64 { s.replace('_', "").parse().unwrap_or_else(|_| usage()) };
    while i < args.len() {
        match args[i].as_str() {
            "--engine" => o.engine = val(&mut i),
            "--dir" => dir = Some(PathBuf::from(val(&mut i))),
            "--n" => o.n = num(val(&mut i)),
            "--keys" => o.key_space = num(val(&mut i)),
            "--batch" => o.batch = num(val(&mut i)) as usize,
            "--checkpoint-every" => o.checkpoint_every = num(val(&mut i)),
            "--cache-mib" => o.cache_mib = num(val(&mut i)),
            "--seed" => o.seed = num(val(&mut i)),
            "--crash-after" => o.crash_after = Some(num(val(&mut i))),
            "--reopen" => o.reopen = true,
            "--skip-snapshot" => o.skip_snapshot = true,
            "--fjall-restore" => o.fjall_restore = val(&mut i),
            "--fjall-max-journal-mib" => o.fjall_max_journal_mib = Some(num(val(&mut i))),
            _ => usage(),
        }
        i += 1;
    }
    if o.engine != "redb" && o.engine != "fjall" {
        usage();
    }
    if o.fjall_restore != "ingest" && o.fjall_restore != "batch" {
        usage();
    }
    o.dir = dir.unwrap_or_else(|| PathBuf::from(format!("/tmp/engine-bench/{}", o.engine)));
    o
}

// ---------------------------------------------------------------- workload

/// splitmix64: a fixed-seed, dependency-free generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

struct Put {
    key: Vec<u8>,
    value: Vec<u8>,
}

fn gen_put(rng: &mut Rng, key_space: u64) -> Put {
    let k = rng.next() % key_space;
    let key = format!("key-{k:07}").into_bytes();
    let mut value = Vec::with_capacity(VALUE_LEN);
    while value.len() < VALUE_LEN {
        value.extend_from_slice(&rng.next().to_le_bytes());
    }
    value.truncate(VALUE_LEN);
    Put { key, value }
}

// ---------------------------------------------------------------- encodings (as raftkv's)

/// `keys` value: create_rev, mod_rev, version, lease (u64 LE each).
fn enc_keymeta(create: u64, modr: u64, version: u64, lease: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0..8].copy_from_slice(&create.to_le_bytes());
    b[8..16].copy_from_slice(&modr.to_le_bytes());
    b[16..24].copy_from_slice(&version.to_le_bytes());
    b[24..32].copy_from_slice(&lease.to_le_bytes());
    b
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// (create_rev, version) of a `keys` value.
fn dec_keymeta(b: &[u8]) -> (u64, u64) {
    assert_eq!(b.len(), 32, "damaged keys value");
    (u64_at(b, 0), u64_at(b, 16))
}

/// `revs` key: 16 bytes big-endian (revision, sub).
fn enc_revkey(rev: u64, sub: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&rev.to_be_bytes());
    b[8..16].copy_from_slice(&sub.to_be_bytes());
    b
}

/// `revs` value: `[op u8][index u64][term u64][create u64][version u64][key_len u32][key][value]`.
fn enc_event(op: u8, key: &[u8], value: &[u8], create: u64, version: u64, index: u64, term: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(37 + key.len() + value.len());
    b.push(op);
    for v in [index, term, create, version] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(key.len() as u32).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(value);
    b
}

fn event_index(b: &[u8]) -> u64 {
    u64_at(b, 1)
}

/// `key_revs` key: key ++ 8-byte BE revision.
fn enc_keyrev(key: &[u8], rev: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(key.len() + 8);
    b.extend_from_slice(key);
    b.extend_from_slice(&rev.to_be_bytes());
    b
}

const META_KEY: &str = "applied";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Meta {
    applied: u64,
    term: u64,
    revision: u64,
}

impl Meta {
    fn enc(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..8].copy_from_slice(&self.applied.to_le_bytes());
        b[8..16].copy_from_slice(&self.term.to_le_bytes());
        b[16..24].copy_from_slice(&self.revision.to_le_bytes());
        b
    }
    fn dec(b: Option<&[u8]>) -> Meta {
        match b {
            None => Meta { applied: 0, term: 0, revision: FIRST_REVISION },
            Some(b) => Meta { applied: u64_at(b, 0), term: u64_at(b, 8), revision: u64_at(b, 16) },
        }
    }
}

/// What one applied put writes, computed from the key's previous metadata.
struct Writes {
    keymeta: [u8; 32],
    revkey: [u8; 16],
    event: Vec<u8>,
    keyrev: Vec<u8>,
}

fn apply_one(meta: &mut Meta, index: u64, put: &Put, old: Option<(u64, u64)>) -> Writes {
    let revision = meta.revision + 1;
    let (create, version) = match old {
        Some((c, v)) => (c, v + 1),
        None => (revision, 1),
    };
    meta.revision = revision;
    meta.applied = index;
    meta.term = TERM;
    Writes {
        keymeta: enc_keymeta(create, revision, version, 0),
        revkey: enc_revkey(revision, 0),
        event: enc_event(1, &put.key, &put.value, create, version, index, TERM),
        keyrev: enc_keyrev(&put.key, revision),
    }
}

// ---------------------------------------------------------------- engines

const TABLES: [&str; 4] = ["keys", "revs", "key_revs", "meta"];

trait Engine {
    fn meta(&self) -> Res<Meta>;
    /// One transaction / atomic batch: the puts (entries first_index..) and the meta entry.
    fn apply(&mut self, meta: &mut Meta, first_index: u64, puts: &[Put]) -> Res<()>;
    /// Makes everything applied durable.
    fn checkpoint(&mut self) -> Res<()>;
    /// Streams a consistent snapshot of all tables: (records, bytes).
    fn stream_snapshot(&self, out: &Path) -> Res<(u64, u64)>;
    /// (raft index of the newest `revs` record, number of `keys` records): a consistency check.
    fn check(&self) -> Res<(u64, u64)>;
    fn settings(&self) -> String;
    /// Engine-specific figures, without waiting.
    fn fjall_detail(&self) -> String {
        String::new()
    }
    /// Waits (at most 60 s) until background work (fjall: flushes, compactions) is idle;
    /// returns the wait and a description of engine-specific figures.
    fn settle(&self) -> (Duration, String) {
        (Duration::ZERO, String::new())
    }
    /// redb: how often the repair callback ran while opening (0 = no repair).
    fn repair_callbacks(&self) -> Option<u64> {
        None
    }
}

struct SnapWriter {
    w: BufWriter<File>,
    records: u64,
    bytes: u64,
}

impl SnapWriter {
    fn new(path: &Path) -> Res<SnapWriter> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
        w.write_all(b"EBS1")?;
        Ok(SnapWriter { w, records: 0, bytes: 4 })
    }
    /// `[table u8][key_len u32 LE][key][value_len u32 LE][value]`
    fn rec(&mut self, table: u8, k: &[u8], v: &[u8]) -> Res<()> {
        self.w.write_all(&[table])?;
        self.w.write_all(&(k.len() as u32).to_le_bytes())?;
        self.w.write_all(k)?;
        self.w.write_all(&(v.len() as u32).to_le_bytes())?;
        self.w.write_all(v)?;
        self.records += 1;
        self.bytes += 9 + k.len() as u64 + v.len() as u64;
        Ok(())
    }
    fn finish(mut self) -> Res<(u64, u64)> {
        // End marker: table 255 with the record count as the value.
        let n = self.records.to_le_bytes();
        self.w.write_all(&[255])?;
        self.w.write_all(&0u32.to_le_bytes())?;
        self.w.write_all(&8u32.to_le_bytes())?;
        self.w.write_all(&n)?;
        self.w.flush()?;
        Ok((self.records, self.bytes + 17))
    }
}

struct SnapReader {
    r: BufReader<File>,
}

impl SnapReader {
    fn open(path: &Path) -> Res<SnapReader> {
        let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic)?;
        if &magic != b"EBS1" {
            return Err("bad snapshot magic".into());
        }
        Ok(SnapReader { r })
    }
    /// Next (table, key, value); None at the end marker.
    fn next(&mut self, k: &mut Vec<u8>, v: &mut Vec<u8>) -> Res<Option<u8>> {
        let mut t = [0u8; 1];
        self.r.read_exact(&mut t)?;
        let mut len = [0u8; 4];
        self.r.read_exact(&mut len)?;
        k.resize(u32::from_le_bytes(len) as usize, 0);
        self.r.read_exact(k)?;
        self.r.read_exact(&mut len)?;
        v.resize(u32::from_le_bytes(len) as usize, 0);
        self.r.read_exact(v)?;
        Ok(if t[0] == 255 { None } else { Some(t[0]) })
    }
}

// ------------------------------------------ redb

mod redb_engine {
    use super::*;
    use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

    pub const KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("keys");
    pub const REVS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("revs");
    pub const KEY_REVS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("key_revs");
    pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
    pub const FILE: &str = "kv.redb";

    pub struct Redb {
        pub db: Database,
        cache: usize,
        pub repair_calls: Arc<AtomicU64>,
    }

    impl Redb {
        /// `create`: make (or open) the file; otherwise open an existing one.
        pub fn open(dir: &Path, cache: usize, create: bool) -> Res<Redb> {
            std::fs::create_dir_all(dir)?;
            let repair_calls = Arc::new(AtomicU64::new(0));
            let rc = repair_calls.clone();
            let mut b = Database::builder();
            b.set_cache_size(cache);
            b.set_repair_callback(move |_s| {
                rc.fetch_add(1, Ordering::Relaxed);
            });
            let path = dir.join(FILE);
            let db = if create { b.create(&path)? } else { b.open(&path)? };
            let r = Redb { db, cache, repair_calls };
            if create {
                let mut txn = r.db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                txn.set_quick_repair(true);
                txn.open_table(KEYS)?;
                txn.open_table(REVS)?;
                txn.open_table(KEY_REVS)?;
                txn.open_table(META)?;
                txn.commit()?;
            }
            Ok(r)
        }

        fn begin(&self, d: Durability) -> Res<redb::WriteTransaction> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(d)?;
            txn.set_quick_repair(true);
            Ok(txn)
        }

        /// Restores a snapshot stream into this (fresh) database: commits of 100,000
        /// records (not fsynced), then one Immediate commit.
        pub fn restore(&mut self, path: &Path) -> Res<u64> {
            let mut r = SnapReader::open(path)?;
            let (mut k, mut v) = (Vec::new(), Vec::new());
            let mut n = 0u64;
            let mut done = false;
            while !done {
                let txn = self.begin(Durability::None)?;
                {
                    let mut t = [txn.open_table(KEYS)?, txn.open_table(REVS)?, txn.open_table(KEY_REVS)?];
                    let mut meta = txn.open_table(META)?;
                    for _ in 0..100_000 {
                        match r.next(&mut k, &mut v)? {
                            None => {
                                done = true;
                                break;
                            }
                            Some(3) => {
                                meta.insert(std::str::from_utf8(&k)?, v.as_slice())?;
                            }
                            Some(i) => {
                                t[i as usize].insert(k.as_slice(), v.as_slice())?;
                            }
                        }
                        n += 1;
                    }
                }
                txn.commit()?;
            }
            self.checkpoint()?;
            Ok(n)
        }
    }

    impl Engine for Redb {
        fn meta(&self) -> Res<Meta> {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(META)?;
            let g = t.get(META_KEY)?;
            Ok(Meta::dec(g.as_ref().map(|g| g.value())))
        }

        fn apply(&mut self, meta: &mut Meta, first_index: u64, puts: &[Put]) -> Res<()> {
            let txn = self.begin(Durability::None)?;
            {
                let mut keys = txn.open_table(KEYS)?;
                let mut revs = txn.open_table(REVS)?;
                let mut key_revs = txn.open_table(KEY_REVS)?;
                let mut meta_t = txn.open_table(META)?;
                for (i, put) in puts.iter().enumerate() {
                    // The transaction reads its own earlier writes (a key twice in a batch).
                    let old = keys.get(put.key.as_slice())?.map(|g| dec_keymeta(g.value()));
                    let w = apply_one(meta, first_index + i as u64, put, old);
                    keys.insert(put.key.as_slice(), w.keymeta.as_slice())?;
                    revs.insert(w.revkey.as_slice(), w.event.as_slice())?;
                    key_revs.insert(w.keyrev.as_slice(), [].as_slice())?;
                }
                meta_t.insert(META_KEY, meta.enc().as_slice())?;
            }
            txn.commit()?;
            Ok(())
        }

        fn checkpoint(&mut self) -> Res<()> {
            // As raftkv's Store::checkpoint: an empty Immediate commit makes all before it durable.
            self.begin(Durability::Immediate)?.commit()?;
            Ok(())
        }

        fn stream_snapshot(&self, out: &Path) -> Res<(u64, u64)> {
            let txn = self.db.begin_read()?;
            let mut w = SnapWriter::new(out)?;
            for (i, def) in [KEYS, REVS, KEY_REVS].into_iter().enumerate() {
                let t = txn.open_table(def)?;
                for item in t.iter()? {
                    let (k, v) = item?;
                    w.rec(i as u8, k.value(), v.value())?;
                }
            }
            let t = txn.open_table(META)?;
            for item in t.iter()? {
                let (k, v) = item?;
                w.rec(3, k.value().as_bytes(), v.value())?;
            }
            w.finish()
        }

        fn check(&self) -> Res<(u64, u64)> {
            let txn = self.db.begin_read()?;
            let revs = txn.open_table(REVS)?;
            let last = revs.last()?.map(|(_, v)| event_index(v.value())).unwrap_or(0);
            let keys = txn.open_table(KEYS)?.len()?;
            Ok((last, keys))
        }

        fn repair_callbacks(&self) -> Option<u64> {
            Some(self.repair_calls.load(Ordering::Relaxed))
        }

        fn settings(&self) -> String {
            format!(
                "redb 4.6: Builder::set_cache_size({} MiB); apply txns Durability::None + set_quick_repair(true); \
                 checkpoint = empty Durability::Immediate commit (quick_repair); ExclusiveWriter; default 2-phase commit (implied by quick_repair)",
                self.cache >> 20
            )
        }
    }
}

// ------------------------------------------ fjall

mod fjall_engine {
    use super::*;
    use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};

    pub struct Fjall {
        pub db: Database,
        pub ks: [Keyspace; 4], // keys, revs, key_revs, meta
        cache: u64,
        write_buffer: u64,
        memtable: u64,
        overlay: HashMap<Vec<u8>, (u64, u64)>,
        max_journal_mib: Option<u64>,
    }

    impl Fjall {
        /// Budget: block cache = half, memtables = half (an eighth per keyspace, 4 keyspaces).
        /// (fjall 3.1's `max_write_buffer_size` is deprecated and not wired to anything, so the
        /// write-buffer half is set per keyspace.)
        pub fn open(dir: &Path, budget: u64, max_journal_mib: Option<u64>) -> Res<Fjall> {
            let cache = budget / 2;
            let memtable = budget / 8;
            let write_buffer = memtable * 4;
            let mut b = Database::builder(dir).cache_size(cache);
            if let Some(m) = max_journal_mib {
                b = b.max_journaling_size(m << 20);
            }
            let db = b.open()?;
            let mk = |name: &str| db.keyspace(name, || KeyspaceCreateOptions::default().max_memtable_size(memtable));
            let ks = [mk(TABLES[0])?, mk(TABLES[1])?, mk(TABLES[2])?, mk(TABLES[3])?];
            Ok(Fjall { db, ks, cache, write_buffer, memtable, overlay: HashMap::new(), max_journal_mib })
        }

        /// Restores a snapshot stream into this (fresh) database. `ingest`: each table is
        /// bulk-loaded with `Keyspace::start_ingestion` (the stream is sorted per table);
        /// `batch`: write batches of 100,000 records. Then persist(SyncAll).
        pub fn restore(&mut self, path: &Path, mode: &str) -> Res<u64> {
            let mut r = SnapReader::open(path)?;
            let (mut k, mut v) = (Vec::new(), Vec::new());
            let mut n = 0u64;
            if mode == "ingest" {
                // The stream holds each table's records in key order, one table after another.
                let mut pending = r.next(&mut k, &mut v)?;
                while let Some(t) = pending {
                    let mut ing = self.ks[t as usize].start_ingestion()?;
                    ing.write(k.as_slice(), v.as_slice())?;
                    n += 1;
                    pending = None;
                    while let Some(t2) = r.next(&mut k, &mut v)? {
                        if t2 != t {
                            pending = Some(t2);
                            break;
                        }
                        ing.write(k.as_slice(), v.as_slice())?;
                        n += 1;
                    }
                    ing.finish()?;
                }
            } else {
                let mut b = self.db.batch();
                while let Some(t) = r.next(&mut k, &mut v)? {
                    b.insert(&self.ks[t as usize], k.as_slice(), v.as_slice());
                    n += 1;
                    if b.len() >= 100_000 {
                        std::mem::replace(&mut b, self.db.batch()).commit()?;
                    }
                }
                b.commit()?;
            }
            self.db.persist(PersistMode::SyncAll)?;
            Ok(n)
        }
    }

    impl Engine for Fjall {
        fn meta(&self) -> Res<Meta> {
            let g = self.ks[3].get(META_KEY)?;
            Ok(Meta::dec(g.as_deref()))
        }

        fn apply(&mut self, meta: &mut Meta, first_index: u64, puts: &[Put]) -> Res<()> {
            // db.batch() has PersistMode::Buffer: written to the OS on commit, not fsynced.
            let mut b = self.db.batch();
            // A write batch does not read its own writes: keys written earlier in this batch
            // are looked up here (raftkv's applier would have to do the same).
            self.overlay.clear();
            let [keys, revs, key_revs, meta_ks] = &self.ks;
            for (i, put) in puts.iter().enumerate() {
                let old = match self.overlay.get(&put.key) {
                    Some(m) => Some(*m),
                    None => keys.get(&put.key)?.map(|g| dec_keymeta(&g)),
                };
                let w = apply_one(meta, first_index + i as u64, put, old);
                self.overlay.insert(put.key.clone(), dec_keymeta(&w.keymeta));
                b.insert(keys, put.key.as_slice(), w.keymeta.as_slice());
                b.insert(revs, w.revkey.as_slice(), w.event);
                b.insert(key_revs, w.keyrev, [].as_slice());
            }
            b.insert(meta_ks, META_KEY, meta.enc().as_slice());
            b.commit()?;
            Ok(())
        }

        fn checkpoint(&mut self) -> Res<()> {
            self.db.persist(PersistMode::SyncAll)?;
            Ok(())
        }

        fn stream_snapshot(&self, out: &Path) -> Res<(u64, u64)> {
            let snap = self.db.snapshot();
            let mut w = SnapWriter::new(out)?;
            for (i, ks) in self.ks.iter().enumerate() {
                for g in snap.iter(ks) {
                    let (k, v) = g.into_inner()?;
                    w.rec(i as u8, &k, &v)?;
                }
            }
            w.finish()
        }

        fn check(&self) -> Res<(u64, u64)> {
            let last = match self.ks[1].last_key_value() {
                Some(g) => event_index(&g.into_inner()?.1),
                None => 0,
            };
            let keys = self.ks[0].len()? as u64;
            Ok((last, keys))
        }

        fn fjall_detail(&self) -> String {
            format!(
                "outstanding flushes {}, active compactions {}, journals {} ({:.1} MiB), tables per keyspace {:?}",
                self.db.outstanding_flushes(),
                self.db.active_compactions(),
                self.db.journal_count(),
                self.db.journal_disk_space().unwrap_or(0) as f64 / MIB,
                self.ks.iter().map(|k| k.table_count()).collect::<Vec<_>>()
            )
        }

        fn settle(&self) -> (Duration, String) {
            let t = Instant::now();
            while (self.db.outstanding_flushes() > 0 || self.db.active_compactions() > 0)
                && t.elapsed() < Duration::from_secs(60)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let waited = t.elapsed();
            let tables: Vec<String> = self
                .ks
                .iter()
                .zip(TABLES)
                .map(|(k, name)| {
                    format!(
                        "{name}: {} tables ({} L0), {:.1} MiB",
                        k.table_count(),
                        k.l0_table_count(),
                        k.disk_space() as f64 / MIB
                    )
                })
                .collect();
            (
                waited,
                format!(
                    "journals {} ({:.1} MiB); {}; compactions completed {}, time compacting {:.1}s (all workers)",
                    self.db.journal_count(),
                    self.db.journal_disk_space().unwrap_or(0) as f64 / MIB,
                    tables.join("; "),
                    self.db.compactions_completed(),
                    self.db.time_compacting().as_secs_f64()
                ),
            )
        }

        fn settings(&self) -> String {
            format!(
                "fjall 3.1: cache_size({} MiB), max_memtable_size({} MiB) for each of the 4 keyspaces ({} MiB), \
                 max_journaling_size {} MiB, default worker_threads (min(cores,4) = {}), default LZ4, default compaction; \
                 apply = db.batch() (PersistMode::Buffer: write() to the OS, no fsync); checkpoint = persist(SyncAll)",
                self.cache >> 20,
                self.memtable >> 20,
                self.write_buffer >> 20,
                self.max_journal_mib.unwrap_or(512),
                std::thread::available_parallelism().map(usize::from).unwrap_or(1).min(4)
            )
        }
    }
}

// ---------------------------------------------------------------- measurements

fn proc_status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rss_mib() -> f64 {
    proc_status_kib("VmRSS:") as f64 / 1024.0
}

fn hwm_mib() -> f64 {
    proc_status_kib("VmHWM:") as f64 / 1024.0
}

/// (apparent bytes, allocated bytes) of all files under `p`.
fn disk_usage(p: &Path) -> (u64, u64) {
    let mut total = (0, 0);
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                let (a, b) = disk_usage(&e.path());
                total.0 += a;
                total.1 += b;
            } else {
                total.0 += m.len();
                total.1 += m.blocks() * 512;
            }
        }
    }
    total
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn open_engine(o: &Opts, dir: &Path, create: bool) -> Res<Box<dyn Engine>> {
    let budget = o.cache_mib << 20;
    Ok(match o.engine.as_str() {
        "redb" => Box::new(redb_engine::Redb::open(dir, budget as usize, create)?),
        _ => {
            if !create && !dir.exists() {
                return Err(format!("{} does not exist", dir.display()).into());
            }
            Box::new(fjall_engine::Fjall::open(dir, budget, o.fjall_max_journal_mib)?)
        }
    })
}

struct ApplyStats {
    total: Duration,
    last10: Duration,
    last10_entries: u64,
    first10: Duration,
    first10_entries: u64,
    checkpoints: u64,
    checkpoint_time: Duration,
    max_batch: Duration,
}

/// Applies entries 1..=n (stops after the batch that reaches `stop_at`, if given).
fn run_apply(o: &Opts, eng: &mut dyn Engine, n: u64, stop_at: Option<u64>) -> Res<(Meta, ApplyStats)> {
    let mut rng = Rng(o.seed);
    let mut meta = eng.meta()?;
    assert_eq!(meta.applied, 0, "run on a fresh directory");
    let t0 = Instant::now();
    let mut last_progress = (t0, 0u64);
    let tenth = (n / 10).max(1);
    let (mut t_first10, mut t_last10_start) = (None, None);
    let mut st = ApplyStats {
        total: Duration::ZERO,
        last10: Duration::ZERO,
        last10_entries: 0,
        first10: Duration::ZERO,
        first10_entries: 0,
        checkpoints: 0,
        checkpoint_time: Duration::ZERO,
        max_batch: Duration::ZERO,
    };
    let mut puts = Vec::with_capacity(o.batch);
    let mut done = 0u64;
    while done < n {
        let len = (o.batch as u64).min(n - done);
        puts.clear();
        for _ in 0..len {
            puts.push(gen_put(&mut rng, o.key_space));
        }
        if t_last10_start.is_none() && done >= n - tenth {
            t_last10_start = Some((Instant::now(), done));
        }
        let tb = Instant::now();
        eng.apply(&mut meta, done + 1, &puts)?;
        let before = done;
        done += len;
        if done / o.checkpoint_every > before / o.checkpoint_every || done == n {
            let tc = Instant::now();
            eng.checkpoint()?;
            st.checkpoints += 1;
            st.checkpoint_time += tc.elapsed();
        }
        st.max_batch = st.max_batch.max(tb.elapsed());
        if t_first10.is_none() && done >= tenth {
            t_first10 = Some((t0.elapsed(), done));
        }
        if done / 100_000 > before / 100_000 || done == n {
            let now = Instant::now();
            let rate = (done - last_progress.1) as f64 / secs(now - last_progress.0);
            println!(
                "[{}] {:>9}/{} entries  elapsed {:>7.1}s  interval {:>8.0} entries/s  rss {:>6.0} MiB  hwm {:>6.0} MiB  disk {:>7.1} MiB",
                o.engine,
                done,
                n,
                secs(t0.elapsed()),
                rate,
                rss_mib(),
                hwm_mib(),
                disk_usage(&o.dir).1 as f64 / MIB
            );
            let _ = std::io::stdout().flush();
            last_progress = (now, done);
        }
        if let Some(s) = stop_at {
            if done >= s {
                break;
            }
        }
    }
    st.total = t0.elapsed();
    if let Some((t, e)) = t_first10 {
        st.first10 = t;
        st.first10_entries = e;
    }
    if let Some((t, e)) = t_last10_start {
        st.last10 = t.elapsed();
        st.last10_entries = done - e;
    }
    Ok((meta, st))
}

// ---------------------------------------------------------------- modes

fn full_run(o: &Opts) -> Res<()> {
    let _ = std::fs::remove_dir_all(&o.dir);
    std::fs::create_dir_all(&o.dir)?;
    let mut eng = open_engine(o, &o.dir, true)?;
    println!("[{}] settings: {}", o.engine, eng.settings());
    println!(
        "[{}] workload: n={} keyspace={} batch={} checkpoint_every={} value={}B seed={:#x} dir={}",
        o.engine,
        o.n,
        o.key_space,
        o.batch,
        o.checkpoint_every,
        VALUE_LEN,
        o.seed,
        o.dir.display()
    );
    let (meta, st) = run_apply(o, eng.as_mut(), o.n, None)?;
    let hwm_apply = hwm_mib();
    let rss_apply = rss_mib();
    let (disk_apparent, disk_alloc) = disk_usage(&o.dir);
    let (last_idx, live_keys) = eng.check()?;
    assert_eq!(eng.meta()?, meta, "meta read back");
    assert_eq!(last_idx, meta.applied, "newest revs record vs applied index");
    let overall = o.n as f64 / secs(st.total);
    let last10 = st.last10_entries as f64 / secs(st.last10);
    let first10 = st.first10_entries as f64 / secs(st.first10);
    println!(
        "[{}] applied {} in {:.1}s: {:.0} entries/s overall, first 10% {:.0}/s, last 10% {:.0}/s; {} checkpoints took {:.1}s; slowest batch(+checkpoint) {:.0} ms; live keys {}",
        o.engine,
        o.n,
        secs(st.total),
        overall,
        first10,
        last10,
        st.checkpoints,
        secs(st.checkpoint_time),
        st.max_batch.as_secs_f64() * 1e3,
        live_keys
    );
    println!(
        "[{}] after apply: VmHWM {:.0} MiB, VmRSS {:.0} MiB, disk {:.1} MiB apparent / {:.1} MiB allocated",
        o.engine,
        hwm_apply,
        rss_apply,
        disk_apparent as f64 / MIB,
        disk_alloc as f64 / MIB
    );

    // fjall only: figures right after apply (no waiting): what the disk figure is made of.
    let detail_apply = eng.fjall_detail();
    if !detail_apply.is_empty() {
        println!("[{}] after apply: {}", o.engine, detail_apply);
    }
    let mut snap = serde_like::Obj::default();
    if !o.skip_snapshot {
        let snap_path = PathBuf::from(format!("/tmp/engine-bench-{}.snap", o.engine));
        let ts = Instant::now();
        let (records, bytes) = eng.stream_snapshot(&snap_path)?;
        let t_snap = ts.elapsed();
        println!(
            "[{}] snapshot stream: {} records, {:.1} MiB in {:.2}s -> {}",
            o.engine,
            records,
            bytes as f64 / MIB,
            secs(t_snap),
            snap_path.display()
        );
        let rdir = PathBuf::from(format!("{}-restore", o.dir.display()));
        let _ = std::fs::remove_dir_all(&rdir);
        let tr = Instant::now();
        let restored = match o.engine.as_str() {
            "redb" => {
                let mut r = redb_engine::Redb::open(&rdir, (o.cache_mib << 20) as usize, true)?;
                let n = r.restore(&snap_path)?;
                let t = tr.elapsed();
                assert_eq!(r.meta()?, meta, "restored meta");
                assert_eq!(r.check()?, (last_idx, live_keys), "restored check");
                (n, t)
            }
            _ => {
                let mut r = fjall_engine::Fjall::open(&rdir, o.cache_mib << 20, o.fjall_max_journal_mib)?;
                let n = r.restore(&snap_path, &o.fjall_restore)?;
                let t = tr.elapsed();
                assert_eq!(r.meta()?, meta, "restored meta");
                assert_eq!(r.check()?, (last_idx, live_keys), "restored check");
                (n, t)
            }
        };
        assert_eq!(restored.0, records, "restored record count");
        let (_, rdisk) = disk_usage(&rdir);
        println!(
            "[{}] restore{}: {} records in {:.2}s ({:.1} MiB on disk)",
            o.engine,
            if o.engine == "fjall" { format!(" ({})", o.fjall_restore) } else { String::new() },
            restored.0,
            secs(restored.1),
            rdisk as f64 / MIB
        );
        snap.num("snapshot_records", records as f64);
        snap.num("snapshot_mib", bytes as f64 / MIB);
        snap.num("snapshot_s", secs(t_snap));
        snap.num("restore_s", secs(restored.1));
        snap.num("restored_disk_mib", rdisk as f64 / MIB);
        if o.engine == "fjall" {
            snap.str("restore_mode", &o.fjall_restore);
        }
        let _ = std::fs::remove_file(&snap_path);
    }
    let (waited, detail) = eng.settle();
    let (_, disk_end) = disk_usage(&o.dir);
    println!(
        "[{}] end: waited {:.1}s for background work; disk {:.1} MiB; VmHWM {:.0} MiB, VmRSS {:.0} MiB{}{}",
        o.engine,
        secs(waited),
        disk_end as f64 / MIB,
        hwm_mib(),
        rss_mib(),
        if detail.is_empty() { "" } else { "; " },
        detail
    );
    let mut j = serde_like::Obj::default();
    j.str("engine", &o.engine);
    j.num("n", o.n as f64);
    j.num("batch", o.batch as f64);
    j.num("cache_mib", o.cache_mib as f64);
    j.num("apply_s", secs(st.total));
    j.num("apply_eps", overall);
    j.num("first10_eps", first10);
    j.num("last10_eps", last10);
    j.num("checkpoints", st.checkpoints as f64);
    j.num("checkpoint_s", secs(st.checkpoint_time));
    j.num("max_batch_ms", st.max_batch.as_secs_f64() * 1e3);
    j.num("hwm_mib_apply", hwm_apply);
    j.num("rss_mib_apply", rss_apply);
    j.num("disk_mib_apply", disk_alloc as f64 / MIB);
    j.num("disk_apparent_mib_apply", disk_apparent as f64 / MIB);
    j.num("live_keys", live_keys as f64);
    j.extend(snap);
    j.num("settle_wait_s", secs(waited));
    j.num("disk_mib_end", disk_end as f64 / MIB);
    j.num("hwm_mib_end", hwm_mib());
    j.num("rss_mib_end", rss_mib());
    println!("SUMMARY {}", j.render());
    Ok(())
}

fn crash_run(o: &Opts, after: u64) -> Res<()> {
    let _ = std::fs::remove_dir_all(&o.dir);
    std::fs::create_dir_all(&o.dir)?;
    let mut eng = open_engine(o, &o.dir, true)?;
    println!("[{}] crash run: apply until {} entries, then SIGKILL; settings: {}", o.engine, after, eng.settings());
    let (meta, _) = run_apply(o, eng.as_mut(), o.n.max(after), Some(after))?;
    let durable = meta.applied / o.checkpoint_every * o.checkpoint_every;
    println!(
        "[{}] committed through index {} (last checkpoint after the batch crossing {}); disk {:.1} MiB; SIGKILL now",
        o.engine,
        meta.applied,
        durable,
        disk_usage(&o.dir).1 as f64 / MIB
    );
    let _ = std::io::stdout().flush();
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    unreachable!("SIGKILL")
}

fn reopen(o: &Opts) -> Res<()> {
    let (_, disk) = disk_usage(&o.dir);
    let t0 = Instant::now();
    let eng = open_engine(o, &o.dir, false)?;
    let t_open = t0.elapsed();
    let meta = eng.meta()?;
    let t_meta = t0.elapsed();
    let tc = Instant::now();
    let (last_idx, live_keys) = eng.check()?;
    let t_check = tc.elapsed();
    let repairs = eng.repair_callbacks();
    println!(
        "[{}] reopen: open {:.3}s, open+read applied index {:.3}s -> applied {} (revision {}); \
         consistency: newest revs record index {} ({}), live keys {} (check took {:.2}s); disk before open {:.1} MiB; repair callbacks {:?}",
        o.engine,
        secs(t_open),
        secs(t_meta),
        meta.applied,
        meta.revision,
        last_idx,
        if last_idx == meta.applied { "matches" } else { "MISMATCH" },
        live_keys,
        secs(t_check),
        disk as f64 / MIB,
        repairs
    );
    let mut j = serde_like::Obj::default();
    j.str("engine", &o.engine);
    j.str("mode", "reopen-after-sigkill");
    if let Some(r) = repairs {
        j.num("repair_callbacks", r as f64);
    }
    j.num("open_s", secs(t_open));
    j.num("open_and_meta_s", secs(t_meta));
    j.num("applied", meta.applied as f64);
    j.num("newest_rev_index", last_idx as f64);
    j.str("consistent", if last_idx == meta.applied { "yes" } else { "no" });
    j.num("disk_mib", disk as f64 / MIB);
    j.num("hwm_mib", hwm_mib());
    println!("SUMMARY {}", j.render());
    Ok(())
}

/// A tiny JSON object writer (keeps the dependency list to the two engines and libc).
mod serde_like {
    #[derive(Default)]
    pub struct Obj(Vec<(String, String)>);
    impl Obj {
        pub fn num(&mut self, k: &str, v: f64) {
            let s = if v.fract() == 0.0 && v.abs() < 1e15 { format!("{v:.0}") } else { format!("{v:.3}") };
            self.0.push((k.into(), s));
        }
        pub fn str(&mut self, k: &str, v: &str) {
            self.0.push((k.into(), format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))));
        }
        pub fn extend(&mut self, o: Obj) {
            self.0.extend(o.0);
        }
        pub fn render(&self) -> String {
            let body: Vec<String> = self.0.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", body.join(","))
        }
    }
}

fn main() {
    let o = parse_opts();
    let r = if o.reopen {
        reopen(&o)
    } else if let Some(n) = o.crash_after {
        crash_run(&o, n)
    } else {
        full_run(&o)
    };
    if let Err(e) = r {
        eprintln!("engine-bench: {e}");
        std::process::exit(1);
    }
}
