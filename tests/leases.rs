//! etcd's leases as a client sees them: keys that go when their lease expires, at one
//! revision and on every member; keep-alives (through a follower) that hold a lease;
//! a new leader that extends the remaining TTLs, and a deposed one that expires
//! nothing. tests/etcdctl.rs drives leases with etcdctl (including `etcdctl lock`).
mod common;

use std::time::Duration;

use common::TestCluster;
use raftkv::proto::etcd::etcdserverpb::{self as epb, kv_client::KvClient, lease_client::LeaseClient};
use tonic::transport::Channel;

/// Generous: these tests wait for outcomes, not for times.
const WAIT: Duration = Duration::from_secs(60);

async fn lease(c: &TestCluster, i: usize) -> LeaseClient<Channel> {
    LeaseClient::connect(format!("http://{}", c.client_addrs[i])).await.unwrap()
}

async fn kv(c: &TestCluster, i: usize) -> KvClient<Channel> {
    KvClient::connect(format!("http://{}", c.client_addrs[i])).await.unwrap()
}

async fn grant(l: &mut LeaseClient<Channel>, ttl: i64) -> i64 {
    let r = l.lease_grant(epb::LeaseGrantRequest { ttl, id: 0 }).await.unwrap().into_inner();
    assert_eq!(r.ttl, ttl);
    r.id
}

async fn put(k: &mut KvClient<Channel>, key: &str, lease: i64) {
    k.put(epb::PutRequest { key: key.into(), value: b"v".to_vec(), lease, ..Default::default() }).await.unwrap();
}

/// Node `i`'s own view of `key` (a serializable read): whether it exists.
async fn present(c: &TestCluster, i: usize, key: &str) -> bool {
    let r = epb::RangeRequest { key: key.into(), serializable: true, ..Default::default() };
    kv(c, i).await.range(r).await.unwrap().into_inner().count > 0
}

/// Waits until `key` is gone on every node in `among`.
async fn wait_gone(c: &TestCluster, among: &[usize], key: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    for &i in among {
        while present(c, i, key).await {
            assert!(tokio::time::Instant::now() < deadline, "{key} still on node {i} after {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_deletes_its_keys_at_one_revision_while_keep_alives_hold_another() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = (leader + 1) % 3;
    let mut l = lease(&c, follower).await;
    let mut k = kv(&c, follower).await;
    let short = grant(&mut l, 2).await;
    let held = grant(&mut l, 6).await;
    // Granted after `held`, with a longer TTL, never kept alive: once it has expired,
    // `held` would have too without its keep-alives.
    let marker = grant(&mut l, 8).await;
    put(&mut k, "marker", marker).await;
    put(&mut k, "s/1", short).await;
    put(&mut k, "s/2", short).await;
    put(&mut k, "held", held).await;
    let got = k.range(epb::RangeRequest { key: b"s/1".to_vec(), ..Default::default() }).await.unwrap();
    assert_eq!(got.into_inner().kvs[0].lease, short);
    let listed = l.lease_leases(epb::LeaseLeasesRequest {}).await.unwrap().into_inner().leases;
    let mut ids: Vec<i64> = listed.iter().map(|s| s.id).collect();
    ids.sort();
    assert_eq!(ids, {
        let mut v = vec![short, held, marker];
        v.sort();
        v
    });

    // Keep-alives for `held` through the follower (which forwards them to the leader),
    // and one for a lease that does not exist.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = l.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(epb::LeaseKeepAliveRequest { id: 12345 }).await.unwrap();
    let unknown = answers.message().await.unwrap().unwrap();
    assert_eq!((unknown.id, unknown.ttl), (12345, 0), "an unknown lease is kept alive with TTL 0");
    drop(tx);
    drop(answers);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stopped, follower_addr) = (stop.clone(), c.client_addrs[follower].clone());
    let pinger = tokio::spawn(async move {
        let mut ttls = Vec::new();
        // A broken stream is opened again (the test waits for outcomes, not for a
        // stream to survive).
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok(mut l) = LeaseClient::connect(format!("http://{follower_addr}")).await else { continue };
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let Ok(answers) = l.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await else {
                continue;
            };
            let mut answers = answers.into_inner();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                if tx.send(epb::LeaseKeepAliveRequest { id: held }).await.is_err() {
                    break;
                }
                match answers.message().await {
                    Ok(Some(a)) => ttls.push(a.ttl),
                    _ => break,
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        ttls
    });

    wait_gone(&c, &[0, 1, 2], "s/1").await;
    wait_gone(&c, &[0, 1, 2], "s/2").await;
    let ttl = l.lease_time_to_live(epb::LeaseTimeToLiveRequest { id: short, keys: true }).await.unwrap();
    assert_eq!(ttl.into_inner().ttl, -1, "an expired lease is gone");
    wait_gone(&c, &[0, 1, 2], "marker").await;
    assert!(present(&c, leader, "held").await, "keep-alives hold the lease");
    let info = l.lease_time_to_live(epb::LeaseTimeToLiveRequest { id: held, keys: true }).await.unwrap();
    let info = info.into_inner();
    assert_eq!((info.granted_ttl, info.keys), (6, vec![b"held".to_vec()]));
    assert!(info.ttl > 0);
    let history = c.retrieve(leader).await.entries;
    let deletes: Vec<_> =
        history.iter().filter(|e| e.key.starts_with("s/") && e.op == raftkv::proto::Op::Delete as i32).collect();
    assert_eq!(deletes.len(), 2, "{history:?}");
    assert_eq!(deletes[0].revision, deletes[1].revision, "one revision for the lease's keys");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ttls = pinger.await.unwrap();
    assert!(!ttls.is_empty() && ttls.iter().all(|t| *t == 6), "every keep-alive answers the full TTL: {ttls:?}");
    // Without keep-alives it expires too.
    wait_gone(&c, &[0, 1, 2], "held").await;
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_extends_leases_and_a_deposed_one_expires_nothing() {
    let c = TestCluster::start(3).await;
    let old = c.wait_leader().await;
    let mut l = lease(&c, old).await;
    let id = grant(&mut l, 20).await;
    put(&mut kv(&c, old).await, "leased", id).await;
    let granted_term = c.handle(old).status().term;
    // Most of the TTL passes under the first leader (if leadership moved meanwhile,
    // the TTL restarted then, which only adds to what is left); then it is cut off.
    tokio::time::sleep(Duration::from_secs(12)).await;
    c.partition(&[old]);
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new = c.wait_leader_among(&others).await;
    // The new leader gives the lease a full TTL from its start, not the 8 s left.
    let mut l2 = lease(&c, new).await;
    let info = l2.lease_time_to_live(epb::LeaseTimeToLiveRequest { id, keys: false }).await.unwrap().into_inner();
    assert!(info.ttl > 10, "remaining TTL under the new leader: {}", info.ttl);
    assert!(present(&c, new, "leased").await);
    // It expires under the new leader; the deposed one, cut off, revokes nothing.
    wait_gone(&c, &others, "leased").await;
    c.faults.heal();
    wait_gone(&c, &[old], "leased").await;
    let history = c.retrieve(new).await.entries;
    let delete = history
        .iter()
        .find(|e| e.key == "leased" && e.op == raftkv::proto::Op::Delete as i32)
        .expect("the lease's delete");
    assert!(delete.term > granted_term, "revoked in term {} by the new leader, not in {granted_term}", delete.term);
    c.assert_one_leader_per_term();
    c.shutdown().await;
}
