//! `raftkv txn`: a transaction read from stdin in etcdctl's syntax, sent as etcd's Txn.
//!
//! ```text
//! mod("key1") > "0"          compares, one per line: val|value, ver|version,
//! val("key2") = "x"          c|create, m|mod, lease; =, !=, <, >
//!
//! put key1 "new value"       operations if every compare holds
//! del key2                   (put KEY VALUE [--lease=ID], get KEY [--prefix],
//!                            del KEY [--prefix])
//! get key1
//!                            operations otherwise
//! ```
//! The answer is printed as etcdctl prints it: SUCCESS or FAILURE, then each
//! operation's result after a blank line.
use std::io::Read;
use std::process::ExitCode;

use raftkv::proto::etcd::etcdserverpb::{
    self as epb, compare::CompareResult, compare::CompareTarget, compare::TargetUnion, kv_client::KvClient,
    request_op::Request as Op, response_op::Response as Answer,
};

use super::client::Conn;
use super::etcd::prefix_end;
use super::{CliError, CmdResult};

/// Why a line of `raftkv txn`'s input was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxnSyntaxError {
    #[error("malformed comparison: {0:?} (like: mod(\"key\") > \"0\")")]
    Compare(String),
    #[error("unknown operator {op:?} in {line:?} (=, !=, <, >)")]
    Operator { op: String, line: String },
    #[error("unknown compare target {target:?} in {line:?}")]
    Target { target: String, line: String },
    #[error("{value:?} is not a number in {line:?}")]
    Number { value: String, line: String },
    #[error("a bad escape in {0:?}")]
    Escape(String),
    #[error("unclosed quote in {0:?}")]
    Quote(String),
    #[error("{flag} is not supported in raftkv txn (--prefix, --lease=ID are): {line:?}")]
    Flag { flag: String, line: String },
    #[error("malformed operation: {0:?} (put KEY VALUE, get KEY, del KEY)")]
    Operation(String),
    #[error(transparent)]
    LeaseId(#[from] super::lease::BadLeaseId),
    #[error("more than three blocks (compares, success, failure)")]
    Blocks,
}

type Parsed<T> = Result<T, TxnSyntaxError>;

/// One escape inside double quotes, as Go's `%q` reads it (etcdctl's parser):
/// `\n \t \r \\ \" \xNN \uNNNN`.
fn unescape(chars: &mut std::str::Chars, line: &str) -> Parsed<char> {
    let bad = || TxnSyntaxError::Escape(line.to_string());
    let hex = |chars: &mut std::str::Chars, n: usize| -> Parsed<char> {
        let digits: String = chars.take(n).collect();
        let v = u32::from_str_radix(&digits, 16).map_err(|_| bad())?;
        char::from_u32(v).filter(|_| digits.len() == n).ok_or_else(bad)
    };
    match chars.next().ok_or_else(bad)? {
        'n' => Ok('\n'),
        't' => Ok('\t'),
        'r' => Ok('\r'),
        c @ ('\\' | '"') => Ok(c),
        'x' => hex(chars, 2),
        'u' => hex(chars, 4),
        _ => Err(bad()),
    }
}

/// Splits a line into words; double quotes group (with Go's escapes inside them).
fn words(line: &str) -> Parsed<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut started) = (false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            '\\' if quoted => cur.push(unescape(&mut chars, line)?),
            c if c.is_whitespace() && !quoted => {
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if quoted {
        return Err(TxnSyntaxError::Quote(line.to_string()));
    }
    if started {
        out.push(cur);
    }
    Ok(out)
}

fn compare(line: &str) -> Parsed<epb::Compare> {
    let bad = || TxnSyntaxError::Compare(line.to_string());
    let (target, rest) = line.split_once('(').ok_or_else(bad)?;
    // The key is a quoted string; the ')' is the first one after it.
    let rest = rest.trim_start().strip_prefix('"').ok_or_else(bad)?;
    let mut chars = rest.chars();
    let mut key = String::new();
    loop {
        match chars.next().ok_or_else(bad)? {
            '"' => break,
            '\\' => key.push(unescape(&mut chars, line)?),
            c => key.push(c),
        }
    }
    let rest = chars.as_str().trim_start().strip_prefix(')').ok_or_else(bad)?;
    let [op, value]: [String; 2] = words(rest)?.try_into().map_err(|_| bad())?;
    let result = match op.as_str() {
        "=" | "==" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        "<" => CompareResult::Less,
        ">" => CompareResult::Greater,
        _ => return Err(TxnSyntaxError::Operator { op, line: line.to_string() }),
    };
    let number = |v: &str, radix| {
        i64::from_str_radix(v, radix)
            .map_err(|_| TxnSyntaxError::Number { value: v.to_string(), line: line.to_string() })
    };
    let (t, union) = match target.trim() {
        "val" | "value" => (CompareTarget::Value, TargetUnion::Value(value.into_bytes())),
        "ver" | "version" => (CompareTarget::Version, TargetUnion::Version(number(&value, 10)?)),
        "c" | "create" => (CompareTarget::Create, TargetUnion::CreateRevision(number(&value, 10)?)),
        "m" | "mod" => (CompareTarget::Mod, TargetUnion::ModRevision(number(&value, 10)?)),
        "lease" => (CompareTarget::Lease, TargetUnion::Lease(number(&value, 16)?)),
        other => return Err(TxnSyntaxError::Target { target: other.to_string(), line: line.to_string() }),
    };
    Ok(epb::Compare {
        key: key.into_bytes(),
        result: result as i32,
        target: t as i32,
        target_union: Some(union),
        ..Default::default()
    })
}

fn operation(line: &str) -> Parsed<epb::RequestOp> {
    let w = words(line)?;
    // Flags this parser knows; any other is refused rather than ignored.
    if let Some(f) = w.iter().find(|a| {
        a.starts_with("--") && !matches!(a.as_str(), "--prefix" | "--prefix=true") && !a.starts_with("--lease=")
    }) {
        return Err(TxnSyntaxError::Flag { flag: f.clone(), line: line.to_string() });
    }
    let flag = |name: &str| w.iter().any(|a| a == name || *a == format!("{name}=true"));
    let plain: Vec<&String> = w.iter().filter(|a| !a.starts_with("--")).collect();
    let request = match (plain.first().map(|s| s.as_str()), plain.len()) {
        (Some("put"), 3) => {
            let lease = match w.iter().find_map(|a| a.strip_prefix("--lease=")) {
                Some(id) => super::lease::parse_id(id)?,
                None => 0,
            };
            Op::RequestPut(epb::PutRequest {
                key: plain[1].clone().into_bytes(),
                value: plain[2].clone().into_bytes(),
                lease,
                ..Default::default()
            })
        }
        (Some("get"), 2) => Op::RequestRange(epb::RangeRequest {
            key: plain[1].clone().into_bytes(),
            range_end: if flag("--prefix") { prefix_end(plain[1].as_bytes()) } else { Vec::new() },
            ..Default::default()
        }),
        (Some("del" | "delete"), 2) => Op::RequestDeleteRange(epb::DeleteRangeRequest {
            key: plain[1].clone().into_bytes(),
            range_end: if flag("--prefix") { prefix_end(plain[1].as_bytes()) } else { Vec::new() },
            ..Default::default()
        }),
        _ => return Err(TxnSyntaxError::Operation(line.to_string())),
    };
    Ok(epb::RequestOp { request: Some(request) })
}

/// Parses the whole input: compares, success operations, failure operations, in
/// blocks separated by a blank line.
pub fn parse(input: &str) -> Parsed<epb::TxnRequest> {
    let mut blocks: Vec<Vec<&str>> = vec![Vec::new()];
    for line in input.lines().map(str::trim) {
        if line.is_empty() {
            blocks.push(Vec::new());
        } else {
            blocks.last_mut().expect("one block").push(line);
        }
    }
    if blocks.len() > 3 {
        // Trailing blank lines are fine; a fourth block is not.
        if blocks[3..].iter().any(|b| !b.is_empty()) {
            return Err(TxnSyntaxError::Blocks);
        }
        blocks.truncate(3);
    }
    blocks.resize(3, Vec::new());
    Ok(epb::TxnRequest {
        compare: blocks[0].iter().map(|l| compare(l)).collect::<Result<_, _>>()?,
        success: blocks[1].iter().map(|l| operation(l)).collect::<Result<_, _>>()?,
        failure: blocks[2].iter().map(|l| operation(l)).collect::<Result<_, _>>()?,
    })
}

pub async fn run(conn: &Conn) -> CmdResult {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).map_err(|e| CliError::io("reading stdin", e))?;
    let req = parse(&input)?;
    let r = conn
        .first_channel(|ch| {
            let req = req.clone();
            async move { KvClient::new(ch).txn(req).await }
        })
        .await?
        .into_inner();
    println!("{}", if r.succeeded { "SUCCESS" } else { "FAILURE" });
    for answer in r.responses {
        println!();
        match answer.response {
            Some(Answer::ResponsePut(_)) => println!("OK"),
            Some(Answer::ResponseDeleteRange(d)) => println!("{}", d.deleted),
            Some(Answer::ResponseRange(g)) => {
                for kv in g.kvs {
                    println!("{}\n{}", String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value));
                }
            }
            Some(Answer::ResponseTxn(_)) | None => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcdctls_txn_syntax_parses_and_bad_lines_are_named() {
        let t = parse(
            "mod(\"k 1\") > \"0\"\nval(\"k2\") = \"a \\\"b\\\"\"\n\nput k1 \"new v\"\ndel p --prefix\n\nget k1\n\n",
        )
        .unwrap();
        assert_eq!(t.compare.len(), 2);
        assert_eq!(t.compare[0].key, b"k 1");
        assert_eq!(t.compare[0].target_union, Some(TargetUnion::ModRevision(0)));
        assert_eq!(t.compare[1].target_union, Some(TargetUnion::Value(b"a \"b\"".to_vec())));
        let Some(Op::RequestPut(p)) = &t.success[0].request else { panic!("{t:?}") };
        assert_eq!((p.key.as_slice(), p.value.as_slice()), (b"k1".as_slice(), b"new v".as_slice()));
        let Some(Op::RequestDeleteRange(d)) = &t.success[1].request else { panic!("{t:?}") };
        assert_eq!(d.range_end, b"q");
        assert_eq!(t.failure.len(), 1);
        let t = parse("val(\"k)\") = \")\"\nval(\"k\") = \"a\\nb\\x41\"\n").unwrap();
        assert_eq!(t.compare[0].key, b"k)");
        assert_eq!(t.compare[0].target_union, Some(TargetUnion::Value(b")".to_vec())));
        assert_eq!(t.compare[1].target_union, Some(TargetUnion::Value(b"a\nbA".to_vec())));
        for bad in [
            "mod(\"k\") >> \"1\"",
            "ver(\"k\") = \"x\"",
            "nope(\"k\") = \"1\"",
            "mod k > 1",
            "\n\nput k",
            "\n\ndel k --from-key",
            "\n\nget k --rev=5",
            "val(\"k\") = \"\\q\"",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
