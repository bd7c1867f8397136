//! The project's own Jepsen-style test: concurrent clients doing Store, Delete and
//! linearizable Get on a few keys with unique values, through every node, while a
//! nemesis partitions the cluster, isolates the leader and stops and restarts nodes;
//! then every key's history is checked for linearizability (tests/checker), and the
//! checker is shown to catch bad histories injected into the real one.
//!
//! `RAFTKV_JEPSEN_SECS` (default 6: CI's short schedule) sets how long the nemesis
//! runs; `RAFTKV_JEPSEN_SEED` replays a schedule (the seed is printed).
mod checker;
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use checker::{Event, Op};
use common::{with_timeout, TestCluster};
use raftkv::proto as pb;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tonic::Code;

const KEYS: usize = 4;
const CLIENTS: usize = 6;

/// A write's answer: a node's own UNAVAILABLE or a refused connection says it was not
/// applied; any other failure leaves its outcome unknown.
fn not_applied(s: &tonic::Status) -> bool {
    (s.code() == Code::Unavailable && s.metadata().contains_key(raftkv::error::NOT_APPLIED_METADATA))
        || raftkv::error::is_connect_failure(s)
        || matches!(s.code(), Code::InvalidArgument | Code::ResourceExhausted)
}

async fn client_loop(
    c: Arc<Vec<String>>,
    id: usize,
    seed: u64,
    start: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
    history: Arc<Mutex<Vec<Event>>>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ((id as u64 + 1) * 0x9e37_79b9));
    let now = |s: Instant| s.elapsed().as_nanos() as u64;
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let addr = &c[rng.gen_range(0..c.len())];
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_millis(200))
            .connect_lazy();
        let mut kv = pb::key_value_client::KeyValueClient::new(ch);
        let key = format!("k{}", rng.gen_range(0..KEYS));
        let t = Duration::from_millis(1500);
        let roll = rng.gen_range(0..10);
        let invoked = now(start);
        let event = if roll < 6 {
            // One write in twelve is a delete.
            let value = (roll < 5 || rng.gen_ratio(1, 2)).then(|| format!("c{id}-{n}"));
            let r = match &value {
                Some(v) => {
                    kv.store(with_timeout(pb::StoreRequest { key: key.clone(), value: v.clone() }, t)).await.map(|_| ())
                }
                None => kv.delete(with_timeout(pb::DeleteRequest { key: key.clone() }, t)).await.map(|_| ()),
            };
            let completed = match r {
                Ok(()) => Some(now(start)),
                Err(s) if not_applied(&s) => continue,
                Err(_) => None,
            };
            Event { client: id, key, op: Op::Write(value), invoked, completed }
        } else {
            let get = pb::GetRequest { key: key.clone(), consistency: 0, revision: 0 };
            match kv.get(with_timeout(get, t)).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let op = Op::Read(r.found.then_some(r.value));
                    Event { client: id, key, op, invoked, completed: Some(now(start)) }
                }
                Err(_) => continue,
            }
        };
        history.lock().unwrap().push(event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_partitions_and_restarts_are_linearizable() {
    let seed: u64 = std::env::var("RAFTKV_JEPSEN_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let secs: u64 = std::env::var("RAFTKV_JEPSEN_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    eprintln!("jepsen: seed {seed}, {secs} s (RAFTKV_JEPSEN_SEED={seed} replays the nemesis schedule)");
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
    // Final reads of every key, after the clients are done.
    let leader = c.wait_leader().await;
    let mut kv = c.client(leader).await;
    for k in 0..KEYS {
        let key = format!("k{k}");
        let invoked = start.elapsed().as_nanos() as u64;
        let get = pb::GetRequest { key: key.clone(), consistency: 0, revision: 0 };
        let r = kv.get(with_timeout(get, Duration::from_secs(10))).await.expect("a final read").into_inner();
        let completed = Some(start.elapsed().as_nanos() as u64);
        history.lock().unwrap().push(Event {
            client: 99,
            key,
            op: Op::Read(r.found.then_some(r.value)),
            invoked,
            completed,
        });
    }
    c.assert_one_leader_per_term();
    c.shutdown().await;

    let history = history.lock().unwrap().clone();
    let count = |f: &dyn Fn(&Event) -> bool| history.iter().filter(|e| f(e)).count();
    let (writes, unknown) = (count(&|e| matches!(e.op, Op::Write(_))), count(&|e| e.completed.is_none()));
    let reads = count(&|e| matches!(e.op, Op::Read(_)));
    eprintln!("jepsen: {} operations: {writes} writes ({unknown} of unknown outcome), {reads} reads", history.len());
    assert!(writes > 50 && reads > 50, "too little happened to mean anything");
    let checking = Instant::now();
    if let Err(v) = checker::check(&history) {
        panic!("not linearizable (seed {seed}):\n{v}");
    }
    eprintln!("jepsen: linearizable (checked in {:.1} s)", checking.elapsed().as_secs_f64());

    // The checker catches each bad history injected into this real one. (Proving a
    // history bad means searching all of it: done for CI's short runs, skipped for
    // long on-demand ones, where it would take hours.)
    if history.len() > 20_000 {
        eprintln!("jepsen: injections skipped: {} operations are too many for an exhaustive search", history.len());
        return;
    }
    let end = start.elapsed().as_nanos() as u64 + 1_000_000;
    let acked: Vec<&Event> = history.iter().filter(|e| e.key == "k0" && e.completed.is_some()).collect();
    let finally = match &history.iter().rev().find(|e| e.key == "k0").unwrap().op {
        Op::Read(v) => v.clone(),
        Op::Write(_) => unreachable!("the last k0 event is the final read"),
    };
    let old = acked
        .iter()
        .filter_map(|e| match &e.op {
            Op::Write(Some(v)) if Some(v) != finally.as_ref() => Some(v.clone()),
            _ => None,
        })
        .next()
        .expect("an acknowledged, overwritten write of k0");
    let ev = |op, at: u64| Event { client: 98, key: "k0".into(), op, invoked: end + at, completed: Some(end + at + 1) };
    let bad: [(&str, Vec<Event>); 4] = [
        ("a stale read", vec![ev(Op::Read(Some(old.clone())), 0)]),
        // (on a key of its own: an unknown write in the run could explain any value)
        ("a lost write", {
            let mut lost = vec![ev(Op::Write(Some("fresh".into())), 0), ev(Op::Read(None), 10)];
            lost.iter_mut().for_each(|e| e.key = "k-lost".into());
            lost
        }),
        ("a read of a value never written", vec![ev(Op::Read(Some("never-written".into())), 0)]),
        (
            "a duplicated write",
            vec![
                ev(Op::Write(Some("fresh".into())), 0),
                ev(Op::Read(Some("fresh".into())), 10),
                ev(Op::Read(Some(old)), 20),
            ],
        ),
    ];
    for (what, extra) in bad {
        let mut h = history.clone();
        h.extend(extra);
        let checking = Instant::now();
        assert!(checker::check(&h).is_err(), "the checker missed {what}");
        eprintln!("jepsen: injected {what}: caught in {:.1} s", checking.elapsed().as_secs_f64());
    }
}
