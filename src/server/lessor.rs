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
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::forward;
use super::handle::NodeHandle;
use crate::error::{Error, Result};
use crate::mvcc::lease::MAX_LEASE_TTL;
use crate::mvcc::{Applied, Command};
use crate::proto as pb;
use crate::raft::{Role, Term};

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
    /// When each lease expires (leader only).
    expiry: HashMap<i64, Instant>,
    /// Leases whose revocation is in flight.
    revoking: HashSet<i64>,
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
    fn sync(&self, leading: Option<Term>, leases: &[(i64, i64)], now: Instant) -> Vec<i64> {
        let mut st = self.state.lock().unwrap();
        if st.leading != leading {
            // Starting to lead (or stopping): every lease gets a full TTL from now.
            st.expiry.clear();
            st.revoking.clear();
            st.leading = leading;
        }
        if leading.is_none() {
            return Vec::new();
        }
        let exists: HashSet<i64> = leases.iter().map(|(id, _)| *id).collect();
        st.expiry.retain(|id, _| exists.contains(id));
        st.revoking.retain(|id| exists.contains(id));
        for &(id, ttl) in leases {
            st.expiry.entry(id).or_insert(now + seconds(ttl));
        }
        let st = &mut *st;
        let room = MAX_REVOKING.saturating_sub(st.revoking.len());
        let expired: Vec<i64> = st
            .expiry
            .iter()
            .filter(|(id, at)| **at <= now && !st.revoking.contains(id))
            .map(|(id, _)| *id)
            .take(room)
            .collect();
        st.revoking.extend(&expired);
        expired
    }

    fn revoke_done(&self, id: i64) {
        self.state.lock().unwrap().revoking.remove(&id);
    }

    /// Seconds left of lease `id` (granted `ttl`), renewed first if asked; None when
    /// it has expired (its revocation is due or under way).
    fn remaining(&self, id: i64, ttl: i64, renew: bool, now: Instant) -> Option<i64> {
        let mut st = self.state.lock().unwrap();
        if st.revoking.contains(&id) {
            return None;
        }
        let at = *st.expiry.entry(id).or_insert(now + seconds(ttl));
        if at <= now {
            return None;
        }
        if renew {
            st.expiry.insert(id, now + seconds(ttl));
            return Some(ttl);
        }
        Some((at - now).as_secs_f64().ceil() as i64)
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
        for id in expired {
            let node = node.clone();
            tokio::spawn(async move {
                let deadline = node.0.election_timeout * 10;
                match node.propose_here(Command::LeaseRevoke { id }.encode(), deadline).await {
                    Ok(_) => tracing::info!(lease = format!("{id:x}"), "lease expired; revoked"),
                    Err(Error::Mvcc(crate::mvcc::MvccError::LeaseNotFound)) => {}
                    Err(e) => tracing::warn!(lease = format!("{id:x}"), "revoking an expired lease: {e}"),
                }
                node.0.lessor.revoke_done(id);
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
        self.propose(&Command::LeaseRevoke { id }, deadline).await
    }

    /// A keep-alive (`renew`) or a time-to-live question, answered by the leader.
    pub async fn lease_query(&self, id: i64, renew: bool, keys: bool, deadline: Duration) -> Result<LeaseInfo> {
        self.via_leader(
            deadline,
            || self.lease_query_here(id, renew, keys, deadline),
            |mut c| async move {
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
        let index = self.read_index_here(deadline).await?;
        tokio::time::timeout(deadline, self.wait_applied(index)).await.map_err(|_| Error::Timeout)??;
        let missing = LeaseInfo { ttl: -1, granted_ttl: 0, keys: Vec::new() };
        let Some(granted) = self.store().lease_ttl(id) else { return Ok(missing) };
        let Some(ttl) = self.0.lessor.remaining(id, granted, renew, Instant::now()) else { return Ok(missing) };
        let keys = if keys { self.store().read()?.lease_keys(id)? } else { Vec::new() };
        Ok(LeaseInfo { ttl, granted_ttl: granted, keys })
    }

    /// Every lease that exists, as of a linearizable read: (id, granted TTL).
    pub async fn lease_list(&self, deadline: Duration) -> Result<Vec<(i64, i64)>> {
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

    #[test]
    fn only_a_leader_expires_leases_and_a_new_term_restarts_every_ttl() {
        let l = Lessor::default();
        let t0 = Instant::now();
        let leases = [(1, 5), (2, 60)];
        assert!(l.sync(None, &leases, t0).is_empty());
        assert!(l.sync(None, &leases, t0 + seconds(100)).is_empty(), "a follower expires nothing");
        assert!(l.sync(Some(3), &leases, t0).is_empty());
        assert_eq!(l.sync(Some(3), &leases, t0 + seconds(6)), vec![1]);
        assert!(l.sync(Some(3), &leases, t0 + seconds(7)).is_empty(), "its revocation is in flight");
        assert_eq!(l.remaining(1, 5, true, t0 + seconds(7)), None, "an expired lease is not renewed");
        // Leading again in a later term: the TTLs start over.
        assert!(l.sync(Some(4), &leases, t0 + seconds(10)).is_empty());
        assert_eq!(l.remaining(1, 5, false, t0 + seconds(12)), Some(3));
        assert_eq!(l.remaining(1, 5, true, t0 + seconds(14)), Some(5));
        assert!(l.sync(Some(4), &leases, t0 + seconds(18)).is_empty(), "renewed at 14 s");
        assert_eq!(l.sync(Some(4), &leases, t0 + seconds(19)), vec![1]);
        l.revoke_done(1);
        assert!(l.sync(Some(4), &[(2, 60)], t0 + seconds(20)).is_empty(), "revoked leases are forgotten");
    }
}
