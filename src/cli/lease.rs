//! `raftkv lease grant|revoke|keep-alive|ttl` and `raftkv put --lease`, over etcd's
//! Lease and KV services. Lease ids are written in hexadecimal, as etcdctl does.
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use raftkv::proto::etcd::etcdserverpb::{self as epb, kv_client::KvClient, lease_client::LeaseClient};

use super::client::Conn;
use super::{CliError, CmdResult};

#[derive(Subcommand, Debug)]
pub enum LeaseCmd {
    /// Grant a lease of TTL seconds; prints its id.
    Grant {
        ttl: i64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a lease: the keys attached to it are deleted.
    Revoke {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Keep a lease alive until interrupted (or once, with --once).
    KeepAlive {
        id: String,
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a lease's granted and remaining TTL (and its keys, with --keys).
    Ttl {
        id: String,
        #[arg(long)]
        keys: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

/// A lease id that does not parse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a lease id (hexadecimal, as `raftkv lease grant` prints it)")]
pub struct BadLeaseId(String);

/// A lease id as etcdctl prints it: hexadecimal.
pub fn parse_id(id: &str) -> Result<i64, BadLeaseId> {
    u64::from_str_radix(id.trim_start_matches("0x"), 16)
        .ok()
        .map(|v| v as i64)
        .filter(|v| *v != 0)
        .ok_or_else(|| BadLeaseId(id.to_string()))
}

pub async fn run(cmd: LeaseCmd) -> CmdResult {
    match cmd {
        LeaseCmd::Grant { ttl, conn } => {
            if ttl <= 0 {
                return Err(CliError::Usage(format!("the TTL must be a positive number of seconds, not {ttl}")));
            }
            let req = epb::LeaseGrantRequest { ttl, id: 0 };
            let r = conn
                .first_channel(move |ch| async move { LeaseClient::new(ch).lease_grant(req).await })
                .await?
                .into_inner();
            println!("lease {:x} granted with TTL({}s)", r.id, r.ttl);
        }
        LeaseCmd::Revoke { id, conn } => {
            let id = parse_id(&id)?;
            let req = epb::LeaseRevokeRequest { id };
            conn.first_channel(move |ch| async move { LeaseClient::new(ch).lease_revoke(req).await }).await?;
            println!("lease {id:x} revoked");
        }
        LeaseCmd::Ttl { id, keys, conn } => {
            let id = parse_id(&id)?;
            let req = epb::LeaseTimeToLiveRequest { id, keys };
            let r = conn
                .first_channel(move |ch| async move { LeaseClient::new(ch).lease_time_to_live(req).await })
                .await?
                .into_inner();
            if r.ttl == -1 {
                println!("lease {id:x} already expired");
                return Ok(ExitCode::from(1));
            }
            let mut line = format!("lease {id:x} granted with TTL({}s), remaining({}s)", r.granted_ttl, r.ttl);
            if keys {
                let names: Vec<String> = r.keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
                line += &format!(", attached keys([{}])", names.join(" "));
            }
            println!("{line}");
        }
        LeaseCmd::KeepAlive { id, once, conn } => return keep_alive(&conn, parse_id(&id)?, once).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// Renews lease `id` every third of its TTL until interrupted; a broken stream goes on
/// at the next endpoint. Ends (exit 1) when the lease has expired or been revoked.
async fn keep_alive(conn: &Conn, id: i64, once: bool) -> CmdResult {
    let mut at = 0;
    loop {
        let ep = &conn.endpoints[at % conn.endpoints.len()];
        at += 1;
        let mut client = LeaseClient::new(conn.channel(ep, Duration::from_millis(1000))?);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut answers = match client.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            Ok(s) => s.into_inner(),
            Err(s) => {
                eprintln!("raftkv: {ep}: {}; trying the next endpoint", raftkv::client::describe(&s));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            if tx.send(epb::LeaseKeepAliveRequest { id }).await.is_err() {
                break;
            }
            let ttl = match answers.message().await {
                Ok(Some(a)) => a.ttl,
                Ok(None) => break,
                Err(s) => {
                    eprintln!("raftkv: {ep}: {}", raftkv::client::describe(&s));
                    break;
                }
            };
            if ttl <= 0 {
                println!("lease {id:x} expired or revoked.");
                return Ok(ExitCode::from(1));
            }
            println!("lease {id:x} keepalived with TTL({ttl})");
            if once {
                return Ok(ExitCode::SUCCESS);
            }
            tokio::time::sleep(Duration::from_secs((ttl as u64 / 3).max(1))).await;
        }
        eprintln!("raftkv: the keep-alive stream to {ep} ended; going on at the next endpoint");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `raftkv put KEY VALUE --lease ID`: an etcd Put attaching the key to the lease.
pub async fn put(conn: &Conn, key: String, value: String, lease: &str) -> CmdResult {
    let req = epb::PutRequest {
        key: key.into_bytes(),
        value: value.into_bytes(),
        lease: parse_id(lease)?,
        ..Default::default()
    };
    let r = conn
        .first_channel(|ch| {
            let req = req.clone();
            async move { KvClient::new(ch).put(req).await }
        })
        .await?
        .into_inner();
    println!("OK revision={}", r.header.map_or(0, |h| h.revision));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_hexadecimal_and_not_zero() {
        assert_eq!(parse_id("1fbc3e678d36adc7"), Ok(0x1fbc3e678d36adc7));
        assert_eq!(parse_id("ffffffffffffffff"), Ok(-1));
        assert!(parse_id("0").is_err());
        assert!(parse_id("xyz").is_err());
    }
}
