//! The store's behaviour as a reader of it sees it.
use bytes::Bytes;

use super::*;
use crate::raft::{ConfChange, Entry, EntryKind, Membership};

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = opened(d.path());
    (d, s)
}

/// A store opened as a node opens it: with its founding membership recorded.
fn opened(dir: &std::path::Path) -> Store {
    let s = Store::open(dir, 8 << 20).unwrap();
    s.found_membership(&Membership::of_voters(&[1, 2, 3])).unwrap();
    s
}

fn entry(index: u64, c: Command) -> Entry {
    Entry { index, term: 2, kind: EntryKind::Normal, data: c.encode() }
}

fn put(k: &str, v: &str) -> Command {
    Command::Put { key: k.into(), value: v.into() }
}

fn del(k: &str) -> Command {
    Command::Delete { key: k.into() }
}

/// Applies `commands` as the entries after the store's applied index.
fn apply(s: &Store, commands: Vec<Command>) -> Vec<Result<Applied, MvccError>> {
    let first = s.applied() + 1;
    let entries: Vec<Entry> = commands.into_iter().enumerate().map(|(i, c)| entry(first + i as u64, c)).collect();
    s.apply(&entries).unwrap().into_iter().map(|(_, r)| r).collect()
}

/// A new store with `s`'s state, installed from a snapshot stream of it.
fn installed_copy(s: &Store) -> (tempfile::TempDir, Store) {
    let (d, other) = store();
    install_from(s, &other, d.path());
    (d, other)
}

/// Replaces `into`'s state by `from`'s, through a snapshot stream kept in `dir`.
fn install_from(from: &Store, into: &Store, dir: &std::path::Path) {
    let mut bytes = Vec::new();
    snapshot::stream(from, 1000, |c| {
        bytes.extend(c);
        true
    })
    .unwrap();
    let file = dir.join("stream");
    std::fs::write(&file, &bytes).unwrap();
    into.install(snapshot::build(into, &file).unwrap()).unwrap();
}

fn revisions(r: &[Result<Applied, MvccError>]) -> Vec<Revision> {
    r.iter().map(|a| a.as_ref().unwrap().revision).collect()
}

#[test]
fn writes_get_revisions_versions_and_tombstones_like_etcd() {
    let (_d, s) = store();
    assert_eq!(s.status().revision, 1, "an empty store is at revision 1");
    let r = apply(&s, vec![put("a", "1"), put("a", "2"), put("b", "x"), del("a"), del("missing"), put("a", "3")]);
    // Deleting an absent key makes no revision.
    assert_eq!(revisions(&r), vec![2, 3, 4, 5, 5, 6]);
    let v = s.read().unwrap();
    assert_eq!(v.revision(), 6);
    let a = v.get("a", 0).unwrap().unwrap();
    assert_eq!((a.value.as_str(), a.create_revision, a.mod_revision, a.version), ("3", 6, 6, 1), "recreated");
    let old = v.get("a", 3).unwrap().unwrap();
    assert_eq!((old.value.as_str(), old.create_revision, old.mod_revision, old.version), ("2", 2, 3, 2));
    assert_eq!(v.get("a", 5).unwrap(), None, "deleted at 5");
    assert_eq!(v.get("b", 2).unwrap(), None, "not yet written at 2");
    assert_eq!(v.get("b", 0).unwrap().unwrap().value, "x");
    assert_eq!(v.get("a", 7), Err(MvccError::FutureRevision { requested: 7, current: 6 }));
    let h = v.history(0, usize::MAX, usize::MAX).unwrap();
    let kinds: Vec<_> = h.events.iter().map(|e| (e.revision, e.key.as_str(), e.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (2, "a", EventKind::Put),
            (3, "a", EventKind::Put),
            (4, "b", EventKind::Put),
            (5, "a", EventKind::Delete),
            (6, "a", EventKind::Put)
        ]
    );
    assert_eq!((h.events[0].index, h.events[0].term), (1, 2), "each event names its Raft entry");
    let page = v.history(3, 2, usize::MAX).unwrap();
    assert_eq!((page.events.len(), page.next), (2, 5));
}

#[test]
fn applying_is_in_order_and_exactly_once() {
    let (_d, s) = store();
    let batch: Vec<Entry> =
        vec![Entry { index: 1, term: 1, kind: EntryKind::Noop, data: Bytes::new() }, entry(2, put("k", "v"))];
    s.apply(&batch).unwrap();
    let hash = s.read().unwrap().hash(0).unwrap();
    assert!(s.apply(&batch).unwrap().is_empty(), "replayed entries are skipped");
    assert_eq!((s.applied(), s.status().revision), (2, 2));
    assert_eq!(s.read().unwrap().hash(0).unwrap(), hash);
    assert!(s.apply(&[entry(4, put("k", "w"))]).is_err(), "a gap is refused");
    assert_eq!(s.read().unwrap().get("k", 0).unwrap().unwrap().value, "v", "and changes nothing");
}

#[test]
fn compaction_refuses_old_revisions_and_frees_superseded_history() {
    let (_d, s) = store();
    let mut cmds = Vec::new();
    for i in 0..100 {
        cmds.push(put(&format!("k{}", i % 10), &format!("v{i}")));
    }
    cmds.push(del("k0"));
    apply(&s, cmds);
    let before = s.read().unwrap();
    let at_60 = (0..10).map(|i| before.get(&format!("k{i}"), 60).unwrap()).collect::<Vec<_>>();
    let hash_80 = before.hash(80).unwrap();
    let stored = s.status().stored_bytes;
    drop(before);
    let r = apply(&s, vec![Command::Compact { revision: 60 }]);
    assert_eq!(r[0].as_ref().unwrap().revision, 102, "a compaction is not a write");
    while s.compaction_pending() {
        s.compact_some().unwrap();
    }
    // 49 of the 101 events are superseded at 60 (each key keeps its newest there).
    assert!(s.status().stored_bytes < stored * 6 / 10, "{} of {stored}", s.status().stored_bytes);
    let v = s.read().unwrap();
    assert_eq!(v.compacted(), 60);
    let compacted = MvccError::Compacted { compacted: 60 };
    assert_eq!(v.get("k1", 59), Err(compacted.clone()));
    assert_eq!(v.history(0, 10, usize::MAX).err(), Some(compacted.clone()), "never a silently shorter history");
    assert_eq!(v.history(60, 10, usize::MAX).err(), Some(compacted.clone()));
    assert_eq!(v.history(61, usize::MAX, usize::MAX).unwrap().events.len(), 42, "whole after it");
    // At the compacted revision every key still reads as it was.
    let now_60 = (0..10).map(|i| v.get(&format!("k{i}"), 60).unwrap()).collect::<Vec<_>>();
    assert_eq!(now_60, at_60);
    assert_eq!(v.hash(80).unwrap(), hash_80);
    drop(v);
    let again = apply(&s, vec![Command::Compact { revision: 50 }, Command::Compact { revision: 500 }]);
    assert_eq!(again[0], Err(compacted));
    assert_eq!(again[1], Err(MvccError::FutureRevision { requested: 500, current: 102 }));
}

#[test]
fn a_snapshot_stream_rebuilds_the_same_state_and_damage_builds_nothing() {
    let (_d, s) = store();
    let cmds =
        (0..300).map(|i| if i % 7 == 6 { del(&format!("k{}", i % 13)) } else { put(&format!("k{}", i % 13), "v") });
    apply(&s, cmds.collect());
    apply(&s, vec![Command::Compact { revision: 100 }]);
    let mut bytes = Vec::new();
    let (index, term) = snapshot::stream(&s, 1000, |c| {
        bytes.extend(c);
        true
    })
    .unwrap();
    assert_eq!((index, term), (s.applied(), 2));
    let (d2, other) = store();
    let file = d2.path().join("stream");
    std::fs::write(&file, &bytes).unwrap();
    // A configuration entry applied: the snapshot carries the membership it made.
    let (four, _) = Membership::of_voters(&[1, 2, 3])
        .changed(&ConfChange::Add { name: "d".into(), peer_url: "http://d:1".into(), learner: true })
        .unwrap();
    assert_eq!(s.membership().unwrap().map(|m| m.members.len()), Some(3));
    let built = snapshot::build(&other, &file).unwrap();
    assert_eq!((built.index, built.term), (index, term));
    assert_eq!(built.membership, Membership::of_voters(&[1, 2, 3]));
    drop(built);
    let conf = Entry { index: s.applied() + 1, term: 2, kind: EntryKind::ConfChange, data: four.encode() };
    s.apply(&[conf]).unwrap();
    assert_eq!(s.membership().unwrap(), Some(four.clone()), "applied with the configuration entry");
    bytes.clear();
    let (index, term) = snapshot::stream(&s, 1000, |c| {
        bytes.extend(c);
        true
    })
    .unwrap();
    std::fs::write(&file, &bytes).unwrap();
    let built = snapshot::build(&other, &file).unwrap();
    assert_eq!(built.membership, four);
    assert_eq!(other.install(built).unwrap(), (index, term));
    let (a, b) = (s.read().unwrap(), other.read().unwrap());
    assert_eq!((b.revision(), b.compacted()), (a.revision(), a.compacted()));
    for rev in [100, 200, a.revision()] {
        assert_eq!(b.hash(rev).unwrap(), a.hash(rev).unwrap(), "revision {rev}");
    }
    for i in 0..13 {
        let k = format!("k{i}");
        assert_eq!(b.get(&k, 0).unwrap(), a.get(&k, 0).unwrap(), "{k}");
    }
    assert_eq!(other.durable(), (index, term), "an install is durable");
    // A flipped byte anywhere, or a cut stream, builds nothing and leaves no file.
    for bad in [
        {
            let mut b = bytes.clone();
            b[bytes.len() / 2] ^= 1;
            b
        },
        bytes[..bytes.len() - 3].to_vec(),
        b"RKVSNAP9".to_vec(),
    ] {
        std::fs::write(&file, &bad).unwrap();
        assert!(snapshot::build(&other, &file).is_err());
    }
    let engines: Vec<_> = std::fs::read_dir(d2.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("kv-"))
        .collect();
    assert_eq!(engines.len(), 2, "the installed engine and the one it replaced, no failed build: {engines:?}");
}

/// A snapshot replaces the whole state: the writes after it continue the keys it holds
/// (creation revision, version) and create anew those it lacks.
#[test]
fn a_write_after_an_install_builds_on_the_installed_state() {
    let (d, s) = store();
    apply(&s, vec![put("k", "1"), put("k", "2"), put("k", "3"), put("gone", "1")]);
    let (_e, source) = store();
    apply(&source, vec![put("x", "1"), put("k", "a"), put("k", "b")]);
    install_from(&source, &s, d.path());
    apply(&s, vec![put("k", "c"), put("gone", "2")]);
    let v = s.read().unwrap();
    let k = v.get("k", 0).unwrap().unwrap();
    assert_eq!(
        (k.value.as_str(), k.create_revision, k.version),
        ("c", 3, 3),
        "k as the snapshot had it, written again"
    );
    let gone = v.get("gone", 0).unwrap().unwrap();
    assert_eq!((gone.create_revision, gone.version), (6, 1), "absent from the snapshot: created anew");
}

#[test]
fn a_checkpoint_is_what_reopening_finds() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = opened(d.path());
        apply(&s, vec![put("a", "1"), put("b", "2")]);
        assert_eq!(s.checkpoint().unwrap(), (2, 2));
        assert_eq!(s.durable(), (2, 2));
    }
    let s = opened(d.path());
    assert_eq!(s.durable(), (2, 2));
    assert_eq!(s.read().unwrap().get("b", 0).unwrap().unwrap().value, "2");
    let (events, partial) = s.read().unwrap().history_tail(1 << 20).unwrap();
    assert_eq!((events.len(), partial), (2, false));
}

fn open_session(time_ms: u64, ttl_ms: u64, max_sessions: u64) -> Command {
    Command::OpenSession { time_ms, ttl_ms, max_sessions }
}

fn in_session(client: u64, seq: u64, time_ms: u64, write: Command) -> Command {
    Command::Session { client, seq, time_ms, write: Box::new(write) }
}

#[test]
fn a_session_write_is_applied_once_and_a_retry_gets_the_first_answer() {
    let (_d, s) = store();
    let id = apply(&s, vec![open_session(1000, 60_000, 10)])[0].clone().unwrap().index;
    let first = apply(&s, vec![in_session(id, 1, 1001, put("k", "v1"))]);
    let revision = s.status().revision;
    // The retry (and a concurrent copy of it) change nothing and answer as the first did.
    let again = apply(&s, vec![put("other", "x"), in_session(id, 1, 1002, put("k", "v1"))]);
    assert_eq!(again[1], first[0]);
    assert_eq!(s.status().revision, revision + 1, "only the other write made a revision");
    let history = s.read().unwrap().history(0, usize::MAX, usize::MAX).unwrap();
    assert_eq!(history.events.iter().filter(|e| e.key == "k").count(), 1);
    // The next write applies; the one before it is gone and refused.
    let second = apply(&s, vec![in_session(id, 2, 1003, del("k"))]);
    assert_eq!(second[0].as_ref().unwrap().revision, revision + 2);
    assert_eq!(
        apply(&s, vec![in_session(id, 1, 1004, put("k", "v1"))])[0],
        Err(MvccError::StaleSequence { seq: 1, last: 2 })
    );
    assert_eq!(s.read().unwrap().get("k", 0).unwrap(), None, "the stale retry did not apply");
    assert_eq!(
        apply(&s, vec![in_session(id + 100, 1, 1005, put("k", "x"))])[0],
        Err(MvccError::SessionExpired { client: id + 100 }),
        "a session never opened"
    );
}

#[test]
fn sessions_expire_by_log_time_and_are_bounded_in_number() {
    let (_d, s) = store();
    let opened = apply(&s, vec![open_session(1000, 500, 2), open_session(1100, 5000, 2), open_session(1200, 500, 2)]);
    let (a, b) = (opened[0].clone().unwrap().index, opened[1].clone().unwrap().index);
    assert_eq!(opened[2], Err(MvccError::TooManySessions { max: 2 }));
    // A write 400 ms of log time later keeps `a` alive; the clock never runs backwards.
    assert!(apply(&s, vec![in_session(a, 1, 1400, put("k", "1"))])[0].is_ok());
    assert!(apply(&s, vec![in_session(a, 2, 50, put("k", "2"))])[0].is_ok(), "an older leader clock");
    // Past 1400 + 500 of log time, `a` is gone; `b` (5 s) stays; there is room again.
    let later = apply(&s, vec![open_session(1901, 500, 2), in_session(a, 3, 1902, put("k", "3"))]);
    assert!(later[0].is_ok(), "the expired session made room: {later:?}");
    assert_eq!(later[1], Err(MvccError::SessionExpired { client: a }));
    assert!(apply(&s, vec![in_session(b, 1, 1950, put("k", "4"))])[0].is_ok());
    assert_eq!(s.read().unwrap().get("k", 0).unwrap().unwrap().value, "4");
}

#[test]
fn sessions_survive_a_restart_and_travel_in_snapshots() {
    let d = tempfile::tempdir().unwrap();
    let id;
    let answer;
    {
        let s = opened(d.path());
        id = apply(&s, vec![open_session(1000, 60_000, 10)])[0].clone().unwrap().index;
        answer = apply(&s, vec![in_session(id, 1, 1001, put("k", "v"))]);
        s.checkpoint().unwrap();
    }
    let s = opened(d.path());
    assert_eq!(apply(&s, vec![in_session(id, 1, 1002, put("k", "v"))]), answer, "a retry after a restart");
    let (_d2, other) = installed_copy(&s);
    assert_eq!(apply(&other, vec![in_session(id, 1, 1003, put("k", "v"))]), answer, "a retry after an install");
    assert_eq!(other.status().revision, s.status().revision);
    // It expires there as it would have here.
    assert_eq!(
        apply(&other, vec![in_session(id, 2, 1002 + 60_001, put("k", "w"))])[0],
        Err(MvccError::SessionExpired { client: id })
    );
}

mod txns;

/// Members apply the same committed entries, but group them into apply batches
/// differently (a leader, a follower catching up, a restart replaying the log): every
/// grouping must give the same outcomes and the same keyspace at every revision.
#[test]
fn any_grouping_of_the_same_entries_gives_the_same_state() {
    use crate::mvcc::txn::{Cmp, Compare, Target, Txn, TxnOp};
    use rand::{Rng, SeedableRng};
    let seeds: u64 = std::env::var("RAFTKV_MVCC_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    for seed in 0..seeds {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let key = |rng: &mut rand_chacha::ChaCha8Rng| format!("k{}", rng.gen_range(0..6));
        let range = |rng: &mut rand_chacha::ChaCha8Rng| match rng.gen_range(0..3) {
            0 => KeyRange::Key(key(rng).into_bytes()),
            1 => KeyRange::Span { start: b"k".to_vec(), end: None },
            _ => KeyRange::Span { start: b"k2".to_vec(), end: Some(b"k4".to_vec()) },
        };
        let mut commands = Vec::new();
        for i in 0..300u64 {
            // At most this many revisions exist before entry i.
            let revision_guess = i + 1;
            let c = match rng.gen_range(0..16) {
                0..=3 => put(&key(&mut rng), &format!("v{i}")),
                // A JSON text, and a value too large to keep in its key's record.
                14 => Command::PutJson { key: key(&mut rng), json: format!("[{i}]") },
                15 => put(&key(&mut rng), &format!("{i}{}", "x".repeat(super::record::INLINE_VALUE_MAX))),
                4 => del(&key(&mut rng)),
                5 => Command::Compact { revision: rng.gen_range(1..=revision_guess.max(1)) },
                6 => Command::OpenSession { time_ms: i * 10, ttl_ms: rng.gen_range(50..500), max_sessions: 3 },
                7 => Command::Session {
                    client: rng.gen_range(1..=i.max(1)),
                    seq: rng.gen_range(1..4),
                    time_ms: i * 10,
                    write: Box::new(put(&key(&mut rng), &format!("s{i}"))),
                },
                8 => Command::LeaseGrant { id: rng.gen_range(1..4), ttl: 10 },
                9 => Command::LeaseRevoke { id: rng.gen_range(1..4), since: 0 },
                // Single-key writes without compares (an etcd Put or Delete of one key):
                // with a lease granted or not or kept, a value or none (ignore_value).
                10 | 11 => Command::Txn(Txn {
                    success: (0..rng.gen_range(1..3))
                        .map(|_| match rng.gen_range(0..6) {
                            0 => TxnOp::Delete { range: KeyRange::Key(key(&mut rng).into_bytes()) },
                            1 => TxnOp::Put { key: key(&mut rng), value: None, lease: Some(0) },
                            // Keeps the key's lease (ignore_lease): not one that joins.
                            2 => TxnOp::Put { key: key(&mut rng), value: Some(format!("c{i}")), lease: None },
                            _ => TxnOp::Put {
                                key: key(&mut rng),
                                value: Some(format!("b{i}")),
                                lease: Some([0, 0, 1, 2, 3][rng.gen_range(0..5)]),
                            },
                        })
                        .collect(),
                    ..Txn::default()
                }),
                _ => {
                    let compare = Compare {
                        range: range(&mut rng),
                        cmp: [Cmp::Equal, Cmp::Greater, Cmp::Less, Cmp::NotEqual][rng.gen_range(0..4)],
                        target: if rng.gen_bool(0.5) {
                            Target::Version(rng.gen_range(0..3))
                        } else {
                            Target::Lease(rng.gen_range(0..4))
                        },
                    };
                    let read = TxnOp::Range {
                        range: range(&mut rng),
                        revision: rng.gen_range(0..=revision_guess),
                        limit: 0,
                        keys_only: false,
                    };
                    Command::Txn(Txn {
                        compares: vec![compare],
                        success: vec![
                            read,
                            TxnOp::Put {
                                key: key(&mut rng),
                                value: Some(format!("t{i}")),
                                lease: [None, Some(0), Some(1), Some(2), Some(3)][rng.gen_range(0..5)],
                            },
                        ],
                        failure: vec![TxnOp::Delete { range: range(&mut rng) }],
                    })
                }
            };
            commands.push(entry(i + 1, c));
        }
        // The fourth grouping applies as a member with nobody waiting for some entries
        // (a follower's): these answer no previous key of a put, the rest is alike.
        let waited: std::collections::HashSet<u64> =
            (1..=commands.len() as u64).filter(|_| rng.gen_bool(0.5)).collect();
        let mut results = Vec::new();
        for grouping in 0..4 {
            let (_d, s) = store();
            let mut outcomes = Vec::new();
            let mut at = 0;
            while at < commands.len() {
                let n = match grouping {
                    0 => commands.len(),
                    1 => 1,
                    _ => rng.gen_range(1..40),
                };
                let batch = &commands[at..(at + n).min(commands.len())];
                outcomes.extend(
                    s.apply_answering(batch, |i| grouping < 3 || waited.contains(&i))
                        .unwrap()
                        .into_iter()
                        .map(|(i, r)| (i, r.map(|a| (a.revision, a.txn.as_deref().cloned())))),
                );
                at += n;
            }
            let v = s.read().unwrap();
            let live = live_as_in_the_history(&v);
            if grouping == 0 {
                // A member built from a snapshot of it reads the same.
                let (_c, copy) = installed_copy(&s);
                assert_eq!(
                    live_as_in_the_history(&copy.read().unwrap()),
                    live,
                    "seed {seed}: installed from a snapshot"
                );
            }
            let hashes: Vec<_> = (v.compacted().max(1)..=v.revision()).map(|r| v.hash(r).ok()).collect();
            // Leases as granted, the keys attached (and the index of them, raw), and the
            // bytes counted, the same too; and after a restart.
            let leases: Vec<_> = s
                .leases()
                .iter()
                .map(|(&id, &g)| {
                    let raw = v.raw_prefix(&v.engine().lease_keys, &lease::lease_key(id)).count();
                    (id, g, v.lease_keys(id).unwrap(), raw)
                })
                .collect();
            let granted = s.leases();
            let state = (outcomes, (v.revision(), v.compacted(), hashes, leases, s.status().stored_bytes, live));
            s.checkpoint().unwrap();
            drop(v);
            s.close();
            drop(s);
            let reopened = Store::open(_d.path(), 8 << 20).unwrap().leases();
            assert_eq!(*reopened, *granted, "seed {seed}: the leases a restart finds");
            results.push(state);
        }
        assert_eq!(results[0], results[1], "seed {seed}: one batch against one entry per batch");
        assert_eq!(results[0], results[2], "seed {seed}: one batch against random batches");
        assert_eq!(results[0].1, results[3].1, "seed {seed}: answering some entries only, the same state");
        let answered = |r: &[(u64, _)]| r.iter().filter(|(i, _)| waited.contains(i)).cloned().collect::<Vec<_>>();
        assert_eq!(answered(&results[0].0), answered(&results[3].0), "seed {seed}: the entries answered");
    }
}

/// The live keys as a read of the latest revision finds them, after checking that each
/// reads as the history's last event of it says (its value kept with the key or not).
fn live_as_in_the_history(v: &ReadView) -> Vec<KeyValue> {
    let mut last = std::collections::BTreeMap::new();
    for item in v.raw_history() {
        let (rev, _, raw) = item.unwrap();
        let e = record::decode_event(rev, &raw).unwrap();
        last.insert(e.key.clone(), e);
    }
    let expected: Vec<KeyValue> = last.into_values().filter_map(|e| e.key_value()).collect();
    let all = v.range(&KeyRange::Span { start: vec![0], end: None }, 0, 0, false).unwrap().kvs;
    assert_eq!(all, expected, "a range of every key against the history");
    for kv in &all {
        assert_eq!(v.get(&kv.key, 0).unwrap().as_ref(), Some(kv), "a get of {}", kv.key);
        let point = v.range(&KeyRange::Key(kv.key.clone().into_bytes()), 0, 0, false).unwrap();
        assert_eq!(point.kvs, std::slice::from_ref(kv), "a point read of {}", kv.key);
    }
    all
}

/// A version kept by one compaction (its delete came later) is removed with that delete
/// by the next: a read of the past never sees a deleted key again.
#[test]
fn a_key_deleted_between_two_compactions_stays_deleted_in_the_past() {
    let (_d, s) = store();
    apply(&s, vec![put("k", "old"), put("x", "1"), Command::Compact { revision: 3 }]);
    apply(&s, vec![del("k"), put("y", "1"), Command::Compact { revision: 5 }, put("z", "1")]);
    while s.compaction_pending() {
        s.compact_some().unwrap();
    }
    let v = s.read().unwrap();
    assert_eq!(v.get("k", 5).unwrap(), None, "k was deleted at 4");
    assert_eq!(v.get("k", 0).unwrap(), None);
    assert_eq!(v.range(&KeyRange::Key(b"k".to_vec()), 5, 0, false).unwrap().count, 0);
}

mod leases;

#[test]
fn values_read_alike_from_their_key_record_or_from_the_history() {
    use super::record::{KeyMeta, INLINE_VALUE_MAX};
    let (_d, s) = store();
    let big = "b".repeat(INLINE_VALUE_MAX + 1);
    apply(
        &s,
        vec![put("a", "1"), put("big", &big), Command::PutJson { key: "j".into(), json: "[1]".into() }, put("a", "2")],
    );
    // Small values are kept with their key; a larger one only in the history.
    let engine = s.engine().unwrap();
    let record = |k: &str| engine.keys.get(k).unwrap().unwrap();
    let (a, inline) = KeyMeta::decode_record(&record("a")).map(|(m, v)| (m, v.map(|v| v.value.to_string()))).unwrap();
    assert_eq!(inline.as_deref(), Some("2"));
    assert!(KeyMeta::decode_record(&record("big")).unwrap().1.is_none());
    let expect = |v: &ReadView| {
        let a = v.get("a", 0).unwrap().unwrap();
        assert_eq!((a.value.as_str(), a.version, a.mod_revision, a.create_revision), ("2", 2, 5, 2));
        assert_eq!(v.get("big", 0).unwrap().unwrap().value, big);
        let j = v.get("j", 0).unwrap().unwrap();
        assert_eq!((j.value.as_str(), j.json), ("[1]", true));
        let all = v.range(&KeyRange::Span { start: b"a".to_vec(), end: None }, 0, 0, false).unwrap();
        let values: Vec<&str> = all.kvs.iter().map(|kv| kv.value.as_str()).collect();
        assert_eq!(values, ["2", big.as_str(), "[1]"]);
        let point = v.range(&KeyRange::Key(b"j".to_vec()), 0, 0, false).unwrap();
        assert!(point.kvs[0].json);
        // Keys only: the same keys and metadata, no value (none is read), however kept.
        let meta = |kvs: &[KeyValue]| -> Vec<_> {
            kvs.iter().map(|kv| (kv.key.clone(), kv.create_revision, kv.mod_revision, kv.version, kv.lease)).collect()
        };
        for range in [KeyRange::Span { start: b"a".to_vec(), end: None }, KeyRange::Key(b"big".to_vec())] {
            let keys = v.range(&range, 0, 0, true).unwrap();
            let full = v.range(&range, 0, 0, false).unwrap();
            assert_eq!(meta(&keys.kvs), meta(&full.kvs), "{range:?}");
            assert_eq!(keys.count, full.count);
            assert!(keys.kvs.iter().all(|kv| kv.value.is_empty()), "{range:?}");
        }
    };
    expect(&s.read().unwrap());
    // A store written before values were kept with their keys holds the metadata
    // alone: its values are read from the history, the same.
    let legacy = |k: &str| {
        let m = KeyMeta::decode(&record(k)).unwrap();
        engine.keys.insert(k, m.encode().as_slice()).unwrap();
    };
    legacy("a");
    legacy("j");
    assert_eq!(KeyMeta::decode(&record("a")).unwrap(), a);
    assert!(KeyMeta::decode_record(&record("a")).unwrap().1.is_none());
    expect(&s.read().unwrap());
    // Its next write keeps the value with the key again.
    apply(&s, vec![put("a", "3")]);
    assert_eq!(KeyMeta::decode_record(&record("a")).unwrap().1.map(|v| v.value), Some("3"));
    assert_eq!(s.read().unwrap().get("a", 0).unwrap().unwrap().version, 3);
}
