#!/usr/bin/env bash
# A full rehearsal of the Kubernetes deployment on a Docker engine, with no registry:
#
#  1. the runtime base image (debian:bookworm-slim) is made locally with debootstrap
#     and `docker import` if it is missing, and the raftkv image is built from the
#     host's release binary with the same Dockerfile (`--target prebuilt`);
#  2. the StatefulSet's shape runs on two Docker user networks: containers raftkv-0 ...
#     raftkv-N-1, each with its own volume, started with the args and env rendered
#     from k8s/ (`kubectl kustomize`), reaching each other as raftkv-i.<headless
#     service> on a "peer" network, and publishing their client port on 127.0.0.1
#     through a "client" network (so that cutting the peer network is a partition,
#     while clients still reach every container);
#  3. with a real grpcurl against the published ports: a leader is elected;
#     Store/Get/Retrieve work through every container; `docker kill` of the leader
#     gives a new leader, and the killed container restarted on its volume rejoins with
#     its data; `docker stop` of the leader (SIGTERM) hands leadership over (the
#     longest gap between successful writes during it is measured with `raftkv
#     bench`); `docker network disconnect` of two containers leaves the other three
#     committing and the two not, and after reconnecting all five converge with
#     nothing acknowledged lost; a rolling restart (highest ordinal first, each member
#     ready before the next) under write load loses nothing;
#  4. scaling, under write load: replicas N -> N+2 (the new pods join as learners and
#     are promoted once caught up) -> N (the two pods stopped remove themselves first),
#     with no failed write and nothing acknowledged lost. The pods ask a stand-in for
#     the Kubernetes API (scripts/fake-kube-api.py, HTTPS, a service-account token and
#     CA mounted where Kubernetes mounts them) how many replicas the StatefulSet wants.
#
# Everything it creates (containers, volumes, networks, images) carries a label of
# this run and is removed when it ends, whether it passes or fails; set
# REHEARSAL_KEEP_BASE=1 to keep a base image it had to build, REHEARSAL_LOGS=DIR to
# keep every container's log and the bench outputs there. REHEARSAL_BASE_PORT
# (default 17000) moves the published ports (BASE+1 ... BASE+N on 127.0.0.1).
# Needs: docker, cargo, kubectl, python3 with PyYAML, grpcurl, openssl, and debootstrap
# when the base image is missing (.ci/run installs what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

run_id="rehearsal-$$"
label="raftkv.rehearsal=$run_id"
base_port=${REHEARSAL_BASE_PORT:-17000}
image="raftkv:$run_id"
runtime_image=debian:bookworm-slim
client_net="raftkv-client-$$"
peer_net="raftkv-peer-$$"
tmp=$(mktemp -d)
created_base=0
bench_pid=
api_pid=
writer_pid=
started=$(date +%s)

log() { printf '[rehearsal +%3ss] %s\n' "$(($(date +%s) - started))" "$*"; }
die() {
    log "FAILED: $*"
    exit 1
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$bench_pid" ]; then kill "$bench_pid" 2>/dev/null || true; fi
    if [ -n "$api_pid" ]; then kill "$api_pid" 2>/dev/null || true; fi
    if [ -n "$writer_pid" ]; then kill "$writer_pid" 2>/dev/null || true; fi
    if [ -n "${REHEARSAL_LOGS:-}" ]; then
        mkdir -p "$REHEARSAL_LOGS"
        for c in $(docker ps -aq --filter "label=$label" 2>/dev/null); do
            docker logs "$c" >"$REHEARSAL_LOGS/$(docker inspect -f '{{.Name}}' "$c" | tr -d /).log" 2>&1
        done
        cp "$tmp"/bench-*.log "$tmp"/kube-api.log "$REHEARSAL_LOGS/" 2>/dev/null || true
        log "container and bench logs kept in $REHEARSAL_LOGS"
    fi
    if [ "$rc" -ne 0 ]; then
        for c in $(docker ps -aq --filter "label=$label" 2>/dev/null); do
            echo "--- last log lines of $(docker inspect -f '{{.Name}}' "$c")"
            docker logs --tail 25 "$c" 2>&1 | sed 's/^/    /'
        done
    fi
    log "cleaning up"
    local ids
    ids=$(docker ps -aq --filter "label=$label" 2>/dev/null) && [ -n "$ids" ] && docker rm -f $ids >/dev/null
    for net in "$client_net" "$peer_net"; do
        docker network rm "$net" >/dev/null 2>&1 || true
    done
    ids=$(docker volume ls -q --filter "label=$label" 2>/dev/null) && [ -n "$ids" ] && docker volume rm $ids >/dev/null
    docker rmi "$image" >/dev/null 2>&1 || true
    if [ "$created_base" = 1 ] && [ "${REHEARSAL_KEEP_BASE:-0}" != 1 ]; then
        docker rmi "$runtime_image" >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
    if [ "$rc" -eq 0 ]; then log "PASSED"; else log "FAILED (exit $rc)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in docker cargo kubectl python3 grpcurl openssl; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
docker info >/dev/null 2>&1 || die "no Docker engine answers"

# ---- images -------------------------------------------------------------------

# The Debian mirror apt already uses (an override: REHEARSAL_DEBIAN_MIRROR).
debian_mirror() {
    if [ -n "${REHEARSAL_DEBIAN_MIRROR:-}" ]; then
        echo "$REHEARSAL_DEBIAN_MIRROR"
        return
    fi
    local m
    m=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$m" ] || m=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    [ -n "$m" ] || die "no Debian mirror in the apt configuration; set REHEARSAL_DEBIAN_MIRROR"
    echo "$m"
}

if ! docker image inspect "$runtime_image" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || die "no $runtime_image image and no debootstrap to make one"
    mirror=$(debian_mirror)
    log "no $runtime_image image (and no registry): debootstrap of bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$tmp/rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
        { tail -20 "$tmp/debootstrap.log"; die "debootstrap failed"; }
    rm -rf "$tmp"/rootfs/var/cache/apt/archives/*.deb "$tmp"/rootfs/var/lib/apt/lists/*
    created_base=1
    tar -C "$tmp/rootfs" -c . | docker import --change 'CMD ["bash"]' - "$runtime_image" >/dev/null
    rm -rf "$tmp/rootfs"
    log "imported $runtime_image"
fi

log "cargo build --release --locked"
cargo build --release --locked --quiet
bin=target/release/raftkv
log "docker build --target prebuilt -t $image (the host's binary in the Dockerfile's runtime stage)"
docker build --quiet --target prebuilt --label "$label" -t "$image" . >/dev/null
[ "$(docker run --rm --label "$label" "$image" --version)" = "$("$bin" --version)" ] || die "the image runs another binary"

# ---- the StatefulSet, rendered ------------------------------------------------

kubectl kustomize k8s/ >"$tmp/rendered.yaml"
sts() { python3 scripts/statefulset.py "$tmp/rendered.yaml" "$@"; }
n=$(sts replicas)
service=$(sts service)
mount=$(sts mount)
mapfile -t args < <(sts args)
log "StatefulSet: $n replicas, peers at raftkv-i.$service, data on $mount, args: ${args[*]}"

# Two more for the scaling phase.
for ((i = 0; i < n + 2; i++)); do
    if docker container inspect "raftkv-$i" >/dev/null 2>&1; then
        die "a container named raftkv-$i exists already (not this run's); remove it first"
    fi
done
docker network create --label "$label" "$client_net" >/dev/null
docker network create --label "$label" "$peer_net" >/dev/null

port() { echo $((base_port + 1 + $1)); }

# ---- the Kubernetes API, as the pods see it ------------------------------------------

# What a pod gets from Kubernetes: KUBERNETES_SERVICE_HOST/PORT (here the host, on the
# client network that every container stays on) and a service account (token, the
# cluster CA, the namespace) at the usual path. `--leave-on-scale-down` asks it, on
# SIGTERM, for the StatefulSet's replicas.
api_host=$(docker network inspect -f '{{(index .IPAM.Config 0).Gateway}}' "$client_net")
api_port=$((base_port + 443))
namespace=$(python3 -c 'import sys, yaml
print(next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "StatefulSet")["metadata"]["namespace"])' "$tmp/rendered.yaml")
sa=$tmp/serviceaccount
mkdir -p "$sa"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=rehearsal-kube-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$tmp/kube-ca.key" -out "$sa/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=kubernetes \
    -keyout "$tmp/kube-api.key" -out "$tmp/kube-api.csr" 2>/dev/null
printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$api_host" >"$tmp/kube-api.ext"
openssl x509 -req -in "$tmp/kube-api.csr" -CA "$sa/ca.crt" -CAkey "$tmp/kube-ca.key" -CAcreateserial -days 2 \
    -extfile "$tmp/kube-api.ext" -out "$tmp/kube-api.crt" 2>/dev/null
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$sa/token"
printf '%s' "$namespace" >"$sa/namespace"
echo "$n" >"$tmp/replicas"
chmod 755 "$sa" && chmod 644 "$sa"/*
python3 scripts/fake-kube-api.py --listen "$api_host:$api_port" --cert "$tmp/kube-api.crt" --key "$tmp/kube-api.key" \
    --token-file "$sa/token" --namespace "$namespace" --statefulset raftkv --replicas-file "$tmp/replicas" \
    >"$tmp/kube-api.log" 2>&1 &
api_pid=$!
log "the Kubernetes API, faked: https://$api_host:$api_port (StatefulSet raftkv in $namespace, replicas from $tmp/replicas)"

create() {
    local i=$1 envflags=()
    mapfile -t env < <(sts env "$i")
    for e in "${env[@]}"; do envflags+=(-e "$e"); done
    docker volume create --label "$label" "raftkv-data-$i-$$" >/dev/null
    # As the pod runs: read-only root, no capabilities, the image's non-root user.
    docker create --name "raftkv-$i" --hostname "raftkv-$i" --label "$label" \
        --network "$client_net" -p "127.0.0.1:$(port "$i"):7001" \
        -v "raftkv-data-$i-$$:$mount" --read-only --cap-drop ALL \
        --security-opt no-new-privileges --stop-timeout 30 \
        -e KUBERNETES_SERVICE_HOST="$api_host" -e KUBERNETES_SERVICE_PORT="$api_port" \
        -v "$sa:/var/run/secrets/kubernetes.io/serviceaccount:ro" \
        "${envflags[@]}" "$image" "${args[@]}" >/dev/null
    docker network connect --alias "raftkv-$i.$service" "$peer_net" "raftkv-$i"
}

for ((i = 0; i < n; i++)); do create "$i"; done
for ((i = 0; i < n; i++)); do docker start "raftkv-$i" >/dev/null; done
log "started raftkv-0 ... raftkv-$((n - 1)); client ports 127.0.0.1:$(port 0) ... $(port $((n - 1)))"

# ---- helpers ------------------------------------------------------------------

grpc() { # ORDINAL METHOD JSON [grpcurl flags...]
    local i=$1 method=$2 data=$3
    shift 3
    grpcurl -plaintext -max-time 5 -max-msg-sz 67108864 "$@" -d "$data" "127.0.0.1:$(port "$i")" "$method"
}

# Prints "ROLE TERM LEADER APPLIED" of node i (grpcurl's JSON omits zero values).
status() {
    grpc "$1" raftkv.v1.KeyValue/Status '{}' -max-time 2 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(d.get("role", "-"), d.get("term", "0"), d.get("leader") or "-", d.get("appliedIndex", "0"))'
}

# Waits until every node of ORDINALS... agrees on one leader among them; prints its
# ordinal.
wait_leader() {
    local deadline=$(($(date +%s) + 60)) l role term leader applied
    while (($(date +%s) < deadline)); do
        local leaders=() ok=1
        for i in "$@"; do
            read -r role term leader applied < <(status "$i" || echo "- 0 - 0")
            [ "$leader" != - ] || { ok=0; break; }
            leaders+=("$leader")
        done
        if ((ok)) && [ "$(printf '%s\n' "${leaders[@]}" | sort -u | wc -l)" = 1 ]; then
            l=${leaders[0]#raftkv-}
            if printf '%s\n' "$@" | grep -qx "$l" && [ "$(status "$l" | cut -d' ' -f1)" = LEADER ]; then
                echo "$l"
                return
            fi
        fi
        sleep 0.2
    done
    die "nodes $* did not agree on a leader among them within 60 s"
}

term_of() { status "$1" | cut -d' ' -f2; }

# Stores KEY=VALUE through node i; an acknowledged write is remembered.
store() {
    local i=$1 key=$2 value=$3 out
    out=$(grpc "$i" raftkv.v1.KeyValue/Store "{\"key\":\"$key\",\"value\":\"$value\"}" "${@:4}" 2>&1) || return 1
    local index
    index=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["index"])' "$out")
    echo "$key $value $index" >>"$tmp/acked"
}

get() { # ORDINAL KEY -> value (linearizable)
    grpc "$1" raftkv.v1.KeyValue/Get "{\"key\":\"$2\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("value", "<absent>"))'
}

# Waits until node i has applied INDEX.
wait_applied() {
    local i=$1 index=$2 deadline=$(($(date +%s) + 60)) role term leader applied
    while (($(date +%s) < deadline)); do
        read -r role term leader applied < <(status "$i" || echo "- 0 - 0")
        ((applied >= index)) && return
        sleep 0.2
    done
    die "raftkv-$i did not apply $index within 60 s"
}

last_acked() { sort -k3 -n "$tmp/acked" | tail -1 | cut -d' ' -f3; }

# Every acknowledged write (of ACKED, default all so far) is in node i's history, at
# its index.
check_acked_on() {
    local i=$1 acked=${2:-$tmp/acked}
    grpc "$i" raftkv.v1.KeyValue/Retrieve '{}' >"$tmp/history-$i.json"
    python3 - "$tmp/history-$i.json" "$acked" "raftkv-$i" <<'PY' || die "raftkv-$i lost acknowledged writes"
import json, sys
entries = json.load(open(sys.argv[1])).get("entries", [])
at = {int(e["index"]): (e.get("key"), e.get("value", "")) for e in entries}
missing = []
for line in open(sys.argv[2]):
    key, value, index = line.split()
    if at.get(int(index)) != (key, value):
        missing.append(f"{key}={value}@{index}")
if missing:
    print(f"{sys.argv[3]}: missing acknowledged writes: {missing[:10]}")
    sys.exit(1)
PY
}

# Every node has applied and holds every acknowledged write, none holds a refused
# one, and all histories agree.
check_converged() {
    for i in "${all[@]}"; do
        wait_applied "$i" "$(last_acked)"
        check_acked_on "$i"
    done
python3 - "$tmp/refused" "$tmp"/history-*.json <<'PY' || die "the histories differ"
import json, sys
refused = {line.strip() for line in open(sys.argv[1]) if line.strip()}
histories = {}
for path in sys.argv[2:]:
    entries = json.load(open(path)).get("entries", [])
    histories[path] = [(e["index"], e.get("key"), e.get("value", "")) for e in entries]
    lost = [e for e in entries if e.get("key") in refused]
    if lost:
        print(f"{path}: a write refused to the minority was applied: {lost}")
        sys.exit(1)
shortest = min(len(h) for h in histories.values())
first = next(iter(histories.values()))[:shortest]
for path, h in histories.items():
    if h[:shortest] != first:
        print(f"{path} differs from the others")
        sys.exit(1)
print(f"   {len(histories)} histories agree ({shortest} entries), no refused write applied")
PY
}

health() { # ORDINAL SERVICE -> SERVING / NOT_SERVING
    grpc "$1" grpc.health.v1.Health/Check "{\"service\":\"$2\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])'
}

all=($(seq 0 $((n - 1))))
: >"$tmp/acked" >"$tmp/refused"

# ---- 1. election, and the API through every container ---------------------------

leader=$(wait_leader "${all[@]}")
log "1. leader elected: raftkv-$leader (term $(term_of "$leader"))"
services=$(grpcurl -plaintext "127.0.0.1:$(port 0)" list)
for s in raftkv.v1.KeyValue grpc.health.v1.Health; do
    grep -qx "$s" <<<"$services" || die "reflection does not list $s: $services"
done
for i in "${all[@]}"; do
    [ "$(health "$i" raftkv.v1.KeyValue)" = SERVING ] || die "raftkv-$i is not ready"
    store "$i" "from-$i" "value-$i" || die "Store through raftkv-$i failed"
done
for i in "${all[@]}"; do
    for j in "${all[@]}"; do
        [ "$(get "$i" "from-$j")" = "value-$j" ] || die "Get from-$j through raftkv-$i"
    done
done
for i in "${all[@]}"; do
    wait_applied "$i" "$(last_acked)"
    check_acked_on "$i"
done
log "   Store, Get and Retrieve work through every container; reflection and health answer"

# Runs `raftkv bench` for 6 s in the background through every node but OLD.
bench_around() {
    local old=$1 endpoints=()
    for i in "${all[@]}"; do if [ "$i" != "$old" ]; then endpoints+=("127.0.0.1:$(port "$i")"); fi; done
    "$bin" bench --clients 4 --duration-s 6 --value-size 16 --timeout-ms 2000 \
        --endpoints "$(IFS=,; echo "${endpoints[*]}")" >"$tmp/bench.log" 2>&1 &
    bench_pid=$!
}

# Waits for the bench (a child of this shell, so not in a subshell); sets $result.
bench_result() {
    wait "$bench_pid" || { cat "$tmp/bench.log"; die "the bench failed"; }
    bench_pid=
    bench_runs=$((${bench_runs:-0} + 1))
    cp "$tmp/bench.log" "$tmp/bench-$bench_runs.log"
    result="$(grep '^done:' "$tmp/bench.log"); longest gap between successful writes:"
    result+=" $(sed -n 's/^longest gap between successful writes: //p' "$tmp/bench.log")"
}

# ---- 2. docker kill of the leader ------------------------------------------------

old=$leader
log "2. docker kill raftkv-$old (the leader) under load: raftkv bench through the other $((n - 1))"
bench_around "$old"
sleep 2
docker kill "raftkv-$old" >/dev/null
bench_result
kill_result=$result
others=()
for i in "${all[@]}"; do if [ "$i" != "$old" ]; then others+=("$i"); fi; done
leader=$(wait_leader "${others[@]}")
log "   new leader raftkv-$leader (term $(term_of "$leader")); $kill_result"
for i in "${others[@]}"; do
    store "$i" "after-kill-$i" "x$i" || die "Store through raftkv-$i after the kill failed"
done
docker start "raftkv-$old" >/dev/null
wait_applied "$old" "$(last_acked)"
check_acked_on "$old"
log "   raftkv-$old restarted on its volume, rejoined and holds every acknowledged write"

# ---- 3. docker stop (SIGTERM) of the leader: graceful handoff ------------------------

leader=$(wait_leader "${all[@]}")
old=$leader
old_term=$(term_of "$old")
log "3. docker stop raftkv-$old (the leader, term $old_term) under load: raftkv bench through the other $((n - 1))"
bench_around "$old"
sleep 2
docker stop -t 30 "raftkv-$old" >/dev/null
bench_result
stop_result=$result
# Read the logs whole first: `docker logs | grep -q` under pipefail fails when grep
# stops reading at its match and docker logs gets SIGPIPE (seen once in CI).
old_logs=$(docker logs "raftkv-$old" 2>&1)
grep -q "handed leadership over" <<<"$old_logs" ||
    die "raftkv-$old did not hand leadership over on SIGTERM"
others=()
for i in "${all[@]}"; do if [ "$i" != "$old" ]; then others+=("$i"); fi; done
leader=$(wait_leader "${others[@]}")
new_term=$(term_of "$leader")
log "   raftkv-$old handed leadership to raftkv-$leader (term $old_term -> $new_term); $stop_result"
docker start "raftkv-$old" >/dev/null
store "$leader" after-stop yes || die "Store after the handoff failed"
wait_applied "$old" "$(last_acked)"
check_acked_on "$old"
log "   raftkv-$old restarted and caught up"

# ---- 4. network partition: two containers cut off from the peer network ----------

leader=$(wait_leader "${all[@]}")
minority=("$leader" $(((leader + 1) % n)))
majority=()
for i in "${all[@]}"; do if [ "$i" != "${minority[0]}" ] && [ "$i" != "${minority[1]}" ]; then majority+=("$i"); fi; done
for i in "${minority[@]}"; do docker network disconnect "$peer_net" "raftkv-$i"; done
log "4. docker network disconnect raftkv-${minority[0]} (leader) and raftkv-${minority[1]} from the peer network"
leader=$(wait_leader "${majority[@]}")
log "   the other $((n - 2)) elected raftkv-$leader (term $(term_of "$leader"))"
for i in "${majority[@]}"; do
    store "$i" "majority-$i" "m$i" || die "the majority did not commit through raftkv-$i"
done
for i in "${minority[@]}"; do
    if store "$i" "minority-$i" "lost" -max-time 3; then
        die "raftkv-$i committed a write while cut off with a minority"
    fi
    echo "minority-$i" >>"$tmp/refused"
done
deadline=$(($(date +%s) + 30))
for i in "${minority[@]}"; do
    until [ "$(health "$i" raftkv.v1.KeyValue)" = NOT_SERVING ]; do
        (($(date +%s) < deadline)) || die "raftkv-$i still reports ready while cut off"
        sleep 0.2
    done
done
log "   the majority commits; the two cannot (their writes fail) and report not ready"
for i in "${minority[@]}"; do
    docker network connect --alias "raftkv-$i.$service" "$peer_net" "raftkv-$i"
done
leader=$(wait_leader "${all[@]}")
for i in "${minority[@]}"; do
    # The first write forwarded from a node just reconnected may meet a peer connection
    # that died while it was cut off (until HTTP/2 keepalive notices): a client retries.
    for attempt in 1 2 3 4; do
        store "$i" "healed-$i" "h$i" && break
        ((attempt < 4)) || die "Store through raftkv-$i after reconnecting failed"
        log "   a Store through raftkv-$i right after reconnecting failed; retrying"
        sleep 3
    done
done
check_converged
log "   reconnected: one leader (raftkv-$leader), all $n converge, nothing acknowledged lost"

# ---- 5. a rolling restart, as a StatefulSet RollingUpdate does it ----------------------

# Highest ordinal first; each member gets SIGTERM, comes back on its volume and must be
# ready (know a leader) before the next goes. Writes flow meanwhile through a member
# that is not being restarted, as a Service routes around a terminating pod.
wait_ready() {
    local i=$1 deadline=$(($(date +%s) + 60))
    until [ "$(health "$i" raftkv.v1.KeyValue 2>/dev/null)" = SERVING ]; do
        (($(date +%s) < deadline)) || die "raftkv-$i did not become ready within 60 s"
        sleep 0.2
    done
}

log "5. rolling restart: raftkv-$((n - 1)) down to raftkv-0, each ready before the next"
roll() { # ORDINALS... : restart each in turn, with a bench through the first other
    local via
    for ((via = 0; via < n; via++)); do
        if ! printf '%s\n' "$@" | grep -qx "$via"; then break; fi
    done
    "$bin" bench --clients 4 --duration-s $((3 * $# + 3)) --value-size 16 --timeout-ms 2000 \
        --endpoints "127.0.0.1:$(port "$via")" >"$tmp/bench.log" 2>&1 &
    bench_pid=$!
    sleep 1
    for i in "$@"; do
        docker stop -t 30 "raftkv-$i" >/dev/null
        docker start "raftkv-$i" >/dev/null
        wait_ready "$i"
        store "$i" "rolled-$i" "r$i" || die "Store through raftkv-$i after its restart failed"
    done
    bench_result
    log "   restarted $*; bench through raftkv-$via: $result"
}
rest=()
for ((i = n - 1; i > 0; i--)); do rest+=("$i"); done
roll "${rest[@]}"
roll 0
check_converged
log "   every member restarted once; one leader (raftkv-$(wait_leader "${all[@]}")), nothing acknowledged lost"

# Every SIGTERM so far (a handoff, a rolling restart) left the member in the cluster:
# these are founding members, which never leave by themselves.
stays=0
for i in "${all[@]}"; do
    logs=$(docker logs "raftkv-$i" 2>&1)
    stays=$((stays + $(grep -c "a founding member: stopping as a member" <<<"$logs" || true)))
    ! grep -q "removing this member" <<<"$logs" || die "raftkv-$i removed itself on a restart"
done
((stays >= n)) || die "only $stays of the SIGTERMs said the founder stays a member (expected at least $n)"
log "   each of the $stays SIGTERMs left its founding member in the cluster"

# ---- 6. scaling: N -> N+2 -> N under write load ---------------------------------------

# "VOTERS LEARNERS NAMES" as raftkv-i lists the membership.
members() {
    grpc "$1" raftkv.v1.KeyValue/MemberList '{}' 2>/dev/null | python3 -c '
import json, sys
m = json.load(sys.stdin).get("members", [])
print(sum(1 for x in m if not x.get("learner")), sum(1 for x in m if x.get("learner")), ",".join(sorted(x["name"] for x in m)))'
}

# Waits until raftkv-ORDINAL lists VOTERS voters and no learner; sets $names.
wait_members() {
    local i=$1 want=$2 deadline=$(($(date +%s) + 90)) voters learners
    while (($(date +%s) < deadline)); do
        read -r voters learners names < <(members "$i" 2>/dev/null || echo "0 0 -")
        if [ "$voters" = "$want" ] && [ "$learners" = 0 ]; then
            return
        fi
        sleep 0.5
    done
    die "raftkv-$i did not list $want voters and no learner within 90 s (last: $voters voters, $learners learners: $names)"
}

up=$((n + 2))
new=($(seq "$n" $((up - 1))))
founders=()
for i in "${all[@]}"; do founders+=("127.0.0.1:$(port "$i")"); done
# Long enough for both steps on a slow machine; stopped by SIGTERM once they are done
# (the bench then finishes what is in flight and prints its summary).
"$bin" bench --clients 4 --duration-s 600 --value-size 16 --timeout-ms 5000 \
    --endpoints "$(IFS=,; echo "${founders[*]}")" >"$tmp/bench.log" 2>&1 &
bench_pid=$!
# And grpcurl writes through the founders in turn, each acknowledged one remembered:
# every one must be on every member at the end (the bench's keys are not tracked).
: >"$tmp/scaling-failed"
(
    i=0
    while [ ! -e "$tmp/stop-writer" ]; do
        i=$((i + 1))
        store $((i % n)) "scaling-$i" "w$i" -max-time 5 || echo "scaling-$i" >>"$tmp/scaling-failed"
        sleep 0.05
    done
) &
writer_pid=$!
sleep 2
log "6. kubectl scale --replicas=$up (under write load through the $n founders): raftkv-${new[0]} ... raftkv-${new[-1]} start empty"
echo "$up" >"$tmp/replicas"
for i in "${new[@]}"; do create "$i"; done
for i in "${new[@]}"; do docker start "raftkv-$i" >/dev/null; done
wait_members 0 "$up"
for i in "${new[@]}"; do
    logs=$(docker logs "raftkv-$i" 2>&1)
    grep -q "asking to be added as a learner" <<<"$logs" || die "raftkv-$i did not ask to join as a learner"
    # (The member list can show the promotion before the pod has logged it.)
    deadline=$(($(date +%s) + 30))
    until grep -q "promoted from learner to voting member" <<<"$(docker logs "raftkv-$i" 2>&1)"; do
        (($(date +%s) < deadline)) || die "raftkv-$i did not say it was promoted"
        sleep 0.5
    done
    wait_ready "$i"
    store "$i" "scaled-up-$i" "s$i" || die "Store through raftkv-$i failed"
    # The writes acknowledged so far (the writer goes on meanwhile).
    cp "$tmp/acked" "$tmp/acked-now"
    wait_applied "$i" "$(sort -k3 -n "$tmp/acked-now" | tail -1 | cut -d' ' -f3)"
    check_acked_on "$i" "$tmp/acked-now"
done
log "   $up voters ($names): each new pod joined as a learner, caught up, promoted itself and holds every acknowledged write"

log "   kubectl scale --replicas=$n: raftkv-${new[0]} ... raftkv-${new[-1]} get SIGTERM at once (Parallel pod management)"
echo "$n" >"$tmp/replicas"
stops=()
for i in "${new[@]}"; do
    docker stop -t 30 "raftkv-$i" >/dev/null &
    stops+=($!)
done
for p in "${stops[@]}"; do wait "$p"; done
kill -0 "$bench_pid" 2>/dev/null || die "the write load ended before the scale-down did"
for i in "${new[@]}"; do
    logs=$(docker logs "raftkv-$i" 2>&1)
    grep -q "the StatefulSet is scaled down past this pod" <<<"$logs" || die "raftkv-$i did not ask the Kubernetes API"
    grep -q "removed from the membership" <<<"$logs" || die "raftkv-$i did not remove itself before stopping"
done
wait_members 0 "$n"
for i in "${new[@]}"; do
    # As `kubectl delete pvc data-raftkv-$i` after a scale-down (README "Kubernetes").
    docker rm -f "raftkv-$i" >/dev/null
    docker volume rm "raftkv-data-$i-$$" >/dev/null
    rm -f "$tmp/history-$i.json"
done
log "   $n voters again ($names): the departing pods removed themselves before they stopped"
kill -TERM "$bench_pid"
touch "$tmp/stop-writer"
wait "$writer_pid"
writer_pid=
[ ! -s "$tmp/scaling-failed" ] || die "grpcurl writes failed while scaling: $(head -5 "$tmp/scaling-failed" | paste -sd' ')"
scaling_acked=$(grep -c '^scaling-' "$tmp/acked" || true)
bench_result
failed=$(sed -n 's/^done: .* ok, \([0-9]*\) failed.*/\1/p' "$tmp/bench.log")
[ "$failed" = 0 ] || die "writes failed while scaling: $result"
scale_result=$result
for i in "${all[@]}"; do store "$i" "scaled-down-$i" "d$i" || die "Store through raftkv-$i after scaling down failed"; done
check_converged
log "   bench through the founders while scaling: $scale_result"
log "   $scaling_acked grpcurl writes through the founders while scaling: none failed, every one on all $n members"

log "summary: $(wc -l <"$tmp/acked") acknowledged grpcurl writes, all present on every node"
log "   docker kill of the leader: $kill_result"
log "   docker stop of the leader: $stop_result"
log "   scaling $n -> $up -> $n: $scale_result"
