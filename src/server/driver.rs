//! The tokio driver that owns one core: ticker, inputs, and the Ready protocol
//! (send what may go → persist → hand committed entries to the applier → once durable,
//! send what waited and report `on_persisted`).
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;

use super::applier::{self, ProposalReply, Task};
use super::persister::{Durable, Job};
use super::{metrics, Input, Metrics, NodeStatus};
use crate::error::Error;
use crate::mvcc::snapshot::Built;
use crate::mvcc::Store;
use crate::raft::{
    ConfChangeError, Index, Message, MessageBody, NodeId, ProposeError, RawNode, Role, Term, TransferError,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// Inputs handled per loop iteration before the ready is processed (one batch).
const MAX_BATCH: usize = 4096;
/// Proposals are refused while the state machine trails the commit index by more than
/// this many entries (etcd's limit), so that the applier's queue stays bounded.
const MAX_APPLY_GAP: u64 = 5000;
/// Proposals are refused while this many entries wait for a quorum (etcd-raft's
/// `MaxUncommittedEntriesSize`, counted in entries: values are at most 1 MiB).
const MAX_UNCOMMITTED: u64 = 10_000;

/// Why the driver stops the node: it cannot go on from a state it cannot trust.
#[derive(Debug, thiserror::Error)]
pub(super) enum Fatal {
    #[error("the persister stopped")]
    PersisterStopped,
    #[error("the applier stopped")]
    ApplierStopped,
    #[error("write {0} reported durable, but it was not in flight")]
    NotInFlight(u64),
    #[error("snapshot {0} accepted without its state machine")]
    SnapshotMissing(Index),
    #[error("installing the snapshot failed: {0}")]
    Install(crate::mvcc::MvccError),
    #[error("applying committed entries failed: {0}")]
    Apply(crate::mvcc::MvccError),
    #[error("installed snapshot holds {installed:?}, not the accepted {accepted:?}")]
    SnapshotMismatch { installed: (Index, Term), accepted: (Index, Term) },
}

/// A ready's write handed to the persister, and what waits for it to be durable.
pub(super) struct InFlight {
    number: u64,
    /// Answers to peer requests, and requests to peers, that promise what it persists.
    held: Vec<(oneshot::Sender<Message>, Message)>,
    messages: Vec<Message>,
}

/// One peer's series, kept by the driver so that a message costs no lookup by name.
pub(super) struct PeerSeries {
    to: metrics::To,
    failures: Counter,
    sent: Counter,
    rejected: Counter,
    received: Counter,
    /// Set while this node leads.
    lag: Option<Gauge>,
    /// A snapshot sent to the peer, not yet answered: when, and its index.
    snapshot: Option<(std::time::Instant, Index)>,
}

impl PeerSeries {
    fn new(t: &metrics::Telemetry, names: &crate::transport::convert::Names, peer: NodeId) -> PeerSeries {
        let name = names.name(peer);
        let to = metrics::To::peer(name.clone());
        PeerSeries {
            failures: t.peer_failures.get_or_create(&to).clone(),
            sent: t.peer_appends_sent.get_or_create(&to).clone(),
            rejected: t.peer_appends_rejected.get_or_create(&to).clone(),
            received: t.peer_appends_received.get_or_create(&metrics::From::peer(name)).clone(),
            lag: None,
            snapshot: None,
            to,
        }
    }
}

pub(super) struct Driver {
    /// Per-peer metric series, by member id.
    pub peer_series: std::collections::HashMap<NodeId, PeerSeries>,
    /// The state machine's writer, on its own thread (a small batch while it is idle
    /// is applied here).
    pub applier: applier::Queue,
    pub store: Arc<Store>,
    /// The durable applied index the log was last compacted for.
    pub compacted_for: Index,
    /// A snapshot from the leader (a verified engine) that the core is being offered.
    pub incoming_snapshot: Option<Built>,
    pub core: RawNode,
    /// The Raft log's writer, on its own thread.
    pub persister: mpsc::UnboundedSender<Job>,
    /// The persister's reports of batches made durable.
    pub durable: mpsc::UnboundedReceiver<Durable>,
    /// Writes being persisted, oldest first.
    pub in_flight: VecDeque<InFlight>,
    /// Set, and the node stopped, when storage fails: a node must not go on from a
    /// state it cannot trust.
    pub fatal: Arc<std::sync::Mutex<Option<String>>>,
    /// A failure noticed while handling an input; stops the node at the next ready.
    pub fatal_error: Option<Fatal>,
    /// The members' names and links, kept in step with the configuration (`Ready::membership`).
    pub links: Arc<super::peers::Peers>,
    pub input: mpsc::Receiver<Input>,
    pub peers: BTreeMap<NodeId, mpsc::Sender<Message>>,
    pub status: watch::Sender<NodeStatus>,
    pub metrics: Arc<Metrics>,
    pub tick: Duration,
    pub shutdown: watch::Receiver<bool>,
    pub shutdown_tx: watch::Sender<bool>,
    /// Answers to peer requests, held until what they promise is persisted.
    pub held: Vec<(oneshot::Sender<Message>, Message)>,
    pub proposals: BTreeMap<Index, (Term, ProposalReply)>,
    /// Proposals that arrived during a leadership transfer: proposed if it is given
    /// up, or refused with the new leader's name once that is known, so that their
    /// callers go there.
    pub parked: Vec<(bytes::Bytes, ProposalReply)>,
    /// Callers waiting for the outcome of a leadership transfer.
    pub transfers: Vec<oneshot::Sender<Result<(), Error>>>,
    /// Pending ReadIndex requests, by context, with the term they were asked in: the
    /// core drops its own when it stops leading, so these are failed then too.
    pub reads: HashMap<u64, (Term, oneshot::Sender<Result<Index, Error>>)>,
    pub next_read: u64,
    /// Callers waiting for a leader to be known.
    pub leader_waiters: Vec<oneshot::Sender<()>>,
}

impl Driver {
    pub async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                _ = ticker.tick() => {
                    self.core.tick();
                    // A level, read by scrapes: once a tick, not in every batch.
                    let leading = self.core.status().role == Role::Leader;
                    self.update_lag(leading);
                }
                // Before new inputs: what waits for the disk goes out as soon as it may.
                done = self.durable.recv() => {
                    let Some(done) = done else { break };
                    self.persisted(done);
                    while let Ok(done) = self.durable.try_recv() {
                        self.persisted(done);
                    }
                }
                input = self.input.recv() => {
                    let Some(input) = input else { break };
                    self.handle(input);
                    // Everything that queued meanwhile joins this batch: one ready, one persist.
                    for _ in 0..MAX_BATCH {
                        match self.input.try_recv() {
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
            }
            if let Err(e) = self.process_ready() {
                tracing::error!("storage failed, stopping the node: {e}");
                *self.fatal.lock().unwrap() = Some(e.to_string());
                let _ = self.shutdown_tx.send(true);
                break;
            }
        }
        let st = self.core.status();
        tracing::info!(
            term = st.term,
            commit = st.commit,
            fsyncs = self.metrics.fsyncs.load(Ordering::Relaxed),
            entries_persisted = self.metrics.entries_persisted.load(Ordering::Relaxed),
            appends_sent = self.metrics.appends_sent.load(Ordering::Relaxed),
            "raft driver stopped"
        );
    }

    /// The core's state as the node publishes it.
    fn node_status(&self) -> NodeStatus {
        let st = self.core.status();
        NodeStatus {
            role: st.role,
            term: st.term,
            leader: st.leader,
            vote: st.vote,
            commit: st.commit,
            applied: st.applied,
            last_index: st.last_index,
            first_index: self.core.log().first_index(),
        }
    }

    fn leader_name(&self, leader: Option<NodeId>) -> Option<String> {
        leader.map(|l| self.links.names.name(l))
    }

    fn not_leader(&self, leader: Option<NodeId>) -> Error {
        match self.leader_name(leader) {
            Some(l) => Error::NotLeader { leader: Some(l) },
            None => Error::NoLeader,
        }
    }

    fn propose_error(&self, e: ProposeError) -> Error {
        match e {
            ProposeError::NotLeader { leader } => self.not_leader(leader),
            // Lazy proposals during a transfer (others are parked), and any proposal to a
            // leader whose own removal is under way.
            ProposeError::Transferring => Error::NoLeader,
        }
    }

    fn propose(&mut self, data: bytes::Bytes, reply: ProposalReply) {
        let st = self.core.status();
        let gap = st.commit.saturating_sub(self.store.applied());
        if gap > MAX_APPLY_GAP && st.role == Role::Leader {
            let why = format!("the state machine is {gap} entries behind the commit index");
            let _ = reply.send(Err(Error::TooManyRequests(why)));
            return;
        }
        // Entries a leader appended but cannot commit (no quorum answers) are bounded,
        // and so are the proposals waiting on them.
        let uncommitted = st.last_index.saturating_sub(st.commit);
        if uncommitted > MAX_UNCOMMITTED && st.role == Role::Leader {
            let why = format!("{uncommitted} entries are appended but not committed");
            let _ = reply.send(Err(Error::TooManyRequests(why)));
            return;
        }
        if self.core.transferee().is_some() {
            self.parked.push((data, reply));
            return;
        }
        match self.core.propose(data, true) {
            Ok((index, term)) => {
                self.proposals.insert(index, (term, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(self.propose_error(e)));
            }
        }
    }

    /// Once a leadership transfer is over: parked proposals are proposed (it was given
    /// up) or, once the new leader is known, refused with its name (so that callers go
    /// there rather than fail); the callers waiting for the transfer learn its outcome.
    fn finish_transfer(&mut self) {
        if self.core.transferee().is_some() || (self.parked.is_empty() && self.transfers.is_empty()) {
            return;
        }
        let st = self.core.status();
        let still_leader = st.role == Role::Leader;
        if still_leader || st.leader.is_some() {
            for (data, reply) in std::mem::take(&mut self.parked) {
                if still_leader {
                    self.propose(data, reply);
                } else {
                    let _ = reply.send(Err(self.not_leader(st.leader)));
                }
            }
        }
        for tx in std::mem::take(&mut self.transfers) {
            let _ = tx.send(if still_leader {
                Err(Error::Aborted("the transferee did not take over within an election timeout".into()))
            } else {
                Ok(())
            });
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Raft { msg, reply } => {
                self.count_peer_message(&msg);
                let answer = self.core.step(msg);
                if let (Some(tx), Some(answer)) = (reply, answer) {
                    self.held.push((tx, answer));
                }
            }
            Input::Propose { data, reply } => self.propose(data, reply),
            Input::ProposeLazy { data, reply } => {
                let _ = reply
                    .send(self.core.propose(data, false).map(|(index, _)| index).map_err(|e| self.propose_error(e)));
            }
            Input::TransferLeader { to, reply } => match self.core.transfer_leader(to) {
                Ok(t) if t == self.core.id() => {
                    let _ = reply.send(Ok(()));
                }
                Ok(_) => self.transfers.push(reply),
                Err(TransferError::NotLeader { leader }) => {
                    let _ = reply.send(Err(self.not_leader(leader)));
                }
                Err(e @ TransferError::NoOtherMember) => {
                    let _ = reply.send(Err(Error::FailedPrecondition(e.to_string())));
                }
                Err(e @ TransferError::NotAMember(_)) => {
                    let _ = reply.send(Err(Error::InvalidArgument(e.to_string())));
                }
            },
            Input::ReadIndex { reply } => {
                let ctx = self.next_read;
                self.next_read += 1;
                match self.core.read_index(ctx) {
                    Ok(()) => {
                        self.reads.insert(ctx, (self.core.status().term, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(self.propose_error(e)));
                    }
                }
            }
            Input::StatusView { tail, reply } => {
                let log = self.core.log();
                let from = log.first_index().max((log.last_index() + 1).saturating_sub(tail as Index));
                let tail = (from..=log.last_index()).filter_map(|i| log.entry(i)).map(|e| (e.index, e.term, e.kind));
                let _ = reply.send((self.node_status(), tail.collect()));
            }
            Input::WaitLeader { reply } => {
                if self.core.status().leader.is_some() {
                    let _ = reply.send(());
                } else {
                    self.leader_waiters.retain(|w| !w.is_closed());
                    self.leader_waiters.push(reply);
                }
            }
            Input::InstallSnapshot { msg, built, reply } => {
                // An older offer still pending is dropped, which removes it.
                self.incoming_snapshot = Some(built);
                if let Some(answer) = self.core.step(msg) {
                    self.held.push((reply, answer));
                }
            }
            Input::ConfChange { change, reply, applied } => match self.core.propose_conf_change(&change) {
                Ok((index, id)) => {
                    let term = self.core.status().term;
                    if index == 0 {
                        // Nothing was appended (a member already recorded as started).
                        let _ = applied.send(Ok(crate::mvcc::Applied::new(0, term, 0)));
                    } else {
                        self.proposals.insert(index, (term, applied));
                    }
                    let _ = reply.send(Ok((index, id)));
                }
                Err(ConfChangeError::NotLeader { leader }) => {
                    let _ = reply.send(Err(self.not_leader(leader)));
                }
                Err(e) => {
                    let _ = reply.send(Err(Error::Membership(e)));
                }
            },
            Input::Campaign => self.core.campaign(),
            Input::BecomeFollower => {
                let term = self.core.status().term;
                self.core.become_follower(term, None);
            }
        }
    }

    /// The per-peer series of `peer`, looked up once per peer.
    fn peer_series(&mut self, peer: NodeId) -> &mut PeerSeries {
        let (t, names) = (&self.metrics.telemetry, &self.links.names);
        self.peer_series.entry(peer).or_insert_with(|| PeerSeries::new(t, names, peer))
    }

    /// On the leader, each member's lag (entries of the log it is not known to hold)
    /// from the core's progress, so a member that stopped answering shows its lag
    /// growing; elsewhere no lag series at all.
    fn update_lag(&mut self, leading: bool) {
        if !leading {
            if self.peer_series.values().any(|s| s.lag.is_some()) {
                self.metrics.telemetry.peer_lag.clear();
                self.peer_series.values_mut().for_each(|s| s.lag = None);
            }
            return;
        }
        let last = self.core.log().last_index();
        let (t, names, series) = (&self.metrics.telemetry, &self.links.names, &mut self.peer_series);
        for (id, m) in self.core.matched() {
            let s = series.entry(id).or_insert_with(|| PeerSeries::new(t, names, id));
            let lag = s.lag.get_or_insert_with(|| t.peer_lag.get_or_create(&s.to).clone());
            lag.set(last.saturating_sub(m) as i64);
        }
    }

    /// Counts a message from a peer (or about one) in the per-peer series.
    fn count_peer_message(&mut self, m: &Message) {
        // Only members get series: a forged sender id must not grow them.
        if !self.links.names.knows(m.from) {
            return;
        }
        let t = self.metrics.clone();
        let s = self.peer_series(m.from);
        match &m.body {
            MessageBody::Unreachable => {
                s.failures.inc();
            }
            MessageBody::SnapshotFailed => {
                s.failures.inc();
                if let Some((sent, _)) = s.snapshot.take() {
                    t.telemetry.snapshot_send_failures.get_or_create(&s.to).inc();
                    t.telemetry.snapshot_send_seconds.get_or_create(&s.to).observe(sent.elapsed().as_secs_f64());
                }
            }
            MessageBody::AppendEntries { .. } => {
                s.received.inc();
            }
            MessageBody::AppendEntriesResponse { success: false, .. } => {
                s.rejected.inc();
            }
            // The answer to a snapshot: the member holds the snapshot's index.
            MessageBody::AppendEntriesResponse { success: true, match_index, .. }
                if s.snapshot.is_some_and(|(_, index)| *match_index >= index) =>
            {
                if let Some((sent, _)) = s.snapshot.take() {
                    t.telemetry.snapshot_sent.get_or_create(&s.to).inc();
                    t.telemetry.snapshot_send_seconds.get_or_create(&s.to).observe(sent.elapsed().as_secs_f64());
                }
            }
            _ => {}
        }
    }

    /// Hands requests to the peers' queues; a full or missing queue counts as unreachable.
    fn send(&mut self, messages: Vec<Message>) {
        if messages.iter().any(|m| matches!(m.body, MessageBody::RequestVote { pre_vote: true, .. })) {
            self.metrics.telemetry.pre_votes_started.inc();
        }
        for m in messages {
            match m.body {
                MessageBody::AppendEntries { .. } => {
                    self.metrics.appends_sent.fetch_add(1, Ordering::Relaxed);
                    self.peer_series(m.to).sent.inc();
                }
                MessageBody::InstallSnapshot { index, .. } => {
                    self.peer_series(m.to).snapshot = Some((std::time::Instant::now(), index));
                }
                _ => {}
            }
            let failed = Message::undelivered(&m.body, m.to, self.core.id());
            let delivered = self.peers.get(&m.to).is_some_and(|q| q.try_send(m).is_ok());
            if !delivered {
                self.count_peer_message(&failed);
                self.core.step(failed);
            }
        }
    }

    /// Once the applier has made more of the state durable (a checkpoint), the log is
    /// compacted up to it, keeping what the core still wants for slow followers.
    fn maybe_compact(&mut self) -> Result<(), Fatal> {
        let (durable, _) = self.store.durable();
        if durable <= self.compacted_for {
            return Ok(());
        }
        self.compacted_for = durable;
        let base = self.core.compactable().min(durable);
        if base < self.core.log().first_index() {
            return Ok(());
        }
        self.core.compact(base);
        self.persister.send(Job::Compact { base }).map_err(|_| Fatal::PersisterStopped)
    }

    /// The persister made every write up to `done` durable: what waited for them goes
    /// out, in order, and the core learns it.
    fn persisted(&mut self, Durable(number): Durable) {
        if self.in_flight.front().is_none_or(|w| w.number > number) {
            self.fatal_error.get_or_insert(Fatal::NotInFlight(number));
            return;
        }
        while let Some(write) = self.in_flight.pop_front_if(|w| w.number <= number) {
            for (tx, answer) in write.held {
                let _ = tx.send(answer);
            }
            self.send(write.messages);
        }
        self.core.on_persisted(number);
    }

    /// Messages and answers to peers that may go once write `wait_for` is durable: at
    /// once when nothing is being written, else held with that write (the latest in
    /// flight, since writes are made durable in order).
    fn after_write(
        &mut self,
        wait_for: Option<u64>,
        messages: Vec<Message>,
        held: Vec<(oneshot::Sender<Message>, Message)>,
    ) {
        match (wait_for, self.in_flight.back_mut()) {
            (Some(n), Some(last)) if last.number == n => {
                last.held.extend(held);
                last.messages.extend(messages);
            }
            (Some(n), _) => {
                // The core and the driver disagree on what is in flight.
                self.fatal_error.get_or_insert(Fatal::NotInFlight(n));
            }
            (None, _) => {
                for (tx, answer) in held {
                    let _ = tx.send(answer);
                }
                self.send(messages);
            }
        }
    }

    /// Installs a snapshot the core accepted at (index, term): the applier swaps the
    /// verified engine file in (renamed into place, durable), then the log, which now
    /// starts after it, drops what it covers.
    fn install_snapshot(&mut self, incoming: Option<Built>, index: Index, term: Term) -> Result<(), Fatal> {
        let Some(built) = incoming else {
            return Err(Fatal::SnapshotMissing(index));
        };
        let (tx, rx) = oneshot::channel();
        self.applier.send(Task::Install { built, reply: tx })?;
        let installed = tokio::task::block_in_place(|| rx.blocking_recv())
            .map_err(|_| Fatal::ApplierStopped)?
            .map_err(Fatal::Install)?;
        if installed != (index, term) {
            return Err(Fatal::SnapshotMismatch { installed, accepted: (index, term) });
        }
        self.persister.send(Job::Compact { base: index }).map_err(|_| Fatal::PersisterStopped)?;
        self.compacted_for = index;
        tracing::info!(index, term, "installed the leader's snapshot");
        self.metrics.telemetry.snapshots_installed.inc();
        // Entries this node proposed as a leader and the snapshot covers are never
        // handed to the applier here: whether the cluster kept them is unknown.
        let rest = self.proposals.split_off(&(index + 1));
        for (_, (_, tx)) in std::mem::replace(&mut self.proposals, rest) {
            let _ =
                tx.send(Err(Error::OutcomeUnknown("a snapshot from the new leader replaced this node's log".into())));
        }
        Ok(())
    }

    fn process_ready(&mut self) -> Result<(), Fatal> {
        if let Some(e) = self.fatal_error.take() {
            return Err(e);
        }
        self.maybe_compact()?;
        self.finish_transfer();
        while self.core.has_ready() {
            let mut rd = self.core.ready();
            // Members added get links before anything is sent to them; removed ones lose theirs.
            if let Some(m) = rd.membership.take() {
                self.links.update(&m, self.core.known_members(), &mut self.peers);
            }
            // Install an accepted snapshot first: saved as this node's own (its log now
            // starts after it), the log compacted to it, the state machine replaced.
            let incoming = self.incoming_snapshot.take();
            // An offer the core refused (stale) is dropped, which removes it.
            if let Some((index, term)) = rd.snapshot {
                self.install_snapshot(incoming, index, term)?;
            }
            // 0. What may go before the write (a leader's appends, Raft §10.2.1) goes.
            self.send(std::mem::take(&mut rd.messages));
            // 1. Persist hard state and entries (one write, one fdatasync, on the
            //    persister's thread) before anything that depends on them (votes,
            //    answers, requests, applying, the leader counting itself) happens:
            // 2. what the core says waits for a write (and answers to peers since the
            //    last ready) goes once it is durable; the core learns it in `persisted`.
            if rd.must_persist() {
                let job = Job::Persist { number: rd.number, hard_state: rd.hard_state, entries: rd.entries };
                self.persister.send(job).map_err(|_| Fatal::PersisterStopped)?;
                self.in_flight.push_back(InFlight { number: rd.number, held: Vec::new(), messages: Vec::new() });
            }
            let held = std::mem::take(&mut self.held);
            self.after_write(rd.wait_for, rd.persisted_messages, held);
            // 3. Apply: the applier applies in order and answers the proposals.
            if !rd.committed.is_empty() {
                let mut replies = Vec::new();
                for e in &rd.committed {
                    match self.proposals.remove(&e.index) {
                        Some((term, tx)) if term == e.term => replies.push((e.index, tx)),
                        Some((_, tx)) => {
                            self.metrics.telemetry.proposals_failed.inc();
                            let _ = tx.send(Err(Error::Dropped));
                        }
                        None => {}
                    }
                }
                self.applier.apply(rd.committed, replies)?;
            }
            for r in rd.reads {
                if let Some((_, tx)) = self.reads.remove(&r.ctx) {
                    let _ = tx.send(Ok(r.index));
                }
            }
        }
        // Answers to requests that changed nothing to persist.
        let held = std::mem::take(&mut self.held);
        self.after_write(self.core.pending_write(), Vec::new(), held);
        if let Some(e) = self.fatal_error.take() {
            return Err(e);
        }
        let st = self.core.status();
        // Reads the core no longer holds (it stopped leading, perhaps only for a moment
        // within this batch) fail now, pointing at the leader if one is known; the
        // forwarding node follows that hint.
        if !self.reads.is_empty() {
            let leading = st.role == Role::Leader;
            let leader = self.leader_name(st.leader);
            let stale: Vec<_> = self.reads.extract_if(|_, (term, _)| !leading || *term != st.term).collect();
            for (_, (_, tx)) in stale {
                let _ = tx.send(Err(Error::NotLeader { leader: leader.clone() }));
            }
        }
        self.metrics.pending_reads.store(self.reads.len() as u64, Ordering::Relaxed);
        if st.leader.is_some() {
            for tx in self.leader_waiters.drain(..) {
                let _ = tx.send(());
            }
        }
        self.links.leader.send_if_modified(|l| std::mem::replace(l, st.leader) != st.leader);
        let new = self.node_status();
        let voted_for_self = st.vote == Some(self.core.id());
        self.status.send_if_modified(|old| {
            if *old == new {
                return false;
            }
            if old.role != new.role || old.term != new.term {
                tracing::info!(role = ?new.role, term = new.term, leader = ?self.leader_name(new.leader), "role or term changed");
            }
            let telemetry = &self.metrics.telemetry;
            if new.leader.is_some() && new.leader != old.leader {
                telemetry.leader_changes.inc();
            }
            if new.role == Role::Leader && (old.role != Role::Leader || old.term != new.term) {
                telemetry.elections_won.inc();
            }
            // A node votes for itself in a new term only by campaigning (a single
            // voter wins at once, so its candidacy is never published).
            if new.term > old.term && voted_for_self {
                telemetry.elections_started.inc();
            }
            *old = new;
            true
        });
        Ok(())
    }
}
