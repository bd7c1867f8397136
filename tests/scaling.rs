//! A StatefulSet that scales by itself, on an in-process cluster: a node the cluster
//! does not list joins as a learner and promotes itself once caught up
//! (`--join-as-learner`), whoever leads; a member whose data was lost is still refused; a
//! stopping pod asks the Kubernetes API (here a fake one, over HTTPS with a service
//! account's token and CA) whether it was scaled away, and removes itself if so
//! (`--leave-on-scale-down`). Writers keep writing: nothing acknowledged may be lost.
mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use raftkv::kube::StatefulSet;
use raftkv::server::scaling::{leave_if_scaled_down, Leaving};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_cluster_does_not_list_joins_as_a_learner_and_promotes_itself() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut client = c.client(leader).await;
    for i in 0..50 {
        store(&mut client, &format!("before{i}"), "v").await.unwrap();
    }
    let writers = Writers::start(&c, &[0, 1, 2]).await;
    // Nobody added it: it asks to be added, as a learner, and then to be promoted.
    let (n4, _) = c.new_member("n4").await;
    c.set_join_as_learner(n4, true);
    c.try_start(n4).await.expect("the unlisted node joins");
    let id4 = c.handle(n4).id();
    assert!(id4 > 3, "a new id, never a founding member's: {id4}");
    wait_membership(&c, "n4 promoted to a voter", |m| m.is_voter(id4) && m.voter_count() == 4).await;
    let (acked, errors) = writers.finish().await;
    assert!(errors.is_empty(), "writes failed while the node joined: {errors:?}");
    let commit = c.handle(leader).status().commit;
    c.wait_applied(&[n4], commit).await;
    assert_all_present(&c, n4, &acked).await;
    assert!(c.handle(n4).store().read().unwrap().get("before49", 0).unwrap().is_some());

    // The next one asks the founders while n4, which it has never heard of, leads:
    // the founders name the leader, and it asks n4.
    let n4_name = c.names[n4].clone();
    c.handle(leader).transfer_leader(Some(&n4_name), WAIT).await.expect("leadership moves to n4");
    let (n5, _) = c.new_member("n5").await;
    c.set_join_as_learner(n5, true);
    c.try_start(n5).await.expect("n5 joins through the leader the founders name");
    let id5 = c.handle(n5).id();
    wait_membership(&c, "n5 promoted to a voter", |m| m.is_voter(id5) && m.voter_count() == 5).await;
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_data_was_lost_is_refused_even_with_join_as_learner() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    c.wait_started().await;
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let old_id = c.handle(victim).id();
    c.stop(victim).await;
    std::fs::remove_dir_all(c.data_dir(victim)).unwrap();
    c.set_bootstrap_timeout(victim, WAIT);
    c.set_join_as_learner(victim, true);
    // An empty directory of a started member is lost data, or a wrong volume: never
    // repaired by removing the member automatically.
    let e = c.try_start(victim).await.expect_err("refused");
    assert!(e.to_string().contains("already been bootstrapped"), "{e}");
    assert!(c.handle(leader).membership().is_voter(old_id), "the member was left as it was");
    c.shutdown().await;
}

/// A fake Kubernetes API server over HTTPS: answers GET of one StatefulSet with the
/// replicas it is set to, to the bearer of one token.
struct FakeApi {
    replicas: Arc<AtomicU32>,
    sts: StatefulSet,
    _dir: tempfile::TempDir,
}

const TOKEN: &str = "a-service-account-token";

impl FakeApi {
    async fn start(replicas: u32) -> FakeApi {
        use hyper::service::service_fn;
        let dir = tempfile::tempdir().unwrap();
        let pki = raftkv::tls::dev::DevPki::create(dir.path(), "kube-ca").unwrap();
        let (cert, key) = pki.issue("kubernetes", &["127.0.0.1"]).unwrap();
        let account = dir.path().join("serviceaccount");
        std::fs::create_dir(&account).unwrap();
        std::fs::copy(pki.ca(), account.join("ca.crt")).unwrap();
        std::fs::write(account.join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(account.join("namespace"), "db").unwrap();
        let files = raftkv::tls::TlsFiles { cert, key, trusted_ca: None, client_cert_auth: false };
        let mut tls = (*raftkv::tls::server_config(&files).unwrap()).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let replicas = Arc::new(AtomicU32::new(replicas));
        let answer = replicas.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, answer) = (acceptor.clone(), answer.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let serve = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let ok_path = req.uri().path() == "/apis/apps/v1/namespaces/db/statefulsets/raftkv";
                        let ok_token = req.headers().get("authorization").and_then(|v| v.to_str().ok())
                            == Some(&format!("Bearer {TOKEN}"));
                        let (status, body) = match (ok_path, ok_token) {
                            (_, false) => (401, r#"{"kind":"Status","reason":"Unauthorized"}"#.to_string()),
                            (false, _) => (404, r#"{"kind":"Status","reason":"NotFound"}"#.to_string()),
                            _ => (
                                200,
                                format!(
                                    r#"{{"kind":"StatefulSet","spec":{{"replicas":{}}},"status":{{"replicas":9}}}}"#,
                                    answer.load(Ordering::SeqCst)
                                ),
                            ),
                        };
                        let r = hyper::Response::builder()
                            .status(status)
                            .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
                            .unwrap();
                        async move { Ok::<_, std::convert::Infallible>(r) }
                    });
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, serve).await;
                });
            }
        });
        let sts = StatefulSet { host: "127.0.0.1".into(), port, account_dir: account, name: "raftkv".into() };
        FakeApi { replicas, sts, _dir: dir }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_scaled_away_removes_itself_and_one_restarted_stays() {
    let api = FakeApi::start(4).await;
    let mut c = TestCluster::start(4).await;
    let leader = c.wait_leader().await;
    c.wait_started().await;
    // The pod that leaves first leads: it must hand over once its removal commits.
    let n4 = c.names[3].clone();
    c.handle(leader).transfer_leader(Some(&n4), WAIT).await.expect("leadership moves to n4");
    let writers = Writers::start(&c, &[0, 1]).await;
    let budget = Duration::from_secs(10);

    // Still wanted (ordinal 3 of 4 replicas): a restart, it stays.
    let h = c.handle(3).clone();
    assert_eq!(leave_if_scaled_down(&h, &api.sts, (3, 2), budget).await, Leaving::Stays { replicas: 4 });
    // Scaled to 0: a pause, every pod stays a member.
    api.replicas.store(0, Ordering::SeqCst);
    assert_eq!(leave_if_scaled_down(&h, &api.sts, (3, 2), budget).await, Leaving::Stays { replicas: 0 });
    api.replicas.store(4, Ordering::SeqCst);
    // The API cannot be asked (a wrong token): it stays, and says why.
    let mut stranger = api.sts.clone();
    let wrong = tempfile::tempdir().unwrap();
    for f in ["ca.crt", "namespace"] {
        std::fs::copy(api.sts.account_dir.join(f), wrong.path().join(f)).unwrap();
    }
    std::fs::write(wrong.path().join("token"), "not-the-token").unwrap();
    stranger.account_dir = wrong.path().into();
    match leave_if_scaled_down(&h, &stranger, (3, 2), budget).await {
        Leaving::Unknown(e) => assert!(e.contains("401"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.handle(0).membership().voter_count(), 4);

    // Scaled down to 3, then to 2: the pods with ordinals 3 and then 2 leave, the
    // leader among them if it is one (it steps down once its removal commits).
    let mut gone = Vec::new();
    for ordinal in [3usize, 2] {
        api.replicas.store(ordinal as u32, Ordering::SeqCst);
        let h = c.handle(ordinal).clone();
        let id = h.id();
        let left = leave_if_scaled_down(&h, &api.sts, (ordinal as u32, 2), budget).await;
        assert_eq!(left, Leaving::Left { replicas: ordinal as u32 });
        c.stop_gracefully(ordinal).await;
        gone.push(id);
        wait_membership(&c, "the departed member gone", |m| !m.contains(id)).await;
    }
    wait_membership(&c, "two voters left", |m| m.voter_count() == 2 && gone.iter().all(|&id| !m.contains(id))).await;
    // Below the founding size (2 here), pods stop as members: shrinking further is
    // done by hand.
    api.replicas.store(1, Ordering::SeqCst);
    assert_eq!(leave_if_scaled_down(c.handle(1), &api.sts, (1, 2), budget).await, Leaving::Founder);
    assert_eq!(c.handle(0).membership().voter_count(), 2);
    let (acked, errors) = writers.finish().await;
    assert!(errors.is_empty(), "writes failed while members left: {errors:?}");
    let survivors = c.live();
    assert_eq!(survivors, vec![0, 1]);
    for i in survivors {
        assert_all_present(&c, i, &acked).await;
    }
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_learner_votes_only_once_its_start_is_recorded() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    c.wait_started().await;
    // With a member down, the start of a new member cannot be recorded (every member
    // must answer first), so it must stay a learner, caught up or not.
    let down = (0..3).find(|&i| i != leader).unwrap();
    c.stop(down).await;
    let (n4, _) = c.new_member("n4").await;
    c.set_join_as_learner(n4, true);
    c.try_start(n4).await.expect("joins as a learner");
    let id4 = c.handle(n4).id();
    let commit = c.handle(leader).status().commit;
    c.wait_applied(&[n4], commit).await;
    // Several promotion rounds (two election timeouts each) after catching up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = c.handle(leader).membership();
    assert!(m.is_learner(id4) && !m.members[&id4].started, "promoted before its start was recorded: {m:?}");
    // The member back: the start is recorded, then the promotion follows.
    c.restart(down).await;
    wait_membership(&c, "n4 started and voting", |m| m.is_voter(id4) && m.members[&id4].started).await;
    c.assert_one_leader_per_term();
    c.shutdown().await;
}
