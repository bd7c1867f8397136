//! What a client entry in the Raft log says: the commands of the state machine.
use bytes::{BufMut, Bytes, BytesMut};

use super::Revision;

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
    /// Drops the history before `revision` (etcd's Compact). Not a write: it makes no
    /// revision and is not part of the history.
    Compact {
        revision: Revision,
    },
}

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_PUT_JSON: u8 = 3;
const OP_COMPACT: u8 = 4;

impl Command {
    /// `[op: u8][key_len: u32 LE][key][value]`; a compaction is `[4][revision: u64 LE]`.
    pub fn encode(&self) -> Bytes {
        let (op, key, value) = match self {
            Command::Put { key, value } => (OP_PUT, key, value.as_str()),
            Command::PutJson { key, json } => (OP_PUT_JSON, key, json.as_str()),
            Command::Delete { key } => (OP_DELETE, key, ""),
            Command::Compact { revision } => {
                let mut b = BytesMut::with_capacity(9);
                b.put_u8(OP_COMPACT);
                b.put_u64_le(*revision);
                return b.freeze();
            }
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
        if op == OP_COMPACT {
            let revision = u64::from_le_bytes(rest.try_into().ok()?);
            return Some(Command::Compact { revision });
        }
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        // Keys the API would refuse are refused here too: the engine cannot store them.
        if len == 0 || len > crate::config::MAX_KEY_BYTES {
            return None;
        }
        let key = std::str::from_utf8(rest.get(4..4 + len)?).ok()?.to_string();
        let value = std::str::from_utf8(rest.get(4 + len..)?).ok()?.to_string();
        match op {
            OP_PUT => Some(Command::Put { key, value }),
            OP_PUT_JSON => Some(Command::PutJson { key, json: value }),
            OP_DELETE if value.is_empty() => Some(Command::Delete { key }),
            _ => None,
        }
    }

    /// Whether the quota refuses this command once the store is full: writes that add
    /// data do; deletes and compactions, which are how space is freed, do not.
    pub fn grows_the_store(&self) -> bool {
        matches!(self, Command::Put { .. } | Command::PutJson { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trips_and_garbage_is_rejected() {
        for c in [
            Command::Put { key: "k".into(), value: "v ü".into() },
            Command::Put { key: "k".into(), value: "".into() },
            Command::PutJson { key: "j".into(), json: "[1]".into() },
            Command::Delete { key: "gone".into() },
            Command::Compact { revision: 77 },
        ] {
            assert_eq!(Command::decode(&c.encode()), Some(c));
        }
        assert_eq!(Command::decode(&[]), None);
        // Keys the engine cannot hold (the API refuses them too).
        assert_eq!(Command::decode(&Command::Put { key: "".into(), value: "v".into() }.encode()), None);
        assert_eq!(Command::decode(&Command::Delete { key: "k".repeat(4097) }.encode()), None);
        assert_eq!(Command::decode(&[1, 200, 0, 0, 0, b'a']), None);
        assert_eq!(Command::decode(&[9, 0, 0, 0, 0]), None);
        assert_eq!(Command::decode(&[OP_COMPACT, 1, 2]), None);
        assert_eq!(Command::decode(&[OP_DELETE, 1, 0, 0, 0, b'k', b'v']), None, "a delete carries no value");
    }
}
