//! The client gRPC service `raftkv.v1.KeyValue`.
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::config::{MAX_KEY_BYTES, MAX_REQUEST_WAIT, MAX_VALUE_BYTES};
use crate::error::Error;
use crate::mvcc::{Command, EventKind};
use crate::proto as pb;
use crate::raft::{ConfChange, NodeId};
use crate::server::NodeHandle;

mod status;

/// A Retrieve answer holds at most this much (under the 64 MiB message limit).
const RETRIEVE_PAGE_BYTES: usize = 48 << 20;
/// Request metadata of a session write: the session's id...
pub const SESSION_METADATA: &str = "raftkv-session";
/// ...and the write's sequence number in it.
pub const SEQ_METADATA: &str = "raftkv-seq";

pub struct KvService {
    node: NodeHandle,
    /// Admin calls (Compact, TransferLeader) need a client certificate of the trusted
    /// CA: set when the client port runs TLS with a trusted CA.
    admin_needs_cert: bool,
}

impl KvService {
    pub fn new(node: NodeHandle, admin_needs_cert: bool) -> Self {
        KvService { node, admin_needs_cert }
    }

    /// The configuration in force, and the member a change concerned.
    fn members(&self, id: NodeId) -> pb::MemberListResponse {
        let members = self.node.membership();
        let members = members
            .members
            .iter()
            .map(|(&id, m)| pb::Member { id, name: m.name.clone(), peer_url: m.peer_url.clone(), learner: m.learner })
            .collect();
        pb::MemberListResponse { members, id }
    }

    /// An admin change of the member a request names.
    async fn change_named(
        &self,
        req: Request<pb::MemberNameRequest>,
        change: fn(NodeId) -> ConfChange,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        self.check_admin(&req)?;
        let deadline = deadline(&req);
        let id = self.node.member_named(&req.into_inner().name)?;
        self.node.change_membership(change(id), deadline).await?;
        Ok(Response::new(self.members(id)))
    }

    /// Refuses an admin call from a client without a verified certificate.
    fn check_admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.admin_needs_cert && req.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(Status::permission_denied("this call needs a client certificate of the trusted CA"));
        }
        Ok(())
    }
}

/// How long a request may wait: the client's `grpc-timeout`, capped by the server.
pub fn deadline<T>(req: &Request<T>) -> Duration {
    let client = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(MAX_REQUEST_WAIT);
    server_wait(client)
}

/// How long the server works on a request whose client waits `client`: a little less
/// (10%, at most 100 ms), so that the client receives the server's explanation rather
/// than its own timeout, and never more than `MAX_REQUEST_WAIT`.
pub fn server_wait(client: Duration) -> Duration {
    let margin = (client / 10).min(Duration::from_millis(100));
    (client - margin).min(MAX_REQUEST_WAIT)
}

/// Parses the gRPC wire format of a timeout: up to 8 digits and a unit (H M S m u n).
pub(crate) fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `TransferLeader`, on the client service and (forwarded) on the peer service.
pub async fn transfer_leader(
    node: &NodeHandle,
    req: Request<pb::TransferLeaderRequest>,
) -> Result<Response<pb::TransferLeaderResponse>, Status> {
    let deadline = deadline(&req);
    let target = req.into_inner().target;
    let to = (!target.is_empty()).then_some(target.as_str());
    let (leader, term) = node.transfer_leader(to, deadline).await?;
    Ok(Response::new(pb::TransferLeaderResponse { leader, term }))
}

/// The session and sequence number a write's metadata names, if any.
fn session_of<T>(req: &Request<T>) -> Result<Option<(u64, u64)>, Error> {
    let md = req.metadata();
    let number = |name: &str| -> Result<Option<u64>, Error> {
        let Some(v) = md.get(name) else { return Ok(None) };
        match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(Error::InvalidArgument(format!("metadata {name} must be a positive integer"))),
        }
    };
    match (number(SESSION_METADATA)?, number(SEQ_METADATA)?) {
        (None, None) => Ok(None),
        (Some(client), Some(seq)) => Ok(Some((client, seq))),
        _ => Err(Error::InvalidArgument(format!("a session write needs both {SESSION_METADATA} and {SEQ_METADATA}"))),
    }
}

/// `write`, under `session` if there is one.
fn in_session(session: Option<(u64, u64)>, write: Command) -> Command {
    match session {
        Some((client, seq)) => Command::Session { client, seq, time_ms: 0, write: Box::new(write) },
        None => write,
    }
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("key must not be empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidArgument(format!("key is {} bytes; the limit is {MAX_KEY_BYTES}", key.len())));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::key_value_server::KeyValue for KvService {
    async fn store(&self, req: Request<pb::StoreRequest>) -> Result<Response<pb::StoreResponse>, Status> {
        let deadline = deadline(&req);
        let session = session_of(&req)?;
        let pb::StoreRequest { key, value } = req.into_inner();
        check_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            let msg = format!("value is {} bytes; the limit is {MAX_VALUE_BYTES}", value.len());
            return Err(Error::InvalidArgument(msg).into());
        }
        let a = self.node.propose(&in_session(session, Command::Put { key, value }), deadline).await?;
        Ok(Response::new(pb::StoreResponse { index: a.index, term: a.term, revision: a.revision }))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let deadline = deadline(&req);
        let session = session_of(&req)?;
        let key = req.into_inner().key;
        check_key(&key)?;
        let a = self.node.propose(&in_session(session, Command::Delete { key }), deadline).await?;
        Ok(Response::new(pb::DeleteResponse { index: a.index, term: a.term, revision: a.revision }))
    }

    async fn open_session(
        &self,
        req: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let deadline = deadline(&req);
        let ttl = req.into_inner().ttl_seconds;
        let ttl = (ttl > 0).then(|| Duration::from_secs(ttl));
        let (session, ttl) = self.node.open_session(ttl, deadline).await?;
        Ok(Response::new(pb::OpenSessionResponse { session, ttl_seconds: ttl.as_secs() }))
    }

    async fn compact(&self, req: Request<pb::CompactRequest>) -> Result<Response<pb::CompactResponse>, Status> {
        self.check_admin(&req)?;
        let deadline = deadline(&req);
        let revision = req.into_inner().revision;
        let a = self.node.propose(&Command::Compact { revision }, deadline).await?;
        Ok(Response::new(pb::CompactResponse { revision: a.revision }))
    }

    async fn retrieve(&self, req: Request<pb::RetrieveRequest>) -> Result<Response<pb::RetrieveResponse>, Status> {
        let pb::RetrieveRequest { from_revision, limit } = req.into_inner();
        let paging = limit > 0;
        let limit = if limit == 0 { usize::MAX } else { limit as usize };
        let view = self.node.store().read().map_err(Error::from)?;
        let page = view.history(from_revision, limit, RETRIEVE_PAGE_BYTES).map_err(Error::from)?;
        if page.next != 0 && !paging {
            return Err(Status::resource_exhausted(format!(
                "the history does not fit one message; page with limit (next page from revision {})",
                page.next
            )));
        }
        let entries = page
            .events
            .into_iter()
            .map(|e| pb::LogEntry {
                index: e.index,
                term: e.term,
                op: match e.kind {
                    EventKind::Put | EventKind::PutJson => pb::Op::Put,
                    EventKind::Delete => pb::Op::Delete,
                } as i32,
                key: e.key,
                value: e.value,
                revision: e.revision,
            })
            .collect();
        Ok(Response::new(pb::RetrieveResponse {
            node: self.node.name().to_string(),
            commit_index: view.applied().0,
            entries,
            revision: view.revision(),
            compact_revision: view.compacted(),
            next_revision: page.next,
        }))
    }

    async fn hash(&self, req: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        let revision = req.into_inner().revision;
        let view = self.node.store().read().map_err(Error::from)?;
        let revision = if revision == 0 { view.revision() } else { revision };
        // A whole pass over the history: off the async workers.
        let hash = tokio::task::block_in_place(|| view.hash(revision)).map_err(Error::from)?;
        Ok(Response::new(pb::HashResponse {
            node: self.node.name().to_string(),
            hash,
            revision,
            compact_revision: view.compacted(),
        }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let deadline = deadline(&req);
        let pb::GetRequest { key, consistency, revision } = req.into_inner();
        check_key(&key)?;
        match pb::Consistency::try_from(consistency) {
            Ok(pb::Consistency::Linearizable) => self.node.linearizable_barrier(deadline).await?,
            Ok(pb::Consistency::Serializable) => {}
            Err(_) => return Err(Error::InvalidArgument(format!("unknown consistency {consistency}")).into()),
        }
        let view = self.node.store().read().map_err(Error::from)?;
        let kv = view.get(&key, revision).map_err(Error::from)?;
        let mut answer = pb::GetResponse { revision: view.revision(), ..Default::default() };
        if let Some(kv) = kv {
            answer.found = true;
            answer.value = kv.value;
            answer.create_revision = kv.create_revision;
            answer.mod_revision = kv.mod_revision;
            answer.version = kv.version;
        }
        Ok(Response::new(answer))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.check_admin(&req)?;
        transfer_leader(&self.node, req).await
    }

    async fn member_list(
        &self,
        _req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(self.members(0)))
    }

    async fn member_add(&self, req: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberListResponse>, Status> {
        self.check_admin(&req)?;
        let deadline = deadline(&req);
        let r = req.into_inner();
        let change = ConfChange::Add { name: r.name, peer_url: r.peer_url, learner: r.learner };
        let id = self.node.change_membership(change, deadline).await?;
        Ok(Response::new(self.members(id)))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberNameRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        self.change_named(req, ConfChange::Promote).await
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberNameRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        self.change_named(req, ConfChange::Remove).await
    }

    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        self.check_admin(&req)?;
        let deadline = deadline(&req);
        let r = req.into_inner();
        let id = self.node.member_named(&r.name)?;
        let id = self.node.change_membership(ConfChange::Update { id, peer_url: r.peer_url }, deadline).await?;
        Ok(Response::new(self.members(id)))
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(status::status_response(&self.node, &self.node.status())))
    }

    type WatchStatusStream = status::WatchStatusStream;

    async fn watch_status(
        &self,
        req: Request<pb::WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        Ok(Response::new(status::watch(self.node.clone(), req.into_inner().log_tail)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_parses_all_units_and_rejects_garbage() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }
}
