//! Configuration changes asked of any node: carried out by the leader, wherever it
//! is, and answered once the change is applied on the node asked too (so that what it
//! then lists shows the change).
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{forward, Input, NodeHandle};
use crate::error::{Error, Result};
use crate::raft::{ConfChange, ConfChangeError, Index, Membership, NodeId};
use crate::transport::{convert, PeerClient};

/// How often a leader retries a change while another one is still in progress.
const PENDING_RETRY: Duration = Duration::from_millis(20);

impl NodeHandle {
    /// The configuration in force, as this node knows it.
    pub fn membership(&self) -> std::sync::Arc<Membership> {
        self.0.peers.names.membership()
    }

    /// The id of the member named `name` in the configuration in force.
    pub fn member_named(&self, name: &str) -> Result<NodeId> {
        self.membership().id_of(name).ok_or_else(|| Error::Membership(ConfChangeError::UnknownName(name.into())))
    }

    /// Whether every other member answers `Raft.Membership` within `wait`: all run a
    /// raftkv that knows membership changes (an older one answers UNIMPLEMENTED, and
    /// could not read a configuration entry).
    pub async fn members_know_membership(&self, wait: Duration) -> bool {
        let asks = self.0.peers.clients().into_iter().map(|(_, mut client)| async move {
            let mut req = tonic::Request::new(crate::proto::MembershipRequest {});
            req.set_timeout(wait);
            matches!(tokio::time::timeout(wait, client.membership(req)).await, Ok(Ok(_)))
        });
        futures::future::join_all(asks).await.into_iter().all(|ok| ok)
    }

    /// Makes `change` through the leader, wherever it is. Answers with the id of the
    /// member it concerns (a new member's new id) once it is applied there and here
    /// (a node removing itself is not sent the change: it answers once committed).
    pub async fn change_membership(&self, change: ConfChange, deadline: Duration) -> Result<NodeId> {
        let start = Instant::now();
        let here = || self.change_membership_here(change.clone(), deadline);
        let remote = |_, mut client: PeerClient| {
            let req = convert::conf_change_to_pb(&change);
            async move {
                // A transport failure with the request on its way may have left the
                // change appended: outcome unknown, not "not applied".
                let r = client.change_membership(req).await.map_err(forward::remote_write_error)?.into_inner();
                Ok((r.id, r.index))
            }
        };
        let (id, index) = self.via_leader(deadline, here, remote).await?;
        if change != ConfChange::Remove(self.id()) {
            let left = deadline.saturating_sub(start.elapsed());
            tokio::time::timeout(left, self.wait_applied(index)).await.map_err(|_| Error::Timeout)??;
        }
        Ok(id)
    }

    /// On the leader: appends `change` (waiting while another change is in progress)
    /// and waits until it is applied. Answers with the member it concerns and the
    /// change's index (0: nothing had to be appended).
    pub async fn change_membership_here(&self, change: ConfChange, deadline: Duration) -> Result<(NodeId, Index)> {
        let work = async {
            let (index, id, on_applied) = loop {
                let (applied, on_applied) = oneshot::channel();
                let change = change.clone();
                match self.ask(|reply| Input::ConfChange { change, reply, applied }).await? {
                    Ok((index, id)) => break (index, id, on_applied),
                    // One change at a time: the one in progress commits within a round
                    // trip or two (or a new leader commits its first entry).
                    Err(Error::Membership(ConfChangeError::Pending)) => tokio::time::sleep(PENDING_RETRY).await,
                    Err(e) => return Err(e),
                }
            };
            // Handed over and appended, then dropped unanswered: it may still commit.
            on_applied
                .await
                .map_err(|_| Error::OutcomeUnknown("the node stopped before the change committed".into()))??;
            Ok((id, index))
        };
        tokio::time::timeout(deadline, work).await.map_err(|_| Error::Timeout)?
    }
}
