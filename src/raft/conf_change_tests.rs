//! Configuration changes (Raft thesis §4.1, §4.2.2), on a lossless network of cores.
use super::*;
use crate::raft::membership::{ConfChange, ConfChangeError};

fn add(id: NodeId, learner: bool) -> ConfChange {
    ConfChange::Add { name: id.to_string(), peer_url: format!("http://n{id}:1"), learner }
}

/// Proposes `change` on the leader `id`, and starts a new member's node (empty, knowing
/// the new membership, as a joining node starts) when it adds one.
fn change(c: &mut Cluster, id: NodeId, change: ConfChange) -> Result<NodeId, ConfChangeError> {
    let leader = c.nodes.get_mut(&id).unwrap();
    let (_, changed) = leader.propose_conf_change(&change)?;
    if matches!(change, ConfChange::Add { .. }) {
        let mut config = cfg(changed, 0);
        config.membership = Some(leader.membership().clone());
        c.nodes.insert(changed, RawNode::new(config, HardState::default(), Vec::new()).unwrap());
    }
    Ok(changed)
}

/// One heartbeat interval of the leader `id`.
fn heartbeat(c: &mut Cluster, id: NodeId) {
    let ticks = c.nodes[&id].cfg.heartbeat_ticks;
    for _ in 0..ticks {
        c.nodes.get_mut(&id).unwrap().tick();
    }
}

fn role(c: &Cluster, id: NodeId) -> Role {
    c.nodes[&id].status().role
}

#[test]
fn conf_4_1_a_learner_receives_the_log_but_neither_campaigns_nor_counts() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, b"before");
    assert_eq!(change(&mut c, 1, add(4, true)), Ok(4));
    // One change at a time: the next waits for this one to commit.
    assert_eq!(c.nodes.get_mut(&1).unwrap().propose_conf_change(&add(5, false)), Err(ConfChangeError::Pending));
    c.settle();
    let last = c.nodes[&1].log().last_index();
    assert_eq!(c.nodes[&4].log().last_index(), last, "the learner holds the whole log");
    assert_eq!(c.nodes[&4].status().commit, last);
    assert!(c.nodes.values().all(|n| n.membership().is_learner(4)));
    // A learner never campaigns, however long it hears nothing.
    c.cut = vec![4];
    for _ in 0..200 {
        c.nodes.get_mut(&4).unwrap().tick();
    }
    c.settle();
    assert_eq!(role(&c, 4), Role::Follower);
    assert_eq!(c.nodes[&4].status().term, c.nodes[&1].status().term);
    // Commits do not wait for it: two of the three voters suffice.
    let i = c.propose(1, b"without the learner");
    assert!(c.nodes[&1].status().commit >= i);
}

#[test]
fn conf_4_1_a_learner_is_promoted_only_once_caught_up_and_then_counts() {
    let mut c = Cluster::new(3);
    c.elect(1);
    for _ in 0..10 {
        c.propose(1, b"x");
    }
    c.cut = vec![4];
    change(&mut c, 1, add(4, true)).unwrap();
    c.settle();
    let behind = c.nodes.get_mut(&1).unwrap().propose_conf_change(&ConfChange::Promote(4));
    assert!(matches!(behind, Err(ConfChangeError::LearnerBehind { id: 4, matched: 0, .. })), "{behind:?}");
    assert_eq!(
        c.nodes.get_mut(&1).unwrap().propose_conf_change(&ConfChange::Promote(2)),
        Err(ConfChangeError::NotALearner(2))
    );
    c.cut.clear();
    // The paused probe to the learner is resent with the next heartbeat.
    heartbeat(&mut c, 1);
    c.settle();
    change(&mut c, 1, ConfChange::Promote(4)).unwrap();
    c.settle();
    assert!(c.nodes.values().all(|n| n.membership().is_voter(4) && n.membership().voter_count() == 4));
    // Four voters: a majority is three, so two cut off stop commits.
    c.cut = vec![3, 4];
    let before = c.nodes[&1].status().commit;
    let i = c.nodes.get_mut(&1).unwrap().propose(Bytes::from_static(b"needs three"), true).unwrap().0;
    c.settle();
    assert_eq!(c.nodes[&1].status().commit, before, "committed without a majority of four");
    c.cut = vec![3];
    // Two heartbeat intervals: the first finds no progress, the second resends.
    for _ in 0..2 {
        heartbeat(&mut c, 1);
        c.settle();
    }
    assert!(c.nodes[&1].status().commit >= i, "the promoted learner counts");
}

#[test]
fn conf_4_1_a_new_leader_changes_nothing_before_committing_in_its_term() {
    let mut n = node(1, 1);
    n.campaign();
    assert_eq!(n.status().role, Role::Leader);
    assert_eq!(n.propose_conf_change(&add(2, true)), Err(ConfChangeError::Pending));
    drain(&mut n);
    assert_eq!(n.propose_conf_change(&add(2, true)).map(|(_, id)| id), Ok(2));
}

#[test]
fn conf_4_2_2_a_leader_that_removes_itself_steps_down_once_committed_and_hands_over() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.nodes[&1].status().term;
    change(&mut c, 1, ConfChange::Remove(1)).unwrap();
    // Until the removal commits it leads, but takes no new writes: it would learn
    // nothing of their fate once it steps down.
    let refused = c.nodes.get_mut(&1).unwrap().propose(bytes::Bytes::from_static(b"late"), true);
    assert_eq!(refused, Err(crate::raft::ProposeError::Transferring));
    c.settle();
    assert_eq!(role(&c, 1), Role::Follower);
    let leaders: Vec<NodeId> = [2, 3].into_iter().filter(|&i| role(&c, i) == Role::Leader).collect();
    assert_eq!(leaders.len(), 1, "the most up-to-date voter took over at once");
    assert!(c.nodes[&leaders[0]].status().term > term);
    assert!(c.nodes.values().all(|n| !n.membership().contains(1)));
    // The removed node never campaigns again.
    for _ in 0..200 {
        c.nodes.get_mut(&1).unwrap().tick();
    }
    c.settle();
    assert_eq!(role(&c, 1), Role::Follower);
    let i = c.propose(leaders[0], b"two voters");
    assert!(c.nodes[&leaders[0]].status().commit >= i);
}

#[test]
fn conf_4_1_a_truncated_change_takes_its_configuration_with_it() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.cut = vec![1];
    c.nodes.get_mut(&1).unwrap().propose_conf_change(&add(4, true)).unwrap();
    c.settle();
    assert!(c.nodes[&1].membership().contains(4), "in force once appended");
    c.elect(2);
    c.propose(2, b"new leader");
    c.cut.clear();
    heartbeat(&mut c, 2);
    c.settle();
    assert_eq!(c.nodes[&1].log().last_index(), c.nodes[&2].log().last_index());
    assert!(!c.nodes[&1].membership().contains(4), "the entry was replaced, and its configuration");
    assert_eq!(c.nodes[&1].membership().members.len(), 3);
}

#[test]
fn a_member_recorded_as_started_is_recorded_once() {
    let mut c = Cluster::new(3);
    c.elect(1);
    change(&mut c, 1, ConfChange::Publish(2)).unwrap();
    c.settle();
    assert!(c.nodes.values().all(|n| n.membership().members[&2].started));
    let last = c.nodes[&1].log().last_index();
    let (index, id) = c.nodes.get_mut(&1).unwrap().propose_conf_change(&ConfChange::Publish(2)).unwrap();
    assert_eq!((index, id, c.nodes[&1].log().last_index()), (0, 2, last), "no second entry");
    assert_eq!(
        c.nodes.get_mut(&1).unwrap().propose_conf_change(&ConfChange::Publish(9)),
        Err(ConfChangeError::NotAMember(9))
    );
}
