//! `raftkv dev`: a local cluster of `raftkv serve` child processes on loopback.
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::CmdResult;

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
}

struct DevNode {
    name: String,
    client: String,
    peer: String,
    bridge: Option<String>,
    pid: u32,
    child: Child,
}

pub async fn run(args: DevArgs) -> CmdResult {
    // Client, peer, bridge and metrics ports: BASE+i, +100, +200, +300.
    if args.nodes == 0 || args.base_port as u32 + 300 + args.nodes as u32 > 65535 {
        return Err(format!("--nodes {} with --base-port {} does not fit the port range", args.nodes, args.base_port));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
    if args.classic && args.nodes > 245 {
        return Err("--classic supports at most 245 nodes".into());
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
            .map_err(|e| format!("--fresh: cannot remove {}: {e}", args.data_root.display()))?;
    }
    println!("raftkv dev: starting {} nodes, data under {}", args.nodes, args.data_root.display());
    let pki = if args.tls {
        let pki = raftkv::tls::dev::DevPki::create(&args.data_root.join("pki"), "raftkv dev CA")
            .map_err(|e| e.to_string())?;
        let (cert, key) = pki.issue("client", &[]).map_err(|e| e.to_string())?;
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
    let mut children = Vec::new();
    for (name, client, peer, bridge) in spec {
        let mut cmd = Command::new(&exe);
        cmd.arg("serve");
        if let Some(pki) = &pki {
            let host = client.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
            let (cert, key) = pki.issue(&name, &[host, "localhost"]).map_err(|e| e.to_string())?;
            let ca = pki.ca();
            for (flag, path) in [("--cert-file", &cert), ("--key-file", &key), ("--trusted-ca-file", &ca)] {
                cmd.arg(flag).arg(path);
            }
            for (flag, path) in
                [("--peer-cert-file", &cert), ("--peer-key-file", &key), ("--peer-trusted-ca-file", &ca)]
            {
                cmd.arg(flag).arg(path);
            }
            cmd.args(["--client-cert-auth", "--peer-client-cert-auth"]);
        }
        cmd.arg("--data-dir").arg(args.data_root.join(&name));
        // Prometheus metrics and /health on BASE+300+i (client port + 300).
        let metrics = client.rsplit_once(':').and_then(|(h, p)| Some(format!("{h}:{}", p.parse::<u16>().ok()? + 300)));
        if let Some(m) = &metrics {
            cmd.args(["--listen-metrics-urls", &format!("http://{m}")]);
        }
        if let Some(b) = &bridge {
            cmd.args(["--bridge-addr", b]);
        }
        let mut child = cmd
            .args(["--name", &name, "--client-addr", &client, "--peer-addr", &peer])
            .args(["--initial-cluster", &cluster])
            .args(["--election-timeout-ms", &args.election_timeout_ms.to_string()])
            .args(["--heartbeat-ms", &args.heartbeat_ms.to_string()])
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        // Each node's log lines, prefixed with its name.
        if let Some(err) = child.stderr.take() {
            let prefix = name.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[{prefix}] {line}");
                }
            });
        }
        children.push(DevNode { name, client, peer, bridge, pid: child.id().unwrap_or(0), child });
    }
    println!("{:<8} {:>8}  {:<18} {:<18} {:<18}", "NAME", "PID", "CLIENT", "PEER", "BRIDGE (UDP)");
    for c in &children {
        let bridge = c.bridge.as_deref().unwrap_or("-");
        println!("{:<8} {:>8}  {:<18} {:<18} {:<18}", c.name, c.pid, c.client, c.peer, bridge);
    }
    let endpoints: Vec<&str> = children.iter().map(|c| c.client.as_str()).collect();
    let first = endpoints[0];
    println!();
    println!("Try:");
    let g = match &pki {
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
    if let Some(p) = &pki {
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
    println!();

    let mut alive: Vec<bool> = vec![true; children.len()];
    // SIGTERM (a supervisor, `kill PID`) stops the cluster as Ctrl-C does: no node is
    // left running without its parent.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch for SIGTERM: {e}"))?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                for (i, c) in children.iter_mut().enumerate() {
                    if alive[i] {
                        if let Ok(Some(status)) = c.child.try_wait() {
                            alive[i] = false;
                            println!("raftkv dev: {} (pid {}) exited: {status}", c.name, c.pid);
                        }
                    }
                }
                if !alive.iter().any(|a| *a) {
                    return Err("every node exited".into());
                }
            }
        }
    }
    println!("raftkv dev: stopping {} nodes", children.len());
    for c in &children {
        if let Some(pid) = c.child.id() {
            // SAFETY: sending a signal to our own child process by its PID.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    for c in &mut children {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.child.wait()).await;
        let _ = c.child.start_kill();
    }
    println!("raftkv dev: stopped");
    Ok(ExitCode::SUCCESS)
}
