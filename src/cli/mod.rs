//! Subcommands of the `raftkv` binary.
pub mod bench;
mod bench_svg;
pub mod client;
pub mod controller;
pub mod dev;
mod error;
pub mod etcd;
pub mod lease;
pub mod member;
pub mod serve;
pub mod txn;
pub mod view;

use std::process::ExitCode;

pub use error::CliError;

/// Prints one line to stderr and returns the failure exit code.
pub fn fail(err: CliError) -> ExitCode {
    eprintln!("raftkv: error: {err}");
    ExitCode::FAILURE
}

pub type CmdResult = Result<ExitCode, CliError>;
