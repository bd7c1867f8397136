#!/usr/bin/env bash
# Checks the Kubernetes manifests without a cluster:
#  1. `kubectl kustomize k8s/` renders them;
#  2. every manifest, and the rendered whole, validates strictly against the
#     Kubernetes OpenAPI schema (kubernetes-validate);
#  3. the binary accepts the StatefulSet's container args and env as every pod would
#     get them (`raftkv serve --check-config`), and derives the same members: each
#     pod's peers at their stable DNS names, never pod IPs.
# Needs kubectl, kubernetes-validate and PyYAML (.ci/run installs them) and a built
# raftkv binary (RAFTKV_BIN, default target/debug/raftkv).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${RAFTKV_BIN:-target/debug/raftkv}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== kubectl kustomize k8s/"
kubectl kustomize k8s/ > "$tmp/rendered.yaml"
grep -c '^kind:' "$tmp/rendered.yaml" | xargs echo "rendered resources:"

echo "== kubernetes-validate --strict"
resources=()
for f in k8s/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || resources+=("$f")
done
kubernetes-validate --strict --quiet "$tmp/rendered.yaml" "${resources[@]}"
echo "valid: rendered.yaml ${resources[*]}"

echo "== raftkv serve --check-config with the StatefulSet's args and env"
sts() { python3 scripts/statefulset.py "$tmp/rendered.yaml" "$@"; }
replicas=$(sts replicas)
service=$(sts service)
mapfile -t args < <(sts args)
[ "${args[0]}" = serve ] || { echo "the container does not run 'serve': ${args[*]}"; exit 1; }
for ((i = 0; i < replicas; i++)); do
    mapfile -t env < <(sts env "$i")
    out=$(env -i PATH="$PATH" "${env[@]}" "$bin" "${args[@]}" --check-config)
    echo "pod $i: $out"
    want="members="
    for ((j = 0; j < replicas; j++)); do
        want+="raftkv-$j=raftkv-$j.$service:7100"
        ((j + 1 < replicas)) && want+=","
    done
    case "$out" in
        "config OK: name=raftkv-$i "*"$want") ;;
        *) echo "pod $i: expected name=raftkv-$i and $want"; exit 1 ;;
    esac
done
# A pod past the founding size (the StatefulSet scaled up) joins: the founders, then
# itself, and it starts as a joining member.
mapfile -t env < <(sts env "$replicas")
out=$(env -i PATH="$PATH" "${env[@]}" "$bin" "${args[@]}" --check-config)
echo "pod $replicas (scaled up): $out"
case "$out" in
    "config OK: name=raftkv-$replicas "*"initial-cluster-state=existing"*"$want,raftkv-$replicas=raftkv-$replicas.$service:7100") ;;
    *) echo "pod $replicas: expected to join as raftkv-$replicas after $want"; exit 1 ;;
esac
# And a broken configuration is refused, not served.
if env -i PATH="$PATH" RAFTKV_NAME=raftkv RAFTKV_INITIAL_CLUSTER_SIZE="$replicas" \
    RAFTKV_PEER_SERVICE="$service" "$bin" "${args[@]}" --check-config 2>"$tmp/err"; then
    echo "a name without an ordinal was accepted"; exit 1
fi
echo "refused as it should be: $(cat "$tmp/err")"
echo "k8s manifests OK"
