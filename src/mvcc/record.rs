//! The engine's value encodings: a live key's metadata and a history event.
use super::{MvccError, Revision};
use crate::raft::{Index, Term};

/// A live key as a read sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    /// The value is a JSON text (a bridge STORE of a non-string JSON value).
    pub json: bool,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// Puts since the key was (re)created: 1 for the first.
    pub version: u64,
    /// The lease the key is attached to; 0 for none.
    pub lease: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    PutJson,
    Delete,
}

/// One write of the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub revision: Revision,
    pub kind: EventKind,
    /// The Raft entry that made it.
    pub index: Index,
    pub term: Term,
    pub key: String,
    /// Empty for a delete.
    pub value: String,
    /// 0 for a delete (the key no longer exists).
    pub create_revision: Revision,
    /// 0 for a delete.
    pub version: u64,
    /// The lease the key is attached to by this put; 0 for none (and for a delete).
    pub lease: i64,
}

impl Event {
    /// Bytes this event occupies in the store (for the quota), roughly as stored.
    pub fn stored_bytes(&self) -> u64 {
        (EVENT_HEADER + 2 * self.key.len() + self.value.len() + 64) as u64
    }

    /// The key as a read at this event's revision sees it (None after a delete).
    pub fn key_value(&self) -> Option<KeyValue> {
        let json = match self.kind {
            EventKind::Delete => return None,
            EventKind::Put => false,
            EventKind::PutJson => true,
        };
        Some(KeyValue {
            key: self.key.clone(),
            value: self.value.clone(),
            json,
            create_revision: self.create_revision,
            mod_revision: self.revision,
            version: self.version,
            lease: self.lease,
        })
    }
}

/// `[kind u8][index u64][term u64][create u64][version u64][key_len u32]`, then
/// `[lease i64]` if the kind has `WITH_LEASE` set, then `[key][value]`.
const EVENT_HEADER: usize = 1 + 8 * 4 + 4;
/// The kind flag of an event that attaches its key to a lease.
const WITH_LEASE: u8 = 0x80;

pub(super) fn encode_event(e: &Event) -> Vec<u8> {
    let kind = match e.kind {
        EventKind::Put => 1u8,
        EventKind::Delete => 2,
        EventKind::PutJson => 3,
    };
    let mut b = Vec::with_capacity(EVENT_HEADER + 8 + e.key.len() + e.value.len());
    b.push(if e.lease != 0 { kind | WITH_LEASE } else { kind });
    for v in [e.index, e.term, e.create_revision, e.version] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
    if e.lease != 0 {
        b.extend_from_slice(&e.lease.to_le_bytes());
    }
    b.extend_from_slice(e.key.as_bytes());
    b.extend_from_slice(e.value.as_bytes());
    b
}

fn damaged(what: &str) -> MvccError {
    MvccError::Engine(format!("damaged {what} record in the store"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub(super) fn decode_event(revision: Revision, b: &[u8]) -> Result<Event, MvccError> {
    if b.len() < EVENT_HEADER {
        return Err(damaged("history"));
    }
    let kind = match b[0] & !WITH_LEASE {
        1 => EventKind::Put,
        2 => EventKind::Delete,
        3 => EventKind::PutJson,
        _ => return Err(damaged("history")),
    };
    let key_len = u32::from_le_bytes(b[33..37].try_into().expect("4 bytes")) as usize;
    let (lease, rest) = if b[0] & WITH_LEASE != 0 {
        let l = b.get(EVENT_HEADER..EVENT_HEADER + 8).ok_or_else(|| damaged("history"))?;
        (i64::from_le_bytes(l.try_into().expect("8 bytes")), &b[EVENT_HEADER + 8..])
    } else {
        (0, &b[EVENT_HEADER..])
    };
    let (key, value) = (rest.get(..key_len), rest.get(key_len..));
    let text = |s: Option<&[u8]>| s.and_then(|s| std::str::from_utf8(s).ok()).map(str::to_string);
    let (Some(key), Some(value)) = (text(key), text(value)) else { return Err(damaged("history")) };
    Ok(Event {
        revision,
        kind,
        index: u64_at(b, 1),
        term: u64_at(b, 9),
        create_revision: u64_at(b, 17),
        version: u64_at(b, 25),
        key,
        value,
        lease,
    })
}

/// An encoded `KeyMeta`.
pub(super) struct KeyMetaBytes {
    buf: [u8; 36],
    len: usize,
}

impl KeyMetaBytes {
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Values of at most this many bytes are kept in their key's record as well as in the
/// history: a read of the latest revision then takes one engine lookup, not two (the
/// key's record, then its event), and a put finds the value it replaces with the
/// record it reads anyway. Larger values are read from the history: for them the
/// second lookup costs less than writing them twice. (TiKV keeps short values in its
/// write records for the same reason.)
pub(super) const INLINE_VALUE_MAX: usize = 512;

/// A live key's metadata: where its current value is in the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct KeyMeta {
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub mod_sub: u32,
    pub version: u64,
    /// 0 for none.
    pub lease: i64,
}

/// The current value a key's record holds (one of at most `INLINE_VALUE_MAX` bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct InlineValue<'a> {
    /// A JSON text (`EventKind::PutJson`).
    pub json: bool,
    pub value: &'a str,
}

/// The tags that follow the metadata in a record holding its value.
const INLINE_PUT: u8 = 1;
const INLINE_PUT_JSON: u8 = 3;

impl KeyMeta {
    /// 28 bytes, and 8 more for a lease (on the stack: this is on every write's path).
    pub fn encode(&self) -> KeyMetaBytes {
        let mut buf = [0u8; 36];
        buf[0..8].copy_from_slice(&self.create_revision.to_le_bytes());
        buf[8..16].copy_from_slice(&self.mod_revision.to_le_bytes());
        buf[16..20].copy_from_slice(&self.mod_sub.to_le_bytes());
        buf[20..28].copy_from_slice(&self.version.to_le_bytes());
        buf[28..36].copy_from_slice(&self.lease.to_le_bytes());
        KeyMetaBytes { buf, len: if self.lease != 0 { 36 } else { 28 } }
    }

    /// The record of a key whose current value (a put's) is `value`: the metadata
    /// alone (`encode`) for a value over `INLINE_VALUE_MAX` bytes, else all 36 bytes of
    /// it, a tag saying whether the value is JSON text, and the value (on the stack:
    /// this is on every write's path too).
    pub fn encode_record(&self, json: bool, value: &str) -> KeyRecordBytes {
        let meta = self.encode();
        let mut buf = [0u8; KEY_RECORD_MAX];
        if value.len() > INLINE_VALUE_MAX {
            buf[..meta.len].copy_from_slice(meta.as_slice());
            return KeyRecordBytes { buf, len: meta.len };
        }
        buf[..36].copy_from_slice(&meta.buf);
        buf[36] = if json { INLINE_PUT_JSON } else { INLINE_PUT };
        buf[37..37 + value.len()].copy_from_slice(value.as_bytes());
        KeyRecordBytes { buf, len: 37 + value.len() }
    }

    /// The metadata of a key's record (a value it holds is not read).
    pub fn decode(b: &[u8]) -> Result<KeyMeta, MvccError> {
        match b.len() {
            28 | 36 => {}
            n if n > 36 && matches!(b[36], INLINE_PUT | INLINE_PUT_JSON) => {}
            _ => return Err(damaged("key")),
        }
        Ok(KeyMeta {
            create_revision: u64_at(b, 0),
            mod_revision: u64_at(b, 8),
            mod_sub: u32::from_le_bytes(b[16..20].try_into().expect("4 bytes")),
            version: u64_at(b, 20),
            lease: if b.len() >= 36 { u64_at(b, 28) as i64 } else { 0 },
        })
    }

    /// A key's record: its metadata, and its value if the record holds it. Records of
    /// 28 or 36 bytes hold none (values too large, and stores written before values
    /// were kept with their keys).
    pub fn decode_record(b: &[u8]) -> Result<(KeyMeta, Option<InlineValue<'_>>), MvccError> {
        let meta = KeyMeta::decode(b)?;
        if b.len() <= 36 {
            return Ok((meta, None));
        }
        let value = std::str::from_utf8(&b[37..]).map_err(|_| damaged("key"))?;
        Ok((meta, Some(InlineValue { json: b[36] == INLINE_PUT_JSON, value })))
    }
}

/// The longest key record: the metadata, its tag and a value of `INLINE_VALUE_MAX` bytes.
const KEY_RECORD_MAX: usize = 37 + INLINE_VALUE_MAX;

/// An encoded key record (`KeyMeta::encode_record`).
pub(super) struct KeyRecordBytes {
    buf: [u8; KEY_RECORD_MAX],
    len: usize,
}

impl KeyRecordBytes {
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_an_error() {
        let e = Event {
            revision: 9,
            kind: EventKind::PutJson,
            index: 12,
            term: 3,
            key: "ké".into(),
            value: "{\"a\":1}".into(),
            create_revision: 4,
            version: 2,
            lease: 0,
        };
        let b = encode_event(&e);
        assert_eq!(decode_event(9, &b).unwrap(), e);
        let leased = Event { lease: -77, ..e.clone() };
        assert_eq!(decode_event(9, &encode_event(&leased)).unwrap(), leased);
        assert!(decode_event(9, &encode_event(&leased)[..EVENT_HEADER + 4]).is_err());
        assert!(decode_event(9, &b[..10]).is_err());
        let mut bad = b.clone();
        bad[0] = 7;
        assert!(decode_event(9, &bad).is_err());
        let mut long_key = b;
        long_key[33] = 200;
        assert!(decode_event(9, &long_key).is_err());
        let m = KeyMeta { create_revision: 1, mod_revision: 5, mod_sub: 2, version: 3, lease: 0 };
        assert_eq!(KeyMeta::decode(m.encode().as_slice()).unwrap(), m);
        let leased = KeyMeta { lease: 12, ..m };
        assert_eq!(KeyMeta::decode(leased.encode().as_slice()).unwrap(), leased);
        assert!(KeyMeta::decode(&[0; 27]).is_err());
    }

    #[test]
    fn a_key_record_holds_a_value_of_at_most_the_inline_limit() {
        let m = KeyMeta { create_revision: 1, mod_revision: 5, mod_sub: 2, version: 3, lease: 0 };
        let small = m.encode_record(false, "v").as_slice().to_vec();
        assert_eq!(KeyMeta::decode_record(&small).unwrap(), (m, Some(InlineValue { json: false, value: "v" })));
        let leased = KeyMeta { lease: -4, ..m };
        let json = leased.encode_record(true, "{}");
        assert_eq!(
            KeyMeta::decode_record(json.as_slice()).unwrap(),
            (leased, Some(InlineValue { json: true, value: "{}" }))
        );
        let empty = m.encode_record(false, "");
        assert_eq!(
            KeyMeta::decode_record(empty.as_slice()).unwrap(),
            (m, Some(InlineValue { json: false, value: "" }))
        );
        let at_limit = "x".repeat(INLINE_VALUE_MAX);
        assert_eq!(
            KeyMeta::decode_record(m.encode_record(false, &at_limit).as_slice()).unwrap().1.unwrap().value,
            at_limit
        );
        // Over the limit the record is the metadata alone, as a store from before holds.
        let over = m.encode_record(false, &"x".repeat(INLINE_VALUE_MAX + 1));
        assert_eq!(over.as_slice(), m.encode().as_slice());
        assert_eq!(
            KeyMeta::decode_record(leased.encode_record(false, &"y".repeat(INLINE_VALUE_MAX + 1)).as_slice()).unwrap(),
            (leased, None)
        );
        // Damage: an unknown tag, a value that is not UTF-8, a cut metadata.
        let mut bad_tag = small.clone();
        bad_tag[36] = 2;
        assert!(KeyMeta::decode_record(&bad_tag).is_err());
        let mut bad_text = small.clone();
        bad_text[37] = 0xff;
        assert!(KeyMeta::decode_record(&bad_text).is_err());
        assert!(KeyMeta::decode_record(&small[..30]).is_err());
    }
}

/// `revs` keys: `[revision u64 BE][sub u32 BE]`, so that byte order is revision order.
pub(super) fn rev_key(rev: Revision, sub: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&rev.to_be_bytes());
    k[8..].copy_from_slice(&sub.to_be_bytes());
    k
}

pub(super) fn decode_rev_key(k: &[u8]) -> Result<(Revision, u32), MvccError> {
    if k.len() != 12 {
        return Err(damaged("revision key"));
    }
    Ok((
        u64::from_be_bytes(k[..8].try_into().expect("8 bytes")),
        u32::from_be_bytes(k[8..].try_into().expect("4 bytes")),
    ))
}

/// The `key_revs` prefix of every version of `key`: the key with each 0x00 escaped as
/// 0x00 0xFF, then the terminator 0x00 0x01. Byte order of prefixes is key order, and no
/// key's prefix starts another's.
pub(super) fn key_prefix(key: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(key.len() + 14);
    for &b in key {
        p.push(b);
        if b == 0 {
            p.push(0xFF);
        }
    }
    p.extend_from_slice(&[0, 1]);
    p
}

/// A `key_revs` key: the key's prefix and the revision.
pub(super) fn key_rev_key(key: &[u8], rev: Revision, sub: u32) -> Vec<u8> {
    let mut k = key_prefix(key);
    k.extend_from_slice(&rev_key(rev, sub));
    k
}

/// The inverse of `key_rev_key`.
pub(super) fn decode_key_rev_key(k: &[u8]) -> Result<(Vec<u8>, Revision, u32), MvccError> {
    let mut key = Vec::with_capacity(k.len());
    let mut i = 0;
    while i + 1 < k.len() {
        match (k[i], k[i + 1]) {
            (0, 0xFF) => {
                key.push(0);
                i += 2;
            }
            (0, 1) => {
                let (rev, sub) = decode_rev_key(&k[i + 2..])?;
                return Ok((key, rev, sub));
            }
            (0, _) => break,
            (b, _) => {
                key.push(b);
                i += 1;
            }
        }
    }
    Err(damaged("key index"))
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn key_index_encoding_round_trips_and_orders_by_key_then_revision() {
        let keys: [&[u8]; 6] = [b"", b"a", b"a\x00", b"a\x00b", b"a\x01", b"b"];
        let mut encoded = Vec::new();
        for k in keys {
            for rev in [1u64, 300, u64::MAX >> 1] {
                let e = key_rev_key(k, rev, 2);
                assert_eq!(decode_key_rev_key(&e).unwrap(), (k.to_vec(), rev, 2));
                assert!(e.starts_with(&key_prefix(k)));
                encoded.push(e);
            }
        }
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(sorted, encoded, "byte order is (key, revision) order");
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert!(!key_prefix(b).starts_with(&key_prefix(a)), "{a:?} {b:?}");
            }
        }
        assert!(decode_key_rev_key(b"abc").is_err());
        assert_eq!(decode_rev_key(&rev_key(7, 1)).unwrap(), (7, 1));
    }
}
