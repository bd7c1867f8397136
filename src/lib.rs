//! raftkv: a Raft-replicated, strongly consistent key-value service.
pub mod raft;
