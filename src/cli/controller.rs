//! `raftkv controller`: send one controller-bridge request and print the reply.
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};
use tokio::net::{lookup_host, UdpSocket};

use super::{CliError, CmdResult};

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// The node's bridge, HOST[:PORT] (port 5555 if omitted).
    pub send_to: String,
    /// CONVERT_FOLLOWER, TIMEOUT, SHUTDOWN, LEADER_INFO, STORE or RETRIEVE.
    pub request: String,
    /// The key (STORE).
    pub key: Option<String>,
    /// The value (STORE): parsed as JSON when it is JSON, else sent as a string.
    pub value: Option<String>,
    /// How long to wait for a reply.
    #[arg(long, default_value_t = 1000)]
    pub wait_ms: u64,
}

pub async fn run(args: ControllerArgs) -> CmdResult {
    let target = if args.send_to.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        args.send_to.clone()
    } else {
        format!("{}:{}", args.send_to, raftkv::bridge::DEFAULT_PORT)
    };
    let addr = lookup_host(&target)
        .await
        .map_err(|e| CliError::io(format!("cannot resolve {target}"), e))?
        .next()
        .ok_or_else(|| CliError::Unreachable(format!("{target} resolves to no address")))?;
    let local = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = UdpSocket::bind(local).await.map_err(|e| CliError::io("cannot open a UDP socket", e))?;
    let request = args.request.to_uppercase();
    let value = args.value.map_or(Value::Null, |v| serde_json::from_str(&v).unwrap_or(Value::String(v)));
    let msg = json!({
        "sender_name": "Controller",
        "request": request,
        "term": null,
        "key": args.key,
        "value": value,
    });
    let bytes = serde_json::to_vec(&msg).map_err(|e| CliError::Internal(e.into()))?;
    socket.send_to(&bytes, addr).await.map_err(|e| CliError::io(format!("cannot send to {addr}"), e))?;
    let mut buf = vec![0u8; 65_536];
    match tokio::time::timeout(Duration::from_millis(args.wait_ms), socket.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => {
            println!("{}", String::from_utf8_lossy(&buf[..n]));
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(e)) => Err(CliError::io("receive failed", e)),
        Err(_) => {
            let expects_reply = matches!(request.as_str(), "LEADER_INFO" | "RETRIEVE");
            if expects_reply {
                Err(CliError::Unreachable(format!("no reply from {addr} within {} ms", args.wait_ms)))
            } else {
                eprintln!("sent {request} to {addr}; no reply within {} ms (none is expected)", args.wait_ms);
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
