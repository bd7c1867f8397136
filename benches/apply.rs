//! What applying one committed write costs the state machine (per node), by kind:
//! `cargo bench --bench apply`. Applies 60,000 entries in batches of 32 (as the
//! applier meets them under load) to a fresh store in a temporary directory, 256 B
//! values, keys spread over 20,000 (each written three times: two of three writes
//! replace a value; no key twice in one batch); prints microseconds per entry, best of
//! three. A figure for comparing two builds on one machine, not a throughput claim.
//! `cargo bench --bench apply -- WORD` runs only the kinds whose name holds WORD;
//! `APPLY_ENTRIES=N` and `APPLY_RUNS=N` change the counts (for a run under
//! `valgrind --tool=callgrind`, whose instruction counts the machine's noise does not move);
//! `APPLY_UNANSWERED=1` applies as a follower does, with nobody waiting for the answers.
use std::time::{Duration, Instant};

use raftkv::mvcc::txn::{Cmp, Compare, Target, Txn, TxnOp};
use raftkv::mvcc::{Command, KeyRange, Store};
use raftkv::raft::{Entry, EntryKind, Membership};

const BATCH: usize = 32;

/// A count from the environment, or `default`.
fn count(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn key(i: u64) -> String {
    format!("key{:08}", (i * 7919) % 20_000)
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

fn run(make: fn(u64, &str) -> Command, n: u64, answered: bool) -> Duration {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(dir.path(), 64 << 20).expect("a fresh store");
    store.found_membership(&Membership::of_voters(&[1, 2, 3])).expect("the founding membership");
    let value = "v".repeat(256);
    let entries: Vec<Entry> = (0..n)
        .map(|i| Entry { index: i + 1, term: 1, kind: EntryKind::Normal, data: make(i, &value).encode() })
        .collect();
    let started = Instant::now();
    for batch in entries.chunks(BATCH) {
        store.apply_answering(batch, |_| answered).expect("applied");
    }
    started.elapsed()
}

fn main() {
    let (n, runs) = (count("APPLY_ENTRIES", 60_000).max(1), count("APPLY_RUNS", 3).max(1));
    let answered = count("APPLY_UNANSWERED", 0) == 0;
    // cargo bench passes --bench; any other argument picks kinds.
    let words: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let whose = if answered { "answered, as on the leader" } else { "unanswered, as on a follower" };
    println!("applying {n} entries in batches of {BATCH} ({whose}), best of {runs}:");
    for (name, make) in KINDS {
        if !words.is_empty() && !words.iter().any(|w| name.contains(w.as_str())) {
            continue;
        }
        let best = (0..runs).map(|_| run(make, n, answered)).min().expect("at least one run");
        println!("  {name:<42} {:>6.1} us/entry", best.as_secs_f64() * 1e6 / n as f64);
    }
}
