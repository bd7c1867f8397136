//! Client commands: put, get, delete, retrieve, compact, status.
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use raftkv::client::{never_applied, Options, Session};
use raftkv::proto::{self as pb, key_value_client::KeyValueClient};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{CliError, CmdResult};

/// The endpoints of `raftkv dev` with its default 5 nodes.
pub const DEV_ENDPOINTS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003,127.0.0.1:7004,127.0.0.1:7005";

#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Client addresses of the cluster's nodes, comma-separated.
    #[arg(long, env = "RAFTKV_ENDPOINTS", value_delimiter = ',', default_value = DEV_ENDPOINTS)]
    pub endpoints: Vec<String>,
    /// Deadline of each request, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Talk TLS, verifying the servers with this CA certificate (PEM).
    #[arg(long, env = "RAFTKV_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), for servers that require one (with --cacert).
    #[arg(long, env = "RAFTKV_CERT", requires_all = ["tls_key", "cacert"])]
    pub cert: Option<std::path::PathBuf>,
    /// The key of --cert (PEM).
    #[arg(long = "key", id = "tls_key", value_name = "KEY_FILE", env = "RAFTKV_KEY", requires = "cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl Conn {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// A lazily connected channel to `endpoint`, over TLS if --cacert is given.
    pub fn channel(&self, endpoint: &str, connect_timeout: Duration) -> Result<Channel, CliError> {
        self.channel_with(endpoint, connect_timeout, None)
    }

    fn channel_with(
        &self,
        endpoint: &str,
        connect_timeout: Duration,
        deadline: Option<Duration>,
    ) -> Result<Channel, CliError> {
        let mut ep = Endpoint::from_shared(format!("http://{endpoint}"))
            .map_err(|error| CliError::BadEndpoint { endpoint: endpoint.to_string(), error })?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            // A connection to a host that vanished (no reset) is noticed within seconds:
            // long calls (watch, the cluster view) then reconnect elsewhere.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(d) = deadline {
            ep = ep.timeout(d);
        }
        match &self.cacert {
            Some(ca) => {
                let pair = self.cert.as_deref().zip(self.tls_key.as_deref());
                let cfg = raftkv::tls::client_config(ca, pair)?;
                Ok(raftkv::tls::channel(ep, endpoint, cfg)?)
            }
            None => Ok(ep.connect_lazy()),
        }
    }

    async fn client(&self, endpoint: &str) -> Result<KeyValueClient<Channel>, CliError> {
        Ok(KeyValueClient::new(self.connected(endpoint).await?))
    }

    async fn connected(&self, endpoint: &str) -> Result<Channel, CliError> {
        let mut ch = self.channel_with(endpoint, Duration::from_millis(1000), Some(self.timeout()))?;
        // Connect now, so that an unreachable endpoint is told apart from a refusal.
        futures::future::poll_fn(|cx| tower::Service::poll_ready(&mut ch, cx))
            .await
            .map_err(|error| CliError::Connect { endpoint: endpoint.to_string(), error })?;
        Ok(ch)
    }

    pub(super) async fn first<T, F, Fut>(&self, call: F) -> Result<T, CliError>
    where
        F: Fn(KeyValueClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        self.first_channel(|ch| call(KeyValueClient::new(ch))).await
    }

    /// Runs `call` against each endpoint in turn until one answers with anything other
    /// than "unreachable" or a node's own "unavailable" (which says it applied nothing).
    /// A request whose answer was lost on the way is not retried: it may have been
    /// applied, and a retry could apply it twice.
    pub async fn first_channel<T, F, Fut>(&self, call: F) -> Result<T, CliError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut last = CliError::Usage("no endpoints given".into());
        for ep in &self.endpoints {
            let client = match self.connected(ep).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match call(client).await {
                Ok(v) => return Ok(v),
                Err(status) if status.code() == Code::Unavailable && never_applied(&status) => {
                    last = CliError::Rpc { endpoint: ep.clone(), status }
                }
                Err(status) => return Err(CliError::Rpc { endpoint: ep.clone(), status }),
            }
        }
        Err(last)
    }
}

/// An exactly-once writer over the endpoints (a client session on the cluster): a
/// write whose outcome is unknown is retried, and applied at most once.
async fn session(conn: &Conn) -> Result<Session, CliError> {
    let mut endpoints = Vec::new();
    for ep in &conn.endpoints {
        let ch = conn.channel_with(ep, Duration::from_millis(1000), Some(conn.timeout()))?;
        endpoints.push((ep.clone(), KeyValueClient::new(ch)));
    }
    let options = Options {
        timeout: conn.timeout(),
        budget: conn.timeout() * 3,
        // Long enough for this command's retries; idle sessions should not pile up.
        ttl: Some(Duration::from_secs(60)),
    };
    Ok(Session::open(endpoints, options).await?)
}

pub async fn put(conn: &Conn, key: String, value: String) -> CmdResult {
    let r = session(conn).await?.store(&key, &value).await?;
    println!("OK revision={} index={} term={}", r.revision, r.index, r.term);
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(conn: &Conn, key: String) -> CmdResult {
    let r = session(conn).await?.delete(&key).await?;
    println!("OK revision={} index={} term={}", r.revision, r.index, r.term);
    Ok(ExitCode::SUCCESS)
}

pub async fn compact(conn: &Conn, revision: u64) -> CmdResult {
    let r = conn
        .first(|mut c| async move { c.compact(pb::CompactRequest { revision }).await.map(|r| r.into_inner()) })
        .await?;
    println!("compacted revision {revision} (current revision {})", r.revision);
    Ok(ExitCode::SUCCESS)
}

pub async fn get(conn: &Conn, key: String, serializable: bool, revision: u64) -> CmdResult {
    let consistency = if serializable { pb::Consistency::Serializable } else { pb::Consistency::Linearizable };
    let r = conn
        .first(|mut c| {
            let req = pb::GetRequest { key: key.clone(), consistency: consistency as i32, revision };
            async move { c.get(req).await.map(|r| r.into_inner()) }
        })
        .await?;
    if !r.found {
        eprintln!("raftkv: key {key:?} not found");
        return Ok(ExitCode::from(1));
    }
    println!("{}", r.value);
    Ok(ExitCode::SUCCESS)
}

pub async fn retrieve(conn: &Conn, node: Option<String>, from_revision: u64) -> CmdResult {
    let mut conn = conn.clone();
    if let Some(name) = &node {
        let mut found = None;
        for ep in &conn.endpoints {
            if let Ok(mut c) = conn.client(ep).await {
                if let Ok(st) = c.status(pb::StatusRequest {}).await {
                    if &st.into_inner().name == name {
                        found = Some(ep.clone());
                        break;
                    }
                }
            }
        }
        let ep = found.ok_or_else(|| CliError::Unreachable(format!("no reachable endpoint is node {name:?}")))?;
        conn.endpoints = vec![ep];
    }
    // Page through the history so that any size works.
    let mut from_revision = from_revision;
    let mut entries = Vec::new();
    let first = loop {
        let mut r = conn
            .first(|mut c| async move {
                let req = pb::RetrieveRequest { from_revision, limit: 10_000 };
                c.retrieve(req).await.map(|r| r.into_inner())
            })
            .await?;
        entries.append(&mut r.entries);
        if r.next_revision == 0 {
            break r;
        }
        from_revision = r.next_revision;
    };
    println!(
        "node {} commit_index {} revision {} compacted {} entries {}",
        first.node,
        first.commit_index,
        first.revision,
        first.compact_revision,
        entries.len()
    );
    println!("{:>9} {:>8} {:>6}", "REVISION", "INDEX", "TERM");
    for e in entries {
        match pb::Op::try_from(e.op) {
            Ok(pb::Op::Delete) => println!("{:>9} {:>8} {:>6}  DELETE {}", e.revision, e.index, e.term, e.key),
            _ => println!("{:>9} {:>8} {:>6}  PUT    {} = {}", e.revision, e.index, e.term, e.key, e.value),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn transfer_leader(conn: &Conn, to: Option<String>) -> CmdResult {
    let target = to.unwrap_or_default();
    let r = conn
        .first(|mut c| {
            let req = pb::TransferLeaderRequest { target: target.clone() };
            async move { c.transfer_leader(req).await.map(|r| r.into_inner()) }
        })
        .await?;
    println!("OK leader={} term={}", r.leader, r.term);
    Ok(ExitCode::SUCCESS)
}

pub async fn status(conn: &Conn) -> CmdResult {
    println!(
        "{:<12} {:<22} {:<10} {:>6} {:<12} {:>8} {:>8} {:>9} {:>9} {:>10}",
        "NAME", "ENDPOINT", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "REVISION", "COMPACTED", "DB_IN_USE"
    );
    let mut reachable = 0;
    let mut membership = None;
    for ep in &conn.endpoints {
        let st = match conn.client(ep).await {
            Ok(mut c) => c.status(pb::StatusRequest {}).await.map(|r| r.into_inner()).ok(),
            Err(_) => None,
        };
        match st {
            Some(s) => {
                reachable += 1;
                membership.get_or_insert_with(|| (s.members.join(", "), s.learners.join(", ")));
                let role = pb::Role::try_from(s.role).map_or("?".into(), |r| format!("{r:?}").to_lowercase());
                let leader = if s.leader.is_empty() { "-".to_string() } else { s.leader };
                println!(
                    "{:<12} {:<22} {:<10} {:>6} {:<12} {:>8} {:>8} {:>9} {:>9} {:>10}",
                    s.name,
                    ep,
                    role,
                    s.term,
                    leader,
                    s.commit_index,
                    s.applied_index,
                    s.revision,
                    s.compact_revision,
                    s.db_size_in_use
                );
            }
            None => println!("{:<12} {:<22} {:<10}", "-", ep, "unreachable"),
        }
    }
    if reachable == 0 {
        return Err(CliError::Unreachable("no endpoint answered".into()));
    }
    if let Some((voters, learners)) = membership {
        println!("voters: {voters}");
        if !learners.is_empty() {
            println!("learners: {learners}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
