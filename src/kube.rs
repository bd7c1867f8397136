//! The one question raftkv asks the Kubernetes API: how many replicas does this pod's
//! StatefulSet want (`--leave-on-scale-down`)? Asked with the pod's service account
//! (its token and the cluster's CA, mounted by Kubernetes), over HTTPS, as any
//! in-cluster client does; the Role in `k8s/rbac.yaml` allows exactly this `get`.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

/// Where Kubernetes mounts a pod's service account.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// One answer, at most: a StatefulSet is a few KiB.
const MAX_ANSWER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("not in a Kubernetes pod: {0}")]
    NotInCluster(String),
    #[error("{}: {error}", path.display())]
    File { path: PathBuf, error: std::io::Error },
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("the Kubernetes API at {addr}: {error}")]
    Unreachable { addr: String, error: String },
    #[error("the Kubernetes API answered {status} to GET {path}: {body}")]
    Refused { status: u16, path: String, body: String },
    #[error("the Kubernetes API's answer to GET {path} holds no spec.replicas")]
    NoReplicas { path: String },
    #[error("the Kubernetes API did not answer within {0:?}")]
    Timeout(Duration),
}

/// A StatefulSet, and how to reach the API server that knows it.
#[derive(Clone, Debug)]
pub struct StatefulSet {
    /// The API server: a host (an IP, as `KUBERNETES_SERVICE_HOST` gives) and a port.
    pub host: String,
    pub port: u16,
    /// The service account's `token`, `ca.crt` and `namespace`.
    pub account_dir: PathBuf,
    pub name: String,
}

impl StatefulSet {
    /// The StatefulSet that runs pod `pod` (its name without the ordinal), reached as a
    /// pod reaches its API server: `KUBERNETES_SERVICE_HOST` and `_PORT`, and the
    /// service account Kubernetes mounts.
    pub fn of_pod(pod: &str) -> Result<StatefulSet, KubeError> {
        let env = |k: &str| std::env::var(k).map_err(|_| KubeError::NotInCluster(format!("{k} is not set")));
        let host = env("KUBERNETES_SERVICE_HOST")?;
        let port = env("KUBERNETES_SERVICE_PORT")?;
        let port = port.parse().map_err(|_| KubeError::NotInCluster(format!("KUBERNETES_SERVICE_PORT {port:?}")))?;
        let name = pod
            .rsplit_once('-')
            .map(|(p, _)| p.to_string())
            .ok_or_else(|| KubeError::NotInCluster(format!("{pod:?} is not a StatefulSet pod's name")))?;
        let sts = StatefulSet { host, port, account_dir: SERVICE_ACCOUNT_DIR.into(), name };
        // Told now rather than at the first SIGTERM: a pod that cannot ask would stay
        // listed when scaled away.
        sts.read("token")?;
        Ok(sts)
    }

    fn read(&self, file: &str) -> Result<String, KubeError> {
        let path = self.account_dir.join(file);
        std::fs::read_to_string(&path).map(|s| s.trim().to_string()).map_err(|error| KubeError::File { path, error })
    }

    /// `spec.replicas` as the API server holds it now (within `wait`). The token and
    /// CA are read afresh each time: Kubernetes rotates them.
    pub async fn replicas(&self, wait: Duration) -> Result<u32, KubeError> {
        tokio::time::timeout(wait, self.ask()).await.map_err(|_| KubeError::Timeout(wait))?
    }

    async fn ask(&self) -> Result<u32, KubeError> {
        let namespace = self.read("namespace")?;
        let token = self.read("token")?;
        let path = format!("/apis/apps/v1/namespaces/{namespace}/statefulsets/{}", self.name);
        let addr = match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        };
        let unreachable =
            |e: &dyn std::fmt::Display| KubeError::Unreachable { addr: addr.clone(), error: e.to_string() };
        let mut tls = (*crate::tls::client_config(&self.account_dir.join("ca.crt"), None)?).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server = ServerName::try_from(self.host.clone()).map_err(|e| unreachable(&e))?;
        let tcp = tokio::net::TcpStream::connect(&addr).await.map_err(|e| unreachable(&e))?;
        let stream =
            tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(server, tcp).await.map_err(|e| unreachable(&e))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(&e))?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(path.as_str())
            .header(hyper::header::HOST, &addr)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| unreachable(&e))?;
        let answer = sender.send_request(req).await.map_err(|e| unreachable(&e))?;
        let status = answer.status();
        let body = Limited::new(answer.into_body(), MAX_ANSWER).collect().await.map_err(|e| unreachable(&*e))?;
        conn.abort();
        let body = body.to_bytes();
        if !status.is_success() {
            let body = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(KubeError::Refused { status: status.as_u16(), path, body });
        }
        replicas_of(&body).ok_or(KubeError::NoReplicas { path })
    }
}

/// `spec.replicas` of a StatefulSet as JSON. Kubernetes fills in the default (1) when
/// it is left out, so its absence is a malformed answer, not 1.
fn replicas_of(json: &[u8]) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    v.get("spec")?.get("replicas")?.as_u64().and_then(|r| u32::try_from(r).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_read_from_the_spec_only() {
        assert_eq!(replicas_of(br#"{"kind":"StatefulSet","spec":{"replicas":7},"status":{"replicas":5}}"#), Some(7));
        assert_eq!(replicas_of(br#"{"spec":{"replicas":0}}"#), Some(0));
        assert_eq!(replicas_of(br#"{"spec":{}, "status":{"replicas":5}}"#), None);
        assert_eq!(replicas_of(br#"{"spec":{"replicas":-1}}"#), None);
        assert_eq!(replicas_of(b"not json"), None);
    }
}
