//! `/metrics` and the HTTP health endpoints of running nodes, scraped as Prometheus
//! would: the series move as the cluster does (a leader, writes made durable, a leader
//! lost and replaced, a member cut off).
mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path` from `addr`: (status code, body).
async fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("the metrics port answers");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut text)).await.expect("an answer in time").unwrap();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (code, body)
}

/// The value of the series `name` (without labels) in a scrape.
fn value(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {name} in:\n{scrape}"))
}

async fn series(c: &TestCluster, i: usize, name: &str) -> f64 {
    value(&get(&c.metrics_addrs[i], "/metrics").await.1, name)
}

/// Waits until `ok` holds for the series `name` of node `i`.
async fn wait_series(c: &TestCluster, i: usize, name: &str, ok: impl Fn(f64) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = series(c, i, name).await;
        if ok(v) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "node {i}: {name} stayed at {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the series `name{labels}` in a scrape (0 if absent).
fn labelled(scrape: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    scrape.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

/// Every `raftkv_` and `grpc_server_` series the Grafana dashboard's queries name.
fn dashboard_series() -> std::collections::BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/grafana-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let starts = expr.match_indices("raftkv_").chain(expr.match_indices("grpc_server_"));
            for (at, _) in starts {
                let name: String = expr[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                names.insert(name);
            }
        }
    }
    names
}

/// A follower's core takes the leader's appends in the order they were sent (one
/// stream per follower): under many concurrent writes no append overtakes the one
/// before it and is refused for the gap. (With one call per append, about a quarter
/// were refused, each sending the follower back to one append at a time.) A stream
/// that breaks on a stalled machine may cost a refusal or two, not more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_reach_the_followers_in_order() {
    let c = TestCluster::start_with(3, Opts { metrics: true, ..Opts::default() }).await;
    let leader = c.wait_leader().await;
    c.wait_started().await;
    let mut writers = Vec::new();
    for w in 0..32 {
        let mut kv = c.client(leader).await;
        writers.push(tokio::spawn(async move {
            for i in 0..25 {
                store(&mut kv, &format!("w{w}-{i}"), "v").await.expect("a write to the leader succeeds");
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let text = get(&c.metrics_addrs[leader], "/metrics").await.1;
    let (mut sent, mut refused) = (0.0, 0.0);
    for i in (0..3).filter(|&i| i != leader) {
        let to = format!("To=\"{}\"", c.names[i]);
        sent += labelled(&text, "raftkv_network_peer_appends_sent_total", &to);
        refused += labelled(&text, "raftkv_network_peer_appends_rejected_total", &to);
    }
    assert!(sent >= 50.0, "only {sent} appends for 800 writes:\n{text}");
    assert!(refused <= 4.0, "{refused} of {sent} appends refused:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_leadership_writes_and_failures() {
    let mut c = TestCluster::start_with(3, Opts { metrics: true, ..Opts::default() }).await;
    let leader = c.wait_leader().await;
    c.wait_started().await;
    for i in 0..3 {
        wait_series(&c, i, "raftkv_server_has_leader", |v| v == 1.0).await;
        let (code, body) = get(&c.metrics_addrs[i], "/health").await;
        assert_eq!((code, body.as_str()), (200, r#"{"health":"true","reason":""}"#));
        assert_eq!(get(&c.metrics_addrs[i], "/readyz").await.0, 200);
    }
    // Exactly one member says it leads (scrapes a moment apart may straddle an
    // election on a busy machine: asked again until they agree).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut leaders = 0.0;
        for i in 0..3 {
            leaders += series(&c, i, "raftkv_server_is_leader").await;
        }
        if leaders == 1.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{leaders} members say they lead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = get(&c.metrics_addrs[leader], "/metrics").await.1;
    // Every series the README lists.
    for name in [
        "raftkv_server_has_leader ",
        "raftkv_server_is_leader ",
        "raftkv_server_is_learner ",
        "raftkv_server_leader_changes_seen_total ",
        "raftkv_server_elections_started_total ",
        "raftkv_server_term ",
        "raftkv_server_proposals_committed_total ",
        "raftkv_server_proposals_applied_total ",
        "raftkv_server_proposals_pending ",
        "raftkv_server_proposals_failed_total ",
        "raftkv_disk_wal_fsync_duration_seconds_bucket{le=",
        "raftkv_disk_wal_fsync_duration_seconds_sum ",
        "raftkv_disk_backend_commit_duration_seconds_count ",
        "raftkv_network_appends_sent_total ",
        "raftkv_server_snapshot_installs_total ",
        "raftkv_debugging_mvcc_current_revision ",
        "raftkv_debugging_mvcc_compact_revision ",
        "raftkv_mvcc_db_total_size_in_bytes ",
        "raftkv_mvcc_db_total_size_in_use_in_bytes ",
        "raftkv_server_voters 3",
        "raftkv_server_learners 0",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    // The Grafana dashboard plots only series a member serves (declared, if no event
    // has made a sample yet: a `# TYPE` line names the family without its suffix).
    let plotted = dashboard_series();
    assert!(plotted.len() >= 10, "the dashboard plots only {plotted:?}");
    for name in plotted {
        let family =
            ["_total", "_bucket", "_sum", "_count"].iter().fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
        // (A gauge named `_total`, as etcd's proposal gauges are, keeps its suffix.)
        let served = text.lines().any(|l| {
            l.strip_prefix("# TYPE ").and_then(|r| r.split(' ').next()).is_some_and(|n| n == family || n == name)
        });
        assert!(served, "k8s/grafana-dashboard.json plots {name}, which no member serves:\n{text}");
    }

    // Writes are made durable: the fsync histogram counts them, the commit index moves.
    let fsyncs = series(&c, leader, "raftkv_disk_wal_fsync_duration_seconds_count").await;
    let committed = series(&c, leader, "raftkv_server_proposals_committed_total").await;
    let mut client = c.client(leader).await;
    for i in 0..20 {
        store(&mut client, &format!("k{i}"), "v").await.unwrap();
    }
    assert!(series(&c, leader, "raftkv_disk_wal_fsync_duration_seconds_count").await > fsyncs);
    // The commit index is published after the batch that acknowledged the writes.
    wait_series(&c, leader, "raftkv_server_proposals_committed_total", |v| v >= committed + 20.0).await;
    assert!(series(&c, leader, "raftkv_debugging_mvcc_current_revision").await >= 21.0);
    assert!(series(&c, leader, "raftkv_disk_backend_commit_duration_seconds_count").await > 0.0);
    assert!(series(&c, leader, "raftkv_network_appends_sent_total").await > 0.0);
    // This leader won an election: its own count says so.
    assert!(series(&c, leader, "raftkv_server_elections_started_total").await >= 1.0);

    // Client calls, by method and code (go-grpc-prometheus' names, as etcd serves them):
    // the 20 stores, and a refused one, counted as such.
    let empty = client.store(raftkv::proto::StoreRequest { key: String::new(), value: "v".into() }).await;
    assert_eq!(empty.unwrap_err().code(), tonic::Code::InvalidArgument);
    // A method a client made up is counted, but under no name of its own.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.client_addrs[leader]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let codec: tonic::codec::ProstCodec<raftkv::proto::StatusRequest, raftkv::proto::StatusResponse> =
        Default::default();
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/MadeUpByAClient");
    let made_up = raw.unary(tonic::Request::new(raftkv::proto::StatusRequest {}), path, codec).await;
    assert_eq!(made_up.unwrap_err().code(), tonic::Code::Unimplemented);
    let text = get(&c.metrics_addrs[leader], "/metrics").await.1;
    assert!(!text.contains("MadeUpByAClient"), "{text}");
    let unknown = r#"grpc_server_handled_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="unknown",grpc_code="Unimplemented"} 1"#;
    assert!(text.lines().any(|l| l == unknown), "{unknown} missing:\n{text}");
    let store = r#"grpc_type="unary",grpc_service="raftkv.v1.KeyValue",grpc_method="Store""#;
    let ok = format!("grpc_server_handled_total{{{store},grpc_code=\"OK\"}} ");
    let refused = format!("grpc_server_handled_total{{{store},grpc_code=\"InvalidArgument\"}} 1");
    let count = format!("grpc_server_handling_seconds_count{{{store}}} ");
    let value_of = |prefix: &str| -> f64 {
        let line =
            text.lines().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("no {prefix} in:\n{text}"));
        line.trim().parse().unwrap()
    };
    assert!(value_of(&ok) >= 20.0, "{text}");
    assert!(text.lines().any(|l| l == refused), "{refused} missing:\n{text}");
    assert!(value_of(&count) >= 21.0, "{text}");

    // Per peer (etcd's label names): the leader sent AppendEntries to each follower
    // and knows its lag; each follower received them from the leader.
    assert!(value_of("raftkv_server_elections_won_total ") >= 1.0, "{text}");
    for f in (0..3).filter(|&i| i != leader) {
        let to = format!(r#"To="{}""#, c.names[f]);
        assert!(labelled(&text, "raftkv_network_peer_appends_sent_total", &to) > 0.0, "{to}:\n{text}");
        assert!(text.contains(&format!("raftkv_server_peer_lag_entries{{{to}}} ")), "{to}:\n{text}");
        let from = format!(r#"From="{}""#, c.names[leader]);
        let theirs = get(&c.metrics_addrs[f], "/metrics").await.1;
        assert!(labelled(&theirs, "raftkv_network_peer_appends_received_total", &from) > 0.0, "{theirs}");
        assert!(!theirs.contains("raftkv_server_peer_lag_entries{"), "a follower shows lag:\n{theirs}");
    }

    // The leader is lost: the others see a leader change.
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let changes = series(&c, others[0], "raftkv_server_leader_changes_seen_total").await;
    c.stop(leader).await;
    let new_leader = c.wait_leader_among(&others).await;
    wait_series(&c, others[0], "raftkv_server_leader_changes_seen_total", |v| v > changes).await;
    // The new leader's requests to the stopped one fail, and are counted against it.
    let to_old = format!(r#"To="{}""#, c.names[leader]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = get(&c.metrics_addrs[new_leader], "/metrics").await.1;
        if labelled(&text, "raftkv_network_peer_sent_failures_total", &to_old) > 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no failure counted {to_old}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It got there through a PreVote round and an election it won.
    assert!(series(&c, new_leader, "raftkv_server_pre_votes_started_total").await >= 1.0);
    assert!(series(&c, new_leader, "raftkv_server_elections_won_total").await >= 1.0);

    // A member cut off from the other: no leader, /health says so.
    c.partition(&[others[1]]);
    wait_series(&c, others[1], "raftkv_server_has_leader", |v| v == 0.0).await;
    let (code, body) = get(&c.metrics_addrs[others[1]], "/health").await;
    assert_eq!((code, body.as_str()), (503, r#"{"health":"false","reason":"RAFT NO LEADER"}"#));
    assert_eq!(get(&c.metrics_addrs[others[1]], "/readyz").await.0, 503);
    assert_eq!(get(&c.metrics_addrs[others[1]], "/nowhere").await.0, 404);
    c.shutdown().await;
}
