//! Client sessions (Raft thesis §6.3): exactly-once writes.
//!
//! A client opens a session through the log (its id is the index of that entry) and
//! numbers its writes. The state machine remembers, per session, the highest sequence
//! number applied and that write's answer: a retry of it gets the same answer and
//! changes nothing; an older one is refused, its answer gone.
//!
//! Sessions are replicated state, in the engine's `sessions` keyspace (and in
//! snapshots). They expire by *log time*: each session entry carries the appending
//! leader's clock, and the state machine's clock is the highest such time applied
//! (kept in the meta record), so every member expires the same sessions at the same
//! entry. Their number is bounded by the limit the opening entry carries.
use std::collections::{BTreeSet, HashMap};

use fjall::{Keyspace, OwnedWriteBatch as WriteBatch, Readable};

use super::store::Applied;
use super::MvccError;

/// One open session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Session {
    pub last_seq: u64,
    /// Log time of its last write (or of its opening).
    pub last_active: u64,
    pub ttl_ms: u64,
    /// The answer to `last_seq` (the opening's, before any write).
    pub answer: Applied,
}

impl Session {
    fn expires(&self) -> u64 {
        self.last_active.saturating_add(self.ttl_ms)
    }

    pub fn encode(&self) -> [u8; 48] {
        let mut b = [0u8; 48];
        let a = &self.answer;
        for (chunk, v) in
            b.chunks_mut(8).zip([self.last_seq, self.last_active, self.ttl_ms, a.index, a.term, a.revision])
        {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Session, MvccError> {
        if b.len() != 48 {
            return Err(MvccError::Engine("damaged session record in the store".into()));
        }
        let v: Vec<u64> = b.chunks(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        Ok(Session { last_seq: v[0], last_active: v[1], ttl_ms: v[2], answer: Applied::new(v[3], v[4], v[5]) })
    }
}

/// What to do with a session write.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// A new sequence number: apply it.
    Apply,
    /// The last one applied again: answer as then, change nothing.
    Duplicate(Applied),
    Refused(MvccError),
}

/// The applier's copy of the open sessions, mirrored in the engine.
#[derive(Default)]
pub(super) struct Sessions {
    open: HashMap<u64, Session>,
    /// (expiry time, id), to expire the oldest first.
    by_expiry: BTreeSet<(u64, u64)>,
}

pub(super) fn session_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

impl Sessions {
    /// Every session stored in `ks`.
    pub fn load(r: &impl Readable, ks: &Keyspace) -> Result<Sessions, MvccError> {
        let mut s = Sessions::default();
        for item in r.iter(ks) {
            let (k, v) = item.into_inner()?;
            let id = u64::from_be_bytes(
                k.as_ref().try_into().map_err(|_| MvccError::Engine("damaged session key in the store".into()))?,
            );
            let session = Session::decode(&v)?;
            s.by_expiry.insert((session.expires(), id));
            s.open.insert(id, session);
        }
        Ok(s)
    }

    /// Ends every session idle past its time to live at log time `clock`.
    pub fn expire(&mut self, clock: u64, batch: &mut WriteBatch, ks: &Keyspace) {
        while let Some(&(expires, id)) = self.by_expiry.first() {
            if expires >= clock {
                break;
            }
            self.by_expiry.pop_first();
            self.open.remove(&id);
            batch.remove(ks, session_key(id).as_slice());
        }
    }

    /// Judges write `seq` of session `client` (after `expire`).
    pub fn verdict(&self, client: u64, seq: u64) -> Verdict {
        match self.open.get(&client) {
            None => Verdict::Refused(MvccError::SessionExpired { client }),
            Some(s) if seq == s.last_seq => Verdict::Duplicate(s.answer.clone()),
            Some(s) if seq < s.last_seq => Verdict::Refused(MvccError::StaleSequence { seq, last: s.last_seq }),
            Some(_) => Verdict::Apply,
        }
    }

    /// Opens session `id` at log time `clock`, unless `max` are open.
    pub fn open(
        &mut self,
        id: u64,
        session: Session,
        max: u64,
        batch: &mut WriteBatch,
        ks: &Keyspace,
    ) -> Result<(), MvccError> {
        if self.open.len() as u64 >= max {
            return Err(MvccError::TooManySessions { max });
        }
        self.set(id, session, batch, ks);
        Ok(())
    }

    /// Records write `seq` of session `client`, answered `answer`, at log time `clock`.
    pub fn record(
        &mut self,
        client: u64,
        seq: u64,
        clock: u64,
        answer: Applied,
        batch: &mut WriteBatch,
        ks: &Keyspace,
    ) {
        if let Some(s) = self.open.get(&client) {
            let ttl_ms = s.ttl_ms;
            self.set(client, Session { last_seq: seq, last_active: clock, ttl_ms, answer }, batch, ks);
        }
    }

    fn set(&mut self, id: u64, session: Session, batch: &mut WriteBatch, ks: &Keyspace) {
        let expires = session.expires();
        batch.insert(ks, session_key(id).as_slice(), session.encode().as_slice());
        if let Some(old) = self.open.insert(id, session) {
            self.by_expiry.remove(&(old.expires(), id));
        }
        self.by_expiry.insert((expires, id));
    }
}
