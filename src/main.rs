//! The `raftkv` command: run a node, run a local cluster, or talk to one.
#![allow(clippy::result_large_err)]
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// mimalloc rather than glibc's malloc: a node that built a 2 GB snapshot held 329 MB of
/// heap with 54 MB in use (glibc keeps freed memory in its arenas), and allocation is
/// on every request's path. Built with `no_thp` (Cargo.toml): with transparent huge
/// pages, memory mimalloc had returned to the OS came back as 2 MiB pages that the
/// kernel zeroes whole on the first touch (3.8 % of the nodes' CPU under puts); without,
/// the puts' CPU fell 6-7 % (README, "Benchmarks").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "raftkv", version, about = "A Raft-replicated, strongly consistent key-value service")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node.
    Serve(Box<cli::serve::ServeArgs>),
    /// Run a local cluster: N `raftkv serve` child processes on loopback.
    Dev(cli::dev::DevArgs),
    /// Serve the live cluster view of a running cluster: a page that shows every node
    /// and the elections between them as they happen.
    View(cli::view::ViewArgs),
    /// Set KEY to VALUE (answers once committed by a majority).
    Put {
        key: String,
        value: String,
        /// Attach the key to this lease (its id in hexadecimal): it is deleted when the
        /// lease expires or is revoked.
        #[arg(long)]
        lease: Option<String>,
        #[command(flatten)]
        conn: cli::client::Conn,
    },
    /// Read KEY (linearizable unless --serializable).
    Get {
        key: String,
        /// Answer from the contacted node's own state, which may be stale.
        #[arg(long)]
        serializable: bool,
        /// Read KEY as it was at this revision (0: the latest).
        #[arg(long, default_value_t = 0)]
        rev: u64,
        /// Every key starting with KEY, with its value (through etcd's Range).
        #[arg(long)]
        prefix: bool,
        #[command(flatten)]
        conn: cli::client::Conn,
    },
    /// Print every change of KEY (or, with --prefix, of every key under it) as it
    /// happens, until interrupted; resumes on another node if one goes away.
    Watch {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Start at this revision (0: from now on); past changes are replayed.
        #[arg(long, default_value_t = 0)]
        rev: u64,
        #[command(flatten)]
        conn: cli::client::Conn,
    },
    /// Delete KEY.
    Delete {
        key: String,
        #[command(flatten)]
        conn: cli::client::Conn,
    },
    /// List the history applied at one node (every write), in revision order.
    Retrieve {
        /// The node to ask, by name (default: the first endpoint that answers).
        #[arg(long)]
        node: Option<String>,
        /// Start at this revision (it must be above the compacted one).
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
        #[command(flatten)]
        conn: cli::client::Conn,
    },
    /// Drop the history before REVISION (reads below it then fail).
    Compact {
        revision: u64,
        #[command(flatten)]
        conn: cli::client::Conn,
    },
    /// Show every endpoint's view: name, role, term, leader, commit, applied, revisions.
    Status {
        #[command(flatten)]
        conn: cli::client::Conn,
    },
    /// The cluster's members: list, add, promote a learner, remove.
    Member {
        #[command(subcommand)]
        cmd: cli::member::MemberCmd,
    },
    /// Hand leadership to another member (the most up-to-date follower by default).
    TransferLeader {
        /// The member to hand leadership to, by name.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        conn: cli::client::Conn,
    },
    /// Grant, revoke, keep alive and inspect leases (etcd's Lease service).
    #[command(subcommand)]
    Lease(cli::lease::LeaseCmd),
    /// Run a transaction read from stdin, in etcdctl's syntax: compares, a blank line,
    /// the operations on success, a blank line, the operations on failure.
    Txn {
        #[command(flatten)]
        conn: cli::client::Conn,
    },
    /// Load the cluster with concurrent Stores; report throughput, latency, longest gap.
    Bench(cli::bench::BenchArgs),
    /// Send one controller-bridge request (UDP JSON) and print the reply.
    Controller(cli::controller::ControllerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return cli::fail(cli::CliError::io("cannot start the runtime", e)),
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(args) => cli::serve::run(*args).await,
            Cmd::Dev(args) => cli::dev::run(args).await,
            Cmd::View(args) => cli::view::run(args).await,
            Cmd::Put { key, value, lease: Some(lease), conn } => cli::lease::put(&conn, key, value, &lease).await,
            Cmd::Put { key, value, lease: None, conn } => cli::client::put(&conn, key, value).await,
            Cmd::Lease(cmd) => cli::lease::run(cmd).await,
            Cmd::Txn { conn } => cli::txn::run(&conn).await,
            Cmd::Get { key, serializable, rev, prefix: true, conn } => {
                cli::etcd::get_prefix(&conn, key, serializable, rev).await
            }
            Cmd::Get { key, serializable, rev, prefix: false, conn } => {
                cli::client::get(&conn, key, serializable, rev).await
            }
            Cmd::Watch { key, prefix, rev, conn } => cli::etcd::watch(&conn, key, prefix, rev).await,
            Cmd::Delete { key, conn } => cli::client::delete(&conn, key).await,
            Cmd::Retrieve { node, from_revision, conn } => cli::client::retrieve(&conn, node, from_revision).await,
            Cmd::Compact { revision, conn } => cli::client::compact(&conn, revision).await,
            Cmd::Status { conn } => cli::client::status(&conn).await,
            Cmd::TransferLeader { to, conn } => cli::client::transfer_leader(&conn, to).await,
            Cmd::Member { cmd } => cli::member::run(cmd).await,
            Cmd::Bench(args) => cli::bench::run(args).await,
            Cmd::Controller(args) => cli::controller::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => cli::fail(e),
    }
}
