#!/usr/bin/env bash
# The cost of TLS: a fresh `raftkv dev --nodes 3` in plain text, then one with --tls
# (mutual TLS on the client and peer ports), alternated REPS times; each gets one
# `raftkv bench` of DURATION seconds (64 clients, 1 KiB values, 1M-key space).
#   bash bench/tls.sh [DURATION_S] [REPS]          (after cargo build --release)
set -euo pipefail
RK=${RAFTKV:-$PWD/target/release/raftkv}; DUR=${1:-20}; REPS=${2:-2}
EP=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
for r in $(seq "$REPS"); do
  for mode in plain tls; do
    RD=$(mktemp -d /tmp/raftkv-tls.XXXX)
    flags=(); tlsargs=()
    if [ "$mode" = tls ]; then
      flags=(--tls); P=$RD/pki; tlsargs=(--cacert "$P/ca.pem" --cert "$P/client.pem" --key "$P/client-key.pem")
    fi
    setsid "$RK" dev --nodes 3 --fresh --data-root "$RD" "${flags[@]}" >"$RD.log" 2>&1 & dp=$!
    sleep 3
    echo "run $r, $mode: $("$RK" bench --clients 64 --duration-s "$DUR" --value-size 1024 --key-space 1000000 \
      --endpoints "$EP" "${tlsargs[@]}" 2>&1 | grep -E 'writes/s|throughput|p99' | tr '\n' ' ')"
    kill -INT "$dp"; wait "$dp" 2>/dev/null || true; rm -rf "$RD" "$RD.log"
  done
done
