//! The persister: a thread of its own that owns the Raft log on disk, so that the
//! driver never waits for an fdatasync. It writes the batches the driver hands it in
//! order; every batch that queued while the disk was busy shares one fdatasync (group
//! commit), and then they are reported durable together, so that the driver sends what
//! depended on them. It compacts the log when asked.
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::Metrics;
use crate::raft::{Entry, HardState, Index};
use crate::storage::{Storage, StorageError};

/// Batches written before one fdatasync at most, so that a driver that keeps producing
/// still hears of durability regularly.
const MAX_GROUP: usize = 256;

pub enum Job {
    /// Make ready `number`'s write durable, then report it with a `Durable`.
    Persist { number: u64, hard_state: Option<HardState>, entries: Vec<Entry> },
    /// Drop the log up to `base` (the state machine holds it durably).
    Compact { base: Index },
}

/// Every ready's write up to this number is durable.
#[derive(Debug, Clone, Copy)]
pub struct Durable(pub u64);

pub struct Persister {
    pub storage: Storage,
    pub jobs: mpsc::UnboundedReceiver<Job>,
    pub driver: mpsc::UnboundedSender<Durable>,
    pub metrics: Arc<Metrics>,
    /// Set, and the node stopped, when the disk fails.
    pub fatal: Arc<std::sync::Mutex<Option<String>>>,
    pub shutdown: watch::Sender<bool>,
}

/// Batches written since the last fdatasync.
#[derive(Default)]
struct Group {
    number: Option<u64>,
    entries: u64,
}

impl Persister {
    /// Runs until the driver drops its end of the queue.
    pub fn run(mut self) {
        if let Err(e) = self.work() {
            tracing::error!("writing the log failed, stopping the node: {e}");
            *self.fatal.lock().unwrap() = Some(e.to_string());
            let _ = self.shutdown.send(true);
        }
    }

    fn work(&mut self) -> Result<(), StorageError> {
        while let Some(first) = self.jobs.blocking_recv() {
            let mut group = Group::default();
            let mut next = Some(first);
            let mut written = 0;
            while let Some(job) = next {
                match job {
                    Job::Persist { number, hard_state, entries } => {
                        self.storage.write(hard_state, &entries)?;
                        group.number = Some(number);
                        group.entries += entries.len() as u64;
                        written += 1;
                    }
                    Job::Compact { base } => {
                        // What was written before goes first, in order.
                        self.flush(std::mem::take(&mut group))?;
                        self.storage.compact(base)?;
                    }
                }
                next = if written < MAX_GROUP { self.jobs.try_recv().ok() } else { None };
            }
            self.flush(group)?;
        }
        Ok(())
    }

    /// Makes the group durable and reports it.
    fn flush(&mut self, group: Group) -> Result<(), StorageError> {
        let Some(number) = group.number else { return Ok(()) };
        let started = std::time::Instant::now();
        self.storage.sync()?;
        self.metrics.telemetry.fsync_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.fsyncs.store(self.storage.syncs(), Ordering::Relaxed);
        self.metrics.entries_persisted.fetch_add(group.entries, Ordering::Relaxed);
        // A driver that stopped no longer needs to hear it.
        let _ = self.driver.send(Durable(number));
        Ok(())
    }
}
