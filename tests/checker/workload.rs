//! The Jepsen-style workload shared by the in-process and the real-process runs:
//! clients, final reads, and the verification of the history.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkv::proto as pb;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tonic::Code;

use super::{Event, Op};
use crate::common::with_timeout;

/// The run's seed (`RAFTKV_JEPSEN_SEED`, else random) and length in seconds
/// (`RAFTKV_JEPSEN_SECS`, default 6), printed so that a run can be replayed.
pub fn seed_and_secs(what: &str) -> (u64, u64) {
    let seed: u64 = std::env::var("RAFTKV_JEPSEN_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let secs: u64 = std::env::var("RAFTKV_JEPSEN_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    eprintln!("jepsen{what}: seed {seed}, {secs} s (RAFTKV_JEPSEN_SEED={seed} replays the nemesis schedule)");
    (seed, secs)
}

pub const KEYS: usize = 4;
pub const CLIENTS: usize = 6;

/// A write's answer: a node's own UNAVAILABLE or a refused connection says it was not
/// applied; any other failure leaves its outcome unknown.
fn not_applied(s: &tonic::Status) -> bool {
    raftkv::client::never_applied(s) || matches!(s.code(), Code::InvalidArgument | Code::ResourceExhausted)
}

/// Odd-numbered clients write through a client session (`raftkv::client::Session`),
/// which retries writes of unknown outcome on any node: a write applied twice would
/// show in the history as a duplicated write, which the checker rejects.
async fn session_of(c: &[String], id: usize) -> Option<raftkv::client::Session> {
    if id.is_multiple_of(2) {
        return None;
    }
    let endpoints: Vec<_> = c
        .iter()
        .map(|addr| {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_timeout(Duration::from_millis(200))
                .connect_lazy();
            (addr.clone(), pb::key_value_client::KeyValueClient::new(ch))
        })
        .collect();
    let options =
        raftkv::client::Options { timeout: Duration::from_millis(1500), budget: Duration::from_secs(6), ttl: None };
    // Opening may meet an election: a few tries, then this client writes without one.
    for _ in 0..10 {
        if let Ok(s) = raftkv::client::Session::open(endpoints.clone(), options.clone()).await {
            return Some(s);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    None
}

pub async fn client_loop(
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
    let mut session = session_of(&c, id).await;
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
            let completed = if let Some(s) = session.as_mut() {
                use raftkv::client::ClientError;
                let r = match &value {
                    Some(v) => s.store(&key, v).await.map(|_| ()),
                    None => s.delete(&key).await.map(|_| ()),
                };
                match r {
                    Ok(()) => Some(now(start)),
                    Err(ClientError::OutcomeUnknown(_)) => None,
                    // Refused or unavailable before anything could be applied.
                    Err(_) => continue,
                }
            } else {
                let r = match &value {
                    Some(v) => kv
                        .store(with_timeout(pb::StoreRequest { key: key.clone(), value: v.clone() }, t))
                        .await
                        .map(|_| ()),
                    None => kv.delete(with_timeout(pb::DeleteRequest { key: key.clone() }, t)).await.map(|_| ()),
                };
                match r {
                    Ok(()) => Some(now(start)),
                    Err(s) if not_applied(&s) => continue,
                    Err(_) => None,
                }
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

/// Reads every key once more, after the clients are done, through `addr`.
pub async fn final_reads(addr: &str, start: Instant, history: &Mutex<Vec<Event>>) {
    let mut kv = pb::key_value_client::KeyValueClient::connect(format!("http://{addr}")).await.expect("connects");
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
}

/// Checks the history for linearizability, then that the checker catches each of four
/// bad histories injected into it. `logs` says where the nodes' logs are.
pub fn verify(history: &[Event], seed: u64, start: Instant, logs: &str) {
    let count = |f: &dyn Fn(&Event) -> bool| history.iter().filter(|e| f(e)).count();
    let (writes, unknown) = (count(&|e| matches!(e.op, Op::Write(_))), count(&|e| e.completed.is_none()));
    let reads = count(&|e| matches!(e.op, Op::Read(_)));
    eprintln!("jepsen: {} operations: {writes} writes ({unknown} of unknown outcome), {reads} reads", history.len());
    assert!(writes > 50 && reads > 50, "too little happened to mean anything");
    let checking = Instant::now();
    if let Err(v) = super::check(history) {
        panic!("not linearizable (seed {seed}; node logs {logs}):\n{v}");
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
        let mut h = history.to_vec();
        h.extend(extra);
        let checking = Instant::now();
        assert!(super::check(&h).is_err(), "the checker missed {what}");
        eprintln!("jepsen: injected {what}: caught in {:.1} s", checking.elapsed().as_secs_f64());
    }
}
