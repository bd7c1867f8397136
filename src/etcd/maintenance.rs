//! etcd's Maintenance.Status and HashKV: enough for `etcdctl endpoint status` and
//! `etcdctl endpoint hashkv`.
use tonic::{Request, Response, Status};

use super::{etcd_status, member_id, Context, ETCD_VERSION};
use crate::proto::etcd::etcdserverpb::{self as epb, maintenance_server::Maintenance};

pub struct EtcdMaintenance(pub Context);

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
