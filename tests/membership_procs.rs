//! Membership changes with the `raftkv member` CLI against real `raftkv serve`
//! processes: a node joins as a learner and is promoted; a killed member whose data
//! directory was wiped is refused at start (one line, non-zero exit) until it is
//! removed and added again, and then catches up.
mod common;

use std::process::{Command, Output};
use std::time::Instant;

use common::procs::{Procs, BIN, WAIT};

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// Runs `raftkv member ...` until it succeeds, while the refusal says to retry
/// (another change in progress, a learner still catching up).
fn member(p: &Procs, args: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let o = p.cli(&[&["member"], args].concat());
        if o.status.success() {
            return out(&o);
        }
        let said = out(&o);
        let retry = said.contains("already in progress") || said.contains("not in sync");
        assert!(retry && Instant::now() < deadline, "raftkv member {args:?}: {said}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A serializable get through node `i` alone, once it has the key.
fn wait_value_at(p: &Procs, i: usize, key: &str, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let o = Command::new(BIN)
            .args(["get", key, "--serializable", "--endpoints", &p.clients[i]])
            .output()
            .expect("raftkv runs");
        if String::from_utf8_lossy(&o.stdout).trim() == want {
            return;
        }
        assert!(Instant::now() < deadline, "{key} never reached node {i}: {}", out(&o));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn members_join_and_a_wiped_member_is_refused_until_replaced() {
    let mut p = Procs::start(3);
    p.wait_leader(None);
    for i in 0..30 {
        let o = p.cli(&["put", &format!("k{i}"), "v"]);
        assert!(o.status.success(), "{}", out(&o));
    }

    // A learner joins, catches up, and is promoted.
    let p4 = p.add_node("p4", &["--initial-cluster-state", "existing"]);
    let url = format!("http://{}", p.peers[p4]);
    let said = member(&p, &["add", &format!("p4={url}"), "--learner"]);
    assert!(said.contains(" added") && said.contains("learner"), "{said}");
    p.spawn(p4);
    wait_value_at(&p, p4, "k29", "v");
    member(&p, &["promote", "p4"]);
    let list = member(&p, &["list"]);
    assert!(list.lines().any(|l| l.contains("p4") && l.ends_with("voter")), "{list}");
    let status = out(&p.cli(&["status"]));
    assert!(status.lines().any(|l| l.starts_with("voters:") && l.contains("p4")), "{status}");

    // A member killed and its data directory wiped: refused as a new member.
    let leader = p.wait_leader(None);
    let victim = (0..3).find(|&i| i != leader).unwrap();
    p.kill(victim);
    std::fs::remove_dir_all(p.data.path().join(&p.names[victim])).unwrap();
    p.spawn(victim);
    assert_ne!(p.wait_exit(victim), Some(0), "a wiped member started");
    let log = p.log(victim);
    assert!(log.contains("has already been bootstrapped"), "{log}");
    assert!(!p.data.path().join(&p.names[victim]).join("meta").exists(), "the refused start claimed the directory");

    // Removed and added again, it joins and catches up; writes go on meanwhile.
    let name = p.names[victim].clone();
    member(&p, &["remove", &name]);
    let o = p.cli(&["put", "after", "removal"]);
    assert!(o.status.success(), "{}", out(&o));
    member(&p, &["add", &format!("{name}=http://{}", p.peers[victim])]);
    p.own[victim] = vec!["--initial-cluster-state".into(), "existing".into()];
    p.spawn(victim);
    wait_value_at(&p, victim, "after", "removal");
    wait_value_at(&p, victim, "k0", "v");
}
