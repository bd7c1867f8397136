//! The core against hostile or broken peers: elections nobody asked for, terms out of
//! reach, answers about entries the leader never had.
use super::*;

fn vote_request(from: NodeId, to: NodeId, term: Term, transfer: bool) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::RequestVote { last_log_index: 100, last_log_term: term, pre_vote: false, transfer },
    }
}

#[test]
fn thesis_4_2_3_members_hearing_from_a_leader_ignore_an_election_nobody_asked_for() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.nodes[&1].status().term;
    // A member that was cut off (or a forged request) asks for votes in a later term:
    // neither the follower nor the leader adopts the term or grants the vote.
    for to in [3, 1] {
        let resp = c.nodes.get_mut(&to).unwrap().step(vote_request(2, to, term + 5, false)).unwrap();
        assert!(matches!(resp.body, MessageBody::RequestVoteResponse { granted: false, .. }), "node {to}");
        assert_eq!(resp.term, term, "answered in the current term, so the candidate drops it");
        assert_eq!(c.nodes[&to].status().term, term, "node {to} keeps its term");
    }
    assert_eq!(c.nodes[&1].status().role, Role::Leader);
    assert_eq!(c.nodes[&3].status().leader, Some(1));
    // An election the leader asked for (TimeoutNow) is honoured.
    let resp = c.nodes.get_mut(&3).unwrap().step(vote_request(2, 3, term + 5, true)).unwrap();
    assert!(matches!(resp.body, MessageBody::RequestVoteResponse { granted: true, .. }));
    assert_eq!(c.nodes[&3].status().term, term + 5);
}

#[test]
fn a_term_past_the_limit_is_never_adopted_and_the_last_term_is_never_passed() {
    let mut n = node(1, 3);
    assert_eq!(n.step(vote_request(2, 1, u64::MAX, true)), None, "dropped");
    assert_eq!(n.status().term, 0);
    // A node that somehow sits at the limit refuses to campaign rather than wrap.
    let hs = HardState { term: MAX_TERM, vote: None, commit: 0 };
    let mut n = RawNode::new(cfg(1, 3), hs, Vec::new()).unwrap();
    n.campaign();
    assert_eq!(n.status().term, MAX_TERM);
    assert_eq!(n.status().role, Role::Follower);
    assert!(drain(&mut n).0.is_empty(), "no vote requests");
    let mut n = RawNode::new(Config::new(1, vec![1, 2, 3]), hs, Vec::new()).unwrap();
    tick_until(&mut n, 200);
    assert_eq!(n.status().term, MAX_TERM, "no PreVote round for a term past the limit either");
}

#[test]
fn a_peer_answer_past_the_leaders_log_or_a_term_out_of_reach_changes_nothing() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.nodes[&1].status().term;
    let l = c.nodes.get_mut(&1).unwrap();
    for (success, match_index, reject_index) in [(true, 1 << 62, 0), (false, 0, 1 << 62)] {
        let body = MessageBody::AppendEntriesResponse {
            success,
            match_index,
            reject_index,
            conflict_index: 0,
            conflict_term: 0,
            round: 0,
        };
        l.step(Message { from: 2, to: 1, term, body });
        drain(l);
    }
    assert_eq!(c.nodes[&1].status().role, Role::Leader);
    c.propose(1, b"after");
    assert!(c.applied[&2].iter().any(|e| e.data.as_ref() == b"after"), "replication goes on");
    // A term far ahead of this node's is dropped, not adopted.
    let n = c.nodes.get_mut(&3).unwrap();
    assert_eq!(n.step(vote_request(2, 3, term + MAX_TERM_JUMP + 1, true)), None);
    assert_eq!(n.status().term, term);
}
