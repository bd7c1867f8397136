//! The peer gRPC service `raftkv.v1.Raft`.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesOrdered, Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use rustls::pki_types::CertificateDer;

use super::convert::{self, Names};
use super::Faults;
use crate::proto as pb;
use crate::server::NodeHandle;

/// Writes one ProposeBatch may carry (a forwarding node sends at most 256).
const MAX_FORWARDED_BATCH: usize = 1024;

/// A forwarded command is checked before the log sees it: an entry no member can
/// decode helps nobody.
fn check_forwarded(command: &[u8]) -> Result<(), Status> {
    match crate::mvcc::Command::decode(command) {
        Some(_) => Ok(()),
        None => Err(Status::invalid_argument("a forwarded command that does not decode")),
    }
}

pub struct RaftService {
    node: NodeHandle,
    /// A snapshot stream longer than this is refused before it is built.
    max_snapshot_bytes: u64,
    /// Peers present certificates of the cluster's CA (`--peer-client-cert-auth`): a
    /// certificate that names a member may speak only as that member.
    certified_peers: bool,
    /// With fault injection: this node's name, to refuse streamed appends while it is
    /// isolated (the `IsolationLayer` refuses calls only as they open), or the stream
    /// itself (as a version without it).
    faults: Option<(Faults, String)>,
}

impl RaftService {
    pub fn new(
        node: NodeHandle,
        max_snapshot_bytes: u64,
        certified_peers: bool,
        faults: Option<(Faults, String)>,
    ) -> Self {
        RaftService { node, max_snapshot_bytes, certified_peers, faults }
    }

    /// Refuses a request that claims to come from `claimed` while its certificate
    /// names another member. A certificate that names no member (one for every node,
    /// say) is trusted as any member: the CA vouched for it.
    /// A forwarded client request (Propose, ReadIndex, TransferLeader) must come from
    /// a member, whichever.
    fn check_member<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if !self.certified_peers {
            return Ok(());
        }
        member_certificate(req.peer_certs().as_deref(), self.node.names()).map(|_| ())
    }

    fn check_identity<T>(&self, req: &Request<T>, claimed: &str) -> Result<(), Status> {
        if !self.certified_peers {
            return Ok(());
        }
        speaks_for(req.peer_certs().as_deref(), self.node.names(), claimed)
    }

    /// Hands a received snapshot to the driver, which installs it if the core accepts it.
    async fn offer_snapshot(
        &self,
        received: Result<(u64, crate::raft::NodeId, crate::mvcc::snapshot::Built), Status>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        // Dropping `built` without installing it removes it.
        let (term, from, built) = received?;
        let (index, snap_term, membership) = (built.index, built.term, built.membership.clone());
        convert::check_index("snapshot index", index)?;
        if snap_term > term {
            return Err(Status::invalid_argument(format!(
                "snapshot term {snap_term} is past the leader's term {term}"
            )));
        }
        let msg = crate::raft::Message {
            from,
            to: self.node.id(),
            term,
            body: crate::raft::MessageBody::InstallSnapshot { index, term: snap_term, membership },
        };
        // The driver installs it or, if the core refuses it, drops it.
        let answer = self.node.install_snapshot(msg, built).await;
        Ok(Response::new(convert::append_response_to_pb(answer?)?))
    }
}

/// Appends read from one stream and not yet answered, at most: the stream reads no
/// more until answers go (the leader keeps at most this many in flight).
pub const STREAM_WINDOW: usize = 64;

/// The answer to one request of a stream, once its work is done.
type Answer<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;
type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves a stream of requests in order: one task reads them and hands each to `step`
/// (which checks it and starts its work), and the answers go back in that order as
/// each is ready. A request `step` refuses ends the stream, after the answers to those
/// before it, with why. So does a stopping node (`stopped`; its server waits for every
/// call to end), with `stopping`: nothing after the answered requests was started. A
/// sender that closed its side ends it with no status.
fn in_order<Req, T, S, F, I>(
    stopped: impl Future<Output = ()> + Send + 'static,
    stopping: Status,
    mut inbound: I,
    mut step: S,
) -> Answers<T>
where
    Req: Send + 'static,
    T: Send + 'static,
    I: Stream<Item = Result<Req, Status>> + Send + Unpin + 'static,
    S: FnMut(Req) -> F + Send + 'static,
    F: Future<Output = Result<Answer<T>, Status>> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_WINDOW);
    tokio::spawn(async move {
        let mut answers = FuturesOrdered::new();
        tokio::pin!(stopped);
        let refused = loop {
            tokio::select! {
                biased;
                _ = &mut stopped => break Some(stopping),
                Some(answer) = answers.next() => {
                    if tx.send(answer).await.is_err() {
                        return;
                    }
                }
                next = inbound.next(), if answers.len() < STREAM_WINDOW => {
                    let Some(Ok(r)) = next else { break None };
                    match step(r).await {
                        Ok(answer) => answers.push_back(answer),
                        Err(refused) => break Some(refused),
                    }
                }
            }
        };
        // What was started is answered first, then why the stream ended.
        while let Some(answer) = answers.next().await {
            if tx.send(answer).await.is_err() {
                return;
            }
        }
        if let Some(refused) = refused {
            let _ = tx.send(Err(refused)).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Resolves once `node` stops.
async fn stopped(node: NodeHandle) {
    node.stopped().await
}

/// Why a stream ends when its node stops.
fn stopping() -> Status {
    Status::unavailable("the node is stopping")
}

/// A batch refused on a stream of forwarded writes ends the stream: neither it nor any
/// after it was proposed, which its status says.
fn not_applied(mut refused: Status) -> Status {
    let v = tonic::metadata::MetadataValue::from_static("1");
    refused.metadata_mut().insert(crate::error::NOT_APPLIED_METADATA, v);
    refused
}

/// Checks a batch of forwarded writes, then proposes them together (the driver takes
/// them in one batch); the answer, in order, once each is applied or has failed.
fn propose_forwarded(
    node: NodeHandle,
    commands: Vec<bytes::Bytes>,
    deadline: Duration,
) -> Result<Answer<pb::ProposeBatchResponse>, Status> {
    if commands.len() > MAX_FORWARDED_BATCH {
        return Err(Status::invalid_argument(format!(
            "a batch of {} forwarded writes (at most {MAX_FORWARDED_BATCH})",
            commands.len()
        )));
    }
    commands.iter().try_for_each(|c| check_forwarded(c))?;
    Ok(Box::pin(async move {
        let outcomes = futures::future::join_all(commands.into_iter().map(|command| {
            let node = node.clone();
            async move {
                let r = node.forwarded(deadline, || node.propose_here(command.clone(), deadline)).await;
                crate::server::batch_outcome(r)
            }
        }))
        .await;
        Ok(pb::ProposeBatchResponse { outcomes })
    }))
}

/// Checks one streamed append as `append_entries` does and feeds it to the core; the
/// answer comes later. Refused: the stream ends with why.
async fn step_streamed(
    node: &NodeHandle,
    r: pb::AppendEntriesRequest,
    certs: Option<&Option<Arc<Vec<CertificateDer<'static>>>>>,
    isolation: Option<&(Faults, String)>,
) -> Result<Answer<pb::AppendEntriesResponse>, Status> {
    if let Some((faults, me)) = isolation {
        if faults.is_isolated(me) {
            return Err(Status::unavailable(format!("fault injection: {me} is isolated")));
        }
    }
    if let Some(certs) = certs {
        speaks_for(certs.as_deref(), node.names(), &r.leader)?;
    }
    let msg = convert::append_request_from_pb(r, node.id(), node.names())?;
    let answer = node.step_queued(msg).await?;
    Ok(Box::pin(async move {
        let m = answer.await.map_err(|_| Status::from(crate::error::Error::Shutdown))?;
        convert::append_response_to_pb(m)
    }))
}

/// A request that claims to come from `claimed` is refused unless its certificate
/// names that member (a DNS name `NAME` or `NAME.<domain>`): a client certificate of the
/// same CA, or one certificate shared by all nodes, cannot speak for a member.
fn speaks_for(certs: Option<&Vec<CertificateDer<'static>>>, names: &Names, claimed: &str) -> Result<(), Status> {
    let named = member_certificate(certs, names)?;
    if named.iter().any(|n| n == claimed) {
        return Ok(());
    }
    Err(Status::permission_denied(format!("a certificate of {} cannot speak for {claimed:?}", named.join(", "))))
}

/// The members a peer's certificate names; refused if it names none.
fn member_certificate(certs: Option<&Vec<CertificateDer<'static>>>, names: &Names) -> Result<Vec<String>, Status> {
    let leaf =
        certs.and_then(|c| c.first()).ok_or_else(|| Status::unauthenticated("a peer certificate is required"))?;
    let named = convert::members_named(names, &crate::tls::dns_names(leaf));
    if named.is_empty() {
        return Err(Status::permission_denied("the peer certificate names no member of this cluster"));
    }
    Ok(named)
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn request_vote(
        &self,
        req: Request<pb::RequestVoteRequest>,
    ) -> Result<Response<pb::RequestVoteResponse>, Status> {
        self.check_identity(&req, &req.get_ref().candidate)?;
        let msg = convert::vote_request_from_pb(req.into_inner(), self.node.id(), self.node.names())?;
        let answer = self.node.step_request(msg).await?;
        Ok(Response::new(convert::vote_response_to_pb(answer)))
    }

    async fn append_entries(
        &self,
        req: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        self.check_identity(&req, &req.get_ref().leader)?;
        let msg = convert::append_request_from_pb(req.into_inner(), self.node.id(), self.node.names())?;
        let answer = self.node.step_request(msg).await?;
        Ok(Response::new(convert::append_response_to_pb(answer)?))
    }

    type AppendStreamStream = Answers<pb::AppendEntriesResponse>;

    /// Appends are fed to the core in the order they arrive on the stream (one task
    /// reads them), and answered in that order once the core answers each.
    async fn append_stream(
        &self,
        req: Request<Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        if let Some((faults, me)) = &self.faults {
            if faults.refuses_appends_stream(me) {
                return Err(Status::unimplemented("fault injection: this node serves no appends stream"));
            }
        }
        let certs = if self.certified_peers { Some(req.peer_certs()) } else { None };
        let (node, isolation) = (self.node.clone(), self.faults.clone());
        let answers = in_order(stopped(self.node.clone()), stopping(), req.into_inner(), move |r| {
            let (node, certs, isolation) = (node.clone(), certs.clone(), isolation.clone());
            async move { step_streamed(&node, r, certs.as_ref(), isolation.as_ref()).await }
        });
        Ok(Response::new(answers))
    }

    async fn propose(&self, req: Request<pb::ProposeRequest>) -> Result<Response<pb::ProposeResponse>, Status> {
        self.check_member(&req)?;
        let deadline = crate::api::deadline(&req);
        let command = req.into_inner().command;
        check_forwarded(&command)?;
        let a = self.node.forwarded(deadline, || self.node.propose_here(command.clone(), deadline)).await?;
        let txn = a.txn.map(|t| t.encode().into()).unwrap_or_default();
        Ok(Response::new(pb::ProposeResponse { index: a.index, term: a.term, revision: a.revision, txn }))
    }

    async fn propose_batch(
        &self,
        req: Request<pb::ProposeBatchRequest>,
    ) -> Result<Response<pb::ProposeBatchResponse>, Status> {
        self.check_member(&req)?;
        let deadline = crate::api::deadline(&req);
        let answer = propose_forwarded(self.node.clone(), req.into_inner().commands, deadline)?;
        Ok(Response::new(answer.await?))
    }

    type ProposeStreamStream = Answers<pb::ProposeBatchResponse>;

    async fn propose_stream(
        &self,
        req: Request<Streaming<pb::ProposeBatchRequest>>,
    ) -> Result<Response<Self::ProposeStreamStream>, Status> {
        if let Some((faults, me)) = &self.faults {
            if faults.refuses_propose_stream(me) {
                return Err(Status::unimplemented("fault injection: this node serves no stream of forwarded writes"));
            }
        }
        // The sender is a member for the stream's whole life (its certificate is the
        // connection's).
        self.check_member(&req)?;
        let (node, isolation) = (self.node.clone(), self.faults.clone());
        // A stopping leader proposes none of the batches it has not read: their writes go
        // to the next leader.
        let answers = in_order(
            stopped(self.node.clone()),
            not_applied(stopping()),
            req.into_inner(),
            move |batch: pb::ProposeBatchRequest| {
                let (node, isolation) = (node.clone(), isolation.clone());
                async move {
                    if let Some((faults, me)) = &isolation {
                        if faults.is_isolated(me) {
                            return Err(not_applied(Status::unavailable(format!("fault injection: {me} is isolated"))));
                        }
                    }
                    let deadline = match batch.timeout_ms {
                        0 => crate::config::MAX_REQUEST_WAIT,
                        ms => crate::api::server_wait(Duration::from_millis(ms)),
                    };
                    propose_forwarded(node, batch.commands, deadline).map_err(not_applied)
                }
            },
        );
        Ok(Response::new(answers))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::InstallSnapshotChunk>>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        // The stream goes to a file first, then into a new engine file, off the async
        // workers; nothing of the current state changes until the core accepts it.
        let started = std::time::Instant::now();
        // Who sent it (once the first chunk says so and checks out), and how much came.
        let (mut sender, mut bytes) = (None, 0u64);
        let certified = if self.certified_peers { Some(req.peer_certs()) } else { None };
        let mut stream = req.into_inner();
        let store = self.node.store().clone();
        let tmp = store.install_path().with_extension("receiving");
        let (me, names, max) = (self.node.id(), self.node.names().clone(), self.max_snapshot_bytes);
        let received = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| Status::internal(e.to_string()))?;
            let (mut term, mut leader, mut offset, mut from) = (0, String::new(), 0u64, 0);
            loop {
                let Some(chunk) = stream.message().await? else {
                    return Err(Status::invalid_argument("snapshot stream ended before its last chunk"));
                };
                if offset == 0 {
                    // Who sends it, and in which term, is checked before anything is kept.
                    from = names.sender(&chunk.leader, chunk.sender_id, me)?;
                    if let Some(certs) = &certified {
                        speaks_for(certs.as_deref(), &names, &chunk.leader)?;
                    }
                    convert::check_term("term", chunk.term)?;
                    (term, leader) = (chunk.term, chunk.leader.clone());
                    // A sender not yet a member here is "unknown": a forged name must
                    // not grow the metric series.
                    sender = names.knows(from).then(|| chunk.leader.clone());
                }
                if chunk.offset != offset || chunk.term != term || chunk.leader != leader {
                    return Err(Status::invalid_argument("snapshot chunks out of order"));
                }
                if offset + chunk.data.len() as u64 > max {
                    return Err(Status::resource_exhausted(format!("a snapshot stream longer than {max} bytes")));
                }
                file.write_all(&chunk.data).await.map_err(|e| Status::internal(e.to_string()))?;
                offset += chunk.data.len() as u64;
                bytes = offset;
                if chunk.done {
                    break;
                }
            }
            file.flush().await.map_err(|e| Status::internal(e.to_string()))?;
            let path = tmp.clone();
            let built = tokio::task::spawn_blocking(move || crate::mvcc::snapshot::build(&store, &path))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            Ok::<_, Status>((term, from, built))
        }
        .await;
        let _ = tokio::fs::remove_file(&tmp).await;
        let answer = self.offer_snapshot(received).await;
        let installed = answer.as_ref().is_ok_and(|a| a.get_ref().success);
        self.node.metrics().telemetry.snapshot_receipt(sender, bytes, started.elapsed(), installed);
        answer
    }

    async fn timeout_now(
        &self,
        req: Request<pb::TimeoutNowRequest>,
    ) -> Result<Response<pb::TimeoutNowResponse>, Status> {
        self.check_identity(&req, &req.get_ref().leader)?;
        let msg = convert::timeout_now_from_pb(req.into_inner(), self.node.id(), self.node.names())?;
        self.node.step_oneway(msg).await?;
        Ok(Response::new(pb::TimeoutNowResponse {}))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.check_member(&req)?;
        crate::api::transfer_leader(&self.node, req).await
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::ChangeMembershipResponse>, Status> {
        self.check_member(&req)?;
        let deadline = crate::api::deadline(&req);
        // Only a member itself says that it has started.
        if req.get_ref().kind == pb::change_membership_request::Kind::Publish as i32 {
            let name = self.node.names().name(req.get_ref().id);
            self.check_identity(&req, &name)?;
        }
        let change = convert::conf_change_from_pb(req.into_inner())?;
        let (id, index) = self.node.change_membership_here(change, deadline).await?;
        Ok(Response::new(pb::ChangeMembershipResponse { id, index }))
    }

    /// Answered to anyone who reaches the peer port (with peer TLS, a member's
    /// certificate): the membership is no secret among members, and a node joining
    /// needs it before it is one.
    async fn membership(
        &self,
        req: Request<pb::MembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.check_member(&req)?;
        let st = self.node.status();
        let membership = self.node.membership().encode().to_vec();
        Ok(Response::new(pb::MembershipResponse { membership, term: st.term, commit: st.commit }))
    }

    async fn client_urls(
        &self,
        req: Request<pb::ClientUrlsRequest>,
    ) -> Result<Response<pb::ClientUrlsResponse>, Status> {
        self.check_member(&req)?;
        Ok(Response::new(pb::ClientUrlsResponse { urls: self.node.client_urls().to_vec() }))
    }

    async fn lease_query(
        &self,
        req: Request<pb::LeaseQueryRequest>,
    ) -> Result<Response<pb::LeaseQueryResponse>, Status> {
        self.check_member(&req)?;
        let deadline = crate::api::deadline(&req);
        let pb::LeaseQueryRequest { id, renew, keys } = req.into_inner();
        let info = self.node.forwarded(deadline, || self.node.lease_query_here(id, renew, keys, deadline)).await?;
        Ok(Response::new(pb::LeaseQueryResponse { ttl: info.ttl, granted_ttl: info.granted_ttl, keys: info.keys }))
    }

    async fn read_index(&self, req: Request<pb::ReadIndexRequest>) -> Result<Response<pb::ReadIndexResponse>, Status> {
        self.check_member(&req)?;
        let deadline = crate::api::deadline(&req);
        let index = self.node.forwarded(deadline, || self.node.read_index_here(deadline)).await?;
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::{mpsc, oneshot, watch};

    /// A stopping node answers what it started, then says that it stops: the requests
    /// it had not read were not started, and a forwarded batch among them is marked
    /// not applied, so that its writes go to the next leader.
    #[tokio::test]
    async fn a_stopping_node_answers_what_it_started_then_says_it_stops() {
        let (requests, inbound) = mpsc::unbounded_channel::<Result<u32, Status>>();
        let (stop, mut stop_rx) = watch::channel(false);
        let stopped = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        let stepped = Arc::new(AtomicUsize::new(0));
        let (release, released) = oneshot::channel::<()>();
        let mut released = Some(released);
        let counted = stepped.clone();
        let mut answers = in_order(
            stopped,
            not_applied(stopping()),
            tokio_stream::wrappers::UnboundedReceiverStream::new(inbound),
            move |r: u32| {
                counted.fetch_add(1, Ordering::SeqCst);
                let gate = released.take();
                async move {
                    let answer: Answer<u32> = Box::pin(async move {
                        if let Some(gate) = gate {
                            let _ = gate.await;
                        }
                        Ok(r * 10)
                    });
                    Ok(answer)
                }
            },
        );
        requests.send(Ok(1)).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stepped.load(Ordering::SeqCst) < 1 {
            assert!(std::time::Instant::now() < deadline, "the first request was never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(true).unwrap();
        // Sent after the stop: never started (the stop is taken before any request).
        requests.send(Ok(2)).unwrap();
        release.send(()).unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), answers.next()).await.unwrap();
        assert_eq!(first.unwrap().unwrap(), 10);
        let last = tokio::time::timeout(Duration::from_secs(10), answers.next()).await.unwrap();
        let status = last.expect("a status after the answers").expect_err("the stop ends the stream with a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.metadata().contains_key(crate::error::NOT_APPLIED_METADATA), "{status:?}");
        assert!(tokio::time::timeout(Duration::from_secs(10), answers.next()).await.unwrap().is_none());
        assert_eq!(stepped.load(Ordering::SeqCst), 1, "a request read after the stop was started");
    }
}
