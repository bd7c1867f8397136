//! A linearizability checker for a key-value history (per key, a register), in the
//! style of Wing & Gong / porcupine: a depth-first search over the order in which the
//! operations may have taken effect, each between its invocation and its completion,
//! with memoization of (operations taken, value) states.
//!
//! Writes whose outcome is unknown (the client got no definite answer) may take effect
//! at any time after their invocation, or never. Operations that definitely failed are
//! left out of the history by the recorder.
use std::collections::{BTreeMap, HashSet};

pub mod workload;

/// What an operation did, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Store (Some(value)) or Delete (None).
    Write(Option<String>),
    /// A read that returned this (None: not found).
    Read(Option<String>),
}

#[derive(Clone, Debug)]
pub struct Event {
    pub client: usize,
    pub key: String,
    pub op: Op,
    /// Nanoseconds since the start of the run.
    pub invoked: u64,
    /// None: the outcome is unknown (writes only).
    pub completed: Option<u64>,
}

/// Why a history is not linearizable: the key and the operations of that key.
#[derive(Debug)]
pub struct Violation {
    pub key: String,
    pub events: Vec<Event>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.events.len();
        writeln!(f, "key {:?}: the first {n} operations have no linearization; the last of them:", self.key)?;
        for e in &self.events[n.saturating_sub(30)..] {
            let done = e.completed.map_or("unknown".to_string(), |c| format!("{:.3} ms", c as f64 / 1e6));
            writeln!(f, "  client {} {:?} [{:.3} ms, {done}]", e.client, e.op, e.invoked as f64 / 1e6)?;
        }
        Ok(())
    }
}

/// Checks every key; the first key without a linearization is returned, cut to the
/// shortest failing prefix of its operations.
pub fn check(history: &[Event]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
    for e in history {
        by_key.entry(&e.key).or_default().push(e.clone());
    }
    for (key, events) in by_key {
        if !linearizable(&events) {
            return Err(Violation { key: key.to_string(), events: shrink(events) });
        }
    }
    Ok(())
}

/// The shortest prefix (by invocation) of the history that already fails: where the
/// violation happens. Found by bisection: a few searches, not one per operation.
fn shrink(mut events: Vec<Event>) -> Vec<Event> {
    events.sort_by_key(|e| e.invoked);
    let (mut ok, mut bad) = (0, events.len());
    while bad - ok > 1 {
        let mid = (ok + bad) / 2;
        if linearizable(&events[..mid]) {
            ok = mid;
        } else {
            bad = mid;
        }
    }
    events.truncate(bad);
    events
}

/// One register's history. The register starts empty (None).
pub fn linearizable(events: &[Event]) -> bool {
    // Writes of unknown outcome: one whose value no read returned can be taken as never
    // having happened (had it happened, no read fell before the next write, or it would
    // have returned that value; leaving it out changes nothing any read saw). One whose
    // (unique) value a read returned did happen, before that read completed: it gets
    // that completion. Only unknown deletes stay free to happen or not. Without this
    // the search is exponential in the unknown writes.
    let mut first_read: BTreeMap<&str, u64> = BTreeMap::new();
    let mut none_read = false;
    for e in events {
        match (&e.op, e.completed) {
            (Op::Read(Some(v)), Some(c)) => {
                let t = first_read.entry(v.as_str()).or_insert(c);
                *t = (*t).min(c);
            }
            (Op::Read(None), _) => none_read = true,
            _ => {}
        }
    }
    let mut kept = Vec::new();
    for e in events {
        let mut e = e.clone();
        match (&e.op, e.completed) {
            (_, Some(_)) => {}
            (Op::Write(Some(v)), None) => match first_read.get(v.as_str()) {
                Some(&c) => e.completed = Some(c.max(e.invoked)),
                None => continue,
            },
            (Op::Write(None), None) if !none_read => continue,
            _ => {}
        }
        kept.push(e);
    }
    // A value read that no write wrote: no search needed.
    let written: HashSet<&str> = kept
        .iter()
        .filter_map(|e| match &e.op {
            Op::Write(Some(v)) => Some(v.as_str()),
            _ => None,
        })
        .collect();
    if first_read.keys().any(|v| !written.contains(v)) {
        return false;
    }
    let events: Vec<Event> = kept;
    let events = &events[..];
    // Entries: (time, is_return, op index); calls before returns at equal times.
    let mut entries: Vec<(u64, bool, usize)> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        entries.push((e.invoked, false, i));
        if let Some(c) = e.completed {
            entries.push((c.max(e.invoked), true, i));
        }
    }
    entries.sort();
    let n = events.len();
    // Zobrist hashing: the set of operations taken is a 128-bit xor of one random key
    // per operation, so a state costs 16 bytes however long the history is.
    let mut rng = 0x2545_f491_4f6c_dd1d_u128;
    let zobrist: Vec<u128> = (0..n)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        })
        .collect();
    let mut search =
        Search { events, entries: &entries, taken: vec![false; n], zobrist, hash: 0, seen: HashSet::new() };
    let ok = search.run();
    assert!(
        search.seen.len() < MAX_STATES,
        "the checker gave up after {MAX_STATES} states ({n} operations): shorten the run or add keys"
    );
    ok
}

/// Search states explored at most per key before the checker gives up (a failure
/// that says so, never a silent pass).
const MAX_STATES: usize = 20_000_000;

struct Search<'a> {
    events: &'a [Event],
    entries: &'a [(u64, bool, usize)],
    taken: Vec<bool>,
    zobrist: Vec<u128>,
    hash: u128,
    seen: HashSet<(u128, Option<String>)>,
}

/// One state of the depth-first search: the operation taken to reach it, the value
/// then, where its untaken entries start, and its candidates still to try.
struct Frame {
    via: Option<usize>,
    value: Option<String>,
    lo: usize,
    candidates: Vec<usize>,
    next: usize,
}

impl Search<'_> {
    fn flip(&mut self, i: usize) {
        self.taken[i] = !self.taken[i];
        self.hash ^= self.zobrist[i];
    }

    /// The state after `via`: None if seen before; else its frame, or Err(()) if every
    /// completed operation is placed (success: unknown writes may never happen).
    fn enter(&mut self, via: Option<usize>, value: Option<String>, lo: usize) -> Result<Option<Frame>, ()> {
        if self.seen.len() >= MAX_STATES || !self.seen.insert((self.hash, value.clone())) {
            return Ok(None);
        }
        let mut lo = lo;
        while lo < self.entries.len() && self.taken[self.entries[lo].2] {
            lo += 1;
        }
        // Candidates: operations invoked before the first completion of an operation
        // not yet taken (that one must take effect before it completes).
        let mut candidates = Vec::new();
        let mut pending_return = false;
        for &(_, is_return, i) in &self.entries[lo..] {
            if self.taken[i] {
                continue;
            }
            if is_return {
                pending_return = true;
                break;
            }
            candidates.push(i);
        }
        if !pending_return {
            return Err(());
        }
        Ok(Some(Frame { via, value, lo, candidates, next: 0 }))
    }

    /// Whether the operations can be ordered from the empty register on; iterative, as
    /// histories are far deeper than a thread's stack.
    fn run(&mut self) -> bool {
        let mut stack = match self.enter(None, None, 0) {
            Err(()) => return true,
            Ok(f) => f.into_iter().collect::<Vec<_>>(),
        };
        while let Some(top) = stack.last_mut() {
            if top.next == top.candidates.len() {
                let done = stack.pop().expect("a frame");
                if let Some(i) = done.via {
                    self.flip(i);
                }
                continue;
            }
            let i = top.candidates[top.next];
            top.next += 1;
            let next = match &self.events[i].op {
                Op::Write(v) => v.clone(),
                Op::Read(v) if *v == top.value => top.value.clone(),
                Op::Read(_) => continue,
            };
            let lo = top.lo;
            self.flip(i);
            match self.enter(Some(i), next, lo) {
                Err(()) => return true,
                Ok(Some(frame)) => stack.push(frame),
                Ok(None) => self.flip(i),
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(client: usize, v: &str, at: u64, done: Option<u64>) -> Event {
        Event { client, key: "k".into(), op: Op::Write(Some(v.into())), invoked: at, completed: done }
    }

    fn r(client: usize, v: Option<&str>, at: u64, done: u64) -> Event {
        Event { client, key: "k".into(), op: Op::Read(v.map(str::to_string)), invoked: at, completed: Some(done) }
    }

    #[test]
    fn accepts_sequential_and_concurrent_histories() {
        assert!(linearizable(&[r(0, None, 0, 1), w(0, "a", 2, Some(3)), r(1, Some("a"), 4, 5)]));
        // Concurrent writes: either order, as the reads show.
        let h = [w(0, "a", 0, Some(10)), w(1, "b", 0, Some(10)), r(2, Some("a"), 11, 12), r(2, Some("a"), 13, 14)];
        assert!(linearizable(&h));
        // A read concurrent with a write may see either value.
        assert!(linearizable(&[
            w(0, "a", 0, Some(1)),
            w(0, "b", 2, Some(10)),
            r(1, Some("a"), 3, 4),
            r(2, Some("b"), 5, 6)
        ]));
    }

    #[test]
    fn accepts_unknown_writes_that_did_and_did_not_take_effect() {
        // Took effect, long after its client gave up on it.
        assert!(linearizable(&[w(0, "a", 0, None), r(1, None, 5, 6), r(1, Some("a"), 100, 101)]));
        // Never took effect.
        assert!(linearizable(&[w(0, "a", 0, None), r(1, None, 5, 6), w(1, "b", 7, Some(8)), r(1, Some("b"), 9, 10)]));
    }

    #[test]
    fn rejects_a_stale_read() {
        let h = [w(0, "a", 0, Some(1)), w(0, "b", 2, Some(3)), r(1, Some("a"), 4, 5)];
        assert!(!linearizable(&h));
    }

    #[test]
    fn rejects_a_lost_write() {
        let h = [w(0, "a", 0, Some(1)), r(1, None, 2, 3)];
        assert!(!linearizable(&h));
    }

    #[test]
    fn rejects_a_read_of_a_value_never_written() {
        let h = [w(0, "a", 0, Some(1)), r(1, Some("z"), 2, 3)];
        assert!(!linearizable(&h));
    }

    #[test]
    fn rejects_a_duplicated_write() {
        // "a" applied twice: a, then b, then a again, seen after b was read.
        let h = [w(0, "a", 0, Some(1)), w(1, "b", 2, Some(3)), r(2, Some("b"), 4, 5), r(2, Some("a"), 6, 7)];
        assert!(!linearizable(&h));
    }

    #[test]
    fn check_names_the_key_and_shrinks() {
        let mut h = vec![w(0, "x", 0, Some(1))];
        h[0].key = "other".into();
        h.extend([w(0, "a", 0, Some(1)), w(0, "b", 2, Some(3)), r(1, Some("a"), 4, 5)]);
        let v = check(&h).expect_err("stale read");
        assert_eq!(v.key, "k");
        assert_eq!(v.events.len(), 3, "cut where it fails: the stale read is the third operation of k");
        assert!(v.to_string().contains("have no linearization"));
    }
}
