//! Peer transport: one lazily connected tonic channel per peer, a bounded outbound
//! queue per peer drained by its own task, and the `Raft` gRPC service.
pub mod convert;
pub mod fault;
pub mod service;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

use crate::mvcc::Store;
use crate::proto as pb;
use crate::proto::raft_client::RaftClient;
use crate::raft::{Message, MessageBody, NodeId};
use crate::server::Input;
use convert::Request;
pub use fault::{Faults, PeerError};

pub type PeerChannel =
    BoxCloneSyncService<http::Request<tonic::body::BoxBody>, http::Response<tonic::body::BoxBody>, PeerError>;
pub type PeerClient = RaftClient<PeerChannel>;

/// Messages queued per peer before the driver treats the peer as unreachable.
const PEER_QUEUE: usize = 256;
/// Requests in flight per peer (the core bounds appends carrying entries further).
const PEER_CONCURRENCY: usize = 16;
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A client for the peer at `addr`, over TLS with `tls` (its CA and this node's pair).
/// Connects lazily and reconnects on demand.
pub fn connect(
    addr: &str,
    from: &str,
    to: &str,
    faults: Option<&Faults>,
    tls: Option<Arc<crate::tls::Reloading<rustls::ClientConfig>>>,
) -> Result<PeerClient, PeerError> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| PeerError(format!("peer {to} address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let channel = match tls {
        Some(cfg) => crate::tls::reloading_channel(ep, addr, cfg).map_err(|e| PeerError(format!("peer {to}: {e}")))?,
        None => ep.connect_lazy(),
    };
    let svc: PeerChannel = match faults {
        Some(f) => BoxCloneSyncService::new(f.layer(from, to).layer(channel)),
        None => BoxCloneSyncService::new(channel.map_err(|e| PeerError::from_transport(&e))),
    };
    Ok(RaftClient::new(svc).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// The two ends of a peer queue, and the faults injected on that link (tests).
pub struct Ends {
    pub me: NodeId,
    pub peer: NodeId,
    pub my_name: String,
    pub peer_name: String,
    pub faults: Option<Faults>,
}

/// How long appends go as single calls after a peer refused the stream (an older
/// version), before the stream is tried again.
const UNARY_APPENDS_FOR: Duration = Duration::from_secs(60);

/// Starts the sender task of one peer and returns its queue. Appends go on one stream
/// (`Raft.AppendStream`), so that the peer's core takes them in the order sent; other
/// messages as calls of their own. Answers (or the failure to get one) go back to the
/// driver as `Input::Raft`.
pub fn spawn_peer(
    ends: Ends,
    client: PeerClient,
    driver: mpsc::Sender<Input>,
    rpc_timeout: Duration,
    store: Arc<Store>,
) -> mpsc::Sender<Message> {
    let (tx, mut rx) = mpsc::channel::<Message>(PEER_QUEUE);
    let Ends { me, peer, .. } = ends;
    tokio::spawn(async move {
        let mut inflight = FuturesUnordered::new();
        let mut appends: Option<AppendStream> = None;
        let mut unary_until: Option<Instant> = None;
        let unreachable = Message::unreachable(peer, me);
        loop {
            let room = inflight.len() < PEER_CONCURRENCY
                && appends.as_ref().is_none_or(|s| s.deadlines.len() < service::STREAM_WINDOW);
            let due = appends.as_ref().and_then(|s| s.deadlines.front().copied());
            let answer = tokio::select! {
                m = rx.recv(), if room => {
                    let Some(m) = m else { break };
                    let streamed = matches!(m.body, MessageBody::AppendEntries { .. })
                        && unary_until.is_none_or(|t| Instant::now() >= t);
                    if !streamed {
                        inflight.push(call(client.clone(), m, &ends.my_name, me, peer, rpc_timeout, store.clone()));
                        continue;
                    }
                    match send_streamed(&mut appends, &client, m, &ends, rpc_timeout) {
                        Ok(()) => continue,
                        Err(why) => {
                            tracing::debug!(peer, "appends stream: {why}");
                            appends = None;
                            Some(unreachable.clone())
                        }
                    }
                }
                Some(answer) = inflight.next() => answer,
                answer = next_answer(&mut appends) => match streamed_answer(answer, &mut appends, &ends) {
                    Ok(answer) => Some(answer),
                    Err(failure) => {
                        let outstanding = appends.take().is_some_and(|s| !s.deadlines.is_empty());
                        if failure.refused {
                            tracing::info!(peer, "the peer serves no appends stream; sending appends one call each");
                            unary_until = Some(Instant::now() + UNARY_APPENDS_FOR);
                        } else if outstanding {
                            tracing::debug!(peer, "appends stream: {}", failure.why);
                        }
                        outstanding.then(|| unreachable.clone())
                    }
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    tracing::debug!(peer, "appends stream: no answer within {rpc_timeout:?}");
                    appends = None;
                    Some(unreachable.clone())
                }
            };
            let Some(answer) = answer else { continue };
            if driver.send(Input::Raft { msg: answer, reply: None }).await.is_err() {
                break;
            }
        }
    });
    tx
}

/// The answers on a stream being opened, once it is: a refusal to open it comes as its
/// only item (the stream of appends, and of forwarded writes).
pub(crate) fn answers_once_opened<T: Send + 'static>(
    opened: impl std::future::Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>> + Send + 'static,
) -> BoxStream<'static, Result<T, tonic::Status>> {
    futures::stream::once(opened)
        .flat_map(|opened| match opened {
            Ok(answers) => answers.into_inner().boxed(),
            Err(refused) => futures::stream::once(std::future::ready(Err(refused))).boxed(),
        })
        .boxed()
}

/// The appends to one peer on one stream, answered in the order sent.
struct AppendStream {
    requests: mpsc::Sender<pb::AppendEntriesRequest>,
    /// The peer's answers to the appends sent on it, in order.
    answers: BoxStream<'static, Result<pb::AppendEntriesResponse, tonic::Status>>,
    /// When each unanswered append is given up, oldest first.
    deadlines: VecDeque<Instant>,
}

impl AppendStream {
    /// Opens the stream; appends may be sent at once (they wait for the connection).
    fn open(mut client: PeerClient) -> AppendStream {
        let (requests, queued) = mpsc::channel(service::STREAM_WINDOW);
        let opened = async move { client.append_stream(tokio_stream::wrappers::ReceiverStream::new(queued)).await };
        let answers = answers_once_opened(opened);
        AppendStream { requests, answers, deadlines: VecDeque::new() }
    }
}

/// Sends an append on the stream, opening one if there is none.
fn send_streamed(
    appends: &mut Option<AppendStream>,
    client: &PeerClient,
    m: Message,
    ends: &Ends,
    rpc_timeout: Duration,
) -> Result<(), PeerError> {
    if let Some(faults) = &ends.faults {
        faults.check(&ends.my_name, &ends.peer_name)?;
    }
    let Some(Request::Append(r)) = convert::request_to_pb(m, &ends.my_name) else {
        return Err(PeerError("not an append".into()));
    };
    let s = appends.get_or_insert_with(|| AppendStream::open(client.clone()));
    // Never full: it holds at most the unanswered appends, no more than its capacity.
    s.requests.try_send(r).map_err(|e| PeerError(format!("the stream is gone: {e}")))?;
    s.deadlines.push_back(Instant::now() + rpc_timeout);
    Ok(())
}

async fn next_answer(appends: &mut Option<AppendStream>) -> Option<Result<pb::AppendEntriesResponse, tonic::Status>> {
    match appends {
        Some(s) => s.answers.next().await,
        None => std::future::pending().await,
    }
}

/// Why the appends stream is given up.
struct StreamFailure {
    why: String,
    /// The peer does not serve the stream.
    refused: bool,
}

/// The driver's message for the next answer on the appends stream.
fn streamed_answer(
    answer: Option<Result<pb::AppendEntriesResponse, tonic::Status>>,
    appends: &mut Option<AppendStream>,
    ends: &Ends,
) -> Result<Message, StreamFailure> {
    let fail = |why: String| StreamFailure { why, refused: false };
    let r = match answer {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            return Err(StreamFailure { refused: e.code() == tonic::Code::Unimplemented, why: e.message().to_string() })
        }
        None => return Err(fail("the peer ended it".into())),
    };
    let s = appends.as_mut().ok_or_else(|| fail("no stream".into()))?;
    if s.deadlines.is_empty() {
        return Err(fail("an answer to no append".into()));
    }
    // The append stays outstanding until its answer is taken: a lost or refused
    // answer makes the peer unreachable, as for a single call.
    if let Some(faults) = &ends.faults {
        if faults.answer_lost(&ends.my_name, &ends.peer_name) {
            return Err(fail("fault injection: the answer was lost".into()));
        }
    }
    let m = convert::append_response_from_pb(r, ends.me, ends.peer).map_err(|e| {
        tracing::warn!(peer = ends.peer, "refused a peer's answer: {}", e.message());
        fail(e.message().to_string())
    })?;
    s.deadlines.pop_front();
    Ok(m)
}

/// Snapshot files go to followers in chunks of this size.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// A snapshot transfer may take this long before it is given up and retried.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// A consistent view of the store, streamed as it is read (by a blocking task that
/// stops when the receiver goes away), as InstallSnapshot chunks.
fn snapshot_chunks(
    store: Arc<Store>,
    term: u64,
    leader: String,
    sender_id: NodeId,
) -> impl futures::Stream<Item = pb::InstallSnapshotChunk> {
    let (tx, rx) = mpsc::channel::<Option<Vec<u8>>>(4);
    tokio::task::spawn_blocking(move || {
        let sent = crate::mvcc::snapshot::stream(&store, SNAPSHOT_CHUNK, |chunk| tx.blocking_send(Some(chunk)).is_ok());
        match sent {
            Ok((index, _)) => {
                tracing::info!(index, "snapshot streamed");
                let _ = tx.blocking_send(None);
            }
            // The stream then ends without its last chunk, which the follower refuses.
            Err(e) => tracing::warn!("streaming a snapshot failed: {e}"),
        }
    });
    futures::stream::unfold((rx, 0u64), move |(mut rx, offset)| {
        let leader = leader.clone();
        async move {
            let chunk = rx.recv().await?;
            let done = chunk.is_none();
            let data = chunk.unwrap_or_default();
            let next = offset + data.len() as u64;
            Some((pb::InstallSnapshotChunk { term, leader, offset, data, done, sender_id }, (rx, next)))
        }
    })
}

/// An answer that fails validation counts as no answer (the peer is then unreachable).
fn refused(peer: NodeId, answer: Result<Message, tonic::Status>) -> Option<Message> {
    answer.map_err(|e| tracing::warn!(peer, "refused a peer's answer: {}", e.message())).ok()
}

fn call(
    mut client: PeerClient,
    m: Message,
    my_name: &str,
    me: NodeId,
    peer: NodeId,
    rpc_timeout: Duration,
    store: Arc<Store>,
) -> impl std::future::Future<Output = Option<Message>> {
    let unreachable = Message::undelivered(&m.body, peer, me);
    let req = convert::request_to_pb(m, my_name);
    let timeout = if matches!(req, Some(Request::Snapshot { .. })) { SNAPSHOT_TIMEOUT } else { rpc_timeout };
    async move {
        // Some(None): delivered, and the request has no answer.
        let answer = async {
            match req? {
                Request::Vote(r) => {
                    let pre_vote = r.pre_vote;
                    let r = client.request_vote(r).await.ok()?.into_inner();
                    Some(Some(refused(peer, convert::vote_response_from_pb(r, me, peer, pre_vote))?))
                }
                Request::Append(r) => {
                    let r = client.append_entries(r).await.ok()?.into_inner();
                    Some(Some(refused(peer, convert::append_response_from_pb(r, me, peer))?))
                }
                Request::TimeoutNow(r) => {
                    client.timeout_now(r).await.ok()?;
                    Some(None)
                }
                Request::Snapshot { term, leader, sender_id } => {
                    let chunks = snapshot_chunks(store, term, leader, sender_id);
                    let r = match client.install_snapshot(chunks).await {
                        Ok(r) => r.into_inner(),
                        Err(e) => {
                            tracing::warn!(peer, "sending a snapshot failed: {}", e.message());
                            return None;
                        }
                    };
                    Some(Some(refused(peer, convert::append_response_from_pb(r, me, peer))?))
                }
            }
        };
        tokio::time::timeout(timeout, answer).await.ok().flatten().unwrap_or(Some(unreachable))
    }
}
