//! What applying one committed write costs the state machine (per node), by kind:
//! `cargo bench --bench apply`. Applies 60,000 entries in batches of 32 (as the
//! applier meets them under load) to a fresh store in a temporary directory, keys
//! spread over 200,000, 256 B values; prints microseconds per entry, best of three.
//! A figure for comparing two builds on one machine, not a throughput claim.
use std::time::{Duration, Instant};

use raftkv::mvcc::txn::{Cmp, Compare, Target, Txn, TxnOp};
use raftkv::mvcc::{Command, KeyRange, Store};
use raftkv::raft::{Entry, EntryKind, Membership};

const ENTRIES: u64 = 60_000;
const BATCH: usize = 32;

fn key(i: u64) -> String {
    format!("key{:08}", (i * 7919) % 200_000)
}

/// The commands of each kind measured: the name printed and entry `i`'s command.
type Kind = (&'static str, fn(u64, &str) -> Command);

const KINDS: [Kind; 3] = [
    ("raftkv Store (plain put)", |i, v| Command::Put { key: key(i), value: v.into() }),
    ("etcd Put (a transaction of one put)", |i, v| {
        Command::Txn(Txn {
            success: vec![TxnOp::Put { key: key(i), value: Some(v.into()), lease: Some(0) }],
            ..Txn::default()
        })
    }),
    ("etcd Txn: put if the version is as read", |i, v| {
        Command::Txn(Txn {
            compares: vec![Compare {
                range: KeyRange::Key(key(i).into_bytes()),
                cmp: Cmp::Greater,
                target: Target::Version(-1),
            }],
            success: vec![TxnOp::Put { key: key(i), value: Some(v.into()), lease: Some(0) }],
            ..Txn::default()
        })
    }),
];

fn run(make: fn(u64, &str) -> Command) -> Duration {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(dir.path(), 64 << 20).expect("a fresh store");
    store.found_membership(&Membership::of_voters(&[1, 2, 3])).expect("the founding membership");
    let value = "v".repeat(256);
    let entries: Vec<Entry> = (0..ENTRIES)
        .map(|i| Entry { index: i + 1, term: 1, kind: EntryKind::Normal, data: make(i, &value).encode() })
        .collect();
    let started = Instant::now();
    for batch in entries.chunks(BATCH) {
        store.apply(batch).expect("applied");
    }
    started.elapsed()
}

fn main() {
    println!("applying {ENTRIES} entries in batches of {BATCH}, best of 3:");
    for (name, make) in KINDS {
        let best = (0..3).map(|_| run(make)).min().expect("three runs");
        println!("  {name:<42} {:>6.1} us/entry", best.as_secs_f64() * 1e6 / ENTRIES as f64);
    }
}
