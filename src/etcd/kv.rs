//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{self, range_response};
use super::{etcd_status, Context};
use crate::api::deadline;
use crate::error::Error;
use crate::mvcc::txn::{OpResult, Txn, TxnOp, TxnResult};
use crate::mvcc::Command;
use crate::proto::etcd::etcdserverpb::{self as epb, kv_server::Kv};

pub struct EtcdKv(pub Context);

/// Whether every range of a transaction, nested ones included, asks for a
/// serializable read.
fn all_serializable(t: &epb::TxnRequest) -> bool {
    use epb::request_op::Request;
    t.success.iter().chain(&t.failure).all(|op| match &op.request {
        Some(Request::RequestRange(r)) => r.serializable,
        Some(Request::RequestTxn(t)) => all_serializable(t),
        _ => true,
    })
}

impl EtcdKv {
    /// Commits `txn` through the leader; its revision and its answer.
    async fn commit(&self, txn: Txn, deadline: std::time::Duration) -> Result<(u64, Arc<TxnResult>), Status> {
        let a = self.0.node.propose(&Command::Txn(txn), deadline).await.map_err(etcd_status)?;
        let result = a.txn.ok_or_else(|| Status::internal("raftkv: a transaction without an answer"))?;
        Ok((a.revision, result))
    }

    /// Commits a one-operation transaction: the operation's result.
    async fn single(&self, op: TxnOp, deadline: std::time::Duration) -> Result<(u64, OpResult), Status> {
        let txn = Txn { compares: Vec::new(), success: vec![op], failure: Vec::new() };
        let (revision, result) = self.commit(txn, deadline).await?;
        let op = result.results.first().cloned().ok_or_else(|| Status::internal("raftkv: an empty answer"))?;
        Ok((revision, op))
    }
}

#[tonic::async_trait]
impl Kv for EtcdKv {
    async fn range(&self, req: Request<epb::RangeRequest>) -> Result<Response<epb::RangeResponse>, Status> {
        let deadline = deadline(&req);
        let r = req.into_inner();
        let convert::RangeRead { range, revision, limit, keys_only } = convert::range_read(&r)?;
        if !r.serializable {
            self.0.node.linearizable_barrier(deadline).await.map_err(etcd_status)?;
        }
        let view = self.0.node.store().read().map_err(|e| etcd_status(e.into()))?;
        let found = view.range(&range, revision, limit as usize, keys_only).map_err(|e| etcd_status(e.into()))?;
        Ok(Response::new(range_response(&r, found, self.0.header(view.revision()))))
    }

    async fn put(&self, req: Request<epb::PutRequest>) -> Result<Response<epb::PutResponse>, Status> {
        let deadline = deadline(&req);
        let p = req.into_inner();
        let want_prev = p.prev_kv;
        let (revision, result) = self.single(convert::put_op(p)?, deadline).await?;
        let prev_kv = match result {
            OpResult::Put { prev } => prev.filter(|_| want_prev).map(convert::kv),
            _ => return Err(Status::internal("raftkv: a put answered as something else")),
        };
        Ok(Response::new(epb::PutResponse { header: self.0.header(revision), prev_kv }))
    }

    async fn delete_range(
        &self,
        req: Request<epb::DeleteRangeRequest>,
    ) -> Result<Response<epb::DeleteRangeResponse>, Status> {
        let deadline = deadline(&req);
        let d = req.into_inner();
        let (revision, result) = self.single(convert::delete_op(&d)?, deadline).await?;
        let OpResult::Delete { prevs } = result else {
            return Err(Status::internal("raftkv: a delete answered as something else"));
        };
        Ok(Response::new(epb::DeleteRangeResponse {
            header: self.0.header(revision),
            deleted: prevs.len() as i64,
            prev_kvs: if d.prev_kv { prevs.into_iter().map(convert::kv).collect() } else { Vec::new() },
        }))
    }

    async fn txn(&self, req: Request<epb::TxnRequest>) -> Result<Response<epb::TxnResponse>, Status> {
        let deadline = deadline(&req);
        let t = req.into_inner();
        let txn = convert::txn(t.clone())?;
        if txn.read_only() {
            // As etcd: no log entry, a linearizable read barrier unless every range
            // in it is serializable, then the node's own state.
            let serializable = all_serializable(&t);
            if !serializable {
                self.0.node.linearizable_barrier(deadline).await.map_err(etcd_status)?;
            }
            let view = self.0.node.store().read().map_err(|e| etcd_status(e.into()))?;
            let result = crate::mvcc::txn::read_only(&view, &txn).map_err(|e| etcd_status(e.into()))?;
            return Ok(Response::new(convert::txn_response(&t, &result, self.0.header(view.revision()))?));
        }
        let (revision, result) = self.commit(txn, deadline).await?;
        Ok(Response::new(convert::txn_response(&t, &result, self.0.header(revision))?))
    }

    async fn compact(&self, req: Request<epb::CompactionRequest>) -> Result<Response<epb::CompactionResponse>, Status> {
        if self.0.admin_needs_cert && req.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(Status::permission_denied("this call needs a client certificate of the trusted CA"));
        }
        let deadline = deadline(&req);
        let revision = req.into_inner().revision;
        if revision <= 0 {
            return Err(etcd_status(Error::Mvcc(crate::mvcc::MvccError::Compacted {
                compacted: self.0.node.store().status().compacted,
            })));
        }
        let a = self
            .0
            .node
            .propose(&Command::Compact { revision: revision as u64 }, deadline)
            .await
            .map_err(etcd_status)?;
        Ok(Response::new(epb::CompactionResponse { header: self.0.header(a.revision) }))
    }
}
