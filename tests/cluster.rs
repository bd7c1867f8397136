//! In-process clusters over real tonic on 127.0.0.1 with fault injection on the
//! peer channels. Assertions are on outcomes; waits are generous.
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{store, with_timeout, ServingStatus, TestCluster, WAIT};
use raftkv::proto as pb;
use raftkv::raft::Role;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_one_leader_and_retrieve_is_identical_everywhere() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut client = c.client(leader).await;
    let mut last = 0;
    for i in 0..10 {
        last = store(&mut client, &format!("k{i}"), &format!("v{i}")).await.unwrap().index;
    }
    c.wait_applied(&[0, 1, 2], last).await;
    // etcd's HashKV: every member's keyspace hashes the same at the same revision.
    let views: Vec<_> = [0, 1, 2].iter().map(|&i| c.handle(i).store().read().unwrap().hash(0).unwrap()).collect();
    let first = c.retrieve(0).await.entries;
    assert_eq!(first.len(), 10);
    assert_eq!(first[3].key, "k3");
    assert_eq!(first[3].op, pb::Op::Put as i32);
    for i in 1..3 {
        assert_eq!(c.retrieve(i).await.entries, first, "node {i}");
        assert_eq!(views[i], views[0]);
    }
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_store_through_a_follower_and_read_linearizably_from_another() {
    let c = TestCluster::start(5).await;
    let leader = c.wait_leader().await;
    let followers: Vec<usize> = (0..5).filter(|&i| i != leader).collect();
    let mut f1 = c.client(followers[0]).await;
    let r = store(&mut f1, "color", "blue").await.expect("a follower forwards the write");
    assert!(r.index > 0 && r.term > 0);
    let mut f2 = c.client(followers[1]).await;
    let got = f2.get(pb::GetRequest { key: "color".into(), consistency: 0, revision: 0 }).await.unwrap().into_inner();
    assert!(got.found);
    assert_eq!(got.value, "blue");
    f1.delete(pb::DeleteRequest { key: "color".into() }).await.unwrap();
    let got = f2.get(pb::GetRequest { key: "color".into(), consistency: 0, revision: 0 }).await.unwrap().into_inner();
    assert!(!got.found, "a linearizable read after a delete sees the delete");
    let st = f2.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.role, pb::Role::Follower as i32);
    assert_eq!(st.leader, c.names[leader]);
    assert_eq!(st.members.len(), 5);
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

/// Writes forwarded together travel in batches (`ProposeStream`); each caller must get
/// its own write's answer: the revision it is told is the one its key was written at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_a_follower_each_get_their_own_answer() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let client = c.client(follower).await;
    let writes = (0..300).map(|i| {
        let mut client = client.clone();
        async move {
            let key = format!("batch{i:03}");
            let r = store(&mut client, &key, &format!("v{i}")).await.expect("a forwarded write is applied");
            (key, r)
        }
    });
    let answers = futures::future::join_all(writes).await;
    let mut reader = c.client(leader).await;
    let mut revisions = std::collections::BTreeSet::new();
    for (key, r) in answers {
        let got =
            reader.get(pb::GetRequest { key: key.clone(), consistency: 0, revision: 0 }).await.unwrap().into_inner();
        assert!(got.found, "{key} was acknowledged");
        assert_eq!(got.mod_revision, r.revision, "{key}: the answer names another write's revision");
        assert!(revisions.insert(r.revision), "two writes were told revision {}", r.revision);
    }
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_stopped_new_leader_has_every_committed_entry() {
    let mut c = TestCluster::start(5).await;
    let old = c.wait_leader().await;
    let mut client = c.client(old).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let r = store(&mut client, &format!("k{i}"), &format!("v{i}")).await.unwrap();
        acked.push((r.index, format!("k{i}")));
    }
    let old_term = c.handle(old).status().term;
    c.stop(old).await;
    let new = c.wait_leader().await;
    assert_ne!(new, old);
    assert!(c.handle(new).status().term > old_term);
    let mut client = c.client(new).await;
    let r = store(&mut client, "after", "x").await.expect("writes continue under the new leader");
    let live = c.live();
    c.wait_applied(&live, r.index).await;
    for &i in &live {
        let entries = c.retrieve(i).await.entries;
        let by_index: BTreeMap<u64, String> = entries.iter().map(|e| (e.index, e.key.clone())).collect();
        for (index, key) in &acked {
            assert_eq!(by_index.get(index), Some(key), "node {i} lost acknowledged {key}@{index}");
        }
        assert_eq!(entries.last().unwrap().key, "after");
    }
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_cannot_commit_nor_serve_stale_reads_and_heals() {
    let c = TestCluster::start(5).await;
    let old = c.wait_leader().await;
    let mut client = c.client(old).await;
    store(&mut client, "k", "v1").await.unwrap();
    // The old leader and one follower on one side, three nodes on the other.
    let buddy = (old + 1) % 5;
    let minority = vec![old, buddy];
    let majority: Vec<usize> = (0..5).filter(|i| !minority.contains(i)).collect();
    c.partition(&minority);
    let new = c.wait_leader_among(&majority).await;
    let mut mclient = c.client(majority[0]).await;
    let acked = store(&mut mclient, "k", "v2").await.expect("the majority commits");

    // The minority does not commit: its write fails within the deadline.
    let mut minor = c.client(buddy).await;
    let req = with_timeout(pb::StoreRequest { key: "k".into(), value: "lost".into() }, Duration::from_millis(1500));
    let err = minor.store(req).await.expect_err("a minority cannot commit");
    assert!(matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded), "{err:?}");
    // A linearizable read there does not answer the stale v1.
    for i in &minority {
        let mut m = c.client(*i).await;
        let req =
            with_timeout(pb::GetRequest { key: "k".into(), consistency: 0, revision: 0 }, Duration::from_millis(1500));
        match m.get(req).await {
            Ok(r) => panic!("minority node {i} answered a linearizable read: {:?}", r.into_inner()),
            Err(e) => assert!(matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded), "{e:?}"),
        }
        // A serializable read may be stale, and says so by being allowed.
        let r = m.get(pb::GetRequest { key: "k".into(), consistency: 1, revision: 0 }).await.unwrap().into_inner();
        assert_eq!(r.value, "v1");
    }

    // Readiness: the minority knows no leader and says so; the majority serves.
    const KV: &str = "raftkv.v1.KeyValue";
    for &i in &minority {
        c.wait_health(i, KV, ServingStatus::NotServing).await;
        c.wait_health(i, "", ServingStatus::Serving).await;
    }
    for &i in &majority {
        c.wait_health(i, KV, ServingStatus::Serving).await;
    }

    c.faults.heal();
    let leader = c.wait_leader().await;
    let mut client = c.client(leader).await;
    let fin = store(&mut client, "final", "1").await.unwrap();
    for &i in &minority {
        c.wait_health(i, KV, ServingStatus::Serving).await;
    }
    c.wait_applied(&[0, 1, 2, 3, 4], fin.index).await;
    let reference = c.retrieve(new).await.entries;
    assert!(reference.iter().any(|e| e.index == acked.index && e.value == "v2"));
    for i in 0..5 {
        let mut g = c.client(i).await;
        let r = g.get(pb::GetRequest { key: "k".into(), consistency: 0, revision: 0 }).await.unwrap().into_inner();
        assert_eq!(r.value, "v2", "node {i}");
        let entries = c.retrieve(i).await.entries;
        assert!(entries.iter().all(|e| e.value != "lost"), "node {i} applied the minority's write");
        assert_eq!(entries, reference, "node {i}");
    }
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_steps_down() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let term = c.handle(leader).status().term;
    c.partition(&[leader]);
    let mut w = c.handle(leader).status_watch();
    tokio::time::timeout(WAIT, w.wait_for(|s| s.role != Role::Leader))
        .await
        .expect("CheckQuorum makes an isolated leader step down")
        .unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new = c.wait_leader_among(&others).await;
    assert!(c.handle(new).status().term > term);
    c.faults.heal();
    c.wait_leader().await;
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_changes_nothing() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    c.wait_started().await;
    let mut client = c.client(leader).await;
    store(&mut client, "ok", "1").await.unwrap();
    let before = c.handle(leader).status().last_index;
    let e = store(&mut client, "", "v").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = store(&mut client, &"k".repeat(5000), "v").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = store(&mut client, "k", &"v".repeat((1 << 20) + 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = client.get(pb::GetRequest { key: "k".into(), consistency: 7, revision: 0 }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = client.delete(pb::DeleteRequest { key: String::new() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(c.handle(leader).status().last_index, before, "nothing was appended");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_leader_means_unavailable_and_the_deadline_is_honoured() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    // Every node alone: nobody can lead.
    for i in 0..3 {
        c.partition(&[i]);
    }
    let mut w = c.handle(leader).status_watch();
    tokio::time::timeout(WAIT, w.wait_for(|s| s.role != Role::Leader)).await.unwrap().unwrap();
    let mut client = c.client(leader).await;
    let started = std::time::Instant::now();
    let req = with_timeout(pb::StoreRequest { key: "k".into(), value: "v".into() }, Duration::from_millis(800));
    let e = client.store(req).await.unwrap_err();
    assert!(matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded), "{e:?}");
    // Generous bound: the server gave up near the client's deadline, not at its own 10 s cap.
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_under_shifting_partitions_lose_nothing_acknowledged() {
    let c = TestCluster::start(5).await;
    c.wait_leader().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let addrs = c.client_addrs.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 400 {
                n += 1;
                let addr = &addrs[(w + n) % addrs.len()];
                let Ok(mut c) = pb::key_value_client::KeyValueClient::connect(format!("http://{addr}")).await else {
                    continue;
                };
                let key = format!("w{w}-{n}");
                let req =
                    with_timeout(pb::StoreRequest { key: key.clone(), value: "x".into() }, Duration::from_millis(700));
                if let Ok(r) = c.store(req).await {
                    acked.push((r.into_inner().index, key));
                }
            }
            acked
        }));
    }
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.faults.heal();
        let a = round % 5;
        c.partition(&[a, (a + 2) % 5]);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    c.faults.heal();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(!acked.is_empty(), "some writes were acknowledged");
    let leader = c.wait_leader().await;
    let mut client = c.client(leader).await;
    let fin = store(&mut client, "final", "1").await.unwrap();
    c.wait_applied(&[0, 1, 2, 3, 4], fin.index).await;
    let reference = c.retrieve(0).await.entries;
    let by_index: BTreeMap<u64, String> = reference.iter().map(|e| (e.index, e.key.clone())).collect();
    for (index, key) in &acked {
        assert_eq!(by_index.get(index), Some(key), "acknowledged {key}@{index} lost");
    }
    for i in 1..5 {
        assert_eq!(c.retrieve(i).await.entries, reference, "node {i} differs");
    }
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_both_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let c = TestCluster::start(1).await;
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", c.client_addrs[0])).unwrap();
    let mut rc = ServerReflectionClient::new(ch.connect().await.unwrap());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = rc.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("{resp:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"raftkv.v1.KeyValue".to_string()), "{names:?}");
    assert!(names.contains(&"raftkv.v1.Raft".to_string()), "{names:?}");
    c.shutdown().await;
}

/// Members that serve no appends stream (a version before it, during a rolling
/// upgrade): the leader sends appends one call each, and every write reaches every
/// member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_without_the_appends_stream_are_sent_appends_one_call_each() {
    let c = TestCluster::start_with(3, common::Opts { appends_stream: false, ..Default::default() }).await;
    let leader = c.wait_leader().await;
    writes_reach_every_member_by_single_appends(&c, leader, "old").await;
    c.shutdown().await;
}

/// 30 writes through node `via` are found on every member at their acknowledged
/// indexes, and the leader had tried a stream of appends and been refused.
async fn writes_reach_every_member_by_single_appends(c: &TestCluster, via: usize, prefix: &str) {
    let mut client = c.client(via).await;
    let mut acked = Vec::new();
    for i in 0..30 {
        let key = format!("{prefix}-{i}");
        let r = store(&mut client, &key, "v").await.expect("a write commits");
        acked.push((key, r.index));
    }
    for i in 0..c.names.len() {
        common::assert_all_present(c, i, &acked).await;
    }
    assert!(c.faults.appends_streams_refused() > 0, "the leader tried the stream, and was refused");
    c.assert_one_leader_per_term();
}

/// One follower on a version without the appends stream, the others with it (a
/// rolling upgrade half done): the leader falls back for that follower alone, and
/// every write reaches every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_without_the_appends_stream_is_sent_appends_one_call_each() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let old = (0..3).find(|&i| i != leader).unwrap();
    let mut client = c.client(leader).await;
    store(&mut client, "before", "v").await.expect("a write commits");
    // The follower is restarted as an older version, in effect: its link is cut (the
    // leader drops its stream to it) and comes back refusing streams.
    c.faults.refuse_appends_stream(&c.names[old]);
    c.faults.cut(&c.names[leader], &c.names[old]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.faults.heal();
    writes_reach_every_member_by_single_appends(&c, leader, "mixed").await;
    c.shutdown().await;
}

/// A leader that serves no stream of forwarded writes (a version before it): the
/// follower sends its batches as `ProposeBatch` calls, and every write it acknowledges
/// reaches every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_the_forwarding_stream_is_sent_batches_one_call_each() {
    let c = TestCluster::start(3).await;
    for name in &c.names {
        c.faults.refuse_propose_stream(name);
    }
    let leader = c.wait_leader().await;
    let via = (0..3).find(|&i| i != leader).unwrap();
    let mut client = c.client(via).await;
    let mut acked = Vec::new();
    for i in 0..30 {
        let key = format!("fwd-{i}");
        let r = store(&mut client, &key, "v").await.expect("a forwarded write commits");
        acked.push((key, r.index));
    }
    for i in 0..c.names.len() {
        common::assert_all_present(&c, i, &acked).await;
    }
    assert!(c.faults.propose_streams_refused() > 0, "the follower tried the stream, and was refused");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_cluster_commits_alone() {
    let c = TestCluster::start(1).await;
    c.wait_leader().await;
    let mut client = c.client(0).await;
    let r = store(&mut client, "solo", "yes").await.unwrap();
    assert_eq!(r.term, 1);
    let got =
        client.get(pb::GetRequest { key: "solo".into(), consistency: 0, revision: 0 }).await.unwrap().into_inner();
    assert_eq!(got.value, "yes");
    let e = client.transfer_leader(pb::TransferLeaderRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "nobody to hand leadership to: {e:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_bound_the_log_and_restart_restores_from_them_twice() {
    let opts = common::Opts { snapshot_entries: 40, ..Default::default() };
    let mut c = TestCluster::start_with(3, opts).await;
    let leader = c.wait_leader().await;
    let mut client = c.client(leader).await;
    let mut last = 0;
    for i in 0..300 {
        last = store(&mut client, &format!("k{i:03}"), &format!("v{i}")).await.unwrap().index;
    }
    c.wait_applied(&[0, 1, 2], last).await;
    // Every node snapshotted and compacted: its log no longer starts at 1.
    let deadline = tokio::time::Instant::now() + WAIT;
    while (0..3).any(|i| c.handle(i).status().first_index < 200) {
        let firsts: Vec<u64> = (0..3).map(|i| c.handle(i).status().first_index).collect();
        assert!(tokio::time::Instant::now() < deadline, "logs not compacted: first indexes {firsts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reference = c.retrieve(leader).await.entries;
    assert_eq!(reference.len(), 300, "the whole history survives compaction");
    let follower = (leader + 1) % 3;
    for round in 0..2 {
        c.stop(follower).await;
        let r = store(&mut c.client(leader).await, &format!("while-down-{round}"), "x").await.unwrap();
        c.restart(follower).await;
        c.wait_applied(&[follower], r.index).await;
        let got = c.retrieve(follower).await.entries;
        assert_eq!(got.len(), 301 + round, "round {round}");
        assert_eq!(got[..300], reference[..], "round {round}: history restored from snapshot + log");
        let g = c
            .client(follower)
            .await
            .get(pb::GetRequest { key: "k299".into(), consistency: 1, revision: 0 })
            .await
            .unwrap();
        assert_eq!(g.into_inner().value, "v299");
    }
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_while_the_leader_compacts_catches_up_through_install_snapshot() {
    let opts = common::Opts { snapshot_entries: 30, ..Default::default() };
    let c = TestCluster::start_with(3, opts).await;
    let leader = c.wait_leader().await;
    let lagging = (leader + 1) % 3;
    let mut client = c.client(leader).await;
    store(&mut client, "before", "1").await.unwrap();
    c.partition(&[lagging]);
    let leader = c.wait_leader_among(&[leader, (leader + 2) % 3]).await;
    let mut client = c.client(leader).await;
    let mut last = 0;
    for i in 0..200 {
        last = store(&mut client, &format!("k{i:03}"), &format!("v{i}")).await.unwrap().index;
    }
    // The leader compacts past everything the cut-off follower has.
    let lag_last = c.handle(lagging).status().last_index;
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.handle(leader).status().first_index <= lag_last + 1 {
        assert!(tokio::time::Instant::now() < deadline, "the leader did not compact");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.faults.heal();
    c.wait_applied(&[lagging], last).await;
    // The metrics count it on both sides (etcd's names): sent, received, its bytes.
    let sample = |i: usize, series: String| {
        let text = raftkv::server::metrics::scrape(c.handle(i));
        let prefix = format!("{series} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    let (to, from) = (format!(r#"To="{}""#, c.names[lagging]), format!(r#"From="{}""#, c.names[leader]));
    let deadline = tokio::time::Instant::now() + WAIT;
    while sample(leader, format!("raftkv_network_snapshot_send_success_total{{{to}}}")) < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the leader counted no snapshot sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sample(leader, format!("raftkv_network_snapshot_send_total_duration_seconds_count{{{to}}}")) >= 1.0);
    assert!(sample(lagging, format!("raftkv_network_snapshot_receive_success_total{{{from}}}")) >= 1.0);
    assert!(sample(lagging, format!("raftkv_network_snapshot_receive_bytes_total{{{from}}}")) > 0.0);
    assert!(sample(leader, "raftkv_server_checkpoint_duration_seconds_count".into()) >= 1.0);
    let reference = c.retrieve(leader).await.entries;
    assert_eq!(reference.len(), 201);
    assert_eq!(c.retrieve(lagging).await.entries, reference, "identical state after InstallSnapshot");
    let g =
        c.client(lagging).await.get(pb::GetRequest { key: "k199".into(), consistency: 0, revision: 0 }).await.unwrap();
    assert_eq!(g.into_inner().value, "v199");
    // And it keeps replicating normally afterwards.
    let r = store(&mut client, "after", "1").await.unwrap();
    c.wait_applied(&[0, 1, 2], r.index).await;
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stays_bounded_under_a_long_write_load() {
    let opts = common::Opts { snapshot_entries: 100, ..Default::default() };
    let c = TestCluster::start_with(3, opts).await;
    let leader = c.wait_leader().await;
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut client = c.client(leader).await;
        writers.push(tokio::spawn(async move {
            let mut last = 0;
            for i in 0..250 {
                last = store(&mut client, &format!("w{w}-{i}"), &"v".repeat(100)).await.unwrap().index;
            }
            last
        }));
    }
    let mut last = 0;
    for w in writers {
        last = last.max(w.await.unwrap());
    }
    c.wait_applied(&[0, 1, 2], last).await;
    // 2,000 writes of ~130 bytes in 16 KiB segments would be about 20 segments.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let segments: Vec<usize> =
            (0..3).map(|i| std::fs::read_dir(c.data_dir(i).join("wal")).unwrap().count()).collect();
        let spans: Vec<u64> = (0..3).map(|i| last + 1 - c.handle(i).status().first_index).collect();
        // In memory: at most a snapshot interval plus the catch-up tail, and a batch.
        if segments.iter().all(|&s| s <= 6) && spans.iter().all(|&s| s <= 100 + 10 + 50) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "log not bounded: segments {segments:?}, entries {spans:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.retrieve(leader).await.entries.len(), 2000);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrieve_pages_chain_into_the_whole_history() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut client = c.client(leader).await;
    for i in 0..50 {
        store(&mut client, &format!("p{i:02}"), "v").await.unwrap();
    }
    let whole = client.retrieve(pb::RetrieveRequest::default()).await.unwrap().into_inner();
    assert_eq!((whole.entries.len(), whole.next_revision), (50, 0), "unpaged: everything, and says so");
    let mut paged = Vec::new();
    let mut from_revision = 0;
    let mut pages = 0;
    loop {
        let r = client.retrieve(pb::RetrieveRequest { from_revision, limit: 20 }).await.unwrap().into_inner();
        pages += 1;
        assert!(r.entries.len() <= 20);
        paged.extend(r.entries);
        if r.next_revision == 0 {
            break;
        }
        assert!(r.next_revision > paged.last().unwrap().revision, "next_revision follows the page");
        from_revision = r.next_revision;
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, whole.entries);
    let past = client.retrieve(pb::RetrieveRequest { from_revision: 10_000, limit: 5 }).await.unwrap().into_inner();
    assert!(past.entries.is_empty() && past.next_revision == 0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_through_a_follower_hands_over_to_the_named_member_losing_no_write() {
    // A longer election timeout than the default: the transfer is given up after one,
    // and this is a busy 2-core machine.
    let opts = common::Opts { election_timeout_ms: 600, heartbeat_ms: 100, ..Default::default() };
    let c = TestCluster::start_with(5, opts).await;
    let old = c.wait_leader().await;
    let old_term = c.handle(old).status().term;
    let followers: Vec<usize> = (0..5).filter(|&i| i != old).collect();
    let (target, asked) = (followers[0], followers[1]);
    let writers = common::Writers::start(&c, &[old, followers[1], followers[2]]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = c.client(asked).await;
    let r = client
        .transfer_leader(pb::TransferLeaderRequest { target: c.names[target].clone() })
        .await
        .expect("the transfer succeeds")
        .into_inner();
    assert_eq!(r.leader, c.names[target]);
    assert_eq!(r.term, old_term + 1, "one election, started by the transfer");
    assert_eq!(c.wait_leader().await, target);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (acked, errors) = writers.finish().await;
    assert!(errors.is_empty(), "writes during a transfer wait and go to the new leader: {errors:?}");
    assert!(!acked.is_empty(), "the writers made progress");
    common::assert_all_present(&c, target, &acked).await;
    // A transfer to the current leader changes nothing; an unknown member is refused.
    let r = client.transfer_leader(pb::TransferLeaderRequest { target: c.names[target].clone() }).await.unwrap();
    assert_eq!(r.into_inner().term, old_term + 1);
    let e = client.transfer_leader(pb::TransferLeaderRequest { target: "nobody".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_of_the_leader_leaves_a_new_leader_behind_and_loses_no_write() {
    let mut c = TestCluster::start(3).await;
    let old = c.wait_leader().await;
    let old_term = c.handle(old).status().term;
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let writers = common::Writers::start(&c, &others).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.stop_gracefully(old).await;
    // The leader handed over before it stopped: a successor already leads, in the
    // very next term, without waiting for an election timeout.
    let leaders: Vec<usize> = others.iter().copied().filter(|&i| c.handle(i).status().role == Role::Leader).collect();
    assert_eq!(leaders.len(), 1, "a new leader exists as soon as the old one has stopped");
    assert_eq!(c.handle(leaders[0]).status().term, old_term + 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (acked, errors) = writers.finish().await;
    assert!(errors.is_empty(), "writes through the other nodes never fail: {errors:?}");
    assert!(!acked.is_empty(), "the writers made progress");
    for &i in &others {
        common::assert_all_present(&c, i, &acked).await;
    }
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_pending_on_a_leader_that_is_cut_off_are_answered_not_left_to_time_out() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut w = c.client(leader).await;
    store(&mut w, "k", "v").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..16 {
        let mut client = c.client(leader).await;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // The longest a request may wait: a read left pending runs into it.
                let get = pb::GetRequest { key: "k".into(), consistency: 0, revision: 0 };
                match client.get(with_timeout(get, Duration::from_secs(10))).await {
                    Ok(_) => codes.push(Code::Ok),
                    Err(e) => codes.push(e.code()),
                }
            }
            codes
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.partition(&[leader]);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    c.wait_leader_among(&others).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.handle(leader).status().role == raftkv::raft::Role::Leader {
        assert!(tokio::time::Instant::now() < deadline, "the cut-off leader never stepped down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut codes = Vec::new();
    for r in readers {
        codes.extend(r.await.unwrap());
    }
    assert!(codes.contains(&Code::Ok), "reads were served before the cut");
    let timed_out = codes.iter().filter(|c| **c == Code::DeadlineExceeded).count();
    assert_eq!(timed_out, 0, "reads left pending until their deadline; outcomes {codes:?}");
    assert!(codes.iter().all(|c| matches!(c, Code::Ok | Code::Unavailable)), "{codes:?}");
    let pending = c.handle(leader).metrics().pending_reads.load(Ordering::Relaxed);
    assert_eq!(pending, 0, "the old leader still holds pending reads");
    c.faults.heal();
    c.shutdown().await;
}

/// Writes forwarded by followers to a leader that is stopped with them in flight: an
/// answer of UNAVAILABLE promises the write was not applied (clients retry it), so no
/// write answered so may be in the history; acknowledged ones all are; the rest are
/// "outcome unknown" (DEADLINE_EXCEEDED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_short_by_its_leaders_stop_is_never_reported_unavailable_if_applied() {
    let mut c = TestCluster::start(3).await;
    let mut outcomes: Vec<(String, Code)> = Vec::new();
    for round in 0..4u64 {
        let leader = c.wait_leader().await;
        let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let mut writers = Vec::new();
        for w in 0..8 {
            let mut client = c.client(followers[w % 2]).await;
            writers.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for n in 0..30 {
                    let key = format!("r{round}-w{w}-{n}");
                    let req = pb::StoreRequest { key: key.clone(), value: "x".into() };
                    let code = match client.store(with_timeout(req, Duration::from_secs(5))).await {
                        Ok(_) => Code::Ok,
                        Err(e) => e.code(),
                    };
                    out.push((key, code));
                }
                out
            }));
        }
        tokio::time::sleep(Duration::from_millis(40 + 25 * round)).await;
        c.stop(leader).await;
        for w in writers {
            outcomes.extend(w.await.unwrap());
        }
        c.restart(leader).await;
    }
    let leader = c.wait_leader().await;
    let mut client = c.client(leader).await;
    let fin = store(&mut client, "final", "1").await.unwrap();
    c.wait_applied(&[0, 1, 2], fin.index).await;
    let applied: std::collections::HashSet<String> =
        c.retrieve(leader).await.entries.into_iter().map(|e| e.key).collect();
    let count = |code| outcomes.iter().filter(|(_, c)| *c == code).count();
    eprintln!(
        "ok {}, unavailable {}, outcome unknown {}",
        count(Code::Ok),
        count(Code::Unavailable),
        count(Code::DeadlineExceeded)
    );
    for (key, code) in &outcomes {
        match code {
            Code::Ok => assert!(applied.contains(key), "acknowledged {key} is lost"),
            Code::Unavailable => assert!(!applied.contains(key), "{key} was answered UNAVAILABLE, yet applied"),
            Code::DeadlineExceeded => {}
            other => panic!("{key}: unexpected {other:?}"),
        }
    }
    c.assert_one_leader_per_term();
    c.shutdown().await;
}
