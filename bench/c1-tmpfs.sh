#!/usr/bin/env bash
# One client's puts to the leader of a fresh 3-node cluster, etcd then raftkv, with the
# data on disk (/tmp) and on tmpfs (/dev/shm): tmpfs takes fsync out, leaving what each
# costs in CPU and hand-offs per write. kvbench from ../shared/bench.
#   bash bench/c1-tmpfs.sh [REPS]        (after cargo build --release; ~1 min per rep)
set -euo pipefail
cd "$(dirname "$0")/.."
K=$(../shared/bench/build-kvbench.sh); C=../shared/bench/etcd-cluster.sh; RK=$PWD/target/release/raftkv
eps=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
PUT=(put --conns 1 --duration 10s --value-size 256 --key-space 100000 --clients 1)
dev=
trap '[ -n "$dev" ] && kill -INT "$dev" 2>/dev/null; true' EXIT
for rep in $(seq "${1:-2}"); do
  for where in /tmp /dev/shm; do
    echo "rep $rep, data on $where" >&2
    "$C" start -n 3 -d "$where/etcd-c1" >/dev/null 2>&1; sleep 1
    ep=$("$C" leader -d "$where/etcd-c1" | awk '{print $3}')
    echo "etcd $where $("$K" "${PUT[@]}" --backend etcd --endpoints "$ep" 2>/dev/null)"
    "$C" stop -d "$where/etcd-c1" >/dev/null 2>&1; rm -rf "$where/etcd-c1"
    rm -rf "$where/rk-c1"
    setsid "$RK" dev --nodes 3 --fresh --no-view --data-root "$where/rk-c1" >/tmp/rk-c1.log 2>&1 & dev=$!
    for _ in $(seq 100); do
      st=$("$RK" status --endpoints $eps 2>/dev/null || true); [[ $st == *" leader "* ]] && break; sleep 0.1
    done
    l=$("$RK" status --endpoints $eps | awk '$3=="leader"{print $2}')
    echo "raftkv $where $("$K" "${PUT[@]}" --backend raftkv --endpoints "$l" 2>/dev/null)"
    kill -INT "$dev"; wait "$dev" 2>/dev/null || true; dev=; rm -rf "$where/rk-c1"
  done
done
