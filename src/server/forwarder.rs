//! Writes a follower forwards to the leader travel in batches: every write that
//! queued while earlier batches were on their way goes in the next `ProposeBatch`
//! call, so that under load one RPC carries many writes instead of one each.
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::forward;
use crate::error::{Error, Result, LEADER_METADATA, NOT_APPLIED_METADATA};
use crate::mvcc::txn::TxnResult;
use crate::mvcc::Applied;
use crate::proto as pb;
use crate::raft::NodeId;
use crate::transport::PeerClient;

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

/// Starts the batching task for the peer `client` reaches (member `peer`); it ends at
/// shutdown. `leader` is the leader this node knows: writes not yet sent when another
/// member leads are given back as never sent, and their callers ask the new leader. A
/// leader that hangs (paused, or cut off with its connection still open) answers no
/// batch until the writes' deadlines, and writes queued behind those batches would
/// otherwise wait as long.
pub(super) fn spawn(
    client: PeerClient,
    peer: NodeId,
    mut leader: watch::Receiver<Option<NodeId>>,
    mut shutdown: watch::Receiver<bool>,
) -> mpsc::Sender<Forward> {
    let (tx, mut rx) = mpsc::channel::<Forward>(QUEUE);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        // A write that did not fit the last batch starts the next.
        let mut carried: Option<Forward> = None;
        let moved = |l: &Option<NodeId>| matches!(*l, Some(l) if l != peer);
        loop {
            let first = match carried.take() {
                Some(f) => f,
                None => tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => break,
                    f = rx.recv() => match f { Some(f) => f, None => break },
                },
            };
            // While every slot is taken, more writes queue and join this batch.
            let slot = tokio::select! {
                biased;
                slot = slots.clone().acquire_owned() => match slot { Ok(s) => s, Err(_) => break },
                Ok(_) = leader.wait_for(moved) => {
                    give_back(first);
                    while let Ok(f) = rx.try_recv() {
                        give_back(f);
                    }
                    continue;
                }
            };
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
            if moved(&leader.borrow()) {
                batch.into_iter().for_each(give_back);
                continue;
            }
            let client = client.clone();
            tokio::spawn(async move {
                send(client, batch).await;
                drop(slot);
            });
        }
    });
    tx
}

/// A write not sent because its leader no longer leads: the caller retries it with the
/// leader it knows now.
fn give_back(f: Forward) {
    let _ = f.reply.send(Err(Error::LeaderUnreachable("the leader changed before the write was sent to it".into())));
}

async fn send(mut client: PeerClient, mut batch: Vec<Forward>) {
    // A caller that gave up (its deadline passed) was told the write may still commit:
    // not sending it keeps that true.
    batch.retain(|f| !f.reply.is_closed());
    let Some(last) = batch.iter().map(|f| f.deadline).max() else { return };
    let deadline = last.saturating_duration_since(Instant::now());
    let mut req =
        tonic::Request::new(pb::ProposeBatchRequest { commands: batch.iter().map(|f| f.command.clone()).collect() });
    req.set_timeout(deadline);
    match client.propose_batch(req).await {
        Ok(r) => {
            let outcomes = r.into_inner().outcomes;
            if outcomes.len() != batch.len() {
                let why = format!("the leader answered {} of {} forwarded writes", outcomes.len(), batch.len());
                for f in batch {
                    let _ = f.reply.send(Err(Error::OutcomeUnknown(why.clone())));
                }
                return;
            }
            for (f, o) in batch.into_iter().zip(outcomes) {
                let _ = f.reply.send(outcome(o));
            }
        }
        // A leader of an older version (during a rolling upgrade): one call each.
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
        // The whole call failed. Only a refusal before anything was proposed (the
        // leader checks the sender and every command first) or a call never sent says
        // nothing was applied; otherwise (a lost answer, one too large to send back) the
        // writes may have been.
        Err(s) => {
            use tonic::Code;
            let refused = matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument)
                || s.metadata().contains_key(NOT_APPLIED_METADATA)
                || crate::error::is_connect_failure(&s);
            for f in batch {
                let e = if refused {
                    forward::remote_write_error(s.clone())
                } else {
                    Error::OutcomeUnknown(format!(
                        "the leader's answer to a batch of forwarded writes was lost ({})",
                        s.message()
                    ))
                };
                let _ = f.reply.send(Err(e));
            }
        }
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
}
