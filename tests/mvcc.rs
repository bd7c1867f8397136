//! The MVCC keyspace as a client sees it: revisions, reads at a revision, compaction
//! (explicit and automatic) and the quota, on in-process clusters.
mod common;

use std::time::Duration;

use common::{store, Opts, TestCluster, WAIT};
use raftkv::proto as pb;
use tonic::Code;

fn get_at(key: &str, revision: u64) -> pb::GetRequest {
    pb::GetRequest { key: key.into(), consistency: 0, revision }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_a_revision_and_compaction_through_a_follower() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = (leader + 1) % 3;
    let mut client = c.client(follower).await;
    let mut revs = Vec::new();
    for v in ["red", "green", "blue"] {
        revs.push(store(&mut client, "color", v).await.unwrap().revision);
    }
    assert!(revs.windows(2).all(|w| w[1] == w[0] + 1), "one revision per write: {revs:?}");
    let old = client.get(get_at("color", revs[0])).await.unwrap().into_inner();
    assert_eq!((old.found, old.value.as_str(), old.version, old.mod_revision), (true, "red", 1, revs[0]));
    let now = client.get(get_at("color", 0)).await.unwrap().into_inner();
    assert_eq!((now.value.as_str(), now.create_revision, now.version), ("blue", revs[0], 3));

    // Compact through a follower: it goes through the log to every node.
    client.compact(pb::CompactRequest { revision: revs[1] }).await.unwrap();
    let e = client.get(get_at("color", revs[0])).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(e.message().contains(&format!("compacted revision {}", revs[1])), "{}", e.message());
    let at = client.get(get_at("color", revs[1])).await.unwrap().into_inner();
    assert_eq!(at.value, "green", "the compacted revision itself still reads");
    let e = client.retrieve(pb::RetrieveRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "never a silently shorter history: {}", e.message());
    let rest =
        client.retrieve(pb::RetrieveRequest { from_revision: revs[1] + 1, limit: 0 }).await.unwrap().into_inner();
    assert_eq!(rest.entries.len(), 1);
    assert_eq!((rest.entries[0].value.as_str(), rest.compact_revision), ("blue", revs[1]));
    for bad in [revs[0], revs[2] + 10] {
        let e = client.compact(pb::CompactRequest { revision: bad }).await.unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange, "compact {bad}: {}", e.message());
    }
    let e = client.get(get_at("color", revs[2] + 10)).await.unwrap_err();
    assert!(e.message().contains("future revision"), "{}", e.message());

    // Every node compacted at the same revision and holds the same keyspace.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st: Vec<_> = (0..3).map(|i| c.handle(i).store().status()).collect();
        if st.iter().all(|s| s.compacted == revs[1] && s.revision == revs[2]) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hashes: Vec<u32> = (0..3).map(|i| c.handle(i).store().read().unwrap().hash(revs[1]).unwrap()).collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_refuses_writes_until_deletes_and_compaction_free_space() {
    let opts = Opts { quota_backend_bytes: 64 << 10, ..Opts::default() };
    let c = TestCluster::start_with(3, opts).await;
    let leader = c.wait_leader().await;
    let mut client = c.client(leader).await;
    let value = "x".repeat(1024);
    let mut written = Vec::new();
    let refused = loop {
        let key = format!("k{}", written.len());
        match store(&mut client, &key, &value).await {
            Ok(_) => written.push(key),
            Err(e) => break e,
        }
        assert!(written.len() < 1000, "the quota never refused a write");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("database space exceeded"), "{}", refused.message());
    // Reads work, nothing acknowledged is lost, and deletes go through.
    for key in &written {
        let g = client.get(get_at(key, 0)).await.unwrap().into_inner();
        assert!(g.found && g.value == value, "{key}");
    }
    let mut last = 0;
    for key in &written {
        last = client.delete(pb::DeleteRequest { key: key.clone() }).await.unwrap().into_inner().revision;
    }
    // The history still holds the values until it is compacted.
    let e = store(&mut client, "more", "v").await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    client.compact(pb::CompactRequest { revision: last }).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match store(&mut client, "more", "v").await {
            Ok(_) => break,
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted),
        }
        assert!(tokio::time::Instant::now() < deadline, "compaction freed no space");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_is_decided_by_the_leader_and_applied_everywhere() {
    let mode = raftkv::config::AutoCompaction::Periodic(Duration::from_millis(500));
    let c = TestCluster::start_with(3, Opts { auto_compaction: Some(mode), ..Opts::default() }).await;
    let leader = c.wait_leader().await;
    let mut client = c.client(leader).await;
    let first = store(&mut client, "a", "1").await.unwrap().revision;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        store(&mut client, "a", "again").await.unwrap();
        let st: Vec<_> = (0..3).map(|i| c.handle(i).store().status()).collect();
        if st.iter().all(|s| s.compacted >= first) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no compaction: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = client.get(get_at("a", first - 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    c.shutdown().await;
}
