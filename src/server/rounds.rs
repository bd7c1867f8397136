//! Requests that share rounds of one expensive call: linearizable reads share
//! ReadIndex rounds (etcd's linearizable read loop). A request joins the next round to
//! start, never one already under way, whose answer may predate the request.
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

pub struct SharedRounds<T> {
    state: Mutex<Batch<T>>,
}

struct Batch<T> {
    /// Requests waiting for the next round.
    waiting: Vec<oneshot::Sender<T>>,
    /// Whether a task is running rounds.
    running: bool,
}

impl<T> Default for SharedRounds<T> {
    fn default() -> Self {
        SharedRounds { state: Mutex::new(Batch { waiting: Vec::new(), running: false }) }
    }
}

impl<T: Clone + Send + 'static> SharedRounds<T> {
    /// The answer of the first round that starts after this call; None if that round
    /// failed. While requests wait, a task runs `round` again and again, each time for
    /// all the requests that came in while the previous one ran.
    pub async fn next<F, Fut>(self: &Arc<Self>, round: F) -> Option<T>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Option<T>> + Send,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut batch = self.lock();
            batch.waiting.push(tx);
            !std::mem::replace(&mut batch.running, true)
        };
        if start {
            let rounds = self.clone();
            tokio::spawn(async move { rounds.run(round).await });
        }
        rx.await.ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Batch<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run<F, Fut>(&self, round: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        // Should a round panic, the task still lets the next request start another.
        let _running = Running(self);
        loop {
            let waiting = {
                let mut batch = self.lock();
                batch.waiting.retain(|w| !w.is_closed());
                if batch.waiting.is_empty() {
                    return;
                }
                std::mem::take(&mut batch.waiting)
            };
            // A failed round drops its senders: each request learns it got no answer.
            if let Some(answer) = round().await {
                for w in waiting {
                    let _ = w.send(answer.clone());
                }
            }
        }
    }
}

/// Marks the rounds stopped when the task ends, however it ends; the requests still
/// waiting (only after a panic) are dropped and learn they got no answer.
struct Running<'a, T>(&'a SharedRounds<T>);

impl<T> Drop for Running<'_, T> {
    fn drop(&mut self) {
        let mut batch = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        batch.running = false;
        batch.waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::sync::Semaphore;

    /// A round answers the value of a counter as it was when the round started, and
    /// finishes only when the test lets it.
    fn counter_round(
        counter: Arc<AtomicU64>,
        started: Arc<AtomicU64>,
        gate: Arc<Semaphore>,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = Option<u64>> + Send>> + Send + 'static {
        move || {
            let (counter, started, gate) = (counter.clone(), started.clone(), gate.clone());
            Box::pin(async move {
                let value = counter.load(Ordering::SeqCst);
                started.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.ok()?.forget();
                Some(value)
            })
        }
    }

    async fn until(cond: impl Fn() -> bool) {
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while !cond() {
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("condition not reached within 10 s");
    }

    #[tokio::test]
    async fn a_request_never_joins_a_round_already_under_way() {
        let rounds: Arc<SharedRounds<u64>> = Arc::default();
        let (counter, started, gate) =
            (Arc::new(AtomicU64::new(1)), Arc::new(AtomicU64::new(0)), Arc::new(Semaphore::new(0)));
        let round = || counter_round(counter.clone(), started.clone(), gate.clone());
        // A starts round 1, which reads the counter (1) and waits.
        let a = tokio::spawn({
            let (rounds, r) = (rounds.clone(), round());
            async move { rounds.next(r).await }
        });
        until(|| started.load(Ordering::SeqCst) == 1).await;
        // A write completes; then B and C ask while round 1 is under way.
        counter.store(2, Ordering::SeqCst);
        let later: Vec<_> = (0..2)
            .map(|_| {
                let (rounds, r) = (rounds.clone(), round());
                tokio::spawn(async move { rounds.next(r).await })
            })
            .collect();
        gate.add_permits(1);
        assert_eq!(a.await.unwrap(), Some(1));
        // B and C share round 2, which started after the write.
        until(|| started.load(Ordering::SeqCst) == 2).await;
        gate.add_permits(1);
        for r in later {
            assert_eq!(r.await.unwrap(), Some(2), "a request answered by a round that started before it");
        }
        assert_eq!(started.load(Ordering::SeqCst), 2, "B and C did not share one round");
    }

    #[tokio::test]
    async fn a_failed_round_answers_none_and_the_next_request_starts_anew() {
        let rounds: Arc<SharedRounds<u64>> = Arc::default();
        assert_eq!(rounds.next(|| async { None }).await, None);
        assert_eq!(rounds.next(|| async { Some(7) }).await, Some(7));
    }

    #[tokio::test]
    async fn a_round_that_panics_does_not_stop_later_requests() {
        let rounds: Arc<SharedRounds<u64>> = Arc::default();
        assert_eq!(rounds.next(|| async { panic!("a round panics (expected in this test)") }).await, None);
        let later = tokio::time::timeout(std::time::Duration::from_secs(10), rounds.next(|| async { Some(3) }));
        assert_eq!(later.await.expect("a request after a panicked round got no round"), Some(3));
    }
}
