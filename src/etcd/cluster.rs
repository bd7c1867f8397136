//! etcd's Cluster service: `etcdctl member list|add|remove|promote`.
//!
//! etcd's ids are 64-bit hashes of the member's name (`member_id`), the same on every
//! node; the core's own ids stay internal. etcd's `MemberAdd` carries no name (a new
//! etcd member publishes it when it starts): here the member is named after its peer
//! URL's host — the first label of a DNS name (`raftkv-5` for
//! `http://raftkv-5.raftkv-peer:2380`), or `HOST-PORT` for an IP address — and must be
//! started with that `--name`. `raftkv member add NAME=URL` names it explicitly.
use tonic::{Code, Request, Response, Status};

use super::{etcd_status, member_id, Context};
use crate::error::Error;
use crate::proto::etcd::etcdserverpb::{self as epb, cluster_server::Cluster};
use crate::raft::{ConfChange, NodeId};
use crate::server::peer_addr;

pub struct EtcdCluster(pub Context);

impl EtcdCluster {
    fn check_admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.0.admin_needs_cert && req.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(Status::permission_denied("this call needs a client certificate of the trusted CA"));
        }
        Ok(())
    }

    /// The configuration in force, with each member's client URLs as it answers
    /// within `wait` (a member that is down has none listed).
    async fn members(&self, wait: std::time::Duration) -> Vec<epb::Member> {
        let mut client_urls = self.0.node.member_client_urls(wait).await;
        let m = self.0.node.membership();
        m.members
            .values()
            .map(|m| epb::Member {
                id: member_id(&m.name),
                name: m.name.clone(),
                peer_ur_ls: vec![m.peer_url.clone()],
                client_ur_ls: client_urls.remove(&m.name).unwrap_or_default(),
                is_learner: m.learner,
            })
            .collect()
    }

    /// Makes `change` of the member with etcd id `id`; the members after it.
    async fn change(
        &self,
        id: u64,
        change: fn(NodeId) -> ConfChange,
        deadline: std::time::Duration,
    ) -> Result<Vec<epb::Member>, Status> {
        let id = self.member(id)?;
        self.0.node.change_membership(change(id), deadline).await.map_err(membership_status)?;
        Ok(self.members(std::time::Duration::from_millis(200)).await)
    }

    /// The core's id of the member with etcd id `id`.
    fn member(&self, id: u64) -> Result<NodeId, Status> {
        let m = self.0.node.membership();
        let found = m.members.iter().find(|(_, m)| member_id(&m.name) == id).map(|(&i, _)| i);
        found.ok_or_else(|| Status::not_found("etcdserver: member not found"))
    }
}

/// The name a member added through etcd's API gets from its peer URL.
fn name_from_url(url: &str) -> Option<String> {
    let (host, port) = peer_addr(url).rsplit_once(':')?;
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        let host = host.trim_start_matches('[').trim_end_matches(']').replace(':', "-");
        return Some(format!("{host}-{port}"));
    }
    host.split('.').next().filter(|l| !l.is_empty()).map(str::to_string)
}

/// A refused configuration change as etcd answers it (etcd's clients match the text).
fn membership_status(e: Error) -> Status {
    let s = etcd_status(e);
    let text = s.message();
    let etcd = [
        (Code::FailedPrecondition, "member name", "etcdserver: member ID already exist"),
        (Code::FailedPrecondition, "peer URL", "etcdserver: Peer URLs already exists"),
        (Code::NotFound, "not found", "etcdserver: member not found"),
        (Code::FailedPrecondition, "is not a learner", "etcdserver: can only promote a learner member"),
        (
            Code::FailedPrecondition,
            "not in sync",
            "etcdserver: can only promote a learner member which is in sync with leader",
        ),
        (Code::InvalidArgument, "invalid peer URL", "etcdserver: given member URLs are invalid"),
    ];
    match etcd.iter().find(|(code, pattern, _)| s.code() == *code && text.contains(pattern)) {
        Some((code, _, etcd)) => Status::with_metadata(*code, *etcd, s.metadata().clone()),
        None => s,
    }
}

#[tonic::async_trait]
impl Cluster for EtcdCluster {
    async fn member_list(
        &self,
        req: Request<epb::MemberListRequest>,
    ) -> Result<Response<epb::MemberListResponse>, Status> {
        let wait = crate::api::deadline(&req).min(std::time::Duration::from_secs(1));
        let members = self.members(wait).await;
        Ok(Response::new(epb::MemberListResponse { header: self.0.header_now(), members }))
    }

    async fn member_add(
        &self,
        req: Request<epb::MemberAddRequest>,
    ) -> Result<Response<epb::MemberAddResponse>, Status> {
        self.check_admin(&req)?;
        let deadline = crate::api::deadline(&req);
        let r = req.into_inner();
        let [peer_url] = r.peer_ur_ls.as_slice() else {
            return Err(Status::invalid_argument("etcdserver: given member URLs are invalid (raftkv takes one)"));
        };
        let name = name_from_url(peer_url)
            .ok_or_else(|| Status::invalid_argument("etcdserver: given member URLs are invalid"))?;
        let change = ConfChange::Add { name: name.clone(), peer_url: peer_url.clone(), learner: r.is_learner };
        self.0.node.change_membership(change, deadline).await.map_err(membership_status)?;
        let member = epb::Member {
            id: member_id(&name),
            name,
            peer_ur_ls: vec![peer_url.clone()],
            client_ur_ls: Vec::new(),
            is_learner: r.is_learner,
        };
        let members = self.members(std::time::Duration::from_millis(200)).await;
        Ok(Response::new(epb::MemberAddResponse { header: self.0.header_now(), member: Some(member), members }))
    }

    async fn member_remove(
        &self,
        req: Request<epb::MemberRemoveRequest>,
    ) -> Result<Response<epb::MemberRemoveResponse>, Status> {
        let deadline = crate::api::deadline(&req);
        self.check_admin(&req)?;
        let members = self.change(req.into_inner().id, ConfChange::Remove, deadline).await?;
        Ok(Response::new(epb::MemberRemoveResponse { header: self.0.header_now(), members }))
    }

    /// The member moved: the others reach it at its new peer URL (one; its name, and so
    /// its etcd id, stay).
    async fn member_update(
        &self,
        req: Request<epb::MemberUpdateRequest>,
    ) -> Result<Response<epb::MemberUpdateResponse>, Status> {
        self.check_admin(&req)?;
        let deadline = crate::api::deadline(&req);
        let r = req.into_inner();
        let id = self.member(r.id)?;
        let [peer_url] = r.peer_ur_ls.as_slice() else {
            return Err(Status::invalid_argument("etcdserver: given member URLs are invalid (raftkv takes one)"));
        };
        let change = ConfChange::Update { id, peer_url: peer_url.clone() };
        self.0.node.change_membership(change, deadline).await.map_err(membership_status)?;
        let members = self.members(std::time::Duration::from_millis(200)).await;
        Ok(Response::new(epb::MemberUpdateResponse { header: self.0.header_now(), members }))
    }

    async fn member_promote(
        &self,
        req: Request<epb::MemberPromoteRequest>,
    ) -> Result<Response<epb::MemberPromoteResponse>, Status> {
        let deadline = crate::api::deadline(&req);
        self.check_admin(&req)?;
        let members = self.change(req.into_inner().id, ConfChange::Promote, deadline).await?;
        Ok(Response::new(epb::MemberPromoteResponse { header: self.0.header_now(), members }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_added_through_etcd_are_named_after_their_peer_host() {
        assert_eq!(name_from_url("http://raftkv-5.raftkv-peer.ns.svc:2380").as_deref(), Some("raftkv-5"));
        assert_eq!(name_from_url("https://node7:2380").as_deref(), Some("node7"));
        assert_eq!(name_from_url("http://127.0.0.1:7106").as_deref(), Some("127.0.0.1-7106"));
        assert_eq!(name_from_url("http://nohost"), None);
    }
}
