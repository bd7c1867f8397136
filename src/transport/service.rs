//! The peer gRPC service `raftkv.v1.Raft`.
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use crate::proto as pb;
use crate::server::NodeHandle;

pub struct RaftService {
    node: NodeHandle,
}

impl RaftService {
    pub fn new(node: NodeHandle) -> Self {
        RaftService { node }
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn request_vote(
        &self,
        req: Request<pb::RequestVoteRequest>,
    ) -> Result<Response<pb::RequestVoteResponse>, Status> {
        let msg = convert::vote_request_from_pb(req.into_inner(), self.node.id(), self.node.names())?;
        let answer = self.node.step_request(msg).await?;
        Ok(Response::new(convert::vote_response_to_pb(answer)))
    }

    async fn append_entries(
        &self,
        req: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let msg = convert::append_request_from_pb(req.into_inner(), self.node.id(), self.node.names())?;
        let answer = self.node.step_request(msg).await?;
        Ok(Response::new(convert::append_response_to_pb(answer)?))
    }

    async fn propose(&self, req: Request<pb::ProposeRequest>) -> Result<Response<pb::ProposeResponse>, Status> {
        let deadline = crate::api::deadline(&req);
        let command = req.into_inner().command;
        let (index, term) = self.node.forwarded(deadline, || self.node.propose_here(command.clone(), deadline)).await?;
        Ok(Response::new(pb::ProposeResponse { index, term }))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::InstallSnapshotChunk>>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        static RECEIVING: AtomicU64 = AtomicU64::new(0);
        let mut stream = req.into_inner();
        let dir = self.node.snapshot_dir().to_path_buf();
        tokio::fs::create_dir_all(&dir).await.map_err(|e| Status::internal(e.to_string()))?;
        let tmp = dir.join(format!("receiving-{}.tmp", RECEIVING.fetch_add(1, Ordering::Relaxed)));
        let received = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| Status::internal(e.to_string()))?;
            let (mut term, mut leader, mut offset) = (0, String::new(), 0u64);
            loop {
                let Some(chunk) = stream.message().await? else {
                    return Err(Status::invalid_argument("snapshot stream ended before its last chunk"));
                };
                if offset == 0 {
                    (term, leader) = (chunk.term, chunk.leader.clone());
                }
                if chunk.offset != offset || chunk.term != term || chunk.leader != leader {
                    return Err(Status::invalid_argument("snapshot chunks out of order"));
                }
                file.write_all(&chunk.data).await.map_err(|e| Status::internal(e.to_string()))?;
                offset += chunk.data.len() as u64;
                if chunk.done {
                    break;
                }
            }
            file.sync_all().await.map_err(|e| Status::internal(e.to_string()))?;
            let path = tmp.clone();
            let loaded = tokio::task::spawn_blocking(move || crate::storage::snapshot::load_file(&path))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::invalid_argument(format!("received snapshot: {e}")))?;
            Ok::<_, Status>((term, leader, loaded))
        }
        .await;
        let (term, leader, (meta, state)) = match received {
            Ok(r) => r,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let msg = crate::raft::Message {
            from: self.node.names().id(&leader)?,
            to: self.node.id(),
            term,
            body: crate::raft::MessageBody::InstallSnapshot { index: meta.index, term: meta.term },
        };
        let answer = self.node.install_snapshot(msg, state).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        Ok(Response::new(convert::append_response_to_pb(answer?)?))
    }

    async fn timeout_now(
        &self,
        req: Request<pb::TimeoutNowRequest>,
    ) -> Result<Response<pb::TimeoutNowResponse>, Status> {
        let msg = convert::timeout_now_from_pb(req.into_inner(), self.node.id(), self.node.names())?;
        self.node.step_oneway(msg).await?;
        Ok(Response::new(pb::TimeoutNowResponse {}))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        crate::api::transfer_leader(&self.node, req).await
    }

    async fn read_index(&self, req: Request<pb::ReadIndexRequest>) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let deadline = crate::api::deadline(&req);
        let index = self.node.forwarded(deadline, || self.node.read_index_here(deadline)).await?;
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }
}
