//! etcd's Cluster.MemberList and Maintenance.Status and HashKV: enough for
//! `etcdctl member list`, `etcdctl endpoint status` and `etcdctl endpoint hashkv`.
use tonic::{Request, Response, Status};

use super::{etcd_status, member_id, Context, ETCD_VERSION};
use crate::proto::etcd::etcdserverpb::{self as epb, cluster_server::Cluster, maintenance_server::Maintenance};

pub struct EtcdCluster(pub Context);
pub struct EtcdMaintenance(pub Context);

#[tonic::async_trait]
impl Cluster for EtcdCluster {
    /// Every member of the configuration in force, voters and learners, with its peer
    /// URL and its client URLs (as it answers; a member that is down has none listed).
    async fn member_list(
        &self,
        req: Request<epb::MemberListRequest>,
    ) -> Result<Response<epb::MemberListResponse>, Status> {
        let c = &self.0;
        let wait = crate::api::deadline(&req).min(std::time::Duration::from_secs(1));
        let mut client_urls = c.node.member_client_urls(wait).await;
        let members = c
            .node
            .names()
            .membership()
            .members
            .values()
            .map(|m| epb::Member {
                id: member_id(&m.name),
                name: m.name.clone(),
                peer_ur_ls: vec![m.peer_url.clone()],
                client_ur_ls: client_urls.remove(&m.name).unwrap_or_default(),
                is_learner: m.learner,
            })
            .collect();
        Ok(Response::new(epb::MemberListResponse { header: c.header_now(), members }))
    }
}

#[tonic::async_trait]
impl Maintenance for EtcdMaintenance {
    async fn status(&self, _req: Request<epb::StatusRequest>) -> Result<Response<epb::StatusResponse>, Status> {
        let c = &self.0;
        let st = c.node.status();
        let store = c.node.store().status();
        let leader = c.node.leader_name().map_or(0, |l| member_id(&l));
        Ok(Response::new(epb::StatusResponse {
            header: c.header(store.revision),
            version: ETCD_VERSION.to_string(),
            db_size: store.file_bytes as i64,
            leader,
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors: if leader == 0 { vec!["etcdserver: no leader".to_string()] } else { Vec::new() },
            db_size_in_use: store.stored_bytes as i64,
            is_learner: false,
            db_size_quota: c.quota_bytes as i64,
            ..Default::default()
        }))
    }

    async fn hash_kv(&self, req: Request<epb::HashKvRequest>) -> Result<Response<epb::HashKvResponse>, Status> {
        let c = &self.0;
        let revision = req.into_inner().revision.max(0) as u64;
        let view = c.node.store().read().map_err(|e| etcd_status(e.into()))?;
        let at = if revision == 0 { view.revision() } else { revision };
        let hash = tokio::task::block_in_place(|| view.hash(at)).map_err(|e| etcd_status(e.into()))?;
        Ok(Response::new(epb::HashKvResponse {
            header: c.header(view.revision()),
            hash,
            compact_revision: view.compacted() as i64,
            hash_revision: at as i64,
        }))
    }
}
