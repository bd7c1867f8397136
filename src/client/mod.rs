//! A client of `raftkv.v1.KeyValue` that writes exactly once: the CLI's put/delete and
//! `raftkv bench` use it.
//!
//! A [`Session`] opens a client session on the cluster and numbers its writes (one at a
//! time). A write whose answer is lost, or that comes back "outcome unknown", is sent
//! again with the same number, to any node, until it is answered or the budget is
//! spent: the state machine applies it at most once and answers a retry as it answered
//! the first. Errors a node gives without applying anything (its own UNAVAILABLE, a
//! connection never made) are retried on the next node.
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::api::{SEQ_METADATA, SESSION_METADATA};
use crate::error::{is_connect_failure, with_causes, LEADER_METADATA, NOT_APPLIED_METADATA};
use crate::proto::{self as pb, key_value_client::KeyValueClient};

/// Pause between rounds over every endpoint, and after an outcome unknown.
const BACKOFF: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node applied the request (every attempt was refused before it reached the
    /// log, or never connected): safe to send again.
    #[error("no node could take the request: {0}")]
    Unavailable(String),
    /// The request may or may not have been applied, and retrying could not tell within
    /// the budget (or the session expired in between).
    #[error("outcome unknown: {0}; the write may or may not have been applied")]
    OutcomeUnknown(String),
    /// A node answered with an error that retrying does not change.
    #[error("{}", describe(.0))]
    Refused(Status),
}

/// A node's own UNAVAILABLE (it applied nothing), or a connection never made.
pub fn never_applied(s: &Status) -> bool {
    s.metadata().contains_key(NOT_APPLIED_METADATA) || is_connect_failure(s)
}

/// Whether a write that failed so may have been applied: its answer was lost (a
/// transport error after sending) or the cluster said "outcome unknown".
fn maybe_applied(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => !never_applied(s),
        Code::DeadlineExceeded => true,
        _ => false,
    }
}

/// A status as one line: its code, message and the leader hint if any.
pub fn describe(s: &Status) -> String {
    if s.code() == Code::Unavailable && !never_applied(s) {
        return format!("the answer was lost ({})", with_causes(s));
    }
    let code = format!("{:?}", s.code());
    match s.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok()) {
        Some(l) => format!("{code}: {} (leader: {l})", s.message()),
        None => format!("{code}: {}", s.message()),
    }
}

/// How a session talks to the cluster.
#[derive(Clone, Debug)]
pub struct Options {
    /// Deadline of each attempt.
    pub timeout: Duration,
    /// How long one write may be retried, in all.
    pub budget: Duration,
    /// The session's time to live (None: the server's default).
    pub ttl: Option<Duration>,
}

/// An exactly-once writer: a client session over the cluster's endpoints.
pub struct Session {
    endpoints: Vec<(String, KeyValueClient<Channel>)>,
    options: Options,
    id: u64,
    seq: u64,
    /// The endpoint tried first: the last one that answered.
    preferred: usize,
}

impl Session {
    /// Opens a session through any of `endpoints` (name, client).
    pub async fn open(
        endpoints: Vec<(String, KeyValueClient<Channel>)>,
        options: Options,
    ) -> Result<Session, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Unavailable("no endpoints given".into()));
        }
        let mut s = Session { endpoints, options, id: 0, seq: 0, preferred: 0 };
        s.reopen().await?;
        Ok(s)
    }

    /// The session's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Opens a new session (after the last one expired). An attempt whose answer is
    /// lost may leave a session open unused; it expires on its own.
    async fn reopen(&mut self) -> Result<(), ClientError> {
        let ttl_seconds = self.options.ttl.map_or(0, |t| t.as_secs().max(1));
        let r =
            self.attempts(false, pb::OpenSessionRequest { ttl_seconds }, |mut c, req| async move {
                c.open_session(req).await
            })
            .await
            .map_err(|e| match e {
                // Nothing was written that matters: an unknown opening only leaks a session.
                ClientError::OutcomeUnknown(m) => ClientError::Unavailable(m),
                e => e,
            })?;
        (self.id, self.seq) = (r.session, 0);
        Ok(())
    }

    pub async fn store(&mut self, key: &str, value: &str) -> Result<pb::StoreResponse, ClientError> {
        let req = pb::StoreRequest { key: key.to_string(), value: value.to_string() };
        self.write(req, |mut c, req| async move { c.store(req).await }).await
    }

    pub async fn delete(&mut self, key: &str) -> Result<pb::DeleteResponse, ClientError> {
        let req = pb::DeleteRequest { key: key.to_string() };
        self.write(req, |mut c, req| async move { c.delete(req).await }).await
    }

    /// Sends the next write of the session until it is answered. A session that
    /// expired before anything of this write could have been applied is replaced.
    async fn write<M, T, F, Fut>(&mut self, msg: M, call: F) -> Result<T, ClientError>
    where
        M: Clone,
        F: Fn(KeyValueClient<Channel>, Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        self.seq += 1;
        match self.attempts(true, msg.clone(), &call).await {
            Err(ClientError::Refused(s)) if s.code() == Code::FailedPrecondition => {
                // The session is gone (expired while idle) and this write was refused
                // unapplied at every attempt: a new session may send it.
                self.reopen().await?;
                self.seq = 1;
                self.attempts(true, msg, &call).await
            }
            other => other,
        }
    }

    /// Sends `msg` (as a write of this session if `session`) to one endpoint after
    /// another until one answers: retries what was never applied, and, when
    /// `session`, what may have been (the session makes that safe).
    async fn attempts<M, T, F, Fut>(&mut self, session: bool, msg: M, call: F) -> Result<T, ClientError>
    where
        M: Clone,
        F: Fn(KeyValueClient<Channel>, Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let start = Instant::now();
        let n = self.endpoints.len();
        let mut unknown: Option<String> = None;
        let mut last = String::new();
        for attempt in 0.. {
            if attempt > 0 && (start.elapsed() >= self.options.budget) {
                break;
            }
            if attempt > 0 && attempt % n == 0 {
                tokio::time::sleep(BACKOFF).await;
            }
            let at = (self.preferred + attempt) % n;
            let (name, client) = &self.endpoints[at];
            let mut req = Request::new(msg.clone());
            req.set_timeout(self.options.timeout);
            if session {
                let md = req.metadata_mut();
                md.insert(SESSION_METADATA, self.id.to_string().parse().expect("digits"));
                md.insert(SEQ_METADATA, self.seq.to_string().parse().expect("digits"));
            }
            match call(client.clone(), req).await {
                Ok(r) => {
                    self.preferred = at;
                    return Ok(r.into_inner());
                }
                Err(s) if never_applied(&s) => last = format!("{name}: {}", describe(&s)),
                Err(s) if maybe_applied(&s) => {
                    last = format!("{name}: {}", describe(&s));
                    unknown = Some(last.clone());
                    if !session {
                        break;
                    }
                    tokio::time::sleep(BACKOFF).await;
                }
                // A write that may have been applied, then refused (its session expired
                // in between, the quota or back-pressure stopped the retry before it
                // reached the session table): nobody can tell any more.
                Err(s) if unknown.is_some() => {
                    return Err(ClientError::OutcomeUnknown(format!("{name}: {}", describe(&s))));
                }
                Err(s) => return Err(ClientError::Refused(s)),
            }
        }
        Err(match unknown {
            Some(u) => ClientError::OutcomeUnknown(format!("{u}; last attempt {last}")),
            None => ClientError::Unavailable(last),
        })
    }
}
