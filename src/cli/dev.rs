//! `raftkv dev`: a local cluster of `raftkv serve` child processes on loopback.
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::Args;
use raftkv::view::ViewError;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{CliError, CmdResult};

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 5)]
    pub nodes: u16,
    /// Node i (1-based) serves clients on BASE+i and peers on BASE+100+i.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// Minimum election timeout passed to every node.
    #[arg(long, default_value_t = 150)]
    pub election_timeout_ms: u64,
    /// Heartbeat interval passed to every node.
    #[arg(long, default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// Each node keeps its data in DATA_ROOT/NAME; a restarted `raftkv dev` resumes it.
    #[arg(long, default_value = ".raftkv-dev")]
    pub data_root: std::path::PathBuf,
    /// Wipe DATA_ROOT before starting.
    #[arg(long)]
    pub fresh: bool,
    /// Give every node a controller bridge, on UDP port BASE+200+i.
    #[arg(long)]
    pub bridge: bool,
    /// The classic controller setup: nodes Node1..NodeN, node i on address
    /// 127.0.0.(10+i) with its bridge on port 5555 (implies --bridge).
    #[arg(long)]
    pub classic: bool,
    /// The secure set-up: a throwaway CA and node certificates under DATA_ROOT/pki;
    /// members authenticate each other mutually and clients need a certificate.
    #[arg(long)]
    pub tls: bool,
    /// Serve the live cluster view (a page in the browser) here; by default on
    /// 127.0.0.1:BASE+400.
    #[arg(long, value_name = "HOST:PORT")]
    pub view_addr: Option<std::net::SocketAddr>,
    /// Do not serve the live cluster view.
    #[arg(long, conflicts_with = "view_addr")]
    pub no_view: bool,
}

/// One node's process, and what starts it again.
struct DevNode {
    name: String,
    client: String,
    peer: String,
    bridge: Option<String>,
    cmd: Vec<std::ffi::OsString>,
    pid: u32,
    /// None once the process has exited.
    child: Option<Child>,
    paused: bool,
    /// Lines for the node's fault control (`serve --dev-fault-control`, on its stdin).
    faults: Option<tokio::sync::mpsc::UnboundedSender<&'static str>>,
    isolated: bool,
}

/// The variable tokio's runtime takes its worker thread count from.
const WORKERS_VAR: &str = "TOKIO_WORKER_THREADS";

/// The worker threads of each of `nodes` nodes sharing this machine: its cores split
/// between them, at least one. Each node's runtime would otherwise start one per core,
/// and on a small machine the nodes' idle workers woken to steal work cost more than
/// they bring (README, "Benchmarks": 3 nodes on 2 cores).
fn node_workers(nodes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / nodes.max(1)).max(1)
}

/// The nodes' processes: the supervisor loop and the view's buttons share them.
struct Fleet {
    exe: std::path::PathBuf,
    /// Each node's tokio worker threads, unless TOKIO_WORKER_THREADS says otherwise.
    workers: usize,
    nodes: std::sync::Mutex<Vec<DevNode>>,
    /// Set once the page has acted on a process: `dev` then keeps running with every
    /// node down, since the page can restart them.
    acted: std::sync::atomic::AtomicBool,
    /// Set when `dev` stops: the page can start nothing more.
    stopping: std::sync::atomic::AtomicBool,
}

impl Fleet {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<DevNode>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `node`'s process (again), its log lines prefixed with its name.
    fn spawn(&self, node: &mut DevNode) -> Result<(), CliError> {
        // RUST_LOG, if set, is inherited; else `serve`'s own default (info, the storage
        // engine's chatter at warn). So is TOKIO_WORKER_THREADS; else each node's runtime
        // gets its share of the cores (see `node_workers`).
        let mut command = Command::new(&self.exe);
        if std::env::var_os(WORKERS_VAR).is_none() {
            command.env(WORKERS_VAR, self.workers.to_string());
        }
        let mut child = command
            .args(&node.cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CliError::io(format!("cannot start {}", node.name), e))?;
        node.faults = child.stdin.take().map(|mut stdin| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                while let Some(line) = rx.recv().await {
                    if stdin.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
            tx
        });
        node.isolated = false;
        if let Some(err) = child.stderr.take() {
            let prefix = node.name.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[{prefix}] {line}");
                }
            });
        }
        node.pid = child.id().unwrap_or(0);
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// Notes the processes that have exited; false once none runs, unless the page
    /// has acted on them (it may restart them).
    fn reap(&self) -> bool {
        let mut nodes = self.lock();
        for n in nodes.iter_mut() {
            if let Some(Ok(Some(status))) = n.child.as_mut().map(|c| c.try_wait()) {
                println!("raftkv dev: {} (pid {}) exited: {status}", n.name, n.pid);
                n.child = None;
            }
        }
        nodes.iter().any(|n| n.child.is_some()) || self.acted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops every node: SIGTERM (after SIGCONT for a paused one), then a kill after 5 s.
    async fn stop(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut children: Vec<Child> = self
            .lock()
            .iter_mut()
            .filter_map(|n| {
                n.faults = None; // closes the node's stdin
                n.child.take()
            })
            .collect();
        for c in &children {
            if let Some(pid) = c.id() {
                // SAFETY: signals to our own child processes, by their PIDs.
                unsafe {
                    libc::kill(pid as i32, libc::SIGCONT);
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
        }
        // All at once: each gets 5 s to stop, then is killed.
        futures::future::join_all(children.iter_mut().map(|c| async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
            let _ = c.start_kill();
        }))
        .await;
    }
}

impl raftkv::view::Control for Fleet {
    fn act(&self, endpoint: &str, action: raftkv::view::Action) -> Result<String, ViewError> {
        use raftkv::view::Action;
        let failed = ViewError::Failed;
        use std::sync::atomic::Ordering;
        let mut nodes = self.lock();
        if self.stopping.load(Ordering::Relaxed) {
            return Err(failed("raftkv dev is stopping".into()));
        }
        self.acted.store(true, Ordering::Relaxed);
        let node =
            nodes.iter_mut().find(|n| n.client == endpoint).ok_or_else(|| failed(format!("no node at {endpoint}")))?;
        let signal = |node: &DevNode, sig: i32| {
            // SAFETY: a signal to our own child process, by its PID.
            unsafe { libc::kill(node.pid as i32, sig) };
        };
        let (name, pid) = (node.name.clone(), node.pid);
        let done = match (action, node.child.as_mut()) {
            (Action::Kill, Some(child)) => {
                let _ = child.start_kill();
                format!("killed {name} (kill -9 {pid})")
            }
            (Action::Pause, Some(_)) if !node.paused => {
                signal(node, libc::SIGSTOP);
                node.paused = true;
                format!("paused {name} (SIGSTOP to {pid})")
            }
            (Action::Resume, Some(_)) if node.paused => {
                signal(node, libc::SIGCONT);
                node.paused = false;
                format!("resumed {name} (SIGCONT to {pid})")
            }
            (Action::Restart, None) => {
                self.spawn(node).map_err(|e| failed(e.to_string()))?;
                format!("restarted {name} (pid {})", node.pid)
            }
            (Action::Isolate | Action::Heal, Some(_)) => {
                let isolate = action == Action::Isolate;
                if node.isolated == isolate {
                    return Err(failed(format!(
                        "{name} is {} already",
                        if isolate { "isolated" } else { "connected" }
                    )));
                }
                let line = if isolate { "isolate" } else { "heal" };
                node.faults
                    .as_ref()
                    .and_then(|f| f.send(line).ok())
                    .ok_or_else(|| failed(format!("{name} takes no fault commands")))?;
                node.isolated = isolate;
                if isolate {
                    format!("cut {name} off from every other node")
                } else {
                    format!("reconnected {name}")
                }
            }
            (Action::Restart, Some(_)) => return Err(failed(format!("{name} is running; kill it first"))),
            (_, None) => return Err(failed(format!("{name} is not running"))),
            (Action::Pause, _) => return Err(failed(format!("{name} is paused already"))),
            (Action::Resume, _) => return Err(failed(format!("{name} is not paused"))),
        };
        println!("raftkv dev: {done}");
        Ok(done)
    }

    fn process(&self, endpoint: &str) -> &'static str {
        match self.lock().iter().find(|n| n.client == endpoint) {
            Some(n) if n.child.is_none() => "stopped",
            Some(n) if n.paused => "paused",
            Some(n) if n.isolated => "isolated",
            _ => "running",
        }
    }
}

pub async fn run(args: DevArgs) -> CmdResult {
    // Client, peer, bridge and metrics ports: BASE+i, +100, +200, +300; the view BASE+400.
    if args.nodes == 0 || args.base_port as u32 + 400.max(300 + args.nodes as u32) > 65535 {
        return Err(CliError::Usage(format!(
            "--nodes {} with --base-port {} does not fit the port range",
            args.nodes, args.base_port
        )));
    }
    let exe = std::env::current_exe().map_err(|e| CliError::io("cannot find my own executable", e))?;
    if args.classic && args.nodes > 245 {
        return Err(CliError::Usage("--classic supports at most 245 nodes".into()));
    }
    let spec: Vec<(String, String, String, Option<String>)> = (1..=args.nodes)
        .map(|i| {
            let (name, host) = if args.classic {
                (format!("Node{i}"), format!("127.0.0.{}", 10 + i))
            } else {
                (format!("node{i}"), "127.0.0.1".to_string())
            };
            let bridge = if args.classic {
                Some(format!("{host}:{}", raftkv::bridge::DEFAULT_PORT))
            } else if args.bridge {
                Some(format!("{host}:{}", args.base_port + 200 + i))
            } else {
                None
            };
            (name, format!("{host}:{}", args.base_port + i), format!("{host}:{}", args.base_port + 100 + i), bridge)
        })
        .collect();
    let cluster: Vec<String> = spec.iter().map(|(n, _, p, _)| format!("{n}={p}")).collect();
    let cluster = cluster.join(",");
    if args.fresh && args.data_root.exists() {
        std::fs::remove_dir_all(&args.data_root)
            .map_err(|e| CliError::io(format!("--fresh: cannot remove {}", args.data_root.display()), e))?;
    }
    println!("raftkv dev: starting {} nodes, data under {}", args.nodes, args.data_root.display());
    let pki = if args.tls {
        let pki = raftkv::tls::dev::DevPki::create(&args.data_root.join("pki"), "raftkv dev CA")?;
        let (cert, key) = pki.issue("client", &[])?;
        println!(
            "raftkv dev: TLS on; CA {}, a client certificate {} (key {})",
            pki.ca().display(),
            cert.display(),
            key.display()
        );
        Some(pki)
    } else {
        None
    };
    let workers = node_workers(args.nodes.into());
    match std::env::var_os(WORKERS_VAR) {
        Some(n) => println!(
            "raftkv dev: each node's runtime: {WORKERS_VAR}={} worker threads (from the environment)",
            n.to_string_lossy()
        ),
        None => println!("raftkv dev: each node's runtime: {workers} worker thread(s), its share of the cores"),
    }
    let fleet = std::sync::Arc::new(Fleet {
        exe,
        workers,
        nodes: std::sync::Mutex::new(Vec::new()),
        acted: Default::default(),
        stopping: Default::default(),
    });
    for (name, client, peer, bridge) in spec {
        let mut cmd: Vec<std::ffi::OsString> = vec!["serve".into()];
        let mut args2 = |a: &[&dyn AsRef<std::ffi::OsStr>]| cmd.extend(a.iter().map(|a| a.as_ref().to_owned()));
        if let Some(pki) = &pki {
            let host = client.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
            let (cert, key) = pki.issue(&name, &[host, "localhost"])?;
            let ca = pki.ca();
            for (flag, path) in [("--cert-file", &cert), ("--key-file", &key), ("--trusted-ca-file", &ca)] {
                args2(&[&flag, path]);
            }
            for (flag, path) in
                [("--peer-cert-file", &cert), ("--peer-key-file", &key), ("--peer-trusted-ca-file", &ca)]
            {
                args2(&[&flag, path]);
            }
            args2(&[&"--client-cert-auth", &"--peer-client-cert-auth"]);
        }
        args2(&[&"--data-dir", &args.data_root.join(&name)]);
        // Prometheus metrics and /health on BASE+300+i (client port + 300).
        let metrics = client.rsplit_once(':').and_then(|(h, p)| Some(format!("{h}:{}", p.parse::<u16>().ok()? + 300)));
        if let Some(m) = &metrics {
            args2(&[&"--listen-metrics-urls", &format!("http://{m}")]);
        }
        if let Some(b) = &bridge {
            args2(&[&"--bridge-addr", b]);
        }
        args2(&[&"--name", &name, &"--client-addr", &client, &"--peer-addr", &peer]);
        args2(&[&"--initial-cluster", &cluster]);
        args2(&[&"--election-timeout-ms", &args.election_timeout_ms.to_string()]);
        args2(&[&"--heartbeat-ms", &args.heartbeat_ms.to_string()]);
        args2(&[&"--dev-fault-control"]);
        let mut node = DevNode {
            name,
            client,
            peer,
            bridge,
            cmd,
            pid: 0,
            child: None,
            paused: false,
            faults: None,
            isolated: false,
        };
        fleet.spawn(&mut node)?;
        fleet.lock().push(node);
    }
    let view = if args.no_view {
        None
    } else {
        let addr = args.view_addr.unwrap_or(([127, 0, 0, 1], args.base_port + 400).into());
        if !addr.ip().is_loopback() {
            println!(
                "raftkv dev: warning: the cluster view on {addr} lets anyone who reaches it kill and restart the nodes"
            );
        }
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            CliError::io(format!("cannot serve the cluster view on {addr} (--view-addr, --no-view)"), e)
        })?;
        // The view talks to the nodes as a client would (with the dev client certificate).
        let conn = super::client::Conn {
            endpoints: Vec::new(),
            timeout_ms: 5000,
            cacert: pki.as_ref().map(|p| p.ca()),
            cert: pki.as_ref().map(|p| p.dir.join("client.pem")),
            tls_key: pki.as_ref().map(|p| p.dir.join("client-key.pem")),
        };
        let slots = fleet
            .lock()
            .iter()
            .map(|n| {
                Ok(raftkv::view::Slot {
                    endpoint: n.client.clone(),
                    channel: conn.channel(&n.client, Duration::from_secs(1))?,
                })
            })
            .collect::<Result<Vec<_>, CliError>>()?;
        let control: std::sync::Arc<dyn raftkv::view::Control> = fleet.clone();
        let nodes = raftkv::view::Nodes::new(slots, Some(control), Duration::from_secs(5));
        tokio::spawn(raftkv::view::serve(listener, nodes));
        Some(addr)
    };
    banner(&fleet.lock(), &args, pki.as_ref(), view);

    // SIGTERM (a supervisor, `kill PID`) stops the cluster as Ctrl-C does: no node is
    // left running without its parent.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| CliError::io("cannot watch for SIGTERM", e))?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if !fleet.reap() {
                    return Err(CliError::Failed("every node exited".into()));
                }
            }
        }
    }
    println!("raftkv dev: stopping {} nodes", fleet.lock().len());
    fleet.stop().await;
    println!("raftkv dev: stopped");
    Ok(ExitCode::SUCCESS)
}

/// What `raftkv dev` prints once its nodes are started: each node, and what to try.
fn banner(
    children: &[DevNode],
    args: &DevArgs,
    pki: Option<&raftkv::tls::dev::DevPki>,
    view: Option<std::net::SocketAddr>,
) {
    println!("{:<8} {:>8}  {:<18} {:<18} {:<18}", "NAME", "PID", "CLIENT", "PEER", "BRIDGE (UDP)");
    for c in children.iter() {
        let bridge = c.bridge.as_deref().unwrap_or("-");
        println!("{:<8} {:>8}  {:<18} {:<18} {:<18}", c.name, c.pid, c.client, c.peer, bridge);
    }
    let endpoints: Vec<&str> = children.iter().map(|c| c.client.as_str()).collect();
    let first = endpoints[0];
    println!();
    println!("Try:");
    let g = match pki {
        Some(p) => {
            let d = p.dir.display();
            format!("grpcurl -cacert {d}/ca.pem -cert {d}/client.pem -key {d}/client-key.pem")
        }
        None => "grpcurl -plaintext".to_string(),
    };
    println!("  {g} {first} list");
    println!("  {g} -d '{{\"key\":\"a\",\"value\":\"1\"}}' {first} raftkv.v1.KeyValue/Store");
    println!("  {g} -d '{{\"key\":\"a\"}}' {first} raftkv.v1.KeyValue/Get");
    println!("  {g} {first} raftkv.v1.KeyValue/Retrieve");
    println!("  {g} {first} raftkv.v1.KeyValue/Status");
    let mut ep_flag = if args.nodes == 5 && args.base_port == 7000 && !args.classic {
        String::new()
    } else {
        format!(" --endpoints {}", endpoints.join(","))
    };
    if let Some(p) = pki {
        let d = p.dir.display();
        ep_flag += &format!(" --cacert {d}/ca.pem --cert {d}/client.pem --key {d}/client-key.pem");
    }
    if let Some((h, p)) = first.rsplit_once(':') {
        let port = p.parse::<u16>().unwrap_or(0) + 300;
        println!("  curl -s http://{h}:{port}/metrics   # Prometheus metrics (and /health, /readyz)");
    }
    println!("  raftkv put a 1{ep_flag}");
    println!("  raftkv get a{ep_flag}");
    println!("  raftkv status{ep_flag}");
    if let Some(b) = children[0].bridge.as_deref() {
        println!("  raftkv controller {b} LEADER_INFO");
        println!("  raftkv controller {b} STORE k v");
        println!("  raftkv controller {b} RETRIEVE");
    }
    println!("Kill a node for real with kill -9 PID. Ctrl-C (or SIGTERM) stops the cluster.");
    if let Some(addr) = view {
        println!();
        println!("Watch the cluster live: http://{addr}/  (kill, pause, restart nodes and put keys from the page)");
    }
    println!();
}
