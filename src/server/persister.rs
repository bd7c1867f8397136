//! The persister: a thread of its own that owns the Raft log on disk, so that the
//! driver never waits for an fdatasync. It writes each batch the driver hands it (one
//! write, one fdatasync), in order, compacts the log when asked, and reports each
//! batch durable back to the driver, which only then sends what depended on it.
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::{Input, Metrics};
use crate::raft::{Entry, HardState, Index, Term};
use crate::storage::{Storage, StorageError};

pub enum Job {
    /// Make these durable, then report `Input::Persisted { seq, last }`.
    Persist { seq: u64, hard_state: Option<HardState>, entries: Vec<Entry> },
    /// Drop the log up to `base` (the state machine holds it durably).
    Compact { base: Index },
}

pub struct Persister {
    pub storage: Storage,
    pub jobs: mpsc::UnboundedReceiver<Job>,
    pub driver: mpsc::Sender<Input>,
    pub metrics: Arc<Metrics>,
    /// Set, and the node stopped, when the disk fails.
    pub fatal: Arc<std::sync::Mutex<Option<String>>>,
    pub shutdown: watch::Sender<bool>,
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
        while let Some(job) = self.jobs.blocking_recv() {
            match job {
                Job::Persist { seq, hard_state, entries } => {
                    self.storage.persist(hard_state, &entries)?;
                    self.metrics.fsyncs.store(self.storage.syncs(), Ordering::Relaxed);
                    self.metrics.entries_persisted.fetch_add(entries.len() as u64, Ordering::Relaxed);
                    let last: Option<(Index, Term)> = entries.last().map(|e| (e.index, e.term));
                    if self.driver.blocking_send(Input::Persisted { seq, last }).is_err() {
                        return Ok(());
                    }
                }
                Job::Compact { base } => self.storage.compact(base)?,
            }
        }
        Ok(())
    }
}
