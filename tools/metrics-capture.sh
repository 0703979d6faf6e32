#!/usr/bin/env bash
# A failover under load, scraped by Prometheus and drawn as the Grafana dashboard's panels
# (tools/grafana/catena-dashboard.json) into docs/images/failover-under-load.png.
#
# Starts a local cluster (`catena up`, the master and n1, n2, n3 on 127.0.0.1:7000-7003, metrics
# on 9100-9103, data in a temporary directory) and a Prometheus on 127.0.0.1:9190 scraping every
# process each second; runs `catena bench --verify` for 60 s, kills a node with SIGKILL at 20 s,
# starts it again at 35 s and adds it back (`catena chain add-node --wait`); then asks Prometheus
# for every panel's query over the run and calls tools/render-dashboard.py. About 80 s in all.
# Everything it starts is stopped by pid on exit, and its temporary directory removed.
#
#   tools/metrics-capture.sh [--kill n2] [--out FILE.png] [--keep DIR]
#     --kill ID   the node to kill (n1 is the head, n2 the middle, n3 the tail); default n2
#     --out FILE  the picture; default docs/images/failover-under-load.png
#     --keep DIR  also copy the query results, logs and bench report to DIR
#
# Needs (installs nothing): prometheus (apt-get install -y prometheus), python3 with matplotlib
# (pip install matplotlib), curl; builds .build/release/catena if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

KILL_NODE=n2
OUT=docs/images/failover-under-load.png
KEEP=""
DURATION=60 KILL_AT=20 RESTART_AT=35
PROM_ADDRESS=127.0.0.1:9190
while [ $# -gt 0 ]; do
    case "$1" in
        --kill) KILL_NODE="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --keep) KEEP="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "metrics-capture: unknown argument '$1' (see --help)" >&2; exit 64 ;;
    esac
done
case "$KILL_NODE" in n1|n2|n3) ;; *) echo "metrics-capture: --kill takes n1, n2 or n3" >&2; exit 64 ;; esac

say() { printf 'metrics-capture: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# --- what it needs --------------------------------------------------------------------------
missing=0
command -v prometheus >/dev/null || { say "no prometheus on PATH: apt-get install -y prometheus (Debian/Ubuntu), or a release from https://prometheus.io/download/"; missing=1; }
command -v python3 >/dev/null || { say "no python3 on PATH: apt-get install -y python3"; missing=1; }
if command -v python3 >/dev/null && ! python3 -c 'import matplotlib' 2>/dev/null; then
    say "python3 has no matplotlib: pip install matplotlib (or python3 -m venv /tmp/mpl && /tmp/mpl/bin/pip install matplotlib, then put /tmp/mpl/bin first on PATH)"
    missing=1
fi
command -v curl >/dev/null || { say "no curl on PATH: apt-get install -y curl"; missing=1; }
[ "$missing" = 0 ] || exit 1

if ! command -v swift >/dev/null && [ -x /opt/swift/usr/bin/swift ]; then export PATH="$PATH:/opt/swift/usr/bin"; fi
CATENA=$PWD/.build/release/catena
if [ ! -x "$CATENA" ]; then
    say "building $CATENA"
    swift build -c release --product catena >&2 || die "the build failed (missing C libraries? tools/install-deps.sh installs them)"
fi

# Fixed ports (the dashboard's node names and the README's commands assume them): refuse to start
# next to a cluster or Prometheus that already uses one.
for port in 7000 7001 7002 7003 9100 9101 9102 9103 "${PROM_ADDRESS##*:}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "127.0.0.1:$port is in use (a cluster from tools/run.sh or another capture?); stop it first"
    fi
done

# --- cleanup: every process this script started, by pid -----------------------------------
TMP=$(mktemp -d /tmp/catena-capture.XXXXXX)
PIDS=()
cleanup() {
    local status=$? pid i
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        kill -TERM "$pid" 2>/dev/null || true
    done
    for i in $(seq 150); do  # up to 15 s for graceful exits (catena up gives its nodes 10 s)
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$KEEP" ] && [ -d "$TMP" ]; then
        mkdir -p "$KEEP"
        cp -r "$TMP/results" "$TMP"/*.log "$TMP"/bench.* "$TMP/prometheus.yml" "$TMP/topology.yaml" "$KEEP"/ 2>/dev/null || true
        say "kept results and logs in $KEEP (tools/render-dashboard.py render --results $KEEP/results draws them again)"
    fi
    rm -rf "$TMP"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N | cut -c1-14; }
# Sleeps until T0 + $1 seconds.
sleep_until() { local left; left=$(awk -v t0="$T0" -v at="$1" -v now="$(now)" 'BEGIN { d = t0 + at - now; print (d > 0 ? d : 0) }'); sleep "$left"; }
EVENTS=()
event() { EVENTS+=("{\"t\": $(now), \"label\": \"$1\"}"); say "$(awk -v t0="$T0" -v now="$(now)" 'BEGIN { printf "%5.1f s", now - t0 }'): $1"; }

# --- the cluster ------------------------------------------------------------------------------
mkdir -p "$TMP/results"
TOPOLOGY=$TMP/topology.yaml
{
    echo "# tools/metrics-capture.sh: topology/local.yaml with its data in $TMP"
    echo "version: 1"
    echo "cluster: capture"
    echo "chain: 1"
    printf 'master:\n  listen: 127.0.0.1:7000\n  metrics: 127.0.0.1:9100\n  data: %s\n' "$TMP/master"
    printf 'heartbeat:\n  interval_ms: 100\n  timeout_ms: 1000\n'
    echo "nodes:"
    for i in 1 2 3; do
        printf '  - id: n%s\n    listen: 127.0.0.1:700%s\n    metrics: 127.0.0.1:910%s\n    data: %s\n' $i $i $i "$TMP/n$i"
    done
} > "$TOPOLOGY"

START=$(now)
say "starting the cluster (catena up, data in $TMP)"
"$CATENA" up --topology "$TOPOLOGY" > "$TMP/up.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
for i in $(seq 600); do
    grep -q '^ready' "$TMP/up.log" 2>/dev/null && break
    kill -0 "$UP_PID" 2>/dev/null || { cat "$TMP/up.log" >&2; die "catena up exited"; }
    sleep 0.1
done
grep -q '^ready' "$TMP/up.log" || { cat "$TMP/up.log" >&2; die "the cluster was not ready in 60 s"; }
# The master and the nodes too, so that none outlives this script if catena up is killed first.
for pid in $(pgrep -P "$UP_PID" || true); do PIDS+=("$pid"); done

# --- Prometheus -------------------------------------------------------------------------------
# honor_labels: a series' own `node` label wins (the master's per-member series, catena_node_info);
# every node's other series get the target's.
{
    echo "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}"
    echo "scrape_configs:"
    echo "  - job_name: catena-master"
    echo "    honor_labels: true"
    echo "    static_configs:"
    echo "      - targets: ['127.0.0.1:9100']"
    echo "  - job_name: catena-node"
    echo "    honor_labels: true"
    echo "    static_configs:"
    for i in 1 2 3; do echo "      - {targets: ['127.0.0.1:910$i'], labels: {node: n$i}}"; done
} > "$TMP/prometheus.yml"
prometheus --config.file "$TMP/prometheus.yml" --storage.tsdb.path "$TMP/prometheus" \
    --web.listen-address "$PROM_ADDRESS" --log.level warn > "$TMP/prometheus.log" 2>&1 &
PROM_PID=$!
PIDS+=("$PROM_PID")
up=0
for i in $(seq 100); do
    kill -0 "$PROM_PID" 2>/dev/null || { cat "$TMP/prometheus.log" >&2; die "prometheus exited"; }
    up=$(curl -s --max-time 2 -G "http://$PROM_ADDRESS/api/v1/query" --data-urlencode 'query=count(up == 1)' 2>/dev/null \
        | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)' 2>/dev/null || echo 0)
    [ "$up" = 4 ] && break
    sleep 0.2
done
[ "$up" = 4 ] || die "prometheus scrapes $up of the 4 targets after 20 s (see $TMP/prometheus.log)"
say "prometheus on http://$PROM_ADDRESS scrapes 4 targets each second"

# --- the load and the failure -----------------------------------------------------------------
T0=$(now)
"$CATENA" bench --master 127.0.0.1:7000 --duration "${DURATION}s" --concurrency 16 --mix put=50,get=50 --size 4KiB \
    --verify --json "$TMP/bench.json" > "$TMP/bench.log" 2>&1 &
BENCH_PID=$!
PIDS+=("$BENCH_PID")
say "load started: catena bench for ${DURATION} s; $KILL_NODE is killed at ${KILL_AT} s, restarted at ${RESTART_AT} s"

NODE_PID=$(pgrep -P "$UP_PID" -f -- "node --id $KILL_NODE --topology" || true)
[ -n "$NODE_PID" ] || die "no process of $KILL_NODE under catena up (pid $UP_PID)"
sleep_until "$KILL_AT"
kill -KILL "$NODE_PID"
event "$KILL_NODE killed"

sleep_until "$RESTART_AT"
ADDRESS=127.0.0.1:700${KILL_NODE#n}
"$CATENA" node --id "$KILL_NODE" --topology "$TOPOLOGY" --master 127.0.0.1:7000 --log-level warning \
    > "$TMP/$KILL_NODE-restarted.log" 2>&1 &
PIDS+=("$!")
event "$KILL_NODE restarted"
if "$CATENA" chain add-node "$KILL_NODE" --address "$ADDRESS" --wait --wait-timeout 20 --master 127.0.0.1:7000 \
    > "$TMP/add-node.log" 2>&1; then
    event "$KILL_NODE back in"
else
    say "add-node did not finish: $(tail -n 3 "$TMP/add-node.log")"
fi

BENCH_STATUS=0
# The bench stops by itself at its duration (and gives up after 30 s of failures); bound it anyway.
for i in $(seq $(( (DURATION + 90) * 10 ))); do kill -0 "$BENCH_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$BENCH_PID" 2>/dev/null && { say "catena bench still running 90 s past its duration: stopping it"; kill -INT "$BENCH_PID"; }
wait "$BENCH_PID" || BENCH_STATUS=$?
sleep 3  # the last scrapes
END=$(now)
say "load done (catena bench exit status $BENCH_STATUS):"
sed 's/^/  /' "$TMP/bench.log" >&2

# --- the queries, the picture -----------------------------------------------------------------
VERSION=$("$CATENA" version 2>/dev/null | head -n 1 || true)
python3 tools/render-dashboard.py queries | while IFS=$'\t' read -r key expr; do
    curl -s --max-time 10 -G "http://$PROM_ADDRESS/api/v1/query_range" --data-urlencode "query=$expr" \
        --data-urlencode "start=$START" --data-urlencode "end=$END" --data-urlencode step=1 \
        -o "$TMP/results/$key.json" || say "query $key failed: $expr"
done
RUN=$(grep -E '^run:' "$TMP/bench.log" | head -n 1 || true)
VERIFY=$(grep -E '^verify:' "$TMP/bench.log" | head -n 1 || true)
python3 - "$TMP/results/meta.json" "$T0" "$START" "$END" "$VERSION" \
    "catena bench --duration ${DURATION}s --concurrency 16 --mix put=50,get=50 --size 4KiB --verify; $KILL_NODE killed (SIGKILL) at ${KILL_AT} s, restarted and added back at ${RESTART_AT} s. ${RUN:+$RUN. }${VERIFY}" \
    "[$(IFS=,; echo "${EVENTS[*]}")]" <<'EOF'
import json, sys
path, t0, start, end, version, subtitle, events = sys.argv[1:]
title = "Catena: a failover under load" + (f" ({version})" if version else "")
json.dump({"t0": float(t0), "start": float(start), "end": float(end), "step": 1, "title": title,
           "subtitle": subtitle, "events": json.loads(events)}, open(path, "w"), indent=1)
EOF
python3 tools/render-dashboard.py render --results "$TMP/results" --out "$OUT"
[ "$BENCH_STATUS" = 0 ] || die "catena bench exited with status $BENCH_STATUS (see its report above)"
