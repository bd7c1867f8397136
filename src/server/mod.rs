//! A running node: the driver task, the peer and client gRPC servers, and the
//! handle through which the services reach the core.
mod applier;
mod bootstrap;
mod coalesce;
mod compactor;
mod driver;
mod forward;
mod forwarder;
mod grpc_metrics;
mod handle;
mod health;
pub mod lessor;
mod members;
pub mod metrics;
mod peers;
mod persister;
mod rounds;
pub mod scaling;

pub use forwarder::to_outcome as batch_outcome;
pub use handle::NodeHandle;
pub use peers::peer_addr;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::api::KvService;
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::mvcc::Store;
use crate::proto as pb;
use crate::proto::etcd::etcdserverpb as epb;
use crate::raft::{self, Index, Message, NodeId, RawNode, Role, Term};
use crate::storage::Storage;
use crate::transport::convert::Names;
use crate::transport::service::RaftService;
use crate::transport::{self, Faults};
use coalesce::Coalesced;

/// What the driver is asked to do.
pub enum Input {
    /// A peer message; requests carry the channel for their answer.
    Raft { msg: Message, reply: Option<oneshot::Sender<Message>> },
    /// Append a client command and replicate it now; answered once it is applied
    /// (or known lost).
    Propose { data: Bytes, reply: applier::ProposalReply },
    /// Append a client command without waking replication (it travels with the next
    /// heartbeat); answered at once with its index, or NotLeader.
    ProposeLazy { data: Bytes, reply: oneshot::Sender<Result<Index>> },
    /// A read index confirmed by a quorum (leader only).
    ReadIndex { reply: oneshot::Sender<Result<Index>> },
    /// Answered once the core knows a leader (at once if it does).
    WaitLeader { reply: oneshot::Sender<()> },
    /// A snapshot received from the leader, built into the engine file at `path`:
    /// installed if the core accepts it, then answered like a request.
    InstallSnapshot { msg: Message, built: crate::mvcc::snapshot::Built, reply: oneshot::Sender<Message> },
    /// Hand leadership to `to` (or the most up-to-date follower); answered once this
    /// node has stepped down (at once if `to` is this leader), or with why it could not.
    TransferLeader { to: Option<NodeId>, reply: oneshot::Sender<Result<()>> },
    /// A configuration change (leader only): answered with its index and the member it
    /// concerns once appended, and on `applied` once applied (or known lost).
    ConfChange {
        change: raft::ConfChange,
        reply: oneshot::Sender<Result<(Index, NodeId)>>,
        applied: applier::ProposalReply,
    },
    /// Start an election now.
    Campaign,
    /// Become a follower now, keeping the term.
    BecomeFollower,
    /// The core's state and the log's last `tail` entries still held (index, term,
    /// kind; oldest first), both as of one moment.
    StatusView { tail: usize, reply: oneshot::Sender<(NodeStatus, LogTail)> },
}

/// The log's last entries: index, term and kind, oldest first.
pub type LogTail = Vec<(Index, Term, raft::EntryKind)>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    /// Whom this node voted for in `term`.
    pub vote: Option<NodeId>,
    pub commit: Index,
    pub applied: Index,
    pub last_index: Index,
    /// The first index still in the log (entries before it are compacted).
    pub first_index: Index,
}

/// Counters a test or an operator can read.
#[derive(Debug, Default)]
pub struct Metrics {
    /// AppendEntries requests handed to the peer transport.
    pub appends_sent: AtomicU64,
    /// fdatasync calls of the log.
    pub fsyncs: AtomicU64,
    /// Entries persisted to the log.
    pub entries_persisted: AtomicU64,
    /// ReadIndex requests waiting on this node (as leader) for a quorum.
    pub pending_reads: AtomicU64,
    /// What `/metrics` shows (`--listen-metrics-urls`).
    pub telemetry: metrics::Telemetry,
}

struct Shared {
    id: NodeId,
    name: String,
    input: mpsc::Sender<Input>,
    status: watch::Receiver<NodeStatus>,
    store: Arc<Store>,
    /// The links to the other members: clients, and the queues of writes forwarded
    /// to a member while it leads, sent in batches.
    peers: Arc<peers::Peers>,
    metrics: Arc<Metrics>,
    election_timeout: Duration,
    shutdown: watch::Sender<bool>,
    /// Why the node stopped itself, if it did (a failed write or fsync).
    fatal: Arc<std::sync::Mutex<Option<String>>>,
    quota_bytes: u64,
    session_ttl: Duration,
    max_sessions: u64,
    lessor: Arc<lessor::Lessor>,
    /// Where clients reach this node (`--advertise-client-urls`, else the client
    /// address): etcd's MemberList shows every member's.
    client_urls: Vec<String>,
    /// Linearizable reads sharing ReadIndex rounds.
    reads: Arc<rounds::SharedRounds<Result<Index>>>,
}

/// The longest snapshot stream a node accepts: twice what its quota lets it hold, at
/// least 1 GiB.
fn max_snapshot_bytes(quota_backend_bytes: u64) -> u64 {
    quota_backend_bytes.saturating_mul(2).max(1 << 30)
}

/// A running node and the means to stop it.
pub struct Node {
    handle: NodeHandle,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The applier and the persister.
    threads: Vec<std::thread::JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Bootstrap(#[from] bootstrap::BootstrapError),
    #[error("{0}")]
    Other(String),
}

impl Node {
    /// Starts a node serving on the given listeners, and the controller bridge on
    /// `bridge` if given. `faults` (tests only) wraps every peer channel in the
    /// fault-injection layer.
    pub async fn start(
        cfg: NodeConfig,
        client_listener: TcpListener,
        peer_listener: TcpListener,
        bridge: Option<UdpSocket>,
        faults: Option<Faults>,
    ) -> Result<Node, StartError> {
        cfg.validate()?;
        let members = cfg.sorted_members();
        let peer_scheme = if cfg.peer_tls.is_some() { "https" } else { "http" };
        let founding = raft::Membership::founding(
            members.iter().map(|m| (m.name.clone(), format!("{peer_scheme}://{}", m.peer_addr))),
        );
        let founding_names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        // Certificates are checked before any data is touched.
        let client_tls = cfg.client_tls.as_ref().map(crate::tls::reloading_server_config).transpose()?;
        let peer_tls = cfg.peer_tls.as_ref().map(crate::tls::reloading_server_config).transpose()?;
        let peer_client_tls = match &cfg.peer_tls {
            Some(f) => {
                let ca = f.trusted_ca.as_deref().ok_or_else(|| {
                    StartError::Other("--peer-trusted-ca-file is needed with --peer-cert-file".into())
                })?;
                Some(crate::tls::reloading_client_config(ca, Some((&f.cert, &f.key)))?)
            }
            None => None,
        };
        match (&cfg.client_tls, &cfg.peer_tls) {
            (None, None) => {
                tracing::warn!("serving clients and peers in plain text (no --cert-file, no --peer-cert-file)")
            }
            (None, Some(_)) => tracing::warn!("serving clients in plain text (no --cert-file)"),
            (Some(_), None) => tracing::warn!("talking to peers in plain text (no --peer-cert-file)"),
            (Some(_), Some(_)) => {}
        }
        if cfg.peer_tls.as_ref().is_some_and(|f| !f.client_cert_auth) {
            tracing::warn!("the peer port accepts peers without a certificate (no --peer-client-cert-auth)");
        }
        // An empty data directory: the membership to start from (founding or joined),
        // after asking the others whether this member already started once.
        let fresh = crate::storage::is_fresh(&cfg.data_dir)?;
        let (start_membership, start_id) = if fresh {
            bootstrap::prepare(&cfg, &founding, peer_client_tls.clone(), faults.as_ref()).await?
        } else {
            // A directory from before ids were recorded: its founding position.
            (founding, cfg.id_of(&cfg.name).expect("validated"))
        };
        // The directory's identity first (a new one's is written last, once the state
        // machine holds its membership), then the state machine, then the log, which
        // restarts after what the state machine durably holds.
        let (store, storage, recovered, membership, id) = {
            let dir = cfg.data_dir.clone();
            let (name, cluster) = (cfg.name.clone(), founding_names);
            let (segment_bytes, cache_bytes) = (cfg.wal_segment_bytes, cfg.engine_cache_bytes);
            tokio::task::spawn_blocking(move || {
                let claim = || crate::storage::claim_dir(&dir, &name, &cluster, start_id);
                let mut id = if fresh { start_id } else { claim()? };
                let store = Store::open(&dir, cache_bytes).map_err(|e| StartError::Other(e.to_string()))?;
                // The membership as of what the store holds: the founding (or joined)
                // members until a configuration entry is applied; the log's follow.
                let engine_error = |e: crate::mvcc::MvccError| StartError::Other(e.to_string());
                store.found_membership(&start_membership).map_err(engine_error)?;
                let membership = store.membership().map_err(engine_error)?.unwrap_or(start_membership);
                if fresh {
                    id = claim()?;
                }
                let (storage, recovered) = Storage::open_log(&dir, store.durable(), segment_bytes)?;
                Ok::<_, StartError>((Arc::new(store), storage, recovered, membership, id))
            })
            .await
            .map_err(|e| StartError::Other(e.to_string()))??
        };
        let mut core_cfg = raft::Config::new(id, Vec::new());
        core_cfg.membership = Some(membership);
        core_cfg.election_ticks = cfg.ticks(cfg.election_timeout_ms);
        core_cfg.heartbeat_ticks = cfg.ticks(cfg.heartbeat_ms);
        core_cfg.keep_entries = cfg.keep_entries;
        core_cfg.seed = rand::random();
        let hs = recovered.hard_state;
        let applied = recovered.base.0;
        let status = store.status();
        tracing::info!(
            dir = %cfg.data_dir.display(),
            term = hs.term,
            commit = hs.commit,
            applied,
            revision = status.revision,
            compacted = status.compacted,
            replay = recovered.entries.len(),
            "recovered durable state"
        );
        let core = RawNode::restore(core_cfg, hs, recovered.base, recovered.entries, applied)
            .map_err(|e| StartError::Other(format!("raft config: {e}")))?;

        let (input_tx, input_rx) = mpsc::channel(8192);
        let st = core.status();
        let initial = NodeStatus {
            role: Role::Follower,
            term: st.term,
            leader: None,
            vote: st.vote,
            commit: st.commit,
            applied: 0,
            last_index: st.last_index,
            first_index: core.log().first_index(),
        };
        let initial_leader = initial.leader;
        let (status_tx, status_rx) = watch::channel(initial);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let fatal = Arc::new(std::sync::Mutex::new(None));
        let metrics = Arc::new(Metrics::default());
        let election_timeout = Duration::from_millis(cfg.election_timeout_ms);
        let rpc_timeout = (election_timeout * 2).max(Duration::from_millis(500));

        let names = Names::new(core.membership().clone(), core.known_members());
        let links = Arc::new(peers::Peers {
            me: id,
            my_name: cfg.name.clone(),
            names,
            faults: faults.clone(),
            tls: peer_client_tls.clone(),
            input: input_tx.clone(),
            rpc_timeout,
            store: store.clone(),
            shutdown: shutdown_tx.clone(),
            leader: watch::channel(initial_leader).0,
            links: Default::default(),
            dial: cfg.peer_dial.clone(),
        });
        let mut peers = BTreeMap::new();
        links.update(core.membership(), core.known_members(), &mut peers);

        let client_addr = client_listener.local_addr().map_err(|e| StartError::Other(e.to_string()))?;
        let client_scheme = if cfg.client_tls.is_some() { "https" } else { "http" };
        let client_urls = if cfg.advertise_client_urls.is_empty() {
            vec![format!("{client_scheme}://{client_addr}")]
        } else {
            cfg.advertise_client_urls.clone()
        };
        let handle = NodeHandle(Arc::new(Shared {
            id,
            name: cfg.name.clone(),
            input: input_tx,
            status: status_rx,
            store: store.clone(),
            peers: links.clone(),
            metrics: metrics.clone(),
            election_timeout,
            shutdown: shutdown_tx.clone(),
            fatal: fatal.clone(),
            quota_bytes: cfg.quota_backend_bytes,
            session_ttl: cfg.session_ttl,
            max_sessions: cfg.max_sessions,
            lessor: lessor::new(),
            client_urls,
            reads: Default::default(),
        }));
        let (applier, applier_queue) = applier::new(
            store.clone(),
            applier::Checkpoints { every_entries: cfg.snapshot_entries, every_bytes: cfg.snapshot_bytes },
            fatal.clone(),
            shutdown_tx.clone(),
            metrics.clone(),
        );
        let (persister_tx, persister_rx) = mpsc::unbounded_channel();
        let (durable_tx, durable_rx) = mpsc::unbounded_channel();
        let persister = persister::Persister {
            storage,
            jobs: persister_rx,
            driver: durable_tx,
            metrics: metrics.clone(),
            fatal: fatal.clone(),
            shutdown: shutdown_tx.clone(),
        };
        let thread = |what: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("{}-{what}", cfg.name))
                .spawn(f)
                .map_err(|e| StartError::Other(format!("starting the {what}: {e}")))
        };
        let threads = vec![
            thread("applier", Box::new(move || applier.run()))?,
            thread("persister", Box::new(move || persister.run()))?,
        ];
        let driver = driver::Driver {
            peer_series: Default::default(),
            applier: applier_queue,
            store: store.clone(),
            compacted_for: applied,
            incoming_snapshot: None,
            fatal_error: None,
            core,
            persister: persister_tx,
            durable: durable_rx,
            in_flight: Default::default(),
            fatal: fatal.clone(),
            links,
            input: input_rx,
            peers,
            status: status_tx,
            metrics: metrics.clone(),
            tick: cfg.tick(),
            shutdown: shutdown_rx.clone(),
            shutdown_tx: shutdown_tx.clone(),
            held: Vec::new(),
            proposals: BTreeMap::new(),
            reads: Default::default(),
            next_read: 0,
            parked: Vec::new(),
            leader_waiters: Vec::new(),
            transfers: Vec::new(),
        };

        let peer_addr = peer_listener.local_addr().map_err(|e| StartError::Other(e.to_string()))?;
        let (mut health_reporter, health) = tonic_health::server::health_reporter();
        let health_only = health.clone();
        health_reporter.set_not_serving::<pb::key_value_server::KeyValueServer<KvService>>().await;
        health_reporter.set_serving::<pb::raft_server::RaftServer<RaftService>>().await;
        let reflection = || {
            let v1 = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(pb::etcd::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()
                .map_err(|e| StartError::Other(e.to_string()))?;
            let v1alpha = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(pb::etcd::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1alpha()
                .map_err(|e| StartError::Other(e.to_string()))?;
            Ok::<_, StartError>((v1, v1alpha))
        };
        let incoming = |l: TcpListener| {
            TcpIncoming::from_listener(l, true, Some(Duration::from_secs(30)))
                .map_err(|e| StartError::Other(e.to_string()))
        };

        let stop = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let (r1, r1a) = reflection()?;
        let admin_needs_cert = cfg.client_tls.as_ref().is_some_and(|f| f.trusted_ca.is_some());
        let max_decoding = cfg.max_request_bytes.saturating_add(crate::config::GRPC_OVERHEAD_BYTES);
        let kv_server = pb::key_value_server::KeyValueServer::new(KvService::new(handle.clone(), admin_needs_cert))
            .max_decoding_message_size(max_decoding)
            .max_encoding_message_size(transport::MAX_MESSAGE_BYTES);
        let etcd = crate::etcd::Context::new(
            handle.clone(),
            cfg.members.clone(),
            cfg.quota_backend_bytes,
            admin_needs_cert,
            cfg.watch_progress_interval,
        );
        let etcd_kv = epb::kv_server::KvServer::new(crate::etcd::EtcdKv(etcd.clone()))
            .max_decoding_message_size(max_decoding)
            .max_encoding_message_size(transport::MAX_MESSAGE_BYTES);
        let etcd_cluster = epb::cluster_server::ClusterServer::new(crate::etcd::EtcdCluster(etcd.clone()));
        let etcd_watch = epb::watch_server::WatchServer::new(crate::etcd::EtcdWatch(etcd.clone()))
            .max_encoding_message_size(transport::MAX_MESSAGE_BYTES);
        let etcd_lease = epb::lease_server::LeaseServer::new(crate::etcd::EtcdLease(etcd.clone()));
        let etcd_maintenance = epb::maintenance_server::MaintenanceServer::new(crate::etcd::EtcdMaintenance(etcd));
        let client_router = Server::builder()
            .max_concurrent_streams(Some(cfg.max_concurrent_streams))
            .layer(grpc_metrics::GrpcMetricsLayer(metrics.clone()))
            .add_service(health.clone())
            .add_service(r1)
            .add_service(r1a)
            .add_service(kv_server)
            .add_service(etcd_kv)
            .add_service(etcd_lease)
            .add_service(etcd_cluster)
            .add_service(etcd_watch)
            .add_service(etcd_maintenance);
        // Coalesced: an answer's frames leave in one write (see `coalesce`).
        let client_server: futures::future::BoxFuture<'static, Result<(), tonic::transport::Error>> = match client_tls {
            Some(tls) => Box::pin(client_router.serve_with_incoming_shutdown(
                crate::tls::incoming(client_listener, tls).map_ok(Coalesced::new),
                stop(shutdown_rx.clone()),
            )),
            None => Box::pin(client_router.serve_with_incoming_shutdown(
                incoming(client_listener)?.map_ok(Coalesced::new),
                stop(shutdown_rx.clone()),
            )),
        };
        let (r2, r2a) = reflection()?;
        let certified_peers = cfg.peer_tls.as_ref().is_some_and(|f| f.client_cert_auth);
        let raft_server = pb::raft_server::RaftServer::new(RaftService::new(
            handle.clone(),
            max_snapshot_bytes(cfg.quota_backend_bytes),
            certified_peers,
            faults.clone().map(|f| (f, cfg.name.clone())),
        ))
        .max_decoding_message_size(transport::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(transport::MAX_MESSAGE_BYTES);
        // With fault injection (tests, `raftkv dev`), an isolated node refuses its peers.
        let isolation = transport::fault::IsolationLayer(faults.clone().map(|f| (f, cfg.name.clone())));
        // Pings find a peer gone without closing its connection (its appends stream
        // then ends), as the peer channels' own keepalive does from the other side.
        let peer_router = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .layer(isolation)
            .add_service(health)
            .add_service(r2)
            .add_service(r2a)
            .add_service(raft_server);
        let peer_server: futures::future::BoxFuture<'static, Result<(), tonic::transport::Error>> = match peer_tls {
            Some(tls) => Box::pin(
                peer_router
                    .serve_with_incoming_shutdown(crate::tls::incoming(peer_listener, tls), stop(shutdown_rx.clone())),
            ),
            None => {
                Box::pin(peer_router.serve_with_incoming_shutdown(incoming(peer_listener)?, stop(shutdown_rx.clone())))
            }
        };

        let name = cfg.name.clone();
        let driver = tokio::spawn(driver.run());
        let (driver_fatal, driver_stop) = (fatal.clone(), shutdown_tx.clone());
        let mut tasks = vec![
            // Fail-stop: a driver that dies stops the whole node (release builds abort
            // on any panic anyway), so its supervisor restarts it rather than leaving
            // servers up in front of nothing.
            tokio::spawn(async move {
                if let Err(e) = driver.await {
                    tracing::error!("the raft driver failed, stopping the node: {e}");
                    let mut fatal = driver_fatal.lock().unwrap_or_else(|p| p.into_inner());
                    fatal.get_or_insert_with(|| format!("the raft driver failed: {e}"));
                    drop(fatal);
                    let _ = driver_stop.send(true);
                }
            }),
            tokio::spawn(async move {
                if let Err(e) = client_server.await {
                    tracing::error!(node = %name, "client server failed: {e}");
                }
            }),
            tokio::spawn(async move {
                if let Err(e) = peer_server.await {
                    tracing::error!("peer server failed: {e}");
                }
            }),
        ];
        if let Some(addr) = &cfg.health_addr {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Other(format!("cannot listen on --listen-health-addr {addr}: {e}")))?;
            tracing::info!(addr = %listener.local_addr().map_or(addr.clone(), |a| a.to_string()), "health in plain text");
            let health_server = Server::builder()
                .add_service(health_only.clone())
                .serve_with_incoming_shutdown(incoming(listener)?, stop(shutdown_rx.clone()));
            tasks.push(tokio::spawn(async move {
                if let Err(e) = health_server.await {
                    tracing::error!("health server failed: {e}");
                }
            }));
        }
        if let Some(addr) = &cfg.metrics_addr {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Other(format!("cannot listen on --listen-metrics-urls {addr}: {e}")))?;
            tracing::info!(addr = %listener.local_addr().map_or(addr.clone(), |a| a.to_string()), "metrics and health over HTTP");
            tasks.push(tokio::spawn(metrics::serve(listener, handle.clone(), shutdown_rx.clone())));
        }
        if let Some(socket) = bridge {
            tasks.push(tokio::spawn(crate::bridge::serve(socket, handle.clone())));
        }
        tasks.push(tokio::spawn(lessor::run(handle.clone())));
        tasks.push(tokio::spawn(bootstrap::publish(handle.clone(), shutdown_rx.clone())));
        if cfg.join_as_learner {
            tasks.push(tokio::spawn(scaling::promote(handle.clone(), shutdown_rx.clone())));
        }
        tasks.push(tokio::spawn(health::report_health(handle.status_watch(), health_reporter, shutdown_rx.clone())));
        if let Some(mode) = cfg.auto_compaction {
            tasks.push(tokio::spawn(compactor::run(handle.clone(), mode, shutdown_rx.clone())));
        }
        Ok(Node { handle, client_addr, peer_addr, shutdown: shutdown_tx, tasks, threads })
    }

    pub fn handle(&self) -> &NodeHandle {
        &self.handle
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Stops the node the way a rolling update wants it: a leader first hands
    /// leadership to its most up-to-date follower, so the cluster has a leader again
    /// without waiting for an election timeout, and waits (within `budget`) until the
    /// entries it appended are applied, so their callers get answers. It then serves
    /// one more election timeout, so that writes other nodes forward to it while they
    /// still take it for the leader are redirected rather than cut off. Then it stops.
    pub async fn graceful_shutdown(self, budget: Duration) {
        let h = self.handle.clone();
        if h.status().role == Role::Leader {
            let handoff = async {
                let (leader, term) = h.transfer_leader(None, budget).await?;
                tracing::info!(%leader, term, "handed leadership over");
                let last = h.status().last_index;
                let _ = h.wait_applied(last).await;
                tokio::time::sleep(h.0.election_timeout).await;
                Ok::<_, Error>(())
            };
            match tokio::time::timeout(budget, handoff).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("leadership handoff failed, stopping anyway: {e}"),
                Err(_) => tracing::warn!("leadership handoff took longer than {budget:?}, stopping anyway"),
            }
        }
        // Whatever its role: what it knows to be committed is applied first, so that the
        // clients waiting here for those writes hear that they succeeded (a member
        // that has just removed itself, say, learns of no commit after that).
        // The published status may lag the core by a batch: asked twice, a moment apart.
        let settle = async {
            for _ in 0..2 {
                h.wait_applied(h.status().commit).await?;
                tokio::time::sleep(h.0.election_timeout / 2).await;
            }
            h.wait_applied(h.status().commit).await
        };
        let failed = h.fatal_error().is_some();
        if !failed && tokio::time::timeout(budget.min(Duration::from_secs(5)), settle).await.is_err() {
            tracing::warn!(commit = h.status().commit, "stopping before applying every committed entry");
        }
        self.shutdown().await
    }

    /// Stops every task of the node and waits for them to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        // The driver is gone, so the applier drains its queue, checkpoints and ends, and
        // the persister writes what it was given and ends; then the engine is closed,
        // even if handles to this node live on.
        for t in std::mem::take(&mut self.threads) {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        self.handle.0.store.close();
    }
}
