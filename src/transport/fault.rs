//! A tower layer on the peer channels that injects network faults: cut links
//! (partitions) and lost answers (the request arrives, its answer does not). Tests use
//! it; a production node has none.
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tower::{Layer, Service};

/// A peer channel's error: a transport failure or an injected fault.
#[derive(Debug)]
pub struct PeerError(pub String);

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PeerError {}

impl PeerError {
    /// A transport error with every cause (so "connection refused" stays visible).
    pub fn from_transport(e: &(dyn std::error::Error + 'static)) -> PeerError {
        PeerError(crate::error::with_causes(e))
    }
}

#[derive(Default)]
struct State {
    /// Directed links (from, to) that drop every request.
    cut: HashSet<(String, String)>,
    /// Directed links (from, to) whose requests arrive but whose answers are lost.
    deaf: HashSet<(String, String)>,
    /// Nodes cut off from every other: their requests fail, and requests to them are
    /// refused (`IsolationLayer`, for a node whose peers run in other processes).
    isolated: HashSet<String>,
    /// Nodes that refuse `Raft.AppendStream` as a version without it does.
    no_appends_stream: HashSet<String>,
    /// Streams of appends refused so far.
    appends_streams_refused: usize,
    /// Nodes that refuse `Raft.ProposeStream` as a version without it does.
    no_propose_stream: HashSet<String>,
    /// Streams of forwarded writes refused so far.
    propose_streams_refused: usize,
}

/// Shared fault settings for a whole test cluster.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<State>>);

impl Faults {
    /// Cuts every link between `a` and `b`, both ways.
    pub fn cut(&self, a: &str, b: &str) {
        let mut s = self.0.lock().unwrap();
        s.cut.insert((a.into(), b.into()));
        s.cut.insert((b.into(), a.into()));
    }

    /// Splits the cluster: nodes in `group` reach only each other.
    pub fn partition(&self, group: &[&str], all: &[String]) {
        for a in group {
            for b in all.iter().filter(|b| !group.contains(&b.as_str())) {
                self.cut(a, b);
            }
        }
    }

    /// Requests from `from` to `to` arrive, and their answers are lost.
    pub fn lose_answers(&self, from: &str, to: &str) {
        self.0.lock().unwrap().deaf.insert((from.into(), to.into()));
    }

    pub fn heal(&self) {
        let mut s = self.0.lock().unwrap();
        s.cut.clear();
        s.deaf.clear();
        s.isolated.clear();
    }

    /// Cuts `node` off from every other node.
    pub fn isolate(&self, node: &str) {
        self.0.lock().unwrap().isolated.insert(node.into());
    }

    /// `node` refuses streams of appends opened from now on (`Unimplemented`, as a
    /// version before the stream does); its peers must send appends one call each.
    pub fn refuse_appends_stream(&self, node: &str) {
        self.0.lock().unwrap().no_appends_stream.insert(node.into());
    }

    /// Whether `node` refuses a stream of appends opened now (counted if it does).
    pub fn refuses_appends_stream(&self, node: &str) -> bool {
        let mut s = self.0.lock().unwrap();
        let refused = s.no_appends_stream.contains(node);
        s.appends_streams_refused += usize::from(refused);
        refused
    }

    /// `node` refuses streams of forwarded writes opened from now on (`Unimplemented`,
    /// as a version before the stream does); its peers must call `ProposeBatch`.
    pub fn refuse_propose_stream(&self, node: &str) {
        self.0.lock().unwrap().no_propose_stream.insert(node.into());
    }

    /// Whether `node` refuses a stream of forwarded writes opened now (counted if it does).
    pub fn refuses_propose_stream(&self, node: &str) -> bool {
        let mut s = self.0.lock().unwrap();
        let refused = s.no_propose_stream.contains(node);
        s.propose_streams_refused += usize::from(refused);
        refused
    }

    /// How many streams of forwarded writes were refused so far.
    pub fn propose_streams_refused(&self) -> usize {
        self.0.lock().unwrap().propose_streams_refused
    }

    /// How many streams of appends were refused so far.
    pub fn appends_streams_refused(&self) -> usize {
        self.0.lock().unwrap().appends_streams_refused
    }

    pub fn is_isolated(&self, node: &str) -> bool {
        self.0.lock().unwrap().isolated.contains(node)
    }

    /// Whether a request from `from` to `to` may go now.
    pub fn check(&self, from: &str, to: &str) -> Result<(), PeerError> {
        let s = self.0.lock().unwrap();
        if s.isolated.contains(from) || s.isolated.contains(to) {
            return Err(PeerError(format!("fault injection: {from} -> {to}: a node is isolated")));
        }
        if s.cut.contains(&(from.to_string(), to.to_string())) {
            return Err(PeerError(format!("fault injection: link {from} -> {to} is cut")));
        }
        Ok(())
    }

    /// Whether the answers on the link `from` → `to` are lost now.
    pub fn answer_lost(&self, from: &str, to: &str) -> bool {
        self.0.lock().unwrap().deaf.contains(&(from.to_string(), to.to_string()))
    }

    /// The layer for the channel from `from` to `to`.
    pub fn layer(&self, from: &str, to: &str) -> FaultLayer {
        FaultLayer { faults: self.clone(), from: from.into(), to: to.into() }
    }
}

#[derive(Clone)]
pub struct FaultLayer {
    faults: Faults,
    from: String,
    to: String,
}

impl<S> Layer<S> for FaultLayer {
    type Service = FaultService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FaultService { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct FaultService<S> {
    inner: S,
    layer: FaultLayer,
}

impl<S, R> Service<R> for FaultService<S>
where
    S: Service<R> + Clone + Send + 'static,
    S::Error: std::error::Error + 'static,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = PeerError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, PeerError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PeerError>> {
        self.inner.poll_ready(cx).map_err(|e| PeerError::from_transport(&e))
    }

    fn call(&mut self, req: R) -> Self::Future {
        let verdict = self.layer.faults.check(&self.layer.from, &self.layer.to);
        let layer = self.layer.clone();
        // Take the service that was driven to readiness; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            verdict?;
            let answer = inner.call(req).await.map_err(|e| PeerError::from_transport(&e))?;
            if layer.faults.answer_lost(&layer.from, &layer.to) {
                return Err(PeerError(format!("fault injection: the answer {} -> {} was lost", layer.to, layer.from)));
            }
            Ok(answer)
        })
    }
}

/// A layer on a node's peer server that refuses every request while the node is
/// isolated (`Faults::isolate`): with its own requests failing too, the node is cut off
/// as by a partition, though its peers run in other processes. A no-op without faults.
#[derive(Clone)]
pub struct IsolationLayer(pub Option<(Faults, String)>);

impl<S> Layer<S> for IsolationLayer {
    type Service = Isolation<S>;
    fn layer(&self, inner: S) -> Isolation<S> {
        Isolation { inner, faults: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Isolation<S> {
    inner: S,
    faults: Option<(Faults, String)>,
}

impl<S, R> Service<R> for Isolation<S>
where
    S: Service<R, Response = http::Response<tonic::body::BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::BoxBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        if let Some((faults, me)) = &self.faults {
            if faults.is_isolated(me) {
                let refused = tonic::Status::unavailable(format!("fault injection: {me} is isolated")).into_http();
                return Box::pin(std::future::ready(Ok(refused)));
            }
        }
        Box::pin(self.inner.call(req))
    }
}
