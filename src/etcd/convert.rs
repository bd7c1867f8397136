//! etcd's messages to the state machine's transactions and back. Validation happens
//! here, before anything reaches the log: bad input is refused with etcd's texts.
use tonic::Status;

use super::{invalid, MAX_TXN_OPS};
use crate::config::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::mvcc::txn::{Cmp, Compare, OpResult, Target, Txn, TxnOp, TxnResult};
use crate::mvcc::{KeyRange, KeyValue, RangeResult};
use crate::proto::etcd::etcdserverpb as epb;
use crate::proto::etcd::mvccpb;

pub fn text(b: Vec<u8>, what: &str) -> Result<String, Status> {
    String::from_utf8(b).map_err(|_| invalid(&format!("raftkv: {what} must be UTF-8 text (a raftkv limit)")))
}

/// A key a write names: present, UTF-8, at most `MAX_KEY_BYTES`.
fn write_key(key: Vec<u8>) -> Result<String, Status> {
    if key.is_empty() {
        return Err(invalid("etcdserver: key is not provided"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(&format!("raftkv: key is {} bytes; the limit is {MAX_KEY_BYTES}", key.len())));
    }
    text(key, "keys")
}

/// The keys a request names; an empty key is refused, as etcd does.
pub fn key_range(key: &[u8], range_end: &[u8]) -> Result<KeyRange, Status> {
    if key.is_empty() {
        return Err(invalid("etcdserver: key is not provided"));
    }
    Ok(KeyRange::from_etcd(key, range_end))
}

pub fn kv(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.into_bytes(),
        create_revision: kv.create_revision as i64,
        mod_revision: kv.mod_revision as i64,
        version: kv.version as i64,
        lease: kv.lease,
        value: kv.value.into_bytes(),
    }
}

/// Whether a range must be read whole and then sorted or filtered here.
fn needs_post(r: &epb::RangeRequest) -> bool {
    let sorted = r.sort_order != epb::range_request::SortOrder::None as i32
        || r.sort_target != epb::range_request::SortTarget::Key as i32;
    sorted || r.min_mod_revision > 0 || r.max_mod_revision > 0 || r.min_create_revision > 0 || r.max_create_revision > 0
}

/// What the store reads for a range: the keys, the revision (0: the latest), the
/// limit (0: none; sorting and filters need every key) and whether values are left out.
pub struct RangeRead {
    pub range: KeyRange,
    pub revision: u64,
    pub limit: u64,
    pub keys_only: bool,
}

pub fn range_read(r: &epb::RangeRequest) -> Result<RangeRead, Status> {
    let range = key_range(&r.key, &r.range_end)?;
    // A count shows no key: the store counts the keys past its limit without reading
    // them (etcd's count ignores the filters too).
    let limit = match (r.count_only, needs_post(r)) {
        (true, _) => 1,
        (false, true) => 0,
        (false, false) => r.limit.max(0) as u64,
    };
    // Sorting by value needs the values; keys_only is then applied here.
    let keys_only = r.count_only || (r.keys_only && !needs_post(r));
    Ok(RangeRead { range, revision: r.revision.max(0) as u64, limit, keys_only })
}

fn range_op(r: &epb::RangeRequest) -> Result<TxnOp, Status> {
    let RangeRead { range, revision, limit, keys_only } = range_read(r)?;
    Ok(TxnOp::Range { range, revision, limit, keys_only })
}

/// A range's answer: etcd's filters, sort and limit applied to what the store read.
pub fn range_response(
    r: &epb::RangeRequest,
    found: RangeResult,
    header: Option<epb::ResponseHeader>,
) -> epb::RangeResponse {
    use epb::range_request::{SortOrder, SortTarget};
    let RangeResult { mut kvs, count, mut more } = found;
    if needs_post(r) {
        let keep = |v: u64, min: i64, max: i64| (min <= 0 || v as i64 >= min) && (max <= 0 || v as i64 <= max);
        kvs.retain(|kv| {
            keep(kv.mod_revision, r.min_mod_revision, r.max_mod_revision)
                && keep(kv.create_revision, r.min_create_revision, r.max_create_revision)
        });
        let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
        let mut order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
        if order == SortOrder::None && target != SortTarget::Key {
            order = SortOrder::Ascend;
        }
        if order != SortOrder::None {
            kvs.sort_by(|a, b| match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            });
            if order == SortOrder::Descend {
                kvs.reverse();
            }
        }
        if r.limit > 0 && kvs.len() > r.limit as usize {
            kvs.truncate(r.limit as usize);
            more = true;
        }
    }
    if r.count_only {
        // As etcd 3.4: no key, so none left out either.
        kvs.clear();
        more = false;
    }
    if r.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    epb::RangeResponse { header, kvs: kvs.into_iter().map(kv).collect(), more, count: count as i64 }
}

pub fn put_op(p: epb::PutRequest) -> Result<TxnOp, Status> {
    if p.lease != 0 && p.ignore_lease {
        return Err(invalid("etcdserver: lease is provided"));
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(invalid("etcdserver: value is provided"));
    }
    if p.value.len() > MAX_VALUE_BYTES {
        return Err(invalid("etcdserver: request is too large"));
    }
    let key = write_key(p.key)?;
    let value = if p.ignore_value { None } else { Some(text(p.value, "values")?) };
    let lease = if p.ignore_lease { None } else { Some(p.lease) };
    Ok(TxnOp::Put { key, value, lease })
}

pub fn delete_op(d: &epb::DeleteRangeRequest) -> Result<TxnOp, Status> {
    Ok(TxnOp::Delete { range: key_range(&d.key, &d.range_end)? })
}

fn compare(c: epb::Compare) -> Result<Compare, Status> {
    use epb::compare::{CompareResult, CompareTarget, TargetUnion};
    let range = key_range(&c.key, &c.range_end)?;
    let cmp = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => Cmp::Equal,
        Ok(CompareResult::Greater) => Cmp::Greater,
        Ok(CompareResult::Less) => Cmp::Less,
        Ok(CompareResult::NotEqual) => Cmp::NotEqual,
        Err(_) => return Err(invalid(&format!("raftkv: unknown compare result {}", c.result))),
    };
    let int = |u: &Option<TargetUnion>| match u {
        Some(TargetUnion::Version(v) | TargetUnion::CreateRevision(v) | TargetUnion::ModRevision(v))
        | Some(TargetUnion::Lease(v)) => *v,
        _ => 0,
    };
    let target = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Version) => Target::Version(int(&c.target_union)),
        Ok(CompareTarget::Create) => Target::Create(int(&c.target_union)),
        Ok(CompareTarget::Mod) => Target::Mod(int(&c.target_union)),
        Ok(CompareTarget::Lease) => Target::Lease(int(&c.target_union)),
        Ok(CompareTarget::Value) => match c.target_union {
            Some(TargetUnion::Value(v)) => Target::Value(text(v, "values")?),
            _ => Target::Value(String::new()),
        },
        Err(_) => return Err(invalid(&format!("raftkv: unknown compare target {}", c.target))),
    };
    Ok(Compare { range, cmp, target })
}

fn request_op(op: epb::RequestOp, depth: u32) -> Result<TxnOp, Status> {
    use epb::request_op::Request;
    match op.request {
        Some(Request::RequestRange(r)) => range_op(&r),
        Some(Request::RequestPut(p)) => put_op(p),
        Some(Request::RequestDeleteRange(d)) => delete_op(&d),
        Some(Request::RequestTxn(t)) => Ok(TxnOp::Txn(Box::new(txn_at(t, depth + 1)?))),
        None => Err(invalid("raftkv: an empty operation in a txn request")),
    }
}

/// etcd refuses a branch that puts a key twice, or puts a key it also deletes.
fn check_duplicates(ops: &[TxnOp]) -> Result<(), Status> {
    let mut puts = std::collections::HashSet::new();
    let deletes: Vec<&KeyRange> =
        ops.iter().filter_map(|op| if let TxnOp::Delete { range } = op { Some(range) } else { None }).collect();
    for op in ops {
        if let TxnOp::Put { key, .. } = op {
            if !puts.insert(key.as_str()) || deletes.iter().any(|d| d.contains(key.as_bytes())) {
                return Err(invalid("etcdserver: duplicate key given in txn request"));
            }
        }
    }
    Ok(())
}

pub fn txn(t: epb::TxnRequest) -> Result<Txn, Status> {
    txn_at(t, 0)
}

fn txn_at(t: epb::TxnRequest, depth: u32) -> Result<Txn, Status> {
    if depth >= crate::mvcc::txn::MAX_DEPTH {
        return Err(invalid(&format!(
            "raftkv: transactions nested more than {} deep (a raftkv limit)",
            crate::mvcc::txn::MAX_DEPTH
        )));
    }
    if t.compare.len() > MAX_TXN_OPS || t.success.len() > MAX_TXN_OPS || t.failure.len() > MAX_TXN_OPS {
        return Err(invalid("etcdserver: too many operations in txn request"));
    }
    let compares = t.compare.into_iter().map(compare).collect::<Result<Vec<_>, _>>()?;
    let success = t.success.into_iter().map(|op| request_op(op, depth)).collect::<Result<Vec<_>, _>>()?;
    let failure = t.failure.into_iter().map(|op| request_op(op, depth)).collect::<Result<Vec<_>, _>>()?;
    check_duplicates(&success)?;
    check_duplicates(&failure)?;
    Ok(Txn { compares, success, failure })
}

/// A transaction's answer, each result shaped by the request op it answers.
pub fn txn_response(
    req: &epb::TxnRequest,
    r: &TxnResult,
    header: Option<epb::ResponseHeader>,
) -> Result<epb::TxnResponse, Status> {
    use epb::request_op::Request;
    use epb::response_op::Response;
    let ops = if r.succeeded { &req.success } else { &req.failure };
    if ops.len() != r.results.len() {
        return Err(Status::internal("raftkv: a transaction's answer does not match its request"));
    }
    let mut responses = Vec::with_capacity(ops.len());
    for (op, res) in ops.iter().zip(&r.results) {
        let h = header;
        let response = match (&op.request, res) {
            (Some(Request::RequestRange(q)), OpResult::Range(found)) => {
                Response::ResponseRange(range_response(q, found.clone(), h))
            }
            (Some(Request::RequestPut(q)), OpResult::Put { prev }) => Response::ResponsePut(epb::PutResponse {
                header: h,
                prev_kv: prev.clone().filter(|_| q.prev_kv).map(kv),
            }),
            (Some(Request::RequestDeleteRange(q)), OpResult::Delete { prevs }) => {
                Response::ResponseDeleteRange(epb::DeleteRangeResponse {
                    header: h,
                    deleted: prevs.len() as i64,
                    prev_kvs: if q.prev_kv { prevs.iter().cloned().map(kv).collect() } else { Vec::new() },
                })
            }
            (Some(Request::RequestTxn(q)), OpResult::Txn(t)) => Response::ResponseTxn(txn_response(q, t, h)?),
            _ => return Err(Status::internal("raftkv: a transaction's answer does not match its request")),
        };
        responses.push(epb::ResponseOp { response: Some(response) });
    }
    Ok(epb::TxnResponse { header, succeeded: r.succeeded, responses })
}
