#!/usr/bin/env bash
# Where an operation's CPU goes, etcd 3.4 and raftkv side by side: fresh 3-member
# clusters, kvbench's puts (64 clients over 8 connections, 256-byte values, 100,000 keys,
# all endpoints, as side-by-side.sh's "3n put c=64 all"; OP=get for its linearizable
# gets of 100,000 keys filled first), alternating, REPS times. For each run: ops/s, the
# three servers' user and kernel CPU per operation, and the load generator's. Then what
# "3x etcd's ops/s" would need on this machine: at 3x etcd's rate the load generator
# alone takes rate x its CPU per operation of the cores, and the servers may spend at
# most what is left, per operation; compare with raftkv's kernel CPU per operation.
# The servers' CPU is counted from just before kvbench starts to just after it ends, so
# it includes kvbench's connecting (the same for both systems), against its ops.
#   bash bench/cpu-budget.sh [REPS]     (after cargo build --release and
#                                        apt-get install etcd-server; ~30 s per rep;
#                                        RK=path/to/raftkv for another binary)
set -euo pipefail
cd "$(dirname "$0")/.."
RK=${RK:-$PWD/target/release/raftkv}
REPS=${1:-2}
OP=${OP:-put}
[[ $OP == put || $OP == get ]] || { echo "OP is put or get" >&2; exit 2; }
K=$(../shared/bench/build-kvbench.sh)
C=../shared/bench/etcd-cluster.sh
HZ=$(getconf CLK_TCK)
CORES=$(nproc)
eps=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
runs=$(mktemp); ED=$(mktemp -d /tmp/etcd-budget.XXXX); RD=
dev=
cleanup() {
  [ -n "$dev" ] && kill -INT "$dev" 2>/dev/null && wait "$dev" 2>/dev/null
  [ -f "$ED/pids" ] && "$C" stop -d "$ED" >/dev/null 2>&1
  rm -rf "$runs" "$ED" ${RD:+"$RD" "$RD.log"}
  true
}
trap cleanup EXIT
# User and system ticks of the processes named, summed: "user system"; fails if one is
# gone (a server that died would read as a cheap one).
ticks() {
  local u=0 s=0 p a b
  for p in "$@"; do
    read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null) || { echo "server $p is gone" >&2; return 1; }
    u=$((u + a)); s=$((s + b))
  done
  echo "$u $s"
}
# Gets read 100,000 keys written first (not measured).
prefill() {
  [[ $OP == get ]] || return 0
  "$K" get --backend "$1" --endpoints "$2" --key-space 100000 --clients 64 --duration 1s --value-size 256 \
    --prefill >/dev/null || { echo "filling $1 for the gets failed" >&2; exit 1; }
}
# kvbench under a Python parent that reads its own children's CPU: prints
# "ops duration_s user_s system_s".
load() {
  python3 - "$K" "$1" "$2" "$OP" <<'PY'
import json, resource, subprocess, sys
k, backend, endpoints, op = sys.argv[1:]
args = [k, op, "--backend", backend, "--endpoints", endpoints, "--key-space", "100000", "--clients", "64",
        "--conns", "8", "--duration", "10s"] + (["--value-size", "256"] if op == "put" else [])
r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
d = json.loads(out)
print(d["ops"], d["ops"] / d["ops_per_s"], r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime)
PY
}
# record SYSTEM SERVER_TICKS_BEFORE SERVER_TICKS_AFTER LOAD_FIGURES
record() {
  python3 - "$@" "$HZ" >>"$runs" <<'PY'
import sys
sys_, u0, s0, u1, s1, ops, dur, lu, ls, hz = sys.argv[1:]
ops, hz = int(ops), int(hz)
us = lambda x: 1e6 * x / ops
print(sys_, ops / float(dur), us((int(u1) - int(u0)) / hz), us((int(s1) - int(s0)) / hz), us(float(lu)), us(float(ls)))
PY
  tail -1 "$runs" | awk -v op="$OP" '{printf "  %-6s %6.0f %ss/s; servers %5.1f user + %5.1f kernel us/%s; load generator %4.1f + %4.1f\n", $1, $2, op, $3, $4, op, $5, $6}'
}
for r in $(seq "$REPS"); do
  echo "run $r of $REPS: etcd" >&2
  "$C" start -n 3 -d "$ED" >/dev/null 2>&1
  pids=$(awk '{print $2}' "$ED/pids" | tr '\n' ' ')
  prefill etcd "$("$C" endpoints -d "$ED")"
  before=$(ticks $pids) && figures=$(load etcd "$("$C" endpoints -d "$ED")") && after=$(ticks $pids) || exit 1
  record etcd $before $after $figures
  "$C" stop -d "$ED" >/dev/null 2>&1
  echo "run $r of $REPS: raftkv" >&2
  RD=$(mktemp -d /tmp/raftkv-budget.XXXX)
  setsid "$RK" dev --nodes 3 --fresh --no-view --data-root "$RD" >"$RD.log" 2>&1 & dev=$!
  led=0
  for _ in $(seq 100); do st=$("$RK" status --endpoints $eps 2>/dev/null || true); [[ $st == *" leader "* ]] && { led=1; break; }; sleep 0.1; done
  ((led)) || { echo "the raftkv cluster elected no leader in 10 s (log: $RD.log)" >&2; exit 1; }
  sleep 1
  pids=$(pgrep -P "$dev" | tr '\n' ' ' || true)
  [ -n "$pids" ] || { echo "raftkv dev started no nodes (log: $RD.log)" >&2; exit 1; }
  prefill raftkv $eps
  before=$(ticks $pids) && figures=$(load raftkv $eps) && after=$(ticks $pids) || exit 1
  record raftkv $before $after $figures
  kill -INT "$dev"; wait "$dev" 2>/dev/null || true; dev=
  rm -rf "$RD" "$RD.log"; RD=
done
python3 - "$runs" "$CORES" "$OP" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
cores, op = int(sys.argv[2]), sys.argv[3]
mean = lambda s: [sum(float(r[i]) for r in rows if r[0] == s) / sum(1 for r in rows if r[0] == s) for i in range(1, 6)]
e, k = mean("etcd"), mean("raftkv")
for name, m in (("etcd", e), ("raftkv", k)):
    print("mean %-6s %6.0f %ss/s; servers %5.1f us/%s (user %5.1f, kernel %5.1f); load generator %4.1f us/%s"
          % (name, m[0], op, m[1] + m[2], op, m[1], m[2], m[3] + m[4], op))
print("raftkv/etcd %ss/s %.2f; servers' CPU per %s %.2fx less" % (op, k[0] / e[0], op, (e[1] + e[2]) / (k[1] + k[2])))
target = 3 * e[0]
left = cores - target * (k[3] + k[4]) / 1e6
print("at 3x etcd (%.0f %ss/s) the load generator takes %.2f of %d cores; the servers may spend at most %.1f us/%s "
      "(raftkv spends %.1f, of it %.1f in the kernel)"
      % (target, op, cores - left, cores, 1e6 * left / target, op, k[1] + k[2], k[2]))
PY
