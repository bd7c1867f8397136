//! Node configuration: parsed from flags/env in main.rs, validated here.
use std::time::Duration;

use crate::raft::NodeId;

/// Largest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;
/// Largest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// A request waits at most this long when the client set no shorter deadline.
pub const MAX_REQUEST_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    /// Peer address, `host:port`; host may be a DNS name.
    pub peer_addr: String,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    /// Every voting member, this node included.
    pub members: Vec<Member>,
    /// Minimum election timeout; each one is drawn from `[min, 2 * min)`.
    pub election_timeout_ms: u64,
    pub heartbeat_ms: u64,
    /// Where the node keeps its log, hard state and snapshots.
    pub data_dir: std::path::PathBuf,
    /// Snapshot (and compact the log) after this many applied entries...
    pub snapshot_entries: u64,
    /// ...or this many applied bytes of commands, whichever comes first.
    pub snapshot_bytes: u64,
    /// Log segments are closed past this size (64 MiB; smaller in tests).
    pub wal_segment_bytes: u64,
    /// Entries kept below the applied index when compacting, so that a follower a
    /// little behind catches up from the log rather than from a snapshot.
    pub keep_entries: u64,
    /// Writes that add data are refused once the store holds this many bytes.
    pub quota_backend_bytes: u64,
    /// The storage engine's page cache.
    pub engine_cache_bytes: usize,
    /// History compaction decided by the leader, if any.
    pub auto_compaction: Option<AutoCompaction>,
    /// TLS on the client port (`--cert-file --key-file --trusted-ca-file
    /// --client-cert-auth`); plain text if `None`.
    pub client_tls: Option<crate::tls::TlsFiles>,
    /// TLS between members (`--peer-cert-file --peer-key-file --peer-trusted-ca-file
    /// --peer-client-cert-auth`): a node's pair serves its peer port and is its client
    /// certificate when it calls the others; the CA verifies both ways.
    pub peer_tls: Option<crate::tls::TlsFiles>,
    /// The largest client request accepted, in bytes (etcd's `--max-request-bytes`);
    /// the client port decodes at most this plus `GRPC_OVERHEAD_BYTES`.
    pub max_request_bytes: usize,
    /// Concurrent gRPC streams per client connection (HTTP/2 `max_concurrent_streams`).
    pub max_concurrent_streams: u32,
    /// A plain-text port serving only `grpc.health.v1.Health`, for probes that cannot
    /// speak TLS (the kubelet's) when the client port does.
    pub health_addr: Option<String>,
    /// Where `/metrics`, `/health`, `/readyz` and `/livez` are served over plain HTTP
    /// (etcd's `--listen-metrics-urls`), if anywhere.
    pub metrics_addr: Option<String>,
    /// The client URLs this node tells others about (etcd's `--advertise-client-urls`);
    /// empty: the client address it listens on.
    pub advertise_client_urls: Vec<String>,
    /// How long a watcher that asked for progress notifications (`progress_notify`)
    /// waits without events before it is sent one (etcd's
    /// `--experimental-watch-progress-notify-interval`).
    pub watch_progress_interval: Duration,
    /// Whether a node with an empty data directory founds a new cluster with the other
    /// members of `members` (`New`), or joins a running one that already lists it
    /// (`Existing`, after `member add`): etcd's `--initial-cluster-state`.
    pub initial_cluster_state: ClusterState,
    /// How long a node with an empty data directory waits for the other members to
    /// say what they know of it (etcd's bootstrap timeout, 1 s by default).
    pub bootstrap_timeout: Duration,
    /// The longest (and default) time to live of a client session: it expires after
    /// this much log time without a write (`--client-session-ttl`).
    pub session_ttl: Duration,
    /// Client sessions open at once, at most (`--max-client-sessions`).
    pub max_sessions: u64,
    /// Tests only (`serve --peer-dial`): where to dial members, by name, instead of
    /// their peer URLs — a process test's proxies on each directed link.
    pub peer_dial: std::collections::BTreeMap<String, String>,
    /// `--join-as-learner`: a node the cluster does not list adds itself as a learner,
    /// then promotes itself once it has caught up (a StatefulSet that scales up).
    pub join_as_learner: bool,
}

/// etcd's `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterState {
    #[default]
    New,
    Existing,
}

/// etcd's two auto-compaction modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep the history of the last period.
    Periodic(Duration),
    /// Keep the last N revisions.
    Revision(u64),
}

/// Checkpoint the state machine (a durable engine commit) and compact the log after
/// this many applied entries...
pub const DEFAULT_SNAPSHOT_ENTRIES: u64 = 10_000;
/// ...or this many bytes of applied commands.
pub const DEFAULT_SNAPSHOT_BYTES: u64 = 64 << 20;
/// 8 GiB: etcd's suggested maximum (its default is 2 GiB).
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 8 << 30;
/// The engine's memory: half block cache, half memtables (README, "Memory"). 256 MiB
/// since 2026-12-03 (was 64 MiB): fewer memtable flushes and compactions per write.
pub const DEFAULT_ENGINE_CACHE_BYTES: usize = 256 << 20;
/// 1.5 MiB, etcd's default `--max-request-bytes`.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 3 << 19;
/// What gRPC framing may add to a request (etcd's `grpcOverheadBytes`).
pub const GRPC_OVERHEAD_BYTES: usize = 512 << 10;
/// Streams per client connection: enough for any pooled client, bounded for a hostile one.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// A client session's longest time to live, in seconds (one hour).
pub const DEFAULT_SESSION_TTL_SECS: u64 = 3600;
/// Client sessions open at once, at most (about 100 bytes of memory each).
pub const DEFAULT_MAX_SESSIONS: u64 = 100_000;

/// A duration as etcd's flags take them: `1h`, `30m`, `10s`, `500ms`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit {
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        _ => None,
    }
}

/// etcd's interval between progress notifications to idle watchers that asked for them.
pub const DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);

/// Parses `--auto-compaction-retention` for `--auto-compaction-mode` (etcd's syntax):
/// periodic takes a duration (`1h`, `30m`, `10s`) or a number of hours; revision takes a
/// number of revisions; `0` turns compaction off.
pub fn parse_auto_compaction(mode: &str, retention: &str) -> Result<Option<AutoCompaction>, ConfigError> {
    let bad = || ConfigError::AutoCompaction(format!("retention {retention:?} does not fit mode {mode:?}"));
    let retention = retention.trim();
    match mode {
        "periodic" => {
            let d = if let Ok(hours) = retention.parse::<u64>() {
                Duration::from_secs(hours.checked_mul(3600).ok_or_else(bad)?)
            } else {
                parse_duration(retention).ok_or_else(bad)?
            };
            Ok((!d.is_zero()).then_some(AutoCompaction::Periodic(d)))
        }
        "revision" => {
            let n: u64 = retention.parse().map_err(|_| bad())?;
            Ok((n > 0).then_some(AutoCompaction::Revision(n)))
        }
        _ => Err(ConfigError::AutoCompaction(format!("unknown mode {mode:?} (periodic or revision)"))),
    }
}

impl NodeConfig {
    /// A configuration with the documented defaults for everything but the identity.
    pub fn new(name: &str, members: Vec<Member>, data_dir: std::path::PathBuf) -> NodeConfig {
        NodeConfig {
            name: name.to_string(),
            members,
            election_timeout_ms: 150,
            heartbeat_ms: 50,
            data_dir,
            snapshot_entries: DEFAULT_SNAPSHOT_ENTRIES,
            snapshot_bytes: DEFAULT_SNAPSHOT_BYTES,
            wal_segment_bytes: crate::storage::wal::SEGMENT_BYTES,
            keep_entries: 5000,
            quota_backend_bytes: DEFAULT_QUOTA_BACKEND_BYTES,
            engine_cache_bytes: DEFAULT_ENGINE_CACHE_BYTES,
            auto_compaction: None,
            client_tls: None,
            peer_tls: None,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            health_addr: None,
            metrics_addr: None,
            advertise_client_urls: Vec::new(),
            watch_progress_interval: DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL,
            initial_cluster_state: ClusterState::New,
            bootstrap_timeout: Duration::from_secs(1),
            session_ttl: Duration::from_secs(DEFAULT_SESSION_TTL_SECS),
            max_sessions: DEFAULT_MAX_SESSIONS,
            peer_dial: Default::default(),
            join_as_learner: false,
        }
    }

    /// Where to dial the member `name` whose peer address is `addr`.
    pub fn dial_addr<'a>(&'a self, name: &str, addr: &'a str) -> &'a str {
        self.peer_dial.get(name).map_or(addr, String::as_str)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--initial-cluster: {0}")]
    Cluster(String),
    #[error("--initial-cluster-size: {0}")]
    Ordinal(String),
    #[error("--name {0:?} is not in --initial-cluster")]
    NotAMember(String),
    #[error("--heartbeat-ms ({heartbeat}) must be positive and at most half of --election-timeout-ms ({election})")]
    Timing { heartbeat: u64, election: u64 },
    #[error("--snapshot-entries and --snapshot-bytes must be positive")]
    Snapshot,
    #[error("--max-request-bytes and --max-concurrent-streams must be positive")]
    Limits,
    #[error("--auto-compaction-retention: {0}")]
    AutoCompaction(String),
}

/// Parses `NAME=HOST:PORT,NAME=HOST:PORT,...`.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<Member>, ConfigError> {
    let mut members = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, addr) =
            part.split_once('=').ok_or_else(|| ConfigError::Cluster(format!("{part:?} is not NAME=HOST:PORT")))?;
        let (name, addr) = (name.trim(), addr.trim());
        if name.is_empty() {
            return Err(ConfigError::Cluster(format!("{part:?} has an empty name")));
        }
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(ConfigError::Cluster(format!("{addr:?} is not HOST:PORT"))),
        }
        if members.iter().any(|m: &Member| m.name == name) {
            return Err(ConfigError::Cluster(format!("name {name:?} appears twice")));
        }
        members.push(Member { name: name.to_string(), peer_addr: addr.to_string() });
    }
    if members.is_empty() {
        return Err(ConfigError::Cluster("no members".into()));
    }
    Ok(members)
}

/// The members of a StatefulSet-style cluster: `size` nodes named `PREFIX-0` ...
/// `PREFIX-(size-1)`, where PREFIX is `name` without its ordinal, each reached at the
/// stable DNS name `PREFIX-i.SERVICE:PORT` (a Kubernetes headless service gives every
/// pod of a StatefulSet such a name). `name` must be one of them, unless `beyond`
/// allows a pod past the founding size (a StatefulSet scaled up, whose new pods join
/// the cluster): it is then listed last. Also answers whether `name` is beyond.
pub fn ordinal_members(
    name: &str,
    size: u32,
    service: &str,
    port: u16,
    beyond: bool,
) -> Result<(Vec<Member>, bool), ConfigError> {
    let bad = ConfigError::Ordinal;
    let ordinal = pod_ordinal(name)?;
    let prefix = &name[..name.len() - ordinal.to_string().len() - 1];
    if size == 0 {
        return Err(bad("the cluster size must be positive".into()));
    }
    if ordinal >= size && !beyond {
        return Err(bad(format!(
            "{name:?} has ordinal {ordinal}, outside a cluster of {size} (--join-as-learner lets it join)"
        )));
    }
    if service.is_empty() || service.contains([':', '/', ' ']) {
        return Err(bad(format!("peer service {service:?} is not a DNS name")));
    }
    let member = |i: u32| Member { name: format!("{prefix}-{i}"), peer_addr: format!("{prefix}-{i}.{service}:{port}") };
    let mut members: Vec<Member> = (0..size).map(member).collect();
    if ordinal >= size {
        members.push(member(ordinal));
    }
    Ok((members, ordinal >= size))
}

/// The ordinal of a StatefulSet pod's name (`PREFIX-ORDINAL`).
pub fn pod_ordinal(name: &str) -> Result<u32, ConfigError> {
    name.rsplit_once('-')
        .filter(|(p, o)| !p.is_empty() && !o.starts_with('+') && (o.len() == 1 || !o.starts_with('0')))
        .and_then(|(_, o)| o.parse::<u32>().ok())
        .ok_or_else(|| {
            ConfigError::Ordinal(format!("name {name:?} is not PREFIX-ORDINAL (as a StatefulSet pod's name is)"))
        })
}

impl NodeConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        use crate::raft::membership::{MAX_MEMBERS, MAX_NAME_BYTES, MAX_URL_BYTES};
        if !self.members.iter().any(|m| m.name == self.name) {
            return Err(ConfigError::NotAMember(self.name.clone()));
        }
        // What the membership record holds (it refuses more when read back).
        if self.members.len() > MAX_MEMBERS {
            return Err(ConfigError::Cluster(format!("more than {MAX_MEMBERS} members")));
        }
        if let Some(m) =
            self.members.iter().find(|m| m.name.len() > MAX_NAME_BYTES || m.name.chars().any(char::is_control))
        {
            return Err(ConfigError::Cluster(format!(
                "{:?}: a name is at most {MAX_NAME_BYTES} printable bytes",
                m.name
            )));
        }
        if let Some(m) = self.members.iter().find(|m| m.peer_addr.len() + "https://".len() > MAX_URL_BYTES) {
            return Err(ConfigError::Cluster(format!(
                "{}: a peer address is at most {} bytes",
                m.name,
                MAX_URL_BYTES - 8
            )));
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms * 2 > self.election_timeout_ms {
            return Err(ConfigError::Timing { heartbeat: self.heartbeat_ms, election: self.election_timeout_ms });
        }
        if self.snapshot_entries == 0 || self.snapshot_bytes == 0 {
            return Err(ConfigError::Snapshot);
        }
        if self.max_request_bytes == 0 || self.max_concurrent_streams == 0 {
            return Err(ConfigError::Limits);
        }
        Ok(())
    }

    /// Members sorted by name: a member's id is its position + 1, the same on every node
    /// whatever order `--initial-cluster` lists them in.
    pub fn sorted_members(&self) -> Vec<Member> {
        let mut m = self.members.clone();
        m.sort_by(|a, b| a.name.cmp(&b.name));
        m
    }

    pub fn id_of(&self, name: &str) -> Option<NodeId> {
        self.sorted_members().iter().position(|m| m.name == name).map(|i| i as NodeId + 1)
    }

    /// The tick: 10 ms, or finer for very short heartbeats.
    pub fn tick(&self) -> Duration {
        Duration::from_millis((self.heartbeat_ms / 2).clamp(1, 10))
    }

    pub fn ticks(&self, ms: u64) -> u32 {
        (ms / self.tick().as_millis() as u64).max(1) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_initial_cluster() {
        let m = parse_initial_cluster("a=127.0.0.1:1, b=raftkv-1.raftkv:7100").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].peer_addr, "raftkv-1.raftkv:7100");
        assert!(parse_initial_cluster("a=1.2.3.4").is_err());
        assert!(parse_initial_cluster("a=h:1,a=h:2").is_err());
        assert!(parse_initial_cluster("=h:1").is_err());
        assert!(parse_initial_cluster("").is_err());
    }

    #[test]
    fn ordinal_members_follow_the_statefulset_names() {
        let (m, beyond) = ordinal_members("raftkv-3", 5, "raftkv-peer", 7100, false).unwrap();
        assert!(!beyond);
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].name, "raftkv-0");
        assert_eq!(m[4].peer_addr, "raftkv-4.raftkv-peer:7100");
        let (m, _) = ordinal_members("my-db-0", 1, "db.ns.svc", 1, false).unwrap();
        assert_eq!(m[0].peer_addr, "my-db-0.db.ns.svc:1");
        assert!(ordinal_members("raftkv-5", 5, "s", 1, false).is_err(), "ordinal outside the cluster");
        assert!(ordinal_members("raftkv", 5, "s", 1, false).is_err(), "no ordinal");
        assert!(ordinal_members("-1", 5, "s", 1, false).is_err(), "no prefix");
        assert!(ordinal_members("raftkv-05", 5, "s", 1, false).is_err(), "not a pod's ordinal");
        assert!(ordinal_members("raftkv-0", 0, "s", 1, false).is_err(), "empty cluster");
        assert!(ordinal_members("raftkv-0", 3, "", 1, false).is_err(), "no service");
        // A pod past the founding size joins: the founders, then itself.
        let (m, beyond) = ordinal_members("raftkv-6", 5, "raftkv-peer", 7100, true).unwrap();
        assert!(beyond);
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["raftkv-0", "raftkv-1", "raftkv-2", "raftkv-3", "raftkv-4", "raftkv-6"]);
        assert_eq!(m[5].peer_addr, "raftkv-6.raftkv-peer:7100");
    }

    #[test]
    fn auto_compaction_follows_etcds_syntax() {
        let p = |m, r| parse_auto_compaction(m, r);
        assert_eq!(p("periodic", "0"), Ok(None));
        assert_eq!(p("periodic", "1"), Ok(Some(AutoCompaction::Periodic(Duration::from_secs(3600)))));
        assert_eq!(p("periodic", "30m"), Ok(Some(AutoCompaction::Periodic(Duration::from_secs(1800)))));
        assert_eq!(p("periodic", "10s"), Ok(Some(AutoCompaction::Periodic(Duration::from_secs(10)))));
        assert_eq!(p("revision", "1000"), Ok(Some(AutoCompaction::Revision(1000))));
        assert_eq!(p("revision", "0"), Ok(None));
        assert!(p("revision", "1h").is_err());
        assert!(p("periodic", "5x").is_err());
        assert!(p("periodic", "h").is_err());
        assert!(p("hourly", "1").is_err());
    }

    #[test]
    fn validate_checks_membership_and_timing() {
        let members = parse_initial_cluster("b=h:1,a=h:2").unwrap();
        let mut c = NodeConfig::new("a", members, "unused".into());
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.id_of("a"), Some(1));
        assert_eq!(c.ticks(150), 15);
        c.heartbeat_ms = 100;
        assert!(matches!(c.validate(), Err(ConfigError::Timing { .. })));
        c.name = "z".into();
        assert_eq!(c.validate(), Err(ConfigError::NotAMember("z".into())));
    }
}
