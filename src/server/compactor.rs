//! Auto-compaction (etcd's `--auto-compaction-mode` and `--auto-compaction-retention`).
//! Only the leader decides, and its decision is a `Compact` entry in the log: a time-based
//! decision never depends on a follower's clock.
use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::NodeHandle;
use crate::config::AutoCompaction;
use crate::error::Error;
use crate::mvcc::{Command, MvccError, Revision};
use crate::raft::Role;

/// Revision mode checks this often (etcd's interval).
const REVISION_CHECK: Duration = Duration::from_secs(300);

/// The revision to compact to in periodic mode: the newest sample at least `retention`
/// old. Older samples are dropped.
fn periodic_target(samples: &mut VecDeque<(Instant, Revision)>, now: Instant, retention: Duration) -> Option<Revision> {
    let old_enough = |t: &Instant| now.duration_since(*t) >= retention;
    while samples.len() > 1 && old_enough(&samples[1].0) {
        samples.pop_front();
    }
    samples.front().filter(|(t, _)| old_enough(t)).map(|(_, r)| *r)
}

pub(super) async fn run(node: NodeHandle, mode: AutoCompaction, mut shutdown: watch::Receiver<bool>) {
    let period = match mode {
        AutoCompaction::Periodic(d) => (d / 10).clamp(Duration::from_millis(100), Duration::from_secs(3600)),
        AutoCompaction::Revision(_) => REVISION_CHECK,
    };
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut samples = VecDeque::new();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = ticker.tick() => {}
        }
        let st = node.store().status();
        // Every node samples, so that a new leader knows the past revisions too.
        samples.push_back((Instant::now(), st.revision));
        let target = match mode {
            AutoCompaction::Periodic(retention) => periodic_target(&mut samples, Instant::now(), retention),
            AutoCompaction::Revision(keep) => Some(st.revision.saturating_sub(keep)),
        };
        let Some(target) = target.filter(|t| *t > st.compacted) else { continue };
        if node.status().role != Role::Leader {
            continue;
        }
        match node.propose(&Command::Compact { revision: target }, Duration::from_secs(10)).await {
            Ok(_) => tracing::info!(revision = target, "auto-compaction: compacted the history"),
            // Another compaction got there first.
            Err(Error::Mvcc(MvccError::Compacted { .. })) => {}
            Err(e) => tracing::warn!(revision = target, "auto-compaction failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_compaction_targets_the_newest_revision_older_than_the_retention() {
        let t0 = Instant::now();
        let s = |secs: u64, rev| (t0 + Duration::from_secs(secs), rev);
        let mut samples: VecDeque<_> = [s(0, 10), s(10, 20), s(20, 30), s(30, 40)].into();
        let retention = Duration::from_secs(15);
        // At 25 s only the samples of 0 s and 10 s are 15 s old: compact to 20.
        assert_eq!(periodic_target(&mut samples, t0 + Duration::from_secs(25), retention), Some(20));
        assert_eq!(samples.len(), 3, "the sample of 0 s is no longer needed");
        // Nothing is old enough yet.
        let mut young: VecDeque<_> = [s(20, 30)].into();
        assert_eq!(periodic_target(&mut young, t0 + Duration::from_secs(25), retention), None);
    }
}
