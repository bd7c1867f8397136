//! Unit tests of the core, named after the Raft paper's sections.
use std::collections::{BTreeMap, VecDeque};

use super::*;

/// The paper's classic elections; PreVote has tests of its own below.
fn cfg(id: NodeId, n: u64) -> Config {
    let mut c = Config::new(id, (1..=n).collect());
    c.pre_vote = false;
    c
}

fn node(id: NodeId, n: u64) -> RawNode {
    RawNode::new(cfg(id, n), HardState::default(), Vec::new()).unwrap()
}

/// Persists instantly and returns the messages and applied entries of one ready.
fn drain(n: &mut RawNode) -> (Vec<Message>, Vec<Entry>) {
    let mut msgs = Vec::new();
    let mut applied = Vec::new();
    while n.has_ready() {
        let rd = n.ready();
        if rd.must_persist() {
            n.on_persisted(rd.number);
        }
        msgs.extend(rd.messages);
        msgs.extend(rd.persisted_messages);
        applied.extend(rd.committed);
    }
    (msgs, applied)
}

/// A lossless, synchronous network of cores.
struct Cluster {
    nodes: BTreeMap<NodeId, RawNode>,
    applied: BTreeMap<NodeId, Vec<Entry>>,
    cut: Vec<NodeId>,
}

impl Cluster {
    fn new(n: u64) -> Self {
        Cluster { nodes: (1..=n).map(|i| (i, node(i, n))).collect(), applied: BTreeMap::new(), cut: Vec::new() }
    }

    fn settle(&mut self) {
        let mut queue: VecDeque<Message> = VecDeque::new();
        loop {
            for (id, n) in self.nodes.iter_mut() {
                let (msgs, applied) = drain(n);
                queue.extend(msgs);
                self.applied.entry(*id).or_default().extend(applied);
            }
            let Some(m) = queue.pop_front() else { break };
            if self.cut.contains(&m.from) || self.cut.contains(&m.to) {
                continue;
            }
            let to = self.nodes.get_mut(&m.to).unwrap();
            if let Some(resp) = to.step(m) {
                let (msgs, applied) = drain(to);
                let id = to.id();
                queue.extend(msgs);
                self.applied.entry(id).or_default().extend(applied);
                queue.push_back(resp);
            }
        }
    }

    fn elect(&mut self, id: NodeId) {
        self.nodes.get_mut(&id).unwrap().campaign();
        self.settle();
        assert_eq!(self.nodes[&id].status().role, Role::Leader);
    }

    fn propose(&mut self, id: NodeId, data: &'static [u8]) -> Index {
        let (i, _) = self.nodes.get_mut(&id).unwrap().propose(Bytes::from_static(data), true).unwrap();
        self.settle();
        i
    }
}

fn tick_until(n: &mut RawNode, ticks: u32) -> Vec<Message> {
    let mut out = Vec::new();
    for _ in 0..ticks {
        n.tick();
        out.extend(drain(n).0);
    }
    out
}

#[test]
fn config_validate_rejects_bad_timing() {
    let mut c = cfg(1, 3);
    c.heartbeat_ticks = 10;
    c.election_ticks = 15;
    assert!(matches!(c.validate(), Err(ConfigError::Timing { .. })));
    assert_eq!(Config::new(4, vec![1, 2, 3]).validate(), Err(ConfigError::NotAVoter(4)));
}

#[test]
fn paper_5_2_follower_becomes_candidate_after_election_timeout() {
    let mut n = node(1, 3);
    // The timeout is randomized within [election, 2 * election).
    let msgs = tick_until(&mut n, 2 * 15);
    let st = n.status();
    assert_eq!(st.role, Role::Candidate);
    assert_eq!(st.term, 1);
    assert_eq!(st.vote, Some(1));
    let votes: Vec<_> = msgs.iter().filter(|m| matches!(m.body, MessageBody::RequestVote { .. })).collect();
    assert_eq!(votes.len(), 2, "asks both peers for votes");
}

#[test]
fn paper_5_2_randomized_timeouts_differ_between_nodes() {
    let timeouts: Vec<u32> = (1..=5)
        .map(|id| {
            let mut n = node(id, 5);
            let mut t = 0;
            while n.status().role == Role::Follower {
                n.tick();
                t += 1;
            }
            t
        })
        .collect();
    assert!(timeouts.iter().all(|&t| (15..30).contains(&t)), "{timeouts:?}");
    assert!(timeouts.windows(2).any(|w| w[0] != w[1]), "{timeouts:?}");
}

#[test]
fn paper_5_2_single_node_elects_itself() {
    let mut n = node(1, 1);
    n.campaign();
    assert_eq!(n.status().role, Role::Leader);
    let (_, applied) = drain(&mut n);
    assert_eq!(applied.len(), 1, "its no-op commits alone");
}

#[test]
fn paper_5_2_candidate_with_majority_becomes_leader_and_appends_noop() {
    let mut c = Cluster::new(5);
    c.elect(3);
    for (id, n) in &c.nodes {
        assert_eq!(n.status().term, 1, "node {id}");
        assert_eq!(n.status().leader, Some(3), "node {id}");
        assert_eq!(n.log().all()[0].kind, EntryKind::Noop);
    }
}

#[test]
fn paper_5_2_one_vote_per_term() {
    let mut n = node(1, 3);
    let vote = |from, term| Message {
        from,
        to: 1,
        term,
        body: MessageBody::RequestVote { last_log_index: 0, last_log_term: 0, pre_vote: false, transfer: false },
    };
    let granted =
        |m: Option<Message>| matches!(m.unwrap().body, MessageBody::RequestVoteResponse { granted: true, .. });
    assert!(granted(n.step(vote(2, 1))));
    assert!(!granted(n.step(vote(3, 1))), "second candidate of the same term");
    assert!(granted(n.step(vote(2, 1))), "a repeated request from the same candidate");
    assert!(granted(n.step(vote(3, 2))), "a new term frees the vote");
}

#[test]
fn paper_5_2_vote_resets_election_timer() {
    let mut n = node(1, 3);
    for _ in 0..14 {
        n.tick();
    }
    n.step(Message {
        from: 2,
        to: 1,
        term: 1,
        body: MessageBody::RequestVote { last_log_index: 0, last_log_term: 0, pre_vote: false, transfer: false },
    });
    for _ in 0..14 {
        n.tick();
    }
    assert_eq!(n.status().role, Role::Follower, "28 ticks since start, but only 14 since the vote");
}

#[test]
fn paper_5_2_split_vote_retries_in_a_later_term() {
    let mut c = Cluster::new(4);
    c.cut = vec![];
    // 1 and 2 campaign at once in term 1: 1 asks first and gets 3's vote, 2 gets 4's.
    let a = c.nodes.get_mut(&1).unwrap();
    a.campaign();
    let (ma, _) = drain(a);
    let b = c.nodes.get_mut(&2).unwrap();
    b.campaign();
    let (mb, _) = drain(b);
    let mut pending = Vec::new();
    for m in ma.into_iter().filter(|m| m.to == 3).chain(mb.into_iter().filter(|m| m.to == 4)) {
        let resp = c.nodes.get_mut(&m.to).unwrap().step(m).unwrap();
        pending.push(resp);
    }
    for r in pending {
        c.nodes.get_mut(&r.to).unwrap().step(r);
    }
    assert!(c.nodes.values().all(|n| n.status().role != Role::Leader), "2 of 4 votes is no majority");
    // Time passes; fresh random timeouts break the tie.
    for _ in 0..200 {
        for n in c.nodes.values_mut() {
            n.tick();
        }
        c.settle();
        if c.nodes.values().any(|n| n.status().role == Role::Leader) {
            break;
        }
    }
    let leaders: Vec<_> = c.nodes.values().filter(|n| n.status().role == Role::Leader).collect();
    assert_eq!(leaders.len(), 1);
    assert!(leaders[0].status().term >= 2);
}

#[test]
fn paper_5_4_1_vote_denied_to_candidate_with_older_log() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, b"x");
    // Node 3 holds [noop@1, x@1]; a candidate whose log ends at (1, 1) is behind. (An
    // election asked for, so that node 3's leader lease does not decide it.)
    let resp = c.nodes.get_mut(&3).unwrap().step(Message {
        from: 2,
        to: 3,
        term: 5,
        body: MessageBody::RequestVote { last_log_index: 1, last_log_term: 1, pre_vote: false, transfer: true },
    });
    assert!(matches!(resp.unwrap().body, MessageBody::RequestVoteResponse { granted: false, .. }));
    assert_eq!(c.nodes[&3].status().term, 5, "the higher term is still adopted");
}

#[test]
fn paper_5_1_higher_term_turns_leader_into_follower() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let l = c.nodes.get_mut(&1).unwrap();
    l.step(Message {
        from: 2,
        to: 1,
        term: 7,
        body: MessageBody::AppendEntriesResponse {
            success: false,
            match_index: 0,
            reject_index: 0,
            conflict_index: 0,
            conflict_term: 0,
            round: 0,
        },
    });
    let st = l.status();
    assert_eq!((st.role, st.term, st.vote), (Role::Follower, 7, None));
    assert!(l.propose(Bytes::from_static(b"x"), true).is_err());
}

#[test]
fn paper_5_1_stale_request_gets_current_term() {
    let mut n = node(1, 3);
    n.become_follower(4, None);
    let resp = n
        .step(Message {
            from: 2,
            to: 1,
            term: 3,
            body: MessageBody::AppendEntries {
                prev_log_index: 0,
                prev_log_term: 0,
                entries: vec![],
                commit: 0,
                round: 0,
                floor: 0,
            },
        })
        .unwrap();
    assert_eq!(resp.term, 4);
    assert!(matches!(resp.body, MessageBody::AppendEntriesResponse { success: false, .. }));
}

#[test]
fn paper_5_3_commit_needs_a_majority_and_all_apply_in_order() {
    let mut c = Cluster::new(5);
    c.elect(1);
    c.cut = vec![4, 5];
    let i = c.propose(1, b"a");
    assert_eq!(c.nodes[&1].status().commit, i, "3 of 5 is a majority");
    c.cut = vec![3, 4, 5];
    let j = c.propose(1, b"b");
    for _ in 0..10 {
        c.settle();
    }
    assert_eq!(c.nodes[&1].status().commit, i, "2 of 5 is not: {j} stays uncommitted");
    c.cut.clear();
    // Two heartbeat intervals: the first finds no progress, the second resends.
    for _ in 0..10 {
        c.nodes.get_mut(&1).unwrap().tick();
        c.settle();
    }
    for (id, applied) in &c.applied {
        let data: Vec<_> = applied.iter().filter(|e| e.kind == EntryKind::Normal).map(|e| e.data.clone()).collect();
        assert_eq!(data, vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")], "node {id}");
    }
}

#[test]
fn paper_5_3_consistency_check_rejects_with_conflict_hint() {
    let mut n = node(2, 3);
    let ae = |prev_log_index, prev_log_term, entries: Vec<Entry>| Message {
        from: 1,
        to: 2,
        term: 2,
        body: MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, commit: 0, round: 0, floor: 0 },
    };
    let e = |index, term| Entry { index, term, kind: EntryKind::Normal, data: Bytes::new() };
    let r = n.step(ae(0, 0, vec![e(1, 1), e(2, 1), e(3, 1)])).unwrap();
    assert!(matches!(r.body, MessageBody::AppendEntriesResponse { success: true, match_index: 3, .. }));
    // Too short: hint is last index + 1.
    let r = n.step(ae(7, 2, vec![])).unwrap();
    assert!(matches!(
        r.body,
        MessageBody::AppendEntriesResponse { success: false, reject_index: 7, conflict_index: 4, conflict_term: 0, .. }
    ));
    // Term mismatch at 3: hint is the first index of term 1.
    let r = n.step(ae(3, 2, vec![])).unwrap();
    assert!(matches!(
        r.body,
        MessageBody::AppendEntriesResponse { success: false, conflict_index: 1, conflict_term: 1, .. }
    ));
}

#[test]
fn paper_5_3_conflicting_suffix_is_truncated_and_matching_entries_kept() {
    let mut n = node(2, 3);
    let e = |index, term| Entry { index, term, kind: EntryKind::Normal, data: Bytes::new() };
    let ae = |term, prev_log_index, prev_log_term, entries: Vec<Entry>| Message {
        from: 1,
        to: 2,
        term,
        body: MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, commit: 0, round: 0, floor: 0 },
    };
    n.step(ae(1, 0, 0, vec![e(1, 1), e(2, 1), e(3, 1)]));
    // A new leader of term 3 overwrites 3 with its own entries.
    n.step(ae(3, 2, 1, vec![e(3, 3), e(4, 3)]));
    let terms: Vec<_> = n.log().all().iter().map(|e| e.term).collect();
    assert_eq!(terms, vec![1, 1, 3, 3]);
    // A delayed, older append of an already-matching prefix removes nothing.
    n.step(ae(3, 0, 0, vec![e(1, 1)]));
    assert_eq!(n.log().last_index(), 4);
}

#[test]
fn paper_5_4_2_leader_commits_previous_term_entries_only_through_its_own() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.cut = vec![2, 3];
    // An entry of term 1 that only the leader has.
    c.propose(1, b"old");
    c.cut.clear();
    // Node 1 is deposed and re-elected in term 3 without anyone else holding "old".
    let l = c.nodes.get_mut(&1).unwrap();
    l.become_follower(2, None);
    c.settle();
    c.nodes.get_mut(&1).unwrap().campaign();
    c.settle();
    let l = &c.nodes[&1];
    assert_eq!(l.status().role, Role::Leader);
    // It replicated "old" (index 2) and its own no-op; both committed via the no-op of term 3.
    let last = l.log().all().last().unwrap();
    assert_eq!((last.term, last.kind), (3, EntryKind::Noop));
    assert_eq!(l.status().commit, last.index);
    for n in c.nodes.values() {
        assert_eq!(n.log().term(2), Some(1));
    }
}

#[test]
fn check_quorum_isolated_leader_steps_down() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.cut = vec![2, 3];
    let l = c.nodes.get_mut(&1).unwrap();
    for _ in 0..2 * 15 + 1 {
        l.tick();
        drain(l);
    }
    assert_eq!(l.status().role, Role::Follower);
    assert_eq!(l.status().leader, None);
}

#[test]
fn lazy_proposal_travels_with_next_heartbeat_only() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let l = c.nodes.get_mut(&1).unwrap();
    let (index, _) = l.propose(Bytes::from_static(b"lazy"), false).unwrap();
    let (msgs, _) = drain(l);
    assert!(msgs.is_empty(), "no append before the heartbeat: {msgs:?}");
    let mut sent = Vec::new();
    for _ in 0..5 {
        l.tick();
        sent.extend(drain(l).0);
    }
    assert_eq!(sent.len(), 2, "one heartbeat per follower");
    for m in &sent {
        let MessageBody::AppendEntries { entries, .. } = &m.body else { panic!("{m:?}") };
        assert_eq!(entries.last().map(|e| e.index), Some(index));
    }
}

#[test]
fn read_index_waits_for_quorum_ack() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, b"v");
    c.cut = vec![2, 3];
    let l = c.nodes.get_mut(&1).unwrap();
    l.read_index(42).unwrap();
    c.settle();
    let l = c.nodes.get_mut(&1).unwrap();
    assert!(l.ready().reads.is_empty(), "no read point without a quorum");
    c.cut.clear();
    let l = c.nodes.get_mut(&1).unwrap();
    l.read_index(43).unwrap();
    let commit = l.status().commit;
    let mut reads = Vec::new();
    let mut queue: VecDeque<Message> = drain(l).0.into();
    while let Some(m) = queue.pop_front() {
        let to = m.to;
        if let Some(r) = c.nodes.get_mut(&to).unwrap().step(m) {
            queue.push_back(r);
        }
        let n = c.nodes.get_mut(&to).unwrap();
        while n.has_ready() {
            let rd = n.ready();
            if rd.must_persist() {
                n.on_persisted(rd.number);
            }
            reads.extend(rd.reads);
            queue.extend(rd.messages);
            queue.extend(rd.persisted_messages);
        }
    }
    assert!(reads.contains(&ReadState { ctx: 43, index: commit }), "{reads:?}");
}

#[test]
fn unreachable_follower_falls_back_to_probe() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let l = c.nodes.get_mut(&1).unwrap();
    l.step(Message { from: 2, to: 1, term: 0, body: MessageBody::Unreachable });
    assert_eq!(l.status().role, Role::Leader);
    c.propose(1, b"after");
    assert_eq!(c.nodes[&2].log().last_index(), c.nodes[&1].log().last_index());
}

#[test]
fn compaction_never_passes_what_every_member_holds() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, b"a");
    c.cut = vec![3];
    for d in [b"b", b"c", b"d"] {
        c.propose(1, d);
    }
    // Node 3 holds only up to "a": nobody may compact past it.
    let l = c.nodes.get_mut(&1).unwrap();
    let behind = 2;
    assert!(l.compactable() <= behind, "compactable {} while node 3 holds {behind}", l.compactable());
    l.compact(u64::MAX);
    assert!(l.log().first_index() <= behind + 1);
    // Healed, node 3 catches up from the leader's compacted log.
    c.cut.clear();
    for _ in 0..10 {
        c.nodes.get_mut(&1).unwrap().tick();
        c.settle();
    }
    let last = c.nodes[&1].log().last_index();
    assert_eq!(c.nodes[&3].log().last_index(), last);
    // Now every member holds everything; the leader tells the floor with its next append.
    for _ in 0..5 {
        c.nodes.get_mut(&1).unwrap().tick();
        c.settle();
    }
    for id in 1..=3 {
        let n = c.nodes.get_mut(&id).unwrap();
        assert_eq!(n.compactable(), last, "node {id}");
        n.compact(last);
        assert_eq!(n.log().first_index(), last + 1);
    }
    // And replication goes on above the compacted prefix.
    let i = c.propose(1, b"e");
    assert!(c.nodes.values().all(|n| n.status().commit == i));
}

fn cluster_with_pre_vote(n: u64) -> Cluster {
    let mut c = Cluster::new(n);
    for id in 1..=n {
        let mut cfg = cfg(id, n);
        cfg.pre_vote = true;
        c.nodes.insert(id, RawNode::new(cfg, HardState::default(), Vec::new()).unwrap());
    }
    c
}

#[test]
fn pre_vote_a_cut_off_follower_never_raises_its_term_nor_disrupts_the_leader() {
    let mut c = cluster_with_pre_vote(3);
    c.elect(1);
    let term = c.nodes[&1].status().term;
    c.cut = vec![3];
    for _ in 0..200 {
        for n in c.nodes.values_mut() {
            n.tick();
        }
        c.settle();
    }
    assert_eq!(c.nodes[&3].status().term, term, "PreVote rounds change no term");
    c.cut.clear();
    for _ in 0..20 {
        for n in c.nodes.values_mut() {
            n.tick();
        }
        c.settle();
    }
    let st = c.nodes[&1].status();
    assert_eq!((st.role, st.term), (Role::Leader, term), "the leader was not disturbed");
    assert_eq!(c.nodes[&3].status().leader, Some(1));
}

#[test]
fn pre_vote_is_refused_while_a_leader_is_heard_and_granted_once_it_is_gone() {
    let mut c = cluster_with_pre_vote(3);
    c.elect(1);
    let term = c.nodes[&1].status().term;
    let ask = |c: &mut Cluster| {
        let m = Message {
            from: 3,
            to: 2,
            term: term + 1,
            body: MessageBody::RequestVote {
                last_log_index: 100,
                last_log_term: term,
                pre_vote: true,
                transfer: false,
            },
        };
        c.nodes.get_mut(&2).unwrap().step(m).unwrap()
    };
    let r = ask(&mut c);
    assert!(matches!(r.body, MessageBody::RequestVoteResponse { granted: false, pre_vote: true }));
    assert_eq!(c.nodes[&2].status().term, term, "a PreVote changes no term");
    // The leader goes silent for a whole election timeout.
    c.cut = vec![1];
    for _ in 0..15 {
        c.nodes.get_mut(&2).unwrap().tick();
    }
    let r = ask(&mut c);
    assert!(matches!(r.body, MessageBody::RequestVoteResponse { granted: true, pre_vote: true }));
    assert_eq!(r.term, term + 1);
    assert_eq!(c.nodes[&2].status().vote, Some(1), "and no vote was cast");
}

#[test]
fn pre_vote_then_election_replaces_a_dead_leader() {
    let mut c = cluster_with_pre_vote(3);
    c.elect(1);
    let term = c.nodes[&1].status().term;
    c.cut = vec![1];
    for _ in 0..200 {
        for (id, n) in c.nodes.iter_mut() {
            if *id != 1 {
                n.tick();
            }
        }
        c.settle();
        if c.nodes.iter().any(|(id, n)| *id != 1 && n.status().role == Role::Leader) {
            break;
        }
    }
    let leaders: Vec<_> = c.nodes.iter().filter(|(id, n)| **id != 1 && n.status().role == Role::Leader).collect();
    assert_eq!(leaders.len(), 1);
    assert_eq!(leaders[0].1.status().term, term + 1, "one PreVote round, then exactly one new term");
}

// ---- leadership transfer (Raft thesis §3.10) --------------------------------

#[test]
fn transfer_3_10_up_to_date_follower_takes_over_without_any_timeout() {
    // PreVote is on, and no node is ticked: the transferee campaigns only because it
    // was told to, and wins although every voter has just heard from the leader.
    let mut c = cluster_with_pre_vote(3);
    c.elect(1);
    let i = c.propose(1, b"a");
    let term = c.nodes[&1].status().term;
    assert_eq!(c.nodes.get_mut(&1).unwrap().transfer_leader(Some(2)), Ok(2));
    assert_eq!(c.nodes[&1].status().transferee, Some(2));
    c.settle();
    let st = c.nodes[&2].status();
    assert_eq!((st.role, st.term), (Role::Leader, term + 1));
    assert_eq!(c.nodes[&1].status().role, Role::Follower);
    assert_eq!(c.nodes[&1].status().transferee, None);
    assert!(st.commit > i, "the new leader committed its no-op after the old entries");
    let j = c.propose(2, b"b");
    assert!(c.nodes.values().all(|n| n.status().commit == j));
}

#[test]
fn transfer_3_10_lagging_transferee_is_caught_up_before_timeout_now() {
    let mut c = cluster_with_pre_vote(3);
    c.elect(1);
    c.cut = vec![3];
    let last = c.propose(1, b"x");
    c.propose(1, b"y");
    let last = last + 1;
    assert!(c.nodes[&3].status().last_index < last);
    c.cut.clear();
    c.nodes.get_mut(&1).unwrap().transfer_leader(Some(3)).unwrap();
    let (msgs, _) = drain(c.nodes.get_mut(&1).unwrap());
    assert!(
        msgs.iter().all(|m| m.body != MessageBody::TimeoutNow),
        "no TimeoutNow before the transferee holds the whole log: {msgs:?}"
    );
    // Deliver what the leader sent, then let heartbeats find and fill the gap, within
    // the election timeout the transfer is given.
    for m in msgs {
        let to = c.nodes.get_mut(&m.to).unwrap();
        if let Some(resp) = to.step(m) {
            drain(to);
            c.nodes.get_mut(&resp.to).unwrap().step(resp);
        }
    }
    c.settle();
    for _ in 0..14 {
        if c.nodes[&3].status().role == Role::Leader {
            break;
        }
        c.nodes.get_mut(&1).unwrap().tick();
        c.settle();
    }
    let st = c.nodes[&3].status();
    assert_eq!(st.role, Role::Leader);
    assert!(st.commit > last, "{st:?}");
    assert_eq!(c.nodes[&3].log().term(last), c.nodes[&1].log().term(last));
}

#[test]
fn transfer_3_10_refuses_proposals_meanwhile_and_gives_up_after_an_election_timeout() {
    let mut c = cluster_with_pre_vote(3);
    c.elect(1);
    c.cut = vec![2];
    let leader = c.nodes.get_mut(&1).unwrap();
    leader.transfer_leader(Some(2)).unwrap();
    assert_eq!(leader.propose(Bytes::from_static(b"z"), true), Err(ProposeError::Transferring));
    // Reads still work during a transfer.
    assert_eq!(leader.read_index(7), Ok(()));
    for _ in 0..15 {
        leader.tick();
        drain(leader);
    }
    assert_eq!(leader.status().role, Role::Leader, "it keeps leading");
    assert_eq!(leader.status().transferee, None, "the transfer was given up");
    assert!(leader.propose(Bytes::from_static(b"z"), true).is_ok());
}

#[test]
fn transfer_3_10_default_target_is_the_most_up_to_date_follower() {
    let mut c = cluster_with_pre_vote(5);
    c.elect(1);
    c.cut = vec![2, 3];
    c.propose(1, b"only 1, 4 and 5 hold this");
    c.cut.clear();
    let to = c.nodes.get_mut(&1).unwrap().transfer_leader(None).unwrap();
    assert!(to == 4 || to == 5, "picked {to}");
    c.settle();
    assert_eq!(c.nodes[&to].status().role, Role::Leader);
}

#[test]
fn transfer_3_10_errors_and_no_ops() {
    let mut c = cluster_with_pre_vote(3);
    c.elect(1);
    assert_eq!(c.nodes.get_mut(&2).unwrap().transfer_leader(None), Err(TransferError::NotLeader { leader: Some(1) }));
    assert_eq!(c.nodes.get_mut(&1).unwrap().transfer_leader(Some(9)), Err(TransferError::NotAMember(9)));
    assert_eq!(c.nodes.get_mut(&1).unwrap().transfer_leader(Some(1)), Ok(1));
    assert_eq!(c.nodes[&1].status().transferee, None, "a transfer to itself is a no-op");
    let mut solo = node(1, 1);
    solo.campaign();
    assert_eq!(solo.transfer_leader(None), Err(TransferError::NoOtherMember));
}

#[test]
fn transfer_3_10_stale_timeout_now_is_ignored() {
    let mut c = cluster_with_pre_vote(3);
    c.elect(1);
    c.elect(2);
    let term = c.nodes[&3].status().term;
    let stale = Message { from: 1, to: 3, term: term - 1, body: MessageBody::TimeoutNow };
    assert_eq!(c.nodes.get_mut(&3).unwrap().step(stale), None);
    let st = c.nodes[&3].status();
    assert_eq!((st.role, st.term), (Role::Follower, term));
}

#[test]
fn transfer_3_10_a_lost_timeout_now_is_sent_again_with_the_next_heartbeat() {
    let mut c = cluster_with_pre_vote(3);
    c.elect(1);
    c.nodes.get_mut(&1).unwrap().transfer_leader(Some(2)).unwrap();
    let (msgs, _) = drain(c.nodes.get_mut(&1).unwrap());
    assert!(msgs.iter().any(|m| m.to == 2 && m.body == MessageBody::TimeoutNow), "{msgs:?}");
    // That TimeoutNow is lost; nothing else is delivered.
    for _ in 0..5 {
        c.nodes.get_mut(&1).unwrap().tick();
    }
    c.settle();
    let st = c.nodes[&2].status();
    assert_eq!(st.role, Role::Leader, "the heartbeat carried TimeoutNow again: {st:?}");
}

/// A follower being sent a snapshot waits for the snapshot's outcome: a lost heartbeat
/// meanwhile does not start a second one (it did, and a follower busy installing a
/// large snapshot was sent it again); a failed transfer is retried.
#[test]
fn a_snapshot_in_flight_is_retried_only_when_it_fails() {
    let mut c = Cluster::new(3);
    let mut lc = cfg(1, 3);
    lc.keep_entries = 0;
    c.nodes.insert(1, RawNode::new(lc, HardState::default(), Vec::new()).unwrap());
    c.elect(1);
    c.cut = vec![3];
    for d in [b"a", b"b", b"c", b"d"] {
        c.propose(1, d);
    }
    // Every member but 3 holds everything; with no catch-up tail the leader compacts past it.
    let l = c.nodes.get_mut(&1).unwrap();
    let applied = l.status().applied;
    l.compact(applied);
    assert!(l.log().first_index() > c.nodes[&3].log().last_index() + 1);
    // Ticks the leader for a heartbeat interval, with node 2 answering; node 3 answers
    // appends only while `answer_3`. Returns the messages sent to node 3.
    let beat = |c: &mut Cluster, answer_3: bool| -> Vec<Message> {
        let mut to_3 = Vec::new();
        let mut queue: VecDeque<Message> = tick_until(c.nodes.get_mut(&1).unwrap(), 5).into();
        while let Some(m) = queue.pop_front() {
            let deliver = m.to == 2 || (m.to == 3 && answer_3 && matches!(m.body, MessageBody::AppendEntries { .. }));
            if m.to == 3 {
                to_3.push(m.clone());
            }
            if !deliver {
                continue;
            }
            if let Some(resp) = c.nodes.get_mut(&m.to).unwrap().step(m) {
                drain(c.nodes.get_mut(&resp.from).unwrap());
                let l = c.nodes.get_mut(&1).unwrap();
                l.step(resp);
                queue.extend(drain(l).0);
            }
        }
        to_3
    };
    let snapshots =
        |msgs: &[Message]| msgs.iter().filter(|m| matches!(m.body, MessageBody::InstallSnapshot { .. })).count();
    // Node 3 rejects the next heartbeat: it needs the snapshot, which is sent.
    assert_eq!(snapshots(&beat(&mut c, true)), 1, "the snapshot is sent");
    // Lost heartbeats while it streams change nothing.
    for _ in 0..3 {
        let l = c.nodes.get_mut(&1).unwrap();
        l.step(Message { from: 3, to: 1, term: 0, body: MessageBody::Unreachable });
        assert_eq!(snapshots(&beat(&mut c, false)), 0, "no second snapshot while the first is in flight");
    }
    assert_eq!(c.nodes[&1].status().role, Role::Leader);
    // The transfer fails: the leader probes again and sends the snapshot anew.
    let l = c.nodes.get_mut(&1).unwrap();
    l.step(Message { from: 3, to: 1, term: 0, body: MessageBody::SnapshotFailed });
    let sent: usize = (0..2).map(|_| snapshots(&beat(&mut c, true))).sum();
    assert_eq!(sent, 1, "a failed snapshot is sent again");
}

#[path = "hostile_tests.rs"]
mod hostile;

#[path = "conf_change_tests.rs"]
mod conf_change;
