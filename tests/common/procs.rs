//! Real `raftkv serve` processes on loopback, for the process and Jepsen tests.
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_raftkv");
pub const WAIT: Duration = Duration::from_secs(30);

/// A port for a node to bind later. Taken below the kernel's ephemeral range (32768
/// and up by default), where neither `bind(0)` nor outgoing connections take ports: a
/// port from `bind(0)`, released for the child to bind, could meanwhile be bound by a
/// test running alongside (its proxies bind that way) or become the local port of a
/// connection, and the node then fails to start. Each test binary counts from its own
/// place; a port something holds is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % 100 * 200;
    loop {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Child processes, killed when dropped (also when a test fails).
pub struct Procs {
    /// Flags every `raftkv serve` gets besides the cluster's.
    pub extra: Vec<String>,
    pub names: Vec<String>,
    pub clients: Vec<String>,
    pub peers: Vec<String>,
    /// Node i reaches node j at `views[i][j]` (its peer address, or a proxy's).
    pub views: Vec<Vec<String>>,
    pub children: Vec<Option<Child>>,
    pub data: tempfile::TempDir,
    /// Flags of one node only (`--initial-cluster-state existing` for a joining one).
    pub own: Vec<Vec<String>>,
}

impl Drop for Procs {
    /// Kills the children; after a failed test, keeps the data directory (node logs
    /// included) and says where it is.
    /// After a failure, also prints which nodes had exited by themselves and the end of
    /// every node's log (CI keeps no files).
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for (i, c) in self.children.iter_mut().enumerate() {
            let Some(c) = c else { continue };
            if let (true, Ok(Some(status))) = (panicking, c.try_wait()) {
                eprintln!("{} had exited by itself: {status}", self.names[i]);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if panicking {
            for i in 0..self.names.len() {
                let log = self.log(i);
                let lines: Vec<&str> = log.lines().collect();
                eprintln!("--- the last lines of {}'s log", self.names[i]);
                for line in &lines[lines.len().saturating_sub(15)..] {
                    eprintln!("{line}");
                }
            }
            let data = std::mem::replace(&mut self.data, tempfile::tempdir().unwrap());
            eprintln!("node logs and data kept in {}", data.keep().display());
        }
    }
}

impl Procs {
    pub fn start(n: usize) -> Procs {
        Self::start_with(n, &[])
    }

    pub fn start_with(n: usize, extra: &[&str]) -> Procs {
        let p = Self::new(n, extra);
        Self::spawn_all(p)
    }

    /// The cluster's names and addresses, nothing started: `views` may be changed
    /// (to route peer traffic through proxies) before `spawn_all`.
    pub fn new(n: usize, extra: &[&str]) -> Procs {
        let names: Vec<String> = (1..=n).map(|i| format!("p{i}")).collect();
        let clients: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let peers: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let views = vec![peers.clone(); n];
        let data = tempfile::tempdir().unwrap();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let own = vec![Vec::new(); n];
        Procs { extra, names, clients, peers, views, children: (0..n).map(|_| None).collect(), data, own }
    }

    pub fn spawn_all(mut p: Procs) -> Procs {
        for i in 0..p.names.len() {
            p.spawn(i);
        }
        p
    }

    /// Starts node `i` (again) from its data directory; its log lines are appended
    /// to DATA/NAME.log across restarts.
    pub fn spawn(&mut self, i: usize) {
        // Every node knows the members at their own peer addresses, and dials them
        // where its view says (a proxy of its own on each link, in a nemesis test).
        let cluster: Vec<String> = self.names.iter().zip(&self.peers).map(|(n, p)| format!("{n}={p}")).collect();
        let dial: Vec<String> = self.names.iter().zip(&self.views[i]).map(|(n, p)| format!("{n}={p}")).collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join(format!("{}.log", self.names[i])))
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--name", &self.names[i], "--client-addr", &self.clients[i], "--peer-addr", &self.peers[i]])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--peer-dial", &dial.join(",")])
            .arg("--data-dir")
            .arg(self.data.path().join(&self.names[i]))
            // Small, so that kills and restarts go through checkpoints, and the log is
            // really compacted (segments deleted) after each.
            .args(["--snapshot-entries", "40", "--wal-segment-bytes", "16384"])
            .args(&self.extra)
            .args(&self.own[i])
            // The storage engine's info lines (one per table written) would crowd out
            // the node's own in the log tails a failed test prints.
            .env("RUST_LOG", "info,fjall=warn,lsm_tree=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("raftkv serve starts");
        self.children[i] = Some(child);
    }

    /// Addresses for a new node `name` with flags `own` of its own, not started; its
    /// `--initial-cluster` lists every node. Returns its index.
    pub fn add_node(&mut self, name: &str, own: &[&str]) -> usize {
        self.names.push(name.into());
        self.clients.push(format!("127.0.0.1:{}", free_port()));
        let peer = format!("127.0.0.1:{}", free_port());
        for v in &mut self.views {
            v.push(peer.clone());
        }
        self.peers.push(peer);
        self.views.push(self.peers.clone());
        self.children.push(None);
        self.own.push(own.iter().map(|s| s.to_string()).collect());
        self.names.len() - 1
    }

    /// Waits for node `i`'s process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, i: usize) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        let child = self.children[i].as_mut().expect("started");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.children[i] = None;
                return status.code();
            }
            assert!(Instant::now() < deadline, "node {i} still runs after {WAIT:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.data.path().join(format!("{}.log", self.names[i]))).unwrap_or_default()
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// term -> every node that logged winning an election in it, over all runs.
    pub fn election_winners(&self) -> std::collections::BTreeMap<u64, Vec<String>> {
        let mut won: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
        for name in &self.names {
            let text = std::fs::read_to_string(self.data.path().join(format!("{name}.log"))).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains("won the election")) {
                let term = line.split("term=").nth(1).and_then(|r| r.split_whitespace().next());
                won.entry(term.unwrap().parse().unwrap()).or_default().push(name.clone());
            }
        }
        won
    }

    pub fn endpoints(&self) -> String {
        self.clients.join(",")
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(args).args(["--endpoints", &self.endpoints()]).output().expect("raftkv runs")
    }

    /// Polls `raftkv status` until a leader other than `not` is named by a live node.
    pub fn wait_leader(&self, not: Option<&str>) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.cli(&["status"]);
            let table = String::from_utf8_lossy(&out.stdout).to_string();
            for line in table.lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                if cols.len() >= 3 && cols[2] == "leader" && Some(cols[0]) != not {
                    return self.names.iter().position(|n| n == cols[0]).unwrap();
                }
            }
            assert!(Instant::now() < deadline, "no leader within {WAIT:?}:\n{table}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self, i: usize) -> Option<i32> {
        self.children[i].as_ref().map(|c| c.id() as i32)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to node `i`'s process, if it runs.
    pub fn signal(&self, i: usize, signal: i32) {
        if let Some(pid) = self.pid(i) {
            // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
            unsafe { libc::kill(pid, signal) };
        }
    }
}
