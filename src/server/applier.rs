//! The applier: a thread of its own that writes the state machine, so that the driver
//! (ticks, heartbeats, the Raft log) never waits behind the engine. It applies the
//! committed batches the driver hands it, in order, answers the proposals among them,
//! checkpoints the engine (one durable commit) every so many entries or bytes,
//! removes compacted history while idle, and swaps in installed snapshots.
//!
//! A small batch that finds the applier idle (nothing queued, not busy) is applied by
//! the driver itself ([`Queue::apply`]): one write then costs no hand-off to this
//! thread and back. Both take the same turn (a mutex the driver only tries), so batches
//! are applied one at a time and in order; checkpoints stay on this thread.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use super::driver::Fatal;
use crate::error::Error;
use crate::mvcc::snapshot::Built;
use crate::mvcc::{Applied, Command, MvccError, Store};
use crate::raft::{Entry, EntryKind, Index, Term};

pub type ProposalReply = oneshot::Sender<Result<Applied, Error>>;

pub enum Task {
    /// Committed entries, and the callers waiting for some of them.
    Apply { entries: Vec<Entry>, replies: Vec<(Index, ProposalReply)> },
    /// Replace the state by a verified snapshot.
    Install { built: Built, reply: oneshot::Sender<Result<(Index, Term), MvccError>> },
    /// Make what is applied durable (batches the driver applied reached the threshold).
    Checkpoint,
}

/// Queued batches are applied together, in one engine transaction, up to this many
/// entries: under load the applier commits less often, and each commit carries more.
const MAX_COALESCED: usize = 8192;

/// The driver applies a batch itself only up to this many entries and bytes, each of
/// a bounded number of keys, and only while the engine flushes and compacts nothing,
/// so that ticks and messages never wait long behind the engine.
const HERE_MAX_ENTRIES: usize = 16;
const HERE_MAX_BYTES: usize = 256 << 10;

/// When to checkpoint: after this many entries or bytes of commands applied.
#[derive(Clone, Copy, Debug)]
pub struct Checkpoints {
    pub every_entries: u64,
    pub every_bytes: u64,
}

/// What was applied since the last checkpoint.
#[derive(Default)]
struct Since {
    entries: u64,
    bytes: u64,
}

/// The turn to apply, shared by the applier thread and the driver.
#[derive(Default)]
struct Turn {
    /// Held while a batch, checkpoint, install or compaction runs.
    since: Mutex<Since>,
    /// Tasks handed to the applier and not yet finished.
    queued: AtomicUsize,
}

/// The driver's end of the applier.
pub struct Queue {
    tx: mpsc::UnboundedSender<Task>,
    turn: Arc<Turn>,
    store: Arc<Store>,
    checkpoints: Checkpoints,
    metrics: Arc<super::Metrics>,
}

impl Queue {
    pub fn send(&self, task: Task) -> Result<(), Fatal> {
        self.turn.queued.fetch_add(1, Ordering::SeqCst);
        self.tx.send(task).map_err(|_| Fatal::ApplierStopped)
    }

    /// Applies a small batch here when the applier is idle, else queues it. A
    /// checkpoint this makes due is queued for the applier.
    pub fn apply(&self, entries: Vec<Entry>, replies: Vec<(Index, ProposalReply)>) -> Result<(), Fatal> {
        let small = entries.len() <= HERE_MAX_ENTRIES
            && entries.iter().map(|e| e.data.len()).sum::<usize>() <= HERE_MAX_BYTES
            && entries.iter().all(|e| e.kind != EntryKind::Normal || Command::is_small(&e.data));
        // Idle: the turn is free and everything handed over is finished (the applier
        // counts a task finished before it gives the turn back).
        let idle = if small { self.turn.since.try_lock().ok() } else { None };
        let idle = idle.filter(|_| {
            self.turn.queued.load(Ordering::SeqCst) == 0
                && !self.store.compaction_pending()
                && !self.store.engine_busy()
        });
        let Some(mut since) = idle else {
            return self.send(Task::Apply { entries, replies });
        };
        let due = apply_batch(&self.store, &self.metrics, self.checkpoints, &mut since, &entries, replies)
            .map_err(Fatal::Apply)?;
        drop(since);
        if due {
            self.send(Task::Checkpoint)?;
        }
        Ok(())
    }
}

/// The applier thread and the driver's end of its queue.
pub fn new(
    store: Arc<Store>,
    checkpoints: Checkpoints,
    fatal: Arc<std::sync::Mutex<Option<String>>>,
    shutdown: watch::Sender<bool>,
    metrics: Arc<super::Metrics>,
) -> (Applier, Queue) {
    let (tx, tasks) = mpsc::unbounded_channel();
    let turn = Arc::new(Turn::default());
    let queue = Queue { tx, turn: turn.clone(), store: store.clone(), checkpoints, metrics: metrics.clone() };
    (Applier { store, tasks, turn, checkpoints, fatal, shutdown, metrics }, queue)
}

/// Applies one batch and answers its proposals; says whether a checkpoint is due.
fn apply_batch(
    store: &Store,
    metrics: &super::Metrics,
    checkpoints: Checkpoints,
    since: &mut Since,
    entries: &[Entry],
    replies: Vec<(Index, ProposalReply)>,
) -> Result<bool, MvccError> {
    let started = std::time::Instant::now();
    // Only what someone here waits for is answered in full.
    let mut waited: Vec<Index> = replies.iter().map(|(i, _)| *i).collect();
    waited.sort_unstable();
    let outcomes = store.apply_answering(entries, |i| waited.binary_search(&i).is_ok())?;
    metrics.telemetry.apply_seconds.observe(started.elapsed().as_secs_f64());
    let revision = store.status().revision;
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
    since.entries += entries.len() as u64;
    since.bytes += entries.iter().map(|e| e.data.len() as u64).sum::<u64>();
    Ok(since.entries >= checkpoints.every_entries || since.bytes >= checkpoints.every_bytes)
}

pub struct Applier {
    store: Arc<Store>,
    tasks: mpsc::UnboundedReceiver<Task>,
    turn: Arc<Turn>,
    checkpoints: Checkpoints,
    /// Set, and the node stopped, when the engine fails.
    fatal: Arc<std::sync::Mutex<Option<String>>>,
    shutdown: watch::Sender<bool>,
    metrics: Arc<super::Metrics>,
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
        loop {
            let task = match self.tasks.try_recv() {
                Ok(task) => task,
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(()),
                Err(mpsc::error::TryRecvError::Empty) if self.store.compaction_pending() => {
                    let _turn = self.turn.since.lock().unwrap_or_else(|p| p.into_inner());
                    self.store.compact_some()?;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Empty) => match self.tasks.blocking_recv() {
                    Some(task) => task,
                    None => return Ok(()),
                },
            };
            // Later batches already queued join this one (an install waits its turn).
            let mut taken = 1;
            let mut next = None;
            let task = match task {
                Task::Apply { mut entries, mut replies } => {
                    while entries.len() < MAX_COALESCED {
                        match self.tasks.try_recv() {
                            Ok(Task::Apply { entries: more, replies: more_replies }) => {
                                taken += 1;
                                entries.extend(more);
                                replies.extend(more_replies);
                            }
                            Ok(other) => {
                                taken += 1;
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
            let mut since = self.turn.since.lock().unwrap_or_else(|p| p.into_inner());
            for task in std::iter::once(task).chain(next) {
                self.run_task(task, &mut since)?;
            }
            // Finished before the turn is given back: the driver, seeing none queued
            // once it holds the turn, knows every batch before its own is applied.
            self.turn.queued.fetch_sub(taken, Ordering::SeqCst);
        }
    }

    fn run_task(&self, task: Task, since: &mut Since) -> Result<(), MvccError> {
        let checkpoint_due = match task {
            Task::Apply { entries, replies } => {
                apply_batch(&self.store, &self.metrics, self.checkpoints, since, &entries, replies)?
            }
            Task::Checkpoint => true,
            Task::Install { built, reply } => {
                let r = self.store.install(built);
                let failed = r.as_ref().err().cloned();
                let _ = reply.send(r);
                if let Some(e) = failed {
                    return Err(e);
                }
                *since = Since::default();
                false
            }
        };
        if checkpoint_due {
            let started = std::time::Instant::now();
            let (index, _) = self.store.checkpoint()?;
            self.metrics.telemetry.checkpoint_seconds.observe(started.elapsed().as_secs_f64());
            tracing::debug!(index, "checkpoint");
            *since = Since::default();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Membership;

    fn put(index: Index, n: usize) -> Entry {
        let c = Command::Put { key: format!("k{}", index % 7), value: "v".repeat(n) };
        Entry { index, term: 1, kind: EntryKind::Normal, data: c.encode() }
    }

    /// Batches the driver applies itself and batches it queues, interleaved while the
    /// applier works: every one is applied once, in order (the store refuses an entry
    /// out of order), and every proposal is answered with its own index.
    #[test]
    fn batches_applied_here_and_queued_stay_in_order() {
        let d = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(d.path(), 8 << 20).unwrap());
        store.found_membership(&Membership::of_voters(&[1, 2, 3])).unwrap();
        let (shutdown, _) = watch::channel(false);
        let fatal = Arc::new(std::sync::Mutex::new(None));
        // A checkpoint every 50 entries: checkpoints queued by the driver interleave too.
        let every = Checkpoints { every_entries: 50, every_bytes: u64::MAX };
        let (applier, queue) = new(store.clone(), every, fatal.clone(), shutdown, Arc::default());
        let thread = std::thread::spawn(move || applier.run());
        let (mut next, mut answers) = (1, Vec::new());
        for round in 0..300 {
            // Large batches go to the applier's thread; the small ones after them find
            // it busy or idle depending on timing.
            let len = if round % 3 == 0 { 40 } else { 1 + round % 4 };
            let entries: Vec<Entry> = (next..next + len).map(|i| put(i, 10)).collect();
            let mut replies = Vec::new();
            for e in &entries {
                let (tx, rx) = oneshot::channel();
                replies.push((e.index, tx));
                answers.push((e.index, rx));
            }
            next += len;
            queue.apply(entries, replies).unwrap();
        }
        drop(queue);
        thread.join().unwrap();
        assert_eq!(*fatal.lock().unwrap(), None);
        assert_eq!(store.applied(), next - 1);
        for (index, rx) in answers {
            assert_eq!(rx.blocking_recv().unwrap().unwrap().index, index);
        }
        assert!(store.durable().0 > 0, "checkpoints ran");
    }
}
