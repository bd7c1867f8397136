//! A StatefulSet that scales by itself. A pod past the founding size joins as a
//! learner (`bootstrap::prepare`, `--join-as-learner`) and promotes itself here once it
//! has caught up; a pod that Kubernetes stops because the StatefulSet was scaled down
//! removes itself from the membership before it exits (`--leave-on-scale-down`).
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::NodeHandle;
use crate::kube::StatefulSet;
use crate::raft::ConfChange;

/// `--join-as-learner`: while this member is a learner, asks the leader to promote it
/// (refused until it has caught up: etcd's 90 % rule) every two election timeouts;
/// done once it votes. It first waits until its start is recorded (`Publish`): a voter
/// never recorded as started that lost its data could start again as a fresh member
/// and forget its votes. A node still replaying older configurations, which do not
/// list it yet, waits.
pub async fn promote(node: NodeHandle, mut shutdown: watch::Receiver<bool>) {
    let me = node.id();
    let pause = node.0.election_timeout * 2;
    let mut last_refusal = String::new();
    let mut asked = false;
    loop {
        match node.membership().members.get(&me) {
            Some(m) if !m.learner => {
                // Also when an attempt whose answer was lost made it.
                if asked {
                    tracing::info!("promoted from learner to voting member");
                }
                return;
            }
            Some(m) if !m.started => {}
            Some(_) => {
                asked = true;
                let attempt = node.change_membership(ConfChange::Promote(me), pause * 10);
                let result = tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    r = attempt => r,
                };
                match result {
                    Ok(_) => continue,
                    Err(e) => {
                        // Said once per kind of refusal, not every round.
                        let refusal = e.to_string();
                        let kind = refusal.split(" (").next().unwrap_or_default().to_string();
                        if kind != last_refusal {
                            tracing::info!("asking to be promoted: {refusal}; asking again while catching up");
                            last_refusal = kind;
                        }
                    }
                }
            }
            None => {}
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// What a stopping pod found out and did.
#[derive(Debug, PartialEq, Eq)]
pub enum Leaving {
    /// Its ordinal is still wanted (a restart, an eviction, an upgrade): it stays a member.
    Stays { replicas: u32 },
    /// Scaled down: removed from the membership.
    Left { replicas: u32 },
    /// Scaled down, but the removal did not commit within the budget.
    Failed { replicas: u32, error: String },
    /// The API server could not tell: it stays a member.
    Unknown(String),
    /// One of the founding members (`--initial-cluster-size`): it stays a member.
    Founder,
}

/// `--leave-on-scale-down`, on SIGTERM: unless `ordinal` is one of the first `founders`,
/// asks the API server how many replicas the StatefulSet wants; if `ordinal` is no
/// longer among them, removes this member (through
/// the leader; a leader removing itself steps down once it commits), retrying within
/// `budget` while another change is in progress.
pub async fn leave_if_scaled_down(
    node: &NodeHandle,
    sts: &StatefulSet,
    (ordinal, founders): (u32, u32),
    budget: Duration,
) -> Leaving {
    let start = Instant::now();
    // A founding member never leaves by itself: scaled below the founding size and back,
    // a founder's pod would come back empty and, if nobody answered it at once, found a
    // new cluster with the other founders. Shrinking below it is done by hand.
    if ordinal < founders {
        tracing::info!("a founding member: stopping as a member (remove it by hand to shrink the cluster)");
        return Leaving::Founder;
    }
    let replicas = match sts.replicas(budget.min(Duration::from_secs(5))).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("cannot tell whether the StatefulSet is scaling down ({e}): stopping as a member");
            return Leaving::Unknown(e.to_string());
        }
    };
    if ordinal < replicas {
        tracing::info!(replicas, "the StatefulSet still wants this pod: stopping as a member");
        return Leaving::Stays { replicas };
    }
    // Scaled to zero: a pause (every pod stops), not a smaller cluster.
    if replicas == 0 {
        tracing::info!("the StatefulSet is scaled to 0 (paused): stopping as a member");
        return Leaving::Stays { replicas };
    }
    let me = node.id();
    tracing::info!(replicas, "the StatefulSet is scaled down past this pod: removing this member");
    let mut error = String::new();
    while let Some(left) = budget.checked_sub(start.elapsed()).filter(|l| !l.is_zero()) {
        if !node.membership().contains(me) {
            tracing::info!("removed from the membership");
            return Leaving::Left { replicas };
        }
        match node.change_membership(ConfChange::Remove(me), left).await {
            Ok(_) => {
                tracing::info!("removed from the membership");
                return Leaving::Left { replicas };
            }
            // A member removed is not sent its own removal: an earlier attempt whose
            // answer was lost may have made it.
            Err(crate::error::Error::Membership(crate::raft::ConfChangeError::NotAMember(id))) if id == me => {
                tracing::info!("removed from the membership");
                return Leaving::Left { replicas };
            }
            Err(e @ crate::error::Error::Membership(crate::raft::ConfChangeError::LastVoter)) => {
                error = e.to_string();
                break;
            }
            Err(e) => {
                error = e.to_string();
                tracing::info!("removing this member: {error}; trying again");
                tokio::time::sleep(node.0.election_timeout.min(left)).await;
            }
        }
    }
    tracing::warn!("could not remove this member before stopping: {error}; it stays listed until removed");
    Leaving::Failed { replicas, error }
}
