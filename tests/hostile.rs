//! Hostile input on the peer port: forged senders, terms and indices out of range,
//! elections nobody asked for. Each is refused with a clear code and changes nothing;
//! the cluster keeps its leader and goes on serving writes.
mod common;

use common::{store, TestCluster};
use raftkv::proto as pb;
use raftkv::proto::raft_client::RaftClient;
use raftkv::raft::MAX_TERM;
use tonic::Code;

fn entry(index: u64, term: u64) -> pb::Entry {
    pb::Entry { index, term, r#type: pb::EntryType::EntryNormal as i32, data: b"forged".to_vec().into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_out_of_range_peer_requests_are_refused_and_change_nothing() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut client = c.client(leader).await;
    store(&mut client, "before", "1").await.unwrap();
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let other = (0..3).find(|&i| i != leader && i != follower).unwrap();
    let term = c.handle(follower).status().term;
    let mut peer = RaftClient::connect(format!("http://{}", c.peer_addrs[follower])).await.unwrap();
    let vote = |term, candidate: &str, leader_transfer| pb::RequestVoteRequest {
        term,
        candidate: candidate.into(),
        last_log_index: 1 << 40,
        last_log_term: term,
        pre_vote: false,
        leader_transfer,
        sender_id: 0,
    };

    // The request that used to freeze every election for good: term u64::MAX.
    let e = peer.request_vote(vote(u64::MAX, &c.names[other], true)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("out of range"), "{}", e.message());
    let e = peer.request_vote(vote(MAX_TERM + 1, &c.names[other], false)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // A member's name, a later term, an election nobody asked for: not granted, and the
    // term is not adopted while the follower hears from its leader.
    let r = peer.request_vote(vote(term + 10, &c.names[other], false)).await.unwrap().into_inner();
    assert!(!r.vote_granted);
    assert!(r.term < term + 10, "answered in its own term {}", r.term);

    // Senders that are not another member of the cluster.
    let forged_append = |leader: &str| pb::AppendEntriesRequest {
        term: term + 20,
        leader: leader.into(),
        prev_log_index: 0,
        prev_log_term: 0,
        entries: vec![entry(1, term + 20)],
        leader_commit: 1,
        round: 0,
        floor: 0,
        sender_id: 0,
    };
    for name in ["mallory", c.names[follower].as_str()] {
        let e = peer.append_entries(forged_append(name)).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{name}: {e:?}");
    }
    // A member's name with another member's id, and an unknown name with an id the
    // cluster has already given out (a removed member's).
    for (name, id) in [(c.names[other].as_str(), 99), ("mallory", 2)] {
        let e =
            peer.append_entries(pb::AppendEntriesRequest { sender_id: id, ..forged_append(name) }).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{name} as {id}: {e:?}");
    }
    let e = peer.request_vote(vote(term + 30, "mallory", false)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = peer.timeout_now(pb::TimeoutNowRequest { term, leader: "mallory".into(), sender_id: 0 }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let chunk = pb::InstallSnapshotChunk {
        term: term + 40,
        leader: "mallory".into(),
        offset: 0,
        data: b"RKVSNAP2".to_vec(),
        done: true,
        sender_id: 0,
    };
    let e = peer.install_snapshot(futures::stream::iter([chunk])).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // A member's name but entries that break the log's rules, or indices that would wrap.
    let mut bad = forged_append(&c.names[leader]);
    bad.entries = vec![entry(1, term + 21)];
    let e = peer.append_entries(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "an entry's term past the leader's: {e:?}");
    let mut bad = forged_append(&c.names[leader]);
    bad.prev_log_index = u64::MAX;
    bad.entries = vec![entry(0, term)];
    let e = peer.append_entries(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "prev_log_index u64::MAX: {e:?}");

    // The same on the appends stream: the stream ends with the refusal.
    let mut bad_entry = forged_append(&c.names[leader]);
    bad_entry.entries = vec![entry(1, term + 21)];
    let streamed = [
        (forged_append("mallory"), Code::PermissionDenied),
        (forged_append(&c.names[follower]), Code::PermissionDenied),
        (bad_entry, Code::InvalidArgument),
    ];
    for (bad, code) in streamed {
        let leader_named = bad.leader.clone();
        let mut answers = peer.append_stream(futures::stream::iter([bad])).await.unwrap().into_inner();
        let e = answers.message().await.unwrap_err();
        assert_eq!(e.code(), code, "streamed as {leader_named}: {e:?}");
    }

    // Nothing changed: the same leader, no forged term anywhere, and writes go on.
    for i in 0..3 {
        let st = c.handle(i).status();
        assert!(st.term < term + 10, "node {i} is in term {}", st.term);
    }
    assert_eq!(c.wait_leader().await, leader);
    store(&mut client, "after", "2").await.expect("the cluster keeps serving writes");
    let entries = c.retrieve(follower).await.entries;
    assert!(entries.iter().all(|e| e.value != "forged"));
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_client_request_is_refused_unread_and_writes_go_on() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut client = c.client(leader).await.max_encoding_message_size(64 << 20);
    // Past --max-request-bytes (1.5 MiB) plus gRPC's overhead: refused by the server
    // before it is read into memory.
    let big = "x".repeat(3 << 20);
    let e = store(&mut client, "big", &big).await.expect_err("refused");
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{e:?}");
    // Within the request limit but past the value limit (1 MiB): a clear error.
    let e = store(&mut client, "big", &"x".repeat((1 << 20) + 1)).await.expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    store(&mut client, "small", "ok").await.expect("the next write goes through");
    assert_eq!(c.retrieve(leader).await.entries.len(), 1);
    c.shutdown().await;
}

/// A leader that cannot commit (its followers are cut off) takes at most 10,000
/// entries it cannot commit; past that, writes are refused at once with "too many
/// requests" rather than pile up in its memory. Once healed, the cluster serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_commit_refuses_writes_past_the_uncommitted_bound() {
    // A long election timeout: the cut-off leader keeps leading while the load arrives.
    let opts = common::Opts { election_timeout_ms: 4000, heartbeat_ms: 100, ..Default::default() };
    let c = TestCluster::start_with(3, opts).await;
    let leader = c.wait_leader().await;
    let start = c.handle(leader).status().last_index;
    c.partition(&[leader]);
    let mut clients = Vec::new();
    for _ in 0..16 {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.client_addrs[leader]))
            .unwrap()
            .connect_lazy();
        clients.push(pb::key_value_client::KeyValueClient::new(ch));
    }
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..12_000usize {
        let mut kv = clients[n % clients.len()].clone();
        let refused = refused.clone();
        tasks.push(tokio::spawn(async move {
            let req = common::with_timeout(
                pb::StoreRequest { key: format!("k{n}"), value: "v".into() },
                std::time::Duration::from_secs(3),
            );
            if let Err(e) = kv.store(req).await {
                if e.code() == Code::ResourceExhausted {
                    assert!(e.message().contains("entries are appended but not committed"), "{}", e.message());
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let appended = c.handle(leader).status().last_index - start;
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("appended {appended} entries it could not commit, refused {refused} writes");
    assert!(refused > 0, "nothing was refused ({appended} entries appended)");
    assert!(appended <= 10_001 + 1, "{appended} uncommitted entries");
    // Healed, the leader commits what it holds; until then it still pushes back.
    c.faults.heal();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let l = c.wait_leader().await;
        match store(&mut c.client(l).await, "after", "1").await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("after healing: {e:?}"),
        }
    }
    c.shutdown().await;
}

/// A batch of forwarded writes that does not decode, on the stream a follower forwards
/// batches on: the batch before it is proposed and answered, then the stream ends with
/// INVALID_ARGUMENT marked "not applied", and nothing of the refused batch, nor of the
/// one sent after it, is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_batch_that_does_not_decode_ends_the_stream_and_writes_nothing() {
    use futures::StreamExt;
    use raftkv::mvcc::Command;

    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut peer = RaftClient::connect(format!("http://{}", c.peer_addrs[leader])).await.unwrap();
    let put = |key: &str| Command::Put { key: key.into(), value: "v".into() }.encode();
    let batches = vec![
        pb::ProposeBatchRequest { commands: vec![put("first")], timeout_ms: 5000 },
        pb::ProposeBatchRequest { commands: vec![put("refused"), vec![9].into()], timeout_ms: 5000 },
        pb::ProposeBatchRequest { commands: vec![put("after")], timeout_ms: 5000 },
    ];
    let mut answers =
        peer.propose_stream(tokio_stream::iter(batches)).await.expect("a member may open it").into_inner();
    let first = answers.next().await.expect("an answer").expect("the first batch is answered");
    assert_eq!(first.outcomes.len(), 1);
    assert_eq!(first.outcomes[0].code, 0, "{:?}", first.outcomes[0]);
    let refused = answers.next().await.expect("the end").expect_err("the second batch is refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.metadata().contains_key("raftkv-not-applied"), "{refused:?}");
    assert!(answers.next().await.is_none(), "the stream ended");

    let mut client = c.client(leader).await;
    for (key, found) in [("first", true), ("refused", false), ("after", false)] {
        let got = client.get(pb::GetRequest { key: key.into(), ..Default::default() }).await.unwrap().into_inner();
        assert_eq!(got.found, found, "{key}");
    }
    c.shutdown().await;
}
