#!/usr/bin/env bash
# Runs Catena's whole test suite (unit, codec, crash-simulation, storage, in-process and process
# cluster tests).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
export PATH="$PATH:/opt/swift/usr/bin"
swift build --build-tests
args=()
# With one CPU, Swift's cooperative pool has one thread: suites run side by side would only take
# turns on it and starve each other's timers (heartbeats, leases, request deadlines). There they
# run one after another, which takes no longer.
if [ "$(getconf _NPROCESSORS_ONLN)" -lt 2 ]; then args+=(--no-parallel); fi
# A bound on the whole run (it takes 3 to 5 minutes): a test that hangs fails the run instead of
# holding it. `timeout` signals its whole process group; the test's `catena` children follow
# their parent.
timeout --kill-after=1m 30m swift test --skip-build "${args[@]}" "$@"
