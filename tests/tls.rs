//! Mutual TLS on both ports: members and clients with the cluster CA's certificates
//! get in; a plain-text client, a client without a certificate, a peer of another CA
//! and a member's certificate speaking for another member are refused, and change
//! nothing.
mod common;

use common::{store, Opts, TestCluster};
use raftkv::proto as pb;
use raftkv::proto::key_value_client::KeyValueClient;
use raftkv::proto::raft_client::RaftClient;
use raftkv::tls::dev::DevPki;
use tonic::Code;

/// An empty AppendEntries from `leader`.
fn heartbeat(term: u64, leader: &str) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        term,
        leader: leader.into(),
        prev_log_index: 0,
        prev_log_term: 0,
        entries: vec![],
        leader_commit: 0,
        round: 0,
        floor: 0,
        sender_id: 0,
    }
}

async fn tls_cluster() -> TestCluster {
    TestCluster::start_with(3, Opts { tls: true, ..Opts::default() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_and_clients_with_certificates_work_as_in_plain_text() {
    let c = tls_cluster().await;
    let leader = c.wait_leader().await;
    // Through a follower: forwarded to the leader over the members' TLS channels.
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let mut client = c.client(follower).await;
    let r = store(&mut client, "secret", "kept").await.expect("a write over TLS");
    c.wait_applied(&[0, 1, 2], r.index).await;
    for i in 0..3 {
        let e = c.retrieve(i).await.entries;
        assert_eq!(e.len(), 1, "node {i}");
        assert_eq!((e[0].key.as_str(), e[0].value.as_str()), ("secret", "kept"));
    }
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_certificate_and_peers_of_another_ca_are_refused() {
    let c = tls_cluster().await;
    let leader = c.wait_leader().await;
    let term = c.handle(leader).status().term;
    let addr = &c.client_addrs[leader];

    // Plain text to a TLS port.
    let mut plain =
        KeyValueClient::new(tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy());
    assert!(store(&mut plain, "k", "plain").await.is_err(), "a plain-text client is refused");
    // TLS, the right CA, no client certificate.
    let ca = c.pki.as_ref().unwrap().ca();
    let cfg = raftkv::tls::client_config(&ca, None).unwrap();
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let mut anonymous = KeyValueClient::new(raftkv::tls::channel(ep, addr, cfg).unwrap());
    assert!(store(&mut anonymous, "k", "anonymous").await.is_err(), "a client without a certificate is refused");

    // A certificate of another CA, with a member's name, on a follower's peer port.
    let other = tempfile::tempdir().unwrap();
    let mallory = DevPki::create(other.path(), "another CA").unwrap();
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let candidate = (0..3).find(|&i| i != leader && i != follower).unwrap();
    mallory.issue(&c.names[candidate], &["127.0.0.1"]).unwrap();
    let mut peer = RaftClient::new(c.tls_channel(&c.peer_addrs[follower], &mallory, &c.names[candidate]));
    let vote = pb::RequestVoteRequest {
        term: term + 1,
        candidate: c.names[candidate].clone(),
        last_log_index: 1 << 40,
        last_log_term: term + 1,
        pre_vote: false,
        leader_transfer: true,
        sender_id: 0,
    };
    let e = peer.request_vote(vote).await.expect_err("a peer of another CA is refused");
    assert_ne!(e.code(), Code::Ok);

    // Nothing changed; writes go on.
    for i in 0..3 {
        assert_eq!(c.handle(i).status().term, term, "node {i}");
    }
    let mut client = c.client(leader).await;
    store(&mut client, "after", "ok").await.expect("the cluster keeps serving");
    let values: Vec<String> = c.retrieve(leader).await.entries.into_iter().map(|e| e.value).collect();
    assert_eq!(values, vec!["ok"]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_certificate_speaks_only_for_that_member() {
    let c = tls_cluster().await;
    let leader = c.wait_leader().await;
    let term = c.handle(leader).status().term;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let other = (0..3).find(|&i| i != leader && i != follower).unwrap();
    let pki = c.pki.as_ref().unwrap();
    // `other`'s own certificate, claiming to be the leader.
    let mut peer = RaftClient::new(c.tls_channel(&c.peer_addrs[follower], pki, &c.names[other]));
    let forged = heartbeat(term, &c.names[leader]);
    let e = peer.append_entries(forged).await.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("cannot speak for"), "{}", e.message());
    // As itself, a member with the right certificate is heard (and sent back to its
    // place: the follower has a leader, so this election is not granted).
    let vote = pb::RequestVoteRequest {
        term: term + 1,
        candidate: c.names[other].clone(),
        last_log_index: 0,
        last_log_term: 0,
        pre_vote: true,
        leader_transfer: false,
        sender_id: 0,
    };
    let r = peer.request_vote(vote).await.expect("a member speaking for itself is heard").into_inner();
    assert!(!r.vote_granted);
    // An out-of-range term from a properly certified member is refused all the same.
    let vote = pb::RequestVoteRequest {
        term: u64::MAX,
        candidate: c.names[other].clone(),
        last_log_index: 0,
        last_log_term: 0,
        pre_vote: false,
        leader_transfer: true,
        sender_id: 0,
    };
    assert_eq!(peer.request_vote(vote).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(c.wait_leader().await, leader);
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_client_cert_auth_admin_calls_still_need_a_certificate() {
    let c = TestCluster::start_with(3, Opts { tls: true, tls_clients_optional: true, ..Opts::default() }).await;
    let leader = c.wait_leader().await;
    let addr = &c.client_addrs[leader];
    let ca = c.pki.as_ref().unwrap().ca();
    let cfg = raftkv::tls::client_config(&ca, None).unwrap();
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let mut anonymous = KeyValueClient::new(raftkv::tls::channel(ep, addr, cfg).unwrap());
    let r = store(&mut anonymous, "k", "v").await.expect("reads and writes need no certificate");
    let e = anonymous.compact(pb::CompactRequest { revision: r.revision }).await.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = anonymous.transfer_leader(pb::TransferLeaderRequest { target: String::new() }).await.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(c.wait_leader().await, leader, "nothing changed");
    let mut admin = c.client(leader).await;
    admin.compact(pb::CompactRequest { revision: r.revision }).await.expect("with a certificate");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_names_no_member_is_refused_on_the_peer_port() {
    let c = tls_cluster().await;
    let leader = c.wait_leader().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let term = c.handle(follower).status().term;
    // The clients' certificate, of the cluster's own CA.
    let mut peer = RaftClient::new(c.tls_channel(&c.peer_addrs[follower], c.pki.as_ref().unwrap(), "client"));
    let forged = heartbeat(term + 1, &c.names[leader]);
    let e = peer.append_entries(forged).await.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = peer.propose(pb::ProposeRequest { command: vec![9].into() }).await.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let batch = pb::ProposeBatchRequest { commands: vec![vec![9].into()], timeout_ms: 0 };
    let e = peer.propose_stream(tokio_stream::iter([batch])).await.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = peer.transfer_leader(pb::TransferLeaderRequest { target: String::new() }).await.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(c.handle(follower).status().term, term, "nothing changed");
    assert_eq!(c.wait_leader().await, leader);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_that_cannot_speak_tls_use_the_plain_text_health_port() {
    let c = TestCluster::start_with(3, Opts { tls: true, health: true, ..Opts::default() }).await;
    c.wait_leader().await;
    for addr in &c.health_addrs {
        c.wait_health_at(addr, "", common::ServingStatus::Serving).await;
        c.wait_health_at(addr, "raftkv.v1.KeyValue", common::ServingStatus::Serving).await;
        // Only health is there: the key-value service is not served in plain text.
        let mut plain = KeyValueClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy(),
        );
        let e = store(&mut plain, "k", "v").await.expect_err("no KeyValue on the health port");
        assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    }
    c.shutdown().await;
}
