//! Leases, etcd's: a lease is granted with a time to live; keys put with it are
//! attached to it and deleted, all at one revision, when it is revoked.
//!
//! The state machine knows only which leases exist, their granted TTL and their keys:
//! *when* a lease expires is decided by the leader (`server::lessor`), which revokes it
//! through the log. So every member deletes the same keys at the same entry, and a
//! deposed leader, whose entries do not commit, expires nothing.
//!
//! Engine keyspaces: `leases` (`[id i64 BE]` -> `[granted ttl i64 LE][index u64 LE]`,
//! the index of the entry that granted it) and
//! `lease_keys` (`[id i64 BE][key]` -> empty): the keys attached to each lease.
use std::collections::BTreeMap;

use fjall::{Keyspace, OwnedWriteBatch as WriteBatch, Readable};

use super::MvccError;
use crate::raft::Index;

/// The longest TTL a lease may have (etcd's `MaxLeaseTTL`), in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Bytes a lease counts for in the quota (etcd's lease overhead).
pub(super) const LEASE_BYTES: u64 = 64;

pub(super) fn lease_key(id: i64) -> [u8; 8] {
    (id as u64).to_be_bytes()
}

/// A `lease_keys` key: the lease, then the key.
pub(super) fn lease_key_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&lease_key(id));
    k.extend_from_slice(key);
    k
}

/// A lease that exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted {
    /// Seconds.
    pub ttl: i64,
    /// The index of the entry that granted it: tells a lease from an earlier one that
    /// had the same id.
    pub since: Index,
}

/// Every lease that exists, by id.
pub type LeaseMap = BTreeMap<i64, Granted>;

/// The applier's copy of the granted leases, mirrored in the engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Leases {
    granted: LeaseMap,
}

fn damaged() -> MvccError {
    MvccError::Engine("damaged lease record in the store".into())
}

fn encode_lease(g: &Granted) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&g.ttl.to_le_bytes());
    b[8..].copy_from_slice(&g.since.to_le_bytes());
    b
}

/// A lease record: its id and grant.
pub(super) fn decode_lease(k: &[u8], v: &[u8]) -> Result<(i64, Granted), MvccError> {
    let id = u64::from_be_bytes(k.try_into().map_err(|_| damaged())?) as i64;
    if v.len() != 16 {
        return Err(damaged());
    }
    let ttl = i64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
    let since = u64::from_le_bytes(v[8..].try_into().expect("8 bytes"));
    if id == 0 || since == 0 || !(1..=MAX_LEASE_TTL).contains(&ttl) {
        return Err(damaged());
    }
    Ok((id, Granted { ttl, since }))
}

impl Leases {
    pub fn load(r: &impl Readable, ks: &Keyspace) -> Result<Leases, MvccError> {
        let mut granted = BTreeMap::new();
        for item in r.iter(ks) {
            let (k, v) = item.into_inner()?;
            let (id, g) = decode_lease(&k, &v)?;
            granted.insert(id, g);
        }
        Ok(Leases { granted })
    }

    pub fn exists(&self, id: i64) -> bool {
        self.granted.contains_key(&id)
    }

    /// Whether lease `id` exists and (unless `since` is 0) is the one granted at index
    /// `since`.
    pub fn current(&self, id: i64, since: Index) -> bool {
        self.granted.get(&id).is_some_and(|g| since == 0 || g.since == since)
    }

    pub fn all(&self) -> &LeaseMap {
        &self.granted
    }

    pub fn grant(&mut self, id: i64, g: Granted, batch: &mut WriteBatch, ks: &Keyspace) -> Result<(), MvccError> {
        if self.granted.contains_key(&id) {
            return Err(MvccError::LeaseExists);
        }
        self.granted.insert(id, g);
        batch.insert(ks, lease_key(id).as_slice(), encode_lease(&g).as_slice());
        Ok(())
    }

    /// Forgets lease `id` (its keys are the caller's).
    pub fn remove(&mut self, id: i64, batch: &mut WriteBatch, ks: &Keyspace) {
        self.granted.remove(&id);
        batch.remove(ks, lease_key(id).as_slice());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_records_round_trip_and_damage_is_an_error() {
        let g = Granted { ttl: 30, since: 4 };
        assert_eq!(decode_lease(&lease_key(-5), &encode_lease(&g)).unwrap(), (-5, g));
        assert!(decode_lease(&lease_key(5), &encode_lease(&Granted { ttl: 0, since: 4 })).is_err(), "a TTL of 0");
        assert!(decode_lease(&lease_key(0), &encode_lease(&g)).is_err(), "lease 0 is no lease");
        assert!(decode_lease(&[1, 2], &encode_lease(&g)).is_err());
        assert!(decode_lease(&lease_key(5), &30i64.to_le_bytes()).is_err(), "too short");
        let k = lease_key_key(7, b"abc");
        assert!(k.starts_with(&lease_key(7)) && k.ends_with(b"abc"));
    }
}
