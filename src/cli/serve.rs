//! `raftkv serve`: one node.
use std::process::ExitCode;

use clap::Args;
use raftkv::config::{ordinal_members, parse_initial_cluster, NodeConfig};
use raftkv::server::Node;
use raftkv::tls::TlsFiles;
use tokio::net::TcpListener;

use super::{CliError, CmdResult};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// This node's name; must appear in --initial-cluster.
    #[arg(long, env = "RAFTKV_NAME")]
    pub name: String,
    /// `raftkv dev` only: read "isolate" and "heal" lines on standard input, cutting
    /// this node off from its peers (both ways) and back.
    #[arg(long, hide = true)]
    pub dev_fault_control: bool,
    /// Tests only: dial these members here instead of at their peer URLs
    /// (NAME=HOST:PORT,...: a process test's proxy on each directed link).
    #[arg(long, hide = true)]
    pub peer_dial: Option<String>,
    /// Address for the client gRPC service (KeyValue, health, reflection).
    #[arg(long, env = "RAFTKV_CLIENT_ADDR", default_value = "127.0.0.1:7001")]
    pub client_addr: String,
    /// Address for the peer gRPC service (Raft) to listen on.
    #[arg(long, env = "RAFTKV_PEER_ADDR", default_value = "127.0.0.1:7101")]
    pub peer_addr: String,
    /// Every member's peer address: NAME=HOST:PORT,... (host may be a DNS name).
    #[arg(long, env = "RAFTKV_INITIAL_CLUSTER", required_unless_present = "initial_cluster_size")]
    pub initial_cluster: Option<String>,
    /// Instead of --initial-cluster, for a StatefulSet: N members named like this node
    /// (PREFIX-0 ... PREFIX-(N-1)), each at PREFIX-i.<--peer-service>:<peer port>.
    #[arg(long, env = "RAFTKV_INITIAL_CLUSTER_SIZE", conflicts_with = "initial_cluster", requires = "peer_service")]
    pub initial_cluster_size: Option<u32>,
    /// The headless service whose DNS names reach the members (with --initial-cluster-size).
    #[arg(long, env = "RAFTKV_PEER_SERVICE")]
    pub peer_service: Option<String>,
    /// With an empty data directory: `new` founds a cluster of the --initial-cluster
    /// members (refused if the others say this member already started once: its data
    /// was lost); `existing` joins a running cluster that lists this member (after
    /// `raftkv member add`), learning the membership from the members it names.
    #[arg(long, env = "RAFTKV_INITIAL_CLUSTER_STATE", value_enum, default_value = "new")]
    pub initial_cluster_state: raftkv::config::ClusterState,
    /// A node the cluster does not list adds itself as a learner through the members
    /// --initial-cluster names, and promotes itself once it has caught up. With
    /// --initial-cluster-size, a pod whose ordinal is past the size joins this way.
    #[arg(long, env = "RAFTKV_JOIN_AS_LEARNER")]
    pub join_as_learner: bool,
    /// On SIGTERM, ask the Kubernetes API (in-cluster service account) for this pod's
    /// StatefulSet's replicas; if this pod's ordinal is no longer among them (scaled
    /// down), remove this member from the cluster before stopping.
    #[arg(long, env = "RAFTKV_LEAVE_ON_SCALE_DOWN")]
    pub leave_on_scale_down: bool,
    /// With an empty data directory: how long to wait for the other members' answers.
    #[arg(long, env = "RAFTKV_BOOTSTRAP_TIMEOUT_MS", default_value_t = 1000)]
    pub bootstrap_timeout_ms: u64,
    /// Minimum election timeout; each timeout is drawn from [min, 2*min).
    #[arg(long, env = "RAFTKV_ELECTION_TIMEOUT_MS", default_value_t = 150)]
    pub election_timeout_ms: u64,
    /// Heartbeat interval; at most half the election timeout.
    #[arg(long, env = "RAFTKV_HEARTBEAT_MS", default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// UDP address for the controller bridge (off unless given; the documented port
    /// is 5555). Unauthenticated: it accepts SHUTDOWN.
    #[arg(long, env = "RAFTKV_BRIDGE_ADDR")]
    pub bridge_addr: Option<String>,
    /// Directory for the node's log and hard state (default: ./NAME.raftkv). Created
    /// if missing; a directory of another node or cluster, or damaged data, is refused.
    #[arg(long, env = "RAFTKV_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Checkpoint the state machine (one durable commit of its engine) and compact
    /// the log after this many applied entries...
    #[arg(long, env = "RAFTKV_SNAPSHOT_ENTRIES", default_value_t = raftkv::config::DEFAULT_SNAPSHOT_ENTRIES)]
    pub snapshot_entries: u64,
    /// ...or after this many bytes of applied commands, whichever comes first.
    #[arg(long, env = "RAFTKV_SNAPSHOT_BYTES", default_value_t = raftkv::config::DEFAULT_SNAPSHOT_BYTES)]
    pub snapshot_bytes: u64,
    /// Log segments are closed past this size; only closed segments are deleted when
    /// the log is compacted.
    #[arg(long, env = "RAFTKV_WAL_SEGMENT_BYTES", default_value_t = raftkv::storage::wal::SEGMENT_BYTES)]
    pub wal_segment_bytes: u64,
    /// Writes that add data are refused (RESOURCE_EXHAUSTED) once the store holds this
    /// many bytes of keys and values, history included; deletes and compaction free it.
    #[arg(long, env = "RAFTKV_QUOTA_BACKEND_BYTES", default_value_t = raftkv::config::DEFAULT_QUOTA_BACKEND_BYTES)]
    pub quota_backend_bytes: u64,
    /// The storage engine's page cache, in bytes (what bounds the node's memory).
    #[arg(long, env = "RAFTKV_ENGINE_CACHE_BYTES", default_value_t = raftkv::config::DEFAULT_ENGINE_CACHE_BYTES)]
    pub engine_cache_bytes: usize,
    /// How --auto-compaction-retention is read: `periodic` (a duration) or `revision`.
    #[arg(long, env = "RAFTKV_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// Keep this much history, compacting the rest (decided by the leader, through the
    /// log): periodic `1h`, `30m`, `10s` or a number of hours; revision a number of
    /// revisions. 0 (the default, as etcd's) keeps all history.
    #[arg(long, env = "RAFTKV_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// On SIGTERM a leader hands leadership over and lets its last writes finish, for
    /// at most this long, before it stops; any member then applies what it knows to be
    /// committed (at most 5 s more), and with --leave-on-scale-down a departing pod may
    /// first take this long to leave (keep the sum below the supervisor's grace period).
    #[arg(long, env = "RAFTKV_SHUTDOWN_TIMEOUT_MS", default_value_t = 5000)]
    pub shutdown_timeout_ms: u64,
    /// The largest client request accepted, in bytes (etcd's flag and default, 1.5 MiB);
    /// a larger one is refused before it is read into memory.
    #[arg(long, env = "RAFTKV_MAX_REQUEST_BYTES", default_value_t = raftkv::config::DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Concurrent gRPC streams per client connection.
    #[arg(long, env = "RAFTKV_MAX_CONCURRENT_STREAMS", default_value_t = raftkv::config::DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,
    /// The client URLs to tell other members and clients about, comma-separated
    /// (etcd's flag; etcd's MemberList shows them): needed when --client-addr is a
    /// wildcard such as 0.0.0.0:2379. Default: http(s)://<--client-addr>.
    #[arg(long, env = "RAFTKV_ADVERTISE_CLIENT_URLS", value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,
    /// How long a watch that asked for progress notifications may go without events
    /// before it is sent one (etcd's flag): a duration such as 10m, 30s, 500ms.
    #[arg(long, env = "RAFTKV_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m")]
    pub experimental_watch_progress_notify_interval: String,
    /// Also serve grpc.health.v1.Health alone, in plain text, here (for probes that
    /// cannot speak TLS, such as the kubelet's, when the client port does).
    #[arg(long, env = "RAFTKV_LISTEN_HEALTH_ADDR")]
    pub listen_health_addr: Option<String>,
    /// Serve Prometheus metrics (/metrics) and /health, /readyz, /livez over plain
    /// HTTP here: http://HOST:PORT (etcd's flag). Off by default.
    #[arg(long, env = "RAFTKV_LISTEN_METRICS_URLS")]
    pub listen_metrics_urls: Option<String>,
    /// The longest time to live of a client session, in seconds (also the default, for
    /// clients that ask for none): it ends after this long without a write.
    #[arg(long, env = "RAFTKV_CLIENT_SESSION_TTL", default_value_t = raftkv::config::DEFAULT_SESSION_TTL_SECS)]
    pub client_session_ttl: u64,
    /// Client sessions open at once, at most; past it, opening one is refused
    /// (RESOURCE_EXHAUSTED) until idle ones expire.
    #[arg(long, env = "RAFTKV_MAX_CLIENT_SESSIONS", default_value_t = raftkv::config::DEFAULT_MAX_SESSIONS)]
    pub max_client_sessions: u64,
    /// Serve clients over TLS with this certificate (PEM; re-read when the file changes).
    #[arg(long, env = "RAFTKV_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<std::path::PathBuf>,
    /// The key of --cert-file (PEM).
    #[arg(long, env = "RAFTKV_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<std::path::PathBuf>,
    /// The CA that signs client certificates (with --client-cert-auth).
    #[arg(long, env = "RAFTKV_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<std::path::PathBuf>,
    /// Clients must present a certificate signed by --trusted-ca-file.
    #[arg(long, env = "RAFTKV_CLIENT_CERT_AUTH", requires = "trusted_ca_file")]
    pub client_cert_auth: bool,
    /// This node's certificate between members (PEM): served on the peer port and
    /// presented when it calls the others. A certificate whose DNS names name a member
    /// speaks only for that member.
    #[arg(long, env = "RAFTKV_PEER_CERT_FILE", requires_all = ["peer_key_file", "peer_trusted_ca_file"])]
    pub peer_cert_file: Option<std::path::PathBuf>,
    /// The key of --peer-cert-file (PEM).
    #[arg(long, env = "RAFTKV_PEER_KEY_FILE", requires = "peer_cert_file")]
    pub peer_key_file: Option<std::path::PathBuf>,
    /// The cluster's CA: verifies the other members' certificates, both ways.
    #[arg(long, env = "RAFTKV_PEER_TRUSTED_CA_FILE", requires = "peer_cert_file")]
    pub peer_trusted_ca_file: Option<std::path::PathBuf>,
    /// The peer port accepts only members with a certificate of --peer-trusted-ca-file.
    #[arg(long, env = "RAFTKV_PEER_CLIENT_CERT_AUTH", requires = "peer_cert_file")]
    pub peer_client_cert_auth: bool,
    /// Parse and validate the flags and environment, print the resulting
    /// configuration, and exit without serving or touching the data directory.
    #[arg(long)]
    pub check_config: bool,
}

/// A listen address: `HOST:PORT` with a numeric port (HOST may be a name or an IP).
fn check_listen_addr(flag: &str, addr: &str) -> Result<(), CliError> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(CliError::Usage(format!("{flag} {addr:?} is not HOST:PORT"))),
    }
}

/// The node's configuration from flags and environment, validated.
fn config(args: &ServeArgs) -> Result<NodeConfig, CliError> {
    check_listen_addr("--client-addr", &args.client_addr)?;
    check_listen_addr("--peer-addr", &args.peer_addr)?;
    for url in &args.advertise_client_urls {
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        let port = rest.and_then(|r| r.rsplit_once(':')).and_then(|(host, p)| (!host.is_empty()).then_some(p));
        if port.and_then(|p| p.trim_end_matches('/').parse::<u16>().ok()).is_none() {
            return Err(CliError::Usage(format!(
                "--advertise-client-urls: {url:?} is not a URL like http://host:2379"
            )));
        }
    }
    // A pod past the founding size joins the running cluster.
    let (members, beyond) = match (&args.initial_cluster, args.initial_cluster_size) {
        (Some(list), _) => parse_initial_cluster(list).map(|m| (m, false)),
        (None, Some(size)) => {
            let port = args.peer_addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("checked above");
            let service = args.peer_service.as_deref().unwrap_or_default();
            ordinal_members(&args.name, size, service, port, args.join_as_learner)
        }
        (None, None) => unreachable!("clap requires one of them"),
    }?;
    if args.leave_on_scale_down {
        raftkv::config::pod_ordinal(&args.name)
            .map_err(|error| CliError::ConfigFlag { flag: "--leave-on-scale-down", error })?;
    }
    if let Some(b) = &args.bridge_addr {
        check_listen_addr("--bridge-addr", b)?;
    }
    if let Some(h) = &args.listen_health_addr {
        check_listen_addr("--listen-health-addr", h)?;
    }
    let metrics_addr = match &args.listen_metrics_urls {
        Some(url) => {
            let addr = url.strip_prefix("http://").map(|a| a.trim_end_matches('/')).ok_or_else(|| {
                CliError::Usage(format!(
                    "--listen-metrics-urls: {url:?} is not http://HOST:PORT (one URL; TLS is not served there)"
                ))
            })?;
            check_listen_addr("--listen-metrics-urls", addr)?;
            Some(addr.to_string())
        }
        None => None,
    };
    if args.client_session_ttl == 0 || args.max_client_sessions == 0 {
        return Err(CliError::Usage("--client-session-ttl and --max-client-sessions must be positive".into()));
    }
    if args.shutdown_timeout_ms == 0 {
        return Err(CliError::Usage("--shutdown-timeout-ms must be positive".into()));
    }
    if args.client_cert_auth && args.cert_file.is_none() {
        return Err(CliError::Usage("--client-cert-auth needs --cert-file and --key-file".into()));
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(|| format!("{}.raftkv", args.name).into());
    let cfg = NodeConfig {
        election_timeout_ms: args.election_timeout_ms,
        heartbeat_ms: args.heartbeat_ms,
        snapshot_entries: args.snapshot_entries,
        snapshot_bytes: args.snapshot_bytes,
        quota_backend_bytes: args.quota_backend_bytes,
        wal_segment_bytes: args.wal_segment_bytes,
        engine_cache_bytes: args.engine_cache_bytes,
        auto_compaction: raftkv::config::parse_auto_compaction(
            &args.auto_compaction_mode,
            &args.auto_compaction_retention,
        )?,
        max_request_bytes: args.max_request_bytes,
        max_concurrent_streams: args.max_concurrent_streams,
        health_addr: args.listen_health_addr.clone(),
        metrics_addr,
        advertise_client_urls: args.advertise_client_urls.clone(),
        watch_progress_interval: raftkv::config::parse_duration(&args.experimental_watch_progress_notify_interval)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "--experimental-watch-progress-notify-interval: {:?} is not a duration like 10m, 30s or 500ms",
                    args.experimental_watch_progress_notify_interval
                ))
            })?,
        session_ttl: std::time::Duration::from_secs(args.client_session_ttl),
        max_sessions: args.max_client_sessions,
        initial_cluster_state: if beyond { raftkv::config::ClusterState::Existing } else { args.initial_cluster_state },
        join_as_learner: args.join_as_learner,
        peer_dial: match &args.peer_dial {
            Some(list) => parse_initial_cluster(list)
                .map_err(|error| CliError::ConfigFlag { flag: "--peer-dial", error })?
                .into_iter()
                .map(|m| (m.name, m.peer_addr))
                .collect(),
            None => Default::default(),
        },
        bootstrap_timeout: std::time::Duration::from_millis(args.bootstrap_timeout_ms),
        client_tls: tls_files(&args.cert_file, &args.key_file, &args.trusted_ca_file, args.client_cert_auth),
        peer_tls: tls_files(
            &args.peer_cert_file,
            &args.peer_key_file,
            &args.peer_trusted_ca_file,
            args.peer_client_cert_auth,
        ),
        ..NodeConfig::new(&args.name, members, data_dir)
    };
    cfg.validate()?;
    Ok(cfg)
}

/// One port's TLS files, if its certificate and key are given.
fn tls_files(
    cert: &Option<std::path::PathBuf>,
    key: &Option<std::path::PathBuf>,
    ca: &Option<std::path::PathBuf>,
    client_cert_auth: bool,
) -> Option<TlsFiles> {
    let (cert, key) = cert.clone().zip(key.clone())?;
    Some(TlsFiles { cert, key, trusted_ca: ca.clone(), client_cert_auth })
}

fn tls_mode(tls: Option<&TlsFiles>) -> &'static str {
    match tls {
        None => "plain text",
        Some(f) if f.client_cert_auth => "TLS, certificates required",
        Some(_) => "TLS",
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Ctrl-C or SIGTERM.
pub(super) async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
    }
}

pub async fn run(args: ServeArgs) -> CmdResult {
    let cfg = config(&args)?;
    if args.check_config {
        let members: Vec<String> = cfg.members.iter().map(|m| format!("{}={}", m.name, m.peer_addr)).collect();
        println!(
            "config OK: name={} client={} ({}) peer={} ({}) bridge={} metrics={} data-dir={} election-timeout-ms={} heartbeat-ms={} initial-cluster-state={} join-as-learner={} leave-on-scale-down={} members={}",
            cfg.name,
            args.client_addr,
            tls_mode(cfg.client_tls.as_ref()),
            args.peer_addr,
            tls_mode(cfg.peer_tls.as_ref()),
            args.bridge_addr.as_deref().unwrap_or("off"),
            cfg.metrics_addr.as_deref().unwrap_or("off"),
            cfg.data_dir.display(),
            cfg.election_timeout_ms,
            cfg.heartbeat_ms,
            match cfg.initial_cluster_state {
                raftkv::config::ClusterState::New => "new",
                raftkv::config::ClusterState::Existing => "existing",
            },
            cfg.join_as_learner,
            args.leave_on_scale_down,
            members.join(","),
        );
        return Ok(ExitCode::SUCCESS);
    }
    init_logging();
    // Checked before anything starts: a pod that cannot ask the API would stop as a
    // member when scaled down, and stay listed.
    let leave = match args.leave_on_scale_down {
        true => {
            let ordinal = raftkv::config::pod_ordinal(&args.name)?;
            let sts = raftkv::kube::StatefulSet::of_pod(&args.name)?;
            // The founding members: --initial-cluster-size, or those --initial-cluster lists.
            let founders = args.initial_cluster_size.unwrap_or(cfg.members.len() as u32);
            Some((sts, (ordinal, founders)))
        }
        false => None,
    };
    let client = TcpListener::bind(&args.client_addr)
        .await
        .map_err(|e| CliError::io(format!("cannot listen on --client-addr {}", args.client_addr), e))?;
    let peer = TcpListener::bind(&args.peer_addr)
        .await
        .map_err(|e| CliError::io(format!("cannot listen on --peer-addr {}", args.peer_addr), e))?;
    let bridge = match &args.bridge_addr {
        Some(addr) => Some(
            tokio::net::UdpSocket::bind(addr)
                .await
                .map_err(|e| CliError::io(format!("cannot bind --bridge-addr {addr}"), e))?,
        ),
        None => None,
    };
    let bridge_addr = bridge.as_ref().and_then(|b| b.local_addr().ok());
    let faults = args.dev_fault_control.then(|| {
        let (faults, me) = (raftkv::transport::Faults::default(), args.name.clone());
        let control = faults.clone();
        // A thread of its own: a blocking read of stdin in the runtime's pool would hold
        // up the runtime's shutdown until the parent closes the pipe.
        std::thread::spawn(move || fault_control(control, me));
        faults
    });
    let node = Node::start(cfg.clone(), client, peer, bridge, faults).await?;
    let members: Vec<String> = cfg.members.iter().map(|m| format!("{}={}", m.name, m.peer_addr)).collect();
    tracing::info!(
        name = %args.name,
        client = %node.client_addr(),
        client_security = tls_mode(cfg.client_tls.as_ref()),
        peer = %node.peer_addr(),
        peer_security = tls_mode(cfg.peer_tls.as_ref()),
        election_timeout_ms = args.election_timeout_ms,
        heartbeat_ms = args.heartbeat_ms,
        members = %members.join(","),
        bridge = %bridge_addr.map_or("off".to_string(), |a| a.to_string()),
        "raftkv node serving"
    );
    let handle = node.handle().clone();
    tokio::select! {
        _ = terminated() => {
            if let Some((sts, pod)) = &leave {
                let budget = std::time::Duration::from_millis(args.shutdown_timeout_ms);
                raftkv::server::scaling::leave_if_scaled_down(&handle, sts, *pod, budget).await;
            }
        }
        _ = handle.stopped() => {}
    }
    tracing::info!(name = %args.name, "stopping");
    node.graceful_shutdown(std::time::Duration::from_millis(args.shutdown_timeout_ms)).await;
    match handle.fatal_error() {
        Some(e) => Err(CliError::Failed(format!("stopped on a storage failure: {e}"))),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// `--dev-fault-control`: "isolate" and "heal" lines on standard input (from `raftkv
/// dev`, its parent) cut this node off from its peers and back.
fn fault_control(faults: raftkv::transport::Faults, me: String) {
    use std::io::BufRead;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        match line.trim() {
            "isolate" => {
                faults.isolate(&me);
                tracing::warn!("fault injection: isolated from every peer");
            }
            "heal" => {
                faults.heal();
                tracing::warn!("fault injection: healed");
            }
            other => tracing::warn!("fault control: unknown command {other:?} (isolate, heal)"),
        }
    }
}
