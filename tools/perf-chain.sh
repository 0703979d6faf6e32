#!/usr/bin/env bash
# Counts, per replicated put, the system calls (by kind), context switches and CPU of every
# process of a 3-node `catena bench-chain` run: the benchmark's clients, the master, each node.
#
#   tools/perf-chain.sh [COUNT] [SIZE]      default: 40000 puts of 4KiB
#   CATENA=path/to/catena tools/perf-chain.sh   another build
#
# Needs perf (Debian: linux-perf) and root (tracepoints). It starts the release-built
# `catena bench-chain --sizes SIZE --count COUNT`, attaches `perf stat` to every process once the
# 3-node cluster is up and detaches when its puts are done (the line "3-node put" appears), so
# the counts cover the 3-node puts (and the few heartbeats meanwhile), not the gets.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-40000}
size=${2:-4KiB}
out=$(mktemp -d "${TMPDIR:-/tmp}/catena-perf.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT
"${CATENA:-.build/release/catena}" bench-chain --sizes "$size" --count "$count" > "$out/bench.txt" 2>&1 &
bench=$!
# The 3-node cluster: its topology is under chain-*/ of the benchmark's directory.
pids=()
until [ ${#pids[@]} -ge 4 ]; do
    sleep 0.05
    kill -0 $bench 2>/dev/null || { cat "$out/bench.txt"; exit 1; }
    mapfile -t pids < <(pgrep -f "catena-bench-chain-$bench/chain-" || true)
done
events='raw_syscalls:sys_enter,context-switches,task-clock'
for k in write writev sendmsg sendto read readv recvfrom recvmsg pwrite64 pwritev fsync fdatasync futex epoll_wait epoll_ctl eventfd2 nanosleep; do
    events+=",syscalls:sys_enter_$k"
done
for p in $bench "${pids[@]}"; do
    name=$(tr '\0' ' ' < /proc/$p/cmdline | sed -n 's/.*--id \([a-z0-9]*\).*/\1/p')
    case "$(tr '\0' ' ' < /proc/$p/cmdline)" in *" master "*) name=master ;; esac
    [ "$p" = "$bench" ] && name=client
    perf stat -x, -e "$events" -p "$p" -o "$out/$name.csv" &
done
until grep -q "^3-node put" "$out/bench.txt"; do sleep 0.05; done
pkill -INT -f "perf stat -x, -e" || true
wait $bench || true
sleep 0.5
grep "^3-node put.* ops in " "$out/bench.txt"
printf '%-8s %9s %9s %9s' process cpu_us ctxsw syscalls
printf ' %s' write writev sendmsg read readv recvmsg pwrite pwritev fsync fdsync futex epoll_w epoll_c eventfd nanosleep; echo
for f in "$out"/*.csv; do
    name=$(basename "$f" .csv)
    awk -F, -v n="$count" -v name="$name" '
        /task-clock/ { cpu = $1 * 1000 / n }                       # msec -> µs per put
        /context-switches/ { cs = $1 / n }
        /raw_syscalls:sys_enter/ { sc = $1 / n }
        /syscalls:sys_enter_/ { split($3, a, "sys_enter_"); k[a[2]] = $1 / n }
        END {
            printf "%-8s %9.1f %9.2f %9.2f", name, cpu, cs, sc
            split("write writev sendmsg read readv recvmsg pwrite64 pwritev fsync fdatasync futex epoll_wait epoll_ctl eventfd2 nanosleep", ks, " ")
            for (i = 1; i <= 15; i++) printf " %.2f", k[ks[i]]
            printf "\n"
        }' "$f"
done
