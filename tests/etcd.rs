//! etcd's v3 API as a client sees it, through the generated stubs (tests/etcdctl.rs
//! drives the same with etcdctl): one keyspace with raftkv's own API, ranges,
//! transactions (compare-and-swap under contention), compaction and etcd's errors.
mod common;

use std::time::Duration;

use common::TestCluster;
use raftkv::proto::etcd::etcdserverpb::{
    self as epb, compare::CompareResult, compare::CompareTarget, compare::TargetUnion, kv_client::KvClient,
    request_op::Request as Op,
};
use raftkv::proto::{self as pb};
use tonic::transport::Channel;
use tonic::Code;

async fn kv(c: &TestCluster, i: usize) -> KvClient<Channel> {
    KvClient::connect(format!("http://{}", c.client_addrs[i])).await.unwrap()
}

fn put(k: &str, v: &str) -> epb::PutRequest {
    epb::PutRequest { key: k.into(), value: v.into(), ..Default::default() }
}

fn prefix(p: &str) -> epb::RangeRequest {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    epb::RangeRequest { key: p.into(), range_end: end, ..Default::default() }
}

fn keys(r: &epb::RangeResponse) -> Vec<String> {
    r.kvs.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_and_raftkv_apis_share_one_keyspace_and_ranges_work_like_etcd() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut e = kv(&c, (leader + 1) % 3).await;
    let mut own = c.client((leader + 2) % 3).await;
    common::store(&mut own, "app/b", "from-raftkv").await.unwrap();
    let r = e.put(epb::PutRequest { prev_kv: true, ..put("app/a", "1") }).await.unwrap().into_inner();
    assert!(r.prev_kv.is_none());
    let r = e.put(epb::PutRequest { prev_kv: true, ..put("app/a", "2") }).await.unwrap().into_inner();
    assert_eq!(r.prev_kv.unwrap().value, b"1");
    let rev = r.header.unwrap().revision;
    e.put(put("other", "x")).await.unwrap();
    let got = own.get(pb::GetRequest { key: "app/a".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!((got.value.as_str(), got.version, got.mod_revision as i64), ("2", 2, rev), "raftkv sees etcd's put");

    let r = e.range(prefix("app/")).await.unwrap().into_inner();
    assert_eq!(keys(&r), ["app/a", "app/b"]);
    assert_eq!(r.kvs[1].value, b"from-raftkv", "etcd sees raftkv's store");
    let limited = e.range(epb::RangeRequest { limit: 1, ..prefix("app/") }).await.unwrap().into_inner();
    assert_eq!((keys(&limited).len(), limited.count, limited.more), (1, 2, true));
    let desc = epb::RangeRequest { sort_order: 2, sort_target: 3, ..prefix("app/") };
    let r = e.range(desc).await.unwrap().into_inner();
    assert_eq!(keys(&r), ["app/a", "app/b"], "by mod revision, newest first");
    let all = epb::RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..Default::default() };
    assert_eq!(e.range(all).await.unwrap().into_inner().count, 3);
    // A count shows no key and so leaves none out, whatever the limit (as etcd 3.4).
    let counted = e.range(epb::RangeRequest { count_only: true, limit: 1, ..prefix("app/") }).await.unwrap();
    let counted = counted.into_inner();
    assert_eq!((counted.kvs.len(), counted.count, counted.more), (0, 2, false));
    let past = epb::RangeRequest { revision: rev - 1, ..prefix("app/a") };
    let r = e.range(epb::RangeRequest { key: b"app/a".to_vec(), range_end: vec![], ..past }).await.unwrap();
    assert_eq!(r.into_inner().kvs[0].value, b"1", "a past revision");

    let d = epb::DeleteRangeRequest { key: b"app/".to_vec(), range_end: b"app0".to_vec(), prev_kv: true };
    let r = e.delete_range(d).await.unwrap().into_inner();
    assert_eq!((r.deleted, r.prev_kvs.len()), (2, 2));
    assert_eq!(e.range(prefix("app/")).await.unwrap().into_inner().count, 0);
    c.shutdown().await;
}

fn cas(key: &str, expect: Option<&str>, new: &str) -> epb::TxnRequest {
    let compare = match expect {
        Some(v) => epb::Compare {
            key: key.into(),
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            target_union: Some(TargetUnion::Value(v.into())),
            ..Default::default()
        },
        // "the key does not exist": its create revision is 0.
        None => epb::Compare {
            key: key.into(),
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..Default::default()
        },
    };
    let get = epb::RangeRequest { key: key.into(), ..Default::default() };
    epb::TxnRequest {
        compare: vec![compare],
        success: vec![epb::RequestOp { request: Some(Op::RequestPut(put(key, new))) }],
        failure: vec![epb::RequestOp { request: Some(Op::RequestRange(get)) }],
    }
}

/// Contenders take a lock with compare-and-swap (create if absent) through every
/// node, hold it, and release it with another CAS: never two holders, and every
/// acquisition shows in the history as one put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_lets_exactly_one_contender_hold_the_lock() {
    let c = TestCluster::start(3).await;
    c.wait_leader().await;
    let holders = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..6 {
        let mut e = kv(&c, w % 3).await;
        let holders = holders.clone();
        tasks.push(tokio::spawn(async move {
            let me = format!("w{w}");
            let mut acquired = 0;
            while acquired < 5 {
                let r = e.txn(cas("lock", None, &me)).await.unwrap().into_inner();
                if !r.succeeded {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                assert_eq!(holders.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0, "two holders");
                tokio::time::sleep(Duration::from_millis(3)).await;
                holders.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                // Release: delete only if still ours.
                let mine = epb::Compare {
                    key: b"lock".to_vec(),
                    target: CompareTarget::Value as i32,
                    target_union: Some(TargetUnion::Value(me.clone().into())),
                    ..Default::default()
                };
                let del = epb::DeleteRangeRequest { key: b"lock".to_vec(), ..Default::default() };
                let release = epb::TxnRequest {
                    compare: vec![mine],
                    success: vec![epb::RequestOp { request: Some(Op::RequestDeleteRange(del)) }],
                    failure: vec![],
                };
                assert!(e.txn(release).await.unwrap().into_inner().succeeded, "{me} released a lock it held");
                acquired += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let leader = c.wait_leader().await;
    let history = c.retrieve(leader).await.entries;
    let puts = history.iter().filter(|e| e.key == "lock" && e.op == pb::Op::Put as i32).count();
    assert_eq!(puts, 30, "one put per acquisition");
    c.shutdown().await;
}

#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, code: Code, text: &str) {
    let s = r.unwrap_err();
    assert_eq!((s.code(), s.message()), (code, text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_etcds_errors_and_change_nothing() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut e = kv(&c, leader).await;
    e.put(put("k", "v")).await.unwrap();
    let before = e.range(epb::RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() }).await;
    let before = before.unwrap().into_inner();
    refused(e.put(put("", "x")).await, Code::InvalidArgument, "etcdserver: key is not provided");
    let leased = epb::PutRequest { lease: 7, ..put("k", "w") };
    refused(e.put(leased).await, Code::NotFound, "etcdserver: requested lease not found");
    let ignore = epb::PutRequest { ignore_value: true, ..put("k", "w") };
    refused(e.put(ignore).await, Code::InvalidArgument, "etcdserver: value is provided");
    let missing = epb::PutRequest { ignore_value: true, ..put("nokey", "") };
    refused(e.put(missing).await, Code::InvalidArgument, "etcdserver: key not found");
    let big = put("k", &"x".repeat((1 << 20) + 1));
    refused(e.put(big).await, Code::InvalidArgument, "etcdserver: request is too large");
    let bin = epb::PutRequest { value: vec![0xff, 0xfe], ..put("k", "") };
    refused(e.put(bin).await, Code::InvalidArgument, "raftkv: values must be UTF-8 text (a raftkv limit)");

    let op = || epb::RequestOp { request: Some(Op::RequestPut(put("t", "1"))) };
    let many = epb::TxnRequest { success: (0..129).map(|_| op()).collect(), ..Default::default() };
    refused(e.txn(many).await, Code::InvalidArgument, "etcdserver: too many operations in txn request");
    let dup = epb::TxnRequest { success: vec![op(), op()], ..Default::default() };
    refused(e.txn(dup).await, Code::InvalidArgument, "etcdserver: duplicate key given in txn request");

    let rev = e.put(put("k", "v2")).await.unwrap().into_inner().header.unwrap().revision;
    e.compact(epb::CompactionRequest { revision: rev, physical: false }).await.unwrap();
    let old = epb::RangeRequest { key: b"k".to_vec(), revision: rev - 1, ..Default::default() };
    refused(e.range(old).await, Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted");
    let future = epb::RangeRequest { key: b"k".to_vec(), revision: rev + 100, ..Default::default() };
    refused(e.range(future).await, Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision");
    let after = e.range(epb::RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() }).await;
    let after = after.unwrap().into_inner();
    assert_eq!(after.count, before.count, "no refused write created a key");
    assert_eq!(after.header.unwrap().revision, rev, "only the one good put made a revision");
    c.shutdown().await;
}

/// Collects events of keys under `w/` from `node`, starting at `from`, until `want`
/// events arrived or the stream broke; returns (revision, key, is_put) of each.
async fn watch_from(c: &TestCluster, node: usize, from: i64, want: usize, got: &mut Vec<(i64, String, bool)>) {
    use raftkv::proto::etcd::etcdserverpb::{watch_client::WatchClient, watch_request::RequestUnion};
    let Ok(mut client) = WatchClient::connect(format!("http://{}", c.client_addrs[node])).await else { return };
    let create = epb::WatchCreateRequest {
        key: b"w/".to_vec(),
        range_end: b"w0".to_vec(),
        start_revision: from,
        ..Default::default()
    };
    let req = epb::WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) };
    // The request stream stays open (a closed one ends the watch).
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(req).await.unwrap();
    let Ok(stream) = client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await else { return };
    let mut stream = stream.into_inner();
    let first = stream.message().await;
    assert!(matches!(&first, Ok(Some(r)) if r.created), "{first:?}");
    while got.len() < want {
        match tokio::time::timeout(Duration::from_secs(20), stream.message()).await {
            Ok(Ok(Some(r))) => {
                assert!(!r.canceled, "canceled: {r:?}");
                for e in r.events {
                    let kv = e.kv.unwrap();
                    got.push((kv.mod_revision, String::from_utf8(kv.key).unwrap(), e.r#type == 0));
                }
            }
            _ => return,
        }
    }
    drop(tx);
}

/// A watcher on a node that is restarted while writes go on through the other nodes
/// (and leadership moves) reconnects from the revision after its last event: it
/// sees every write of the history once, in order, none missing, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_every_event_once_across_a_leader_change_and_a_restart() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let watched = (leader + 1) % 3;
    let writer_node = (leader + 2) % 3;
    let start = kv(&c, leader).await.range(prefix("w/")).await.unwrap().into_inner().header.unwrap().revision + 1;
    let writes = 60;
    let addrs = c.client_addrs.clone();
    let writer = tokio::spawn(async move {
        let mut e = KvClient::connect(format!("http://{}", addrs[writer_node])).await.unwrap();
        for n in 0..writes {
            let k = format!("w/{}", n % 7);
            if n % 5 == 4 {
                let d = epb::DeleteRangeRequest { key: k.into_bytes(), ..Default::default() };
                while e.delete_range(d.clone()).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            } else {
                while e.put(put(&k, &n.to_string())).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut got = Vec::new();
    // First stretch: until a third of the writes, then leadership moves.
    watch_from(&c, watched, start, 20, &mut got).await;
    let handle = c.handle(leader).clone();
    let _ = handle.transfer_leader(Some(&c.names[writer_node]), Duration::from_secs(5)).await;
    // The watched node restarts: the client comes back from its last revision + 1.
    c.stop(watched).await;
    c.restart(watched).await;
    writer.await.unwrap();
    let total = {
        let r = kv(&c, writer_node).await.range(prefix("w/")).await.unwrap().into_inner();
        let history = c.retrieve(writer_node).await.entries;
        let mine: Vec<_> =
            history.into_iter().filter(|e| e.key.starts_with("w/") && e.revision as i64 >= start).collect();
        assert!(r.header.unwrap().revision >= mine.last().unwrap().revision as i64);
        mine
    };
    while got.len() < total.len() {
        let from = got.last().map_or(start, |(rev, _, _)| rev + 1);
        let before = got.len();
        watch_from(&c, watched, from, total.len(), &mut got).await;
        assert!(got.len() > before || got.len() == total.len(), "no progress from revision {from}");
    }
    let expect: Vec<(i64, String, bool)> =
        total.iter().map(|e| (e.revision as i64, e.key.clone(), e.op == pb::Op::Put as i32)).collect();
    assert_eq!(got, expect, "every event once, in order");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_is_canceled_with_the_compact_revision() {
    use raftkv::proto::etcd::etcdserverpb::{watch_client::WatchClient, watch_request::RequestUnion};
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut e = kv(&c, leader).await;
    for n in 0..5 {
        e.put(put("w/x", &n.to_string())).await.unwrap();
    }
    let rev = e.put(put("w/x", "last")).await.unwrap().into_inner().header.unwrap().revision;
    e.compact(epb::CompactionRequest { revision: rev - 1, physical: false }).await.unwrap();
    let mut client = WatchClient::connect(format!("http://{}", c.client_addrs[leader])).await.unwrap();
    let create = epb::WatchCreateRequest { key: b"w/x".to_vec(), start_revision: 2, ..Default::default() };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(epb::WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
    let mut stream = client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created && !created.canceled);
    let canceled = tokio::time::timeout(Duration::from_secs(5), stream.message()).await;
    let canceled = canceled.unwrap().unwrap().unwrap();
    assert!(canceled.canceled && canceled.events.is_empty(), "{canceled:?}");
    // The oldest revision whose history is whole: the one after the compacted one.
    assert_eq!(canceled.compact_revision, rev);
    c.shutdown().await;
}

/// A transaction that only reads is answered without the log (no entry, no revision)
/// and still sees the latest write made through another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_txn_reads_the_latest_state_without_the_log() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    c.wait_started().await;
    let mut writer = kv(&c, leader).await;
    let mut reader = kv(&c, (leader + 1) % 3).await;
    for n in 0..20 {
        let v = n.to_string();
        writer.put(put("ro", &v)).await.unwrap();
        // Every entry, the txn's if it made one, is appended at the leader first.
        let before = c.handle(leader).status().last_index;
        let get = epb::RangeRequest { key: b"ro".to_vec(), ..Default::default() };
        let t = epb::TxnRequest {
            compare: vec![epb::Compare {
                key: b"ro".to_vec(),
                target: CompareTarget::Value as i32,
                target_union: Some(TargetUnion::Value(v.clone().into())),
                ..Default::default()
            }],
            success: vec![epb::RequestOp { request: Some(Op::RequestRange(get)) }],
            failure: vec![],
        };
        let r = reader.txn(t).await.unwrap().into_inner();
        assert!(r.succeeded, "round {n}: the compare saw an older value");
        assert_eq!(c.handle(leader).status().last_index, before, "no log entry");
    }
    c.shutdown().await;
}

/// A watch that asks for progress notifications gets, while no event comes, an empty
/// answer whose revision says how far it has seen (etcd's `progress_notify`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watch_that_asks_gets_progress_notifications() {
    use raftkv::proto::etcd::etcdserverpb::{watch_client::WatchClient, watch_request::RequestUnion};
    let opts = common::Opts { watch_progress_interval: Duration::from_millis(300), ..Default::default() };
    let c = TestCluster::start_with(3, opts).await;
    let leader = c.wait_leader().await;
    let mut e = kv(&c, leader).await;
    let mut client = WatchClient::connect(format!("http://{}", c.client_addrs[(leader + 1) % 3])).await.unwrap();
    let create = epb::WatchCreateRequest { key: b"quiet".to_vec(), progress_notify: true, ..Default::default() };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(epb::WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
    let mut stream = client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    assert!(next(&mut stream).await.created);
    // Writes to other keys move the revision on; the watch sees none of them.
    let mut last = 0;
    for n in 0..3 {
        last = e.put(put("elsewhere", &n.to_string())).await.unwrap().into_inner().header.unwrap().revision;
    }
    loop {
        let progress = next(&mut stream).await;
        assert!(progress.events.is_empty() && !progress.canceled, "{progress:?}");
        let at = progress.header.unwrap().revision;
        assert!(at <= last, "a progress revision no write has reached: {at} > {last}");
        if at == last {
            break;
        }
    }
    // An event resets it; the next notification comes after it.
    let put_at = e.put(put("quiet", "x")).await.unwrap().into_inner().header.unwrap().revision;
    loop {
        let m = next(&mut stream).await;
        let at = m.header.unwrap().revision;
        if let Some(e) = m.events.first() {
            assert_eq!((m.events.len(), e.kv.as_ref().unwrap().mod_revision), (1, put_at));
            break;
        }
        assert!(at < put_at, "progress at {at} before the event of revision {put_at} was sent");
    }
    let progress = next(&mut stream).await;
    assert!(progress.events.is_empty());
    assert!(progress.header.unwrap().revision >= put_at);
    c.shutdown().await;
}

async fn next(stream: &mut tonic::Streaming<epb::WatchResponse>) -> epb::WatchResponse {
    tokio::time::timeout(common::WAIT, stream.message()).await.unwrap().unwrap().unwrap()
}
