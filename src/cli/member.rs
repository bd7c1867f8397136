//! `raftkv member list|add|promote|remove|update`: the cluster's membership (raftkv's own
//! API; `etcdctl member ...` works too).
use std::process::ExitCode;

use clap::Subcommand;
use raftkv::proto as pb;

use super::client::Conn;
use super::{CliError, CmdResult};

#[derive(Subcommand, Debug)]
pub enum MemberCmd {
    /// List the members: id, name, peer URL, voter or learner.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Add a member NAME=PEER_URL (http(s)://HOST:PORT); then start it with
    /// --initial-cluster-state existing. One change at a time.
    Add {
        /// NAME=PEER_URL
        member: String,
        /// As a learner: it receives the log but does not vote until promoted.
        #[arg(long)]
        learner: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Make a learner a voter (once it holds 90 % of the log).
    Promote {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a member; a leader removing itself hands leadership over first.
    Remove {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// A member moved: the others reach it at PEER_URL from now on (NAME=PEER_URL).
    /// Change it, then restart the member at its new address with its data.
    Update {
        /// NAME=PEER_URL
        member: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// NAME=PEER_URL, trimmed.
fn name_and_url(member: &str) -> Result<(String, String), CliError> {
    member
        .split_once('=')
        .map(|(n, u)| (n.trim().to_string(), u.trim().to_string()))
        .ok_or_else(|| CliError::Usage(format!("{member:?} is not NAME=PEER_URL")))
}

/// One call of the membership API, through the first endpoint that answers.
enum Call {
    List,
    Add(pb::MemberAddRequest),
    Promote(pb::MemberNameRequest),
    Remove(pb::MemberNameRequest),
    Update(pb::MemberUpdateRequest),
}

async fn call(conn: &Conn, call: Call) -> Result<pb::MemberListResponse, CliError> {
    let call = &call;
    let r = conn
        .first(|mut c| async move {
            match call {
                Call::List => c.member_list(pb::MemberListRequest {}).await,
                Call::Add(req) => c.member_add(req.clone()).await,
                Call::Promote(req) => c.member_promote(req.clone()).await,
                Call::Remove(req) => c.member_remove(req.clone()).await,
                Call::Update(req) => c.member_update(req.clone()).await,
            }
        })
        .await?;
    Ok(r.into_inner())
}

pub async fn run(cmd: MemberCmd) -> CmdResult {
    let (r, what) = match cmd {
        MemberCmd::List { conn } => (call(&conn, Call::List).await?, None),
        MemberCmd::Add { member, learner, conn } => {
            let (name, peer_url) = name_and_url(&member)?;
            let req = pb::MemberAddRequest { name, peer_url, learner };
            (call(&conn, Call::Add(req)).await?, Some(if learner { "added as a learner" } else { "added" }))
        }
        MemberCmd::Promote { name, conn } => {
            (call(&conn, Call::Promote(pb::MemberNameRequest { name })).await?, Some("promoted"))
        }
        MemberCmd::Remove { name, conn } => {
            (call(&conn, Call::Remove(pb::MemberNameRequest { name })).await?, Some("removed"))
        }
        MemberCmd::Update { member, conn } => {
            let (name, peer_url) = name_and_url(&member)?;
            (call(&conn, Call::Update(pb::MemberUpdateRequest { name, peer_url })).await?, Some("updated"))
        }
    };
    if let Some(what) = what {
        println!("member {:x} {what}", r.id);
    }
    println!("{:<8} {:<16} {:<40} ROLE", "ID", "NAME", "PEER_URL");
    for m in r.members {
        let role = if m.learner { "learner" } else { "voter" };
        println!("{:<8x} {:<16} {:<40} {role}", m.id, m.name, m.peer_url);
    }
    Ok(ExitCode::SUCCESS)
}
