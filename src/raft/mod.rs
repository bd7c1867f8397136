//! The consensus core: no tokio, no tonic, no file system, no clock.
pub mod log;
pub mod membership;
pub mod node;
pub mod progress;
pub mod types;

pub use membership::{ConfChange, ConfChangeError, Member, Membership, MembershipError};
pub use node::{Config, ConfigError, ProposeError, RawNode, TransferError};
pub use types::*;
