#!/usr/bin/env bash
# Shows that the whole-cluster simulation has teeth: re-introduces, one at a time, bugs this
# project fixed (tools/mutants/*.patch, each a small change to a rule) and reports the first
# seed of `catena simulate` that catches each, and how long that took. Where two rules guard
# the same thing (each covers for the other, so neither mutant alone can be caught), their
# patches are also applied together: each line of tools/mutants/together names such a set,
# `A+B`, and so may an argument.
#
#   tools/mutants.sh [MAX_SEEDS] [PATCH[+PATCH...]...]   default: 200000 seeds, every patch
#                                                         and every set in tools/mutants/together
#
# Works in a temporary git worktree of HEAD (release build), which it removes afterwards; the
# checkout you run it from is not touched. A mutant not caught within MAX_SEEDS is reported as
# such (and makes the script exit 1) — unless it is one of a set, whose members are expected to
# go uncaught alone; the set must be caught.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/swift/usr/bin"
max=${1:-200000}
shift || true
mutants=("$@")
if [ ${#mutants[@]} -eq 0 ]; then
    for p in tools/mutants/*.patch; do mutants+=("$(basename "$p" .patch)"); done
    while read -r line; do [ -n "$line" ] && mutants+=("$line"); done < <(grep -v '^#' tools/mutants/together)
fi
covered=" $(grep -v '^#' tools/mutants/together | tr '+' ' ' | tr '\n' ' ') "
root=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/catena-mutants.XXXXXX")
git worktree add -q --detach "$work" HEAD
trap 'git -C "$root" worktree remove --force "$work"' EXIT
missed=0
printf '%-45s %12s %10s  %s\n' "mutant" "first seed" "seconds" "violation"
for mutant in "${mutants[@]}"; do
    git -C "$work" checkout -q -- .
    IFS=+ read -ra parts <<< "$mutant"
    for part in "${parts[@]}"; do
        part=$(basename "$part" .patch)
        git -C "$work" apply "$root/tools/mutants/$part.patch"
    done
    (cd "$work" && swift build -c release --product catena >/dev/null 2>&1)
    start=$(date +%s)
    out=$("$work/.build/release/catena" simulate --seeds "$max" --from 0 --stop 2>/dev/null || true)
    seconds=$(( $(date +%s) - start ))
    first=$(printf '%s\n' "$out" | sed -n 's/^first failing seed: \([0-9]*\).*/\1/p')
    if [ -n "$first" ]; then
        violation=$(printf '%s\n' "$out" | grep -m1 "^seed $first FAILED" | sed 's/^seed [0-9]* FAILED: //' | cut -c1-110)
        printf '%-45s %12s %10s  %s\n' "$mutant" "$first" "$seconds" "$violation"
    elif [ ${#parts[@]} -eq 1 ] && [[ "$covered" == *" $(basename "${parts[0]}" .patch) "* ]]; then
        printf '%-45s %12s %10s  %s\n' "$mutant" "none" "$seconds" "not caught in $max seeds (covered by another rule: tools/mutants/together)"
    else
        printf '%-45s %12s %10s  %s\n' "$mutant" "none" "$seconds" "not caught in $max seeds"
        missed=$((missed + 1))
    fi
done
exit $((missed > 0))
