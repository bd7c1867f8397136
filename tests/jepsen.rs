//! The project's own Jepsen-style tests: concurrent clients doing Store, Delete and
//! linearizable Get on a few keys with unique values, through every node, while a
//! nemesis works on the cluster; then every key's history is checked for
//! linearizability (tests/checker), and the checker is shown to catch bad histories
//! injected into the real one.
//!
//! Two clusters: nodes in this process (partitions, leader isolation, stop and
//! restart), and real `raftkv serve` processes whose peer traffic goes through TCP
//! proxies (partitions and leader isolation that hold traffic, lost connections,
//! kill -9 and restart, SIGSTOP and SIGCONT).
//!
//! `RAFTKV_JEPSEN_SECS` (default 6: CI's short schedule) sets how long each nemesis
//! runs; `RAFTKV_JEPSEN_SEED` replays a schedule (the seed is printed; timing still
//! varies).
mod checker;
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use checker::workload::{client_loop, final_reads, seed_and_secs, verify, CLIENTS};
use common::TestCluster;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_partitions_and_restarts_are_linearizable() {
    let (seed, secs) = seed_and_secs("");
    let mut c = TestCluster::start(5).await;
    c.wait_leader().await;
    let start = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let addrs = Arc::new(c.client_addrs.clone());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client_loop(addrs.clone(), id, seed, start, stop.clone(), history.clone())))
        .collect();

    // One fault at a time, each healed before the next, so a majority can always
    // make progress: writes keep completing between the faults.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut stopped: Option<usize> = None;
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..800))).await;
        c.faults.heal();
        if let Some(i) = stopped.take() {
            c.restart(i).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..400))).await;
        match rng.gen_range(0..4) {
            0 => {
                let live = c.live();
                let leader = live.iter().copied().find(|&i| c.handle(i).status().role == raftkv::raft::Role::Leader);
                let victim = leader.unwrap_or(live[rng.gen_range(0..live.len())]);
                eprintln!("jepsen: isolate {} (the leader: {})", c.names[victim], leader.is_some());
                c.partition(&[victim]);
            }
            1 => {
                let a = rng.gen_range(0..5);
                let b = (a + rng.gen_range(1..5)) % 5;
                eprintln!("jepsen: partition {{{}, {}}} from the rest", c.names[a], c.names[b]);
                c.partition(&[a, b]);
            }
            2 => {
                let i = rng.gen_range(0..5);
                eprintln!("jepsen: stop {}", c.names[i]);
                c.stop(i).await;
                stopped = Some(i);
            }
            _ => eprintln!("jepsen: no fault"),
        }
    }
    c.faults.heal();
    if let Some(i) = stopped.take() {
        c.restart(i).await;
    }
    c.wait_leader().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in clients {
        t.await.unwrap();
    }
    let leader = c.wait_leader().await;
    final_reads(&c.client_addrs[leader], start, &history).await;
    c.assert_one_leader_per_term();
    // etcd's HashKV as a property: once every member has applied the same entries,
    // their keyspaces hash alike at every revision they all still hold (sampled).
    let commit = c.handle(leader).status().commit;
    c.wait_applied(&[0, 1, 2, 3, 4], commit).await;
    let views: Vec<_> = (0..5).map(|i| c.handle(i).store().read().unwrap()).collect();
    let top = views.iter().map(|v| v.revision()).min().unwrap();
    assert!(views.iter().all(|v| v.revision() == top), "members at {commit} differ in revision");
    let bottom = views.iter().map(|v| v.compacted()).max().unwrap().max(1);
    let step = ((top - bottom) / 40).max(1);
    for rev in (bottom..=top).step_by(step as usize).chain([top]) {
        let hashes: Vec<u32> = views.iter().map(|v| v.hash(rev).unwrap()).collect();
        assert!(hashes.windows(2).all(|w| w[0] == w[1]), "members differ at revision {rev}: {hashes:?}");
    }
    drop(views);
    c.shutdown().await;
    let history = history.lock().unwrap().clone();
    verify(&history, seed, start, "in this process's output");
}
