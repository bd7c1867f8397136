//! Exactly-once writes with client sessions (Raft thesis 6.3), as a client sees them.
mod common;

use std::time::Duration;

use common::{with_timeout, TestCluster};
use raftkv::client::{Options, Session};
use raftkv::proto::{self as pb, key_value_client::KeyValueClient};
use tonic::transport::Channel;
use tonic::Code;

async fn endpoints(c: &TestCluster, order: &[usize]) -> Vec<(String, KeyValueClient<Channel>)> {
    let mut out = Vec::new();
    for &i in order {
        out.push((c.client_addrs[i].clone(), c.client(i).await));
    }
    out
}

fn session_write<T>(msg: T, session: &str, seq: &str) -> tonic::Request<T> {
    let mut r = with_timeout(msg, Duration::from_secs(5));
    r.metadata_mut().insert("raftkv-session", session.parse().unwrap());
    r.metadata_mut().insert("raftkv-seq", seq.parse().unwrap());
    r
}

/// The leader sends a forwarded write's entry to its followers, never hears back, and
/// is killed: the write's outcome is unknown to the node that forwarded it. The
/// client's session retries it through the others, and the new leader, which commits
/// the first copy, answers the retry with that copy's answer: one entry in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_leader_died_after_sending_it_is_applied_exactly_once_by_the_retry() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    c.wait_started().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let order = [followers[0], followers[1], leader];
    let options = Options { timeout: Duration::from_secs(2), budget: Duration::from_secs(30), ttl: None };
    let mut session = Session::open(endpoints(&c, &order).await, options).await.expect("a session opens");
    let before: Vec<u64> = followers.iter().map(|&f| c.handle(f).status().last_index).collect();
    for &f in &followers {
        c.faults.lose_answers(&c.names[leader], &c.names[f]);
    }
    let write = tokio::spawn(async move { session.store("once", "v").await });
    // The entry reaches both followers; the leader learns nothing of it.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while followers.iter().zip(&before).any(|(&f, &b)| c.handle(f).status().last_index <= b) {
        assert!(tokio::time::Instant::now() < deadline, "the write never reached the followers");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.stop(leader).await;
    c.faults.heal();
    let answer = write.await.unwrap().expect("the session's retry is answered");
    let new_leader = c.wait_leader_among(&followers).await;
    let mut client = c.client(new_leader).await;
    let fin = common::store(&mut client, "final", "1").await.unwrap();
    c.wait_applied(&followers, fin.index).await;
    for &f in &followers {
        let history = c.retrieve(f).await.entries;
        let copies: Vec<_> = history.iter().filter(|e| e.key == "once").collect();
        assert_eq!(copies.len(), 1, "node {f}: the write is in the history {} times", copies.len());
        assert_eq!((copies[0].index, copies[0].revision), (answer.index, answer.revision), "the first copy's answer");
    }
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

/// What a grpcurl user sees: a session write without a session, with half of one or
/// with an unknown one is refused with a reason and changes nothing; a resent write
/// changes nothing; sessions are bounded; writes without a session work as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_metadata_is_checked_and_a_resent_write_changes_nothing() {
    let opts = common::Opts { max_sessions: 2, ..Default::default() };
    let c = TestCluster::start_with(3, opts).await;
    let leader = c.wait_leader().await;
    let mut client = c.client((leader + 1) % 3).await;
    let put = |k: &str| pb::StoreRequest { key: k.into(), value: "v".into() };
    let e = client.store(session_write(put("a"), "99999", "1")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("client session 99999 is unknown or has expired"), "{}", e.message());
    let e = client.store(session_write(put("a"), "x", "1")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut half = with_timeout(put("a"), Duration::from_secs(5));
    half.metadata_mut().insert("raftkv-session", "5".parse().unwrap());
    assert_eq!(client.store(half).await.unwrap_err().code(), Code::InvalidArgument);

    let s = client.open_session(pb::OpenSessionRequest { ttl_seconds: 30 }).await.unwrap().into_inner();
    assert_eq!(s.ttl_seconds, 30);
    let id = s.session.to_string();
    let first = client.store(session_write(put("k"), &id, "1")).await.unwrap().into_inner();
    let again = client.store(session_write(put("k"), &id, "1")).await.unwrap().into_inner();
    assert_eq!(again, first, "a resent write gets the first answer");
    let del = client.delete(session_write(pb::DeleteRequest { key: "k".into() }, &id, "2")).await.unwrap();
    assert_eq!(del.into_inner().revision, first.revision + 1);
    let e = client.store(session_write(put("k"), &id, "1")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "an older sequence number: {e:?}");
    let history = c.retrieve(leader).await.entries;
    assert_eq!(history.iter().filter(|e| e.key == "k").count(), 2, "one put, one delete");
    assert!(history.iter().all(|e| e.key != "a"), "refused writes changed nothing");

    // The bound: this one and one more are open; a third is refused.
    client.open_session(pb::OpenSessionRequest::default()).await.unwrap();
    let e = client.open_session(pb::OpenSessionRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("too many client sessions"), "{}", e.message());
    // Without a session, as before.
    common::store(&mut client, "plain", "1").await.unwrap();
    c.shutdown().await;
}

/// A session idle past its time to live is gone (by the log's clock, on every node);
/// the client notices before anything was applied and opens a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_that_expired_is_replaced_by_the_client() {
    let c = TestCluster::start(3).await;
    c.wait_leader().await;
    let options =
        Options { timeout: Duration::from_secs(2), budget: Duration::from_secs(20), ttl: Some(Duration::from_secs(1)) };
    let mut session = Session::open(endpoints(&c, &[0, 1, 2]).await, options).await.unwrap();
    let first = session.id();
    session.store("k", "1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut raw = c.client(0).await;
    let e = raw.store(session_write(pb::StoreRequest { key: "k".into(), value: "x".into() }, &first.to_string(), "2"));
    assert_eq!(e.await.unwrap_err().code(), Code::FailedPrecondition, "expired by log time");
    let r = session.store("k", "2").await.expect("the client opened a new session");
    assert_ne!(session.id(), first);
    let history = c.retrieve(0).await.entries;
    assert_eq!(history.iter().filter(|e| e.key == "k").count(), 2);
    assert_eq!(history.last().map(|e| e.revision), Some(r.revision));
    c.shutdown().await;
}
