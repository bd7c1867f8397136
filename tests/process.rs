//! Real processes: `raftkv serve` children on loopback, driven by the `raftkv` CLI,
//! the leader killed with SIGKILL.
mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::procs::{Procs, BIN, WAIT};

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
    assert!(stdout(&put).starts_with("OK revision="), "{}", stdout(&put));
    let get = p.cli(&["get", "city"]);
    assert_eq!(stdout(&get), "Oslo");
    let missing = p.cli(&["get", "nowhere"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(stderr(&missing).lines().count(), 1, "{}", stderr(&missing));

    // kill -9 of the leader's process.
    p.kill(leader);
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
    assert_eq!(terminate(&mut p, follower), Some(0));
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
        // --check-config refuses what serving would refuse.
        &["serve", "--name", "raftkv-3", "--initial-cluster-size", "3", "--peer-service", "s", "--check-config"],
        &["serve", "--name", "raftkv", "--initial-cluster-size", "3", "--peer-service", "s", "--check-config"],
        &["serve", "--name", "a", "--initial-cluster", "a=h:1", "--client-addr", "nonsense", "--check-config"],
        &["transfer-leader", "--endpoints", "127.0.0.1:1"],
        &[
            "serve",
            "--name",
            "a",
            "--initial-cluster",
            "a=h:1",
            "--listen-metrics-urls",
            "https://h:1",
            "--check-config",
        ],
        &["member", "add", "no-url-here", "--endpoints", "127.0.0.1:1"],
        &["member", "remove", "x", "--endpoints", "127.0.0.1:1"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("raftkv: error: "), "{args:?}: {err}");
    }
    // Usage errors are clap's: non-zero, with usage.
    assert!(!run(&["put", "only-key"]).status.success());
    assert!(!run(&["serve", "--name", "a"]).status.success(), "no members given");
}

#[test]
fn check_config_prints_the_members_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("never-created");
    let out = Command::new(BIN)
        .args(["serve", "--peer-addr", "0.0.0.0:7100", "--check-config", "--data-dir"])
        .arg(&data)
        .env("RAFTKV_NAME", "raftkv-1")
        .env("RAFTKV_INITIAL_CLUSTER_SIZE", "3")
        .env("RAFTKV_PEER_SERVICE", "raftkv-peer")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("config OK: name=raftkv-1 "), "{text}");
    assert!(
        text.ends_with("members=raftkv-0=raftkv-0.raftkv-peer:7100,raftkv-1=raftkv-1.raftkv-peer:7100,raftkv-2=raftkv-2.raftkv-peer:7100"),
        "{text}"
    );
    assert!(!data.exists(), "a dry run creates no data directory");
}

/// Sends SIGTERM to node `i` and waits for its exit code.
fn terminate(p: &mut Procs, i: usize) -> Option<i32> {
    let mut child = p.children[i].take().unwrap();
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop the node");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn transfer_leader_cli_and_sigterm_of_the_leader_hand_leadership_over() {
    let mut p = Procs::start(3);
    let leader = p.wait_leader(None);
    let target = (leader + 1) % 3;
    let out = p.cli(&["transfer-leader", "--to", &p.names[target]]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with(&format!("OK leader={} term=", p.names[target])), "{}", stdout(&out));
    assert_eq!(p.wait_leader(None), target);
    let out = p.cli(&["transfer-leader", "--to", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unknown member \"nobody\""), "{}", stderr(&out));

    let put = p.cli(&["put", "before", "sigterm"]);
    assert!(put.status.success(), "{}", stderr(&put));
    // SIGTERM to the leader: it hands over before it exits (and says so), cleanly.
    assert_eq!(terminate(&mut p, target), Some(0));
    let log = std::fs::read_to_string(p.data.path().join(format!("{}.log", p.names[target]))).unwrap();
    assert!(log.contains("handed leadership over"), "{log}");
    let new = p.wait_leader(Some(&p.names[target].clone()));
    assert_ne!(new, target);
    let put = p.cli(&["put", "after", "sigterm"]);
    assert!(put.status.success(), "{}", stderr(&put));
    assert_eq!(stdout(&p.cli(&["get", "before"])), "sigterm");
}

/// Writers under load while nodes are killed with SIGKILL (the leader, others, and
/// all at once) and restarted from their data directories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_under_load_loses_nothing_acknowledged() {
    use raftkv::proto::{self as pb, key_value_client::KeyValueClient};
    use rand::{Rng, SeedableRng};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let mut p = Procs::start(3);
    p.wait_leader(None);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let addrs = p.clients.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let addr = &addrs[(w + n) % addrs.len()];
                let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect_timeout(Duration::from_millis(300))
                    .connect()
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let key = format!("w{w}-{n}");
                let mut req = tonic::Request::new(pb::StoreRequest { key: key.clone(), value: "x".into() });
                req.set_timeout(Duration::from_millis(1500));
                if let Ok(r) = KeyValueClient::new(ch).store(req).await {
                    acked.push((r.into_inner().index, key));
                }
            }
            acked
        }));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        if round == 3 {
            for i in 0..3 {
                p.kill(i);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            for i in 0..3 {
                p.spawn(i);
            }
        } else {
            let victim = if round % 2 == 0 { p.wait_leader(None) } else { rng.gen_range(0..3) };
            p.kill(victim);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(100..800))).await;
            p.spawn(victim);
        }
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 20, "too few writes were acknowledged to mean anything: {}", acked.len());

    // Converge: a final write, then every node has applied it.
    let leader = p.wait_leader(None);
    let mut c = KeyValueClient::connect(format!("http://{}", p.clients[leader])).await.unwrap();
    let fin = c.store(pb::StoreRequest { key: "final".into(), value: "1".into() }).await.unwrap().into_inner();
    let mut views = Vec::new();
    for addr in &p.clients {
        let mut c = KeyValueClient::connect(format!("http://{addr}")).await.unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let st = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
            if st.applied_index >= fin.index {
                break;
            }
            assert!(Instant::now() < deadline, "{addr} did not catch up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        views.push(c.retrieve(pb::RetrieveRequest::default()).await.unwrap().into_inner().entries);
    }
    let by_index: std::collections::BTreeMap<u64, String> = views[0].iter().map(|e| (e.index, e.key.clone())).collect();
    for (index, key) in &acked {
        assert_eq!(by_index.get(index), Some(key), "acknowledged {key}@{index} lost");
    }
    assert_eq!(views[1], views[0]);
    assert_eq!(views[2], views[0]);
    // Votes survive restarts: no term ever had two winners.
    let won = p.election_winners();
    assert!(!won.is_empty());
    for (term, names) in &won {
        assert_eq!(names.len(), 1, "term {term} was won by {names:?}");
    }
}

/// kill -9 under write load while the history is compacted every few hundred
/// milliseconds (auto-compaction) and the engine checkpointed every 40 entries, so
/// kills land in the middle of applying, checkpointing and compacting: every node comes
/// back to the same keyspace (etcd's HashKV agrees at one revision) and every
/// acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_compaction_and_checkpoints_converges_to_one_keyspace() {
    use raftkv::proto::{self as pb, key_value_client::KeyValueClient};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let mut p = Procs::start_with(3, &["--auto-compaction-retention", "1s"]);
    p.wait_leader(None);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let addrs = p.clients.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let addr = &addrs[(w + n) % addrs.len()];
                let Ok(mut c) = KeyValueClient::connect(format!("http://{addr}")).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                // A few keys rewritten over and over, so compaction has history to drop.
                let key = format!("w{w}-{}", n % 20);
                let value = format!("{n}");
                let mut req = tonic::Request::new(pb::StoreRequest { key: key.clone(), value: value.clone() });
                req.set_timeout(Duration::from_millis(1500));
                if c.store(req).await.is_ok() {
                    acked.push((key, n));
                }
            }
            acked
        }));
    }
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        let victim = if round % 2 == 0 { p.wait_leader(None) } else { round % 3 };
        p.kill(victim);
        tokio::time::sleep(Duration::from_millis(300)).await;
        p.spawn(victim);
    }
    tokio::time::sleep(Duration::from_millis(900)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 20, "too few writes were acknowledged to mean anything: {}", acked.len());

    let leader = p.wait_leader(None);
    let mut c = KeyValueClient::connect(format!("http://{}", p.clients[leader])).await.unwrap();
    let fin = c.store(pb::StoreRequest { key: "final".into(), value: "1".into() }).await.unwrap().into_inner();
    let mut hashes = Vec::new();
    let mut compacted = 0;
    for addr in &p.clients {
        let mut c = KeyValueClient::connect(format!("http://{addr}")).await.unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let st = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
            if st.applied_index >= fin.index {
                compacted = compacted.max(st.compact_revision);
                break;
            }
            assert!(Instant::now() < deadline, "{addr} did not catch up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let h = c.hash(pb::HashRequest { revision: fin.revision }).await.unwrap().into_inner();
        hashes.push(h.hash);
        // The newest acknowledged value of every key is there (a later write of it may
        // have been acknowledged to no one, so it may be newer still).
        let mut newest = std::collections::BTreeMap::new();
        for (key, n) in &acked {
            let e = newest.entry(key.clone()).or_insert(0);
            *e = (*e).max(*n);
        }
        for (key, n) in newest {
            let get = pb::GetRequest { key: key.clone(), consistency: 1, revision: 0 };
            let got = c.get(get).await.unwrap().into_inner();
            let value: usize = got.value.parse().unwrap_or(0);
            assert!(got.found && value >= n, "{addr}: {key} holds {:?}, acknowledged {n}", got.value);
        }
    }
    assert!(compacted > 0, "auto-compaction ran during the test");
    assert!(hashes.iter().all(|h| *h == hashes[0]), "members disagree at revision {}: {hashes:?}", fin.revision);
}

/// A follower that missed more than the leader keeps in its log catches up through
/// InstallSnapshot; it is killed with SIGKILL again and again while it receives,
/// builds and swaps in the snapshot, and still ends at the leader's state (the same
/// keyspace hash), with every key the leader acknowledged and one engine on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_snapshot_install_converges_to_the_leaders_state() {
    use raftkv::proto::{self as pb, key_value_client::KeyValueClient};

    let mut p = Procs::start(3);
    let leader = p.wait_leader(None);
    let behind = (leader + 1) % 3;
    p.kill(behind);
    // More than the 5,000 entries a leader keeps for followers a little behind.
    let others: Vec<String> = (0..3).filter(|&i| i != behind).map(|i| p.clients[i].clone()).collect();
    let svg = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(BIN)
        .args(["bench", "--clients", "32", "--requests", "7000", "--sequential-keys", "--value-size", "512"])
        .args(["--endpoints", &others.join(",")])
        .arg("--svg")
        .arg(svg.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "bench: {}", stderr(&out));
    // Its chart draws every acknowledged write in the latency histogram.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("done: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary in: {stdout}"));
    let chart = std::fs::read_to_string(svg.path()).unwrap();
    let drawn: u64 =
        chart.split(r#"data-count=""#).skip(1).filter_map(|r| r.split('"').next()?.parse::<u64>().ok()).sum();
    assert!(chart.starts_with("<svg") && chart.contains(r#"class="throughput""#), "{chart}");
    assert_eq!(drawn, ok, "the chart's histogram holds {drawn} of {ok} writes");
    // Kills at different points: while the stream arrives, while it is built into a new
    // engine, around the swap, and after.
    for wait_ms in [60, 110, 160, 220, 300, 450, 700, 1200] {
        p.spawn(behind);
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        p.kill(behind);
    }
    p.spawn(behind);
    let leader = p.wait_leader(None);
    let mut c = KeyValueClient::connect(format!("http://{}", p.clients[leader])).await.unwrap();
    let fin = c.store(pb::StoreRequest { key: "final".into(), value: "1".into() }).await.unwrap().into_inner();
    let mut hashes = Vec::new();
    for addr in &p.clients {
        let mut c = KeyValueClient::connect(format!("http://{addr}")).await.unwrap();
        let deadline = Instant::now() + WAIT;
        while c.status(pb::StatusRequest {}).await.unwrap().into_inner().applied_index < fin.index {
            assert!(Instant::now() < deadline, "{addr} did not catch up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        hashes.push(c.hash(pb::HashRequest { revision: fin.revision }).await.unwrap().into_inner().hash);
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "members disagree at revision {}: {hashes:?}", fin.revision);
    let log = std::fs::read_to_string(p.data.path().join(format!("{}.log", p.names[behind]))).unwrap();
    assert!(log.contains("installing the leader's snapshot"), "the follower caught up by snapshot");
    // The keys of the bench are all there on the follower (read from its own state).
    let mut f = KeyValueClient::connect(format!("http://{}", p.clients[behind])).await.unwrap();
    for i in [0u64, 3499, 6999] {
        let get = pb::GetRequest { key: format!("key{i:08}"), consistency: 1, revision: 0 };
        assert!(f.get(get).await.unwrap().into_inner().found, "key{i:08}");
    }
    // Killed builds and downloads leave nothing behind: one engine, no partial files.
    let dir = p.data.path().join(&p.names[behind]);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| (n.starts_with("kv-") && !n.ends_with(".current")) || n.ends_with(".receiving"))
        .collect();
    assert_eq!(left.len(), 1, "one engine in {}: {left:?}", dir.display());
}

/// `raftkv get --prefix` and `raftkv watch` (etcd's Range and Watch underneath): the
/// watch replays from a revision, follows new writes, and resumes on another node
/// when the one it watches through is killed, printing each change once.
#[test]
fn cli_get_prefix_and_watch_follow_the_keyspace_across_a_kill() {
    use std::io::BufRead;
    let mut p = Procs::start(3);
    p.wait_leader(None);
    for (k, v) in [("app/a", "1"), ("app/b", "2"), ("other", "x")] {
        assert!(p.cli(&["put", k, v]).status.success());
    }
    let got = p.cli(&["get", "app/", "--prefix"]);
    assert_eq!(stdout(&got), "app/a = 1\napp/b = 2", "{}", stderr(&got));
    let none = p.cli(&["get", "nothing/", "--prefix"]);
    assert_eq!(none.status.code(), Some(1));

    // The watch goes through the first endpoint; the others are there to resume on.
    let watched = 0;
    let order: Vec<String> = (0..3).map(|i| p.clients[(watched + i) % 3].clone()).collect();
    let mut watch = Command::new(BIN)
        .args(["watch", "app/", "--prefix", "--rev", "1", "--endpoints", &order.join(",")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = watch.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let next = |what: &str| {
        let l = lines.recv_timeout(WAIT).unwrap_or_else(|_| panic!("no line for {what}"));
        assert!(l.starts_with(what), "{l:?} is not {what}");
    };
    next("PUT    app/a = 1");
    next("PUT    app/b = 2");
    assert!(p.cli(&["delete", "app/a"]).status.success());
    next("DELETE app/a");
    p.kill(watched);
    let _ = p.wait_leader(Some(&p.names[watched].clone()));
    assert!(p.cli(&["put", "app/c", "3"]).status.success());
    next("PUT    app/c = 3");
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(lines.recv_timeout(Duration::from_millis(200)).is_err(), "no change printed twice");
}

/// A paused leader (SIGSTOP: its connections stay open, nothing answers) holds the
/// batches of writes a follower had forwarded to it until their deadlines. Writes that
/// reach the follower meanwhile queue behind those batches; once the follower knows the
/// next leader they go there and succeed while the old one is still paused, rather
/// than waiting out its batches and failing at their own deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_behind_a_paused_leader_go_to_the_next_one() {
    use raftkv::proto::{self as pb, key_value_client::KeyValueClient};

    // Elections take a second at least, so the writes below reach the follower before
    // it can know another leader.
    let p = Procs::start_with(3, &["--election-timeout-ms", "1000", "--heartbeat-ms", "100"]);
    tokio::task::block_in_place(|| p.wait_leader(None));
    let client_of = |i: usize| {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", p.clients[i])).unwrap().connect_lazy();
        KeyValueClient::new(ch)
    };
    let put = |i: usize, key: String| {
        let mut c = client_of(i);
        async move {
            let mut req = tonic::Request::new(pb::StoreRequest { key, value: "v".into() });
            req.set_timeout(Duration::from_secs(10));
            c.store(req).await
        }
    };
    // A follower, and the leader it knows (and has forwarded a write to).
    let deadline = Instant::now() + WAIT;
    let (f, old) = loop {
        let stored = put(0, "before".into()).await;
        let st = client_of(0).status(pb::StatusRequest {}).await.map(|r| r.into_inner());
        if let (Ok(_), Ok(st)) = (&stored, &st) {
            match p.names.iter().position(|n| *n == st.leader) {
                Some(0) => break (1, 0),
                Some(l) => break (0, l),
                None => {}
            }
        }
        assert!(Instant::now() < deadline, "no leader known: {stored:?} {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let forwarded = put(f, "forwarded".into()).await;
    assert!(forwarded.is_ok(), "{forwarded:?}");

    p.signal(old, libc::SIGSTOP);
    // One write at a time, each while the ones before wait: the first two fill the
    // batches the follower sends at once (they stay with the paused leader), the rest
    // queue behind them.
    let mut writes = Vec::new();
    for n in 0..5 {
        writes.push(tokio::spawn(put(f, format!("during-{n}"))));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut outcomes = Vec::new();
    for w in writes.drain(2..) {
        outcomes.push(w.await.unwrap());
    }
    p.signal(old, libc::SIGCONT);
    for (n, o) in outcomes.iter().enumerate() {
        assert!(o.is_ok(), "during-{}, queued behind the paused leader's batches, failed: {o:?}", n + 2);
    }

    // Every write reported done is there for everyone: linearizable reads through the
    // third node.
    let other = (0..3).find(|&i| i != old && i != f).unwrap();
    let read = |key: String| {
        let mut c = client_of(other);
        async move { c.get(pb::GetRequest { key, ..Default::default() }).await.map(|r| r.into_inner()) }
    };
    for w in writes {
        outcomes.insert(0, w.await.unwrap());
    }
    for (n, o) in outcomes.iter().enumerate() {
        if o.is_ok() {
            let got = read(format!("during-{n}")).await;
            assert!(got.as_ref().is_ok_and(|r| r.found), "during-{n} was acknowledged: {got:?}");
        }
    }
}

/// A leader killed, restarted and leading again (as in a rolling restart): the
/// follower's stream of forwarded writes to it broke while idle, and is replaced, so
/// writes through the follower reach it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_to_a_restarted_leader_opens_a_new_stream() {
    use raftkv::proto::{self as pb, key_value_client::KeyValueClient};

    let mut p = Procs::start(3);
    let leader = tokio::task::block_in_place(|| p.wait_leader(None));
    let f = (leader + 1) % 3;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", p.clients[f])).unwrap().connect_lazy();
    let client = KeyValueClient::new(ch);
    let put = |key: &str| {
        let mut c = client.clone();
        let mut req = tonic::Request::new(pb::StoreRequest { key: key.into(), value: "v".into() });
        req.set_timeout(Duration::from_secs(10));
        async move { c.store(req).await }
    };
    let first = put("before").await;
    assert!(first.is_ok(), "{first:?}");

    p.kill(leader);
    tokio::task::block_in_place(|| p.wait_leader(Some(&p.names[leader])));
    p.spawn(leader);
    // Leadership back to the restarted node, once it has caught up enough to take it.
    let deadline = Instant::now() + WAIT;
    tokio::task::block_in_place(|| loop {
        let out = p.cli(&["transfer-leader", "--to", &p.names[leader]]);
        if out.status.success() && p.wait_leader(None) == leader {
            break;
        }
        assert!(Instant::now() < deadline, "no transfer to the restarted node: {}", stderr(&out));
        std::thread::sleep(Duration::from_millis(200));
    });
    let after = put("after").await;
    assert!(after.is_ok(), "a write forwarded to the restarted leader failed: {after:?}");
    let got = client.clone().get(pb::GetRequest { key: "after".into(), ..Default::default() }).await;
    assert_eq!(got.map(|r| r.into_inner().value).ok(), Some("v".to_string()));
}
