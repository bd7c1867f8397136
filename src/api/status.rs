//! `Status` and `WatchStatus`: a node's view of the cluster, once or as it changes.
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

use crate::proto as pb;
use crate::raft::{EntryKind, Membership, Role};
use crate::server::{NodeHandle, NodeStatus};

/// The most log entries one `WatchStatus` answer lists.
pub const MAX_LOG_TAIL: u32 = 64;
/// The least time between two `WatchStatus` answers: changes in between are folded
/// into the next.
const MIN_GAP: Duration = Duration::from_millis(50);

/// The longest time between two `WatchStatus` answers, changed or not.
const HEARTBEAT: Duration = Duration::from_secs(1);

pub type WatchStatusStream = Pin<Box<dyn Stream<Item = Result<pb::WatchStatusResponse, Status>> + Send>>;

/// `Status`'s answer: the node's status `st`, its membership and its store.
pub fn status_response(node: &NodeHandle, st: &NodeStatus) -> pb::StatusResponse {
    let names = |m: &Membership, learners: bool| -> Vec<String> {
        m.members.values().filter(|m| m.learner == learners).map(|m| m.name.clone()).collect()
    };
    let members = node.membership();
    let store = node.store().status();
    let role = match st.role {
        Role::Follower => pb::Role::Follower,
        Role::Candidate => pb::Role::Candidate,
        Role::Leader => pb::Role::Leader,
    };
    pb::StatusResponse {
        name: node.name().to_string(),
        role: role as i32,
        term: st.term,
        leader: st.leader.map(|l| node.names().name(l)).unwrap_or_default(),
        commit_index: st.commit,
        applied_index: st.applied,
        last_log_index: st.last_index,
        members: names(&members, false),
        learners: names(&members, true),
        revision: store.revision,
        compact_revision: store.compacted,
        db_size_in_use: store.stored_bytes,
        db_size: store.file_bytes,
    }
}

/// A stream of the node's status: now, then after each change (role, term, vote,
/// leader, log, commit, applied) at most one per `MIN_GAP`, and at least one per
/// `HEARTBEAT`.
pub fn watch(node: NodeHandle, log_tail: u32) -> Result<WatchStatusStream, Status> {
    if log_tail > MAX_LOG_TAIL {
        return Err(Status::invalid_argument(format!("log_tail is {log_tail}; at most {MAX_LOG_TAIL}")));
    }
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let mut status = node.status_watch();
        let mut applied = node.store().applied_watch();
        loop {
            status.mark_unchanged();
            applied.mark_unchanged();
            let Ok(answer) = view(&node, log_tail as usize).await else { return };
            if tx.send(Ok(answer)).await.is_err() {
                return;
            }
            tokio::time::sleep(MIN_GAP).await;
            tokio::select! {
                changed = status.changed() => if changed.is_err() { return },
                changed = applied.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
                // A watcher tells a silent node from a stuck one by this.
                () = tokio::time::sleep(HEARTBEAT) => {}
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

async fn view(node: &NodeHandle, log_tail: usize) -> crate::error::Result<pb::WatchStatusResponse> {
    let (st, tail) = node.status_view(log_tail).await?;
    let kind = |k: EntryKind| match k {
        EntryKind::Normal => "command",
        EntryKind::Noop => "noop",
        EntryKind::ConfChange => "config",
    };
    Ok(pb::WatchStatusResponse {
        status: Some(status_response(node, &st)),
        voted_for: st.vote.map(|v| node.names().name(v)).unwrap_or_default(),
        first_log_index: st.first_index,
        log_tail: tail
            .into_iter()
            .map(|(index, term, k)| pb::LogEntryInfo { index, term, kind: kind(k).to_string() })
            .collect(),
    })
}
