//! A real UDP socket plays the controller against in-process clusters with bridges.
mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Opts, TestCluster, WAIT};
use raftkv::proto as pb;
use raftkv::raft::Role;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::net::UdpSocket;

struct Controller {
    socket: UdpSocket,
}

impl Controller {
    async fn new() -> Controller {
        Controller { socket: UdpSocket::bind("127.0.0.1:0").await.unwrap() }
    }

    async fn send_raw(&self, to: SocketAddr, bytes: &[u8]) {
        self.socket.send_to(bytes, to).await.unwrap();
    }

    async fn send(&self, to: SocketAddr, request: &str, key: Value, value: Value) {
        let m = json!({"sender_name": "Controller", "request": request, "term": null, "key": key, "value": value});
        self.send_raw(to, &serde_json::to_vec(&m).unwrap()).await;
    }

    /// The next reply, if one comes within `wait`.
    async fn recv(&self, wait: Duration) -> Option<Value> {
        let mut buf = vec![0u8; 70_000];
        let (n, _) = tokio::time::timeout(wait, self.socket.recv_from(&mut buf)).await.ok()?.unwrap();
        assert!(n <= 65_507, "a reply must fit one datagram: {n} bytes");
        Some(serde_json::from_slice(&buf[..n]).expect("every reply is JSON"))
    }

    async fn ask(&self, to: SocketAddr, request: &str, key: Value, value: Value) -> Value {
        self.send(to, request, key, value).await;
        self.recv(Duration::from_secs(5)).await.expect("a reply")
    }

    async fn leader_info(&self, to: SocketAddr) -> Value {
        self.ask(to, "LEADER_INFO", Value::Null, Value::Null).await
    }

    async fn retrieve(&self, to: SocketAddr) -> Value {
        self.ask(to, "RETRIEVE", Value::Null, Value::Null).await
    }
}

fn assert_shape(v: &Value, sender: &str, request: &str) {
    let o = v.as_object().expect("an object");
    assert_eq!(o["sender_name"], json!(sender), "{v}");
    assert_eq!(o["request"], json!(request), "{v}");
    assert!(o["term"].is_u64(), "{v}");
    let allowed = ["sender_name", "request", "term", "key", "value", "truncated"];
    assert!(o.keys().all(|k| allowed.contains(&k.as_str())), "{v}");
    assert!(o.contains_key("key") && o.contains_key("value"), "{v}");
}

/// Polls until every node's LEADER_INFO names the same leader in the same term.
async fn agreed_leader(c: &TestCluster, ctl: &Controller, among: &[usize]) -> (usize, u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut seen = Vec::new();
        for &i in among {
            let r = ctl.leader_info(c.bridge_addrs[i]).await;
            assert_shape(&r, &c.names[i], "LEADER_INFO");
            assert_eq!(r["key"], json!("LEADER"));
            seen.push((r["value"].clone(), r["term"].as_u64().unwrap()));
        }
        if seen[0].0.is_string() && seen.iter().all(|s| *s == seen[0]) {
            let name = seen[0].0.as_str().unwrap();
            return (c.names.iter().position(|n| n == name).unwrap(), seen[0].1);
        }
        assert!(tokio::time::Instant::now() < deadline, "no agreed leader: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until the agreed leader satisfies `pred(leader, term)`.
async fn agreed_leader_where(
    c: &TestCluster,
    ctl: &Controller,
    among: &[usize],
    pred: impl Fn(usize, u64) -> bool,
) -> (usize, u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (l, t) = agreed_leader(c, ctl, among).await;
        if pred(l, t) {
            return (l, t);
        }
        assert!(tokio::time::Instant::now() < deadline, "the leader stayed {l} in term {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_retrieve(ctl: &Controller, to: SocketAddr, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = ctl.retrieve(to).await;
        assert_eq!(r["key"], json!("COMMITED_LOGS"));
        let entries = r["value"].as_array().unwrap().clone();
        if pred(&entries) {
            return entries;
        }
        assert!(tokio::time::Instant::now() < deadline, "RETRIEVE never matched: {entries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_drives_a_five_node_cluster() {
    let mut c = TestCluster::start_with(5, Opts { bridge: true, ..Opts::default() }).await;
    let ctl = Controller::new().await;
    let all: Vec<usize> = (0..5).collect();
    // Members record their start through the log: the log is quiet after that.
    c.wait_started().await;
    let (leader, term) = agreed_leader(&c, &ctl, &all).await;
    let follower = (leader + 1) % 5;

    // STORE to a follower: LEADER_INFO back, nothing appended.
    let before = c.handle(follower).status().last_index;
    let r = ctl.ask(c.bridge_addrs[follower], "STORE", json!("x"), json!("no")).await;
    assert_shape(&r, &c.names[follower], "LEADER_INFO");
    assert_eq!(r["value"], json!(c.names[leader]));
    assert_eq!(c.handle(follower).status().last_index, before);

    // A lagging node: cut off before the STORE, it shows only what it has committed.
    let lagging = (leader + 2) % 5;
    c.partition(&[lagging]);
    ctl.send(c.bridge_addrs[leader], "STORE", json!("k1"), json!("v1")).await;
    ctl.send(c.bridge_addrs[leader], "STORE", json!("k2"), json!({"n": [1, 2]})).await;
    assert!(ctl.recv(Duration::from_millis(300)).await.is_none(), "a leader does not answer STORE");
    let want = vec![
        json!({"term": term, "key": "k1", "value": "v1"}),
        json!({"term": term, "key": "k2", "value": {"n": [1, 2]}}),
    ];
    for &i in all.iter().filter(|&&i| i != lagging) {
        let got = wait_retrieve(&ctl, c.bridge_addrs[i], |e| e.len() == 2).await;
        assert_eq!(got, want, "node {i}");
    }
    let r = ctl.retrieve(c.bridge_addrs[lagging]).await;
    assert_shape(&r, &c.names[lagging], "RETRIEVE");
    assert_eq!(r["value"], json!([]), "the cut-off node has committed none of it");
    c.faults.heal();
    assert_eq!(wait_retrieve(&ctl, c.bridge_addrs[lagging], |e| e.len() == 2).await, want);

    // TIMEOUT on a follower: a new term and a leader.
    let (_, t0) = agreed_leader(&c, &ctl, &all).await;
    ctl.send(c.bridge_addrs[follower], "TIMEOUT", Value::Null, Value::Null).await;
    let (_, t1) = agreed_leader_where(&c, &ctl, &all, |_, t| t > t0).await;

    // CONVERT_FOLLOWER on the leader: it stops leading, and an election follows.
    let (l1, _) = agreed_leader(&c, &ctl, &all).await;
    ctl.send(c.bridge_addrs[l1], "CONVERT_FOLLOWER", Value::Null, Value::Null).await;
    let mut w = c.handle(l1).status_watch();
    tokio::time::timeout(WAIT, w.wait_for(|s| s.role != Role::Leader || s.term > t1)).await.unwrap().unwrap();
    let (l2, t2) = agreed_leader_where(&c, &ctl, &all, |_, t| t > t1).await;

    // SHUTDOWN of the leader: its tasks end, no error, the rest elect a new leader.
    ctl.send(c.bridge_addrs[l2], "SHUTDOWN", Value::Null, Value::Null).await;
    tokio::time::timeout(WAIT, c.handle(l2).stopped()).await.expect("SHUTDOWN stops the node");
    c.stop(l2).await;
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != l2).collect();
    // Until their election timers fire, the others still (rightly) name the old leader.
    let (l3, _) = agreed_leader_where(&c, &ctl, &rest, |l, t| l != l2 && t > t2).await;
    ctl.send(c.bridge_addrs[l2], "LEADER_INFO", Value::Null, Value::Null).await;
    assert!(ctl.recv(Duration::from_millis(500)).await.is_none(), "a shut-down node's bridge is gone");
    // The entries survive, and the cluster still takes STOREs.
    ctl.send(c.bridge_addrs[l3], "STORE", json!("k3"), json!(3)).await;
    let got = wait_retrieve(&ctl, c.bridge_addrs[rest[0]], |e| e.len() == 3).await;
    assert_eq!(got[2]["value"], json!(3));
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_waits_for_the_next_heartbeat() {
    // Long heartbeats make "between two heartbeats" a wide window.
    let opts = Opts { election_timeout_ms: 20_000, heartbeat_ms: 1500, bridge: true, ..Opts::default() };
    let c = TestCluster::start_with(3, opts).await;
    let ctl = Controller::new().await;
    ctl.send(c.bridge_addrs[0], "TIMEOUT", Value::Null, Value::Null).await;
    let leader = c.wait_leader().await;
    assert_eq!(leader, 0, "TIMEOUT made node 0 campaign first");
    c.wait_started().await;
    // Quiet: the no-op committed everywhere and followers told so.
    let noop = c.handle(0).status().last_index;
    c.wait_applied(&[0, 1, 2], noop).await;
    let sent = || c.handle(0).metrics().appends_sent.load(Ordering::SeqCst);
    // Right after a heartbeat goes out, the next one is ~1.5 s away.
    let s0 = sent();
    let deadline = tokio::time::Instant::now() + WAIT;
    while sent() == s0 {
        assert!(tokio::time::Instant::now() < deadline, "no heartbeat");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s1 = sent();
    ctl.send(c.bridge_addrs[0], "STORE", json!("k"), json!("v")).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.handle(0).status().last_index == noop {
        assert!(tokio::time::Instant::now() < deadline, "STORE not appended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sent(), s1, "the STORE itself sent no AppendEntries");
    for f in [1, 2] {
        assert_eq!(c.handle(f).status().last_index, noop, "follower {f} has the entry before the heartbeat");
    }
    // The next heartbeat carries it.
    c.wait_applied(&[0, 1, 2], noop + 1).await;
    assert!(sent() > s1);
    for f in [1, 2] {
        let got = wait_retrieve(&ctl, c.bridge_addrs[f], |e| e.len() == 1).await;
        assert_eq!(got[0]["key"], json!("k"));
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_error_and_changes_nothing() {
    let c = TestCluster::start_with(3, Opts { bridge: true, ..Opts::default() }).await;
    let ctl = Controller::new().await;
    c.wait_started().await;
    let (leader, _) = agreed_leader(&c, &ctl, &[0, 1, 2]).await;
    let to = c.bridge_addrs[leader];
    let before = c.handle(leader).status();
    let cases: Vec<(Vec<u8>, Value)> = vec![
        (vec![0xff, 0xfe, 0x00], Value::Null),
        (b"not json".to_vec(), Value::Null),
        (b"[1,2,3]".to_vec(), Value::Null),
        (br#"{"sender_name":"Controller","term":null}"#.to_vec(), Value::Null),
        (br#"{"request":"FLY"}"#.to_vec(), json!("FLY")),
        (br#"{"request":"LEADER_INFO","term":"7"}"#.to_vec(), json!("LEADER_INFO")),
        (br#"{"request":"STORE","key":{"a":1},"value":1}"#.to_vec(), json!("STORE")),
        (br#"{"request":"STORE","value":"v"}"#.to_vec(), json!("STORE")),
        (format!(r#"{{"request":"STORE","key":"k","value":"{}"}}"#, "x".repeat(40_000)).into_bytes(), Value::Null),
    ];
    for (bytes, key) in cases {
        ctl.send_raw(to, &bytes).await;
        let r = ctl.recv(Duration::from_secs(5)).await.expect("an ERROR reply");
        assert_shape(&r, &c.names[leader], "ERROR");
        assert_eq!(r["key"], key, "{r}");
        let reason = r["value"].as_str().expect("a reason");
        assert!(!reason.is_empty() && !reason.contains('\n'), "{reason:?}");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let pieces: [&[u8]; 8] = [b"{", b"}", b"\"request\"", b":", b"\"STORE\"", b",", b"null", b"\"key\""];
    for i in 0..10_000 {
        let len = rng.gen_range(0..200);
        let bytes: Vec<u8> = if i % 2 == 0 {
            (0..len).map(|_| rng.gen()).collect()
        } else {
            (0..len / 8).flat_map(|_| pieces[rng.gen_range(0..pieces.len())].to_vec()).collect()
        };
        ctl.send_raw(to, &bytes).await;
        let r = ctl.recv(Duration::from_secs(5)).await.unwrap_or_else(|| panic!("no reply to datagram {i}"));
        assert_eq!(r["request"], json!("ERROR"), "datagram {i}: {bytes:?} -> {r}");
    }
    let after = c.handle(leader).status();
    assert_eq!((after.term, after.last_index), (before.term, before.last_index), "nothing changed");
    // Still serving once the flood is over (it may have met the bridge's rate limit,
    // which answers ERROR until a second's worth of datagrams is available again).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = ctl.leader_info(to).await;
        if r["value"] == json!(c.names[leader]) {
            break;
        }
        assert_eq!(r["request"], json!("ERROR"), "{r}");
        assert!(tokio::time::Instant::now() < deadline, "not serving again: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_retrieve_is_truncated_to_the_newest_entries() {
    let c = TestCluster::start_with(3, Opts { bridge: true, ..Opts::default() }).await;
    let leader = c.wait_leader().await;
    let mut client = c.client(leader).await;
    let mut last = 0;
    for i in 0..500 {
        let r = client.store(pb::StoreRequest { key: format!("key{i:04}"), value: "v".repeat(150) }).await.unwrap();
        last = r.into_inner().index;
    }
    c.wait_applied(&[0, 1, 2], last).await;
    let ctl = Controller::new().await;
    let r = ctl.retrieve(c.bridge_addrs[(leader + 1) % 3]).await;
    assert_eq!(r["truncated"], json!(true));
    let entries = r["value"].as_array().unwrap();
    assert!(entries.len() > 100 && entries.len() < 500, "{}", entries.len());
    assert_eq!(entries.last().unwrap()["key"], json!("key0499"));
    let first = entries[0]["key"].as_str().unwrap()[3..].parse::<usize>().unwrap();
    for (j, e) in entries.iter().enumerate() {
        assert_eq!(e["key"], json!(format!("key{:04}", first + j)), "in log order, contiguous");
    }
    c.shutdown().await;
}
