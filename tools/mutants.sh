#!/usr/bin/env bash
# Shows that the whole-cluster simulation has teeth: re-introduces, one at a time, bugs this
# project fixed (tools/mutants/*.patch, each a small change to a rule) and reports the first
# seed of `catena simulate` that catches each, and how long that took.
#
#   tools/mutants.sh [MAX_SEEDS] [PATCH...]     default: 200000 seeds, every patch
#
# Works in a temporary git worktree of HEAD (release build), which it removes afterwards; the
# checkout you run it from is not touched. A mutant not caught within MAX_SEEDS is reported as
# such (and makes the script exit 1).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/swift/usr/bin"
max=${1:-200000}
shift || true
patches=("$@")
[ ${#patches[@]} -gt 0 ] || patches=(tools/mutants/*.patch)
root=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/catena-mutants.XXXXXX")
git worktree add -q --detach "$work" HEAD
trap 'git -C "$root" worktree remove --force "$work"' EXIT
missed=0
printf '%-45s %12s %10s  %s\n' "mutant" "first seed" "seconds" "violation"
for patch in "${patches[@]}"; do
    name=$(basename "$patch" .patch)
    git -C "$work" checkout -q -- .
    git -C "$work" apply "$root/$patch"
    (cd "$work" && swift build -c release --product catena >/dev/null 2>&1)
    start=$(date +%s)
    out=$("$work/.build/release/catena" simulate --seeds "$max" --from 0 --stop 2>/dev/null || true)
    seconds=$(( $(date +%s) - start ))
    first=$(printf '%s\n' "$out" | sed -n 's/^first failing seed: \([0-9]*\).*/\1/p')
    if [ -n "$first" ]; then
        violation=$(printf '%s\n' "$out" | grep -m1 "^seed $first FAILED" | sed 's/^seed [0-9]* FAILED: //' | cut -c1-110)
        printf '%-45s %12s %10s  %s\n' "$name" "$first" "$seconds" "$violation"
    else
        printf '%-45s %12s %10s  %s\n' "$name" "none" "$seconds" "not caught in $max seeds"
        missed=$((missed + 1))
    fi
done
exit $((missed > 0))
