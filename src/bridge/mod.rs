//! The UDP JSON controller bridge (../shared/controller-protocol.md).
//!
//! One JSON object per datagram. The bridge holds no Raft state: it reaches the node
//! through the same handle as the gRPC services. It never panics and never stops
//! serving because of what it receives: bad input gets an ERROR reply and changes
//! nothing.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::net::UdpSocket;

use crate::error::Error;
use crate::mvcc::{Command, EventKind};
use crate::server::NodeHandle;

/// The documented default port.
pub const DEFAULT_PORT: u16 = 5555;
/// A reply must fit one datagram.
pub const MAX_REPLY_BYTES: usize = 65_507;
/// Requests larger than this are answered with ERROR.
pub const MAX_REQUEST_BYTES: usize = 32 * 1024;

#[derive(Debug, PartialEq)]
pub enum Request {
    ConvertFollower,
    Timeout,
    Shutdown,
    LeaderInfo,
    Store { key: String, value: Value },
    Retrieve,
}

/// Why a datagram was refused: the request name if one was read, and a one-line reason.
#[derive(Debug, PartialEq)]
pub struct BadInput {
    pub request: Option<String>,
    pub reason: String,
}

fn bad(request: Option<&str>, reason: impl Into<String>) -> BadInput {
    BadInput { request: request.map(str::to_string), reason: reason.into() }
}

/// Parses one datagram.
pub fn parse(datagram: &[u8]) -> Result<Request, BadInput> {
    if datagram.len() > MAX_REQUEST_BYTES {
        return Err(bad(None, format!("datagram of {} bytes exceeds {MAX_REQUEST_BYTES}", datagram.len())));
    }
    let text = std::str::from_utf8(datagram).map_err(|_| bad(None, "datagram is not UTF-8"))?;
    let value: Value = serde_json::from_str(text).map_err(|e| bad(None, format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(bad(None, "message is not a JSON object"));
    };
    let request = match obj.get("request") {
        Some(Value::String(r)) => r.as_str(),
        Some(_) => return Err(bad(None, "field request must be a string")),
        None => return Err(bad(None, "missing field request")),
    };
    let r = Some(request);
    match obj.get("sender_name") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => return Err(bad(r, "field sender_name must be a string or null")),
    }
    match obj.get("term") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => {}
        Some(_) => return Err(bad(r, "field term must be an integer or null")),
    }
    let key = match obj.get("key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(bad(r, "field key must be a string or null")),
    };
    Ok(match request {
        "CONVERT_FOLLOWER" => Request::ConvertFollower,
        "TIMEOUT" => Request::Timeout,
        "SHUTDOWN" => Request::Shutdown,
        "LEADER_INFO" => Request::LeaderInfo,
        "RETRIEVE" => Request::Retrieve,
        "STORE" => match key {
            Some(key) if key.len() > crate::config::MAX_KEY_BYTES => {
                let limit = crate::config::MAX_KEY_BYTES;
                return Err(bad(r, format!("key is {} bytes; the limit is {limit}", key.len())));
            }
            Some(key) if !key.is_empty() => {
                Request::Store { key, value: obj.get("value").cloned().unwrap_or(Value::Null) }
            }
            _ => return Err(bad(r, "STORE needs a non-empty string key")),
        },
        other => return Err(bad(Some(other), format!("unknown request {other:?}"))),
    })
}

fn message(sender: &str, request: &str, term: u64, key: Value, value: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("sender_name".into(), Value::String(sender.into()));
    m.insert("request".into(), Value::String(request.into()));
    m.insert("term".into(), json!(term));
    m.insert("key".into(), key);
    m.insert("value".into(), value);
    m
}

/// The RETRIEVE reply: the newest committed entries that fit one datagram, in log
/// order, with `"truncated": true` when some had to be left out.
/// `partial`: older committed entries exist that `entries` leave out (compacted, or
/// not read), so the reply says it is truncated even if they fit.
pub fn retrieve_reply(sender: &str, term: u64, entries: &[Value], partial: bool) -> Vec<u8> {
    let mut reply = message(sender, "RETRIEVE", term, json!("COMMITED_LOGS"), json!([]));
    if partial {
        reply.insert("truncated".into(), json!(true));
    }
    let whole = {
        reply.insert("value".into(), Value::Array(entries.to_vec()));
        serde_json::to_vec(&reply).expect("JSON values serialize")
    };
    if whole.len() <= MAX_REPLY_BYTES {
        return whole;
    }
    reply.insert("value".into(), json!([]));
    reply.insert("truncated".into(), json!(true));
    let mut budget = MAX_REPLY_BYTES - serde_json::to_vec(&reply).expect("serializes").len();
    let mut keep = 0;
    for e in entries.iter().rev() {
        let size = serde_json::to_vec(e).expect("serializes").len() + 1; // and a comma
        if size > budget {
            break;
        }
        budget -= size;
        keep += 1;
    }
    reply.insert("value".into(), Value::Array(entries[entries.len() - keep..].to_vec()));
    serde_json::to_vec(&reply).expect("serializes")
}

/// Logs refused datagrams at most a few times a second.
struct RateLimitedLog {
    window: Instant,
    count: u32,
}

impl RateLimitedLog {
    fn warn(&mut self, from: SocketAddr, reason: &str) {
        if self.window.elapsed() > Duration::from_secs(1) {
            if self.count > 5 {
                tracing::warn!(suppressed = self.count - 5, "bridge: more bad datagrams were refused");
            }
            self.window = Instant::now();
            self.count = 0;
        }
        self.count += 1;
        if self.count <= 5 {
            tracing::warn!(%from, reason, "bridge: refused a datagram");
        }
    }
}

/// Datagrams handled per second at most (a burst of as many is allowed); past it a
/// datagram is answered ERROR and changes nothing.
pub const MAX_DATAGRAMS_PER_SECOND: f64 = 5000.0;

/// A token bucket: `rate` tokens a second, at most `rate` saved.
struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: f64, now: Instant) -> Self {
        RateLimit { rate, tokens: rate, last: now }
    }

    fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Serves the bridge on `socket` until the node stops.
pub async fn serve(socket: UdpSocket, node: NodeHandle) {
    let mut buf = vec![0u8; 65_536];
    let mut log = RateLimitedLog { window: Instant::now(), count: 0 };
    let mut limit = RateLimit::new(MAX_DATAGRAMS_PER_SECOND, Instant::now());
    loop {
        let (len, from) = tokio::select! {
            _ = node.stopped() => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("bridge: receive failed: {e}");
                    continue;
                }
            },
        };
        let parsed = if limit.admit(Instant::now()) {
            parse(&buf[..len])
        } else {
            Err(bad(None, format!("more than {MAX_DATAGRAMS_PER_SECOND} datagrams a second; try again later")))
        };
        let reply = match parsed {
            Ok(req) => handle(&node, req).await,
            Err(b) => {
                log.warn(from, &b.reason);
                let key = b.request.map_or(Value::Null, Value::String);
                let m = message(node.name(), "ERROR", node.status().term, key, Value::String(b.reason));
                Some(serde_json::to_vec(&m).expect("serializes"))
            }
        };
        if let Some(reply) = reply {
            if let Err(e) = socket.send_to(&reply, from).await {
                tracing::warn!(%from, "bridge: reply failed: {e}");
            }
        }
    }
    tracing::debug!("bridge stopped");
}

fn leader_info(node: &NodeHandle) -> Vec<u8> {
    let leader = node.leader_name().map_or(Value::Null, Value::String);
    let m = message(node.name(), "LEADER_INFO", node.status().term, json!("LEADER"), leader);
    serde_json::to_vec(&m).expect("serializes")
}

async fn handle(node: &NodeHandle, req: Request) -> Option<Vec<u8>> {
    match req {
        Request::ConvertFollower => {
            let _ = node.become_follower().await;
            None
        }
        Request::Timeout => {
            let _ = node.campaign().await;
            None
        }
        Request::Shutdown => {
            tracing::info!("bridge: SHUTDOWN received, stopping the node");
            node.shutdown();
            None
        }
        Request::LeaderInfo => Some(leader_info(node)),
        Request::Store { key, value } => {
            // The core decides whether this node leads: NotLeader comes back as LEADER_INFO.
            let cmd = match value {
                Value::String(value) => Command::Put { key, value },
                other => Command::PutJson { key, json: other.to_string() },
            };
            match node.propose_lazy(&cmd).await {
                Ok(_) => None,
                Err(Error::Shutdown) => None,
                Err(_) => Some(leader_info(node)),
            }
        }
        Request::Retrieve => {
            // The newest history, more than one datagram holds; retrieve_reply cuts it.
            let tail = node.store().read().and_then(|v| v.history_tail(4 * MAX_REPLY_BYTES));
            let (events, partial) = match tail {
                Ok(t) => t,
                Err(e) => {
                    let m = message(node.name(), "ERROR", node.status().term, json!("RETRIEVE"), json!(e.to_string()));
                    return Some(serde_json::to_vec(&m).expect("serializes"));
                }
            };
            let entries: Vec<Value> = events
                .into_iter()
                .map(|e| {
                    let value = match e.kind {
                        EventKind::Put => Value::String(e.value),
                        EventKind::PutJson => serde_json::from_str(&e.value).unwrap_or(Value::String(e.value)),
                        EventKind::Delete => Value::Null,
                    };
                    json!({"term": e.term, "key": e.key, "value": value})
                })
                .collect();
            Some(retrieve_reply(node.name(), node.status().term, &entries, partial))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(d: &[u8]) -> BadInput {
        parse(d).expect_err("refused")
    }

    #[test]
    fn the_rate_limit_admits_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimit::new(100.0, t0);
        assert_eq!((0..150).filter(|_| l.admit(t0)).count(), 100, "a burst of one second's worth");
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..150).filter(|_| l.admit(t1)).count(), 50, "then the rate");
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..150).filter(|_| l.admit(t2)).count(), 100, "savings are capped");
    }

    #[test]
    fn parses_every_request() {
        let p = |s: &str| parse(s.as_bytes()).unwrap();
        assert_eq!(
            p(r#"{"sender_name":"Controller","request":"TIMEOUT","term":null,"key":null,"value":null}"#),
            Request::Timeout
        );
        assert_eq!(p(r#"{"request":"CONVERT_FOLLOWER"}"#), Request::ConvertFollower);
        assert_eq!(p(r#"{"request":"SHUTDOWN","extra":[1]}"#), Request::Shutdown);
        assert_eq!(p(r#"{"request":"LEADER_INFO","term":3}"#), Request::LeaderInfo);
        assert_eq!(p(r#"{"request":"RETRIEVE"}"#), Request::Retrieve);
        assert_eq!(
            p(r#"{"request":"STORE","key":"k","value":{"n":1}}"#),
            Request::Store { key: "k".into(), value: json!({"n": 1}) }
        );
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        assert!(err(&[0xff, 0xfe]).reason.contains("UTF-8"));
        assert!(err(b"{nope").reason.contains("not JSON"));
        assert!(err(b"[1,2]").reason.contains("not a JSON object"));
        assert!(err(b"{}").reason.contains("missing field request"));
        assert_eq!(err(br#"{"request":"DANCE"}"#).request.as_deref(), Some("DANCE"));
        assert!(err(br#"{"request":"LEADER_INFO","term":"3"}"#).reason.contains("term"));
        assert!(err(br#"{"request":"STORE","key":{"a":1},"value":1}"#).reason.contains("key"));
        assert!(err(br#"{"request":"STORE","value":1}"#).reason.contains("STORE"));
        assert!(err(br#"{"request":7}"#).reason.contains("string"));
        let long_key = format!(r#"{{"request":"STORE","key":"{}","value":1}}"#, "k".repeat(4097));
        assert!(err(long_key.as_bytes()).reason.contains("the limit is 4096"));
        let big = format!(r#"{{"request":"STORE","key":"k","value":"{}"}}"#, "x".repeat(MAX_REQUEST_BYTES));
        assert!(err(big.as_bytes()).reason.contains("exceeds"));
    }

    #[test]
    fn retrieve_reply_truncates_to_newest_entries_that_fit() {
        let entries: Vec<Value> =
            (0..2000).map(|i| json!({"term": 1, "key": format!("k{i}"), "value": "v".repeat(50)})).collect();
        let reply = retrieve_reply("Node1", 4, &entries, false);
        assert!(reply.len() <= MAX_REPLY_BYTES);
        let v: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(v["truncated"], json!(true));
        assert_eq!(v["key"], json!("COMMITED_LOGS"));
        let got = v["value"].as_array().unwrap();
        assert!(got.len() > 100 && got.len() < 2000);
        assert_eq!(got.last().unwrap()["key"], json!("k1999"), "the newest entry is kept");
        let small = retrieve_reply("Node1", 4, &entries[..3], false);
        let v: Value = serde_json::from_slice(&small).unwrap();
        assert!(v.get("truncated").is_none());
        assert_eq!(v.as_object().unwrap().len(), 5, "exactly the five fields");
        // Compacted history: what is left fits, but the reply says it is not all.
        let v: Value = serde_json::from_slice(&retrieve_reply("Node1", 4, &entries[..3], true)).unwrap();
        assert_eq!(v["truncated"], json!(true));
        assert_eq!(v["value"].as_array().unwrap().len(), 3);
    }
}
