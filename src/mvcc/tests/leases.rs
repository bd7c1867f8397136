//! Leases as a reader of the store sees them, and how applying batches them.
use super::*;
use crate::mvcc::txn::{Cmp, Compare, OpResult, Target, Txn, TxnOp};

fn put_with(k: &str, v: Option<&str>, lease: Option<i64>) -> Command {
    let op = TxnOp::Put { key: k.into(), value: v.map(str::to_string), lease };
    Command::Txn(Txn { success: vec![op], ..Txn::default() })
}

fn lease_of(s: &Store, k: &str) -> Option<i64> {
    s.read().unwrap().get(k, 0).unwrap().map(|kv| kv.lease)
}

/// An etcd Put or one-key delete joins its apply batch unless a write of its key
/// is pending there (README, "etcd's v3 API"): in one batch or one entry each, the
/// same answers (previous values included) and the same keys, leases and index.
#[test]
fn single_key_writes_decide_alike_in_one_batch_or_one_entry_each() {
    let del_one = |k: &str| {
        Command::Txn(Txn { success: vec![TxnOp::Delete { range: KeyRange::Key(k.into()) }], ..Txn::default() })
    };
    let commands = || {
        vec![
            put("c", "old"),
            Command::LeaseGrant { id: 5, ttl: 30 },
            put_with("c", Some("leased"), Some(5)), // c pending: after a commit
            put("a", "1"),
            put_with("b", Some("2"), Some(5)), // joins, a pending
            put("b", "plain"),                 // finds the joined put's b
            del_one("c"),                      // c committed since: joins
            put_with("d", Some("4"), Some(5)),
            Command::LeaseRevoke { id: 5, since: 0 }, // deletes d only
            Command::Compact { revision: 3 },
            put_with("e", Some("5"), Some(0)),
            put_with("a", Some("again"), Some(0)), // a pending: after a commit
            put_with("f", Some("6"), Some(9)),     // no lease 9: refused
        ]
    };
    let mut seen = Vec::new();
    for together in [true, false] {
        let (_d, s) = store();
        let out = if together {
            apply(&s, commands())
        } else {
            commands().into_iter().flat_map(|c| apply(&s, vec![c])).collect()
        };
        let answers: Vec<_> = out.into_iter().map(|r| r.map(|a| (a.revision, a.txn.as_deref().cloned()))).collect();
        let v = s.read().unwrap();
        let keys: Vec<_> = ["a", "b", "c", "d", "e", "f"].iter().map(|k| v.get(k, 0).unwrap()).collect();
        let index = v.raw_prefix(&v.engine().lease_keys, b"").count();
        seen.push((answers, keys, index, v.hash(0).unwrap(), s.status().stored_bytes));
    }
    assert_eq!(seen[0], seen[1], "one batch against one entry each");
    let (answers, keys, index, ..) = &seen[0];
    let prev = |i: usize| match &answers[i] {
        Ok((_, Some(t))) => match &t.results[0] {
            OpResult::Put { prev } => prev.as_ref().map(|kv| kv.value.clone()),
            OpResult::Delete { prevs } => prevs.first().map(|kv| kv.value.clone()),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    assert_eq!(prev(2), Some("old".into()), "c's put found the pending write");
    assert_eq!(prev(6), Some("leased".into()), "c's delete found the leased value");
    assert_eq!(prev(11), Some("1".into()), "a's put found the pending write");
    assert_eq!(answers[12], Err(MvccError::LeaseNotFound));
    let live: Vec<_> = keys.iter().map(|kv| kv.as_ref().map(|kv| (kv.value.as_str(), kv.version, kv.lease))).collect();
    assert_eq!(live, [Some(("again", 2, 0)), Some(("plain", 2, 0)), None, None, Some(("5", 1, 0)), None]);
    assert_eq!(*index, 0, "no key is left attached to the revoked lease");
}

#[test]
fn a_revoked_lease_deletes_its_keys_at_one_revision_and_only_those_still_attached() {
    let (_d, s) = store();
    let r = apply(
        &s,
        vec![
            Command::LeaseGrant { id: 7, ttl: 30 },
            put_with("a", Some("1"), Some(7)),
            put_with("b", Some("2"), Some(7)),
            put_with("c", Some("3"), Some(7)),
            put("b", "plain"),              // a plain write leaves the key with no lease
            put_with("c", Some("4"), None), // ignore_lease keeps it
            put_with("d", Some("5"), Some(0)),
        ],
    );
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    assert_eq!((lease_of(&s, "a"), lease_of(&s, "b"), lease_of(&s, "c")), (Some(7), Some(0), Some(7)));
    let v = s.read().unwrap();
    assert_eq!(v.lease_keys(7).unwrap(), ["a", "c"]);
    let index = v.raw_prefix(&v.engine().lease_keys, &crate::mvcc::lease::lease_key(7)).count();
    assert_eq!(index, 2, "the lease's index no longer names b");
    let before = s.status().revision;
    let r = apply(&s, vec![Command::LeaseRevoke { id: 7, since: 0 }]);
    assert_eq!(r[0].as_ref().unwrap().revision, before + 1, "both deletes at one revision");
    let v = s.read().unwrap();
    assert_eq!((v.get("a", 0).unwrap(), v.get("c", 0).unwrap()), (None, None));
    assert_eq!(v.get("b", 0).unwrap().unwrap().value, "plain");
    assert_eq!(v.get("a", before).unwrap().unwrap().lease, 7, "the past still shows the lease");
    assert!(s.leases().is_empty() && v.lease_keys(7).unwrap().is_empty());
    // Gone: puts with it, a second revoke, are refused and change nothing.
    let r = apply(&s, vec![put_with("e", Some("1"), Some(7)), Command::LeaseRevoke { id: 7, since: 0 }]);
    assert_eq!(r, vec![Err(MvccError::LeaseNotFound), Err(MvccError::LeaseNotFound)]);
    assert_eq!(s.status().revision, before + 1);
    let r = apply(&s, vec![Command::LeaseGrant { id: 7, ttl: 5 }, Command::LeaseGrant { id: 7, ttl: 5 }]);
    assert_eq!(r[1], Err(MvccError::LeaseExists));
    // A revocation decided about an earlier grant of the id leaves this one alone.
    let granted_at = s.lease(7).unwrap().since;
    let r = apply(&s, vec![Command::LeaseRevoke { id: 7, since: granted_at - 5 }]);
    assert_eq!((r[0].clone(), s.lease(7).is_some()), (Err(MvccError::LeaseNotFound), true));
    // A revoke with no keys makes no revision, and the lease's bytes are no longer
    // counted.
    let bytes = s.status().stored_bytes;
    assert_eq!(apply(&s, vec![Command::LeaseRevoke { id: 7, since: 0 }])[0].as_ref().unwrap().revision, before + 1);
    assert_eq!(s.status().stored_bytes + lease::LEASE_BYTES, bytes);
}

/// The keys a revoke deletes are deleted for the writes after it, in the same batch
/// or a later one, however they were written before.
#[test]
fn a_key_deleted_by_its_lease_revoke_is_created_anew_by_the_next_write() {
    for one_batch in [false, true] {
        let (_d, s) = store();
        let mut commands = vec![
            Command::LeaseGrant { id: 7, ttl: 30 },
            put("a", "1"),
            put_with("a", Some("2"), Some(7)),
            put("b", "1"),
            put_with("b", None, Some(7)),
        ];
        let revoke = Command::LeaseRevoke { id: 7, since: 0 };
        let after = vec![put("a", "3"), put_with("b", Some("3"), Some(0))];
        if one_batch {
            commands.push(revoke);
            commands.extend(after);
            assert!(apply(&s, commands).iter().all(|r| r.is_ok()));
        } else {
            for batch in [commands, vec![revoke], after] {
                assert!(apply(&s, batch).iter().all(|r| r.is_ok()));
            }
        }
        let v = s.read().unwrap();
        let revision = v.revision();
        let (a, b) = (v.get("a", 0).unwrap().unwrap(), v.get("b", 0).unwrap().unwrap());
        assert_eq!((a.create_revision, a.version), (revision - 1, 1), "one batch: {one_batch}");
        assert_eq!((b.create_revision, b.version), (revision, 1), "one batch: {one_batch}");
    }
}

/// A put that keeps the value (etcd's `ignore_value`, say to attach a lease) keeps it
/// as it was: a JSON value stored through raftkv's API stays JSON, whether anyone on
/// this node waits for the put or not.
#[test]
fn a_put_that_keeps_the_value_keeps_a_json_value_json() {
    // Kept in the key's record, and too large for it (read from the history).
    let large = format!(r#"["{}"]"#, "x".repeat(super::super::record::INLINE_VALUE_MAX));
    for (value, answered) in [(r#"{"a":1}"#, true), (r#"{"a":1}"#, false), (&large, true), (&large, false)] {
        let (_d, s) = store();
        let json = Command::PutJson { key: "j".into(), json: value.into() };
        apply(&s, vec![json, Command::LeaseGrant { id: 7, ttl: 30 }]);
        let keep = entry(s.applied() + 1, put_with("j", None, Some(7)));
        assert!(s.apply_answering(&[keep], |_| answered).unwrap()[0].1.is_ok());
        let v = s.read().unwrap();
        let j = v.get("j", 0).unwrap().unwrap();
        let case = format!("{} bytes, answered: {answered}", value.len());
        assert_eq!((j.value.as_str(), j.json, j.lease, j.version), (value, true, 7, 2), "{case}");
        let last = v.history(0, usize::MAX, usize::MAX).unwrap().events.pop().unwrap();
        assert_eq!(last.kind, EventKind::PutJson, "{case}");
    }
}

/// A node applies most entries for nobody (a follower's): a put among them does
/// not read the value it replaces, answers no previous key, yet changes the store
/// exactly as when answered: creation revision, version, a lease kept under
/// `ignore_lease`, a value kept under `ignore_value`.
#[test]
fn an_entry_nobody_waits_for_changes_the_store_alike_without_reading_the_old_value() {
    let commands = || {
        let mut c = vec![Command::LeaseGrant { id: 4, ttl: 30 }, put_with("k", Some("1"), Some(4))];
        c.extend([put_with("k", Some("2"), None), put_with("k", None, Some(0)), put_with("n", Some("new"), Some(4))]);
        c
    };
    let mut seen = Vec::new();
    for answer in [true, false] {
        let (_d, s) = store();
        let first = s.applied() + 1;
        let entries: Vec<Entry> = commands().into_iter().enumerate().map(|(i, c)| entry(first + i as u64, c)).collect();
        let out = s.apply_answering(&entries, |_| answer).unwrap();
        let prevs: Vec<_> = out[2..]
            .iter()
            .map(|(_, r)| match &r.as_ref().unwrap().txn.as_ref().unwrap().results[0] {
                OpResult::Put { prev } => prev.as_ref().map(|kv| (kv.value.clone(), kv.version)),
                other => panic!("{other:?}"),
            })
            .collect();
        let v = s.read().unwrap();
        let k = v.get("k", 0).unwrap().unwrap();
        let state = (k.value, k.create_revision, k.version, k.lease, v.lease_keys(4).unwrap(), v.hash(0).unwrap());
        // The lease kept under ignore_lease (revision 3), and the lease index, raw.
        let kept = (v.get("k", 3).unwrap().map(|kv| kv.lease), v.raw_prefix(&v.engine().lease_keys, b"").count());
        seen.push((prevs, state, s.status().stored_bytes, kept));
    }
    let (answered, unanswered) = (&seen[0], &seen[1]);
    assert_eq!(answered.0, [Some(("1".into(), 1)), Some(("2".into(), 2)), None]);
    assert_eq!(unanswered.0, [None, Some(("2".into(), 2)), None], "read only to keep the value");
    assert_eq!(unanswered.1, answered.1);
    assert_eq!(unanswered.2, answered.2);
    assert_eq!(unanswered.3, answered.3);
    assert_eq!(answered.3, (Some(4), 1), "k kept lease 4 at revision 3; the index holds n only");
    assert_eq!((answered.1).0, "2");
    assert_eq!(((answered.1).2, (answered.1).3), (3, 0));
    assert_eq!((answered.1).4, ["n"]);
}

#[test]
fn a_transaction_compares_leases_and_a_missing_lease_fails_it_whole() {
    let (_d, s) = store();
    apply(&s, vec![Command::LeaseGrant { id: 3, ttl: 30 }, put_with("k", Some("v"), Some(3))]);
    let on_lease = |id| Compare { range: KeyRange::Key(b"k".to_vec()), cmp: Cmp::Equal, target: Target::Lease(id) };
    let t = |id| {
        Command::Txn(Txn {
            compares: vec![on_lease(id)],
            success: vec![TxnOp::Put { key: "hit".into(), value: Some(id.to_string()), lease: Some(0) }],
            failure: vec![],
        })
    };
    let r = apply(&s, vec![t(0), t(3)]);
    assert!(!r[0].as_ref().unwrap().txn.as_ref().unwrap().succeeded);
    assert!(r[1].as_ref().unwrap().txn.as_ref().unwrap().succeeded);
    let before = s.status().revision;
    let half = Command::Txn(Txn {
        success: vec![
            TxnOp::Put { key: "x".into(), value: Some("1".into()), lease: Some(0) },
            TxnOp::Put { key: "y".into(), value: Some("1".into()), lease: Some(99) },
        ],
        ..Txn::default()
    });
    assert_eq!(apply(&s, vec![half])[0], Err(MvccError::LeaseNotFound));
    assert_eq!((s.status().revision, s.read().unwrap().get("x", 0).unwrap()), (before, None));
    assert_eq!(apply(&s, vec![put_with("nokey", Some("v"), None)])[0], Err(MvccError::KeyNotFound));
}

#[test]
fn leases_survive_a_restart_and_travel_in_snapshots() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = opened(d.path());
        apply(&s, vec![Command::LeaseGrant { id: -4, ttl: 9 }, put_with("k", Some("v"), Some(-4))]);
        s.checkpoint().unwrap();
    }
    let s = opened(d.path());
    let granted = lease::Granted { ttl: 9, since: 1 };
    assert_eq!(*s.leases(), [(-4, granted)].into_iter().collect::<lease::LeaseMap>());
    assert_eq!(s.read().unwrap().lease_keys(-4).unwrap(), ["k"]);
    let (_d2, other) = installed_copy(&s);
    assert_eq!(other.leases(), s.leases());
    assert_eq!(other.read().unwrap().hash(0).unwrap(), s.read().unwrap().hash(0).unwrap());
    // Revoked there, it deletes the key it had here.
    apply(&other, vec![Command::LeaseRevoke { id: -4, since: 0 }]);
    assert_eq!(other.read().unwrap().get("k", 0).unwrap(), None);
}
