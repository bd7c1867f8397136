#!/usr/bin/env bash
# Appends refused by followers under load, per binary: for each repetition, each binary
# gets a fresh `raftkv dev --nodes 3` and one kvbench put run (64 clients over 8
# connections, 256 B values, all endpoints); prints the write rate and, from the
# leader's /metrics, the appends it sent to the followers and how many they refused.
#   bash bench/refusals.sh DURATION REPS BINARY...     e.g. bash bench/refusals.sh 10s 3 /tmp/old /tmp/new
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: bench/refusals.sh DURATION REPS BINARY..." >&2; exit 2; }
K=$(../shared/bench/build-kvbench.sh)
DUR=$1; REPS=$2; shift 2
eps=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
for r in $(seq "$REPS"); do
  for b in "$@"; do
    RD=$(mktemp -d /tmp/raftkv-refusals.XXXX)
    setsid "$b" dev --nodes 3 --fresh --no-view --data-root "$RD" >"$RD.log" 2>&1 & dp=$!
    for _ in $(seq 100); do st=$("$b" status --endpoints $eps 2>/dev/null || true); [[ $st == *" leader "* ]] && break; sleep 0.1; done
    sleep 1
    rate=$("$K" put --conns 8 --duration "$DUR" --value-size 256 --key-space 1000000 --clients 64 \
      --backend raftkv --endpoints $eps 2>/dev/null \
      | python3 -c 'import json,sys;d=json.load(sys.stdin);print("%.0f/s p50 %.2f ms p99 %.2f ms errors %d" % (d["ops_per_s"], d["p50_ms"], d["p99_ms"], d["errors"]))')
    counts=""
    for p in 7301 7302 7303; do
      counts+=$(curl -s "127.0.0.1:$p/metrics" | awk '/^raftkv_network_peer_appends_sent_total/ {s += $2} /^raftkv_network_peer_appends_rejected_total/ {j += $2}
        END {if (s > 0) printf "appends %d, refused %d", s, j}')
    done
    echo "run $r, $b: $rate; $counts"
    kill -INT "$dp"; wait "$dp" 2>/dev/null || true; rm -rf "$RD" "$RD.log"
  done
done
