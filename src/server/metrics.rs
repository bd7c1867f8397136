//! Prometheus metrics and the HTTP health endpoints (`--listen-metrics-urls`, etcd's
//! flag): `/metrics` in the Prometheus text format (OpenMetrics, encoded by the
//! `prometheus-client` crate), `/health` (etcd's JSON), `/readyz` and `/livez`.
//!
//! Names follow etcd's where the meaning is the same, with `raftkv_` for `etcd_`.
//! Event counts and durations are recorded where they happen (the driver, the
//! persister, the applier); levels (term, indexes, revisions, sizes) are read from the
//! node when scraped.
use std::convert::Infallible;
use std::sync::atomic::AtomicI64;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::NodeHandle;
use crate::raft::Role;

type Level = Gauge<i64, AtomicI64>;

/// What is recorded as it happens, and the levels set at each scrape.
#[derive(Debug)]
pub struct Telemetry {
    pub leader_changes: Counter,
    pub elections_started: Counter,
    pub fsync_seconds: Histogram,
    pub apply_seconds: Histogram,
    pub proposals_failed: Counter,
    pub snapshots_installed: Counter,
    has_leader: Level,
    is_leader: Level,
    is_learner: Level,
    term: Level,
    committed: Level,
    applied: Level,
    pending: Level,
    appends_sent: Counter,
    current_revision: Level,
    compacted_revision: Level,
    db_size: Level,
    db_in_use: Level,
    voters: Level,
    learners: Level,
    /// Client requests, by method and status code.
    pub grpc: super::grpc_metrics::GrpcTelemetry,
    pub elections_won: Counter,
    /// PreVote rounds: batches of pre-vote requests this member sent.
    pub pre_votes_started: Counter,
    /// Per peer (etcd's label names): requests that failed, AppendEntries sent,
    /// answered with a rejection, and received; the leader's view of each member's lag.
    pub peer_failures: Family<To, Counter>,
    pub peer_appends_sent: Family<To, Counter>,
    pub peer_appends_rejected: Family<To, Counter>,
    pub peer_appends_received: Family<From, Counter>,
    pub peer_lag: Family<To, Level>,
    /// Snapshots streamed to a member (etcd's names): succeeded, failed, how long.
    pub snapshot_sent: Family<To, Counter>,
    pub snapshot_send_failures: Family<To, Counter>,
    pub snapshot_send_seconds: Family<To, Histogram, fn() -> Histogram>,
    /// Snapshots received from the leader: installed, refused or broken, bytes, how long.
    pub snapshot_received: Family<From, Counter>,
    pub snapshot_receive_failures: Family<From, Counter>,
    pub snapshot_received_bytes: Family<From, Counter>,
    pub snapshot_receive_seconds: Family<From, Histogram, fn() -> Histogram>,
    /// Checkpoints: one durable commit of the state machine (etcd's snapshot save).
    pub checkpoint_seconds: Histogram,
}

/// etcd's buckets for snapshot transfers: 0.1 s to about 14 minutes, doubling.
fn snapshot_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 14))
}

impl Telemetry {
    /// Counts a snapshot received from `from` (None: refused before it named a sender).
    pub fn snapshot_receipt(&self, from: Option<String>, bytes: u64, took: std::time::Duration, installed: bool) {
        let from = From::peer(from.unwrap_or_else(|| "unknown".into()));
        self.snapshot_receive_seconds.get_or_create(&from).observe(took.as_secs_f64());
        self.snapshot_received_bytes.get_or_create(&from).inc_by(bytes);
        if installed {
            self.snapshot_received.get_or_create(&from).inc();
        } else {
            self.snapshot_receive_failures.get_or_create(&from).inc();
        }
    }
}

#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct To {
    To: String,
}

#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct From {
    From: String,
}

impl To {
    pub fn peer(name: String) -> To {
        To { To: name }
    }
}

impl From {
    pub fn peer(name: String) -> From {
        From { From: name }
    }
}

/// etcd's buckets for disk latencies: 1 ms to about 8 s, doubling.
fn disk_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 14)
}

impl Telemetry {
    pub fn new() -> Telemetry {
        Telemetry {
            leader_changes: Counter::default(),
            elections_started: Counter::default(),
            fsync_seconds: Histogram::new(disk_buckets()),
            apply_seconds: Histogram::new(disk_buckets()),
            proposals_failed: Counter::default(),
            snapshots_installed: Counter::default(),
            has_leader: Level::default(),
            is_leader: Level::default(),
            is_learner: Level::default(),
            term: Level::default(),
            committed: Level::default(),
            applied: Level::default(),
            pending: Level::default(),
            appends_sent: Counter::default(),
            current_revision: Level::default(),
            compacted_revision: Level::default(),
            db_size: Level::default(),
            db_in_use: Level::default(),
            voters: Level::default(),
            learners: Level::default(),
            grpc: Default::default(),
            elections_won: Counter::default(),
            pre_votes_started: Counter::default(),
            peer_failures: Family::default(),
            peer_appends_sent: Family::default(),
            peer_appends_rejected: Family::default(),
            peer_appends_received: Family::default(),
            peer_lag: Family::default(),
            snapshot_sent: Family::default(),
            snapshot_send_failures: Family::default(),
            snapshot_send_seconds: Family::new_with_constructor(snapshot_buckets),
            snapshot_received: Family::default(),
            snapshot_receive_failures: Family::default(),
            snapshot_received_bytes: Family::default(),
            snapshot_receive_seconds: Family::new_with_constructor(snapshot_buckets),
            checkpoint_seconds: Histogram::new(disk_buckets()),
        }
    }

    /// Every series, registered under its exposed name (the text format adds `_total`
    /// to counters, and `_bucket`/`_sum`/`_count` to histograms).
    fn registry(&self) -> Registry {
        let mut r = Registry::default();
        let s = self;
        let levels: [(&str, &str, &Level); 13] = [
            ("raftkv_server_has_leader", "Whether this member knows a leader (1) or not (0)", &s.has_leader),
            ("raftkv_server_is_leader", "Whether this member is the leader (1) or not (0)", &s.is_leader),
            ("raftkv_server_is_learner", "Whether this member is a learner (1) or not (0)", &s.is_learner),
            ("raftkv_server_term", "This member's Raft term", &s.term),
            ("raftkv_server_proposals_committed_total", "The commit index this member knows", &s.committed),
            ("raftkv_server_proposals_applied_total", "The index this member has applied", &s.applied),
            ("raftkv_server_proposals_pending", "Entries in this member's log not yet applied", &s.pending),
            ("raftkv_debugging_mvcc_current_revision", "The store's current revision", &s.current_revision),
            ("raftkv_debugging_mvcc_compact_revision", "The store's compacted revision", &s.compacted_revision),
            ("raftkv_mvcc_db_total_size_in_bytes", "The storage engine's files on disk", &s.db_size),
            (
                "raftkv_mvcc_db_total_size_in_use_in_bytes",
                "Bytes of keys and values stored, history included",
                &s.db_in_use,
            ),
            ("raftkv_server_voters", "Voting members in the configuration in force", &s.voters),
            ("raftkv_server_learners", "Learners in the configuration in force", &s.learners),
        ];
        for (name, help, level) in levels {
            r.register(name, help, level.clone());
        }
        let counters: [(&str, &str, &Counter); 7] = [
            ("raftkv_server_elections_won", "Elections this member won", &s.elections_won),
            (
                "raftkv_server_pre_votes_started",
                "PreVote rounds this member started (each asks the others whether they would vote for it)",
                &s.pre_votes_started,
            ),
            ("raftkv_server_leader_changes_seen", "Leader changes this member has seen", &s.leader_changes),
            ("raftkv_server_elections_started", "Elections this member started", &s.elections_started),
            (
                "raftkv_server_proposals_failed",
                "Proposals lost to a leadership change before they committed",
                &s.proposals_failed,
            ),
            ("raftkv_network_appends_sent", "AppendEntries requests sent to peers", &s.appends_sent),
            ("raftkv_server_snapshot_installs", "Leader snapshots installed by this member", &s.snapshots_installed),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        r.register(
            "raftkv_disk_wal_fsync_duration_seconds",
            "The latency of the Raft log's fdatasync",
            s.fsync_seconds.clone(),
        );
        r.register(
            "raftkv_disk_backend_commit_duration_seconds",
            "The latency of applying a batch of committed entries to the state machine",
            s.apply_seconds.clone(),
        );
        let per_peer: [(&str, &str, &Family<To, Counter>); 3] = [
            (
                "raftkv_network_peer_sent_failures",
                "Requests to a peer that failed or went unanswered",
                &s.peer_failures,
            ),
            ("raftkv_network_peer_appends_sent", "AppendEntries requests sent to a peer", &s.peer_appends_sent),
            (
                "raftkv_network_peer_appends_rejected",
                "AppendEntries requests a peer answered with a rejection (its log differed)",
                &s.peer_appends_rejected,
            ),
        ];
        for (name, help, family) in per_peer {
            r.register(name, help, family.clone());
        }
        r.register(
            "raftkv_network_peer_appends_received",
            "AppendEntries requests received from a peer",
            s.peer_appends_received.clone(),
        );
        r.register(
            "raftkv_server_peer_lag_entries",
            "On the leader: entries of its log a member is not yet known to hold",
            s.peer_lag.clone(),
        );
        let sends: [(&str, &str, &Family<To, Counter>); 2] = [
            ("raftkv_network_snapshot_send_success", "Snapshots a member installed from this leader", &s.snapshot_sent),
            (
                "raftkv_network_snapshot_send_failures",
                "Snapshots to a member that failed or timed out",
                &s.snapshot_send_failures,
            ),
        ];
        for (name, help, family) in sends {
            r.register(name, help, family.clone());
        }
        r.register(
            "raftkv_network_snapshot_send_total_duration_seconds",
            "From sending a snapshot to a member to its answer",
            s.snapshot_send_seconds.clone(),
        );
        let receipts: [(&str, &str, &Family<From, Counter>); 3] = [
            ("raftkv_network_snapshot_receive_success", "Snapshots received and installed", &s.snapshot_received),
            (
                "raftkv_network_snapshot_receive_failures",
                "Snapshots received and refused, broken off or not installed",
                &s.snapshot_receive_failures,
            ),
            ("raftkv_network_snapshot_receive_bytes", "Bytes of snapshot streams received", &s.snapshot_received_bytes),
        ];
        for (name, help, family) in receipts {
            r.register(name, help, family.clone());
        }
        r.register(
            "raftkv_network_snapshot_receive_total_duration_seconds",
            "From a snapshot stream's start to its installation",
            s.snapshot_receive_seconds.clone(),
        );
        r.register(
            "raftkv_server_checkpoint_duration_seconds",
            "Durable commits of the state machine (etcd's snapshot save): how long each took",
            s.checkpoint_seconds.clone(),
        );
        r.register("grpc_server_handled", "Client calls completed, by method and status code", s.grpc.handled.clone());
        r.register(
            "grpc_server_handling_seconds",
            "How long client calls took, from the request to the end of the answer (streams: their whole life)",
            s.grpc.seconds.clone(),
        );
        r
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

/// The text of `/metrics`, with the levels read now.
pub fn scrape(node: &NodeHandle) -> String {
    let t = &node.metrics().telemetry;
    let st = node.status();
    let store = node.store().status();
    let members = node.membership();
    let me = members.members.get(&node.id());
    t.has_leader.set(st.leader.is_some() as i64);
    t.is_leader.set((st.role == Role::Leader) as i64);
    t.is_learner.set(me.is_some_and(|m| m.learner) as i64);
    t.term.set(st.term as i64);
    t.committed.set(st.commit as i64);
    t.applied.set(st.applied as i64);
    t.pending.set(st.last_index.saturating_sub(st.applied) as i64);
    let sent = node.metrics().appends_sent.load(std::sync::atomic::Ordering::Relaxed);
    t.appends_sent.inner().store(sent, std::sync::atomic::Ordering::Relaxed);
    t.current_revision.set(store.revision as i64);
    t.compacted_revision.set(store.compacted as i64);
    t.db_size.set(store.file_bytes as i64);
    t.db_in_use.set(store.stored_bytes as i64);
    t.voters.set(members.voter_count() as i64);
    t.learners.set((members.members.len() - members.voter_count()) as i64);
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &t.registry());
    text
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    r
}

/// One request to the metrics listener.
fn route(node: &NodeHandle, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let has_leader = node.status().leader.is_some();
    let text = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => {
            answer(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", scrape(node))
        }
        // etcd's /health: {"health":"true"}, or 503 and why not.
        (&hyper::Method::GET, "/health") if has_leader => {
            answer(StatusCode::OK, "application/json", r#"{"health":"true","reason":""}"#.into())
        }
        (&hyper::Method::GET, "/health") => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            r#"{"health":"false","reason":"RAFT NO LEADER"}"#.into(),
        ),
        (&hyper::Method::GET, "/readyz") if has_leader => answer(StatusCode::OK, text, "ok\n".into()),
        (&hyper::Method::GET, "/readyz") => {
            answer(StatusCode::SERVICE_UNAVAILABLE, text, "[-]leader failed: no leader\n".into())
        }
        (&hyper::Method::GET, "/livez") => answer(StatusCode::OK, text, "ok\n".into()),
        (&hyper::Method::GET, _) => {
            answer(StatusCode::NOT_FOUND, text, "not found: /metrics, /health, /readyz, /livez\n".into())
        }
        _ => answer(StatusCode::METHOD_NOT_ALLOWED, text, "GET only\n".into()),
    }
}

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 32;
/// A connection that sends no request within this long is closed, and so is one
/// open longer than `CONNECTION_LIFE` (scrapers reconnect).
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const CONNECTION_LIFE: std::time::Duration = std::time::Duration::from_secs(120);

/// Serves `/metrics` and the health endpoints on `listener` until shutdown.
pub async fn serve(listener: TcpListener, node: NodeHandle, mut shutdown: watch::Receiver<bool>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: do not spin.
                tracing::warn!("metrics listener: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let r = route(&node, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(io, service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFE, conn).await {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}
