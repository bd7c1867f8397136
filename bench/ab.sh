#!/usr/bin/env bash
# A/B of raftkv binaries: for each repetition, each binary gets a fresh
# `raftkv dev --nodes 3` (NODES=5 for five) and one kvbench run; binaries alternate so drift hits them
# alike. Default load: the growth load (64 clients over 8 connections, 1 KiB values,
# 1M-key space, all endpoints). Environment: CLIENTS, CONNS, VALUE (bytes), ROOT (where
# the data goes: /dev/shm takes fsync out), KEYS (the puts' key space), LEADER=1 (send to the leader only),
# BACKEND=etcd (kvbench's etcd client, through raftkv's etcd API; default raftkv's own),
# OP=get (linearizable gets of a 100,000-key space, filled first by `kvbench --prefill`
# with VALUE-byte values, 256 by default, instead of puts).
# Each run prints kvbench's figures, the CPU time the three nodes spent per operation, and
# the appends the leader sent its followers and how many they refused (from /metrics);
# the last lines give each binary's means and their difference from the first binary's.
#   bash bench/ab.sh DURATION REPS BIN_A BIN_B [...]     e.g. bash bench/ab.sh 20s 2 /tmp/old /tmp/new
#   CLIENTS=1 CONNS=1 VALUE=256 ROOT=/dev/shm LEADER=1 bash bench/ab.sh 10s 3 /tmp/old /tmp/new
#   OP=get BACKEND=etcd bash bench/ab.sh 10s 3 /tmp/old /tmp/new
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: bench/ab.sh DURATION REPS BINARY..." >&2; exit 2; }
K=$(../shared/bench/build-kvbench.sh)
DUR=$1; REPS=$2; shift 2
NODES=${NODES:-3}
eps=$(seq -s, -f '127.0.0.1:%g' 7001 $((7000 + NODES)))
# User and system CPU ticks of the processes named (the dev nodes), summed.
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
runs=$(mktemp); trap 'rm -f "$runs"' EXIT
for r in $(seq "$REPS"); do
  for b in "$@"; do
    RD=$(mktemp -d "${ROOT:-/tmp}/raftkv-ab.XXXX")
    setsid "$b" dev --nodes "$NODES" --fresh --no-view --data-root "$RD" >"$RD.log" 2>&1 & dp=$!
    for _ in $(seq 100); do st=$("$b" status --endpoints $eps 2>/dev/null || true); [[ $st == *" leader "* ]] && break; sleep 0.1; done
    sleep 1
    to=$eps
    [ "${LEADER:-0}" = 1 ] && to=$("$b" status --endpoints $eps | awk '$3=="leader"{print $2}')
    load=(put --value-size "${VALUE:-1024}" --key-space "${KEYS:-1000000}")
    if [ "${OP:-put}" = get ]; then
      load=(get --key-space 100000)
      if ! "$K" get --backend "${BACKEND:-raftkv}" --endpoints "$to" --clients 64 --duration 1s --key-space 100000 \
        --value-size "${VALUE:-256}" --prefill >/dev/null; then
        echo "run $r, $b: the prefill failed" >&2; kill -INT "$dp"; wait "$dp" 2>/dev/null || true; rm -rf "$RD"; exit 1
      fi
    fi
    nodes=$(pgrep -P "$dp" | tr '\n' ' ')
    before=$(cpu_ticks $nodes)
    out=$("$K" "${load[@]}" --conns "${CONNS:-8}" --duration "$DUR" \
      --clients "${CLIENTS:-64}" --backend "${BACKEND:-raftkv}" --endpoints "$to" 2>/dev/null)
    ticks=$(( $(cpu_ticks $nodes) - before ))
    # The leader's appends to its followers, and how many they refused (its /metrics).
    appends=""
    for p in $(seq 7301 $((7300 + NODES))); do
      appends+=$(curl -s "127.0.0.1:$p/metrics" | awk '/^raftkv_network_peer_appends_sent_total/ {s += $2}
        /^raftkv_network_peer_appends_rejected_total/ {j += $2} END {if (s > 0) printf ", appends %d, refused %d", s, j}')
    done
    # One line for the reader; the figures for the means go to $runs.
    line=$(echo "$out" | B=$b RUNS=$runs TICKS=$ticks HZ=$(getconf CLK_TCK) python3 -c 'import json,os,sys
d = json.load(sys.stdin); e = os.environ
cpu = 1e6 * int(e["TICKS"]) / int(e["HZ"]) / max(d["ops"], 1)
open(e["RUNS"], "a").write("%s %s %s %s\n" % (e["B"], d["ops_per_s"], d["p99_ms"], cpu))
print("%.0f/s p50 %.2f ms p99 %.2f ms errors %d, servers %.0f us CPU/op" % (d["ops_per_s"], d["p50_ms"], d["p99_ms"], d["errors"], cpu))')
    echo "run $r, $b: $line$appends"
    kill -INT "$dp"; wait "$dp" 2>/dev/null || true; rm -rf "$RD" "$RD.log"
  done
done
# The means of each binary's runs, and each against the first binary's.
python3 - "$runs" "$@" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
means = {}
for b in sys.argv[2:]:
    mine = [[float(x) for x in r[1:]] for r in rows if r[0] == b]
    means[b] = [sum(c) / len(c) for c in zip(*mine)] if mine else None
base = means[sys.argv[2]]
for b, m in means.items():
    if m is None:
        continue
    vs = "" if b == sys.argv[2] or not base else "  (%+.1f %% ops, %+.1f %% CPU/op, %+.1f %% p99 vs %s)" % (
        100 * (m[0] / base[0] - 1), 100 * (m[2] / base[2] - 1), 100 * (m[1] / base[1] - 1), sys.argv[2])
    print("mean of %s: %.0f/s p99 %.2f ms, servers %.1f us CPU/op%s" % (b, m[0], m[1], m[2], vs))
PY
