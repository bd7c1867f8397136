//! The cluster's membership: who votes, who only learns, and how each member is
//! reached. A configuration change is an entry whose data is the whole new membership
//! (`encode`), so a node's configuration is the last one in its log (committed or not,
//! Raft thesis §4.1), and a truncated entry takes its configuration with it.
use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use super::types::NodeId;

/// Limits that keep a decoded membership small whatever a peer sends.
pub const MAX_MEMBERS: usize = 256;
pub const MAX_NAME_BYTES: usize = 255;
pub const MAX_URL_BYTES: usize = 1024;
/// The highest member id: ids count up from 1, one per member ever added.
pub const MAX_ID: NodeId = 1 << 48;
const MAGIC: u8 = b'M';
const VERSION: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Where the other members reach this one's peer service.
    pub peer_url: String,
    /// A learner receives the log and snapshots but does not vote or count for commits.
    pub learner: bool,
    /// The member has started and said so (`ConfChange::Publish`, etcd's "publish"): a
    /// node that finds itself started while its data directory is empty lost its
    /// data, and must not take part as if it were new.
    pub started: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub members: BTreeMap<NodeId, Member>,
    /// The id the next added member gets: ids are never reused, so a message from a
    /// removed member can never pass for one from its successor.
    pub next_id: NodeId,
}

/// A change to the membership, as an operator asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfChange {
    Add {
        name: String,
        peer_url: String,
        learner: bool,
    },
    Promote(NodeId),
    Remove(NodeId),
    /// The member moved: it is reached at a new peer URL (etcd's `member update`).
    Update {
        id: NodeId,
        peer_url: String,
    },
    /// The member has started (sent by the member itself once it knows a leader).
    Publish(NodeId),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    #[error("membership record is damaged: {0}")]
    Damaged(&'static str),
}

impl Membership {
    /// The founding members, with ids 1, 2, … in the order given.
    pub fn founding(members: impl IntoIterator<Item = (String, String)>) -> Membership {
        let members: BTreeMap<NodeId, Member> = members
            .into_iter()
            .enumerate()
            .map(|(i, (name, peer_url))| (i as NodeId + 1, Member { name, peer_url, learner: false, started: false }))
            .collect();
        let next_id = members.len() as NodeId + 1;
        Membership { members, next_id }
    }

    /// Voters named by id only (names are the ids): for tests and simulations.
    pub fn of_voters(ids: &[NodeId]) -> Membership {
        let members: BTreeMap<NodeId, Member> = ids
            .iter()
            .map(|&id| (id, Member { name: id.to_string(), peer_url: String::new(), learner: false, started: false }))
            .collect();
        let next_id = ids.iter().max().copied().unwrap_or(0) + 1;
        Membership { members, next_id }
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| !m.learner)
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| m.learner)
    }

    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().filter(|(_, m)| !m.learner).map(|(&id, _)| id)
    }

    pub fn voter_count(&self) -> usize {
        self.members.values().filter(|m| !m.learner).count()
    }

    pub fn id_of(&self, name: &str) -> Option<NodeId> {
        self.members.iter().find(|(_, m)| m.name == name).map(|(&id, _)| id)
    }

    /// The membership after `change`, and the id it concerns, or why it cannot be made.
    /// Checks only what the membership itself decides; the leader checks the rest
    /// (one change at a time, a promoted learner caught up).
    pub fn changed(&self, change: &ConfChange) -> Result<(Membership, NodeId), ConfChangeError> {
        let mut next = self.clone();
        match change {
            ConfChange::Add { name, peer_url, learner } => {
                check_name(name)?;
                check_url(peer_url)?;
                if self.members.values().any(|m| m.peer_url == *peer_url) {
                    return Err(ConfChangeError::PeerUrlExists(peer_url.clone()));
                }
                if self.id_of(name).is_some() {
                    return Err(ConfChangeError::NameExists(name.clone()));
                }
                if self.members.len() >= MAX_MEMBERS {
                    return Err(ConfChangeError::TooManyMembers);
                }
                let id = self.next_id;
                next.next_id += 1;
                let member =
                    Member { name: name.clone(), peer_url: peer_url.clone(), learner: *learner, started: false };
                next.members.insert(id, member);
                Ok((next, id))
            }
            ConfChange::Promote(id) => {
                let m = next.members.get_mut(id).ok_or(ConfChangeError::NotAMember(*id))?;
                if !m.learner {
                    return Err(ConfChangeError::NotALearner(*id));
                }
                m.learner = false;
                Ok((next, *id))
            }
            ConfChange::Publish(id) => {
                let m = next.members.get_mut(id).ok_or(ConfChangeError::NotAMember(*id))?;
                m.started = true;
                Ok((next, *id))
            }
            ConfChange::Update { id, peer_url } => {
                check_url(peer_url)?;
                if self.members.iter().any(|(other, m)| other != id && m.peer_url == *peer_url) {
                    return Err(ConfChangeError::PeerUrlExists(peer_url.clone()));
                }
                let m = next.members.get_mut(id).ok_or(ConfChangeError::NotAMember(*id))?;
                m.peer_url = peer_url.clone();
                Ok((next, *id))
            }
            ConfChange::Remove(id) => {
                let m = next.members.remove(id).ok_or(ConfChangeError::NotAMember(*id))?;
                if !m.learner && next.voter_count() == 0 {
                    return Err(ConfChangeError::LastVoter);
                }
                Ok((next, *id))
            }
        }
    }

    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(16 + self.members.len() * 64);
        b.put_u8(MAGIC);
        b.put_u8(VERSION);
        b.put_u64_le(self.next_id);
        b.put_u32_le(self.members.len() as u32);
        for (&id, m) in &self.members {
            b.put_u64_le(id);
            b.put_u8(m.learner as u8 | (m.started as u8) << 1);
            for s in [&m.name, &m.peer_url] {
                b.put_u16_le(s.len() as u16);
                b.put_slice(s.as_bytes());
            }
        }
        b.freeze()
    }

    /// Decodes and checks a membership, from disk or from a peer: ids ascending, below
    /// `next_id`, names unique and present, at least one voter.
    pub fn decode(data: &[u8]) -> Result<Membership, MembershipError> {
        let damaged = MembershipError::Damaged;
        let mut r = Reader(data);
        if r.u8()? != MAGIC || r.u8()? != VERSION {
            return Err(damaged("unknown format"));
        }
        let next_id = r.u64()?;
        if next_id == 0 || next_id > MAX_ID + 1 {
            return Err(damaged("next id out of range"));
        }
        let count = r.u32()? as usize;
        if count > MAX_MEMBERS {
            return Err(damaged("too many members"));
        }
        let mut members = BTreeMap::new();
        for _ in 0..count {
            let id = r.u64()?;
            let flags = r.u8()?;
            if flags > 3 {
                return Err(damaged("bad member flags"));
            }
            let (learner, started) = (flags & 1 != 0, flags & 2 != 0);
            let name = r.string(MAX_NAME_BYTES)?;
            let peer_url = r.string(MAX_URL_BYTES)?;
            if id == 0 || id >= next_id || members.last_key_value().is_some_and(|(&last, _)| last >= id) {
                return Err(damaged("member ids out of order"));
            }
            if name.is_empty() || members.values().any(|m: &Member| m.name == name) {
                return Err(damaged("member names missing or repeated"));
            }
            members.insert(id, Member { name, peer_url, learner, started });
        }
        if !r.0.is_empty() {
            return Err(damaged("trailing bytes"));
        }
        let m = Membership { members, next_id };
        if m.voter_count() == 0 {
            return Err(damaged("no voter"));
        }
        Ok(m)
    }
}

fn check_name(name: &str) -> Result<(), ConfChangeError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.contains(['=', ',']) || name.chars().any(char::is_control)
    {
        return Err(ConfChangeError::BadName(name.to_string()));
    }
    Ok(())
}

fn check_url(url: &str) -> Result<(), ConfChangeError> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    let ok = url.len() <= MAX_URL_BYTES
        && rest.is_some_and(|hostport| {
            let hostport = hostport.strip_suffix('/').unwrap_or(hostport);
            let port = hostport.rsplit_once(':').and_then(|(host, port)| (!host.is_empty()).then_some(port));
            !hostport.contains(['/', '?', '#', ' ']) && port.is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
        });
    if !ok {
        return Err(ConfChangeError::BadPeerUrl(url.to_string()));
    }
    Ok(())
}

/// Why a configuration change was refused. Nothing changed.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfChangeError {
    #[error("not the leader")]
    NotLeader { leader: Option<NodeId> },
    #[error("leadership transfer in progress")]
    Transferring,
    /// One change at a time (Raft thesis §4.1): the previous one is not committed yet,
    /// or this leader has not yet committed an entry of its own term.
    #[error("a configuration change is already in progress")]
    Pending,
    #[error("member name {0:?} already exists")]
    NameExists(String),
    #[error("peer URL {0:?} already exists")]
    PeerUrlExists(String),
    #[error("member {0:x} not found")]
    NotAMember(NodeId),
    #[error("member {0:?} not found")]
    UnknownName(String),
    #[error("member {0:x} is not a learner: can only promote a learner member")]
    NotALearner(NodeId),
    #[error("learner {id:x} is not in sync with the leader (it holds {matched} of {committed} committed entries)")]
    LearnerBehind { id: NodeId, matched: u64, committed: u64 },
    #[error("cannot remove the last voting member")]
    LastVoter,
    #[error("too many members (at most {MAX_MEMBERS})")]
    TooManyMembers,
    #[error("invalid member name {0:?}: non-empty, at most 255 bytes, no '=', ',' or control characters")]
    BadName(String),
    #[error("invalid peer URL {0:?}: expected http(s)://HOST:PORT")]
    BadPeerUrl(String),
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], MembershipError> {
        if self.0.len() < n {
            return Err(MembershipError::Damaged("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, MembershipError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, MembershipError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, MembershipError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, MembershipError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn string(&mut self, max: usize) -> Result<String, MembershipError> {
        let n = self.u16()? as usize;
        if n > max {
            return Err(MembershipError::Damaged("string too long"));
        }
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| MembershipError::Damaged("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Membership {
        Membership::founding(["a", "b", "c"].map(|n| (n.to_string(), format!("http://{n}:2380"))))
    }

    fn add(name: &str, learner: bool) -> ConfChange {
        ConfChange::Add { name: name.into(), peer_url: format!("http://{name}:2380"), learner }
    }

    #[test]
    fn encoding_round_trips_and_every_truncation_is_refused() {
        let (m, id) = three().changed(&add("d", true)).unwrap();
        assert_eq!(id, 4);
        let bytes = m.encode();
        assert_eq!(Membership::decode(&bytes), Ok(m));
        for cut in 0..bytes.len() {
            assert!(Membership::decode(&bytes[..cut]).is_err(), "a record cut at {cut} decoded");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(Membership::decode(&longer).is_err());
    }

    #[test]
    fn ids_are_never_reused() {
        let (m, _) = three().changed(&ConfChange::Remove(3)).unwrap();
        let (m, id) = m.changed(&add("c", false)).unwrap();
        assert_eq!(id, 4, "the re-added member gets a new id");
        assert!(!m.contains(3));
    }

    #[test]
    fn a_member_that_moved_keeps_its_id_name_and_role() {
        let m = three();
        let (moved, id) = m.changed(&ConfChange::Update { id: 2, peer_url: "http://b2:2380".into() }).unwrap();
        assert_eq!(id, 2);
        assert_eq!(moved.members[&2].peer_url, "http://b2:2380");
        assert_eq!((moved.members[&2].name.as_str(), moved.voter_count()), ("b", 3));
        // Its own URL again is no change; another member's, or one that does not parse, is refused.
        let same = ConfChange::Update { id: 2, peer_url: m.members[&2].peer_url.clone() };
        assert_eq!(m.changed(&same).map(|(m, _)| m), Ok(m.clone()));
        let taken = ConfChange::Update { id: 2, peer_url: "http://a:2380".into() };
        assert_eq!(m.changed(&taken), Err(ConfChangeError::PeerUrlExists("http://a:2380".into())));
        let bad = ConfChange::Update { id: 2, peer_url: "http://b".into() };
        assert_eq!(m.changed(&bad), Err(ConfChangeError::BadPeerUrl("http://b".into())));
        let nobody = ConfChange::Update { id: 9, peer_url: "http://z:1".into() };
        assert_eq!(m.changed(&nobody), Err(ConfChangeError::NotAMember(9)));
    }

    #[test]
    fn bad_changes_are_refused_and_change_nothing() {
        let m = three();
        let same_name = ConfChange::Add { name: "a".into(), peer_url: "http://elsewhere:2380".into(), learner: true };
        assert_eq!(m.changed(&same_name), Err(ConfChangeError::NameExists("a".into())));
        let same_url = ConfChange::Add { name: "z".into(), peer_url: "http://a:2380".into(), learner: false };
        assert_eq!(m.changed(&same_url), Err(ConfChangeError::PeerUrlExists("http://a:2380".into())));
        assert_eq!(m.changed(&ConfChange::Promote(2)), Err(ConfChangeError::NotALearner(2)));
        assert_eq!(m.changed(&ConfChange::Remove(9)), Err(ConfChangeError::NotAMember(9)));
        for url in
            ["a:2380", "http://", "http://a", "http://a:x", "http://a:0", "ftp://a:1", "http://a:1/p", "http://:1"]
        {
            let cc = ConfChange::Add { name: "z".into(), peer_url: url.into(), learner: false };
            assert_eq!(m.changed(&cc), Err(ConfChangeError::BadPeerUrl(url.into())), "{url}");
        }
        let one = Membership::of_voters(&[1]);
        assert_eq!(one.changed(&ConfChange::Remove(1)), Err(ConfChangeError::LastVoter));
        assert_eq!(m, three());
    }

    #[test]
    fn promotion_makes_a_voter() {
        let (m, id) = three().changed(&add("d", true)).unwrap();
        assert_eq!(m.voter_count(), 3);
        let (m, _) = m.changed(&ConfChange::Promote(id)).unwrap();
        assert_eq!(m.voter_count(), 4);
        assert!(m.is_voter(id));
    }
}
