//! The applier: a thread of its own that writes the state machine, so that the driver
//! (ticks, heartbeats, the Raft log) never waits behind the engine. It applies the
//! committed batches the driver hands it, in order, answers the proposals among them,
//! checkpoints the engine (one durable commit) every so many entries or bytes,
//! removes compacted history while idle, and swaps in installed snapshots.
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::Error;
use crate::mvcc::snapshot::Built;
use crate::mvcc::{Applied, MvccError, Store};
use crate::raft::{Entry, Index, Term};

pub type ProposalReply = oneshot::Sender<Result<Applied, Error>>;

pub enum Task {
    /// Committed entries, and the callers waiting for some of them.
    Apply { entries: Vec<Entry>, replies: Vec<(Index, ProposalReply)> },
    /// Replace the state by a verified snapshot.
    Install { built: Built, reply: oneshot::Sender<Result<(Index, Term), MvccError>> },
}

/// Queued batches are applied together, in one engine transaction, up to this many
/// entries: under load the applier commits less often, and each commit carries more.
const MAX_COALESCED: usize = 8192;

/// When to checkpoint: after this many entries or bytes of commands applied.
#[derive(Clone, Copy, Debug)]
pub struct Checkpoints {
    pub every_entries: u64,
    pub every_bytes: u64,
}

pub struct Applier {
    pub store: Arc<Store>,
    pub tasks: mpsc::UnboundedReceiver<Task>,
    pub checkpoints: Checkpoints,
    /// Set, and the node stopped, when the engine fails.
    pub fatal: Arc<std::sync::Mutex<Option<String>>>,
    pub shutdown: watch::Sender<bool>,
    pub metrics: Arc<super::Metrics>,
}

impl Applier {
    /// Runs until the driver drops its end of the queue, then checkpoints.
    pub fn run(mut self) {
        if let Err(e) = self.work() {
            tracing::error!("the state machine failed, stopping the node: {e}");
            *self.fatal.lock().unwrap() = Some(e.to_string());
            let _ = self.shutdown.send(true);
            return;
        }
        if let Err(e) = self.store.checkpoint() {
            tracing::error!("final checkpoint failed: {e}");
        }
    }

    fn work(&mut self) -> Result<(), MvccError> {
        let (mut entries_since, mut bytes_since) = (0u64, 0u64);
        loop {
            let task = match self.tasks.try_recv() {
                Ok(task) => task,
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(()),
                Err(mpsc::error::TryRecvError::Empty) if self.store.compaction_pending() => {
                    self.store.compact_some()?;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Empty) => match self.tasks.blocking_recv() {
                    Some(task) => task,
                    None => return Ok(()),
                },
            };
            // Later batches already queued join this one (an install waits its turn).
            let mut next = None;
            let task = match task {
                Task::Apply { mut entries, mut replies } => {
                    while entries.len() < MAX_COALESCED {
                        match self.tasks.try_recv() {
                            Ok(Task::Apply { entries: more, replies: more_replies }) => {
                                entries.extend(more);
                                replies.extend(more_replies);
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    Task::Apply { entries, replies }
                }
                other => other,
            };
            for task in std::iter::once(task).chain(next) {
                self.run_task(task, &mut entries_since, &mut bytes_since)?;
            }
        }
    }

    fn run_task(&mut self, task: Task, entries_since: &mut u64, bytes_since: &mut u64) -> Result<(), MvccError> {
        match task {
            Task::Apply { entries, replies } => {
                let started = std::time::Instant::now();
                let outcomes = self.store.apply(&entries)?;
                self.metrics.telemetry.apply_seconds.observe(started.elapsed().as_secs_f64());
                let revision = self.store.status().revision;
                for (index, reply) in replies {
                    let outcome = match outcomes.binary_search_by_key(&index, |(i, _)| *i) {
                        Ok(at) => outcomes[at].1.clone().map_err(Error::Mvcc),
                        // Not a client command the store understood (it logged why).
                        Err(_) => {
                            let term = entries.iter().find(|e| e.index == index).map_or(0, |e| e.term);
                            Ok(Applied::new(index, term, revision))
                        }
                    };
                    let _ = reply.send(outcome);
                }
                *entries_since += entries.len() as u64;
                *bytes_since += entries.iter().map(|e| e.data.len() as u64).sum::<u64>();
                if *entries_since >= self.checkpoints.every_entries || *bytes_since >= self.checkpoints.every_bytes {
                    let started = std::time::Instant::now();
                    let (index, _) = self.store.checkpoint()?;
                    self.metrics.telemetry.checkpoint_seconds.observe(started.elapsed().as_secs_f64());
                    tracing::debug!(index, "checkpoint");
                    (*entries_since, *bytes_since) = (0, 0);
                }
            }
            Task::Install { built, reply } => {
                let r = self.store.install(built);
                let failed = r.as_ref().err().cloned();
                let _ = reply.send(r);
                if let Some(e) = failed {
                    return Err(e);
                }
                (*entries_since, *bytes_since) = (0, 0);
            }
        }
        Ok(())
    }
}
