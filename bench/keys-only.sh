#!/usr/bin/env bash
# A keys-only range over many large values, through etcd's API: a fresh `raftkv dev --nodes 3`
# from BINARY, filled by kvbench (64 clients, 10 s, 20,000 keys of 2 KiB), then ten
# `etcdctl get key/ --prefix --keys-only` calls timed, and ten gets of one key (etcdctl's
# own start). Needs etcdctl (Debian: etcd-client) and python3. Run from the project's root.
#   bash bench/keys-only.sh BINARY
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: bench/keys-only.sh BINARY" >&2; exit 2; }
B=$1; K=$(../shared/bench/build-kvbench.sh); eps=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
RD=$(mktemp -d /tmp/ko-run.XXXX); dp=
trap 'if [ -n "$dp" ]; then kill -INT "$dp" 2>/dev/null || true; wait "$dp" 2>/dev/null || true; fi; rm -rf "$RD" "$RD.log"' EXIT
setsid "$B" dev --nodes 3 --fresh --no-view --data-root "$RD" >"$RD.log" 2>&1 & dp=$!
for _ in $(seq 100); do st=$("$B" status --endpoints $eps 2>/dev/null || true); [[ $st == *" leader "* ]] && break; sleep 0.1; done
sleep 1
echo "filling 20,000 keys of 2 KiB for 10 s ..." >&2
"$K" put --backend raftkv --endpoints "$eps" --clients 64 --conns 8 --duration 10s --key-space 20000 --value-size 2048 >/dev/null 2>&1
export ETCDCTL_API=3
ctl() { etcdctl --endpoints 127.0.0.1:7001 "$@"; }
echo "keys: $(ctl get key/ --prefix --keys-only -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')"
# Milliseconds per call of the command given, over ten calls.
per_call() { local t0 t1; t0=$(date +%s%N); for _ in $(seq 10); do "$@" >/dev/null; done; t1=$(date +%s%N); echo $(((t1 - t0) / 10000000)); }
echo "keys-only range: $(per_call ctl get key/ --prefix --keys-only) ms per call"
echo "one key (etcdctl's start): $(per_call ctl get key/00000001 --keys-only) ms per call"
