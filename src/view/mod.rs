//! The live cluster view: a page that draws every node (role, term, vote, leader,
//! commit, the tail of its log) and the elections between them as they happen. Each
//! node pushes its status (`WatchStatus`); this server follows every node and pushes
//! the changes on to the page as server-sent events. The page's files are embedded:
//! no build step, nothing fetched from elsewhere.
//!
//! Served by `raftkv dev` (which can also kill, pause and restart its nodes from the
//! page) and by `raftkv view` for any cluster.
pub mod nodes;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

pub use nodes::{Action, Control, Nodes, Slot};

/// Why the view did not do what a page asked: answered with its HTTP status and
/// `{"error": message}`.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The request itself is wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// Another site's page posted it (403).
    #[error("cross-origin requests are refused")]
    CrossOrigin,
    /// The cluster, or the process of a node, could not do it (502).
    #[error("{0}")]
    Failed(String),
}

impl ViewError {
    fn status(&self) -> StatusCode {
        match self {
            ViewError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ViewError::CrossOrigin => StatusCode::FORBIDDEN,
            ViewError::Failed(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

/// Connections served at once (each open page holds one for its event stream).
const MAX_CONNECTIONS: usize = 64;
/// The largest request body the page sends.
const MAX_BODY: usize = 64 * 1024;
/// A comment on the event stream this often keeps proxies from closing it.
const KEEPALIVE: Duration = Duration::from_secs(15);

type Body = BoxBody<Bytes, Infallible>;

/// Follows every node and serves the page on `listener` until the process ends.
pub async fn serve(listener: TcpListener, nodes: Arc<Nodes>) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    for i in 0..nodes.slots.len() {
        tokio::spawn(nodes.clone().watch(i));
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("view listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let nodes = nodes.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let nodes = nodes.clone();
                async move {
                    let mut r = match host_refusal(&req, port) {
                        Some(refusal) => refusal,
                        None => route(&nodes, req).await,
                    };
                    let headers = r.headers_mut();
                    // Not to be framed by another site's page (clicks on Kill through it).
                    headers.insert(hyper::header::X_FRAME_OPTIONS, hyper::header::HeaderValue::from_static("DENY"));
                    headers
                        .insert(hyper::header::CONTENT_SECURITY_POLICY, hyper::header::HeaderValue::from_static(CSP));
                    Ok::<_, Infallible>(r)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, service);
            if let Err(e) = conn.await {
                tracing::debug!("view connection: {e}");
            }
        });
    }
}

/// What the page may load, and that nothing may frame it.
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'";

/// Refuses a request whose Host is not this listener's port on `localhost` or an IP
/// address: a name that resolves here only for the moment (DNS rebinding) would make
/// another site's page same-origin with this one.
fn host_refusal<B>(req: &Request<B>, port: u16) -> Option<Response<Body>> {
    let host = req.headers().get(hyper::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ok = host.rsplit_once(':').is_some_and(|(name, p)| {
        let name = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
        p.parse() == Ok(port) && (name == "localhost" || name.parse::<std::net::IpAddr>().is_ok())
    });
    (!ok).then(|| {
        let msg = format!("Host {host:?} refused: ask for this page by IP address or localhost, with its port\n");
        answer(StatusCode::FORBIDDEN, "text/plain; charset=utf-8", msg)
    })
}

fn answer(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    headers.insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    r
}

fn json_answer(status: StatusCode, body: Value) -> Response<Body> {
    answer(status, "application/json", body.to_string())
}

async fn route(nodes: &Arc<Nodes>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/") => answer(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        (&Method::GET, "/app.js") => answer(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        (&Method::GET, "/style.css") => answer(StatusCode::OK, "text/css; charset=utf-8", STYLE_CSS),
        (&Method::GET, "/events") => events(nodes),
        (&Method::POST, "/api/put" | "/api/transfer" | "/api/node") => match action(nodes, &path, req).await {
            Ok(v) => json_answer(StatusCode::OK, v),
            Err(e) => json_answer(e.status(), json!({ "error": e.to_string() })),
        },
        (&Method::GET, _) => answer(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n"),
        _ => answer(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "method not allowed\n"),
    }
}

/// The page's event stream: what the view can do, every node's state, then each change.
fn events(nodes: &Arc<Nodes>) -> Response<Body> {
    let mut changes = nodes.changes.subscribe();
    let hello = json!({
        "controls": nodes.control.is_some(),
        "endpoints": nodes.slots.iter().map(|s| s.endpoint.clone()).collect::<Vec<_>>(),
    });
    let (tx, rx) = mpsc::channel::<Arc<str>>(64);
    let nodes = nodes.clone();
    tokio::spawn(async move {
        let mut first: Vec<Arc<str>> = vec![format!("event: hello\ndata: {hello}\n\n").into()];
        first.extend(nodes.snapshot());
        for f in first {
            if tx.send(f).await.is_err() {
                return;
            }
        }
        loop {
            let next = tokio::select! {
                change = changes.recv() => match change {
                    Ok(f) => vec![f],
                    // Too slow a reader: send every node's state again.
                    Err(broadcast::error::RecvError::Lagged(_)) => nodes.snapshot(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = tokio::time::sleep(KEEPALIVE) => vec![Arc::from(": keep-alive\n\n")],
                () = tx.closed() => return,
            };
            for f in next {
                if tx.send(f).await.is_err() {
                    return;
                }
            }
        }
    });
    let frames = futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |f| {
        Ok::<_, Infallible>(Frame::data(Bytes::copy_from_slice(f.as_bytes())))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    let headers = r.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/event-stream"));
    headers.insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    r
}

/// Runs one of the page's actions. Only a same-origin JSON request is taken, so that
/// another site's page cannot post to this one through its visitor's browser.
async fn action(nodes: &Nodes, path: &str, req: Request<hyper::body::Incoming>) -> Result<Value, ViewError> {
    let bad = ViewError::BadRequest;
    let is_json = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(bad("the body must be JSON (Content-Type: application/json)".into()));
    }
    let host = req.headers().get(hyper::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if let Some(origin) = req.headers().get(hyper::header::ORIGIN) {
        if origin.to_str().ok() != Some(&format!("http://{host}")) {
            return Err(ViewError::CrossOrigin);
        }
    }
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| bad(format!("cannot read the body: {e}")))?
        .to_bytes();
    let body: Value = serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let field = |name: &str| -> Result<String, ViewError> {
        match &body[name] {
            Value::String(s) => Ok(s.clone()),
            Value::Null => Ok(String::new()),
            _ => Err(bad(format!("{name} must be a string"))),
        }
    };
    match path {
        "/api/put" => {
            let key = field("key")?;
            if key.is_empty() {
                return Err(bad("the key is empty".into()));
            }
            nodes.put(key, field("value")?).await
        }
        "/api/transfer" => nodes.transfer(field("to")?).await,
        _ => {
            let action: Action = field("action")?.parse()?;
            nodes.act(&field("endpoint")?, action)
        }
    }
}
