//! Deterministic simulation of N Raft cores over a faulty simulated network.
//!
//! One seeded RNG drives everything: message drop, delay (reordering), duplication,
//! partitions, crash-restart from durable state, client proposals. The four Raft
//! safety properties are checked after every step. Members are added (as voters or
//! learners), promoted and removed along the way, one change at a time, and the same
//! properties must hold across every configuration. A failure prints its seed;
//! `RAFTKV_SIM_SEED=N cargo test --test simulation` replays it, and
//! `RAFTKV_SIM_SEEDS=N` runs more seeds (default 40).
use std::collections::BTreeMap;

use bytes::Bytes;
use raftkv::raft::{
    ConfChange, ConfChangeError, Config, Entry, HardState, Index, Membership, Message, MessageBody, NodeId,
    ProposeError, RawNode, Role, Term,
};
use rand::{seq::SliceRandom, Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What survives a crash: exactly what the driver persisted.
#[derive(Default, Clone)]
struct Durable {
    hs: HardState,
    /// The state machine snapshot's (index, term), if one was taken.
    snap: Option<(Index, Term)>,
    /// (index, term) of the last compacted entry, recorded with the snapshot.
    base: (Index, Term),
    /// Log entries after `base`, by index.
    log: BTreeMap<Index, Entry>,
    /// The membership as of `base` (None: the founding voters), and as of `snap`.
    base_membership: Option<Membership>,
    snap_membership: Option<Membership>,
}

impl Durable {
    /// Appends, replacing the suffix from the first new entry's index (the WAL's rule).
    fn append(&mut self, entries: &[Entry]) {
        if let Some(first) = entries.first() {
            self.log.split_off(&first.index);
            self.log.extend(entries.iter().map(|e| (e.index, e.clone())));
        }
        self.hs.commit = self.hs.commit.min(self.last_index());
    }

    fn last_index(&self) -> Index {
        self.log.keys().next_back().copied().unwrap_or(self.base.0)
    }
}

struct SimNode {
    core: RawNode,
    durable: Durable,
    up: bool,
    was_leader_term: Option<Term>,
    /// Writes handed to the persister and not yet made durable and reported (it lags
    /// behind), in order.
    unreported: Vec<Write>,
}

/// One ready's write, and the messages waiting for it to be durable.
struct Write {
    number: u64,
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    waiting: Vec<Message>,
}

struct Sim {
    rng: ChaCha8Rng,
    seed: u64,
    step: u64,
    n: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    /// In flight: delivered in random order.
    net: Vec<Message>,
    /// Partition group of each node; messages cross only within a group.
    group: BTreeMap<NodeId, u8>,
    drop_rate: f64,
    /// Chance that a batch's write is torn by a crash.
    torn_rate: f64,
    /// Chance that a write is made durable (and reported) only later: the persister
    /// lags, and a crash meanwhile loses it.
    defer_rate: f64,
    leaders: BTreeMap<Term, NodeId>,
    /// Committed entries: (term, data, a term in which the entry was already committed).
    /// The last is the lowest current term of a node seen holding it committed: never
    /// below the term whose leader committed it, so requiring the entry of leaders of
    /// later terms only is sound.
    committed: BTreeMap<Index, (Term, Bytes, Term)>,
    applied: BTreeMap<Index, (Term, Bytes)>,
    proposals: u64,
    last_event: &'static str,
    compactions: u64,
    installs: u64,
    /// Leadership transfers asked for: (term of the leader asked, transferee).
    transfers_asked: Vec<(Term, NodeId)>,
    /// ...and those that handed leadership to the transferee in the next term.
    transfers_done: u64,
    /// Configuration changes proposed, and nodes ever removed (they keep running, as a
    /// removed member does until its operator stops it).
    conf_changes: u64,
    removed: std::collections::BTreeSet<NodeId>,
}

/// Members added over a run, at most: ids grow past the founding ones.
const MAX_NODES: usize = 7;

fn sim_node(core: RawNode, durable: Durable) -> SimNode {
    SimNode { core, durable, up: true, was_leader_term: None, unreported: Vec::new() }
}

fn config(id: NodeId, n: u64, seed: u64) -> Config {
    let mut c = Config::new(id, (1..=n).collect());
    c.keep_entries = 3;
    c.election_ticks = 10;
    c.heartbeat_ticks = 2;
    c.max_inflight = 3;
    c.max_batch_entries = 4;
    c.seed = seed.wrapping_mul(31).wrapping_add(id);
    c
}

/// Messages that may go once write `wait_for` is durable: held with it, or sent at
/// once when nothing is being written.
fn wait_for_write(node: &mut SimNode, wait_for: Option<u64>, msgs: Vec<Message>, out: &mut Vec<Message>) {
    match wait_for {
        None => out.extend(msgs),
        Some(n) => match node.unreported.iter_mut().find(|w| w.number == n) {
            Some(w) => w.waiting.extend(msgs),
            None => panic!("write {n} to wait for is not pending"),
        },
    }
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = *[3u64, 5].choose(&mut rng).unwrap();
        let nodes = (1..=n)
            .map(|id| {
                let core = RawNode::new(config(id, n, seed), HardState::default(), Vec::new()).unwrap();
                (id, sim_node(core, Durable::default()))
            })
            .collect();
        Sim {
            rng,
            seed,
            step: 0,
            n,
            nodes,
            net: Vec::new(),
            group: (1..=n).map(|id| (id, 0)).collect(),
            drop_rate: 0.05,
            torn_rate: 0.003,
            defer_rate: 0.3,
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            applied: BTreeMap::new(),
            proposals: 0,
            last_event: "",
            compactions: 0,
            installs: 0,
            transfers_asked: Vec::new(),
            transfers_done: 0,
            conf_changes: 0,
            removed: Default::default(),
        }
    }

    /// A node chosen at random among those that exist.
    fn any_node(&mut self) -> NodeId {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        *ids.choose(&mut self.rng).unwrap()
    }

    /// Founding members never removed: the floor promises what they hold. (A member
    /// added later starts empty and is brought up by a snapshot.)
    fn floor_bound(&self) -> impl Iterator<Item = (&NodeId, &SimNode)> {
        self.nodes.iter().filter(|(id, _)| **id <= self.n && !self.removed.contains(id))
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "safety violation at step {} (after {}): {what}\nreplay with RAFTKV_SIM_SEED={} cargo test --test simulation",
            self.step, self.last_event, self.seed
        );
    }

    /// Carries out every pending ready of `id`: send what may go before the write, hand
    /// the write to a persister that may lag (what waits for it waits with it), apply
    /// what the core says is committed and durable. Returns whether the node crashed
    /// (a torn write) and restarted.
    fn process(&mut self, id: NodeId, held: Vec<Message>) -> bool {
        let mut out = Vec::new();
        let mut applied = Vec::new();
        let mut crashed = false;
        let mut installs = 0;
        let queued = self.nodes[&id].unreported.len();
        let upto = self.rng.gen_range(0..=queued);
        self.land(id, upto, true);
        loop {
            let torn = self.rng.gen_bool(self.torn_rate);
            let cut: f64 = self.rng.gen();
            let landed: f64 = self.rng.gen();
            let defer = self.rng.gen_bool(self.defer_rate);
            if !self.nodes[&id].core.has_ready() {
                break;
            }
            let rd = self.nodes.get_mut(&id).unwrap().core.ready();
            if rd.snapshot.is_some() {
                // The persister works through its queue before the log is compacted to
                // the installed snapshot.
                let all = self.nodes[&id].unreported.len();
                self.land(id, all, true);
            }
            let node = self.nodes.get_mut(&id).unwrap();
            if let (true, Some((index, term))) = (torn && cut < 0.5, rd.snapshot) {
                // The snapshot file was renamed into place before the WAL write tore.
                node.durable.snap = Some((index, term));
                node.durable.base = (index, term);
                node.durable.log = node.durable.log.split_off(&(index + 1));
                let m = node.core.membership_at(index).cloned();
                (node.durable.base_membership, node.durable.snap_membership) = (m.clone(), m);
            }
            let must_persist = rd.must_persist();
            // A leader's appends leave before its write (Raft §10.2.1).
            out.extend(rd.messages);
            if torn {
                // A crash: the persister had written some of the writes queued before
                // this one; if all, it tore this one's, keeping a prefix of [entries...,
                // hard state]. Nothing that waited for a write goes out.
                let queued = node.unreported.len();
                let k = (landed * (queued + 1) as f64) as usize;
                self.land(id, k.min(queued), false);
                let node = self.nodes.get_mut(&id).unwrap();
                if k >= queued {
                    let records = rd.entries.len() + rd.hard_state.is_some() as usize;
                    let keep = (cut * (records + 1) as f64) as usize;
                    let hs = rd.hard_state.filter(|_| keep > rd.entries.len());
                    let entries = rd.entries[..keep.min(rd.entries.len())].to_vec();
                    node.unreported = vec![Write { number: rd.number, hard_state: hs, entries, waiting: Vec::new() }];
                    self.land(id, 1, false);
                }
                self.nodes.get_mut(&id).unwrap().unreported.clear();
                crashed = true;
                break;
            }
            if let Some((index, term)) = rd.snapshot {
                installs += 1;
                // The installed snapshot is this node's own now, with its own base; log
                // records above it stay in the WAL, as they do for real.
                node.durable.snap = Some((index, term));
                node.durable.base = (index, term);
                node.durable.log = node.durable.log.split_off(&(index + 1));
                let m = node.core.membership_at(index).cloned();
                (node.durable.base_membership, node.durable.snap_membership) = (m.clone(), m);
            }
            if must_persist {
                let write =
                    Write { number: rd.number, hard_state: rd.hard_state, entries: rd.entries, waiting: Vec::new() };
                node.unreported.push(write);
            }
            wait_for_write(node, rd.wait_for, rd.persisted_messages, &mut out);
            applied.extend(rd.committed);
            if !defer {
                let all = self.nodes[&id].unreported.len();
                self.land(id, all, true);
            }
        }
        if !crashed {
            let node = self.nodes.get_mut(&id).unwrap();
            let pending = node.core.pending_write();
            wait_for_write(node, pending, held, &mut out);
        }
        for e in applied {
            match self.applied.get(&e.index) {
                Some((t, d)) if (*t, d) != (e.term, &e.data) => {
                    self.fail(format!("state machine safety: node {id} applied {e:?}, another applied term {t}"))
                }
                Some(_) => {}
                None => {
                    self.applied.insert(e.index, (e.term, e.data.clone()));
                }
            }
        }
        let min_last = self.floor_bound().map(|(_, n)| n.durable.last_index()).min().unwrap_or(Index::MAX);
        for m in &out {
            if let MessageBody::AppendEntries { floor, .. } = m.body {
                if floor > min_last {
                    let lasts: Vec<_> = self.floor_bound().map(|(_, n)| n.durable.last_index()).collect();
                    self.fail(format!("node {id} sent floor {floor} while durable lasts are {lasts:?}"));
                }
            }
        }
        self.net.extend(out);
        self.installs += installs;
        if crashed {
            self.restart(id);
        }
        crashed
    }

    fn deliver(&mut self) {
        if self.net.is_empty() {
            return;
        }
        let i = self.rng.gen_range(0..self.net.len());
        let m = self.net.swap_remove(i);
        if self.rng.gen_bool(0.03) {
            self.net.push(m.clone()); // duplicate
        }
        let cut = self.group[&m.from] != self.group[&m.to];
        let up = self.nodes[&m.to].up;
        if cut || !up || self.rng.gen_bool(self.drop_rate) {
            // The sender's transport notices a failed request; a snapshot transfer is
            // one streaming RPC, so its failure is always reported.
            let snapshot = matches!(m.body, MessageBody::InstallSnapshot { .. });
            if m.body.is_request() && self.nodes[&m.from].up && (snapshot || self.rng.gen_bool(0.5)) {
                let from = m.from;
                let body = if snapshot { MessageBody::SnapshotFailed } else { MessageBody::Unreachable };
                let u = Message { from: m.to, to: from, term: 0, body };
                self.nodes.get_mut(&from).unwrap().core.step(u);
                self.process(from, Vec::new());
            }
            return;
        }
        let to = m.to;
        let mut m = m;
        if let MessageBody::InstallSnapshot { .. } = m.body {
            // The transport streams the sender's newest durable snapshot, and hands the
            // answer straight back (or reports the peer unreachable) within the same RPC.
            let sender = &self.nodes[&m.from].durable;
            let (Some((index, term)), Some(membership)) = (sender.snap, sender.snap_membership.clone()) else {
                self.fail(format!("node {} sent a snapshot it does not have", m.from));
            };
            m.body = MessageBody::InstallSnapshot { index, term, membership };
            let from = m.from;
            let resp = self.nodes.get_mut(&to).unwrap().core.step(m);
            let crashed = self.process(to, Vec::new());
            // Within the RPC, the answer waits for what it promises to be durable.
            let queued = self.nodes[&to].unreported.len();
            self.land(to, queued, true);
            let answer = match resp {
                Some(r) if !crashed => r,
                _ => Message { from: to, to: from, term: 0, body: MessageBody::SnapshotFailed },
            };
            self.nodes.get_mut(&from).unwrap().core.step(answer);
            self.process(from, Vec::new());
            return;
        }
        let resp = self.nodes.get_mut(&to).unwrap().core.step(m);
        let granted = matches!(
            resp,
            Some(Message { body: MessageBody::RequestVoteResponse { granted: true, pre_vote: false }, .. })
        );
        // A response is sent only after what it promises is durable.
        self.process(to, resp.into_iter().collect());
        // Adversarial: a voter crashes right after granting, so that a vote that was not
        // durable would be granted again in the same term.
        if granted && self.torn_rate > 0.0 && self.rng.gen_bool(0.1) {
            self.restart(to);
        }
    }

    fn tick_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.nodes[&id].up {
                self.nodes.get_mut(&id).unwrap().core.tick();
                self.process(id, Vec::new());
            }
        }
    }

    /// A node that is up and believes it leads, if any, chosen at random.
    fn any_leader(&mut self) -> Option<NodeId> {
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.up && n.core.status().role == Role::Leader)
            .map(|(id, _)| *id)
            .collect();
        leaders.choose(&mut self.rng).copied()
    }

    fn propose(&mut self) {
        if let Some(id) = self.any_leader() {
            self.proposals += 1;
            let data = Bytes::from(format!("p{}", self.proposals));
            let eager = self.rng.gen_bool(0.7);
            match self.nodes.get_mut(&id).unwrap().core.propose(data, eager) {
                Ok(_) => {}
                // Refused while it hands leadership over.
                Err(ProposeError::Transferring) => return,
                Err(e) => panic!("a leader refused a proposal: {e}"),
            }
            self.process(id, Vec::new());
        }
    }

    fn crash_restart(&mut self) {
        let id = self.any_node();
        self.restart(id);
    }

    /// A leader is asked to add a member (as a voter or a learner; the new node starts
    /// empty, knowing the new membership, as a joining node does), to promote a
    /// learner, or to remove a member (itself included). Refusals change nothing.
    fn change_membership(&mut self) {
        let Some(id) = self.any_leader() else { return };
        let m = self.nodes[&id].core.membership().clone();
        let r: f64 = self.rng.gen();
        let learners: Vec<NodeId> = m.members.iter().filter(|(_, x)| x.learner).map(|(&i, _)| i).collect();
        let change = if r < 0.35 && self.nodes.len() < MAX_NODES {
            let name = m.next_id.to_string();
            ConfChange::Add { peer_url: format!("http://n{name}:1"), name, learner: self.rng.gen_bool(0.6) }
        } else if r < 0.6 && !learners.is_empty() {
            ConfChange::Promote(*learners.choose(&mut self.rng).unwrap())
        } else if r < 0.7 {
            let ids: Vec<NodeId> = m.members.keys().copied().collect();
            ConfChange::Publish(*ids.choose(&mut self.rng).unwrap())
        } else if m.members.len() > 3 || r < 0.62 {
            let ids: Vec<NodeId> = m.members.keys().copied().collect();
            ConfChange::Remove(*ids.choose(&mut self.rng).unwrap())
        } else {
            return;
        };
        let core = &mut self.nodes.get_mut(&id).unwrap().core;
        let before = core.membership().clone();
        let result = core.propose_conf_change(&change);
        let after = core.membership().clone();
        match result {
            Ok((_, changed)) => {
                self.conf_changes += 1;
                // An id given out again (its first add was truncated) is the same node.
                if matches!(change, ConfChange::Add { .. }) && !self.nodes.contains_key(&changed) {
                    let mut cfg = config(changed, self.n, self.seed);
                    cfg.membership = Some(after);
                    let durable = Durable { base_membership: cfg.membership.clone(), ..Durable::default() };
                    let fresh = RawNode::new(cfg, HardState::default(), Vec::new()).unwrap();
                    self.nodes.insert(changed, sim_node(fresh, durable));
                    self.group.insert(changed, 0);
                }
                if let ConfChange::Remove(gone) = change {
                    self.removed.insert(gone);
                }
            }
            Err(
                ConfChangeError::Pending
                | ConfChangeError::Transferring
                | ConfChangeError::LearnerBehind { .. }
                | ConfChangeError::LastVoter,
            ) => {
                assert_eq!(after, before, "a refused change changed the membership");
            }
            Err(e) => self.fail(format!("leader {id} refused {change:?}: {e}")),
        }
        self.process(id, Vec::new());
    }

    /// Makes the first `upto` of `id`'s queued writes durable, in order, checking that
    /// none replaces an entry another node committed; with `report`, the core learns it
    /// and what waited for them is sent (else the node is crashing).
    fn land(&mut self, id: NodeId, upto: usize, report: bool) {
        if upto == 0 {
            return;
        }
        let node = self.nodes.get_mut(&id).unwrap();
        let writes: Vec<Write> = node.unreported.drain(..upto).collect();
        let mut overwrites = Vec::new();
        for w in &writes {
            if let Some(hs) = w.hard_state {
                node.durable.hs = hs;
            }
            if let Some(f) = w.entries.first() {
                let old: Vec<(Index, Term)> = node.durable.log.range(f.index..).map(|(i, e)| (*i, e.term)).collect();
                overwrites
                    .extend(old.into_iter().filter(|&(i, t)| !w.entries.iter().any(|e| e.index == i && e.term == t)));
            }
            node.durable.append(&w.entries);
        }
        if report {
            node.core.on_persisted(writes.last().unwrap().number);
            self.net.extend(writes.into_iter().flat_map(|w| w.waiting));
        }
        for (i, t) in overwrites {
            for (k, n) in &self.nodes {
                if n.core.status().commit >= i && n.core.log().term(i) == Some(t) && *k != id {
                    self.fail(format!("node {id} replaced entry {i}@{t}, which node {k} committed"));
                }
            }
        }
    }

    /// Restarts `id` from exactly its durable state (with what its persister had
    /// written of its queue).
    fn restart(&mut self, id: NodeId) {
        // The persister had made some of its queue durable when the node stopped.
        let queued = self.nodes[&id].unreported.len();
        let landed = self.rng.gen_range(0..=queued);
        self.land(id, landed, false);
        let seed = self.rng.gen();
        let node = self.nodes.get_mut(&id).unwrap();
        node.unreported.clear();
        let d = node.durable.clone();
        let mut cfg = config(id, self.n, self.seed);
        cfg.seed = seed;
        cfg.membership = d.base_membership.clone();
        // The log may start below the snapshot (compaction stops at the floor); its
        // base was recorded with the snapshot.
        let applied = d.snap.map_or(0, |s| s.0);
        let entries: Vec<Entry> = d.log.into_values().collect();
        if entries.first().is_some_and(|f| f.index != d.base.0 + 1) || d.base.0 > applied {
            self.fail(format!("node {id}: durable base {:?} does not fit its log or snapshot {applied}", d.base));
        }
        node.core = RawNode::restore(cfg, d.hs, d.base, entries, applied).unwrap();
        node.was_leader_term = None;
        // What the node had sent may still arrive, or be lost with it: everything it
        // let out before crashing must have been safe to let out.
        if self.rng.gen_bool(0.5) {
            self.net.retain(|m| m.from != id);
        }
    }

    /// A node snapshots its state machine at its applied index and compacts its log
    /// as far as it may, like the driver does.
    fn snapshot(&mut self) {
        let id = self.any_node();
        let node = self.nodes.get_mut(&id).unwrap();
        let applied = node.core.status().applied;
        let Some(term) = node.core.log().term(applied) else { return };
        if applied == 0 || node.durable.snap.is_some_and(|s| s.0 >= applied) {
            return;
        }
        let c = node.core.compactable().max(node.durable.base.0);
        let c_term = node.core.log().term(c).expect("at or above the base");
        node.durable.snap_membership = node.core.membership_at(applied).cloned();
        node.durable.base_membership = node.core.membership_at(c).cloned();
        node.durable.snap = Some((applied, term));
        node.durable.base = (c, c_term);
        node.core.compact(c);
        node.durable.log = node.durable.log.split_off(&(c + 1));
        self.compactions += 1;
    }

    fn partition(&mut self) {
        for g in self.group.values_mut() {
            *g = self.rng.gen_range(0..2);
        }
    }

    fn heal(&mut self) {
        for g in self.group.values_mut() {
            *g = 0;
        }
    }

    fn check(&mut self) {
        // Commit indexes seen anywhere name committed entries; they never change.
        let mut newly = Vec::new();
        for (id, n) in &self.nodes {
            let st = n.core.status();
            if st.commit > st.last_index {
                self.fail(format!("node {id} commit {} beyond its log {}", st.commit, st.last_index));
            }
            let log = n.core.log();
            for i in log.first_index()..=st.commit {
                let e = log.entry(i).expect("within the log");
                newly.push((*id, st.term, e.index, e.term, e.data.clone()));
            }
        }
        for (id, node_term, index, term, data) in newly {
            match self.committed.get_mut(&index) {
                Some((t, d, _)) if (*t, &*d) != (term, &data) => {
                    let t = *t;
                    self.fail(format!("committed entry {index} changed: node {id} has term {term}, earlier term {t}"))
                }
                Some((_, _, committed_by)) => *committed_by = (*committed_by).min(node_term),
                None => {
                    self.committed.insert(index, (term, data, node_term));
                }
            }
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        // The floor: every member durably holds every entry up to any node's floor.
        let floor = self.nodes.values().map(|n| n.core.floor()).max().unwrap_or(0);
        for (id, n) in self.floor_bound() {
            if n.durable.last_index() < floor {
                for (j, m) in &self.nodes {
                    eprintln!(
                        "node {j}: floor {} durable last {} base {:?} snap {:?} hs {:?} core {:?} members {:?}",
                        m.core.floor(),
                        m.durable.last_index(),
                        m.durable.base,
                        m.durable.snap,
                        m.durable.hs,
                        m.core.status(),
                        m.core.membership().members.iter().map(|(i, x)| (*i, x.learner)).collect::<Vec<_>>()
                    );
                }
                self.fail(format!("node {id} durably holds {} < floor {floor}", n.durable.last_index()));
            }
        }
        for &id in &ids {
            let st = self.nodes[&id].core.status();
            if st.role != Role::Leader {
                continue;
            }
            // Election safety: one leader per term.
            match self.leaders.get(&st.term) {
                Some(&l) if l != id => self.fail(format!("two leaders in term {}: {l} and {id}", st.term)),
                Some(_) => {}
                None => {
                    self.leaders.insert(st.term, id);
                    if self.transfers_asked.contains(&(st.term - 1, id)) {
                        self.transfers_done += 1;
                    }
                }
            }
            // Leader completeness: a new leader holds every entry committed in an earlier
            // term (compacted ones are in its snapshot, which covers only committed
            // entries). A leader of an older term may coexist with one that has since
            // committed more; it is not required to hold that.
            if self.nodes[&id].was_leader_term != Some(st.term) {
                let log = self.nodes[&id].core.log();
                for (index, (term, _, committed_by)) in self.committed.range(log.first_index() - 1..) {
                    if *committed_by < st.term && log.term(*index) != Some(*term) {
                        self.fail(format!("leader {id} of term {} lacks committed entry {index}@{term}", st.term));
                    }
                }
                self.nodes.get_mut(&id).unwrap().was_leader_term = Some(st.term);
            }
        }
        // Log matching: same index and term means identical prefixes (where both hold them).
        for (i, &a) in ids.iter().enumerate() {
            for &b in &ids[i + 1..] {
                let (la, lb) = (self.nodes[&a].core.log(), self.nodes[&b].core.log());
                let lo = la.first_index().max(lb.first_index());
                let hi = la.last_index().min(lb.last_index());
                if let Some(k) = (lo..=hi).rev().find(|&k| la.term(k) == lb.term(k)) {
                    if (lo..=k).any(|j| la.entry(j) != lb.entry(j)) {
                        self.fail(format!("log matching: nodes {a} and {b} agree at {k} but differ before"));
                    }
                }
            }
        }
    }

    fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            self.step += 1;
            self.last_event = "other";
            let r: f64 = self.rng.gen();
            match r {
                r if r < 0.55 => {
                    // Deliver in proportion to the backlog so that delays stay bounded.
                    for _ in 0..1 + self.net.len() / 6 {
                        self.deliver();
                    }
                }
                r if r < 0.85 => self.tick_all(),
                r if r < 0.94 => self.propose(),
                r if r < 0.95 => {
                    self.last_event = "change_membership";
                    self.change_membership()
                }
                r if r < 0.96 => self.partition(),
                r if r < 0.975 => self.heal(),
                r if r < 0.98 => {
                    self.last_event = "crash_restart";
                    self.crash_restart()
                }
                r if r < 0.99 => {
                    self.last_event = "snapshot";
                    self.snapshot()
                }
                r if r < 0.995 => {
                    let id = self.any_node();
                    self.nodes.get_mut(&id).unwrap().core.campaign();
                    self.process(id, Vec::new());
                }
                _ => {
                    self.last_event = "transfer_leader";
                    self.transfer_leader();
                }
            }
            self.check();
        }
    }

    /// A leader is asked to hand leadership to a random member (or to whoever is most
    /// up to date); it refuses proposals until the transfer succeeds or is given up.
    fn transfer_leader(&mut self) {
        let Some(id) = self.any_leader() else { return };
        let to = if self.rng.gen_bool(0.5) { Some(self.any_node()) } else { None };
        let core = &mut self.nodes.get_mut(&id).unwrap().core;
        let term = core.status().term;
        if let Ok(t) = core.transfer_leader(to) {
            self.transfers_asked.push((term, t));
        }
        self.process(id, Vec::new());
    }

    /// Delivers until nothing is in flight; a network that never quiets is a livelock.
    fn drain_network(&mut self) {
        for _ in 0..1_000_000 {
            if self.net.is_empty() {
                return;
            }
            self.deliver();
        }
        for m in self.net.iter().take(6) {
            eprintln!("in flight: {m:?}");
        }
        for (id, n) in &self.nodes {
            eprintln!(
                "node {id}: {:?} first {} floor/compactable {}",
                n.core.status(),
                n.core.log().first_index(),
                n.core.compactable()
            );
        }
        self.fail("livelock: messages never stop without ticks".into());
    }

    /// Heals everything and checks that the cluster converges: one leader, equal logs.
    fn converge(&mut self) {
        self.heal();
        self.drop_rate = 0.0;
        self.torn_rate = 0.0;
        for _ in 0..500 {
            self.step += 1;
            for _ in 0..20 {
                self.deliver();
            }
            self.tick_all();
            self.check();
        }
        self.drain_network();
        let leaders: Vec<_> = self.nodes.values().filter(|n| n.core.status().role == Role::Leader).collect();
        if leaders.len() != 1 {
            for (id, n) in &self.nodes {
                eprintln!("node {id}: {:?} up {} membership {:?}", n.core.status(), n.up, n.core.membership());
            }
            self.fail(format!("no single leader after healing: {}", leaders.len()));
        }
        // One more heartbeat round so that followers learn the final commit index.
        for _ in 0..10 {
            self.tick_all();
            self.drain_network();
        }
        // Every member of the final configuration holds the leader's log; removed nodes
        // are left behind.
        let leader = &self.nodes.values().find(|n| n.core.status().role == Role::Leader).unwrap().core;
        let members = leader.membership().clone();
        let lead = leader.log();
        let in_cluster = || self.nodes.iter().filter(|(id, _)| members.contains(**id));
        let lo = in_cluster().map(|(_, n)| n.core.log().first_index()).max().unwrap();
        let last = lead.last_index();
        for (id, n) in in_cluster() {
            let log = n.core.log();
            if log.last_index() != last || (lo..=last).any(|i| log.entry(i) != lead.entry(i)) {
                self.fail(format!("logs differ after healing: node {id}"));
            }
            if n.core.status().commit != last {
                self.fail(format!("node {id} has not committed everything after healing"));
            }
        }
        eprintln!(
            "seed {}: {} nodes ({} at the end, {} configuration changes), {} proposals, {} committed, {} terms, {} compactions, {} snapshots installed, {}/{} leadership transfers took effect",
            self.seed,
            self.n,
            members.members.len(),
            self.conf_changes,
            self.proposals,
            self.committed.len(),
            self.leaders.len(),
            self.compactions,
            self.installs,
            self.transfers_done,
            self.transfers_asked.len()
        );
    }
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("RAFTKV_SIM_SEED") {
        return vec![s.parse().expect("RAFTKV_SIM_SEED must be a number")];
    }
    let count: u64 = std::env::var("RAFTKV_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    (1..=count).collect()
}

#[test]
fn simulation_safety_under_faults_and_convergence_after_healing() {
    let mut total_commits = 0;
    for seed in seeds() {
        let mut sim = Sim::new(seed);
        sim.run(4000);
        sim.converge();
        total_commits += sim.committed.len();
    }
    // A simulation in which nothing commits proves nothing.
    assert!(total_commits > 0);
}
