//! The handle through which the services reach a node: status, proposals (forwarded
//! to the leader when this node does not lead), reads and leadership transfer.
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::forwarder::Forward;
use super::{forward, Input, Metrics, NodeStatus, Shared};
use crate::config::MAX_REQUEST_WAIT;
use crate::error::{Error, Result};
use crate::mvcc::{Applied, Command, Store};
use crate::proto as pb;
use crate::raft::{Index, Message, NodeId, Term};
use crate::transport::convert::Names;
use crate::transport::PeerClient;

/// A cheap, cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle(pub(super) Arc<Shared>);

impl NodeHandle {
    pub fn id(&self) -> NodeId {
        self.0.id
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Where clients reach this node.
    pub fn client_urls(&self) -> &[String] {
        &self.0.client_urls
    }

    /// Every member's client URLs, by name: this node's own, the others' as they
    /// answer within `wait` (a member that does not has none listed).
    pub async fn member_client_urls(&self, wait: Duration) -> std::collections::BTreeMap<String, Vec<String>> {
        let asks = self.0.peers.clients().into_iter().map(|(id, mut c)| async move {
            let mut req = tonic::Request::new(pb::ClientUrlsRequest {});
            req.set_timeout(wait);
            let urls = tokio::time::timeout(wait, c.client_urls(req)).await;
            let urls = urls.ok().and_then(|r| r.ok()).map(|r| r.into_inner().urls).unwrap_or_default();
            (self.0.peers.names.name(id), urls)
        });
        let mut all: std::collections::BTreeMap<_, _> = futures::future::join_all(asks).await.into_iter().collect();
        all.insert(self.0.name.clone(), self.0.client_urls.clone());
        all
    }

    pub fn names(&self) -> &Names {
        &self.0.peers.names
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The node's status; `applied` is what the state machine has applied.
    pub fn status(&self) -> NodeStatus {
        let mut st = self.0.status.borrow().clone();
        st.applied = self.0.store.applied();
        st
    }

    pub fn status_watch(&self) -> watch::Receiver<NodeStatus> {
        self.0.status.clone()
    }

    /// The node's status and the log's last `tail` entries still held (index, term and
    /// kind, oldest first), as of one moment; `applied` is the state machine's.
    pub async fn status_view(&self, tail: usize) -> Result<(NodeStatus, super::LogTail)> {
        let (mut st, entries) = self.ask(|reply| Input::StatusView { tail, reply }).await?;
        st.applied = self.0.store.applied();
        Ok((st, entries))
    }

    pub fn leader_name(&self) -> Option<String> {
        self.status().leader.map(|l| self.0.peers.names.name(l))
    }

    /// The state machine, for serializable reads.
    pub fn store(&self) -> &Arc<Store> {
        &self.0.store
    }

    pub(super) async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Input) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.0.input.send(make(tx)).await.map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)
    }

    /// Offers a received snapshot (built into the engine file at `path`) to the core;
    /// answered once it is installed durably, or refused.
    pub async fn install_snapshot(&self, msg: Message, built: crate::mvcc::snapshot::Built) -> Result<Message> {
        self.ask(|reply| Input::InstallSnapshot { msg, built, reply }).await
    }

    pub async fn step_request(&self, msg: Message) -> Result<Message> {
        self.ask(|reply| Input::Raft { msg, reply: Some(reply) }).await
    }

    /// Feeds a peer request to the core and returns where its answer will come:
    /// requests fed one after another, each awaited, reach the core in that order.
    pub async fn step_queued(&self, msg: Message) -> Result<oneshot::Receiver<Message>> {
        let (reply, answer) = oneshot::channel();
        self.0.input.send(Input::Raft { msg, reply: Some(reply) }).await.map_err(|_| Error::Shutdown)?;
        Ok(answer)
    }

    /// Feeds a peer message that has no answer.
    pub async fn step_oneway(&self, msg: Message) -> Result<()> {
        self.0.input.send(Input::Raft { msg, reply: None }).await.map_err(|_| Error::Shutdown)
    }

    pub async fn campaign(&self) -> Result<()> {
        self.0.input.send(Input::Campaign).await.map_err(|_| Error::Shutdown)
    }

    pub async fn become_follower(&self) -> Result<()> {
        self.0.input.send(Input::BecomeFollower).await.map_err(|_| Error::Shutdown)
    }

    /// Appends on this node only, if it leads, without waking replication: the
    /// controller bridge's STORE. Returns the entry's index.
    pub async fn propose_lazy(&self, cmd: &Command) -> Result<Index> {
        let data = cmd.encode();
        self.ask(|reply| Input::ProposeLazy { data, reply }).await?
    }

    /// Stops every task of this node (the controller bridge's SHUTDOWN).
    pub fn shutdown(&self) {
        let _ = self.0.shutdown.send(true);
    }

    /// The error that made the node stop itself, if any.
    pub fn fatal_error(&self) -> Option<String> {
        self.0.fatal.lock().unwrap().clone()
    }

    /// Resolves once the node has been told to stop.
    pub async fn stopped(&self) {
        let mut rx = self.0.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Proposes on this node only (no forwarding) and waits until it is applied.
    /// A session command is stamped with this node's clock: the log time by which
    /// sessions expire is the appending leader's.
    pub async fn propose_here(&self, data: Bytes, deadline: Duration) -> Result<Applied> {
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let data = Command::stamp(data, now_ms);
        let fut = async {
            let (tx, rx) = oneshot::channel();
            // Not handed to the driver: nothing was appended.
            self.0.input.send(Input::Propose { data, reply: tx }).await.map_err(|_| Error::Shutdown)?;
            // Handed over, then dropped unanswered: it may have been appended.
            rx.await.map_err(|_| Error::OutcomeUnknown("the node stopped before the entry committed".into()))?
        };
        tokio::time::timeout(deadline, fut).await.map_err(|_| Error::Timeout)?
    }

    pub async fn read_index_here(&self, deadline: Duration) -> Result<Index> {
        let fut = self.ask(|reply| Input::ReadIndex { reply });
        tokio::time::timeout(deadline, fut).await.map_err(|_| Error::Timeout)??
    }

    pub(super) async fn wait_applied(&self, index: Index) -> Result<()> {
        let mut applied = self.0.store.applied_watch();
        applied.wait_for(|a| *a >= index).await.map(|_| ()).map_err(|_| Error::Shutdown)
    }

    /// Waits up to two maximal election timeouts for a leader to be known. Asks the
    /// driver, not the published status: that may lag one batch behind the answer
    /// ("no leader") that made the caller wait.
    async fn wait_for_leader(&self, deadline: Duration) {
        let wait = (self.0.election_timeout * 4).min(deadline);
        let _ = tokio::time::timeout(wait, self.ask(|reply| Input::WaitLeader { reply })).await;
    }

    /// Waits up to `max` for this node to know a leader other than `failed`, or one
    /// of a term after `term`.
    async fn wait_leader_change(&self, failed: Option<NodeId>, term: Term, max: Duration) {
        let mut status = self.0.status.clone();
        let changed = async {
            if status.wait_for(|s| s.leader.is_some() && (s.leader != failed || s.term > term)).await.is_err() {
                // The driver stopped: no change will come.
                std::future::pending::<()>().await;
            }
        };
        let _ = tokio::time::timeout(max, changed).await;
    }

    /// Runs a request forwarded here by another node. If no leader is known (an
    /// election or a handover is under way), waits for one and runs it once more, so
    /// that the forwarding node is pointed at the new leader instead of failing.
    pub async fn forwarded<T, F, Fut>(&self, deadline: Duration, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        match f().await {
            Err(Error::NoLeader | Error::NotLeader { leader: None }) => {
                self.wait_for_leader(deadline).await;
                f().await
            }
            other => other,
        }
    }

    fn client_of(&self, leader: &str) -> Result<(NodeId, PeerClient)> {
        let id = self.0.peers.names.id(leader).map_err(|_| Error::NoLeader)?;
        Ok((id, self.0.peers.client(id).ok_or(Error::NoLeader)?))
    }

    /// Runs `here` on this node if it leads, else `remote` against the leader;
    /// with no leader known, waits a little for an election first.
    pub(super) async fn via_leader<T, H, HF, R, RF>(&self, deadline: Duration, here: H, remote: R) -> Result<T>
    where
        H: Fn() -> HF,
        HF: std::future::Future<Output = Result<T>>,
        R: Fn(NodeId, PeerClient) -> RF,
        RF: std::future::Future<Output = Result<T>>,
    {
        let started = std::time::Instant::now();
        // One more round needs a wait for an election, and the request again.
        let round = self.0.election_timeout * 5;
        let work = async {
            // Where to run next (None: here), and redirects left: a leader that has just
            // handed over names its successor.
            let mut target: Option<String> = None;
            let mut hops = 3;
            let mut waited = false;
            loop {
                // What this node knew before asking: a failure waits for it to change.
                let (leader_before, term_before) = {
                    let s = self.0.status.borrow();
                    (s.leader, s.term)
                };
                let result = match &target {
                    None => here().await,
                    // A leader no longer in this node's configuration (it removed
                    // itself) reads as none known.
                    Some(l) => match self.client_of(l) {
                        Ok((id, client)) => remote(id, client).await,
                        Err(e) => Err(e),
                    },
                };
                match result {
                    Err(Error::NotLeader { leader: Some(l) }) if hops > 0 => {
                        hops -= 1;
                        target = (l != self.0.name).then_some(l);
                    }
                    // No leader known, or the one taken for it knows none or is gone (a
                    // stopped one refuses connections: nothing was sent): asked again once
                    // a leader is known, for as long as the deadline leaves time for a
                    // round. A leader that hands over, or removes itself, may be followed
                    // by a second election before the request finds the new leader; a
                    // minority never finds one, and says so before its deadline.
                    Err(e @ (Error::NoLeader | Error::NotLeader { .. } | Error::LeaderUnreachable(_))) => {
                        if waited && started.elapsed() + round > deadline {
                            return Err(e);
                        }
                        // A pause first, unless this node has not waited yet and asked
                        // itself: it may not have heard of the next leader yet either,
                        // or it is the leader that removes itself (and says it is the
                        // leader it knows). The pause ends as soon as another leader
                        // (or a later term) is known: a write that met a dead leader
                        // goes to the next one the moment it is elected.
                        let tried = target.take();
                        if tried.is_some() || waited {
                            // A leader named but no longer known by name: the one the
                            // status shows (without one, any leader known ends the wait).
                            let failed = tried.and_then(|l| self.0.peers.names.id(&l).ok()).or(leader_before);
                            self.wait_leader_change(failed, term_before, self.0.election_timeout / 2).await;
                        }
                        waited = true;
                        self.wait_for_leader(deadline).await;
                        hops = 3;
                    }
                    other => return other,
                }
            }
        };
        tokio::time::timeout(deadline, work).await.map_err(|_| Error::Timeout)?
    }

    /// Hands leadership to the member named `to` (or the most up-to-date follower),
    /// through the leader wherever it is. Answers with the leader's name and term once
    /// this node knows a leader other than the one asked to step down.
    pub async fn transfer_leader(&self, to: Option<&str>, deadline: Duration) -> Result<(String, Term)> {
        let target = match to {
            Some(name) => Some(
                self.0.peers.names.id(name).map_err(|_| Error::InvalidArgument(format!("unknown member {name:?}")))?,
            ),
            None => None,
        };
        let target_name = to.unwrap_or_default().to_string();
        let here = || async move {
            let old = self.0.id;
            self.ask(|reply| Input::TransferLeader { to: target, reply }).await??;
            if target == Some(old) {
                let st = self.status();
                return Ok((self.0.name.clone(), st.term));
            }
            let mut w = self.0.status.clone();
            let st = w.wait_for(|s| s.leader.is_some_and(|l| l != old)).await.map_err(|_| Error::Shutdown)?.clone();
            Ok((self.0.peers.names.name(st.leader.expect("waited for")), st.term))
        };
        let remote = |_, mut c: PeerClient| {
            let target = target_name.clone();
            async move {
                let r = c.transfer_leader(pb::TransferLeaderRequest { target }).await.map_err(forward::remote_error)?;
                let r = r.into_inner();
                Ok((r.leader, r.term))
            }
        };
        self.via_leader(deadline, here, remote).await
    }

    /// Commits `cmd` through the leader, wherever it is, and waits until applied there.
    /// Past the quota, writes that add data are refused here, before anything is
    /// appended (deletes and compactions, which free space, go through).
    pub async fn propose(&self, cmd: &Command, deadline: Duration) -> Result<Applied> {
        let stored = self.0.store.status().stored_bytes;
        if cmd.grows_the_store() && stored >= self.0.quota_bytes {
            return Err(Error::QuotaExceeded { stored, quota: self.0.quota_bytes });
        }
        let data = cmd.encode();
        self.via_leader(
            deadline,
            || self.propose_here(data.clone(), deadline),
            |leader, _| {
                let command = data.clone();
                async move {
                    // Joins the batch going to the leader (`forwarder`).
                    let queue = self.0.peers.forwarder(leader).ok_or(Error::NoLeader)?;
                    let (reply, rx) = oneshot::channel();
                    let never_sent = || Error::LeaderUnreachable("this node is stopping".into());
                    let deadline = std::time::Instant::now() + deadline;
                    queue.send(Forward { command, deadline, reply }).await.map_err(|_| never_sent())?;
                    rx.await
                        .map_err(|_| Error::OutcomeUnknown("the node stopped while the leader had the write".into()))?
                }
            },
        )
        .await
    }

    /// Opens a client session through the log: its id, and its time to live (`ttl`
    /// if given, at most `--client-session-ttl`, at least one second).
    pub async fn open_session(&self, ttl: Option<Duration>, deadline: Duration) -> Result<(u64, Duration)> {
        let longest = self.0.session_ttl.max(Duration::from_secs(1));
        let ttl = ttl.unwrap_or(longest).clamp(Duration::from_secs(1), longest);
        let max_sessions = self.0.max_sessions.max(1);
        let cmd = Command::OpenSession { time_ms: 0, ttl_ms: ttl.as_millis() as u64, max_sessions };
        let a = self.propose(&cmd, deadline).await?;
        Ok((a.index, ttl))
    }

    /// Waits until this node's state machine reflects every write committed before
    /// the call (ReadIndex through the leader), so that a local read is linearizable.
    /// Concurrent reads share ReadIndex rounds, each bounded by the node's own deadline
    /// (not the first caller's), and share a round's error; a read whose round ran out
    /// of time, or was lost, asks on its own within what is left of its deadline.
    pub async fn linearizable_barrier(&self, deadline: Duration) -> Result<()> {
        let started = tokio::time::Instant::now();
        let node = self.clone();
        let round_deadline = (self.0.election_timeout * 4).clamp(Duration::from_secs(2), MAX_REQUEST_WAIT);
        let round = move || {
            let node = node.clone();
            async move { Some(node.read_point(round_deadline).await) }
        };
        let index = match tokio::time::timeout(deadline, self.0.reads.next(round)).await {
            Ok(Some(Ok(index))) => index,
            Ok(Some(Err(Error::Timeout)) | None) => self.read_point(deadline.saturating_sub(started.elapsed())).await?,
            Ok(Some(Err(e))) => return Err(e),
            Err(_) => return Err(Error::Timeout),
        };
        let left = deadline.saturating_sub(started.elapsed());
        tokio::time::timeout(left, self.wait_applied(index)).await.map_err(|_| Error::Timeout)?
    }

    /// One ReadIndex round through the leader: the commit index a linearizable read
    /// started now must wait for.
    async fn read_point(&self, deadline: Duration) -> Result<Index> {
        self.via_leader(
            deadline,
            || self.read_index_here(deadline),
            |_, mut c| async move {
                let r = c.read_index(pb::ReadIndexRequest {}).await.map_err(forward::remote_error)?;
                Ok(r.into_inner().index)
            },
        )
        .await
    }
}
