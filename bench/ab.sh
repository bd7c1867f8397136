#!/usr/bin/env bash
# A/B of raftkv binaries under the growth load: for each repetition, each binary gets a
# fresh `raftkv dev --nodes 3` and one kvbench put run (64 clients over 8 connections,
# 1 KiB values, 1M-key space); binaries alternate so drift hits them alike.
#   bash bench/ab.sh DURATION REPS BIN_A BIN_B [...]     e.g. bash bench/ab.sh 20s 2 /tmp/old /tmp/new
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: bench/ab.sh DURATION REPS BINARY..." >&2; exit 2; }
K=$(../shared/bench/build-kvbench.sh)
DUR=$1; REPS=$2; shift 2
for r in $(seq "$REPS"); do
  for b in "$@"; do
    RD=$(mktemp -d /tmp/raftkv-ab.XXXX)
    setsid "$b" dev --nodes 3 --fresh --data-root "$RD" >"$RD.log" 2>&1 & dp=$!
    sleep 3
    echo "run $r, $b: $("$K" put --conns 8 --duration "$DUR" --value-size 1024 --key-space 1000000 --clients 64 \
      --backend raftkv --endpoints 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 2>/dev/null \
      | python3 -c 'import json,sys;d=json.load(sys.stdin);print("%.0f/s p50 %.1f ms p99 %.1f ms errors %d" % (d["ops_per_s"], d["p50_ms"], d["p99_ms"], d["errors"]))')"
    kill -INT "$dp"; wait "$dp" 2>/dev/null || true; rm -rf "$RD" "$RD.log"
  done
done
