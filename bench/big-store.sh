#!/usr/bin/env bash
# A large store on one 3-node `raftkv dev` cluster: load N keys of 256 B, then
#  1. every node's RSS;
#  2. kill -9 of a follower and its restart: time until it serves (a serializable Get
#     answers and its applied index reaches the leader's commit);
#  3. the follower's data directory wiped: it catches up by snapshot; the leader's RSS
#     before and its peak during the transfer;
#  4. the whole history paged through Retrieve (`raftkv retrieve`), with the serving
#     node's peak RSS.
# Run from the project's root after `cargo build --release`.
#   bash bench/big-store.sh            env: KEYS=5000000 CLIENTS=64 ROOT=/tmp/raftkv-big
set -euo pipefail
RK=${RAFTKV:-$PWD/target/release/raftkv}
KEYS=${KEYS:-5000000}; CLIENTS=${CLIENTS:-64}; ROOT=${ROOT:-/tmp/raftkv-big}
EP=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
rss() { awk '/VmRSS/{print int($2/1024)}' "/proc/$1/status" 2>/dev/null || echo 0; }
pid_of() { pgrep -P "$DEV" -f -- "--name $1 " | head -1; }
now() { date +%s.%N; }
peak_rss() { # peak_rss PID SECONDS_FILE: samples RSS every 0.2 s until the file appears
  local p=$1 until=$2 peak=0 r
  while [ ! -e "$until" ]; do r=$(rss "$p"); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.2; done
  echo "$peak"
}
leader() { "$RK" status --endpoints "$EP" | awk '$3=="leader"{print $1}' | head -1; }

rm -rf "$ROOT"; mkdir -p "$ROOT"
setsid "$RK" dev --nodes 3 --fresh --data-root "$ROOT/data" >"$ROOT/dev.log" 2>&1 & DEV=$!
trap 'kill -INT $DEV 2>/dev/null; wait $DEV 2>/dev/null; for p in ${EXTRA:-}; do kill $p 2>/dev/null; done' EXIT
sleep 3
echo "== loading $KEYS keys of 256 B with $CLIENTS clients"
"$RK" bench --clients "$CLIENTS" --requests "$KEYS" --sequential-keys --value-size 256 --endpoints "$EP" \
  | tee "$ROOT/load.txt" | grep -E "writes/s|failed|p99" || true
for n in node1 node2 node3; do echo "RSS $n after the load: $(rss "$(pid_of $n)") MiB"; done
du -sh "$ROOT"/data/* | sed 's/^/disk /'

L=$(leader); F=$( [ "$L" = node1 ] && echo node2 || echo node1 ); i=${F#node}
LP=$(pid_of "$L"); FP=$(pid_of "$F")
CMD=$(tr '\0' ' ' <"/proc/$FP/cmdline")
echo "== kill -9 of follower $F and restart"
kill -9 "$FP"; sleep 1
t0=$(now)
# shellcheck disable=SC2086
setsid $CMD >>"$ROOT/$F.restart.log" 2>&1 & NP=$!; EXTRA="$NP"
until "$RK" get key00000000 --serializable --endpoints "127.0.0.1:700$i" --timeout-ms 500 >/dev/null 2>&1; do sleep 0.02; done
t1=$(now)
commit=$("$RK" status --endpoints "$EP" | awk -v l="$L" '$1==l{print $6}')
until [ "$("$RK" status --endpoints "127.0.0.1:700$i" | awk 'NR==2{print $7}')" -ge "$commit" ]; do sleep 0.05; done
t2=$(now)
echo "restart: serving after $(awk "BEGIN{print $t1 - $t0}") s, caught up to the leader's commit $commit after $(awk "BEGIN{print $t2 - $t0}") s; RSS $(rss $NP) MiB"

echo "== $F's data directory wiped: catch-up by snapshot"
kill -9 "$NP"; sleep 0.5; rm -rf "$ROOT/data/$F"
before=$(rss "$LP"); rm -f "$ROOT/done"
peak_rss "$LP" "$ROOT/done" >"$ROOT/peak" & PK=$!
t0=$(now)
# shellcheck disable=SC2086
setsid $CMD >>"$ROOT/$F.wiped.log" 2>&1 & NP=$!; EXTRA="$NP"
commit=$("$RK" status --endpoints "$EP" | awk -v l="$L" '$1==l{print $6}')
until [ "$("$RK" status --endpoints "127.0.0.1:700$i" 2>/dev/null | awk 'NR==2{print $7}')" -ge "$commit" ] 2>/dev/null; do sleep 0.2; done
t1=$(now); touch "$ROOT/done"; wait $PK
echo "wiped follower caught up to $commit in $(awk "BEGIN{print $t1 - $t0}") s; leader RSS $before MiB before, peak $(cat "$ROOT/peak") MiB during; follower RSS $(rss $NP) MiB"

echo "== Retrieve of the whole history through $L"
rm -f "$ROOT/done"; before=$(rss "$LP")
peak_rss "$LP" "$ROOT/done" >"$ROOT/peak" & PK=$!
t0=$(now)
"$RK" retrieve --node "$L" --endpoints "$EP" --timeout-ms 60000 | head -1
t1=$(now); touch "$ROOT/done"; wait $PK
echo "retrieve paged through in $(awk "BEGIN{print $t1 - $t0}") s; server RSS $before MiB before, peak $(cat "$ROOT/peak") MiB during"
