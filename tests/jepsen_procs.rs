//! The Jepsen-style run on real `raftkv serve` processes (see tests/jepsen.rs for the
//! workload and the checks). Peer traffic goes through TCP proxies, so the nemesis can
//! partition the cluster and isolate the leader (the proxies hold traffic, the nodes
//! notice only by their timeouts) and lose messages (it closes connections with
//! requests in flight); it also kills nodes with SIGKILL and restarts them, and
//! pauses them with SIGSTOP/SIGCONT. One fault at a time, healed before the next.
//!
//! Each node dials the others through its own proxies (`serve --peer-dial`); the
//! membership holds the real addresses.
//!
//! `RAFTKV_JEPSEN_SECS` (default 6) and `RAFTKV_JEPSEN_SEED` as in tests/jepsen.rs.
mod checker;
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use checker::workload::{client_loop, final_reads, seed_and_secs, verify, CLIENTS};
use common::procs::Procs;
use common::proxy::Proxies;
use raftkv::proto::{self as pb, key_value_client::KeyValueClient};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const N: usize = 5;

/// The node that says it leads, asking each live one (a paused one does not answer).
async fn leader(p: &Procs) -> Option<usize> {
    for i in (0..N).filter(|&i| p.children[i].is_some()) {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", p.clients[i])).unwrap().connect_lazy();
        let mut req = tonic::Request::new(pb::StatusRequest {});
        req.set_timeout(Duration::from_millis(300));
        if let Ok(st) = KeyValueClient::new(ch).status(req).await {
            if st.into_inner().role == pb::Role::Leader as i32 {
                return Some(i);
            }
        }
    }
    None
}

async fn wait_leader(p: &Procs) -> usize {
    let deadline = Instant::now() + common::procs::WAIT;
    loop {
        if let Some(l) = leader(p).await {
            return l;
        }
        assert!(Instant::now() < deadline, "no leader within {:?}", common::procs::WAIT);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the nemesis did last, to undo it.
enum Fault {
    None,
    Killed(usize),
    Paused(usize),
    /// Partitions and losses live in the proxies; the loss task is stopped.
    Network(Option<tokio::task::JoinHandle<()>>),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_processes_under_kills_pauses_losses_and_partitions_stay_linearizable() {
    let (seed, secs) = seed_and_secs(" (processes)");
    let mut p = Procs::new(N, &[]);
    let taken: Vec<String> = p.clients.iter().chain(&p.peers).cloned().collect();
    let proxies = Arc::new(Proxies::start(&p.peers, &taken).await);
    p.views = proxies.views.clone();
    let mut p = Procs::spawn_all(p);
    wait_leader(&p).await;

    let start = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let addrs = Arc::new(p.clients.clone());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client_loop(addrs.clone(), id, seed, start, stop.clone(), history.clone())))
        .collect();

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fault = Fault::None;
    let undo = |p: &mut Procs, fault: Fault| match fault {
        Fault::None => {}
        Fault::Killed(i) => p.spawn(i),
        Fault::Paused(i) => p.signal(i, libc::SIGCONT),
        Fault::Network(loss) => {
            if let Some(t) = loss {
                t.abort();
            }
            proxies.heal();
        }
    };
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..800))).await;
        undo(&mut p, std::mem::replace(&mut fault, Fault::None));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..400))).await;
        let the_leader = leader(&p).await;
        // The leader half the time (when there is one), else any node.
        let victim = match the_leader {
            Some(l) if rng.gen_bool(0.5) => l,
            _ => rng.gen_range(0..N),
        };
        let name = p.names[victim].clone();
        let is_leader = Some(victim) == the_leader;
        fault = match rng.gen_range(0..6) {
            0 => {
                eprintln!("jepsen: isolate {name} (the leader: {is_leader})");
                proxies.partition(&[victim]);
                Fault::Network(None)
            }
            1 => {
                let other = (victim + rng.gen_range(1..N)) % N;
                eprintln!("jepsen: partition {{{name}, {}}} from the rest", p.names[other]);
                proxies.partition(&[victim, other]);
                Fault::Network(None)
            }
            2 => {
                eprintln!("jepsen: kill -9 {name} (the leader: {is_leader})");
                p.kill(victim);
                Fault::Killed(victim)
            }
            3 => {
                eprintln!("jepsen: SIGSTOP {name} (the leader: {is_leader})");
                p.signal(victim, libc::SIGSTOP);
                Fault::Paused(victim)
            }
            4 => {
                eprintln!("jepsen: lose messages (close random peer connections every 20-80 ms)");
                let (proxies, loss_seed) = (proxies.clone(), rng.gen());
                Fault::Network(Some(tokio::spawn(async move {
                    let mut rng = ChaCha8Rng::seed_from_u64(loss_seed);
                    loop {
                        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..80))).await;
                        let i = rng.gen_range(0..N);
                        proxies.reset(i, (i + rng.gen_range(1..N)) % N);
                    }
                })))
            }
            _ => {
                eprintln!("jepsen: no fault");
                Fault::None
            }
        };
    }
    undo(&mut p, fault);
    wait_leader(&p).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in clients {
        t.await.unwrap();
    }
    let l = wait_leader(&p).await;
    final_reads(&p.clients[l], start, &history).await;

    let winners = p.election_winners();
    let history = history.lock().unwrap().clone();
    // Kept after a failure (Procs' drop).
    let logs = p.data.path().to_path_buf();
    for (term, names) in &winners {
        assert_eq!(names.len(), 1, "term {term} had leaders {names:?} (node logs in {})", logs.display());
    }
    verify(&history, seed, start, &logs.display().to_string());
}

/// A node's status, if it answers within 300 ms.
async fn status(p: &Procs, i: usize) -> Option<pb::StatusResponse> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", p.clients[i])).unwrap().connect_lazy();
    let mut req = tonic::Request::new(pb::StatusRequest {});
    req.set_timeout(Duration::from_millis(300));
    Some(KeyValueClient::new(ch).status(req).await.ok()?.into_inner())
}

/// The nemesis cuts what it says it cuts: each node dials the others through its own
/// proxies (`serve --peer-dial`), so isolating the leader leaves it alone. (Before,
/// nodes dialed the addresses in the replicated membership, one node's view for all,
/// and a partition cut other links than the ones it named.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolating_the_leader_through_the_proxies_cuts_it_off_both_ways() {
    let mut p = Procs::new(N, &[]);
    let taken: Vec<String> = p.clients.iter().chain(&p.peers).cloned().collect();
    let proxies = Proxies::start(&p.peers, &taken).await;
    p.views = proxies.views.clone();
    let p = Procs::spawn_all(p);
    let old = wait_leader(&p).await;
    proxies.partition(&[old]);
    // The others elect one of themselves; the old leader, hearing from no majority,
    // steps down (CheckQuorum) and, cut off, learns of no new leader.
    let deadline = Instant::now() + common::procs::WAIT;
    loop {
        let mut others = Vec::new();
        for i in (0..N).filter(|&i| i != old) {
            others.push(status(&p, i).await.map(|s| s.leader));
        }
        let alone = status(&p, old).await;
        let agreed = others.iter().all(|l| l.as_ref().is_some_and(|l| !l.is_empty() && *l != p.names[old]))
            && others.windows(2).all(|w| w[0] == w[1]);
        let stepped_down = alone.as_ref().is_some_and(|s| s.role != pb::Role::Leader as i32 && s.leader.is_empty());
        if agreed && stepped_down {
            break;
        }
        assert!(Instant::now() < deadline, "isolated {}: the others say {others:?}, it says {alone:?}", p.names[old]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxies.heal();
    let deadline = Instant::now() + common::procs::WAIT;
    while status(&p, old).await.is_none_or(|s| s.leader.is_empty()) {
        assert!(Instant::now() < deadline, "{} did not rejoin after the heal", p.names[old]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
