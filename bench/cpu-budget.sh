#!/usr/bin/env bash
# Where a put's CPU goes, etcd 3.4 and raftkv side by side: fresh 3-member clusters,
# kvbench's puts (64 clients over 8 connections, 256-byte values, 100,000 keys, all
# endpoints, as side-by-side.sh's "3n put c=64 all"), alternating, REPS times. For each
# run: puts/s, the three servers' user and kernel CPU per put, and the load generator's.
# Then what "3x etcd's puts/s" would need on this machine: at 3x etcd's rate the load
# generator alone takes rate x its CPU per put of the cores, and the servers may spend at
# most what is left, per put; compare with raftkv's kernel CPU per put.
#   bash bench/cpu-budget.sh [REPS]     (after cargo build --release and
#                                        apt-get install etcd-server; ~30 s per rep;
#                                        RK=path/to/raftkv for another binary)
set -euo pipefail
cd "$(dirname "$0")/.."
RK=${RK:-$PWD/target/release/raftkv}
REPS=${1:-2}
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
# User and system ticks of the processes named, summed: "user system".
ticks() { local u=0 s=0 p a b; for p in "$@"; do read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + a)); s=$((s + b)); done; echo "$u $s"; }
# kvbench under a Python parent that reads its own children's CPU: prints
# "ops duration_s user_s system_s".
load() {
  python3 - "$K" "$1" "$2" <<'PY'
import json, resource, subprocess, sys
k, backend, endpoints = sys.argv[1:]
r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
out = subprocess.run([k, "put", "--value-size", "256", "--key-space", "100000", "--conns", "8",
                      "--duration", "10s", "--clients", "64", "--backend", backend, "--endpoints", endpoints],
                     capture_output=True, text=True, check=True).stdout
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
  tail -1 "$runs" | awk '{printf "  %-6s %6.0f puts/s; servers %5.1f user + %5.1f kernel us/put; load generator %4.1f + %4.1f\n", $1, $2, $3, $4, $5, $6}'
}
for r in $(seq "$REPS"); do
  echo "run $r of $REPS: etcd" >&2
  "$C" start -n 3 -d "$ED" >/dev/null 2>&1
  pids=$(awk '{print $2}' "$ED/pids" | tr '\n' ' ')
  before=$(ticks $pids); figures=$(load etcd "$("$C" endpoints -d "$ED")"); after=$(ticks $pids)
  record etcd $before $after $figures
  "$C" stop -d "$ED" >/dev/null 2>&1
  echo "run $r of $REPS: raftkv" >&2
  RD=$(mktemp -d /tmp/raftkv-budget.XXXX)
  setsid "$RK" dev --nodes 3 --fresh --no-view --data-root "$RD" >"$RD.log" 2>&1 & dev=$!
  for _ in $(seq 100); do st=$("$RK" status --endpoints $eps 2>/dev/null || true); [[ $st == *" leader "* ]] && break; sleep 0.1; done
  sleep 1
  pids=$(pgrep -P "$dev" | tr '\n' ' ')
  before=$(ticks $pids); figures=$(load raftkv $eps); after=$(ticks $pids)
  record raftkv $before $after $figures
  kill -INT "$dev"; wait "$dev" 2>/dev/null || true; dev=
  rm -rf "$RD" "$RD.log"; RD=
done
python3 - "$runs" "$CORES" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
cores = int(sys.argv[2])
mean = lambda s: [sum(float(r[i]) for r in rows if r[0] == s) / sum(1 for r in rows if r[0] == s) for i in range(1, 6)]
e, k = mean("etcd"), mean("raftkv")
for name, m in (("etcd", e), ("raftkv", k)):
    print("mean %-6s %6.0f puts/s; servers %5.1f us/put (user %5.1f, kernel %5.1f); load generator %4.1f us/put"
          % (name, m[0], m[1] + m[2], m[1], m[2], m[3] + m[4]))
print("raftkv/etcd puts/s %.2f; servers' CPU per put %.2fx less" % (k[0] / e[0], (e[1] + e[2]) / (k[1] + k[2])))
target = 3 * e[0]
left = cores - target * (k[3] + k[4]) / 1e6
print("at 3x etcd (%.0f puts/s) the load generator takes %.2f of %d cores; the servers may spend at most %.1f us/put "
      "(raftkv spends %.1f, of it %.1f in the kernel)" % (target, cores - left, cores, 1e6 * left / target, k[1] + k[2], k[2]))
PY
