//! What a node with an empty data directory starts from: the founding membership (a
//! new cluster) or the running cluster's (joining it, `--initial-cluster-state
//! existing`). Either way it first asks the other members it is given, and refuses to
//! start afresh as a member that has already started once (etcd's "member has already
//! been bootstrapped"): an empty directory then means lost data, and a member that
//! forgot its log and votes must not vote as if it were new.
use std::collections::{BTreeMap, BTreeSet, VecDeque};
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
    #[error("--join-as-learner: {name} could not join the cluster: {error}")]
    JoinFailed { name: String, error: JoinRefused },
    #[error("--initial-cluster-state existing: no member of --initial-cluster answered within {0:?}")]
    NoAnswer(Duration),
}

/// Why a configuration change a joining node asked for was not made (the last answer).
#[derive(Debug, thiserror::Error)]
pub enum JoinRefused {
    #[error("no member answered")]
    NoAnswer,
    #[error("{peer}: {error}")]
    Unreachable { peer: String, error: String },
    #[error("{peer} refused {change:?}: {message}")]
    Refused { peer: String, change: ConfChange, message: String },
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
/// may not know of a change yet. With `--join-as-learner`, a node the cluster does not
/// list asks to be added as a learner, then asks again. One listed as started is
/// refused, whatever the flags: an empty directory then means lost data, or a mistake
/// (a wrong volume) that removing it automatically would make worse.
pub async fn prepare(
    cfg: &NodeConfig,
    founding: &Membership,
    tls: Option<Arc<crate::tls::Reloading<rustls::ClientConfig>>>,
    faults: Option<&Faults>,
) -> Result<(Membership, NodeId), BootstrapError> {
    let name = cfg.name.clone();
    let give_up = Instant::now() + JOIN_WAIT;
    let mut asked: Option<JoinRefused> = None;
    loop {
        let answers = ask_members(cfg, tls.clone(), faults).await;
        let listed = answers.first().map(|a| (a, a.membership.id_of(&name)));
        let change = match (cfg.initial_cluster_state, listed) {
            // Members that do not answer are starting too (or down): the founding
            // membership. One that answers knows better (a cluster already running, a
            // member added to it since): its membership, if it lists this node.
            (ClusterState::New, None) => {
                return Ok((founding.clone(), founding.id_of(&name).expect("validated: in --initial-cluster")))
            }
            (_, Some((a, Some(id)))) if !a.membership.members[&id].started => {
                tracing::info!(from = %a.peer, id = format!("{id:x}"), members = a.membership.members.len(), "joining the cluster");
                return Ok((a.membership.clone(), id));
            }
            (_, Some((_, Some(id)))) => return Err(BootstrapError::AlreadyBootstrapped { name, id }),
            (_, Some((_, None))) if cfg.join_as_learner => {
                let url = cfg.members.iter().find(|m| m.name == name).expect("validated: in --initial-cluster");
                let scheme = if cfg.peer_tls.is_some() { "https" } else { "http" };
                tracing::info!("the cluster does not list this node: asking to be added as a learner");
                Some(ConfChange::Add {
                    name: name.clone(),
                    peer_url: format!("{scheme}://{}", url.peer_addr),
                    learner: true,
                })
            }
            (ClusterState::New, Some((a, None))) => {
                return Err(BootstrapError::NotListed { name: name.clone(), peer: a.peer.clone() })
            }
            // `existing`, not listed yet (the member asked may not have the change
            // yet), or nobody answered: asked again, for a while.
            (ClusterState::Existing, _) => {
                tracing::info!("waiting for a member of --initial-cluster that lists this node");
                None
            }
        };
        if let Some(change) = change {
            asked = ask_change(cfg, &answers, &change, tls.clone(), faults).await.err();
            if let Some(e) = &asked {
                tracing::info!("{e}; asking again");
            }
        }
        if Instant::now() > give_up {
            return Err(match (asked, answers.into_iter().next()) {
                (Some(error), _) => BootstrapError::JoinFailed { name, error },
                (None, Some(a)) => BootstrapError::NotListed { name, peer: a.peer },
                (None, None) => BootstrapError::NoAnswer(JOIN_WAIT),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Asks the members that answered, freshest first, to make `change`: only the leader
/// does, and a member that is not names it, so the leader is asked next wherever it
/// is (a member added since the founding, say). The last refusal if none made it.
async fn ask_change(
    cfg: &NodeConfig,
    answers: &[Answer],
    change: &ConfChange,
    tls: Option<Arc<crate::tls::Reloading<rustls::ClientConfig>>>,
    faults: Option<&Faults>,
) -> Result<(), JoinRefused> {
    // Where each member is: --initial-cluster, else the freshest membership's URLs.
    let mut addrs: BTreeMap<String, String> = answers
        .first()
        .map(|a| a.membership.members.values().map(|m| (m.name.clone(), super::peers::peer_addr(&m.peer_url).into())))
        .into_iter()
        .flatten()
        .collect();
    addrs.extend(cfg.members.iter().map(|m| (m.name.clone(), m.peer_addr.clone())));
    let mut queue: VecDeque<String> = answers.iter().map(|a| a.peer.clone()).collect();
    let mut tried = BTreeSet::new();
    let mut refused = JoinRefused::NoAnswer;
    while let Some(peer) = queue.pop_front() {
        let Some(addr) = addrs.get(&peer).filter(|_| tried.insert(peer.clone())) else { continue };
        let addr = cfg.dial_addr(&peer, addr);
        let mut client = match transport::connect(addr, &cfg.name, &peer, faults, tls.clone()) {
            Ok(c) => c,
            Err(e) => {
                refused = JoinRefused::Unreachable { peer, error: e.to_string() };
                continue;
            }
        };
        let mut req = tonic::Request::new(transport::convert::conf_change_to_pb(change));
        req.set_timeout(cfg.bootstrap_timeout * 5);
        match client.change_membership(req).await {
            Ok(r) => {
                tracing::info!(via = %peer, id = format!("{:x}", r.get_ref().id), "membership changed: {change:?}");
                return Ok(());
            }
            Err(s) => {
                if let Some(leader) = s.metadata().get(crate::error::LEADER_METADATA).and_then(|v| v.to_str().ok()) {
                    queue.push_front(leader.to_string());
                }
                refused = JoinRefused::Refused { peer, change: change.clone(), message: s.message().to_string() };
            }
        }
    }
    Err(refused)
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
