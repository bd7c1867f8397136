//! Leases, etcd's: a lease is granted with a time to live; keys put with it are
//! attached to it and deleted, all at one revision, when it is revoked.
//!
//! The state machine knows only which leases exist, their granted TTL and their keys:
//! *when* a lease expires is decided by the leader (`server::lessor`), which revokes it
//! through the log. So every member deletes the same keys at the same entry, and a
//! deposed leader, whose entries do not commit, expires nothing.
//!
//! Engine keyspaces: `leases` (`[id i64 BE]` -> `[granted ttl i64 LE]`) and
//! `lease_keys` (`[id i64 BE][key]` -> empty): the keys attached to each lease.
use std::collections::BTreeMap;

use fjall::{Keyspace, OwnedWriteBatch as WriteBatch, Readable};

use super::MvccError;

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

/// The applier's copy of the granted leases (id -> granted TTL in seconds), mirrored
/// in the engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Leases {
    granted: BTreeMap<i64, i64>,
}

fn damaged() -> MvccError {
    MvccError::Engine("damaged lease record in the store".into())
}

/// A lease record: (id, granted TTL).
pub(super) fn decode_lease(k: &[u8], v: &[u8]) -> Result<(i64, i64), MvccError> {
    let id = u64::from_be_bytes(k.try_into().map_err(|_| damaged())?) as i64;
    let ttl = i64::from_le_bytes(v.try_into().map_err(|_| damaged())?);
    if id == 0 || !(1..=MAX_LEASE_TTL).contains(&ttl) {
        return Err(damaged());
    }
    Ok((id, ttl))
}

impl Leases {
    pub fn load(r: &impl Readable, ks: &Keyspace) -> Result<Leases, MvccError> {
        let mut granted = BTreeMap::new();
        for item in r.iter(ks) {
            let (k, v) = item.into_inner()?;
            let (id, ttl) = decode_lease(&k, &v)?;
            granted.insert(id, ttl);
        }
        Ok(Leases { granted })
    }

    pub fn ttl(&self, id: i64) -> Option<i64> {
        self.granted.get(&id).copied()
    }

    pub fn all(&self) -> Vec<(i64, i64)> {
        self.granted.iter().map(|(&id, &ttl)| (id, ttl)).collect()
    }

    pub fn grant(&mut self, id: i64, ttl: i64, batch: &mut WriteBatch, ks: &Keyspace) -> Result<(), MvccError> {
        if self.granted.contains_key(&id) {
            return Err(MvccError::LeaseExists);
        }
        self.granted.insert(id, ttl);
        batch.insert(ks, lease_key(id).as_slice(), ttl.to_le_bytes().as_slice());
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
        assert_eq!(decode_lease(&lease_key(-5), &30i64.to_le_bytes()).unwrap(), (-5, 30));
        assert!(decode_lease(&lease_key(5), &0i64.to_le_bytes()).is_err(), "a TTL of 0");
        assert!(decode_lease(&lease_key(0), &3i64.to_le_bytes()).is_err(), "lease 0 is no lease");
        assert!(decode_lease(&[1, 2], &3i64.to_le_bytes()).is_err());
        let k = lease_key_key(7, b"abc");
        assert!(k.starts_with(&lease_key(7)) && k.ends_with(b"abc"));
    }
}
