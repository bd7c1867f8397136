//! The key-value state machine: commands, apply, the committed history, snapshots.
//!
//! The map and the history are persistent collections (imbl): cloning the state for
//! a snapshot is O(1), so a snapshot is written in the background while applying
//! goes on.
use bytes::{BufMut, Bytes, BytesMut};
use imbl::{OrdMap, Vector};

use crate::raft::{Entry, EntryKind, Index, Term};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Put {
        key: String,
        value: String,
    },
    /// A put whose value is a JSON text that is not a JSON string (the controller
    /// bridge's STORE of a number, object, null, ...); stored as that text.
    PutJson {
        key: String,
        json: String,
    },
    Delete {
        key: String,
    },
}

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_PUT_JSON: u8 = 3;

impl Command {
    /// `[op: u8][key_len: u32 LE][key][value]`.
    pub fn encode(&self) -> Bytes {
        let (op, key, value) = match self {
            Command::Put { key, value } => (OP_PUT, key, value.as_str()),
            Command::PutJson { key, json } => (OP_PUT_JSON, key, json.as_str()),
            Command::Delete { key } => (OP_DELETE, key, ""),
        };
        let mut b = BytesMut::with_capacity(5 + key.len() + value.len());
        b.put_u8(op);
        b.put_u32_le(key.len() as u32);
        b.put_slice(key.as_bytes());
        b.put_slice(value.as_bytes());
        b.freeze()
    }

    pub fn decode(data: &[u8]) -> Option<Command> {
        let (&op, rest) = data.split_first()?;
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let key = std::str::from_utf8(rest.get(4..4 + len)?).ok()?.to_string();
        let value = std::str::from_utf8(rest.get(4 + len..)?).ok()?.to_string();
        match op {
            OP_PUT => Some(Command::Put { key, value }),
            OP_PUT_JSON => Some(Command::PutJson { key, json: value }),
            OP_DELETE if value.is_empty() => Some(Command::Delete { key }),
            _ => None,
        }
    }
}

/// One committed client command, as Retrieve reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub index: Index,
    pub term: Term,
    pub command: Command,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvState {
    map: OrdMap<String, String>,
    /// Every committed client command, in log order.
    history: Vector<HistoryEntry>,
    applied: Index,
    applied_term: Term,
}

impl KvState {
    pub fn get(&self, key: &str) -> Option<&String> {
        self.map.get(key)
    }

    pub fn history(&self) -> &Vector<HistoryEntry> {
        &self.history
    }

    pub fn applied(&self) -> Index {
        self.applied
    }

    /// Term of the last applied entry.
    pub fn applied_term(&self) -> Term {
        self.applied_term
    }

    /// Serializes the state (body only; the snapshot file adds framing and checksum).
    pub fn encode(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        let bytes = |w: &mut dyn std::io::Write, b: &[u8]| -> std::io::Result<()> {
            w.write_all(&(b.len() as u32).to_le_bytes())?;
            w.write_all(b)
        };
        w.write_all(&self.applied.to_le_bytes())?;
        w.write_all(&self.applied_term.to_le_bytes())?;
        w.write_all(&(self.map.len() as u64).to_le_bytes())?;
        for (k, v) in &self.map {
            bytes(w, k.as_bytes())?;
            bytes(w, v.as_bytes())?;
        }
        w.write_all(&(self.history.len() as u64).to_le_bytes())?;
        for h in &self.history {
            w.write_all(&h.index.to_le_bytes())?;
            w.write_all(&h.term.to_le_bytes())?;
            bytes(w, &h.command.encode())?;
        }
        Ok(())
    }

    /// The inverse of `encode`; `None` if the bytes are not a state.
    pub fn decode(mut b: &[u8]) -> Option<KvState> {
        fn u64_(b: &mut &[u8]) -> Option<u64> {
            let v = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
            *b = &b[8..];
            Some(v)
        }
        fn bytes<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
            let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
            let v = b.get(4..4 + n)?;
            *b = &b[4 + n..];
            Some(v)
        }
        let applied = u64_(&mut b)?;
        let applied_term = u64_(&mut b)?;
        let mut map = OrdMap::new();
        for _ in 0..u64_(&mut b)? {
            let k = std::str::from_utf8(bytes(&mut b)?).ok()?.to_string();
            let v = std::str::from_utf8(bytes(&mut b)?).ok()?.to_string();
            map.insert(k, v);
        }
        let mut history = Vector::new();
        for _ in 0..u64_(&mut b)? {
            let index = u64_(&mut b)?;
            let term = u64_(&mut b)?;
            let command = Command::decode(bytes(&mut b)?)?;
            history.push_back(HistoryEntry { index, term, command });
        }
        b.is_empty().then_some(KvState { map, history, applied, applied_term })
    }

    /// Applies committed entries in order, exactly once.
    pub fn apply(&mut self, entries: &[Entry]) {
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            assert_eq!(e.index, self.applied + 1, "entries must be applied in order");
            self.applied = e.index;
            self.applied_term = e.term;
            if e.kind != EntryKind::Normal {
                continue;
            }
            let Some(command) = Command::decode(&e.data) else {
                tracing::error!(index = e.index, "undecodable command in the log; skipped");
                continue;
            };
            match &command {
                Command::Put { key, value } | Command::PutJson { key, json: value } => {
                    self.map.insert(key.clone(), value.clone());
                }
                Command::Delete { key } => {
                    self.map.remove(key);
                }
            }
            self.history.push_back(HistoryEntry { index: e.index, term: e.term, command });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trips_and_garbage_is_rejected() {
        for c in [
            Command::Put { key: "k".into(), value: "v ü".into() },
            Command::Put { key: "".into(), value: "".into() },
            Command::Delete { key: "gone".into() },
        ] {
            assert_eq!(Command::decode(&c.encode()), Some(c));
        }
        assert_eq!(Command::decode(&[]), None);
        assert_eq!(Command::decode(&[1, 200, 0, 0, 0, b'a']), None);
        assert_eq!(Command::decode(&[9, 0, 0, 0, 0]), None);
    }

    #[test]
    fn apply_is_in_order_and_exactly_once() {
        let e = |index, c: Command| Entry { index, term: 1, kind: EntryKind::Normal, data: c.encode() };
        let noop = Entry { index: 1, term: 1, kind: EntryKind::Noop, data: Bytes::new() };
        let mut kv = KvState::default();
        let batch = vec![
            noop,
            e(2, Command::Put { key: "a".into(), value: "1".into() }),
            e(3, Command::Delete { key: "a".into() }),
        ];
        kv.apply(&batch);
        kv.apply(&batch);
        assert_eq!(kv.get("a"), None);
        assert_eq!(kv.history().len(), 2);
        assert_eq!(kv.applied(), 3);
    }

    #[test]
    fn snapshot_round_trips_and_refuses_garbage() {
        let e = |index, c: Command| Entry { index, term: 2, kind: EntryKind::Normal, data: c.encode() };
        let mut kv = KvState::default();
        kv.apply(&[
            e(1, Command::Put { key: "a".into(), value: "1".into() }),
            e(2, Command::PutJson { key: "j".into(), json: "[1]".into() }),
            e(3, Command::Delete { key: "a".into() }),
        ]);
        let mut buf = Vec::new();
        kv.encode(&mut buf).unwrap();
        let back = KvState::decode(&buf).unwrap();
        assert_eq!(back, kv);
        assert_eq!((back.applied(), back.applied_term()), (3, 2));
        assert_eq!(KvState::decode(&buf[..buf.len() - 1]), None);
        let mut longer = buf.clone();
        longer.push(0);
        assert_eq!(KvState::decode(&longer), None);
    }
}
