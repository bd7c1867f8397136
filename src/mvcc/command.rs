//! What a client entry in the Raft log says: the commands of the state machine.
use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{Dec, Enc};
use super::read::KeyRange;
use super::txn::{Txn, TxnOp};
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
    /// A write under a client session (Raft thesis 6.3): applied once per
    /// `(client, seq)`; a retry gets the first answer. `time_ms` is the leader's clock
    /// when it appended the entry (see `stamp`): sessions expire by this log time.
    Session {
        client: u64,
        seq: u64,
        time_ms: u64,
        write: Box<Command>,
    },
    /// Opens a client session; its id is the index of this entry. It expires after
    /// `ttl_ms` of log time without a write; past `max_sessions` open ones it is refused.
    /// Both limits travel in the entry, so that every member decides alike.
    OpenSession {
        time_ms: u64,
        ttl_ms: u64,
        max_sessions: u64,
    },
    /// An etcd transaction (Put and DeleteRange of the etcd API are ones too).
    Txn(Txn),
    /// Grants lease `id` (not 0; chosen by the node that proposes it) for `ttl` seconds.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Revokes lease `id` and deletes its keys, at one revision: asked by a client
    /// (`since` 0), or decided by the leader when the lease expired (`since`: the index
    /// that granted the lease it judged, so that a lease granted again under the same
    /// id is not revoked by a decision about the old one).
    LeaseRevoke {
        id: i64,
        since: u64,
    },
}

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_PUT_JSON: u8 = 3;
const OP_COMPACT: u8 = 4;
const OP_SESSION: u8 = 5;
const OP_OPEN_SESSION: u8 = 6;
const OP_TXN: u8 = 7;
const OP_LEASE_GRANT: u8 = 8;
const OP_LEASE_REVOKE: u8 = 9;

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl Command {
    /// `[op: u8][key_len: u32 LE][key][value]`; a compaction is `[4][revision: u64 LE]`;
    /// a session write `[5][time_ms][client][seq][the write]`, a session opening
    /// `[6][time_ms][ttl_ms][max_sessions]` (u64 LE each).
    pub fn encode(&self) -> Bytes {
        let (op, key, value) = match self {
            Command::Session { client, seq, time_ms, write } => {
                let inner = write.encode();
                let mut b = BytesMut::with_capacity(25 + inner.len());
                b.put_u8(OP_SESSION);
                for v in [*time_ms, *client, *seq] {
                    b.put_u64_le(v);
                }
                b.put_slice(&inner);
                return b.freeze();
            }
            Command::Txn(txn) => {
                let mut e = Enc::default();
                e.u8(OP_TXN);
                txn.encode_into(&mut e);
                return Bytes::from(e.into_inner());
            }
            Command::OpenSession { time_ms, ttl_ms, max_sessions } => {
                let mut b = BytesMut::with_capacity(25);
                b.put_u8(OP_OPEN_SESSION);
                for v in [*time_ms, *ttl_ms, *max_sessions] {
                    b.put_u64_le(v);
                }
                return b.freeze();
            }
            Command::LeaseGrant { id, ttl } => {
                let mut b = BytesMut::with_capacity(17);
                b.put_u8(OP_LEASE_GRANT);
                b.put_i64_le(*id);
                b.put_i64_le(*ttl);
                return b.freeze();
            }
            Command::LeaseRevoke { id, since } => {
                let mut b = BytesMut::with_capacity(17);
                b.put_u8(OP_LEASE_REVOKE);
                b.put_i64_le(*id);
                if *since != 0 {
                    b.put_u64_le(*since);
                }
                return b.freeze();
            }
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

    /// Whether applying the encoded command touches a bounded number of keys: one
    /// key's put or delete (alone, in a session, or as a transaction of single-key
    /// puts, deletes and reads), a session opened or a lease granted. A range, a
    /// compaction or a lease revocation may touch any number.
    pub fn is_small(data: &[u8]) -> bool {
        fn ops_small(ops: &[TxnOp]) -> bool {
            ops.len() <= 16
                && ops.iter().all(|op| match op {
                    TxnOp::Put { .. } => true,
                    TxnOp::Delete { range } | TxnOp::Range { range, .. } => matches!(range, KeyRange::Key(_)),
                    TxnOp::Txn(_) => false,
                })
        }
        match data.first() {
            Some(&(OP_PUT | OP_PUT_JSON | OP_DELETE | OP_OPEN_SESSION | OP_LEASE_GRANT | OP_SESSION)) => true,
            Some(&OP_TXN) => match Command::decode(data) {
                Some(Command::Txn(t)) => {
                    t.compares.len() <= 16
                        && t.compares.iter().all(|c| matches!(c.range, KeyRange::Key(_)))
                        && ops_small(&t.success)
                        && ops_small(&t.failure)
                }
                _ => false,
            },
            _ => false,
        }
    }

    pub fn decode(data: &[u8]) -> Option<Command> {
        let (&op, rest) = data.split_first()?;
        match op {
            OP_COMPACT => return Some(Command::Compact { revision: u64::from_le_bytes(rest.try_into().ok()?) }),
            OP_SESSION => {
                let (time_ms, client, seq) = (u64_at(rest, 0)?, u64_at(rest, 8)?, u64_at(rest, 16)?);
                // Checked before decoding it: a session inside a session is refused
                // here, not after a recursion as deep as the entry is long.
                if !matches!(rest.get(24)?, &OP_PUT | &OP_PUT_JSON | &OP_DELETE) {
                    return None;
                }
                let write = Command::decode(rest.get(24..)?)?;
                // Only plain writes run under a session (no nesting, no compaction).
                let plain = matches!(write, Command::Put { .. } | Command::PutJson { .. } | Command::Delete { .. });
                return (plain && seq > 0).then(|| Command::Session { client, seq, time_ms, write: Box::new(write) });
            }
            OP_TXN => {
                let mut d = Dec::new(rest);
                let txn = Txn::decode_from(&mut d, 0)?;
                return (d.is_empty() && txn.puts_storable()).then_some(Command::Txn(txn));
            }
            OP_LEASE_GRANT if rest.len() == 16 => {
                let (id, ttl) = (u64_at(rest, 0)? as i64, u64_at(rest, 8)? as i64);
                let valid = id != 0 && (1..=super::lease::MAX_LEASE_TTL).contains(&ttl);
                return valid.then_some(Command::LeaseGrant { id, ttl });
            }
            OP_LEASE_REVOKE if rest.len() == 8 || rest.len() == 16 => {
                let id = u64_at(rest, 0)? as i64;
                let since = if rest.len() == 16 { u64_at(rest, 8)? } else { 0 };
                return (id != 0 && (rest.len() == 8 || since != 0)).then_some(Command::LeaseRevoke { id, since });
            }
            OP_OPEN_SESSION if rest.len() == 24 => {
                let (time_ms, ttl_ms, max_sessions) = (u64_at(rest, 0)?, u64_at(rest, 8)?, u64_at(rest, 16)?);
                return (ttl_ms > 0 && max_sessions > 0).then_some(Command::OpenSession {
                    time_ms,
                    ttl_ms,
                    max_sessions,
                });
            }
            _ => {}
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
        match self {
            Command::Session { write, .. } => write.grows_the_store(),
            Command::Txn(txn) => txn.grows_the_store(),
            c => matches!(c, Command::Put { .. } | Command::PutJson { .. } | Command::LeaseGrant { .. }),
        }
    }

    /// Sets the log time of an encoded session command to `now_ms` (the appending
    /// leader's clock); other commands are returned as they are.
    pub fn stamp(data: Bytes, now_ms: u64) -> Bytes {
        if data.len() < 9 || !matches!(data[0], OP_SESSION | OP_OPEN_SESSION) {
            return data;
        }
        let mut b = BytesMut::from(&data[..]);
        b[1..9].copy_from_slice(&now_ms.to_le_bytes());
        b.freeze()
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
            Command::Session { client: 9, seq: 3, time_ms: 5, write: Box::new(Command::Delete { key: "k".into() }) },
            Command::OpenSession { time_ms: 1, ttl_ms: 2, max_sessions: 3 },
            Command::LeaseGrant { id: -3, ttl: 9 },
            Command::LeaseRevoke { id: i64::MAX, since: 0 },
            Command::LeaseRevoke { id: 5, since: 9 },
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
        let compact = Box::new(Command::Compact { revision: 1 });
        let put = || Box::new(Command::Put { key: "k".into(), value: "v".into() });
        for bad in [
            Command::Session { client: 1, seq: 1, time_ms: 0, write: compact },
            Command::Session { client: 1, seq: 0, time_ms: 0, write: put() },
            Command::Session {
                client: 1,
                seq: 1,
                time_ms: 0,
                write: Box::new(Command::Session { client: 1, seq: 1, time_ms: 0, write: put() }),
            },
            Command::OpenSession { time_ms: 1, ttl_ms: 0, max_sessions: 3 },
            Command::LeaseGrant { id: 0, ttl: 9 },
            Command::LeaseGrant { id: 1, ttl: 0 },
            Command::LeaseGrant { id: 1, ttl: super::super::lease::MAX_LEASE_TTL + 1 },
            Command::LeaseRevoke { id: 0, since: 0 },
        ] {
            assert_eq!(Command::decode(&bad.encode()), None, "{bad:?}");
        }
    }

    /// What the driver may apply itself: commands of a bounded number of keys.
    #[test]
    fn small_commands_touch_a_bounded_number_of_keys() {
        use crate::mvcc::txn::{Cmp, Compare, Target};
        let key = |k: &str| KeyRange::Key(k.as_bytes().to_vec());
        let span = KeyRange::Span { start: b"a".to_vec(), end: None };
        let put = TxnOp::Put { key: "k".into(), value: Some("v".into()), lease: None };
        let txn =
            |compares: Vec<Compare>, success: Vec<TxnOp>| Command::Txn(Txn { compares, success, failure: vec![] });
        let cmp = |range| Compare { range, cmp: Cmp::Equal, target: Target::Version(1) };
        for small in [
            Command::Put { key: "k".into(), value: "v".into() },
            Command::Delete { key: "k".into() },
            Command::Session { client: 1, seq: 1, time_ms: 0, write: put_k() },
            Command::LeaseGrant { id: 1, ttl: 9 },
            txn(vec![], vec![put.clone()]),
            txn(vec![cmp(key("k"))], vec![put.clone(), TxnOp::Delete { range: key("j") }]),
        ] {
            assert!(Command::is_small(&small.encode()), "{small:?}");
        }
        for large in [
            Command::Compact { revision: 3 },
            Command::LeaseRevoke { id: 1, since: 0 },
            txn(vec![], vec![TxnOp::Delete { range: span.clone() }]),
            txn(vec![cmp(span.clone())], vec![put.clone()]),
            txn(vec![], vec![TxnOp::Range { range: span, revision: 0, limit: 0, keys_only: false }]),
            txn(vec![], vec![put.clone(); 17]),
            txn(vec![], vec![TxnOp::Txn(Box::default())]),
        ] {
            assert!(!Command::is_small(&large.encode()), "{large:?}");
        }
    }

    #[test]
    fn stamping_sets_the_log_time_of_session_commands_only() {
        let s = Command::Session { client: 4, seq: 2, time_ms: 0, write: put_k() };
        let stamped = Command::decode(&Command::stamp(s.encode(), 1234)).unwrap();
        assert_eq!(stamped, Command::Session { client: 4, seq: 2, time_ms: 1234, write: put_k() });
        let o = Command::OpenSession { time_ms: 0, ttl_ms: 5, max_sessions: 6 };
        let stamped = Command::decode(&Command::stamp(o.encode(), 77)).unwrap();
        assert_eq!(stamped, Command::OpenSession { time_ms: 77, ttl_ms: 5, max_sessions: 6 });
        let plain = Command::Put { key: "abcdefgh".into(), value: "v".into() }.encode();
        assert_eq!(Command::stamp(plain.clone(), 99), plain);
    }

    #[test]
    fn sessions_nested_as_deep_as_an_entry_allows_are_refused_without_recursing() {
        let mut bomb = Vec::new();
        for _ in 0..200_000 {
            bomb.push(OP_SESSION);
            bomb.extend_from_slice(&[1u8; 24]);
        }
        bomb.extend_from_slice(&put_k().encode());
        assert_eq!(Command::decode(&bomb), None);
    }

    fn put_k() -> Box<Command> {
        Box::new(Command::Put { key: "k".into(), value: "v".into() })
    }
}
