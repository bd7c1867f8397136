//! The CLI's one error type: why a command failed, printed by `fail` as one line.
//!
//! Errors of the library keep their own types (`#[from]`) and their own text; each
//! variant's text is what the user reads after `raftkv: error: `.
use raftkv::client::{describe, ClientError};
use raftkv::config::ConfigError;
use raftkv::error::with_causes;
use raftkv::kube::KubeError;
use raftkv::server::StartError;
use raftkv::tls::TlsError;

use super::lease::BadLeaseId;
use super::txn::TxnSyntaxError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag or an argument the command cannot use.
    #[error("{0}")]
    Usage(String),
    /// The node's configuration, refused by its parser or by `NodeConfig::validate`.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A flag's value refused by the configuration's parser, which does not name the flag.
    #[error("{flag}: {error}")]
    ConfigFlag { flag: &'static str, error: ConfigError },
    /// The Kubernetes API that --leave-on-scale-down needs (its one use).
    #[error("--leave-on-scale-down: {error}")]
    Kube { error: KubeError },
    /// Certificates and keys (--cacert, --cert, --key; `dev --tls`).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A lease id argument that does not parse.
    #[error(transparent)]
    LeaseId(#[from] BadLeaseId),
    /// A line of `raftkv txn`'s input.
    #[error(transparent)]
    Txn(#[from] TxnSyntaxError),
    /// An endpoint that is not a HOST:PORT a channel can be made to.
    #[error("bad endpoint {endpoint:?}: {error}")]
    BadEndpoint { endpoint: String, error: tonic::transport::Error },
    /// An endpoint that could not be connected to.
    #[error("{endpoint}: cannot connect: {}", with_causes(error))]
    Connect { endpoint: String, error: tonic::transport::Error },
    /// A node's answer (or the transport's) to a call at `endpoint`.
    #[error("{endpoint}: {}", describe(status))]
    Rpc { endpoint: String, status: tonic::Status },
    /// A client session's write (`put`, `delete`), or opening the session.
    #[error(transparent)]
    Session(#[from] ClientError),
    /// Nothing usable answered: no endpoint, node or bridge.
    #[error("{0}")]
    Unreachable(String),
    /// A local resource: a file, socket, signal, process or the runtime.
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    /// The node could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The command ran, and what it was for did not happen.
    #[error("{0}")]
    Failed(String),
    /// What should not fail did (a task of the command panicked, say).
    #[error(transparent)]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl From<KubeError> for CliError {
    fn from(error: KubeError) -> CliError {
        CliError::Kube { error }
    }
}

impl CliError {
    /// A local I/O failure, with what was being done.
    pub fn io(what: impl Into<String>, error: std::io::Error) -> CliError {
        CliError::Io { what: what.into(), error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_reads_as_the_message_it_replaced() {
        let io = || std::io::Error::new(std::io::ErrorKind::AddrInUse, "in use");
        assert_eq!(
            CliError::io("cannot listen on --client-addr 127.0.0.1:1", io()).to_string(),
            "cannot listen on --client-addr 127.0.0.1:1: in use"
        );
        let status = tonic::Status::failed_precondition("no");
        assert_eq!(CliError::Rpc { endpoint: "h:1".into(), status }.to_string(), "h:1: FailedPrecondition: no");
        let bad = || raftkv::config::parse_initial_cluster("a").unwrap_err();
        assert_eq!(CliError::from(bad()).to_string(), bad().to_string());
        assert_eq!(
            CliError::ConfigFlag { flag: "--peer-dial", error: bad() }.to_string(),
            format!("--peer-dial: {}", bad())
        );
        let lease = || super::super::lease::parse_id("xyz").unwrap_err();
        assert_eq!(CliError::from(lease()).to_string(), lease().to_string());
        let usage = CliError::Usage("--clients and --key-space must be positive".into());
        assert_eq!(usage.to_string(), "--clients and --key-space must be positive");
    }

    #[test]
    fn an_error_that_prints_its_cause_does_not_also_give_it_as_its_source() {
        // Else a chain of causes (`with_causes`) would print the cause twice.
        use std::error::Error;
        let io = CliError::io("cannot read stdin", std::io::Error::other("gone"));
        assert!(io.source().is_none(), "{io}");
        let bad = raftkv::config::parse_initial_cluster("a").unwrap_err();
        let flag = CliError::ConfigFlag { flag: "--peer-dial", error: bad };
        assert!(flag.source().is_none(), "{flag}");
        let kube = CliError::from(KubeError::NotInCluster("no service account".into()));
        assert!(kube.source().is_none(), "{kube}");
        assert_eq!(kube.to_string(), "--leave-on-scale-down: not in a Kubernetes pod: no service account");
        assert_eq!(raftkv::error::with_causes(&io), "cannot read stdin: gone");
    }
}
