//! The links to the other members, kept in step with the core's configuration: per
//! member a peer client, the queue of Raft messages to it (drained by its sender task)
//! and the queue of client writes forwarded to it while it leads. A member added gets
//! links at once; a removed one loses them, which ends its tasks.
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::forwarder::{self, Forward};
use super::Input;
use crate::mvcc::Store;
use crate::raft::{Membership, Message, NodeId};
use crate::transport::convert::Names;
use crate::transport::{self, Faults, PeerClient};

#[derive(Clone)]
pub struct Link {
    pub client: PeerClient,
    pub forwarder: mpsc::Sender<Forward>,
    peer_url: String,
}

/// What connecting to a member needs.
pub struct Peers {
    pub me: NodeId,
    pub my_name: String,
    pub names: Names,
    pub faults: Option<Faults>,
    pub tls: Option<Arc<crate::tls::Reloading<rustls::ClientConfig>>>,
    pub input: mpsc::Sender<Input>,
    pub rpc_timeout: Duration,
    pub store: Arc<Store>,
    pub shutdown: watch::Sender<bool>,
    /// The leader this node knows (the driver publishes changes only): a forwarder
    /// gives back the writes it has not sent once another member leads.
    pub leader: watch::Sender<Option<NodeId>>,
    pub links: RwLock<BTreeMap<NodeId, Link>>,
    /// Tests only: where to dial members, by name, instead of their peer URLs.
    pub dial: BTreeMap<String, String>,
}

/// `host:port` of a peer URL (`http://host:port`, or a bare `host:port`).
pub fn peer_addr(url: &str) -> &str {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).unwrap_or(url);
    rest.strip_suffix('/').unwrap_or(rest)
}

impl Peers {
    pub fn client(&self, id: NodeId) -> Option<PeerClient> {
        self.links.read().unwrap_or_else(|p| p.into_inner()).get(&id).map(|l| l.client.clone())
    }

    pub fn forwarder(&self, id: NodeId) -> Option<mpsc::Sender<Forward>> {
        self.links.read().unwrap_or_else(|p| p.into_inner()).get(&id).map(|l| l.forwarder.clone())
    }

    /// Every other member's client, by id.
    pub fn clients(&self) -> Vec<(NodeId, PeerClient)> {
        self.links.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(&id, l)| (id, l.client.clone())).collect()
    }

    /// Brings the links in step with `m`: new members (or new URLs) are connected, and
    /// `queues` (the driver's message queues) gains theirs; removed members lose both.
    /// `known` (every member of a configuration still in the log) is who may send.
    pub fn update(&self, m: &Membership, known: Membership, queues: &mut BTreeMap<NodeId, mpsc::Sender<Message>>) {
        self.names.set(m.clone(), known);
        let mut links = self.links.write().unwrap_or_else(|p| p.into_inner());
        links.retain(|id, l| m.members.get(id).is_some_and(|mm| mm.peer_url == l.peer_url));
        queues.retain(|id, _| links.contains_key(id));
        for (&id, member) in &m.members {
            if id == self.me || links.contains_key(&id) {
                continue;
            }
            let addr = self.dial.get(&member.name).map_or_else(|| peer_addr(&member.peer_url), String::as_str);
            let client =
                match transport::connect(addr, &self.my_name, &member.name, self.faults.as_ref(), self.tls.clone()) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(member = %member.name, "cannot reach this member: {e}");
                        continue;
                    }
                };
            tracing::info!(member = %member.name, id = format!("{id:x}"), url = %member.peer_url, learner = member.learner, "connected to a member");
            let ends = transport::Ends {
                me: self.me,
                peer: id,
                my_name: self.my_name.clone(),
                peer_name: member.name.clone(),
                faults: self.faults.clone(),
            };
            let queue =
                transport::spawn_peer(ends, client.clone(), self.input.clone(), self.rpc_timeout, self.store.clone());
            queues.insert(id, queue);
            let route = forwarder::Route {
                peer: id,
                client: client.clone(),
                faults: self.faults.clone().map(|f| (f, self.my_name.clone(), member.name.clone())),
            };
            let forwarder = forwarder::spawn(route, self.leader.subscribe(), self.shutdown.subscribe());
            links.insert(id, Link { client, forwarder, peer_url: member.peer_url.clone() });
        }
    }
}
