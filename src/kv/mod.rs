//! The key-value state machine: commands, apply, and the committed history.
use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

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

#[derive(Debug, Default)]
pub struct KvState {
    map: BTreeMap<String, String>,
    /// Every committed client command, in log order.
    history: Vec<HistoryEntry>,
    applied: Index,
}

impl KvState {
    pub fn get(&self, key: &str) -> Option<&String> {
        self.map.get(key)
    }

    pub fn history(&self) -> &[HistoryEntry] {
        &self.history
    }

    pub fn applied(&self) -> Index {
        self.applied
    }

    /// Applies committed entries in order, exactly once.
    pub fn apply(&mut self, entries: &[Entry]) {
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            assert_eq!(e.index, self.applied + 1, "entries must be applied in order");
            self.applied = e.index;
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
            self.history.push(HistoryEntry { index: e.index, term: e.term, command });
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
}
