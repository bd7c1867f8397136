//! Membership changes on a running in-process cluster, as an operator makes them:
//! a learner joins, catches up and is promoted; a dead member is removed and replaced;
//! a member whose data directory was lost is refused until it is removed and added
//! again; bad requests change nothing. Writers keep writing throughout: nothing
//! acknowledged may be lost and no write may fail.
mod common;

use std::time::Duration;

use common::*;
use raftkv::config::ClusterState;
use raftkv::proto::{self as pb, key_value_client::KeyValueClient};
use tonic::transport::Channel;
use tonic::Code;

fn add(name: &str, peer_url: &str, learner: bool) -> pb::MemberAddRequest {
    pb::MemberAddRequest { name: name.into(), peer_url: peer_url.into(), learner }
}

fn named(name: &str) -> pb::MemberNameRequest {
    pb::MemberNameRequest { name: name.into() }
}

enum Op {
    Add(pb::MemberAddRequest),
    Promote(&'static str),
    Remove(String),
    Update(String, String),
}

/// A change through `client`, retried while another change (a member recording
/// that it started) is still in progress.
async fn change(client: &KeyValueClient<Channel>, op: Op) -> pb::MemberListResponse {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c = client.clone();
        let r = match &op {
            Op::Add(req) => c.member_add(req.clone()).await,
            Op::Promote(name) => c.member_promote(named(name)).await,
            Op::Remove(name) => c.member_remove(named(name)).await,
            Op::Update(name, peer_url) => {
                c.member_update(pb::MemberUpdateRequest { name: name.clone(), peer_url: peer_url.clone() }).await
            }
        };
        match r {
            Ok(r) => return r.into_inner(),
            Err(s) if s.message().contains("already in progress") && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("{s:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_is_promoted_and_a_dead_member_is_replaced_under_writes() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let victim = (0..3).find(|&i| i != leader && i != follower).unwrap();
    let writers = Writers::start(&c, &[leader, follower]).await;
    let client = c.client(follower).await;

    // A learner, added through a follower (forwarded to the leader), then started.
    let (n4, url) = c.new_member("n4").await;
    let r = change(&client, Op::Add(add("n4", &url, true))).await;
    assert!(r.members.iter().any(|m| m.name == "n4" && m.learner && m.id == r.id), "{r:?}");
    c.try_start(n4).await.expect("the learner joins");
    let id4 = r.id;
    wait_membership(&c, "n4 as a learner", |m| m.is_learner(id4)).await;
    let commit = c.handle(leader).status().commit;
    c.wait_applied(&[n4], commit).await;
    // It votes once promoted.
    change(&client, Op::Promote("n4")).await;
    wait_membership(&c, "n4 as a voter", |m| m.is_voter(id4) && m.voter_count() == 4).await;

    // A member dies for good: removed, and replaced by a new member, n5.
    let victim_name = c.names[victim].clone();
    c.stop(victim).await;
    change(&client, Op::Remove(victim_name.clone())).await;
    wait_membership(&c, "the dead member gone", |m| m.id_of(&victim_name).is_none() && m.voter_count() == 3).await;
    let (n5, url5) = c.new_member("n5").await;
    let r = change(&client, Op::Add(add("n5", &url5, false))).await;
    c.try_start(n5).await.expect("the replacement joins");
    let id5 = r.id;
    wait_membership(&c, "n5 as a voter", |m| m.is_voter(id5) && m.voter_count() == 4).await;

    let (acked, errors) = writers.finish().await;
    assert!(errors.is_empty(), "writes failed during the changes: {errors:?}");
    assert!(!acked.is_empty());
    for i in [leader, follower, n4, n5] {
        assert_all_present(&c, i, &acked).await;
    }
    // A member asked to remove itself answers once the removal is committed (it is
    // not sent the change, so it cannot wait to apply it).
    let follower_name = c.names[follower].clone();
    change(&client, Op::Remove(follower_name.clone())).await;
    c.stop(follower).await;
    wait_membership(&c, "the follower gone", |m| m.id_of(&follower_name).is_none()).await;
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_data_was_lost_is_refused_until_removed_and_added_again() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut client = c.client(leader).await;
    for i in 0..20 {
        store(&mut client, &format!("k{i}"), "v").await.unwrap();
    }
    // Every member has recorded that it started.
    wait_membership(&c, "every member started", |m| m.members.values().all(|m| m.started)).await;
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let name = c.names[victim].clone();
    c.stop(victim).await;
    std::fs::remove_dir_all(c.data_dir(victim)).unwrap();
    // The others are up: their answers come well within this.
    c.set_bootstrap_timeout(victim, WAIT);

    // As a founding member of a new cluster: refused, and the directory stays empty.
    let e = c.try_start(victim).await.expect_err("an empty directory of a started member is refused");
    assert!(e.to_string().contains("already been bootstrapped"), "{e}");
    assert!(!c.data_dir(victim).join("meta").exists(), "the refused start claimed the directory");
    // Joining as it is: refused too.
    c.set_cluster_state(victim, ClusterState::Existing);
    let e = c.try_start(victim).await.expect_err("joining as the lost member is refused");
    assert!(e.to_string().contains("already been bootstrapped"), "{e}");

    // Removed and added again (a new id), it joins and gets everything.
    let url = format!("http://{}", c.peer_addrs[victim]);
    change(&client, Op::Remove(name.clone())).await;
    let r = change(&client, Op::Add(add(&name, &url, false))).await;
    c.try_start(victim).await.expect("the re-added member joins");
    let id = r.id;
    wait_membership(&c, "the new member as a voter", |m| m.is_voter(id) && m.voter_count() == 3).await;
    let commit = c.handle(leader).status().commit;
    c.wait_applied(&[victim], commit).await;
    let kv = c.handle(victim).store().read().unwrap().get("k19", 0).unwrap();
    assert!(kv.is_some(), "the re-added member holds what was written before");
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_membership_requests_are_refused_and_change_nothing() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    c.wait_started().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let mut client = c.client(follower).await;
    let before = client.member_list(pb::MemberListRequest {}).await.unwrap().into_inner().members;
    let taken = format!("http://{}", c.peer_addrs[leader]);
    type Answer = Result<tonic::Response<pb::MemberListResponse>, tonic::Status>;
    let fp = Code::FailedPrecondition;
    let cases: Vec<(&str, Answer, Code, &str)> = vec![
        ("an existing name", client.member_add(add("n1", "http://127.0.0.1:1", true)).await, fp, "already exists"),
        ("an existing peer URL", client.member_add(add("n9", &taken, true)).await, fp, "peer URL"),
        ("a URL without a port", client.member_add(add("n9", "http://host", true)).await, Code::InvalidArgument, "URL"),
        ("a URL without a scheme", client.member_add(add("n9", "host:1", true)).await, Code::InvalidArgument, "URL"),
        ("an empty name", client.member_add(add("", "http://127.0.0.1:1", true)).await, Code::InvalidArgument, "name"),
        ("promoting a voter", client.member_promote(named("n2")).await, fp, "not a learner"),
        ("promoting an unknown member", client.member_promote(named("zz")).await, Code::NotFound, "not found"),
        ("removing an unknown member", client.member_remove(named("zz")).await, Code::NotFound, "not found"),
    ];
    for (what, r, code, text) in cases {
        let e = r.expect_err(what);
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert!(e.message().contains(text), "{what}: {e:?}");
    }
    let after = client.member_list(pb::MemberListRequest {}).await.unwrap().into_inner().members;
    assert_eq!(before, after, "a refused change changed the membership");
    c.shutdown().await;
}

/// A member records its start only once every other member answers `Raft.Membership`
/// (runs a raftkv that can read the entry): one that is down holds it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_is_recorded_only_once_every_member_can_read_it() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    c.wait_started().await;
    let down = (0..3).find(|&i| i != leader).unwrap();
    c.stop(down).await;
    let client = c.client(leader).await;
    let (n4, url) = c.new_member("n4").await;
    let r = change(&client, Op::Add(add("n4", &url, true))).await;
    c.try_start(n4).await.expect("the learner joins");
    let commit = c.handle(leader).status().commit;
    c.wait_applied(&[n4], commit).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!c.handle(leader).membership().members[&r.id].started, "recorded while a member could not answer");
    c.restart(down).await;
    wait_membership(&c, "n4 recorded as started", |m| m.members.get(&r.id).is_some_and(|m| m.started)).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_moved_is_reached_at_its_new_peer_url() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut client = c.client(leader).await;
    let mover = (0..3).find(|&i| i != leader).unwrap();
    let name = c.names[mover].clone();
    let id = c.handle(mover).id();
    c.stop(mover).await;
    // Told first, then restarted at its new address with its data (etcd's procedure).
    let new_addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let url = format!("http://{new_addr}");
    let r = change(&client, Op::Update(name.clone(), url.clone())).await;
    assert!(r.members.iter().any(|m| m.name == name && m.peer_url == url && m.id == id), "{r:?}");
    c.peer_addrs[mover] = new_addr;
    c.restart(mover).await;
    for i in 0..20 {
        store(&mut client, &format!("after-move{i}"), "v").await.unwrap();
    }
    // It gets the writes made since: the others reach it at the new address.
    let commit = c.handle(leader).status().commit;
    c.wait_applied(&[mover], commit).await;
    assert_eq!(c.handle(mover).id(), id, "the same member");
    wait_membership(&c, "the new URL everywhere", |m| m.members.get(&id).is_some_and(|m| m.peer_url == url)).await;

    // Bad updates change nothing.
    let other_url = c.handle(mover).membership().members[&c.handle(leader).id()].peer_url.clone();
    let mut kv = c.client(leader).await;
    let update = |name: &str, url: &str| pb::MemberUpdateRequest { name: name.into(), peer_url: url.into() };
    let e = kv.member_update(update(&name, &other_url)).await.expect_err("another member's URL");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = kv.member_update(update(&name, "http://nohost")).await.expect_err("a URL without a port");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = kv.member_update(update("nobody", "http://a:1")).await.expect_err("no such member");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(c.handle(leader).membership().members[&id].peer_url, url);
    c.assert_one_leader_per_term();
    c.shutdown().await;
}
