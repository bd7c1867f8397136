//! Transactions (etcd's Txn) as a reader of the store sees them: compares, revisions, ranges.
use super::*;
use crate::mvcc::txn::{Cmp, Compare, OpResult, Target, Txn, TxnOp, TxnResult};

fn key(k: &str) -> KeyRange {
    KeyRange::Key(k.as_bytes().to_vec())
}

fn put_op(k: &str, v: &str) -> TxnOp {
    TxnOp::Put { key: k.into(), value: Some(v.into()), lease: Some(0) }
}

fn txn(s: &Store, t: Txn) -> Result<Applied, MvccError> {
    let c = Command::Txn(t);
    assert_eq!(Command::decode(&c.encode()).as_ref(), Some(&c), "the log's encoding round-trips");
    let a = apply(s, vec![c]).remove(0);
    if let Ok(Applied { txn: Some(r), .. }) = &a {
        assert_eq!(TxnResult::decode(&r.encode()).as_ref(), Some(&**r), "the answer's encoding round-trips");
    }
    a
}

fn cas(k: &str, expect: &str, new: &str) -> Txn {
    Txn {
        compares: vec![Compare { range: key(k), cmp: Cmp::Equal, target: Target::Value(expect.into()) }],
        success: vec![put_op(k, new)],
        failure: vec![TxnOp::Range { range: key(k), revision: 0, limit: 0, keys_only: false }],
    }
}

#[test]
fn compare_and_swap_succeeds_once_and_the_loser_reads_the_winner() {
    let (_d, s) = store();
    apply(&s, vec![put("lock", "free")]);
    let won = txn(&s, cas("lock", "free", "a")).unwrap();
    let r = won.txn.unwrap();
    assert!(r.succeeded);
    assert!(matches!(&r.results[0], OpResult::Put { prev: Some(p) } if p.value == "free"));
    let lost = txn(&s, cas("lock", "free", "b")).unwrap();
    let r = lost.txn.unwrap();
    assert!(!r.succeeded);
    assert_eq!(lost.revision, won.revision, "a read-only branch makes no revision");
    match &r.results[0] {
        OpResult::Range(rr) => assert_eq!(rr.kvs[0].value, "a"),
        other => panic!("{other:?}"),
    }
    // A value compare on a missing key fails; a version compare sees version 0.
    assert!(!txn(&s, cas("missing", "", "x")).unwrap().txn.unwrap().succeeded);
    let absent = Compare { range: key("missing"), cmp: Cmp::Equal, target: Target::Version(0) };
    let t = Txn { compares: vec![absent], success: vec![put_op("missing", "now")], failure: vec![] };
    assert!(txn(&s, t).unwrap().txn.unwrap().succeeded);
    assert_eq!(s.read().unwrap().get("missing", 0).unwrap().unwrap().value, "now");
}

#[test]
fn a_transactions_writes_share_one_revision_and_it_reads_its_own_writes() {
    let (_d, s) = store();
    apply(&s, vec![put("p/a", "1"), put("p/b", "2"), put("q", "3")]);
    let before = s.status().revision;
    let prefix = KeyRange::Span { start: b"p/".to_vec(), end: Some(b"p0".to_vec()) };
    let t = Txn {
        compares: vec![],
        success: vec![
            TxnOp::Delete { range: prefix.clone() },
            put_op("p/c", "new"),
            TxnOp::Range { range: prefix.clone(), revision: 0, limit: 0, keys_only: false },
        ],
        failure: vec![],
    };
    let a = txn(&s, t).unwrap();
    assert_eq!(a.revision, before + 1, "one revision for three writes");
    let r = a.txn.unwrap();
    match (&r.results[0], &r.results[2]) {
        (OpResult::Delete { prevs }, OpResult::Range(rr)) => {
            assert_eq!(prevs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), ["p/a", "p/b"]);
            assert_eq!(rr.kvs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), ["p/c"], "its own writes");
        }
        other => panic!("{other:?}"),
    }
    let v = s.read().unwrap();
    assert_eq!(v.range(&prefix, 0, 0, false).unwrap().count, 1);
    assert_eq!(v.range(&prefix, before, 0, false).unwrap().count, 2, "the past is kept");
    let h = v.history(before + 1, usize::MAX, usize::MAX).unwrap();
    assert_eq!(h.events.len(), 3, "three events at one revision");
    assert_eq!(v.hash(0).unwrap(), v.hash(0).unwrap());
    // A plain write in the same batch after a transaction sees what it wrote.
    let t = Txn { compares: vec![], success: vec![put_op("p/d", "1")], failure: vec![] };
    apply(&s, vec![Command::Txn(t), put("p/d", "2")]);
    let d = s.read().unwrap().get("p/d", 0).unwrap().unwrap();
    assert_eq!((d.value.as_str(), d.version, d.create_revision), ("2", 2, d.mod_revision - 1));
}

#[test]
fn a_transaction_that_fails_part_way_changes_nothing() {
    let (_d, s) = store();
    apply(&s, vec![put("a", "1")]);
    let (rev, hash) = (s.status().revision, s.read().unwrap().hash(0).unwrap());
    let t = Txn {
        compares: vec![],
        success: vec![put_op("a", "2"), TxnOp::Put { key: "nope".into(), value: None, lease: Some(0) }],
        failure: vec![],
    };
    // Batched with writes before and after it, which do apply.
    let out = apply(&s, vec![put("b", "b1"), Command::Txn(t), put("c", "c1")]);
    assert_eq!(out[1], Err(MvccError::KeyNotFound));
    assert!(out[0].is_ok() && out[2].is_ok());
    let v = s.read().unwrap();
    let a = v.get("a", 0).unwrap().unwrap();
    assert_eq!((a.key.as_str(), a.value.as_str(), a.version), ("a", "1", 1));
    assert_eq!(v.revision(), rev + 2);
    let h = v.history(rev + 1, usize::MAX, usize::MAX).unwrap();
    let keys: Vec<_> = h.events.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["b", "c"], "only the writes around it");
    assert_ne!(v.hash(0).unwrap(), hash);
    assert_eq!(v.hash(rev).unwrap(), hash);
}

/// Members group committed entries into apply batches differently; a transaction
/// after a compaction in the same batch must decide as it would alone.
#[test]
fn a_transaction_after_a_compaction_in_the_same_batch_decides_as_alone() {
    let read_at = |rev| Txn {
        compares: vec![],
        success: vec![
            TxnOp::Range { range: key("k"), revision: rev, limit: 0, keys_only: false },
            put_op("k", "after"),
        ],
        failure: vec![],
    };
    let mut outcomes = Vec::new();
    for together in [true, false] {
        let (_d, s) = store();
        apply(&s, (0..10).map(|i| put("k", &i.to_string())).collect());
        let cmds = vec![Command::Compact { revision: 8 }, Command::Txn(read_at(5))];
        let out = if together { apply(&s, cmds) } else { cmds.into_iter().flat_map(|c| apply(&s, vec![c])).collect() };
        outcomes.push((out[1].clone().map(|a| a.revision), s.read().unwrap().hash(0).unwrap()));
    }
    assert_eq!(outcomes[0], outcomes[1]);
    assert_eq!(outcomes[0].0, Err(MvccError::Compacted { compacted: 8 }));
}

#[test]
fn history_pages_hold_whole_revisions_and_always_advance() {
    let (_d, s) = store();
    apply(&s, (0..1500).map(|i| put(&format!("d/{i:04}"), "v")).collect());
    let first = s.status().revision;
    let all = KeyRange::Span { start: b"d/".to_vec(), end: Some(b"d0".to_vec()) };
    let t = Txn { compares: vec![], success: vec![TxnOp::Delete { range: all }], failure: vec![] };
    txn(&s, t).unwrap();
    apply(&s, vec![put("after", "1")]);
    let v = s.read().unwrap();
    let page = v.history(first + 1, 1000, usize::MAX).unwrap();
    assert_eq!(page.events.len(), 1500, "the whole revision, past the limit");
    assert_eq!(page.next, first + 2, "the next page starts at the next revision");
    let before = v.history(first - 1, 1, usize::MAX).unwrap();
    assert_eq!((before.events.len(), before.next), (1, first));
}

#[test]
fn ranges_count_limit_and_read_the_past() {
    let (_d, s) = store();
    apply(&s, (0..10).map(|i| put(&format!("k{i}"), &i.to_string())).collect());
    let at = s.status().revision;
    apply(&s, vec![del("k3"), put("k4", "four")]);
    let v = s.read().unwrap();
    let all = KeyRange::Span { start: b"k".to_vec(), end: None };
    let r = v.range(&all, 0, 4, true).unwrap();
    assert_eq!((r.count, r.more, r.kvs.len()), (9, true, 4));
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()), "keys only");
    let past = v.range(&all, at, 0, false).unwrap();
    assert_eq!(past.count, 10);
    assert_eq!(past.kvs[4].value, "4");
    assert_eq!(v.range(&KeyRange::from_etcd(b"k3", b""), 0, 0, false).unwrap().count, 0);
    let inverted = KeyRange::Span { start: b"z".to_vec(), end: Some(b"a".to_vec()) };
    assert_eq!(v.range(&inverted, 0, 0, false).unwrap(), RangeResult::default());
}

/// A one-key read at the latest revision (a point read in the engine) finds what a
/// scan of that key's range finds: live, replaced, deleted and never-written keys,
/// with limits and keys only; an empty key and one longer than any stored, nothing.
#[test]
fn a_one_key_read_finds_what_a_scan_of_its_range_finds() {
    let (_d, s) = store();
    apply(&s, (0..6).map(|i| put(&format!("k{i}"), &i.to_string())).collect());
    apply(&s, vec![del("k3"), put("k4", "four"), put("k", "short")]);
    let v = s.read().unwrap();
    for at in [0, v.revision()] {
        for k in ["k", "k0", "k3", "k4", "k5", "k9", "j"] {
            let span = KeyRange::Span { start: k.into(), end: Some(format!("{k}\0").into()) };
            for (limit, keys_only) in [(0, false), (1, true), (0, true)] {
                let point = v.range(&KeyRange::Key(k.into()), at, limit, keys_only).unwrap();
                assert_eq!(point, v.range(&span, at, limit, keys_only).unwrap(), "{k} at {at}");
            }
        }
    }
    let k4 = v.range(&KeyRange::Key(b"k4".to_vec()), 0, 0, false).unwrap();
    assert_eq!((k4.count, k4.kvs[0].value.as_str(), k4.kvs[0].version), (1, "four", 2));
    for k in [vec![], vec![b'k'; 70_000]] {
        for at in [0, 2] {
            assert_eq!(v.range(&KeyRange::Key(k.clone()), at, 0, false).unwrap(), RangeResult::default());
        }
    }
}

/// Keys longer than any stored one (the engine takes none past 64 KiB) in a read, a
/// compare or a delete: an answer, the same keys as the range cut to storable
/// bounds, never a failure of the node.
#[test]
fn ranges_and_compares_bounded_by_overlong_keys_are_answered() {
    let (_d, s) = store();
    apply(&s, ["k", "kk", "kz", "l"].iter().map(|k| put(k, "v")).collect());
    let past = s.status().revision;
    apply(&s, vec![put("m", "v")]);
    let long = |c: u8| [b"k".as_slice(), &[c; 70_000]].concat();
    let names = |r: RangeResult| r.kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
    let v = s.read().unwrap();
    // The latest revision (scans of `keys`) and a past one (of `key_revs`).
    for at in [0, past] {
        let span = KeyRange::Span { start: long(b'k'), end: Some(long(b'z')) };
        assert_eq!(names(v.range(&span, at, 0, false).unwrap()), ["kz"], "at {at}");
        let from = KeyRange::Span { start: b"k".to_vec(), end: Some(long(b'k')) };
        assert_eq!(names(v.range(&from, at, 0, false).unwrap()), ["k", "kk"], "at {at}");
        assert_eq!(v.get(&String::from_utf8(long(b'k')).unwrap(), at).unwrap(), None);
    }
    let over = KeyRange::Key(long(b'k'));
    let t = Txn {
        compares: vec![Compare { range: over.clone(), cmp: Cmp::Equal, target: Target::Version(0) }],
        success: vec![TxnOp::Delete { range: over }, TxnOp::Delete { range: KeyRange::Key(b"l".to_vec()) }],
        failure: vec![],
    };
    let r = txn(&s, t).unwrap();
    assert!(r.txn.as_ref().unwrap().succeeded, "no such key: version 0");
    assert_eq!(s.read().unwrap().get("l", 0).unwrap(), None);
}
