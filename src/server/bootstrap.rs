//! What a node with an empty data directory starts from: the founding membership (a
//! new cluster) or the running cluster's (joining it, `--initial-cluster-state
//! existing`). Either way it first asks the other members it is given, and refuses to
//! start afresh as a member that has already started once (etcd's "member has already
//! been bootstrapped"): an empty directory then means lost data, and a member that
//! forgot its log and votes must not vote as if it were new.
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::NodeHandle;
use crate::config::{ClusterState, NodeConfig};
use crate::proto as pb;
use crate::raft::{ConfChange, Membership, NodeId};
use crate::transport::{self, Faults};

/// How long a joining node waits for a member that lists it.
const JOIN_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "member {name} ({id:x}) has already been bootstrapped: its data directory is empty, so its data was lost; \
         remove it (raftkv member remove {name}), add it again (raftkv member add {name}=PEER_URL) and start it \
         with --initial-cluster-state existing"
    )]
    AlreadyBootstrapped { name: String, id: NodeId },
    #[error("{peer} says the cluster does not list {name}: add it first (raftkv member add {name}=PEER_URL)")]
    NotListed { name: String, peer: String },
    #[error("--initial-cluster-state existing: no member of --initial-cluster answered within {0:?}")]
    NoAnswer(Duration),
}

/// What a member answered: its name, the membership it knows, and its term and
/// commit index (how fresh that is).
struct Answer {
    peer: String,
    membership: Membership,
    fresh: (u64, u64),
}

/// The answers of the other members of `--initial-cluster` that answer within
/// `--bootstrap-timeout`, freshest first.
async fn ask_members(
    cfg: &NodeConfig,
    tls: Option<Arc<crate::tls::Reloading<rustls::ClientConfig>>>,
    faults: Option<&Faults>,
) -> Vec<Answer> {
    let wait = cfg.bootstrap_timeout;
    let asks = cfg.members.iter().filter(|m| m.name != cfg.name).filter_map(|m| {
        let addr = cfg.dial_addr(&m.name, &m.peer_addr);
        let client = transport::connect(addr, &cfg.name, &m.name, faults, tls.clone()).ok()?;
        Some(async move {
            let mut client = client;
            let mut req = tonic::Request::new(pb::MembershipRequest {});
            req.set_timeout(wait);
            let answer = tokio::time::timeout(wait, client.membership(req)).await.ok()?.ok()?.into_inner();
            match Membership::decode(&answer.membership) {
                Ok(membership) => {
                    Some(Answer { peer: m.name.clone(), membership, fresh: (answer.term, answer.commit) })
                }
                Err(e) => {
                    tracing::warn!(member = %m.name, "refused the membership it sent: {e}");
                    None
                }
            }
        })
    });
    let mut answers: Vec<Answer> = futures::future::join_all(asks).await.into_iter().flatten().collect();
    answers.sort_by_key(|a| std::cmp::Reverse(a.fresh));
    answers
}

/// For a node whose data directory is empty: the membership it starts from and its id.
/// The freshest answer (highest term, then commit index) decides: a member that lags
/// may not know of a change yet.
pub async fn prepare(
    cfg: &NodeConfig,
    founding: &Membership,
    tls: Option<Arc<crate::tls::Reloading<rustls::ClientConfig>>>,
    faults: Option<&Faults>,
) -> Result<(Membership, NodeId), BootstrapError> {
    let name = cfg.name.clone();
    match cfg.initial_cluster_state {
        ClusterState::New => {
            // Members that do not answer are starting too (or down): the founding
            // membership. One that answers knows better (a cluster already running, a
            // member added to it since): its membership, if it lists this node.
            match ask_members(cfg, tls, faults).await.into_iter().next() {
                None => Ok((founding.clone(), founding.id_of(&name).expect("validated: in --initial-cluster"))),
                Some(a) => {
                    let id = a
                        .membership
                        .id_of(&name)
                        .ok_or_else(|| BootstrapError::NotListed { name: name.clone(), peer: a.peer.clone() })?;
                    if a.membership.members[&id].started {
                        return Err(BootstrapError::AlreadyBootstrapped { name, id });
                    }
                    Ok((a.membership, id))
                }
            }
        }
        ClusterState::Existing => {
            let give_up = Instant::now() + JOIN_WAIT;
            loop {
                let freshest = ask_members(cfg, tls.clone(), faults).await.into_iter().next();
                if let Some(a) = &freshest {
                    if let Some(id) = a.membership.id_of(&name) {
                        if a.membership.members[&id].started {
                            return Err(BootstrapError::AlreadyBootstrapped { name, id });
                        }
                        tracing::info!(from = %a.peer, id = format!("{id:x}"), members = a.membership.members.len(), "joining the cluster");
                        return Ok((a.membership.clone(), id));
                    }
                }
                // Not listed yet (the member asked may not have the change yet), or
                // nobody answered: asked again, for a while.
                if Instant::now() > give_up {
                    return Err(match freshest {
                        Some(a) => BootstrapError::NotListed { name, peer: a.peer },
                        None => BootstrapError::NoAnswer(JOIN_WAIT),
                    });
                }
                tracing::info!("waiting for a member of --initial-cluster that lists this node");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Once it knows a leader, a member records that it has started (`Publish`), retrying
/// until that is committed; a member already recorded does nothing, and one that is
/// not in its own configuration (removed, or a joining node still replaying older
/// configurations) waits until it is. It also waits until every other member runs a
/// raftkv that can read the entry: during a rolling upgrade from a version without
/// membership changes, an entry the old members cannot read would stop them.
pub async fn publish(node: NodeHandle, mut shutdown: watch::Receiver<bool>) {
    let me = node.id();
    let pause = node.0.election_timeout;
    loop {
        match node.membership().members.get(&me) {
            Some(m) if m.started => return,
            Some(_) if !node.members_know_membership(pause * 4).await => {
                tracing::debug!("not every member answers Raft.Membership yet; recording the start later");
            }
            Some(_) => {
                let attempt = node.change_membership(ConfChange::Publish(me), pause * 10);
                let result = tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    r = attempt => r,
                };
                match result {
                    Ok(_) => {
                        tracing::info!("recorded in the membership as started");
                        return;
                    }
                    Err(e) => tracing::debug!("recording this member as started: {e}; retrying"),
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
