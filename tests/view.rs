//! The live cluster view's two halves: each node's `WatchStatus` stream (role, term,
//! vote, leader and log tail, as they change), and the view server that follows every
//! node and pushes their states to the page (`raftkv view`, `raftkv dev`). The page
//! itself is driven in a real browser by scripts/browser-test.py (CI).
mod common;

use std::time::Duration;

use common::*;
use raftkv::proto as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads `stream` until an answer satisfies `ok`; fails after WAIT with the last one.
async fn wait_answer(
    stream: &mut tonic::Streaming<pb::WatchStatusResponse>,
    what: &str,
    ok: impl Fn(&pb::WatchStatusResponse) -> bool,
) -> pb::WatchStatusResponse {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Ok(Ok(Some(m))) if ok(&m) => return m,
            Ok(Ok(Some(m))) => last = Some(m),
            Ok(other) => panic!("the status stream ended waiting for {what}: {other:?}"),
            Err(_) => panic!("no answer showed {what} within {WAIT:?}; the last: {last:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_status_shows_writes_in_the_log_and_a_new_leader_with_its_votes() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    c.wait_started().await;
    let f = (leader + 1) % 3;
    let mut client = c.client(f).await;
    let too_long = client.watch_status(pb::WatchStatusRequest { log_tail: 65 }).await.unwrap_err();
    assert_eq!(too_long.code(), tonic::Code::InvalidArgument, "{too_long:?}");

    let mut stream = client.watch_status(pb::WatchStatusRequest { log_tail: 8 }).await.unwrap().into_inner();
    let first =
        wait_answer(&mut stream, "the leader", |m| m.status.as_ref().is_some_and(|s| s.leader == c.names[leader]))
            .await;
    let term = first.status.as_ref().unwrap().term;
    assert!(first.log_tail.len() <= 8, "{first:?}");

    // A write shows up in the follower's log tail, as a committed client command.
    let w = client.store(pb::StoreRequest { key: "k".into(), value: "v".into() }).await.unwrap().into_inner();
    let seen = wait_answer(&mut stream, "the write in the log, committed", |m| {
        m.status.as_ref().is_some_and(|s| s.commit_index >= w.index)
            && m.log_tail.iter().any(|e| e.index == w.index && e.term == w.term && e.kind == "command")
    })
    .await;
    let indexes: Vec<u64> = seen.log_tail.iter().map(|e| e.index).collect();
    assert!(indexes.windows(2).all(|p| p[1] == p[0] + 1), "the tail is not in order: {indexes:?}");

    // The leader dies: the follower's stream shows the new leader, in a higher term,
    // and its vote for it (two of three must both have voted for the winner).
    let old = c.names[leader].clone();
    c.stop(leader).await;
    let after = wait_answer(&mut stream, "a new leader", |m| {
        m.status.as_ref().is_some_and(|s| s.term > term && !s.leader.is_empty() && s.leader != old)
    })
    .await;
    let st = after.status.unwrap();
    assert_eq!(after.voted_for, st.leader, "in term {} the follower voted for {:?}", st.term, after.voted_for);
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

/// One HTTP/1.1 request to the view server: (status code, head and body as text).
async fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    http_to(addr, addr, method, path, headers, body).await
}

/// `http`, naming `host` in the Host header.
async fn http_to(
    addr: &str,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("the view answers");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut text)).await.expect("an answer in time").unwrap();
    (text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_pushes_every_node_and_takes_only_same_origin_json_actions() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    c.wait_started().await;
    let slots = c
        .client_addrs
        .iter()
        .map(|a| raftkv::view::Slot {
            endpoint: a.clone(),
            channel: tonic::transport::Endpoint::from_shared(format!("http://{a}")).unwrap().connect_lazy(),
        })
        .collect();
    let nodes = raftkv::view::Nodes::new(slots, None, Duration::from_secs(5));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(raftkv::view::serve(listener, nodes));

    let (code, page) = http(&addr, "GET", "/", &[], "").await;
    assert_eq!(code, 200);
    assert!(page.contains("<title>raftkv — live cluster</title>") && page.contains("/app.js"), "{page}");
    assert!(page.contains("X-Frame-Options: DENY") || page.contains("x-frame-options: DENY"), "{page}");
    assert_eq!(http(&addr, "GET", "/app.js", &[], "").await.0, 200);
    // A name in Host (DNS rebinding: another site's name pointed here) is refused,
    // for reading as for acting; localhost is not.
    let port = addr.rsplit_once(':').unwrap().1;
    let evil = format!("evil.example:{port}");
    assert_eq!(http_to(&addr, &evil, "GET", "/events", &[], "").await.0, 403);
    assert_eq!(http_to(&addr, &format!("localhost:{port}"), "GET", "/", &[], "").await.0, 200);
    assert_eq!(http(&addr, "GET", "/nope", &[], "").await.0, 404);

    // The event stream: what the view can do, then every node's state as it answers.
    let mut events = tokio::net::TcpStream::connect(&addr).await.unwrap();
    events.write_all(format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut text = String::new();
    // The latest state of each endpoint, from the stream's `data:` lines.
    let states = |t: &str| -> std::collections::BTreeMap<String, serde_json::Value> {
        t.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .filter_map(|v| Some((v["endpoint"].as_str()?.to_string(), v)))
            .collect()
    };
    let all_up = |t: &str| {
        let s = states(t);
        c.client_addrs.iter().all(|a| s.get(a).is_some_and(|v| v["up"] == true))
            && s.values().filter(|v| v["role"] == "leader").map(|v| v["name"].clone()).collect::<Vec<_>>()
                == vec![serde_json::json!(c.names[leader])]
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !all_up(&text) {
        let mut buf = [0u8; 16384];
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let n =
            tokio::time::timeout(left, events.read(&mut buf)).await.expect("every node answering, in time").unwrap();
        assert!(n > 0, "the event stream ended: {text}");
        text += &String::from_utf8_lossy(&buf[..n]);
    }
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(text.contains(r#"event: hello"#) && text.contains(r#""controls":false"#), "{text}");

    // Actions: only JSON, only from the page's own origin, and a view that does not run
    // the nodes cannot kill them. None of the refused ones writes anything.
    let json = ("Content-Type", "application/json");
    let put = r#"{"key":"from-the-view","value":"refused"}"#;
    let (code, _) = http(&addr, "POST", "/api/put", &[("Content-Type", "text/plain")], put).await;
    assert_eq!(code, 400);
    let (code, text) = http(&addr, "POST", "/api/put", &[json, ("Origin", "http://evil.example")], put).await;
    assert_eq!(code, 403, "{text}");
    let origin = format!("http://{evil}");
    let (code, text) = http_to(&addr, &evil, "POST", "/api/put", &[json, ("Origin", &origin)], put).await;
    assert_eq!(code, 403, "{text}");
    let (code, text) = http(&addr, "POST", "/api/put", &[json], r#"{"key":"","value":"x"}"#).await;
    assert_eq!(code, 400, "{text}");
    let kill = format!(r#"{{"endpoint":"{}","action":"kill"}}"#, c.client_addrs[leader]);
    let (code, text) = http(&addr, "POST", "/api/node", &[json], &kill).await;
    assert!(code == 502 && text.contains("does not control"), "{text}");
    let mut client = c.client(leader).await;
    let get = || pb::GetRequest { key: "from-the-view".into(), ..Default::default() };
    assert!(!client.get(get()).await.unwrap().into_inner().found, "a refused put was written");

    let origin = format!("http://{addr}");
    let put = r#"{"key":"from-the-view","value":"hello"}"#;
    let (code, text) = http(&addr, "POST", "/api/put", &[json, ("Origin", &origin)], put).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("committed at index"), "{text}");
    let got = client.get(get()).await.unwrap().into_inner();
    assert_eq!((got.found, got.value.as_str()), (true, "hello"));
    server.abort();
    c.shutdown().await;
}
