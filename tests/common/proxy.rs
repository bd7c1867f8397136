//! TCP proxies on every directed peer link of a cluster of real processes, for a
//! nemesis: node i reaches node j through the proxy of link (i, j).
//!
//! - A *cut* link holds what it carries (bytes in flight, new connections) until it
//!   heals, as a partition shorter than TCP's timeouts does: the nodes notice only
//!   through their own timeouts.
//! - A *reset* closes the link's open connections: the requests on them are lost.
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

struct Link {
    open: watch::Sender<bool>,
    conns: Mutex<Vec<AbortHandle>>,
}

pub struct Proxies {
    n: usize,
    /// links[i][j]: node i's link to node j (None on the diagonal).
    links: Vec<Vec<Option<Arc<Link>>>>,
    /// views[i][j]: the address node i dials to reach node j.
    pub views: Vec<Vec<String>>,
    tasks: Vec<AbortHandle>,
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for link in self.links.iter().flatten().flatten() {
            for c in link.conns.lock().unwrap().drain(..) {
                c.abort();
            }
        }
    }
}

/// Copies `from` to `to`, holding the bytes while the link is cut.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, link: Arc<Link>) {
    let mut open = link.open.subscribe();
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if open.wait_for(|o| *o).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

async fn serve(listener: TcpListener, upstream: String, link: Arc<Link>) {
    while let Ok((down, _)) = listener.accept().await {
        let _ = down.set_nodelay(true);
        let l = link.clone();
        let upstream = upstream.clone();
        let conn = tokio::spawn(async move {
            let mut open = l.open.subscribe();
            if open.wait_for(|o| *o).await.is_err() {
                return;
            }
            let Ok(up) = TcpStream::connect(&upstream).await else { return };
            let _ = up.set_nodelay(true);
            let (dr, dw) = down.into_split();
            let (ur, uw) = up.into_split();
            // Both directions in this task: aborting it (a reset) closes the connection.
            tokio::join!(pump(dr, uw, l.clone()), pump(ur, dw, l.clone()));
        });
        let mut conns = link.conns.lock().unwrap();
        conns.retain(|c| !c.is_finished());
        conns.push(conn.abort_handle());
    }
}

impl Proxies {
    /// Proxies for every directed link between the members at `peers`, on ports other
    /// than those in `taken` (addresses set aside for the nodes, not yet bound).
    pub async fn start(peers: &[String], taken: &[String]) -> Proxies {
        let n = peers.len();
        let mut links = Vec::new();
        let mut views = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..n {
            let (mut row, mut view) = (Vec::new(), Vec::new());
            for (j, peer) in peers.iter().enumerate() {
                if i == j {
                    row.push(None);
                    view.push(peer.clone());
                    continue;
                }
                let listener = loop {
                    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                    if !taken.contains(&l.local_addr().unwrap().to_string()) {
                        break l;
                    }
                };
                view.push(listener.local_addr().unwrap().to_string());
                let link = Arc::new(Link { open: watch::channel(true).0, conns: Mutex::new(Vec::new()) });
                tasks.push(tokio::spawn(serve(listener, peer.clone(), link.clone())).abort_handle());
                row.push(Some(link));
            }
            links.push(row);
            views.push(view);
        }
        Proxies { n, links, views, tasks }
    }

    fn link(&self, i: usize, j: usize) -> Option<&Arc<Link>> {
        self.links[i][j].as_ref()
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&self, a: usize, b: usize) {
        for (x, y) in [(a, b), (b, a)] {
            if let Some(l) = self.link(x, y) {
                l.open.send_replace(false);
            }
        }
    }

    /// Nodes in `group` reach only each other.
    pub fn partition(&self, group: &[usize]) {
        for &a in group {
            for b in (0..self.n).filter(|b| !group.contains(b)) {
                self.cut(a, b);
            }
        }
    }

    /// Closes the open connections of the link (i, j): what was in flight is lost.
    pub fn reset(&self, i: usize, j: usize) {
        if let Some(l) = self.link(i, j) {
            for c in l.conns.lock().unwrap().drain(..) {
                c.abort();
            }
        }
    }

    /// Every link open again; what cut links held is delivered.
    pub fn heal(&self) {
        for link in self.links.iter().flatten().flatten() {
            link.open.send_replace(true);
        }
    }
}
