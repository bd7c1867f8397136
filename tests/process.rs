//! Real processes: `raftkv serve` children on loopback, driven by the `raftkv` CLI,
//! the leader killed with SIGKILL.
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_raftkv");
const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Child processes, killed when dropped (also when a test fails).
struct Procs {
    names: Vec<String>,
    clients: Vec<String>,
    children: Vec<Option<Child>>,
    _data: tempfile::TempDir,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Procs {
    fn start(n: usize) -> Procs {
        let names: Vec<String> = (1..=n).map(|i| format!("p{i}")).collect();
        let data = tempfile::tempdir().unwrap();
        let clients: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let peers: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let cluster: Vec<String> = names.iter().zip(&peers).map(|(n, p)| format!("{n}={p}")).collect();
        let children = (0..n)
            .map(|i| {
                Some(
                    Command::new(BIN)
                        .args(["serve", "--name", &names[i], "--client-addr", &clients[i], "--peer-addr", &peers[i]])
                        .args(["--initial-cluster", &cluster.join(",")])
                        .arg("--data-dir")
                        .arg(data.path().join(&names[i]))
                        .env("RUST_LOG", "warn")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("raftkv serve starts"),
                )
            })
            .collect();
        Procs { names, clients, children, _data: data }
    }

    fn endpoints(&self) -> String {
        self.clients.join(",")
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(args).args(["--endpoints", &self.endpoints()]).output().expect("raftkv runs")
    }

    /// Polls `raftkv status` until a leader other than `not` is named by a live node.
    fn wait_leader(&self, not: Option<&str>) -> usize {
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
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

#[test]
fn cli_against_real_processes_survives_kill_9_of_the_leader() {
    let mut p = Procs::start(3);
    let leader = p.wait_leader(None);

    let put = p.cli(&["put", "city", "Oslo"]);
    assert!(put.status.success(), "{}", stderr(&put));
    assert!(stdout(&put).starts_with("OK index="), "{}", stdout(&put));
    let get = p.cli(&["get", "city"]);
    assert_eq!(stdout(&get), "Oslo");
    let missing = p.cli(&["get", "nowhere"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(stderr(&missing).lines().count(), 1, "{}", stderr(&missing));

    // kill -9 of the leader's process.
    let mut child = p.children[leader].take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let old = p.names[leader].clone();
    let new = p.wait_leader(Some(&old));
    assert_ne!(new, leader);

    // Writes continue through the CLI, which tries the endpoints in turn.
    let put = p.cli(&["put", "city", "Bergen"]);
    assert!(put.status.success(), "{}", stderr(&put));
    assert_eq!(stdout(&p.cli(&["get", "city"])), "Bergen");
    let retrieve = p.cli(&["retrieve", "--node", &p.names[new]]);
    let text = stdout(&retrieve);
    assert!(text.contains("PUT    city = Oslo") && text.contains("PUT    city = Bergen"), "{text}");
    let status = stdout(&p.cli(&["status"]));
    assert!(status.contains("unreachable"), "the killed node shows as unreachable:\n{status}");

    // SIGTERM stops a node cleanly, with exit code 0.
    let follower = (0..3).find(|&i| i != new && p.children[i].is_some()).unwrap();
    let mut child = p.children[follower].take().unwrap();
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + WAIT;
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop the node");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
}

#[test]
fn bad_command_lines_fail_with_one_line() {
    let run = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();
    for args in [
        &["serve", "--name", "x", "--initial-cluster", "a=h:1"][..],
        &["serve", "--name", "a", "--initial-cluster", "a=nohost"],
        &["serve", "--name", "a", "--initial-cluster", "a=127.0.0.1:1", "--heartbeat-ms", "0"],
        &["put", "k", "v", "--endpoints", "127.0.0.1:1"],
        &["get", "", "--endpoints", "127.0.0.1:1"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("raftkv: error: "), "{args:?}: {err}");
    }
    // Usage errors are clap's: non-zero, with usage.
    assert!(!run(&["put", "only-key"]).status.success());
}
