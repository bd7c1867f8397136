#!/usr/bin/env bash
# kill -9 of the leader of a fresh 5-node `raftkv dev` under load (raftkv bench, 8
# clients through the other four, 1 s timeout): the longest gap between successful
# writes and the failed writes, RUNS times.
#   bash bench/kill-gap.sh [RUNS]        (after cargo build --release; ~10 s per run;
#                                         RK=path/to/raftkv for another binary)
set -uo pipefail
cd "$(dirname "$0")/.."
RK=${RK:-$PWD/target/release/raftkv}
eps=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003,127.0.0.1:7004,127.0.0.1:7005
dev=
trap '[ -n "$dev" ] && kill -INT "$dev" 2>/dev/null; true' EXIT
for run in $(seq "${1:-3}"); do
  rm -rf /tmp/gap-dev
  setsid "$RK" dev --nodes 5 --fresh --no-view --data-root /tmp/gap-dev >/tmp/gap-dev.log 2>&1 & dev=$!
  for _ in $(seq 100); do st=$("$RK" status --endpoints $eps 2>/dev/null || true); [[ $st == *" leader "* ]] && break; sleep 0.1; done
  sleep 1
  l=$("$RK" status --endpoints $eps | awk '$3=="leader"{print $2}')
  n=${l##*:700}
  others=$(echo $eps | tr ',' '\n' | grep -v ":700$n\$" | paste -sd,)
  # The leader's PID, from the table `raftkv dev` prints (our own child).
  lpid=$(awk -v n="node$n" '$1==n && $2 ~ /^[0-9]+$/ {print $2; exit}' /tmp/gap-dev.log)
  "$RK" bench --clients 8 --duration-s 5 --timeout-ms 1000 --value-size 16 --endpoints "$others" >/tmp/gap-bench.log 2>&1 & b=$!
  sleep 2; kill -9 "$lpid"
  wait $b
  echo "run $run: killed node$n: $(grep '^done:' /tmp/gap-bench.log); $(grep '^longest gap' /tmp/gap-bench.log)"
  kill -INT $dev; wait $dev 2>/dev/null; dev=
done
rm -rf /tmp/gap-dev
