//! In-process test clusters over real tonic on 127.0.0.1, with fault injection on
//! the peer channels and a monitor that records every leader of every term.
#![allow(dead_code)]
pub mod procs;
pub mod proxy;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv::config::{Member, NodeConfig};
use raftkv::proto::{self as pb, key_value_client::KeyValueClient};
use raftkv::raft::Role;
use raftkv::server::{Node, NodeHandle};
use raftkv::transport::Faults;
use tokio::net::TcpListener;
use tonic::transport::Channel;
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// Generous: this is a noisy 2-core machine; tests assert outcomes, not speed.
pub const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy)]
pub struct Opts {
    pub election_timeout_ms: u64,
    pub heartbeat_ms: u64,
    /// Start every node with a controller bridge on 127.0.0.1.
    pub bridge: bool,
    pub snapshot_entries: u64,
    pub quota_backend_bytes: u64,
    pub auto_compaction: Option<raftkv::config::AutoCompaction>,
    /// Mutual TLS on both ports, from a throwaway CA (`pki/` in the data directory):
    /// node `nI` has a certificate for `nI` and 127.0.0.1; clients need one.
    pub tls: bool,
    /// With `tls`: the client port asks for certificates but does not require them.
    pub tls_clients_optional: bool,
    /// Give every node a plain-text health port (`health_addrs`).
    pub health: bool,
    /// `--max-client-sessions`.
    pub max_sessions: u64,
    /// `--experimental-watch-progress-notify-interval`.
    pub watch_progress_interval: Duration,
    /// Serve `/metrics` and the HTTP health endpoints (`metrics_addrs`).
    pub metrics: bool,
    /// Members serve `Raft.AppendStream`; without it, they refuse it as a version
    /// before the stream does.
    pub appends_stream: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            election_timeout_ms: 150,
            heartbeat_ms: 50,
            bridge: false,
            snapshot_entries: 10_000,
            quota_backend_bytes: raftkv::config::DEFAULT_QUOTA_BACKEND_BYTES,
            auto_compaction: None,
            tls: false,
            tls_clients_optional: false,
            health: false,
            max_sessions: raftkv::config::DEFAULT_MAX_SESSIONS,
            watch_progress_interval: raftkv::config::DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL,
            metrics: false,
            appends_stream: true,
        }
    }
}

pub struct TestCluster {
    pub names: Vec<String>,
    pub nodes: Vec<Option<Node>>,
    pub client_addrs: Vec<String>,
    pub bridge_addrs: Vec<std::net::SocketAddr>,
    pub faults: Faults,
    /// term -> leaders seen in that term (more than one is a safety violation).
    leaders: Arc<Mutex<BTreeMap<u64, Vec<String>>>>,
    /// Every node's data directory, removed when the cluster is dropped.
    _data: tempfile::TempDir,
    cfgs: Vec<NodeConfig>,
    pub peer_addrs: Vec<String>,
    /// With `Opts::tls`: the CA that signed every node's and the client's certificate.
    pub pki: Option<raftkv::tls::dev::DevPki>,
    /// With `Opts::health`: each node's plain-text health address.
    pub health_addrs: Vec<String>,
    /// With `Opts::metrics`: each node's metrics address (HTTP).
    pub metrics_addrs: Vec<String>,
}

impl TestCluster {
    pub async fn start(n: usize) -> TestCluster {
        Self::start_with(n, Opts::default()).await
    }

    pub async fn start_with(n: usize, opts: Opts) -> TestCluster {
        let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let mut client_ls = Vec::new();
        let mut peer_ls = Vec::new();
        for _ in 0..n {
            client_ls.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
            peer_ls.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let members: Vec<Member> = names
            .iter()
            .zip(&peer_ls)
            .map(|(name, l)| Member { name: name.clone(), peer_addr: l.local_addr().unwrap().to_string() })
            .collect();
        let faults = Faults::default();
        if !opts.appends_stream {
            for name in &names {
                faults.refuse_appends_stream(name);
            }
        }
        let data = tempfile::tempdir().expect("a temporary directory");
        let leaders = Arc::new(Mutex::new(BTreeMap::new()));
        let mut nodes = Vec::new();
        let mut client_addrs = Vec::new();
        let mut bridge_addrs = Vec::new();
        let mut cfgs = Vec::new();
        let mut peer_addrs = Vec::new();
        let mut health_addrs = Vec::new();
        let mut metrics_addrs = Vec::new();
        let pki = opts.tls.then(|| {
            let pki = raftkv::tls::dev::DevPki::create(&data.path().join("pki"), "test CA").unwrap();
            pki.issue("client", &[]).unwrap();
            pki
        });
        for ((name, cl), pl) in names.iter().zip(client_ls).zip(peer_ls) {
            let tls = pki.as_ref().map(|pki| {
                let (cert, key) = pki.issue(name, &["127.0.0.1"]).unwrap();
                raftkv::tls::TlsFiles { cert, key, trusted_ca: Some(pki.ca()), client_cert_auth: true }
            });
            let client_tls =
                tls.clone().map(|f| raftkv::tls::TlsFiles { client_cert_auth: !opts.tls_clients_optional, ..f });
            let cfg = NodeConfig {
                election_timeout_ms: opts.election_timeout_ms,
                heartbeat_ms: opts.heartbeat_ms,
                snapshot_entries: opts.snapshot_entries,
                quota_backend_bytes: opts.quota_backend_bytes,
                auto_compaction: opts.auto_compaction,
                engine_cache_bytes: 8 << 20,
                wal_segment_bytes: 16 << 10,
                // Nodes start one after another here: the first ones would wait for
                // the others' answers the whole timeout (tests that need the answers
                // set a longer one).
                bootstrap_timeout: Duration::from_millis(300),
                keep_entries: 10,
                client_tls,
                peer_tls: tls,
                max_sessions: opts.max_sessions,
                watch_progress_interval: opts.watch_progress_interval,
                health_addr: opts.health.then(|| {
                    let port = procs::free_port();
                    format!("127.0.0.1:{port}")
                }),
                metrics_addr: opts.metrics.then(|| {
                    let port = procs::free_port();
                    format!("127.0.0.1:{port}")
                }),
                ..NodeConfig::new(name, members.clone(), data.path().join(name))
            };
            client_addrs.push(cl.local_addr().unwrap().to_string());
            let bridge = if opts.bridge {
                let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                bridge_addrs.push(b.local_addr().unwrap());
                Some(b)
            } else {
                None
            };
            peer_addrs.push(pl.local_addr().unwrap().to_string());
            health_addrs.extend(cfg.health_addr.clone());
            metrics_addrs.extend(cfg.metrics_addr.clone());
            cfgs.push(cfg.clone());
            let node = Node::start(cfg, cl, pl, bridge, Some(faults.clone())).await.expect("node starts");
            monitor(node.handle().clone(), leaders.clone());
            nodes.push(Some(node));
        }
        TestCluster {
            names,
            nodes,
            client_addrs,
            bridge_addrs,
            faults,
            leaders,
            _data: data,
            cfgs,
            peer_addrs,
            pki,
            health_addrs,
            metrics_addrs,
        }
    }

    /// Waits until every member has recorded that it started (each does so, through
    /// the log, once it knows a leader): tests that count log entries start after it.
    pub async fn wait_started(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let all_started = |i: usize| self.handle(i).membership().members.values().all(|m| m.started);
        while !self.live().into_iter().all(all_started) {
            assert!(tokio::time::Instant::now() < deadline, "members did not record their start within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn handle(&self, i: usize) -> &NodeHandle {
        self.nodes[i].as_ref().expect("node is running").handle()
    }

    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_some()).collect()
    }

    pub async fn client(&self, i: usize) -> KeyValueClient<Channel> {
        match &self.pki {
            Some(pki) => KeyValueClient::new(self.tls_channel(&self.client_addrs[i], pki, "client")),
            None => KeyValueClient::connect(format!("http://{}", self.client_addrs[i])).await.expect("client connects"),
        }
    }

    /// A channel to `addr` over TLS, verifying the server with this cluster's CA and
    /// presenting the certificate `pki` issued as `name`.
    pub fn tls_channel(&self, addr: &str, pki: &raftkv::tls::dev::DevPki, name: &str) -> Channel {
        let ca = self.pki.as_ref().expect("a TLS cluster").ca();
        let (cert, key) = (pki.dir.join(format!("{name}.pem")), pki.dir.join(format!("{name}-key.pem")));
        let cfg = raftkv::tls::client_config(&ca, Some((&cert, &key))).unwrap();
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
        raftkv::tls::channel(ep, addr, cfg).unwrap()
    }

    /// Waits until one of `among` leads and a majority of the cluster agrees on it in
    /// its term; returns its index.
    /// Waits until node `i` reports `service` (as a readiness probe asks it) as `want`.
    pub async fn wait_health(&self, i: usize, service: &str, want: ServingStatus) {
        self.wait_health_at(&self.client_addrs[i], service, want).await
    }

    /// Waits until the plain-text health service at `addr` reports `service` as `want`.
    pub async fn wait_health_at(&self, addr: &str, service: &str, want: ServingStatus) {
        let i = addr;
        let ch = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut h = HealthClient::new(ch);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let req = HealthCheckRequest { service: service.into() };
            let got = h.check(req).await.expect("health answers").into_inner().status;
            if got == want as i32 {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "node {i} {service:?} health is {got}, not {want:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_leader_among(&self, among: &[usize]) -> usize {
        let majority = self.nodes.len() / 2 + 1;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            for &i in among {
                let st = self.handle(i).status();
                if st.role != Role::Leader {
                    continue;
                }
                let agree = among
                    .iter()
                    .filter(|&&j| {
                        let s = self.handle(j).status();
                        s.term == st.term && s.leader == Some(self.handle(i).id())
                    })
                    .count();
                if agree >= majority {
                    return i;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader among {among:?} within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_leader(&self) -> usize {
        let live = self.live();
        self.wait_leader_among(&live).await
    }

    /// Waits until every node in `among` has applied at least `index`.
    pub async fn wait_applied(&self, among: &[usize], index: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !among.iter().all(|&i| self.handle(i).status().applied >= index) {
            let st: Vec<_> = among.iter().map(|&i| self.handle(i).status().applied).collect();
            assert!(tokio::time::Instant::now() < deadline, "not applied {index} within {WAIT:?}: {st:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn retrieve(&self, i: usize) -> pb::RetrieveResponse {
        self.client(i).await.retrieve(pb::RetrieveRequest::default()).await.expect("retrieve").into_inner()
    }

    pub async fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.shutdown().await;
        }
    }

    /// Stops node `i` as SIGTERM does: a leader hands over first.
    pub async fn stop_gracefully(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.graceful_shutdown(Duration::from_secs(5)).await;
        }
    }

    pub fn data_dir(&self, i: usize) -> &std::path::Path {
        &self.cfgs[i].data_dir
    }

    /// Starts a stopped node again from its data directory, on its old addresses.
    pub async fn restart(&mut self, i: usize) {
        self.try_start(i).await.expect("restarts");
    }

    /// Starts a stopped (or new) node on its addresses; its start-up error, if any.
    pub async fn try_start(&mut self, i: usize) -> Result<(), raftkv::server::StartError> {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let cl = TcpListener::bind(&self.client_addrs[i]).await.expect("client address free again");
        let pl = TcpListener::bind(&self.peer_addrs[i]).await.expect("peer address free again");
        let node = Node::start(self.cfgs[i].clone(), cl, pl, None, Some(self.faults.clone())).await?;
        monitor(node.handle().clone(), self.leaders.clone());
        self.nodes[i] = Some(node);
        Ok(())
    }

    /// Addresses and a configuration for a new node `name` that joins the running
    /// cluster (`--initial-cluster-state existing`, the others in `--initial-cluster`),
    /// not started: add it as a member first, then `try_start` it. Returns its index and
    /// peer URL.
    pub async fn new_member(&mut self, name: &str) -> (usize, String) {
        let client = format!("127.0.0.1:{}", procs::free_port());
        let peer = format!("127.0.0.1:{}", procs::free_port());
        let mut members = self.cfgs[0].members.clone();
        members.push(Member { name: name.into(), peer_addr: peer.clone() });
        let cfg = NodeConfig {
            name: name.into(),
            members,
            data_dir: self._data.path().join(name),
            initial_cluster_state: raftkv::config::ClusterState::Existing,
            ..self.cfgs[0].clone()
        };
        self.names.push(name.into());
        self.cfgs.push(cfg);
        self.client_addrs.push(client);
        self.peer_addrs.push(peer.clone());
        self.nodes.push(None);
        (self.nodes.len() - 1, format!("http://{peer}"))
    }

    /// Node `i` starts next time with `--initial-cluster-state state`.
    pub fn set_cluster_state(&mut self, i: usize, state: raftkv::config::ClusterState) {
        self.cfgs[i].initial_cluster_state = state;
    }

    /// Node `i` starts next time with `--join-as-learner` (or without).
    pub fn set_join_as_learner(&mut self, i: usize, on: bool) {
        self.cfgs[i].join_as_learner = on;
    }

    /// Node `i` waits this long for the others' answers when its directory is empty.
    pub fn set_bootstrap_timeout(&mut self, i: usize, timeout: Duration) {
        self.cfgs[i].bootstrap_timeout = timeout;
    }

    pub fn partition(&self, group: &[usize]) {
        let g: Vec<&str> = group.iter().map(|&i| self.names[i].as_str()).collect();
        self.faults.partition(&g, &self.names);
    }

    /// Election safety over the whole test: never two leaders in one term.
    pub fn assert_one_leader_per_term(&self) {
        let leaders = self.leaders.lock().unwrap();
        for (term, names) in leaders.iter() {
            assert_eq!(names.len(), 1, "term {term} had leaders {names:?}");
        }
        assert!(!leaders.is_empty(), "no leader was ever seen");
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

fn monitor(node: NodeHandle, leaders: Arc<Mutex<BTreeMap<u64, Vec<String>>>>) {
    let mut w = node.status_watch();
    let name = node.name().to_string();
    tokio::spawn(async move {
        loop {
            {
                let st = w.borrow_and_update().clone();
                if st.role == Role::Leader {
                    let mut l = leaders.lock().unwrap();
                    let seen = l.entry(st.term).or_default();
                    if !seen.contains(&name) {
                        seen.push(name.clone());
                    }
                }
            }
            if w.changed().await.is_err() {
                break;
            }
        }
    });
}

pub async fn store(
    c: &mut KeyValueClient<Channel>,
    key: &str,
    value: &str,
) -> Result<pb::StoreResponse, tonic::Status> {
    c.store(pb::StoreRequest { key: key.into(), value: value.into() }).await.map(|r| r.into_inner())
}

/// Waits until every running node's configuration satisfies `ok`.
pub async fn wait_membership(c: &TestCluster, what: &str, ok: impl Fn(&raftkv::raft::Membership) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !c.live().iter().all(|&i| ok(&c.handle(i).membership())) {
        assert!(tokio::time::Instant::now() < deadline, "not every node saw {what} within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Acknowledged (key, index) pairs and the errors seen.
pub type Outcomes = (Vec<(String, u64)>, Vec<tonic::Status>);

/// Writers storing unique keys through the given nodes until told to stop.
pub struct Writers {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Outcomes>>,
}

impl Writers {
    pub async fn start(c: &TestCluster, via: &[usize]) -> Writers {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (w, &i) in via.iter().enumerate() {
            let mut client = c.client(i).await;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let (mut acked, mut errors) = (Vec::new(), Vec::new());
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let key = format!("w{w}-{n}");
                    match store(&mut client, &key, "v").await {
                        Ok(r) => acked.push((key, r.index)),
                        Err(s) => errors.push(s),
                    }
                }
                (acked, errors)
            }));
        }
        Writers { stop, tasks }
    }

    /// Stops the writers: every acknowledged (key, index), and every error seen.
    pub async fn finish(self) -> Outcomes {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut acked, mut errors) = (Vec::new(), Vec::new());
        for t in self.tasks {
            let (a, e) = t.await.unwrap();
            acked.extend(a);
            errors.extend(e);
        }
        (acked, errors)
    }
}

/// Every acknowledged write is in node `i`'s history at the index it was acknowledged with.
pub async fn assert_all_present(c: &TestCluster, i: usize, acked: &[(String, u64)]) {
    let last = acked.iter().map(|(_, ix)| *ix).max().unwrap_or(0);
    c.wait_applied(&[i], last).await;
    let history: BTreeMap<u64, String> = c.retrieve(i).await.entries.into_iter().map(|e| (e.index, e.key)).collect();
    for (key, index) in acked {
        assert_eq!(history.get(index), Some(key), "acknowledged write {key} at {index} missing on node {i}");
    }
}

pub fn with_timeout<T>(msg: T, d: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(d);
    r
}
