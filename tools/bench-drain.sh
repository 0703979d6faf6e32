#!/usr/bin/env bash
# The pause a drain causes, two builds side by side: for each round and each build, a fresh
# local cluster (catena up, topology/local.yaml), `catena bench --verify` for 8 s, and 3 s into
# it `catena node drain n1` (the head). Prints per run how long the drain took, the puts'
# median, p99.9 and longest latency, errors and verification problems. The load generator and
# the drain command are the second build's (the first may predate them).
#
#   tools/bench-drain.sh OLD_CATENA NEW_CATENA [ROUNDS]      default 3 rounds, builds alternating
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2 rounds=${3:-3}
work=$(mktemp -d "${TMPDIR:-/tmp}/catena-drain.XXXXXX")
stop() { pkill -INT -f "$1 up" 2>/dev/null || true; sleep 2; pkill -9 -f "$1 (up|node|master)" 2>/dev/null || true; }
trap 'stop "$old"; stop "$new"; rm -rf "$work"' EXIT
for round in $(seq 1 "$rounds"); do
  for which in old new; do
    exe=$old; [ "$which" = new ] && exe=$new
    rm -rf .catena/local
    "$exe" up > "$work/up.log" 2>&1 &
    for _ in $(seq 1 100); do grep -q "^ready" "$work/up.log" && break; sleep 0.1; done
    "$new" bench --duration 8s --verify --concurrency 16 --keys 1000 --json "$work/$which-$round.json" > /dev/null 2>&1 &
    bench=$!
    sleep 3
    start=$(date +%s.%N)
    "$new" node drain n1 > /dev/null
    end=$(date +%s.%N)
    wait "$bench" || true
    python3 - "$which" "$round" "$start" "$end" "$work/$which-$round.json" <<'PY'
import json, sys
which, rnd, start, end, path = sys.argv[1:]
d = json.load(open(path))
ops = d["run_phase"]["operations"]
put = ops["put"]["latency_microseconds"]
errors = sum(sum(o["errors"].values()) for o in ops.values())
print(f"{which} round {rnd}: drain {float(end) - float(start):.2f} s; put p50 {put['p50'] / 1000:.1f} ms, "
      f"p99.9 {put['p999'] / 1000:.1f} ms, max {put['max'] / 1000:.1f} ms; errors {errors}; problems {d['verification']['problems']}")
PY
    stop "$exe"
  done
done
