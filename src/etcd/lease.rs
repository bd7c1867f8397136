//! etcd's Lease service: grant, revoke, keep-alive (a stream), time-to-live and the
//! list of leases. Grants and revocations go through the log; keep-alives and
//! time-to-live questions are answered by the leader, whose clock decides expiry
//! (`server::lessor`).
use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{etcd_status, Context};
use crate::api::deadline;
use crate::proto::etcd::etcdserverpb::{self as epb, lease_server::Lease};

pub struct EtcdLease(pub Context);

/// Keep-alive answers queued for a slow client.
const QUEUE: usize = 16;

#[tonic::async_trait]
impl Lease for EtcdLease {
    async fn lease_grant(
        &self,
        req: Request<epb::LeaseGrantRequest>,
    ) -> Result<Response<epb::LeaseGrantResponse>, Status> {
        let deadline = deadline(&req);
        let r = req.into_inner();
        let (id, ttl) = self.0.node.lease_grant(r.id, r.ttl, deadline).await.map_err(etcd_status)?;
        let revision = self.0.node.store().status().revision;
        Ok(Response::new(epb::LeaseGrantResponse { header: self.0.header(revision), id, ttl, error: String::new() }))
    }

    async fn lease_revoke(
        &self,
        req: Request<epb::LeaseRevokeRequest>,
    ) -> Result<Response<epb::LeaseRevokeResponse>, Status> {
        let deadline = deadline(&req);
        let a = self.0.node.lease_revoke(req.into_inner().id, deadline).await.map_err(etcd_status)?;
        Ok(Response::new(epb::LeaseRevokeResponse { header: self.0.header(a.revision) }))
    }

    type LeaseKeepAliveStream = Pin<Box<dyn Stream<Item = Result<epb::LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<epb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let deadline = deadline(&req);
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(QUEUE);
        let ctx = self.0.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = incoming.message() => m,
                    _ = ctx.node.stopped() => break,
                };
                let Ok(Some(msg)) = msg else { break };
                // A lease that does not exist (or has expired) is answered with TTL 0, as
                // etcd does; any other failure ends the stream (the client reconnects).
                // The header's revision is read before the renewal (as etcd): a lease
                // revoked at revision r is never reported kept alive at a later one.
                let revision = ctx.node.store().status().revision;
                let answer = match ctx.node.lease_query(msg.id, true, false, deadline).await {
                    Ok(info) => Ok(epb::LeaseKeepAliveResponse {
                        header: ctx.header(revision),
                        id: msg.id,
                        ttl: info.ttl.max(0),
                    }),
                    Err(e) => Err(etcd_status(e)),
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<epb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<epb::LeaseTimeToLiveResponse>, Status> {
        let deadline = deadline(&req);
        let r = req.into_inner();
        let info = self.0.node.lease_query(r.id, false, r.keys, deadline).await.map_err(etcd_status)?;
        Ok(Response::new(epb::LeaseTimeToLiveResponse {
            header: self.0.header_now(),
            id: r.id,
            ttl: info.ttl,
            granted_ttl: info.granted_ttl,
            keys: info.keys.into_iter().map(String::into_bytes).collect(),
        }))
    }

    async fn lease_leases(
        &self,
        req: Request<epb::LeaseLeasesRequest>,
    ) -> Result<Response<epb::LeaseLeasesResponse>, Status> {
        let leases = self.0.node.lease_list(deadline(&req)).await.map_err(etcd_status)?;
        Ok(Response::new(epb::LeaseLeasesResponse {
            header: self.0.header_now(),
            leases: leases.keys().map(|&id| epb::LeaseStatus { id }).collect(),
        }))
    }
}
