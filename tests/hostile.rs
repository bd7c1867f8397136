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
    };
    for name in ["mallory", c.names[follower].as_str()] {
        let e = peer.append_entries(forged_append(name)).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{name}: {e:?}");
    }
    let e = peer.request_vote(vote(term + 30, "mallory", false)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = peer.timeout_now(pb::TimeoutNowRequest { term, leader: "mallory".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let chunk = pb::InstallSnapshotChunk {
        term: term + 40,
        leader: "mallory".into(),
        offset: 0,
        data: b"RKVSNAP2".to_vec(),
        done: true,
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
