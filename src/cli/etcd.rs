//! CLI commands that speak etcd's v3 API to the cluster: `get --prefix` and `watch`.
use std::process::ExitCode;
use std::time::Duration;

use raftkv::client::{describe, never_applied};
use raftkv::proto::etcd::etcdserverpb::{
    self as epb, kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion,
};

use super::client::Conn;
use super::{CliError, CmdResult};

/// etcd's prefix convention: the range end is the prefix with its last byte below
/// 0xff incremented (and what follows cut); all 0xff (or empty): every key from it on.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Every key under `prefix` (at revision `rev`, 0: the latest), in key order.
pub async fn get_prefix(conn: &Conn, prefix: String, serializable: bool, rev: u64) -> CmdResult {
    let key = if prefix.is_empty() { vec![0] } else { prefix.clone().into_bytes() };
    let req = epb::RangeRequest {
        range_end: prefix_end(prefix.as_bytes()),
        key,
        revision: rev as i64,
        serializable,
        ..Default::default()
    };
    let mut last = CliError::Usage("no endpoints given".into());
    for ep in &conn.endpoints {
        let mut kv = KvClient::new(conn.channel(ep, Duration::from_millis(1000))?);
        let mut r = tonic::Request::new(req.clone());
        r.set_timeout(conn.timeout());
        match kv.range(r).await {
            Ok(r) => {
                let r = r.into_inner();
                if r.kvs.is_empty() {
                    eprintln!("raftkv: no key under {prefix:?}");
                    return Ok(ExitCode::from(1));
                }
                for kv in r.kvs {
                    println!("{} = {}", String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value));
                }
                return Ok(ExitCode::SUCCESS);
            }
            Err(status) if never_applied(&status) => last = CliError::Rpc { endpoint: ep.clone(), status },
            Err(status) => return Err(CliError::Rpc { endpoint: ep.clone(), status }),
        }
    }
    Err(last)
}

/// Prints every change of `key` (or of every key under it) from revision `rev` (0:
/// from now on), until interrupted. A broken stream is resumed on the next endpoint
/// from the revision after the last event printed, so nothing is missed or repeated.
pub async fn watch(conn: &Conn, key: String, prefix: bool, rev: u64) -> CmdResult {
    let range_end = if prefix { prefix_end(key.as_bytes()) } else { Vec::new() };
    let key = if key.is_empty() && prefix { vec![0] } else { key.into_bytes() };
    let mut next = rev as i64;
    let mut at = 0;
    loop {
        let ep = &conn.endpoints[at % conn.endpoints.len()];
        at += 1;
        let mut client = WatchClient::new(conn.channel(ep, Duration::from_millis(1000))?);
        let create = epb::WatchCreateRequest {
            key: key.clone(),
            range_end: range_end.clone(),
            start_revision: next,
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx.send(epb::WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await;
        let mut stream = match client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            Ok(s) => s.into_inner(),
            Err(s) => {
                eprintln!("raftkv: {ep}: {}; trying the next endpoint", describe(&s));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        while let Ok(Some(r)) = stream.message().await {
            if r.created && next == 0 {
                // From now on: resume after the revision the watch started at.
                next = r.header.map_or(0, |h| h.revision) + 1;
            }
            if r.canceled {
                return Err(CliError::Failed(format!("the watch was canceled: {}", r.cancel_reason)));
            }
            for e in r.events {
                let kv = e.kv.unwrap_or_default();
                let k = String::from_utf8_lossy(&kv.key);
                if e.r#type == 1 {
                    println!("DELETE {k} (revision {})", kv.mod_revision);
                } else {
                    println!("PUT    {k} = {} (revision {})", String::from_utf8_lossy(&kv.value), kv.mod_revision);
                }
                next = kv.mod_revision + 1;
            }
        }
        drop(tx);
        eprintln!("raftkv: the watch on {ep} ended; resuming from revision {next} on the next endpoint");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_ends_follow_etcds_convention() {
        assert_eq!(super::prefix_end(b"aa"), b"ab");
        assert_eq!(super::prefix_end(b"a\xff"), b"b");
        assert_eq!(super::prefix_end(b"\xff\xff"), [0]);
        assert_eq!(super::prefix_end(b""), [0]);
    }
}
