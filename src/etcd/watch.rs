//! etcd's Watch: a bidirectional stream of watch creations and cancellations, and of
//! the events of the keys watched, in revision order.
//!
//! Each watcher reads the store's history from its next revision whenever the
//! applied state moves on: every event comes from the persisted history, so none is
//! dropped or sent twice, and a client that reconnects (to any node, or to this one
//! after a restart) from the revision after its last one misses nothing. A start
//! revision that compaction removed gets etcd's answer: `compact_revision` and the
//! watch canceled (after its `created` answer), never a partial stream.
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::kv;
use super::{etcd_status, Context};
use crate::mvcc::{Event, EventKind, KeyRange, MvccError};
use crate::proto::etcd::etcdserverpb::{self as epb, watch_request::RequestUnion, watch_server::Watch};
use crate::proto::etcd::mvccpb;

/// Events read from the history per step (one answer), and their bytes at most.
const EVENTS_PER_STEP: usize = 1000;
const BYTES_PER_STEP: usize = 2 << 20;
/// Answers queued for a slow client before the watchers wait for it.
const QUEUE: usize = 64;

pub struct EtcdWatch(pub Context);

type Answers = mpsc::Sender<Result<epb::WatchResponse, Status>>;

/// One watcher: what it watches and from which revision.
struct Watcher {
    id: i64,
    range: KeyRange,
    next: u64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    /// Send a progress notification after `progress_interval` without events.
    progress_notify: bool,
    /// Every event of it up to this revision has been sent (for progress requests).
    seen: Arc<AtomicU64>,
}

impl Watcher {
    fn wants(&self, e: &Event) -> bool {
        let kind_ok = match e.kind {
            EventKind::Delete => !self.no_delete,
            EventKind::Put | EventKind::PutJson => !self.no_put,
        };
        kind_ok && self.range.contains(e.key.as_bytes())
    }
}

fn event(view: &crate::mvcc::ReadView, e: Event, prev_kv: bool) -> mvccpb::Event {
    let prev = if prev_kv && e.revision > 1 { view.get(&e.key, e.revision - 1).ok().flatten().map(kv) } else { None };
    let (kind, kv) = match e.key_value() {
        Some(now) => (mvccpb::event::EventType::Put, kv(now)),
        // A delete carries the key and the revision that deleted it.
        None => (
            mvccpb::event::EventType::Delete,
            mvccpb::KeyValue { key: e.key.into_bytes(), mod_revision: e.revision as i64, ..Default::default() },
        ),
    };
    mvccpb::Event { r#type: kind as i32, kv: Some(kv), prev_kv: prev }
}

impl Context {
    /// Sends `w`'s events as the history grows, until the client goes or the watch
    /// is canceled (the task is aborted) or compacted away.
    async fn run_watcher(self, mut w: Watcher, answers: Answers) {
        let store = self.node.store().clone();
        let mut applied = store.applied_watch();
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            let view = match store.read() {
                Ok(v) => v,
                Err(_) => return,
            };
            if view.revision() >= w.next {
                match view.history(w.next, EVENTS_PER_STEP, BYTES_PER_STEP) {
                    Err(MvccError::Compacted { compacted }) => {
                        let _ = answers
                            .send(Ok(epb::WatchResponse {
                                header: self.header(view.revision()),
                                watch_id: w.id,
                                canceled: true,
                                // The oldest revision whose history is whole here (the
                                // compaction keeps no tombstone at `compacted`).
                                compact_revision: compacted as i64 + 1,
                                cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
                                ..Default::default()
                            }))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = answers.send(Err(etcd_status(e.into()))).await;
                        return;
                    }
                    Ok(page) => {
                        let events: Vec<mvccpb::Event> = page
                            .events
                            .into_iter()
                            .filter(|e| w.wants(e))
                            .map(|e| event(&view, e, w.prev_kv))
                            .collect();
                        let next = if page.next != 0 { page.next } else { view.revision() + 1 };
                        if !events.is_empty() {
                            let header = self.header(if page.next != 0 { page.next - 1 } else { view.revision() });
                            let answer = epb::WatchResponse { header, watch_id: w.id, events, ..Default::default() };
                            if answers.send(Ok(answer)).await.is_err() {
                                return;
                            }
                            quiet_since = tokio::time::Instant::now();
                        }
                        // Published once what it covers is sent.
                        w.next = next;
                        w.seen.store(next - 1, Ordering::Relaxed);
                        if page.next != 0 {
                            // Catching up: let the node's other tasks run between pages.
                            tokio::task::yield_now().await;
                            continue;
                        }
                    }
                }
            }
            // Waits for more history, or (if asked) until a progress notification is due:
            // an empty answer whose header says the watch has seen every revision up to it.
            let due = quiet_since + self.progress_interval;
            tokio::select! {
                changed = applied.changed() => if changed.is_err() {
                    return;
                },
                _ = tokio::time::sleep_until(due), if w.progress_notify => {
                    // Every revision up to here has been sent (a start in the future: none yet).
                    let seen = w.next.saturating_sub(1).min(store.status().revision);
                    let header = self.header(seen);
                    if answers.send(Ok(epb::WatchResponse { header, watch_id: w.id, ..Default::default() })).await.is_err() {
                        return;
                    }
                    quiet_since = tokio::time::Instant::now();
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Watch for EtcdWatch {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<epb::WatchResponse, Status>> + Send + 'static>>;

    async fn watch(&self, req: Request<Streaming<epb::WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        // etcd's clients ask for a leader ("hasleader"): a node cut off from one says so.
        let require_leader = req.metadata().get("hasleader").is_some_and(|v| v.as_bytes() == b"true");
        if require_leader && self.0.node.leader_name().is_none() {
            return Err(Status::unavailable("etcdserver: no leader"));
        }
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(QUEUE);
        let ctx = self.0.clone();
        tokio::spawn(async move {
            // Each watcher's task and how far it has sent.
            let mut watchers: HashMap<i64, (tokio::task::JoinHandle<()>, Arc<AtomicU64>)> = HashMap::new();
            let mut next_id: i64 = 0;
            loop {
                // The stream ends when the node stops, so that its server can.
                let msg = tokio::select! {
                    m = incoming.message() => m,
                    _ = ctx.node.stopped() => break,
                };
                let Ok(Some(msg)) = msg else { break };
                let answer = match msg.request_union {
                    Some(RequestUnion::CreateRequest(c)) => {
                        let mut id = c.watch_id;
                        if id == 0 {
                            while watchers.contains_key(&next_id) {
                                next_id += 1;
                            }
                            id = next_id;
                            next_id += 1;
                        }
                        let current = ctx.node.store().status().revision;
                        let key = if c.key.is_empty() { vec![0] } else { c.key.clone() };
                        let inverted = !c.range_end.is_empty() && c.range_end != [0] && c.range_end <= key;
                        let bad = watchers.contains_key(&id) || inverted;
                        if bad {
                            epb::WatchResponse {
                                header: ctx.header(current),
                                watch_id: -1,
                                created: true,
                                canceled: true,
                                cancel_reason: "etcdserver: invalid watch request".into(),
                                ..Default::default()
                            }
                        } else {
                            use epb::watch_create_request::FilterType;
                            let next = if c.start_revision > 0 { c.start_revision as u64 } else { current + 1 };
                            let w = Watcher {
                                id,
                                range: KeyRange::from_etcd(&key, &c.range_end),
                                next,
                                no_put: c.filters.contains(&(FilterType::Noput as i32)),
                                no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
                                prev_kv: c.prev_kv,
                                progress_notify: c.progress_notify,
                                seen: Arc::new(AtomicU64::new(next - 1)),
                            };
                            // `created` goes out before any of the watch's events.
                            let created = epb::WatchResponse {
                                header: ctx.header(current),
                                watch_id: id,
                                created: true,
                                ..Default::default()
                            };
                            let sent = tokio::select! {
                                r = tx.send(Ok(created)) => r.is_ok(),
                                _ = ctx.node.stopped() => false,
                            };
                            if !sent {
                                break;
                            }
                            let seen = w.seen.clone();
                            watchers.insert(id, (tokio::spawn(ctx.clone().run_watcher(w, tx.clone())), seen));
                            continue;
                        }
                    }
                    Some(RequestUnion::CancelRequest(c)) => match watchers.remove(&c.watch_id) {
                        Some((task, _)) => {
                            task.abort();
                            epb::WatchResponse {
                                header: ctx.header_now(),
                                watch_id: c.watch_id,
                                canceled: true,
                                ..Default::default()
                            }
                        }
                        None => continue,
                    },
                    Some(RequestUnion::ProgressRequest(_)) => {
                        // A revision every watcher of the stream has sent all its events up
                        // to: never one whose events are still on their way.
                        let current = ctx.node.store().status().revision;
                        let revision =
                            watchers.values().map(|(_, seen)| seen.load(Ordering::Relaxed)).fold(current, u64::min);
                        epb::WatchResponse { header: ctx.header(revision), watch_id: -1, ..Default::default() }
                    }
                    None => continue,
                };
                let sent = tokio::select! {
                    r = tx.send(Ok(answer)) => r.is_ok(),
                    _ = ctx.node.stopped() => false,
                };
                if !sent {
                    break;
                }
                watchers.retain(|_, (task, _)| !task.is_finished());
            }
            for (_, (task, _)) in watchers {
                task.abort();
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
