//! A served connection whose answers go out in one write each.
//!
//! HTTP/2 (h2) writes a DATA frame's payload of 256 bytes or more from where it lies,
//! not copied into its buffer, when the connection takes vectored writes; it then
//! writes out what it holds before it takes the next frame. A gRPC answer is three
//! frames (headers, the message, the trailers), so an answer of more than about 250
//! bytes (a Range of one 256-byte value) went out as two writes, the trailers alone in
//! the second: two system calls, and two TCP segments for the client to take in. Over a
//! connection that says it takes no vectored writes, h2 copies payloads under 1 KiB
//! into its buffer, and the three frames leave in one write. A larger payload is still
//! left where it lies, h2's buffer (its frames and the payload's first KiB) written
//! first: that buffer is held here and goes out with the payload, in one vectored write,
//! as before.
//!
//! A flush waits for one turn of the runtime first, so that answers finished together
//! leave together.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Writes held back for the next one, at most (h2's buffer ahead of a large payload
/// holds about 1 KiB).
const HOLD_BYTES: usize = 4096;

/// `IO`, saying that it takes no vectored writes. Small writes are held and go out
/// together, with the next larger one or at the flush (h2 flushes after every round of
/// writes).
pub struct Coalesced<IO> {
    io: IO,
    /// Taken and not yet written.
    held: Vec<u8>,
    /// The connection's task went to the back of the queue once before this flush.
    yielded: bool,
}

impl<IO> Coalesced<IO> {
    pub fn new(io: IO) -> Self {
        Coalesced { io, held: Vec::new(), yielded: false }
    }
}

impl<IO: AsyncWrite + Unpin> Coalesced<IO> {
    /// Writes out what is held.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: Connected> Connected for Coalesced<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Coalesced<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesced<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        if me.held.len() + buf.len() <= HOLD_BYTES {
            me.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        if me.held.is_empty() {
            return Pin::new(&mut me.io).poll_write(cx, buf);
        }
        // What is held goes out with `buf`, in one system call.
        loop {
            let held = me.held.len();
            let n = ready!(Pin::new(&mut me.io).poll_write_vectored(cx, &[IoSlice::new(&me.held), IoSlice::new(buf)]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            if n > held {
                me.held.clear();
                return Poll::Ready(Ok(n - held));
            }
            me.held.drain(..n);
            if me.held.is_empty() {
                // Nothing of `buf` went: it goes on its own.
                return Pin::new(&mut me.io).poll_write(cx, buf);
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        // Answers finished together (the reads one ReadIndex round released, the
        // writes one apply batch answered) go out in one write: the connection's task
        // goes once to the back of the queue, behind the tasks of those answers, before
        // it writes. Otherwise the first answer's task wakes it next, and each answer
        // leaves in a write of its own.
        if !me.held.is_empty() && !me.yielded {
            me.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(me.poll_release(cx))?;
        // Reset once written: a socket that is full wakes the task again, and that
        // wake-up writes at once.
        me.yielded = false;
        Pin::new(&mut me.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_release(cx))?;
        Pin::new(&mut me.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::{ready, Ready};
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    use tonic::body::BoxBody;
    use tonic::transport::{Endpoint, Server};
    use tower::{Service, ServiceExt};

    use super::*;

    /// A connection that keeps every write it is asked for (a vectored one as one
    /// write, as the system call does) and, like a TCP stream, takes vectored writes.
    struct Recording {
        io: tokio::io::DuplexStream,
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Connected for Recording {
        type ConnectInfo = ();

        fn connect_info(&self) {}
    }

    impl AsyncRead for Recording {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Recording {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &all))?;
            self.writes.lock().unwrap().push(all[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// Answers every call with `message` and gRPC's trailers, as a unary call does.
    #[derive(Clone)]
    struct Answer(Bytes);

    impl tonic::server::NamedService for Answer {
        const NAME: &'static str = "test.Answer";
    }

    impl Service<http::Request<BoxBody>> for Answer {
        type Response = http::Response<BoxBody>;
        type Error = Infallible;
        type Future = Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<BoxBody>) -> Self::Future {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let body = Full::new(self.0.clone()).with_trailers(async move { Some(Ok(trailers)) });
            let mut answer = http::Response::new(tonic::body::boxed(body));
            answer.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
            ready(Ok(answer))
        }
    }

    /// Answers every call with `message` once `open` turns true; counts the calls.
    #[derive(Clone)]
    struct Gated {
        message: Bytes,
        open: tokio::sync::watch::Receiver<bool>,
        calls: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl tonic::server::NamedService for Gated {
        const NAME: &'static str = "test.Answer";
    }

    impl Service<http::Request<BoxBody>> for Gated {
        type Response = http::Response<BoxBody>;
        type Error = Infallible;
        type Future = futures::future::BoxFuture<'static, Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, r: http::Request<BoxBody>) -> Self::Future {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (mut open, mut answer) = (self.open.clone(), Answer(self.message.clone()));
            Box::pin(async move {
                let _ = open.wait_for(|o| *o).await;
                answer.call(r).await
            })
        }
    }

    /// The HTTP/2 frames in `bytes`: (type, flags, stream, payload length).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, usize)> {
        let mut out = Vec::new();
        while bytes.len() >= 9 {
            let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
            out.push((bytes[3], bytes[4], stream, len));
            bytes = &bytes[(9 + len).min(bytes.len())..];
        }
        out
    }

    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const END_STREAM: u8 = 1;

    /// A message of `len` distinct-looking bytes.
    fn message(len: u32) -> Bytes {
        (0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
    }

    /// A client channel to `service`, served over one `Coalesced` recording connection:
    /// the channel, the writes the server made, and its task.
    type Writes = Arc<Mutex<Vec<Vec<u8>>>>;

    async fn serve<S>(service: S) -> (tonic::transport::Channel, Writes, tokio::task::JoinHandle<()>)
    where
        S: Service<http::Request<BoxBody>, Response = http::Response<BoxBody>, Error = Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(Mutex::new(Vec::new()));
        let served = Coalesced::new(Recording { io: server_io, writes: writes.clone() });
        let server =
            Server::builder()
                .add_service(service)
                .serve_with_incoming(futures::stream::iter([Ok::<_, std::io::Error>(served)]));
        let server = tokio::spawn(async move {
            let _ = server.await;
        });
        let mut client_io = Some(client_io);
        let channel = Endpoint::from_static("http://in-memory")
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let io = client_io.take().map(TokioIo::new).ok_or_else(|| std::io::Error::other("connected once"));
                ready(io)
            }))
            .await
            .unwrap();
        (channel, writes, server)
    }

    /// A unary call of `test.Answer/Get`.
    fn call() -> http::Request<BoxBody> {
        http::Request::builder()
            .method("POST")
            .uri("http://in-memory/test.Answer/Get")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::empty_body())
            .unwrap()
    }

    /// Serves one call answered with `message` over a `Coalesced` recording connection;
    /// the writes it made, each parsed into HTTP/2 frames, for those that carry the
    /// message whole.
    async fn served_writes(message: Bytes) -> Vec<Vec<(u8, u8, u32, usize)>> {
        let (channel, writes, server) = serve(Answer(message.clone())).await;
        let answer = channel.oneshot(call()).await.unwrap().into_body().collect().await.unwrap();
        assert_eq!(answer.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.as_bytes()), Some(&b"0"[..]));
        assert_eq!(answer.to_bytes(), message);
        server.abort();
        let writes = writes.lock().unwrap();
        writes.iter().filter(|w| w.windows(message.len()).any(|s| s == &message[..])).map(|w| frames(w)).collect()
    }

    // One thread: the answer's frames are queued in one poll of its task, before the
    // connection's task writes (on more threads the two could interleave).
    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_of_a_few_hundred_bytes_leaves_in_one_write_with_its_trailers() {
        // A Range answer carrying one 256-byte value is about this size.
        let with_message = served_writes(message(300)).await;
        assert_eq!(with_message.len(), 1, "the message is written once, whole");
        let frames = &with_message[0];
        let (_, _, stream, _) = *frames.iter().find(|f| f.0 == DATA && f.3 == 300).expect("a DATA frame");
        assert!(
            frames.iter().any(|&(kind, flags, s, _)| kind == HEADERS && flags & END_STREAM != 0 && s == stream),
            "the trailers leave in the write that carries the message: {frames:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_large_answer_leaves_in_one_write_with_the_frames_ahead_of_it() {
        // h2 writes its buffer (the answer's headers and the first KiB) before the rest.
        let with_message = served_writes(message(5000)).await;
        assert_eq!(with_message.len(), 1, "the message is written once, whole");
        let frames = &with_message[0];
        let data = frames.iter().position(|f| f.0 == DATA && f.3 == 5000).expect("a DATA frame");
        let stream = frames[data].2;
        assert!(
            frames[..data].iter().any(|&(kind, flags, s, _)| kind == HEADERS && flags & END_STREAM == 0 && s == stream),
            "the answer's headers leave in the write that carries the message: {frames:?}"
        );
    }

    /// Answers that finish together (released at once, as the reads of one ReadIndex
    /// round are) leave in one write, not one write each. One worker thread, as a node
    /// of `raftkv dev` on this machine has: there the task an answer wakes runs next.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn answers_finished_together_leave_together() {
        const CALLS: usize = 8;
        let message = message(300);
        let (open, gate) = tokio::sync::watch::channel(false);
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (channel, writes, server) =
            serve(Gated { message: message.clone(), open: gate, calls: calls.clone() }).await;
        let answers: Vec<_> = (0..CALLS)
            .map(|_| {
                let channel = channel.clone();
                tokio::spawn(async move { channel.oneshot(call()).await.unwrap().into_body().collect().await.unwrap() })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while calls.load(std::sync::atomic::Ordering::SeqCst) < CALLS {
            assert!(std::time::Instant::now() < deadline, "the calls never all reached the service");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Released from a task of the runtime (the driver, which ends ReadIndex rounds, is one).
        tokio::spawn(async move { open.send(true).unwrap() }).await.unwrap();
        for answer in answers {
            assert_eq!(answer.await.unwrap().to_bytes(), message);
        }
        server.abort();
        let writes = writes.lock().unwrap();
        let carrying: Vec<usize> = writes
            .iter()
            .map(|w| w.windows(message.len()).filter(|s| *s == &message[..]).count())
            .filter(|&n| n > 0)
            .collect();
        assert_eq!(carrying.iter().sum::<usize>(), CALLS, "every answer written once: {carrying:?}");
        assert!(carrying.len() <= 2, "{CALLS} answers released together took {} writes: {carrying:?}", carrying.len());
    }
}
