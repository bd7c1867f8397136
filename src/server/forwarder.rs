//! Writes a follower forwards to the leader travel in batches: every write that
//! queued while earlier batches were on their way goes in the next batch, so that
//! under load one message carries many writes instead of one each. Batches go on one
//! long-lived stream per leader (`Raft.ProposeStream`), or as `ProposeBatch` calls to a
//! leader of an older version.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};

use super::forward;
use crate::error::{Error, Result, LEADER_METADATA, NOT_APPLIED_METADATA};
use crate::mvcc::txn::TxnResult;
use crate::mvcc::Applied;
use crate::proto as pb;
use crate::raft::NodeId;
use crate::transport::{Faults, PeerClient};

/// Writes per batch at most.
const MAX_BATCH: usize = 256;
/// Batches on their way to one leader at once; while all are, new writes queue.
const MAX_IN_FLIGHT: usize = 2;
/// Writes queued per leader before callers wait.
const QUEUE: usize = 4096;
/// Bytes of commands per batch at most (a larger write goes alone), well below the
/// peer channel's message limit.
const MAX_BATCH_BYTES: usize = 16 << 20;

/// A write on its way to the leader, and who waits for its outcome.
pub(super) struct Forward {
    pub command: Bytes,
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<Applied>>,
}

/// Where a forwarder sends: the member, its client, and (tests) the faults on the link
/// from this node (`me`) to it, checked on the stream as the channel checks calls.
pub(super) struct Route {
    pub peer: NodeId,
    pub client: PeerClient,
    pub faults: Option<(Faults, String, String)>,
}

/// How long batches go as `ProposeBatch` calls after the leader refused the stream (an
/// older version), before the stream is tried again.
const UNARY_BATCHES_FOR: Duration = Duration::from_secs(60);

/// Batches sent on the stream and not answered yet, oldest first (answers come in order).
struct Sent {
    batch: Vec<Forward>,
    deadline: Instant,
}

/// One stream of batches to the leader.
struct BatchStream {
    requests: mpsc::Sender<pb::ProposeBatchRequest>,
    answers: BoxStream<'static, Result<pb::ProposeBatchResponse, tonic::Status>>,
    sent: VecDeque<Sent>,
    /// Whether any batch was answered on it (a refusal to open comes first).
    answered: bool,
}

impl BatchStream {
    /// Opens the stream; batches may be sent at once (they wait for the connection).
    fn open(mut client: PeerClient) -> BatchStream {
        let (requests, queued) = mpsc::channel(MAX_IN_FLIGHT);
        let opened = async move { client.propose_stream(tokio_stream::wrappers::ReceiverStream::new(queued)).await };
        let answers = crate::transport::answers_once_opened(opened);
        BatchStream { requests, answers, sent: VecDeque::new(), answered: false }
    }
}

/// Starts the batching task for the member `route` leads to; it ends at shutdown.
/// Batches go on one stream (`Raft.ProposeStream`), at most `MAX_IN_FLIGHT` of them
/// unanswered. `leader` is the leader this node knows: writes not yet sent when another
/// member leads are given back as never sent, and their callers ask the new leader. A
/// leader that hangs (paused, or cut off with its connection still open) answers no
/// batch until the writes' deadlines, and writes queued behind those batches would
/// otherwise wait as long.
pub(super) fn spawn(
    route: Route,
    mut leader: watch::Receiver<Option<NodeId>>,
    mut shutdown: watch::Receiver<bool>,
) -> mpsc::Sender<Forward> {
    let (tx, mut rx) = mpsc::channel::<Forward>(QUEUE);
    tokio::spawn(async move {
        let peer = route.peer;
        let moved = |l: &Option<NodeId>| matches!(*l, Some(l) if l != peer);
        // The leader now, read while `leader` waits for a change in the select below.
        let now = leader.clone();
        let mut stream: Option<BatchStream> = None;
        // Batches sent as single calls, while the leader serves no stream.
        let mut calls = tokio::task::JoinSet::new();
        let mut unary_until: Option<Instant> = None;
        // A write that did not fit the last batch starts the next.
        let mut carried: Option<Forward> = None;
        loop {
            let in_flight = stream.as_ref().map_or(0, |s| s.sent.len()) + calls.len();
            let due = stream.as_ref().and_then(|s| s.sent.front()).map(|s| s.deadline);
            let moved_now = moved(&now.borrow());
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => break,
                answer = next_answer(&mut stream) => {
                    if let Some(back) = answered(&mut stream, answer, &route) {
                        // The leader serves no stream: nothing on it was proposed.
                        tracing::info!(peer, "the leader serves no stream of forwarded writes; one call per batch");
                        unary_until = Some(Instant::now() + UNARY_BATCHES_FOR);
                        for batch in back {
                            let elsewhere = moved(&now.borrow());
                            dispatch(batch, elsewhere, &route, &mut stream, &mut calls, &mut unary_until);
                        }
                    }
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {
                    let s = stream.take().expect("a batch is due");
                    fail_sent(s.sent, "no answer from the leader within the writes' deadline");
                }
                Some(_) = calls.join_next(), if !calls.is_empty() => {}
                // With every slot taken, writes are taken off the queue only to be
                // given back: the slots may be held by a hung leader until the
                // deadlines of its batches, and another member leads now.
                first = next_write(&mut carried, &mut rx), if in_flight < MAX_IN_FLIGHT || moved_now => {
                    let Some(first) = first else { break };
                    if in_flight >= MAX_IN_FLIGHT {
                        if moved(&now.borrow()) {
                            give_back(first);
                        } else {
                            carried = Some(first);
                        }
                        continue;
                    }
                    let mut bytes = first.command.len();
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(f) if bytes + f.command.len() > MAX_BATCH_BYTES => {
                                carried = Some(f);
                                break;
                            }
                            Ok(f) => {
                                bytes += f.command.len();
                                batch.push(f);
                            }
                            Err(_) => break,
                        }
                    }
                    let elsewhere = moved(&now.borrow());
                    dispatch(batch, elsewhere, &route, &mut stream, &mut calls, &mut unary_until);
                }
                // Woken when another member starts leading, so that the writes
                // queued meanwhile go back (the branch above).
                Ok(_) = leader.wait_for(moved), if in_flight >= MAX_IN_FLIGHT && !moved_now => {}
            }
        }
    });
    tx
}

/// Sends `batch` to the leader: on the stream, or as one call while the leader serves
/// none (until `unary_until`). If another member leads now (`elsewhere`), its writes
/// go back unsent instead.
fn dispatch(
    mut batch: Vec<Forward>,
    elsewhere: bool,
    route: &Route,
    stream: &mut Option<BatchStream>,
    calls: &mut tokio::task::JoinSet<()>,
    unary_until: &mut Option<Instant>,
) {
    // A caller that gave up (its deadline passed) was told the write may still commit:
    // not sending it keeps that true.
    batch.retain(|f| !f.reply.is_closed());
    if elsewhere {
        batch.into_iter().for_each(give_back);
    } else if batch.is_empty() {
    } else if unary_until.is_some_and(|t| Instant::now() < t) {
        calls.spawn(send(route.client.clone(), batch));
    } else {
        *unary_until = None;
        send_streamed(stream, route, batch);
    }
}

async fn next_write(carried: &mut Option<Forward>, rx: &mut mpsc::Receiver<Forward>) -> Option<Forward> {
    match carried.take() {
        Some(f) => Some(f),
        None => rx.recv().await,
    }
}

/// The stream's next answer, read whenever there is a stream (so that one that ends
/// while idle is noticed and replaced).
async fn next_answer(stream: &mut Option<BatchStream>) -> Option<Result<pb::ProposeBatchResponse, tonic::Status>> {
    match stream {
        Some(s) => s.answers.next().await,
        None => std::future::pending().await,
    }
}

/// Sends `batch` on the stream, opening one if there is none.
fn send_streamed(stream: &mut Option<BatchStream>, route: &Route, batch: Vec<Forward>) {
    let deadline = batch.iter().map(|f| f.deadline).max().expect("a batch holds a write");
    if let Some((faults, me, peer)) = &route.faults {
        if let Err(e) = faults.check(me, peer) {
            return fail(batch, &format!("the leader's answer to a batch of forwarded writes was lost ({e})"));
        }
    }
    let timeout_ms = deadline.saturating_duration_since(Instant::now()).as_millis().max(1) as u64;
    let req = pb::ProposeBatchRequest { commands: batch.iter().map(|f| f.command.clone()).collect(), timeout_ms };
    // A stream whose end is not read yet: what it holds has an unknown outcome, and the
    // batch goes on a new one.
    if let Some(s) = stream.take_if(|s| s.requests.is_closed()) {
        fail_sent(s.sent, "the stream of forwarded writes to the leader broke");
    }
    let s = stream.get_or_insert_with(|| BatchStream::open(route.client.clone()));
    // Never full: it holds at most the unanswered batches, no more than its capacity.
    if s.requests.try_send(req).is_err() {
        return batch.into_iter().for_each(give_back);
    }
    s.sent.push_back(Sent { batch, deadline });
}

/// Takes an answer off the stream: the oldest batch's outcomes, or the end of the
/// stream, which fails what it still holds. Returns the batches to send again when the
/// leader refused the stream itself (an older version: nothing on it was proposed).
fn answered(
    stream: &mut Option<BatchStream>,
    answer: Option<Result<pb::ProposeBatchResponse, tonic::Status>>,
    route: &Route,
) -> Option<Vec<Vec<Forward>>> {
    let s = stream.as_mut()?;
    match answer {
        Some(Ok(r)) => {
            s.answered = true;
            let Some(Sent { batch, .. }) = s.sent.pop_front() else {
                // An answer to nothing sent: the stream is not to be trusted.
                *stream = None;
                return None;
            };
            let lost = route.faults.as_ref().and_then(|(f, me, peer)| f.answer_lost(me, peer).then_some(peer));
            if let Some(peer) = lost {
                let why = format!("the leader's answer to a batch of forwarded writes was lost (fault injection: the answer {peer} -> me was lost)");
                fail(batch, &why);
            } else {
                deliver(batch, r.outcomes);
            }
            None
        }
        Some(Err(status)) if status.code() == tonic::Code::Unimplemented && !s.answered => {
            let s = stream.take()?;
            Some(s.sent.into_iter().map(|s| s.batch).collect())
        }
        Some(Err(status)) => {
            let mut sent = stream.take()?.sent.into_iter();
            if status.metadata().contains_key(NOT_APPLIED_METADATA) {
                // The leader refused the oldest batch before proposing any of it, and
                // read none after it.
                if let Some(refused) = sent.next() {
                    failed(refused.batch, &status);
                }
                sent.flat_map(|s| s.batch).for_each(give_back);
            } else {
                sent.for_each(|s| failed(s.batch, &status));
            }
            None
        }
        None => {
            let s = stream.take()?;
            fail_sent(s.sent, "the leader ended the stream of forwarded writes");
            None
        }
    }
}

fn fail_sent(sent: VecDeque<Sent>, why: &str) {
    for Sent { batch, .. } in sent {
        fail(batch, why);
    }
}

/// Every write in `batch` has an unknown outcome, for `why`.
fn fail(batch: Vec<Forward>, why: &str) {
    for f in batch {
        let _ = f.reply.send(Err(Error::OutcomeUnknown(why.to_string())));
    }
}

/// A write not sent because its leader no longer leads: the caller retries it with the
/// leader it knows now.
fn give_back(f: Forward) {
    let _ = f.reply.send(Err(Error::LeaderUnreachable("the leader changed before the write was sent to it".into())));
}

/// The leader's answer to a batch: one outcome per write, in order.
fn deliver(batch: Vec<Forward>, outcomes: Vec<pb::ProposeOutcome>) {
    if outcomes.len() != batch.len() {
        let why = format!("the leader answered {} of {} forwarded writes", outcomes.len(), batch.len());
        return fail(batch, &why);
    }
    for (f, o) in batch.into_iter().zip(outcomes) {
        let _ = f.reply.send(outcome(o));
    }
}

/// The whole call (or stream) failed. Only a refusal before anything was proposed (the
/// leader checks the sender and every command first) or a call never sent says nothing
/// was applied; otherwise (a lost answer, one too large to send back) the writes may
/// have been.
fn failed(batch: Vec<Forward>, s: &tonic::Status) {
    use tonic::Code;
    let refused = matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument)
        || s.metadata().contains_key(NOT_APPLIED_METADATA)
        || crate::error::is_connect_failure(s);
    if refused {
        batch.into_iter().for_each(|f| drop(f.reply.send(Err(forward::remote_write_error(s.clone())))));
    } else {
        fail(batch, &format!("the leader's answer to a batch of forwarded writes was lost ({})", s.message()));
    }
}

/// One batch as one `ProposeBatch` call (a leader without the stream).
async fn send(mut client: PeerClient, batch: Vec<Forward>) {
    let Some(last) = batch.iter().map(|f| f.deadline).max() else { return };
    let mut req = tonic::Request::new(pb::ProposeBatchRequest {
        commands: batch.iter().map(|f| f.command.clone()).collect(),
        timeout_ms: 0,
    });
    req.set_timeout(last.saturating_duration_since(Instant::now()));
    match client.propose_batch(req).await {
        Ok(r) => deliver(batch, r.into_inner().outcomes),
        // A leader of an older version still (during a rolling upgrade): one call each.
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            futures::future::join_all(batch.into_iter().map(|f| {
                let mut c = client.clone();
                async move {
                    let mut req = tonic::Request::new(pb::ProposeRequest { command: f.command });
                    req.set_timeout(f.deadline.saturating_duration_since(Instant::now()));
                    let r = c.propose(req).await.map_err(forward::remote_write_error);
                    let _ = f.reply.send(r.and_then(|r| {
                        let r = r.into_inner();
                        applied(r.index, r.term, r.revision, &r.txn)
                    }));
                }
            }))
            .await;
        }
        Err(s) => failed(batch, &s),
    }
}

/// A forwarded write's answer from the leader, as this node reports it.
pub(super) fn applied(index: u64, term: u64, revision: u64, txn: &[u8]) -> Result<Applied> {
    let mut a = Applied::new(index, term, revision);
    if !txn.is_empty() {
        let txn = TxnResult::decode(txn)
            .ok_or_else(|| Error::OutcomeUnknown("the leader's answer to the transaction could not be read".into()))?;
        a.txn = Some(Arc::new(txn));
    }
    Ok(a)
}

/// One outcome of a batch, read as the status a lone Propose would have answered.
fn outcome(o: pb::ProposeOutcome) -> Result<Applied> {
    if o.code == 0 {
        return applied(o.index, o.term, o.revision, &o.txn);
    }
    let mut status = tonic::Status::new(tonic::Code::from(o.code), o.message);
    if let (false, Ok(v)) = (o.leader.is_empty(), o.leader.parse()) {
        status.metadata_mut().insert(LEADER_METADATA, v);
    }
    if o.not_applied {
        status.metadata_mut().insert(NOT_APPLIED_METADATA, tonic::metadata::MetadataValue::from_static("1"));
    }
    Err(forward::remote_write_error(status))
}

/// The leader's side: one write's result as an outcome of a batch.
pub fn to_outcome(r: Result<Applied>) -> pb::ProposeOutcome {
    match r {
        Ok(a) => pb::ProposeOutcome {
            index: a.index,
            term: a.term,
            revision: a.revision,
            txn: a.txn.map(|t| t.encode().into()).unwrap_or_default(),
            ..Default::default()
        },
        Err(e) => {
            let s = tonic::Status::from(e);
            let leader = s.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok()).unwrap_or_default();
            pb::ProposeOutcome {
                code: s.code() as i32,
                message: s.message().to_string(),
                leader: leader.to_string(),
                not_applied: s.metadata().contains_key(NOT_APPLIED_METADATA),
                ..Default::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a lone Propose's failure tells the forwarding node survives a batch:
    /// a redirect stays a redirect, a refusal not applied stays safe to retry.
    #[test]
    fn outcomes_carry_what_a_status_says() {
        let redirect = outcome(to_outcome(Err(Error::NotLeader { leader: Some("node2".into()) })));
        assert!(matches!(&redirect, Err(Error::NotLeader { leader: Some(l) }) if l == "node2"), "{redirect:?}");
        let quota = outcome(to_outcome(Err(Error::QuotaExceeded { stored: 10, quota: 5 })));
        assert!(matches!(&quota, Err(Error::Remote(s)) if s.code() == tonic::Code::ResourceExhausted), "{quota:?}");
        let ok = outcome(to_outcome(Ok(Applied::new(7, 2, 5)))).unwrap();
        assert_eq!((ok.index, ok.term, ok.revision), (7, 2, 5));
    }

    /// Sent batches, each of one write, and the receivers of their outcomes.
    fn sent_batches(n: usize) -> (VecDeque<Sent>, Vec<oneshot::Receiver<Result<Applied>>>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut sent, mut outcomes) = (VecDeque::new(), Vec::new());
        for _ in 0..n {
            let (reply, rx) = oneshot::channel();
            sent.push_back(Sent { batch: vec![Forward { command: Bytes::new(), deadline, reply }], deadline });
            outcomes.push(rx);
        }
        (sent, outcomes)
    }

    /// A stream ending with a status marked "not applied" (a refused batch, or a
    /// stopping leader) says the oldest unanswered batch and all after it were never
    /// proposed: their writes are retried elsewhere, never reported as of unknown
    /// outcome. Any other status leaves every unanswered write's outcome unknown.
    #[tokio::test]
    async fn a_refusal_marked_not_applied_makes_the_unanswered_writes_retryable() {
        let client = crate::transport::connect("127.0.0.1:1", "node1", "node2", None, None).unwrap();
        let route = Route { peer: 2, client, faults: None };
        let stream_of = |sent| {
            let (requests, _) = mpsc::channel(MAX_IN_FLIGHT);
            Some(BatchStream { requests, answers: futures::stream::empty().boxed(), sent, answered: true })
        };

        let (sent, outcomes) = sent_batches(3);
        let mut stream = stream_of(sent);
        let mut refused = tonic::Status::unavailable("the node is stopping");
        refused.metadata_mut().insert(NOT_APPLIED_METADATA, tonic::metadata::MetadataValue::from_static("1"));
        assert!(answered(&mut stream, Some(Err(refused)), &route).is_none());
        assert!(stream.is_none(), "a stream that ended is dropped");
        let mut outcomes = outcomes.into_iter();
        let first = outcomes.next().unwrap().await.unwrap();
        assert!(matches!(first, Err(Error::NoLeader)), "{first:?}");
        for rx in outcomes {
            let later = rx.await.unwrap();
            assert!(matches!(later, Err(Error::LeaderUnreachable(_))), "{later:?}");
        }

        let (sent, outcomes) = sent_batches(2);
        let mut stream = stream_of(sent);
        assert!(answered(&mut stream, Some(Err(tonic::Status::unavailable("connection reset"))), &route).is_none());
        for rx in outcomes {
            let lost = rx.await.unwrap();
            assert!(matches!(lost, Err(Error::OutcomeUnknown(_))), "{lost:?}");
        }
    }
}
