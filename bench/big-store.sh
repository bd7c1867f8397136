#!/usr/bin/env bash
# A large store on one 3-node cluster (three `raftkv serve` processes on loopback):
#  1. load KEYS keys of 256 B; every node's RSS and disk;
#  2. kill -9 of a follower and its restart: time until it serves (a serializable Get
#     answers) and until its applied index reaches the leader's commit;
#  3. a follower's data directory wiped, the cluster restarted (a leader keeps a wiped
#     member's old match index, so only a new leader serves it: see issue 14): the
#     follower catches up by snapshot; the leader's RSS before, its peak during;
#  4. the whole history paged through Retrieve (`raftkv retrieve`), with the serving
#     node's peak RSS.
# Run from the project's root after `cargo build --release`.
#   bash bench/big-store.sh        env: KEYS=5000000 CLIENTS=64 ROOT=/tmp/raftkv-big
#                                       SKIP_LOAD=1 (reuse ROOT's data from a run before)
set -euo pipefail
RK=${RAFTKV:-$PWD/target/release/raftkv}
KEYS=${KEYS:-5000000}; CLIENTS=${CLIENTS:-64}; ROOT=${ROOT:-/tmp/raftkv-big}
EP=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
CLUSTER=node1=127.0.0.1:7101,node2=127.0.0.1:7102,node3=127.0.0.1:7103
declare -A PID
rss() { awk '/VmRSS/{print int($2/1024)}' "/proc/$1/status" 2>/dev/null || echo 0; }
now() { date +%s.%N; }
since() { awk "BEGIN{printf \"%.2f\", $(now) - $1}"; }
start() { # start N: node N from its data directory
  setsid "$RK" serve --name "node$1" --client-addr "127.0.0.1:700$1" --peer-addr "127.0.0.1:710$1" \
    --initial-cluster "$CLUSTER" --data-dir "$ROOT/data/node$1" >>"$ROOT/node$1.log" 2>&1 &
  PID[$1]=$!
}
stop_all() { for i in 1 2 3; do kill -9 "${PID[$i]:-0}" 2>/dev/null || true; done; sleep 0.5; }
trap stop_all EXIT
leader() { "$RK" status --endpoints "$EP" 2>/dev/null | awk '$3=="leader"{print substr($1, 5)}' | head -1; }
wait_leader() { until [ -n "$(leader)" ]; do sleep 0.1; done; leader; }
applied_of() { "$RK" status --endpoints "127.0.0.1:700$1" 2>/dev/null | awk 'NR==2{print $7}'; }
commit_of() { "$RK" status --endpoints "127.0.0.1:700$1" 2>/dev/null | awk 'NR==2{print $6}'; }
peak_rss() { # peak_rss PID STOPFILE: samples RSS every 0.2 s until STOPFILE exists
  local peak=0 r
  while [ ! -e "$2" ]; do r=$(rss "$1"); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.2; done
  echo "$peak"
}

if [ -z "${SKIP_LOAD:-}" ]; then
  rm -rf "$ROOT"; mkdir -p "$ROOT/data"
fi
for i in 1 2 3; do start "$i"; done
L=$(wait_leader)
if [ -z "${SKIP_LOAD:-}" ]; then
  echo "== loading $KEYS keys of 256 B with $CLIENTS clients (leader node$L)"
  "$RK" bench --clients "$CLIENTS" --requests "$KEYS" --sequential-keys --value-size 256 --endpoints "$EP" \
    >"$ROOT/load.txt"
  grep -E "^(done|throughput|latency)" "$ROOT/load.txt"
fi
t0=$(now); L=$(wait_leader); commit=$(commit_of "$L")
for i in 1 2 3; do until [ "$(applied_of "$i")" -ge "$commit" ] 2>/dev/null; do sleep 0.2; done; done
echo "every node applied commit $commit ($(since "$t0") s)"
for i in 1 2 3; do echo "node$i: RSS $(rss "${PID[$i]}") MiB, disk $(du -sh "$ROOT/data/node$i" | cut -f1)"; done

L=$(wait_leader); F=$(( L % 3 + 1 ))
echo "== kill -9 of follower node$F and restart"
kill -9 "${PID[$F]}"; sleep 1
t0=$(now); start "$F"
until "$RK" get key00000000 --serializable --endpoints "127.0.0.1:700$F" --timeout-ms 500 >/dev/null 2>&1; do sleep 0.02; done
serving=$(since "$t0")
commit=$(commit_of "$L")
until [ "$(applied_of "$F")" -ge "$commit" ] 2>/dev/null; do sleep 0.05; done
echo "restart: serving after $serving s, applied the leader's commit $commit after $(since "$t0") s; RSS $(rss "${PID[$F]}") MiB"

echo "== node$F's data directory wiped, the cluster restarted: catch-up by snapshot"
stop_all; rm -rf "$ROOT/data/node$F"
for i in 1 2 3; do start "$i"; done
L=$(wait_leader); t0=$(now); before=$(rss "${PID[$L]}"); rm -f "$ROOT/done"
peak_rss "${PID[$L]}" "$ROOT/done" >"$ROOT/peak" & PK=$!
peak_rss "${PID[$F]}" "$ROOT/done" >"$ROOT/peak-follower" & PKF=$!
commit=$(commit_of "$L")
until [ "$(applied_of "$F")" -ge "$commit" ] 2>/dev/null; do sleep 0.2; done
touch "$ROOT/done"; wait $PK $PKF
echo "the wiped node$F applied the leader's commit $commit $(since "$t0") s after node$L led; leader RSS $before MiB then, peak $(cat "$ROOT/peak") MiB during; node$F RSS peak $(cat "$ROOT/peak-follower") MiB during, $(rss "${PID[$F]}") MiB after"

echo "== Retrieve of the whole history through node$L"
rm -f "$ROOT/done"; before=$(rss "${PID[$L]}")
peak_rss "${PID[$L]}" "$ROOT/done" >"$ROOT/peak" & PK=$!
t0=$(now)
"$RK" retrieve --node "node$L" --endpoints "127.0.0.1:700$L" --timeout-ms 60000 >"$ROOT/retrieve.txt"
took=$(since "$t0"); touch "$ROOT/done"; wait $PK
head -1 "$ROOT/retrieve.txt"; rm -f "$ROOT/retrieve.txt"
echo "retrieve paged through in $took s; server RSS $before MiB before, peak $(cat "$ROOT/peak") MiB during"
