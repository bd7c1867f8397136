//! Peer transport: one lazily connected tonic channel per peer, a bounded outbound
//! queue per peer drained by its own task, and the `Raft` gRPC service.
pub mod convert;
pub mod fault;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
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
) -> Result<PeerClient, String> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("peer {to} address {addr:?}: {e}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let channel = match tls {
        Some(cfg) => crate::tls::reloading_channel(ep, addr, cfg).map_err(|e| format!("peer {to}: {e}"))?,
        None => ep.connect_lazy(),
    };
    let svc: PeerChannel = match faults {
        Some(f) => BoxCloneSyncService::new(f.layer(from, to).layer(channel)),
        None => BoxCloneSyncService::new(channel.map_err(|e| PeerError::from_transport(&e))),
    };
    Ok(RaftClient::new(svc).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Starts the sender task of one peer and returns its queue. Answers (or the failure
/// to get one) go back to the driver as `Input::Raft`.
pub fn spawn_peer(
    me: NodeId,
    peer: NodeId,
    client: PeerClient,
    my_name: String,
    driver: mpsc::Sender<Input>,
    rpc_timeout: Duration,
    store: Arc<Store>,
) -> mpsc::Sender<Message> {
    let (tx, mut rx) = mpsc::channel::<Message>(PEER_QUEUE);
    tokio::spawn(async move {
        let mut inflight = FuturesUnordered::new();
        loop {
            tokio::select! {
                m = rx.recv(), if inflight.len() < PEER_CONCURRENCY => match m {
                    Some(m) => inflight.push(call(client.clone(), m, &my_name, me, peer, rpc_timeout, store.clone())),
                    None => break,
                },
                Some(answer) = inflight.next() => {
                    let Some(answer) = answer else { continue };
                    if driver.send(Input::Raft { msg: answer, reply: None }).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    tx
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
    let req = convert::request_to_pb(m, my_name);
    let timeout = if matches!(req, Some(Request::Snapshot { .. })) { SNAPSHOT_TIMEOUT } else { rpc_timeout };
    async move {
        let body = match req {
            Some(Request::Snapshot { .. }) => MessageBody::SnapshotFailed,
            _ => MessageBody::Unreachable,
        };
        let unreachable = Message { from: peer, to: me, term: 0, body };
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
