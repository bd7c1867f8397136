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

/// Every `raftkv_` series the Grafana dashboard's queries name.
fn dashboard_series() -> std::collections::BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/grafana-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for (at, _) in expr.match_indices("raftkv_") {
                let name: String = expr[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                names.insert(name);
            }
        }
    }
    names
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
    // The Grafana dashboard plots only series a member serves.
    let plotted = dashboard_series();
    assert!(plotted.len() >= 10, "the dashboard plots only {plotted:?}");
    for name in plotted {
        let served = text.lines().any(|l| l.strip_prefix(&name).is_some_and(|r| r.starts_with([' ', '{'])));
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

    // The leader is lost: the others see a leader change.
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let changes = series(&c, others[0], "raftkv_server_leader_changes_seen_total").await;
    c.stop(leader).await;
    c.wait_leader_among(&others).await;
    wait_series(&c, others[0], "raftkv_server_leader_changes_seen_total", |v| v > changes).await;

    // A member cut off from the other: no leader, /health says so.
    c.partition(&[others[1]]);
    wait_series(&c, others[1], "raftkv_server_has_leader", |v| v == 0.0).await;
    let (code, body) = get(&c.metrics_addrs[others[1]], "/health").await;
    assert_eq!((code, body.as_str()), (503, r#"{"health":"false","reason":"RAFT NO LEADER"}"#));
    assert_eq!(get(&c.metrics_addrs[others[1]], "/readyz").await.0, 503);
    assert_eq!(get(&c.metrics_addrs[others[1]], "/nowhere").await.0, 404);
    c.shutdown().await;
}
