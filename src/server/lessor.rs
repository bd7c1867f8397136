//! The lessor: decides, on the leader, when leases expire, and revokes them through
//! the log (etcd's lessor).
//!
//! Which leases exist is replicated state (`mvcc::lease`); *when* each expires is the
//! leader's alone, by its clock: every lease's expiry is set to a full TTL from the
//! moment this node starts to lead (so a new leader extends the remaining TTLs rather
//! than expiring them at once), and again by each keep-alive. An expired lease is
//! revoked by a `LeaseRevoke` entry; a follower or a deposed leader (whose entries do
//! not commit) expires nothing. Keep-alives and time-to-live questions are answered by
//! the leader only, after a quorum confirmed it still leads.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::forward;
use super::handle::NodeHandle;
use crate::error::{Error, Result};
use crate::mvcc::lease::{Granted, LeaseMap, MAX_LEASE_TTL};
use crate::mvcc::{Applied, Command};
use crate::proto as pb;
use crate::raft::{Index, Role, Term};

/// How often the leader looks for expired leases.
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// Revocations in flight at most (etcd revokes at most 1,000 leases a second).
const MAX_REVOKING: usize = 200;

/// What a lease question is answered with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Seconds left; -1 when the lease does not exist.
    pub ttl: i64,
    pub granted_ttl: i64,
    pub keys: Vec<String>,
}

#[derive(Default)]
struct State {
    /// The term this node leads in; None while it does not.
    leading: Option<Term>,
    /// When each lease expires (leader only), with the index that granted it: a lease
    /// granted again under an old id starts afresh.
    expiry: HashMap<i64, (Index, Instant)>,
    /// Leases whose revocation is in flight (by granting index).
    revoking: HashMap<i64, Index>,
}

impl State {
    /// Leading in another term than before (or no longer): every lease gets a full TTL
    /// from the next question or check.
    fn enter(&mut self, leading: Option<Term>) {
        if self.leading != leading {
            self.expiry.clear();
            self.revoking.clear();
            self.leading = leading;
        }
    }

    /// Lease `id`'s expiry, set to a full TTL from `now` if not known yet.
    fn expiry(&mut self, id: i64, g: Granted, now: Instant) -> Instant {
        let e = self.expiry.entry(id).or_insert((g.since, now + seconds(g.ttl)));
        if e.0 != g.since {
            *e = (g.since, now + seconds(g.ttl));
        }
        e.1
    }
}

#[derive(Default)]
pub struct Lessor {
    state: Mutex<State>,
}

fn seconds(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

impl Lessor {
    /// Brings the expiry table up to date with the leases that exist and with this
    /// node's role; returns the leases that have expired and are not being revoked.
    fn sync(&self, leading: Option<Term>, leases: &LeaseMap, now: Instant) -> Vec<(i64, Index)> {
        let mut st = self.state.lock().unwrap();
        st.enter(leading);
        if leading.is_none() {
            return Vec::new();
        }
        let same = |id: &i64, since: &Index| leases.get(id).is_some_and(|g| g.since == *since);
        st.expiry.retain(|id, (since, _)| same(id, since));
        st.revoking.retain(|id, since| same(id, since));
        let mut expired = Vec::new();
        for (&id, &g) in leases {
            let at = st.expiry(id, g, now);
            if at <= now && !st.revoking.contains_key(&id) && st.revoking.len() + expired.len() < MAX_REVOKING {
                expired.push((id, g.since));
            }
        }
        st.revoking.extend(expired.iter().copied());
        expired
    }

    /// A revocation decided in term `term` has ended (committed or not).
    fn revoke_done(&self, id: i64, since: Index, term: Term) {
        let mut st = self.state.lock().unwrap();
        if st.leading == Some(term) && st.revoking.get(&id) == Some(&since) {
            st.revoking.remove(&id);
        }
    }

    /// Seconds left of lease `id` while leading in `term`, renewed first if asked;
    /// None when it has expired (its revocation is due or under way).
    fn remaining(&self, id: i64, g: Granted, term: Term, renew: bool, now: Instant) -> Option<i64> {
        let mut st = self.state.lock().unwrap();
        st.enter(Some(term));
        if st.revoking.get(&id) == Some(&g.since) {
            return None;
        }
        let at = st.expiry(id, g, now);
        if at <= now {
            return None;
        }
        if renew {
            st.expiry.insert(id, (g.since, now + seconds(g.ttl)));
            return Some(g.ttl);
        }
        // Whole seconds left, as etcd answers.
        Some((at - now).as_secs() as i64)
    }
}

/// Runs on every node until it stops: while it leads, revokes expired leases.
pub(super) async fn run(node: NodeHandle) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.stopped() => return,
        }
        let st = node.status();
        let leading = (st.role == Role::Leader).then_some(st.term);
        let expired = node.0.lessor.sync(leading, &node.store().leases(), Instant::now());
        if expired.is_empty() {
            continue;
        }
        let deadline = node.0.election_timeout * 10;
        // Only a leader a quorum still follows expires leases: one cut off from the
        // majority decides nothing by its clock.
        if let Err(e) = node.read_index_here(deadline).await {
            tracing::debug!("not revoking expired leases: {e}");
            for (id, since) in expired {
                node.0.lessor.revoke_done(id, since, st.term);
            }
            continue;
        }
        for (id, since) in expired {
            let node = node.clone();
            tokio::spawn(async move {
                match node.propose_here(Command::LeaseRevoke { id, since }.encode(), deadline).await {
                    Ok(_) => tracing::info!(lease = format!("{id:x}"), "lease expired; revoked"),
                    Err(Error::Mvcc(crate::mvcc::MvccError::LeaseNotFound)) => {}
                    Err(e) => tracing::warn!(lease = format!("{id:x}"), "revoking an expired lease: {e}"),
                }
                node.0.lessor.revoke_done(id, since, st.term);
            });
        }
    }
}

impl NodeHandle {
    /// The shortest TTL a lease gets (etcd's: one and a half election timeouts, in
    /// whole seconds), so that a new leader is elected before leases can expire.
    pub fn min_lease_ttl(&self) -> i64 {
        ((self.0.election_timeout.as_secs_f64() * 1.5).ceil() as i64).max(1)
    }

    /// Grants a lease for `ttl` seconds (raised to the minimum); `id` 0 lets this node
    /// choose one. Answers with its id and TTL.
    pub async fn lease_grant(&self, id: i64, ttl: i64, deadline: Duration) -> Result<(i64, i64)> {
        if ttl > MAX_LEASE_TTL {
            return Err(Error::OutOfRange("etcdserver: too large lease TTL".into()));
        }
        let ttl = ttl.max(self.min_lease_ttl());
        // etcd's ids are positive, chosen by the node that takes the request.
        let id = if id == 0 { (rand::random::<u64>() >> 1).max(1) as i64 } else { id };
        self.propose(&Command::LeaseGrant { id, ttl }, deadline).await?;
        Ok((id, ttl))
    }

    /// Revokes lease `id`, deleting its keys; the revision after it.
    pub async fn lease_revoke(&self, id: i64, deadline: Duration) -> Result<Applied> {
        if id == 0 {
            return Err(Error::Mvcc(crate::mvcc::MvccError::LeaseNotFound));
        }
        self.propose(&Command::LeaseRevoke { id, since: 0 }, deadline).await
    }

    /// A keep-alive (`renew`) or a time-to-live question, answered by the leader.
    pub async fn lease_query(&self, id: i64, renew: bool, keys: bool, deadline: Duration) -> Result<LeaseInfo> {
        self.via_leader(
            deadline,
            || self.lease_query_here(id, renew, keys, deadline),
            |_, mut c| async move {
                let r = c
                    .lease_query(pb::LeaseQueryRequest { id, renew, keys })
                    .await
                    .map_err(forward::remote_error)?
                    .into_inner();
                Ok(LeaseInfo { ttl: r.ttl, granted_ttl: r.granted_ttl, keys: r.keys })
            },
        )
        .await
    }

    /// Answers a lease question if this node leads: once a quorum has confirmed it
    /// does, and its state machine holds every lease committed before.
    pub async fn lease_query_here(&self, id: i64, renew: bool, keys: bool, deadline: Duration) -> Result<LeaseInfo> {
        let work = async {
            let index = self.read_index_here(deadline).await?;
            self.wait_applied(index).await?;
            let term = self.status().term;
            loop {
                // Still the leader of the term the ReadIndex confirmed; else the next
                // leader answers.
                let st = self.status();
                if st.role != Role::Leader || st.term != term {
                    return Err(Error::NotLeader { leader: self.leader_name() });
                }
                let Some(g) = self.store().lease(id) else {
                    return Ok(LeaseInfo { ttl: -1, granted_ttl: 0, keys: Vec::new() });
                };
                if let Some(ttl) = self.0.lessor.remaining(id, g, term, renew, Instant::now()) {
                    let keys = if keys { self.store().read()?.lease_keys(id)? } else { Vec::new() };
                    return Ok(LeaseInfo { ttl, granted_ttl: g.ttl, keys });
                }
                // Expired: answered once its revocation is applied (as etcd).
                tokio::time::sleep(CHECK_EVERY / 4).await;
            }
        };
        tokio::time::timeout(deadline, work).await.map_err(|_| Error::Timeout)?
    }

    /// Every lease that exists, as of a linearizable read.
    pub async fn lease_list(&self, deadline: Duration) -> Result<Arc<LeaseMap>> {
        self.linearizable_barrier(deadline).await?;
        Ok(self.store().leases())
    }
}

/// The lessor of a node, shared with its handle.
pub(super) fn new() -> Arc<Lessor> {
    Arc::new(Lessor::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases(list: &[(i64, i64, Index)]) -> LeaseMap {
        list.iter().map(|&(id, ttl, since)| (id, Granted { ttl, since })).collect()
    }

    #[test]
    fn only_a_leader_expires_leases_and_a_new_term_restarts_every_ttl() {
        let l = Lessor::default();
        let t0 = Instant::now();
        let all = leases(&[(1, 5, 10), (2, 60, 11)]);
        assert!(l.sync(None, &all, t0).is_empty());
        assert!(l.sync(None, &all, t0 + seconds(100)).is_empty(), "a follower expires nothing");
        assert!(l.sync(Some(3), &all, t0).is_empty());
        assert_eq!(l.sync(Some(3), &all, t0 + seconds(6)), vec![(1, 10)]);
        assert!(l.sync(Some(3), &all, t0 + seconds(7)).is_empty(), "its revocation is in flight");
        let g1 = all[&1];
        assert_eq!(l.remaining(1, g1, 3, true, t0 + seconds(7)), None, "an expired lease is not renewed");
        // Leading again in a later term: the TTLs start over.
        assert_eq!(l.remaining(1, g1, 4, false, t0 + seconds(10)), Some(5));
        l.revoke_done(1, 10, 3);
        assert!(l.sync(Some(4), &all, t0 + seconds(12)).is_empty());
        assert_eq!(l.remaining(1, g1, 4, true, t0 + seconds(14)), Some(5));
        assert!(l.sync(Some(4), &all, t0 + seconds(18)).is_empty(), "renewed at 14 s");
        assert_eq!(l.sync(Some(4), &all, t0 + seconds(19)), vec![(1, 10)]);
        l.revoke_done(1, 10, 4);
        // Granted again under the same id: a full TTL, not the old lease's expiry.
        let again = leases(&[(1, 5, 30), (2, 60, 11)]);
        assert!(l.sync(Some(4), &again, t0 + seconds(20)).is_empty());
        assert_eq!(l.remaining(1, again[&1], 4, false, t0 + seconds(21)), Some(4));
    }
}
