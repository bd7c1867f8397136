//! The peer gRPC service `raftkv.v1.Raft`.
use tonic::{Request, Response, Status};

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
        let (index, term) = self.node.propose_here(req.into_inner().command, deadline).await?;
        Ok(Response::new(pb::ProposeResponse { index, term }))
    }

    async fn read_index(&self, req: Request<pb::ReadIndexRequest>) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let deadline = crate::api::deadline(&req);
        let index = self.node.read_index_here(deadline).await?;
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }
}
