//! Client request metrics, as go-grpc-prometheus names them (etcd serves these):
//! `grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}` and
//! the histogram `grpc_server_handling_seconds{grpc_type, grpc_service, grpc_method}`.
//! A call is counted when it ends: its status from the trailers (or the headers of a
//! trailers-only answer), "Canceled" if the client went away first. A stream's
//! duration is the stream's whole life.
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tower::{Layer, Service};

/// The services whose methods are named in labels; any other path is counted as
/// service and method "unknown", so that a client cannot grow the series without bound.
const SERVICES: [&str; 9] = [
    "raftkv.v1.KeyValue",
    "etcdserverpb.KV",
    "etcdserverpb.Lease",
    "etcdserverpb.Cluster",
    "etcdserverpb.Watch",
    "etcdserverpb.Maintenance",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Call {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Handled {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

type Seconds = Family<Call, Histogram, fn() -> Histogram>;

/// The request series of one node.
#[derive(Debug)]
pub struct GrpcTelemetry {
    pub handled: Family<Handled, Counter>,
    pub seconds: Seconds,
}

impl Default for GrpcTelemetry {
    fn default() -> Self {
        // Prometheus' default buckets, as go-grpc-prometheus uses.
        fn buckets() -> Histogram {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        }
        GrpcTelemetry { handled: Family::default(), seconds: Family::new_with_constructor(buckets) }
    }
}

impl GrpcTelemetry {
    fn record(&self, call: Call, code: i32, started: Instant) {
        let grpc_code = code_name(code);
        // A method this node does not have gets no series of its own: the names of
        // those it has are bounded, a client's inventions are not.
        let call = if grpc_code == "Unimplemented" { Call { grpc_method: "unknown".into(), ..call } } else { call };
        self.seconds.get_or_create(&call).observe(started.elapsed().as_secs_f64());
        let Call { grpc_type, grpc_service, grpc_method } = call;
        self.handled.get_or_create(&Handled { grpc_type, grpc_service, grpc_method, grpc_code }).inc();
    }
}

/// go-grpc-prometheus' names of the status codes (Go's `codes.Code.String()`).
fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    usize::try_from(code).ok().and_then(|c| NAMES.get(c)).copied().unwrap_or("Unknown")
}

/// The labels of a call to `path` ("/package.Service/Method").
fn call_of(path: &str) -> Call {
    let known = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .filter(|(s, m)| SERVICES.contains(s) && !m.is_empty() && m.len() <= 64 && !m.contains('/'));
    let Some((service, method)) = known else {
        return Call { grpc_type: "unary", grpc_service: "unknown".into(), grpc_method: "unknown".into() };
    };
    let grpc_type = match (service, method) {
        ("etcdserverpb.Watch", "Watch")
        | ("etcdserverpb.Lease", "LeaseKeepAlive")
        | ("grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection", _) => "bidi_stream",
        ("raftkv.v1.KeyValue", "WatchStatus") | ("grpc.health.v1.Health", "Watch") => "server_stream",
        _ => "unary",
    };
    Call { grpc_type, grpc_service: service.into(), grpc_method: method.into() }
}

/// A tower layer that counts every call the client server handles.
#[derive(Clone)]
pub struct GrpcMetricsLayer(pub Arc<super::Metrics>);

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<super::Metrics>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Metered<ResBody>>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let deadline = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::api::parse_grpc_timeout)
            .and_then(|d| started.checked_add(d));
        // Counted even if the call is dropped before it answers (the client left, or
        // its deadline passed first).
        let mut pending = Pending {
            metrics: self.metrics.clone(),
            call: Some(call_of(req.uri().path())),
            started,
            deadline,
            header_code: None,
        };
        let answer = self.inner.call(req);
        Box::pin(async move {
            let res = answer.await?;
            pending.header_code = grpc_status(res.headers());
            Ok(res.map(|inner| Metered { inner, pending: Some(pending) }))
        })
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// A call not yet counted; counted when dropped, if not before.
struct Pending {
    metrics: Arc<super::Metrics>,
    /// None once counted.
    call: Option<Call>,
    started: Instant,
    /// The client's deadline (`grpc-timeout`), if it sent one.
    deadline: Option<Instant>,
    /// The status in the answer's headers (a trailers-only answer).
    header_code: Option<i32>,
}

impl Pending {
    fn finish(&mut self, code: i32) {
        if let Some(call) = self.call.take() {
            self.metrics.telemetry.grpc.record(call, code, self.started);
        }
    }
}

impl Drop for Pending {
    /// The call ended without its status being seen: the status in its headers, else
    /// the client's deadline passed (DeadlineExceeded) or it went away (Canceled).
    fn drop(&mut self) {
        let code = self.header_code.unwrap_or(if self.deadline.is_some_and(|d| Instant::now() >= d) { 4 } else { 1 });
        self.finish(code);
    }
}

/// A response body that counts its call when it ends.
pub struct Metered<B> {
    inner: B,
    pending: Option<Pending>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Metered<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    // Trailers without a status: Unknown.
                    let code = grpc_status(trailers).unwrap_or(2);
                    if let Some(p) = self.pending.as_mut() {
                        p.finish(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(p) = self.pending.as_mut() {
                    p.finish(2);
                }
            }
            Poll::Ready(None) => {
                if let Some(p) = self.pending.as_mut() {
                    let code = p.header_code.unwrap_or(0);
                    p.finish(code);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_known_methods_and_nothing_else() {
        let c = call_of("/etcdserverpb.KV/Range");
        assert_eq!(
            (c.grpc_type, c.grpc_service.as_str(), c.grpc_method.as_str()),
            ("unary", "etcdserverpb.KV", "Range")
        );
        assert_eq!(call_of("/etcdserverpb.Watch/Watch").grpc_type, "bidi_stream");
        assert_eq!(call_of("/raftkv.v1.KeyValue/WatchStatus").grpc_type, "server_stream");
        for odd in ["/evil.Service/Method", "/etcdserverpb.KV/", "nothing", "/etcdserverpb.KV/a/b"] {
            let c = call_of(odd);
            assert_eq!((c.grpc_service.as_str(), c.grpc_method.as_str()), ("unknown", "unknown"), "{odd}");
        }
        assert_eq!(
            (code_name(0), code_name(1), code_name(14), code_name(99)),
            ("OK", "Canceled", "Unavailable", "Unknown")
        );
    }
}
