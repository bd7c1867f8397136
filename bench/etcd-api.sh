#!/usr/bin/env bash
# etcd's v3 API, side by side: kvbench's etcd backend (the same client code) against a
# fresh 3-member etcd 3.4 cluster and a fresh `raftkv dev --nodes 3`, plus kvbench's
# raftkv backend against raftkv, alternated REPS times. Each run: puts (64 clients,
# 1 KiB values, 1M-key space) for DURATION, then linearizable gets of the same keys.
#   bash bench/etcd-api.sh [DURATION] [REPS]      (after cargo build --release and
#                                                  apt-get install etcd-server)
set -euo pipefail
K=$(../shared/bench/build-kvbench.sh); C=../shared/bench/etcd-cluster.sh
RK=${RAFTKV:-$PWD/target/release/raftkv}; DUR=${1:-20s}; REPS=${2:-2}
fmt='import json,sys;d=json.load(sys.stdin);print("%.0f/s p50 %.2f ms p99 %.2f ms errors %d" % (d["ops_per_s"], d["p50_ms"], d["p99_ms"], d["errors"]))'
load() { # load <backend> <endpoints>
  local put get
  put=$("$K" put --backend "$1" --endpoints "$2" --duration "$DUR" --value-size 1024 --key-space 1000000 \
    --clients 64 --conns 8 2>/dev/null | python3 -c "$fmt")
  get=$("$K" get --backend "$1" --endpoints "$2" --duration "$DUR" --value-size 1024 --key-space 1000000 \
    --clients 64 --conns 8 2>/dev/null | python3 -c "$fmt")
  echo "put $put | get $get"
}
for r in $(seq "$REPS"); do
  D=$(mktemp -d /tmp/etcd-api.XXXX)
  "$C" start -n 3 -d "$D" >/dev/null
  echo "run $r, etcd 3.4, etcd API:       $(load etcd "$("$C" endpoints -d "$D")")"
  "$C" stop -d "$D" >/dev/null; rm -rf "$D"
  for backend in etcd raftkv; do
    RD=$(mktemp -d /tmp/etcd-api.XXXX)
    setsid "$RK" dev --nodes 3 --fresh --data-root "$RD" >"$RD.log" 2>&1 & dp=$!
    sleep 3
    echo "run $r, raftkv, $(printf '%-6s' "$backend") API:     $(load "$backend" 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003)"
    kill -INT "$dp"; wait "$dp" 2>/dev/null || true; rm -rf "$RD" "$RD.log"
  done
done
