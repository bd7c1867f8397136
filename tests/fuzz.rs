//! Fuzzing on stable Rust: a seeded mutator (no nightly, no new tools) feeds what the
//! network and the disk can hand a node — bridge datagrams, peer messages, log
//! segments, snapshot streams, entry payloads — to the code that reads them. Nothing
//! may panic; damaged data must be refused, never half-used. A case that panics fails
//! the test and its input is saved under `target/fuzz-failures/`.
//!
//! `RAFTKV_FUZZ_CASES=N` sets the cases per target (default 1,000, what CI runs);
//! `RAFTKV_FUZZ_SECS=3600` runs each target for that long instead (on demand);
//! `RAFTKV_FUZZ_SEED` picks the seed (printed at the start).
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv::mvcc::{snapshot, Command, Store};
use raftkv::proto as pb;
use raftkv::raft::{Config, Entry, EntryKind, HardState, RawNode, MAX_INDEX, MAX_TERM};
use raftkv::storage::Storage;
use raftkv::transport::convert::{self, Names};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn seed() -> u64 {
    std::env::var("RAFTKV_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random)
}

/// Runs `case` until the budget is spent; a panic saves the input and fails.
fn run(target: &str, mut case: impl FnMut(&mut ChaCha8Rng) -> Vec<u8>, check: impl Fn(&[u8])) {
    let seed = seed();
    let secs: Option<u64> = std::env::var("RAFTKV_FUZZ_SECS").ok().and_then(|s| s.parse().ok());
    let cases: u64 = std::env::var("RAFTKV_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let start = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut n = 0u64;
    while match secs {
        Some(s) => start.elapsed() < Duration::from_secs(s),
        None => n < cases,
    } {
        let input = case(&mut rng);
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{target}-{seed}-{n}.bin"));
            std::fs::write(&path, &input).unwrap();
            panic!("{target}: case {n} of seed {seed} panicked; input saved to {}", path.display());
        }
        n += 1;
    }
    eprintln!("{target}: {n} cases, seed {seed}, {:.1} s, no panic", start.elapsed().as_secs_f64());
}

/// A few random edits of `data`: bit flips, edge bytes, cuts, insertions, repeats.
fn mutate(rng: &mut ChaCha8Rng, data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let at = if out.is_empty() { 0 } else { rng.gen_range(0..out.len()) };
        match rng.gen_range(0..6) {
            0 if !out.is_empty() => out[at] ^= 1 << rng.gen_range(0..8),
            1 if !out.is_empty() => out[at] = [0, 0x7f, 0x80, 0xff, b'"', b'{', b'9'][rng.gen_range(0..7)],
            2 => out.truncate(at),
            3 => {
                let junk: Vec<u8> = (0..rng.gen_range(1..16)).map(|_| rng.gen()).collect();
                out.splice(at..at, junk);
            }
            4 if !out.is_empty() => {
                let end = rng.gen_range(at..=out.len().min(at + 64));
                let chunk = out[at..end].to_vec();
                out.splice(at..at, chunk);
            }
            _ => {
                let end = rng.gen_range(at..=out.len());
                out.drain(at..end);
            }
        }
    }
    out
}

#[test]
fn fuzz_bridge_datagrams() {
    let seeds: Vec<&[u8]> = vec![
        br#"{"sender_name":"Controller","request":"STORE","term":null,"key":"k","value":{"a":[1,2.5,"x"]}}"#,
        br#"{"sender_name":"Controller","request":"RETRIEVE","term":null,"key":null,"value":null}"#,
        br#"{"request":"LEADER_INFO"}"#,
        br#"{"request":"TIMEOUT","extra":[[[[[[1]]]]]]}"#,
    ];
    run(
        "bridge",
        |rng| {
            let s = seeds[rng.gen_range(0..seeds.len())];
            if rng.gen_ratio(1, 10) {
                let mut b = vec![0u8; rng.gen_range(0..200)];
                rng.fill_bytes(&mut b);
                b
            } else {
                mutate(rng, s)
            }
        },
        |input| {
            if let Err(e) = raftkv::bridge::parse(input) {
                assert!(!e.reason.contains('\n'), "a one-line reason: {:?}", e.reason);
            }
        },
    );
}

/// Terms and indices near the edges that matter.
fn edge(rng: &mut ChaCha8Rng) -> u64 {
    match rng.gen_range(0..8) {
        0 => 0,
        1 => 1,
        2 => MAX_TERM,
        3 => MAX_TERM + 1,
        4 => MAX_INDEX,
        5 => u64::MAX,
        6 => u64::MAX - rng.gen_range(0..3),
        _ => rng.gen_range(0..20),
    }
}

fn name(rng: &mut ChaCha8Rng) -> String {
    ["n1", "n2", "n3", "", "mallory", "n1 "][rng.gen_range(0..6)].to_string()
}

/// A peer message with hostile fields, encoded, as the wire would carry it; the check
/// decodes it, converts it, and steps a core (node n1 of three, a follower that has
/// a log) with whatever conversion lets through.
#[test]
fn fuzz_peer_messages() {
    let founding = ["n1", "n2", "n3"].map(|n| (n.to_string(), format!("http://{n}:2380")));
    let three = raftkv::raft::Membership::founding(founding.clone());
    let names = Names::new(three.clone(), three);
    // A configuration entry that decodes (four members), and one that does not.
    let (four, _) = raftkv::raft::Membership::founding(founding)
        .changed(&raftkv::raft::ConfChange::Add { name: "n4".into(), peer_url: "http://n4:1".into(), learner: true })
        .unwrap();
    let four = four.encode();
    run(
        "peer",
        |rng| {
            use prost::Message as _;
            let mut out = vec![rng.gen_range(0..3u8)];
            match out[0] {
                0 => pb::RequestVoteRequest {
                    term: edge(rng),
                    candidate: name(rng),
                    last_log_index: edge(rng),
                    last_log_term: edge(rng),
                    pre_vote: rng.gen(),
                    leader_transfer: rng.gen(),
                    sender_id: edge(rng) % 8,
                }
                .encode(&mut out)
                .unwrap(),
                1 => {
                    let (prev, term) = (edge(rng), edge(rng));
                    let entries = (0..rng.gen_range(0..4u64))
                        .map(|i| pb::Entry {
                            index: if rng.gen_ratio(4, 5) { prev.wrapping_add(1 + i) } else { edge(rng) },
                            term: if rng.gen() { term } else { edge(rng) },
                            r#type: rng.gen_range(-1..4),
                            data: if rng.gen() {
                                four.clone()
                            } else {
                                Bytes::from(vec![rng.gen::<u8>(); rng.gen_range(0..8)])
                            },
                        })
                        .collect();
                    pb::AppendEntriesRequest {
                        term,
                        leader: name(rng),
                        prev_log_index: prev,
                        prev_log_term: edge(rng),
                        entries,
                        leader_commit: edge(rng),
                        round: rng.gen(),
                        floor: edge(rng),
                        sender_id: edge(rng) % 8,
                    }
                    .encode(&mut out)
                    .unwrap()
                }
                _ => pb::AppendEntriesResponse {
                    term: edge(rng),
                    success: rng.gen(),
                    match_index: edge(rng),
                    reject_index: edge(rng),
                    conflict_index: edge(rng),
                    conflict_term: edge(rng),
                    round: rng.gen(),
                }
                .encode(&mut out)
                .unwrap(),
            }
            if rng.gen_ratio(1, 5) {
                out = mutate(rng, &out);
            }
            out
        },
        |input| {
            use prost::Message as _;
            let Some((&kind, body)) = input.split_first() else { return };
            let msg = match kind {
                0 => pb::RequestVoteRequest::decode(body)
                    .ok()
                    .and_then(|r| convert::vote_request_from_pb(r, 1, &names).ok()),
                1 => pb::AppendEntriesRequest::decode(body)
                    .ok()
                    .and_then(|r| convert::append_request_from_pb(r, 1, &names).ok()),
                _ => pb::AppendEntriesResponse::decode(body)
                    .ok()
                    .and_then(|r| convert::append_response_from_pb(r, 1, 2).ok()),
            };
            let Some(msg) = msg else { return };
            let entries = (1..=5).map(|i| Entry { index: i, term: 2, kind: EntryKind::Noop, data: Bytes::new() });
            let hs = HardState { term: 3, vote: Some(2), commit: 3 };
            let mut core = RawNode::new(Config::new(1, vec![1, 2, 3]), hs, entries.collect()).unwrap();
            core.step(msg);
            while core.has_ready() {
                let rd = core.ready();
                if rd.must_persist() {
                    core.on_persisted(rd.number);
                }
            }
            assert!(core.status().term <= MAX_TERM);
        },
    );
}

/// A log of a few batches, then damaged: opening it either refuses it or recovers a
/// prefix of what was written, never anything else.
#[test]
fn fuzz_log_segments() {
    let d = tempfile::tempdir().unwrap();
    let members = vec!["a".to_string(), "b".to_string()];
    let written: Vec<Entry> = (1..=20)
        .map(|i| Entry { index: i, term: 1 + i / 7, kind: EntryKind::Normal, data: Bytes::from(format!("v{i}")) })
        .collect();
    {
        let (mut s, _) = Storage::open(d.path(), "a", &members).unwrap();
        for chunk in written.chunks(4) {
            let hs = HardState { term: chunk[0].term, vote: Some(1), commit: chunk[0].index };
            s.persist(Some(hs), chunk).unwrap();
        }
    }
    let segment = std::fs::read_dir(d.path().join("wal")).unwrap().next().unwrap().unwrap().path();
    let original = std::fs::read(&segment).unwrap();
    let meta = std::fs::read(d.path().join("meta")).unwrap();
    let work = tempfile::tempdir().unwrap();
    run(
        "wal",
        |rng| mutate(rng, &original),
        |input| {
            let dir = work.path().join("case");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("wal")).unwrap();
            std::fs::write(dir.join("meta"), &meta).unwrap();
            std::fs::write(dir.join("wal").join(segment.file_name().unwrap()), input).unwrap();
            if let Ok((_, r)) = Storage::open(&dir, "a", &members) {
                assert!(r.entries.len() <= written.len());
                assert_eq!(r.entries[..], written[..r.entries.len()], "a recovered log is a prefix of the written one");
            }
        },
    );
}

/// A snapshot stream, damaged: building it fails cleanly (nothing installed), or — if
/// the damage missed everything the checksum covers — builds the same state.
#[test]
fn fuzz_snapshot_streams_and_entry_payloads() {
    let src = tempfile::tempdir().unwrap();
    let store = Store::open(src.path(), 8 << 20).unwrap();
    let entries: Vec<Entry> = (1..=60u64)
        .map(|i| {
            let c = if i % 5 == 0 {
                Command::Delete { key: format!("k{}", i % 7) }
            } else {
                Command::Put { key: format!("k{}", i % 7), value: format!("value {i}") }
            };
            Entry { index: i, term: 2, kind: EntryKind::Normal, data: c.encode() }
        })
        .collect();
    store.apply(&entries).unwrap();
    let mut stream = Vec::new();
    snapshot::stream(&store, 256, |c| {
        stream.extend(c);
        true
    })
    .unwrap();
    let want = store.read().unwrap().hash(0).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let other = Store::open(dst.path(), 8 << 20).unwrap();
    let file = dst.path().join("stream");
    run(
        "snapshot",
        |rng| mutate(rng, &stream),
        |input| {
            std::fs::write(&file, input).unwrap();
            if let Ok(built) = snapshot::build(&other, &file) {
                other.install(built).unwrap();
                assert_eq!(other.read().unwrap().hash(0).unwrap(), want, "an accepted stream is the same state");
            }
        },
    );
    // Entry payloads as a leader could send them: each applies or is refused alone.
    let next = std::cell::Cell::new(store.applied() + 1);
    run(
        "payload",
        |rng| {
            let e = &entries[rng.gen_range(0..entries.len())];
            mutate(rng, &e.data)
        },
        |input| {
            let e = Entry { index: next.get(), term: 2, kind: EntryKind::Normal, data: Bytes::copy_from_slice(input) };
            // An undecodable command is skipped (the same on every member), a bad one
            // fails alone; the store goes on either way.
            let applied = store.apply(&[e]).expect("a bad payload fails its own entry, not the store");
            assert!(applied.len() <= 1);
            assert_eq!(store.applied(), next.get());
            next.set(next.get() + 1);
        },
    );
}
