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
const SERVICES: [&str; 8] = [
    "raftkv.v1.KeyValue",
    "etcdserverpb.KV",
    "etcdserverpb.Lease",
    "etcdserverpb.Cluster",
    "etcdserverpb.Watch",
    "etcdserverpb.Maintenance",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
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
    fn record(&self, call: Call, code: Option<i32>, started: Instant) {
        self.seconds.get_or_create(&call).observe(started.elapsed().as_secs_f64());
        let grpc_code = code_name(code.unwrap_or(1));
        let (call, grpc_code) = if grpc_code == "Unimplemented" {
            // A method this node does not have: not a series of its own.
            (Call { grpc_method: "unknown".into(), ..call }, grpc_code)
        } else {
            (call, grpc_code)
        };
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
        | ("grpc.reflection.v1.ServerReflection", _) => "bidi_stream",
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
        let call = call_of(req.uri().path());
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let res = answer.await?;
            let header_code = grpc_status(res.headers());
            Ok(res.map(|inner| Metered { inner, pending: Some(Pending { metrics, call, started, header_code }) }))
        })
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// A call not yet counted.
struct Pending {
    metrics: Arc<super::Metrics>,
    call: Call,
    started: Instant,
    header_code: Option<i32>,
}

impl Pending {
    fn finish(self, code: Option<i32>) {
        self.metrics.telemetry.grpc.record(self.call, code, self.started);
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
                    let code = grpc_status(trailers);
                    if let Some(p) = self.pending.take() {
                        p.finish(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(p) = self.pending.take() {
                    p.finish(Some(2));
                }
            }
            Poll::Ready(None) => {
                if let Some(p) = self.pending.take() {
                    let code = p.header_code;
                    p.finish(code.or(Some(0)));
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

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        // The client went away (or the connection broke) before the call ended.
        if let Some(p) = self.pending.take() {
            let code = p.header_code;
            p.finish(code.or(Some(1)));
        }
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
