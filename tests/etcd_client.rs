//! The Rust `etcd-client` crate against raftkv: etcd's lock recipe (the one etcd's
//! Go `concurrency.Mutex` uses) built on a lease, a transaction, ranges by create
//! revision and a watch, with concurrent contenders spread over the members. One of
//! them dies holding the lock: its lease expires and the next contender gets it.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::TestCluster;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, WatchOptions,
};

const PREFIX: &str = "locks/the-lock/";

/// Waits in line for the lock; returns this contender's key once it holds it.
async fn lock(c: &mut Client, lease: i64) -> String {
    let key = format!("{PREFIX}{lease:x}");
    let enqueue = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
        key.clone(),
        "",
        Some(PutOptions::new().with_lease(lease)),
    )]);
    c.txn(enqueue).await.unwrap();
    let mine = c.get(key.clone(), None).await.unwrap().kvs()[0].create_revision();
    loop {
        // The contender just ahead: the newest key created before ours.
        let ahead = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(mine - 1)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1);
        let r = c.get(PREFIX, Some(ahead)).await.unwrap();
        let Some(kv) = r.kvs().first() else { return key };
        let (waited_for, from) = (kv.key().to_vec(), r.header().unwrap().revision() + 1);
        let mut stream = c.watch(waited_for, Some(WatchOptions::new().with_start_revision(from))).await.unwrap();
        'deleted: while let Some(w) = stream.message().await.unwrap() {
            if w.events().iter().any(|e| e.event_type() == EventType::Delete) {
                break 'deleted;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_clients_lock_recipe_never_has_two_holders() {
    let c = TestCluster::start(3).await;
    c.wait_leader().await;
    let holding = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..4usize {
        let endpoint = format!("http://{}", c.client_addrs[n % 3]);
        let (holding, served) = (holding.clone(), served.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect([endpoint], None).await.unwrap();
            for round in 0..3 {
                // A TTL long enough not to lapse on a loaded machine; the one that dies
                // holding the lock makes the others wait it out.
                let lease = client.lease_grant(8, None).await.unwrap().id();
                // Keep-alives while waiting and holding, every second; a broken stream is
                // opened again.
                let mut pinger = client.clone();
                let alive = tokio::spawn(async move {
                    loop {
                        if let Ok((mut keeper, mut answers)) = pinger.lease_keep_alive(lease).await {
                            while keeper.keep_alive().await.is_ok() && answers.message().await.is_ok() {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
                lock(&mut client, lease).await;
                let mine = format!("{PREFIX}{lease:x}");
                assert_eq!(client.get(mine, None).await.unwrap().kvs().len(), 1, "its lease lapsed while it waited");
                assert_eq!(holding.fetch_add(1, Ordering::SeqCst), 0, "two holders of the lock");
                tokio::time::sleep(Duration::from_millis(100)).await;
                holding.fetch_sub(1, Ordering::SeqCst);
                served.fetch_add(1, Ordering::SeqCst);
                alive.abort();
                if n == 0 && round == 0 {
                    // Dies holding it (no unlock, no keep-alives): the lease expires.
                    continue;
                }
                client.lease_revoke(lease).await.unwrap();
            }
        }));
    }
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all).await.expect("every contender got the lock within 120 s");
    assert_eq!(served.load(Ordering::SeqCst), 12);
    c.assert_one_leader_per_term();
    c.shutdown().await;
}
