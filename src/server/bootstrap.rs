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

/// How long each member is given to answer.
const ASK_WAIT: Duration = Duration::from_secs(2);
/// How long a joining node waits for any member to answer.
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

/// The membership each other member of `--initial-cluster` reports, from those that
/// answer within `ASK_WAIT`: (its name, its membership).
async fn ask_members(
    cfg: &NodeConfig,
    tls: Option<Arc<crate::tls::Reloading<rustls::ClientConfig>>>,
    faults: Option<&Faults>,
) -> Vec<(String, Membership)> {
    let asks = cfg.members.iter().filter(|m| m.name != cfg.name).filter_map(|m| {
        let client = transport::connect(&m.peer_addr, &cfg.name, &m.name, faults, tls.clone()).ok()?;
        Some(async move {
            let mut client = client;
            let mut req = tonic::Request::new(pb::MembershipRequest {});
            req.set_timeout(ASK_WAIT);
            let answer = tokio::time::timeout(ASK_WAIT, client.membership(req)).await.ok()?.ok()?;
            match Membership::decode(&answer.into_inner().membership) {
                Ok(membership) => Some((m.name.clone(), membership)),
                Err(e) => {
                    tracing::warn!(member = %m.name, "refused the membership it sent: {e}");
                    None
                }
            }
        })
    });
    futures::future::join_all(asks).await.into_iter().flatten().collect()
}

/// This node's id in `m`, unless `m` lists it as started already or not at all.
fn place_in(m: &Membership, name: &str, peer: &str) -> Result<NodeId, BootstrapError> {
    let id = m.id_of(name).ok_or_else(|| BootstrapError::NotListed { name: name.into(), peer: peer.into() })?;
    if m.members[&id].started {
        return Err(BootstrapError::AlreadyBootstrapped { name: name.into(), id });
    }
    Ok(id)
}

/// For a node whose data directory is empty: the membership it starts from and its id.
pub async fn prepare(
    cfg: &NodeConfig,
    founding: &Membership,
    tls: Option<Arc<crate::tls::Reloading<rustls::ClientConfig>>>,
    faults: Option<&Faults>,
) -> Result<(Membership, NodeId), BootstrapError> {
    match cfg.initial_cluster_state {
        ClusterState::New => {
            // Members that do not answer are starting too (or down): nothing to learn.
            for (peer, m) in ask_members(cfg, tls, faults).await {
                place_in(&m, &cfg.name, &peer)?;
            }
            let id = founding.id_of(&cfg.name).expect("validated: the name is in --initial-cluster");
            Ok((founding.clone(), id))
        }
        ClusterState::Existing => {
            let give_up = Instant::now() + JOIN_WAIT;
            loop {
                if let Some((peer, m)) = ask_members(cfg, tls.clone(), faults).await.into_iter().next() {
                    let id = place_in(&m, &cfg.name, &peer)?;
                    tracing::info!(from = %peer, id = format!("{id:x}"), members = m.members.len(), "joining the cluster");
                    return Ok((m, id));
                }
                if Instant::now() > give_up {
                    return Err(BootstrapError::NoAnswer(JOIN_WAIT));
                }
                tracing::info!("waiting for a member of --initial-cluster to answer");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Once it knows a leader, a member records that it has started (`Publish`), retrying
/// until that is committed; a member already recorded does nothing.
pub async fn publish(node: NodeHandle, mut shutdown: watch::Receiver<bool>) {
    let me = node.id();
    let pause = node.0.election_timeout;
    loop {
        if node.membership().members.get(&me).is_some_and(|m| m.started) {
            return;
        }
        match node.change_membership(ConfChange::Publish(me), pause * 10).await {
            Ok(_) => {
                tracing::info!("recorded in the membership as started");
                return;
            }
            Err(e) => {
                let status = tonic::Status::from(e);
                if status.code() == tonic::Code::NotFound {
                    tracing::warn!("this node is not a member of the cluster (removed?): {}", status.message());
                    return;
                }
                tracing::debug!("recording this member as started: {}; retrying", status.message());
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
