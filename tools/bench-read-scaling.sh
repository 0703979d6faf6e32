#!/usr/bin/env bash
# Read scaling of CRAQ: reads/s with `--read-mode linearizable` (every member answers) against
# `--read-mode tail` (the tail only), on a local 3-node chain whose nodes each get a CPU budget
# of their own.
#
# Why the budget: on one machine the three node processes share the same cores, so spreading
# reads over them cannot show what three machines would — the tail alone can already use every
# core. Here each node process is put in a cgroup (v1, cpu.cfs_quota_us) of its own, NODE_CPU
# cores each (0.33 by default: the load generator needs 0.4–0.6 of the nodes' CPU at CRAQ's
# rate, and 3 × 0.33 leaves it about half a core of the two; at 0.5 the machine, not the nodes,
# bound the CRAQ runs), so the tail is "one machine's worth" of CPU as in production and
# tail-only reads are bound by it. The master and the load generator stay unrestricted; the
# client's CPU per run is reported (from /proc) so that a reader can tell whether the client,
# not the nodes, was the bottleneck. Choose NODE_CPU so that 3 × NODE_CPU plus what the client
# needs at CRAQ's rate fits the machine's cores (see the CPU table the script prints).
#
# What it runs: `catena up` (master and n1 → n2 → n3 on 127.0.0.1, ports picked by the system,
# data in a temporary directory, never the repository's .catena/), then one prefill of --keys
# 4 KiB objects, then for each mix (get=100; get=95,put=5; get=50,put=50) and each round, tail
# then linearizable, one `catena bench` each (alternating, in one run: the disk and the CPU vary
# between days, so figures mean something only side by side). Each run's JSON report and log go
# to --out. At the end, Markdown tables: per mix and mode the reads/s (mean and each round),
# writes/s, read p50/p99; CRAQ/tail per mix; reads/s at 95/5 and 50/50 over read-only per mode
# (issue goals: CRAQ ≥ 2.5× tail at 95/5; reads under writes ≥ 85 % of read-only); per run the
# CPU seconds of the client, each node (and how often its quota throttled it), the master and
# everything else on the machine; the cgroup settings and every command run.
# Note: a mix is a closed loop — at 50/50 each worker also waits for its puts, so reads/s falls
# below read-only even with no interference between reads and writes.
#
# Acknowledgement modes (write latency and throughput of each, same run): once `catena bench
# --help` lists an --ack option, `catena bench --mix put=100 --ack MODE` per mode of --ack-modes
# (default all,2,head) and round, alternating. Until it does, that part is skipped with a note
# in the report (nothing is faked).
#
#   tools/bench-read-scaling.sh [--node-cpu 0.33] [--duration 20s] [--concurrency 64] [--keys 10000]
#                               [--rounds 2] [--out DIR] [--keep] [--period-us 100000]
#                               [--ack-modes LIST] [--catena PATH] [-- EXTRA BENCH ARGS]
#     --node-cpu C    each node's CPU budget in cores (quota = C × period); default 0.33
#     --duration D    each measured run (catena bench --duration); default 20s
#     --concurrency N catena bench workers; default 64
#     --keys N        keys (4 KiB objects, all written once first); default 10000
#     --rounds N      runs of each mix and mode, alternating tail and linearizable; default 2
#     --out DIR       where the JSON reports, logs, commands and summary.md go; default a new
#                     /tmp/catena-read-scaling-DATE directory (kept)
#     --keep          keep the scratch directory (topology, data, cluster log) too
#     --period-us P   cpu.cfs_period_us of the node cgroups; default 100000 (the kernel's). A
#                     saturated node gets ≈ 95 % of its quota but, once it has used it, stalls
#                     for the rest of the period (up to (1 − C) × 100 ms: it shows in p99);
#                     10000 gives short stalls but only ≈ 85 % of the quota (the kernel hands
#                     quota out in 5 ms slices per core)
#     --ack-modes L   comma-separated acknowledgement modes, each passed as catena bench --ack
#                     MODE; default all,2,head (only if catena bench has --ack)
#     --catena PATH   the catena binary; default $CATENA, else .build/release/catena
#     -- ARGS         added to every catena bench (e.g. --connections-per-node 4)
#
# Needs root, cgroup v1 with the cpu controller mounted (/sys/fs/cgroup/cpu), python3; does not
# build catena. Everything it starts is stopped by pid on exit (SIGTERM, then SIGKILL), its
# cgroups emptied and removed, its scratch directory removed unless --keep.
set -euo pipefail
cd "$(dirname "$0")/.."

NODE_CPU=0.33 DURATION=20s CONCURRENCY=64 KEYS=10000 ROUNDS=2 OUT="" KEEP=0 PERIOD_US=100000 ACK_MODES=""
SIZE=4KiB
CATENA=${CATENA:-.build/release/catena}
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --node-cpu) NODE_CPU="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --concurrency) CONCURRENCY="$2"; shift 2 ;;
        --keys) KEYS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --period-us) PERIOD_US="$2"; shift 2 ;;
        --ack-modes) ACK_MODES="$2"; shift 2 ;;
        --catena) CATENA="$2"; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-read-scaling: unknown argument '$1' (see --help)" >&2; exit 64 ;;
    esac
done

say() { printf 'bench-read-scaling: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
is_count "$CONCURRENCY" || die "--concurrency takes a positive whole number"
is_count "$KEYS" || die "--keys takes a positive whole number"
is_count "$ROUNDS" || die "--rounds takes a positive whole number"
is_count "$PERIOD_US" && [ "$PERIOD_US" -ge 1000 ] && [ "$PERIOD_US" -le 1000000 ] || die "--period-us takes 1000 ... 1000000"
CORES=$(getconf _NPROCESSORS_ONLN)
awk -v c="$NODE_CPU" -v n="$CORES" 'BEGIN { exit !(c ~ /^[0-9]*\.?[0-9]+$/ && c > 0 && c <= n) }' \
    || die "--node-cpu takes a number of cores above 0 and at most $CORES"
QUOTA_US=$(awk -v c="$NODE_CPU" -v p="$PERIOD_US" 'BEGIN { printf "%d", c * p + 0.5 }')
[ "$QUOTA_US" -ge 1000 ] || die "--node-cpu $NODE_CPU × --period-us $PERIOD_US is below the kernel's 1000 µs minimum quota"
# A bound on each catena bench (its duration, plus connecting and a slow end), in seconds.
BENCH_LIMIT=$(awk -v d="$DURATION" 'BEGIN {
    if (d ~ /^[0-9.]+ms$/) s = d / 1000; else if (d ~ /^[0-9.]+s$/) s = d + 0; else if (d ~ /^[0-9.]+m$/) s = d * 60;
    else if (d ~ /^[0-9.]+h$/) s = d * 3600; else s = 600;
    printf "%d", s + 120 }')

# --- what it needs --------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "needs root (it writes cgroups under /sys/fs/cgroup)"
command -v python3 >/dev/null || die "no python3 on PATH: apt-get install -y python3"
# The cgroup v1 hierarchy with the cpu controller (cpu, or cpu,cpuacct mounted together).
CG_ROOT=$(awk '$3 == "cgroup" && ("," $4 ",") ~ /,cpu,/ { print $2; exit }' /proc/mounts)
[ -n "$CG_ROOT" ] && [ -f "$CG_ROOT/cpu.cfs_quota_us" ] \
    || die "no cgroup v1 cpu controller mounted (looked for a 'cgroup' mount with option cpu in /proc/mounts; cgroup v2 is not supported)"
CATENA=$(cd "$(dirname "$CATENA")" 2>/dev/null && pwd)/$(basename "$CATENA")
[ -x "$CATENA" ] || die "no catena binary at $CATENA (swift build -c release --product catena, or give --catena PATH / CATENA=PATH)"
# Acknowledgement modes: only through catena bench's own option, once it exists.
ACK_NOTE=""
# (The help is read whole first: grep -q stops at the first match, and with pipefail the
# SIGPIPE it gives catena would read as "no such option".)
BENCH_HELP=$("$CATENA" bench --help 2>&1 || true)
if grep -qE -- '--ack([ =<]|$)' <<< "$BENCH_HELP"; then
    # AckMode's names (Sources/CatenaCore/AckMode.swift): all (committed), k (the first k
    # members durable), head; on a 3-node chain these are all of them.
    ACK_MODES=${ACK_MODES:-all,2,head}
else
    ACK_NOTE="catena bench has no --ack option (no acknowledgement modes in this build): the write latency and throughput per acknowledgement mode are not measured${ACK_MODES:+ (--ack-modes $ACK_MODES ignored)}"
    ACK_MODES=""
fi

NODES=(n1 n2 n3)
for id in "${NODES[@]}"; do
    cg="$CG_ROOT/catena-bench-$id"
    if [ -d "$cg" ]; then
        [ -z "$(cat "$cg/cgroup.procs")" ] || die "$cg exists and holds processes: is another bench-read-scaling running?"
        rmdir "$cg" || die "cannot remove the stale $cg"
    fi
done

# --- cleanup: every process this script started, by pid; the cgroups; the scratch directory ---
TMP=$(mktemp -d "${TMPDIR:-/tmp}/catena-read-scaling.XXXXXX")
if [ -z "$OUT" ]; then OUT=${TMPDIR:-/tmp}/catena-read-scaling-$(date +%Y%m%d-%H%M%S); fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PIDS=()          # catena up first, then the master and the nodes
CGROUPS=()
BENCH_SH=""      # the subshell running the current catena bench
cleanup() {
    local status=$? pid i alive cg p
    trap - EXIT INT TERM
    set +e
    if [ -n "$BENCH_SH" ]; then
        pid=$(cat "$TMP/bench.pid" 2>/dev/null)
        [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
        kill -TERM "$BENCH_SH" 2>/dev/null
    fi
    # catena up stops its nodes, then the master, gracefully (10 s each at most).
    [ ${#PIDS[@]} -gt 0 ] && kill -TERM "${PIDS[0]}" 2>/dev/null
    for i in $(seq 250); do
        alive=0
        for pid in "${PIDS[@]}" ${BENCH_SH:+"$BENCH_SH"}; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        [ "$i" = 150 ] && for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
        sleep 0.1
    done
    for pid in "${PIDS[@]}" ${BENCH_SH:+"$BENCH_SH" $(cat "$TMP/bench.pid" 2>/dev/null)}; do kill -KILL "$pid" 2>/dev/null; done
    wait 2>/dev/null
    for cg in "${CGROUPS[@]}"; do
        [ -d "$cg" ] || continue
        for i in 1 2 3 4 5; do
            for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do echo "$p" > "$CG_ROOT/cgroup.procs" 2>/dev/null; done
            rmdir "$cg" 2>/dev/null && break
            sleep 0.2
        done
        [ -d "$cg" ] && say "could not remove $cg (still holds: $(tr '\n' ' ' < "$cg/cgroup.procs"))"
    done
    if [ "$KEEP" = 1 ]; then say "kept the scratch directory $TMP"; else rm -rf "$TMP"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the cluster ------------------------------------------------------------------------------
# topology/local.yaml with its data in the scratch directory and ports picked by the system (so
# it runs beside another local cluster or the tests); no metrics endpoints.
TOPOLOGY=$TMP/topology.yaml
{
    echo "# tools/bench-read-scaling.sh: topology/local.yaml with its data in $TMP"
    echo "version: 1"
    echo "cluster: read-scaling"
    echo "chain: 1"
    printf 'master:\n  listen: 127.0.0.1:0\n  data: %s\n' "$TMP/master"
    printf 'heartbeat:\n  interval_ms: 100\n  timeout_ms: 1000\n'
    echo "nodes:"
    for id in "${NODES[@]}"; do printf '  - id: %s\n    listen: 127.0.0.1:0\n    data: %s\n' "$id" "$TMP/$id"; done
} > "$TOPOLOGY"

say "starting the cluster (catena up, data in $TMP)"
CATENA_PARENT_PID=$$ "$CATENA" up --topology "$TOPOLOGY" > "$TMP/up.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
for i in $(seq 600); do
    grep -q '^ready' "$TMP/up.log" 2>/dev/null && break
    kill -0 "$UP_PID" 2>/dev/null || { cat "$TMP/up.log" >&2; die "catena up exited"; }
    sleep 0.1
done
grep -q '^ready' "$TMP/up.log" || { cat "$TMP/up.log" >&2; die "the cluster was not ready in 60 s"; }
MASTER=$(awk '$1 == "master" { print $2; exit }' "$TMP/up.log")
[ -n "$MASTER" ] || { cat "$TMP/up.log" >&2; die "no master address in catena up's output"; }
# The master and the nodes are catena up's children, started as `catena master --topology T ...`
# and `catena node --id ID --topology T ...`.
MASTER_PID=$(pgrep -P "$UP_PID" -f -- " master --topology $TOPOLOGY" || true)
[ -n "$MASTER_PID" ] || die "no master process under catena up (pid $UP_PID)"
PIDS+=("$MASTER_PID")
declare -A NODE_PID ROLE
for id in "${NODES[@]}"; do
    pid=$(pgrep -P "$UP_PID" -f -- " node --id $id --topology $TOPOLOGY" || true)
    [[ "$pid" =~ ^[0-9]+$ ]] || die "not one process of $id under catena up (pid $UP_PID): '$pid'"
    NODE_PID[$id]=$pid
    PIDS+=("$pid")
    ROLE[$id]=$(awk -v id="$id" '$1 == "node" && $2 == id { print $4; exit }' "$TMP/up.log")
done
say "cluster ready: master $MASTER (pid $MASTER_PID); $(for id in "${NODES[@]}"; do printf '%s %s (pid %s) ' "$id" "${ROLE[$id]}" "${NODE_PID[$id]}"; done)"

# --- the cgroups: one per node, NODE_CPU cores each -------------------------------------------
for id in "${NODES[@]}"; do
    cg="$CG_ROOT/catena-bench-$id"
    mkdir "$cg"
    CGROUPS+=("$cg")
    echo "$PERIOD_US" > "$cg/cpu.cfs_period_us"
    echo "$QUOTA_US" > "$cg/cpu.cfs_quota_us"
    echo "${NODE_PID[$id]}" > "$cg/cgroup.procs"   # the whole process: every thread, and any it starts later
    grep -qx "${NODE_PID[$id]}" "$cg/cgroup.procs" || die "${NODE_PID[$id]} ($id) did not go into $cg"
done
CGROUP_SETTINGS=$(for id in "${NODES[@]}"; do
    cg="$CG_ROOT/catena-bench-$id"
    printf '%s (%s, pid %s): %s  cpu.cfs_period_us=%s cpu.cfs_quota_us=%s (%s cores), %s threads\n' "$id" "${ROLE[$id]}" "${NODE_PID[$id]}" "$cg" \
        "$(cat "$cg/cpu.cfs_period_us")" "$(cat "$cg/cpu.cfs_quota_us")" "$NODE_CPU" "$(wc -l < "$cg/tasks")"
done)
say "node cgroups:"; sed 's/^/  /' <<< "$CGROUP_SETTINGS" >&2

# --- the runs ---------------------------------------------------------------------------------
ticks() { local f; read -r -a f 2>/dev/null < "/proc/$1/stat" || { echo 0; return; }; echo $(( f[13] + f[14] )); }  # utime + stime
HZ=$(getconf CLK_TCK)
machine_busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }  # user nice system irq softirq steal
throttled() { awk '$1 == "nr_throttled" { n = $2 } $1 == "throttled_time" { t = $2 } END { print n, t }' "$1/cpu.stat"; }
snapshot() {  # one line: wall clock, machine busy ticks, master ticks, then per node: ticks nr_throttled throttled_ns
    local id line
    line="$(date +%s.%N) $(machine_busy) $(ticks "$MASTER_PID")"
    for id in "${NODES[@]}"; do line+=" $(ticks "${NODE_PID[$id]}") $(throttled "$CG_ROOT/catena-bench-$id")"; done
    echo "$line"
}
printf 'name\tkind\tmix\tmode\tround\tstatus\tclient_ticks\tbefore\tafter\n' > "$OUT/runs.tsv"
: > "$OUT/commands.txt"
# run_bench NAME KIND MIX MODE ROUND BENCH-ARGS...: one catena bench, its JSON to OUT/NAME.json,
# its output to OUT/NAME.log; the client's CPU from its parent subshell's /proc/PID/stat (the
# CPU of waited-for children), the others' from /proc and the cgroups, before and after.
run_bench() {
    local name=$1 kind=$2 mix=$3 mode=$4 round=$5 before after status=0 i
    shift 5
    local cmd=("$CATENA" bench --master "$MASTER" "$@" ${EXTRA[@]+"${EXTRA[@]}"} --json "$OUT/$name.json")
    printf '%s\n' "${cmd[*]}" >> "$OUT/commands.txt"
    say "$name: ${cmd[*]}"
    rm -f "$TMP/bench.pid" "$TMP/bench.cpu"
    before=$(snapshot)
    (
        me=$BASHPID   # (expanded after the & below, it would be the bench's own pid)
        CATENA_PARENT_PID=$me "${cmd[@]}" > "$OUT/$name.log" 2>&1 &
        echo $! > "$TMP/bench.pid"
        s=0; wait $! || s=$?
        read -r -a f < "/proc/$BASHPID/stat"
        echo $(( f[15] + f[16] )) > "$TMP/bench.cpu"   # cutime + cstime: the bench's CPU
        exit $s
    ) &
    BENCH_SH=$!
    for i in $(seq $(( BENCH_LIMIT * 10 ))); do kill -0 "$BENCH_SH" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$BENCH_SH" 2>/dev/null; then
        say "$name: catena bench still running after ${BENCH_LIMIT} s: stopping it"
        kill -INT "$(cat "$TMP/bench.pid")" 2>/dev/null || true
    fi
    wait "$BENCH_SH" || status=$?
    BENCH_SH=""
    rm -f "$TMP/bench.pid"   # that pid is no longer ours
    after=$(snapshot)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$kind" "$mix" "$mode" "$round" "$status" "$(cat "$TMP/bench.cpu" 2>/dev/null || echo 0)" \
        "$before" "$after" >> "$OUT/runs.tsv"
    grep -E '^(run|get|put|  )' "$OUT/$name.log" | sed 's/^/    /' >&2 || true
    [ "$status" = 0 ] || say "$name: catena bench exited with status $status (see $OUT/$name.log)"
    for id in "${NODES[@]}"; do kill -0 "${NODE_PID[$id]}" 2>/dev/null || die "$id (pid ${NODE_PID[$id]}) is gone; see $TMP/up.log"; done
}

COMMON=(--size "$SIZE" --keys "$KEYS" --concurrency "$CONCURRENCY")
# Every key written once (4 KiB each), so that every read of the runs finds an object.
run_bench prefill prefill put=100 - 0 "${COMMON[@]}" --mix put=100 --ops 1 --read-mode tail
[ "$(awk -F'\t' '$1 == "prefill" { print $6 }' "$OUT/runs.tsv")" = 0 ] || die "the prefill failed (see $OUT/prefill.log)"
MIXES=("get=100" "get=95,put=5" "get=50,put=50")
for mix in "${MIXES[@]}"; do
    for round in $(seq "$ROUNDS"); do
        for mode in tail linearizable; do
            run_bench "reads-${mix//[=,]/-}-$mode-$round" reads "$mix" "$mode" "$round" \
                "${COMMON[@]}" --mix "$mix" --read-mode "$mode" --duration "$DURATION" --no-prefill --seed "$round"
        done
    done
done
# Acknowledgement modes: write-only load, one run per mode and round, alternating.
if [ -n "$ACK_MODES" ]; then
    IFS=, read -r -a ACKS <<< "$ACK_MODES"
    for round in $(seq "$ROUNDS"); do
        for ack in "${ACKS[@]}"; do
            run_bench "ack-$ack-$round" ack put=100 "$ack" "$round" \
                "${COMMON[@]}" --mix put=100 --ack "$ack" --duration "$DURATION" --no-prefill --seed "$round"
        done
    done
fi

# --- the report -------------------------------------------------------------------------------
{
    echo "# catena read scaling: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "$("$CATENA" version 2>/dev/null | head -n 1 || true); $CORES cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "3-node chain on 127.0.0.1 (catena up, topology $TOPOLOGY); $SIZE objects, $KEYS keys, $CONCURRENCY workers, $DURATION per run, $ROUNDS round(s) alternating tail and linearizable."
    echo "Each node in a cgroup of its own (cgroup v1 cpu at $CG_ROOT); the master and the client unrestricted:"
    echo
    echo '```'
    echo "$CGROUP_SETTINGS"
    echo '```'
    echo
    python3 - "$OUT" "$HZ" "$NODE_CPU" "$CORES" "${NODES[@]}" <<'EOF'
import csv, json, os, sys
out, hz, node_cpu, cores = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
nodes = sys.argv[5:]
runs = list(csv.DictReader(open(os.path.join(out, "runs.tsv")), delimiter="\t"))

def load(name):
    try:
        return json.load(open(os.path.join(out, name + ".json")))
    except (OSError, ValueError):
        return None

def op(report, name):
    """(successful ops/s, errors by code, p50 ms, p99 ms, p99.9 ms, not found) of one operation."""
    o = report["run_phase"]["operations"].get(name) if report else None
    if not o:
        return None
    seconds = report["run_phase"]["seconds"]
    errors = sum(o["errors"].values())
    lat = o["latency_microseconds"]
    return dict(rate=(o["count"] - errors) / seconds if seconds else 0, errors=o["errors"], p50=lat["p50"] / 1000,
                p99=lat["p99"] / 1000, p999=lat["p999"] / 1000, not_found=o["not_found"])

def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None

def f0(x): return "–" if x is None else f"{x:,.0f}"
def f2(x): return "–" if x is None else f"{x:.2f}"
def ratio(a, b): return "–" if a is None or not b else f"{a / b:.2f}×"
def errs(ds):
    total = {}
    for d in ds:
        for k, v in (d or {}).items(): total[k] = total.get(k, 0) + v
    return ", ".join(f"{k} {v}" for k, v in sorted(total.items())) or "0"

def cpu(run):
    b, a = run["before"].split(), run["after"].split()
    wall = float(a[0]) - float(b[0])
    fb, fa = [float(x) for x in b[1:]], [float(x) for x in a[1:]]
    d = [y - x for x, y in zip(fb, fa)]
    c = dict(wall=wall, machine=d[0] / hz, master=d[1] / hz, client=float(run["client_ticks"]) / hz, nodes={})
    for i, n in enumerate(nodes):
        t, thr, thr_ns = d[2 + 3 * i: 5 + 3 * i]
        c["nodes"][n] = dict(cpu=t / hz, throttled=int(thr), throttled_s=thr_ns / 1e9)
    c["others"] = c["machine"] - c["master"] - c["client"] - sum(v["cpu"] for v in c["nodes"].values())
    return c

reads = [r for r in runs if r["kind"] == "reads"]
mixes = list(dict.fromkeys(r["mix"] for r in reads))
modes = ["tail", "linearizable"]
table = {}
for mix in mixes:
    for mode in modes:
        rs = [r for r in reads if r["mix"] == mix and r["mode"] == mode]
        gets = [op(load(r["name"]), "get") for r in rs]
        puts = [op(load(r["name"]), "put") for r in rs]
        table[mix, mode] = dict(
            reads=mean([g and g["rate"] for g in gets]), each=[g and g["rate"] for g in gets],
            writes=mean([p and p["rate"] for p in puts]) if any(puts) else None,
            p50=mean([g and g["p50"] for g in gets]), p99=mean([g and g["p99"] for g in gets]),
            errors=errs([g and g["errors"] for g in gets] + [p and p["errors"] for p in puts]),
            not_found=sum(g["not_found"] for g in gets if g), status=",".join(sorted({r["status"] for r in rs})))

print("## Reads (successful gets/s; mean over rounds, then each round)\n")
print("| mix | mode | reads/s | each round | writes/s | read p50 ms | read p99 ms | errors | not found | exit |")
print("|---|---|---:|---|---:|---:|---:|---|---:|---|")
for (mix, mode), t in table.items():
    print(f"| {mix} | {mode} | {f0(t['reads'])} | {' / '.join(f0(x) for x in t['each'])} | {f0(t['writes'])} | "
          f"{f2(t['p50'])} | {f2(t['p99'])} | {t['errors']} | {t['not_found']} | {t['status']} |")

print("\n## Ratios\n")
print("| mix | CRAQ/tail reads/s |")
print("|---|---:|")
for mix in mixes:
    goal = " (goal ≥ 2.5×)" if mix == "get=95,put=5" else ""
    print(f"| {mix} | {ratio(table[mix, 'linearizable']['reads'], table[mix, 'tail']['reads'])}{goal} |")
print()
print("| mode | reads/s at 95/5 ÷ read-only | reads/s at 50/50 ÷ read-only (goal ≥ 0.85) |")
print("|---|---:|---:|")
for mode in modes:
    base = table.get(("get=100", mode), {}).get("reads")
    print(f"| {mode} | {ratio(table.get(('get=95,put=5', mode), {}).get('reads'), base)} | "
          f"{ratio(table.get(('get=50,put=50', mode), {}).get('reads'), base)} |")

acks = [r for r in runs if r["kind"] == "ack"]
if acks:
    print("\n## Writes per acknowledgement mode (put=100)\n")
    print("| ack mode | writes/s | each round | put p50 ms | put p99 ms | put p99.9 ms | errors | exit |")
    print("|---|---:|---|---:|---:|---:|---|---|")
    for mode in dict.fromkeys(r["mode"] for r in acks):
        rs = [r for r in acks if r["mode"] == mode]
        puts = [op(load(r["name"]), "put") for r in rs]
        print(f"| {mode} | {f0(mean([p and p['rate'] for p in puts]))} | {' / '.join(f0(p and p['rate']) for p in puts)} | "
              f"{f2(mean([p and p['p50'] for p in puts]))} | {f2(mean([p and p['p99'] for p in puts]))} | "
              f"{f2(mean([p and p['p999'] for p in puts]))} | {errs([p and p['errors'] for p in puts])} | "
              f"{','.join(sorted({r['status'] for r in rs}))} |")

print("\n## CPU per run (seconds of CPU over the run's wall time; quota use = node CPU ÷ (wall × node-cpu))\n")
print("Client and master unrestricted; 'others' is the rest of the machine (other processes). "
      "A node near 100 % of its quota is the bottleneck; a client near a whole core or more, with nodes below quota, means the client is.\n")
print("| run | wall s | ops | client CPU s (µs/op) | " + " | ".join(f"{n} CPU s (quota use, throttled periods)" for n in nodes)
      + " | nodes µs/op | master CPU s | others CPU s | machine busy |")
print("|---|---:|---:|---:|" + "---:|" * len(nodes) + "---:|---:|---:|---:|")
warnings = []
for r in runs:
    c, report = cpu(r), load(r["name"])
    ops = sum(o["count"] for o in report["run_phase"]["operations"].values()) if report else 0
    if r["kind"] == "prefill" and report and report.get("prefill"):
        ops += sum(o["count"] for o in report["prefill"]["operations"].values())
    per = lambda s: f" ({s * 1e6 / ops:.0f})" if ops else ""
    nodes_cpu = sum(v["cpu"] for v in c["nodes"].values())
    cells = [f"{v['cpu']:.2f} ({v['cpu'] / (c['wall'] * node_cpu) * 100:.0f} %, {v['throttled']})" for v in c["nodes"].values()]
    print(f"| {r['name']} | {c['wall']:.1f} | {ops:,} | {c['client']:.2f}{per(c['client'])} | " + " | ".join(cells)
          + f" | {nodes_cpu * 1e6 / ops if ops else 0:.0f} | {c['master']:.2f} | {c['others']:.2f} | {c['machine'] / (c['wall'] * cores) * 100:.0f} % |")
    if r["kind"] != "prefill" and c["others"] > 0.2 * c["wall"]:
        warnings.append(f"{r['name']}: other processes used {c['others'] / c['wall']:.2f} cores")
    if r["kind"] != "prefill" and c["machine"] > 0.9 * c["wall"] * cores:
        warnings.append(f"{r['name']}: the machine was {c['machine'] / (c['wall'] * cores) * 100:.0f} % busy (the cores, not only the quotas, bounded it)")
if warnings:
    print("\n**Not a clean run** — compare nothing from it until these are gone (an idle machine; a smaller --node-cpu):\n")
    for w in warnings: print(f"- {w}")
EOF
    echo
    if [ -n "$ACK_NOTE" ]; then echo "Acknowledgement modes: $ACK_NOTE."; echo; fi
    echo "## Commands"
    echo
    echo '```'
    echo "$CATENA up --topology $TOPOLOGY   # then each node's pid into its cgroup's cgroup.procs"
    cat "$OUT/commands.txt"
    echo '```'
    echo
    echo "JSON reports and logs: $OUT"
} > "$OUT/summary.md"
cat "$OUT/summary.md"
