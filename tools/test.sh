#!/usr/bin/env bash
# Runs Catena's whole test suite (unit, codec, crash-simulation, storage, in-process and process
# cluster tests).
set -euo pipefail
cd "$(dirname "$0")/.."
# Log metadata keys are LogKey cases (Sources/CatenaCore/LogKey.swift), never string literals:
# `metadata: .catena([.error: "\(error)"])`, `logger[metadataKey: LogKey.node.rawValue]`.
adhoc=$(find Sources -name '*.swift' -exec perl -0777 -ne \
  'while (/metadata:\s*\[\s*"|metadataKey:\s*"|Metadata\s*=\s*\[\s*"/g) { printf "%s:%d\n", $ARGV, 1 + (substr($_, 0, $-[0]) =~ tr/\n//) }' {} +)
if [ -n "$adhoc" ]; then
  echo "tools/test.sh: string-literal log metadata keys; use a LogKey case (add one to Sources/CatenaCore/LogKey.swift and to docs/ARCHITECTURE.md, \"Logs\"):" >&2
  echo "$adhoc" >&2
  exit 1
fi
tools/install-deps.sh
export PATH="$PATH:/opt/swift/usr/bin"
swift build --build-tests
args=()
# With one CPU, Swift's cooperative pool has one thread (libdispatch sizes it by the CPUs online,
# what getconf reports): suites run side by side would only take turns on it and starve each
# other's timers (heartbeats, leases, request deadlines). There they run one after another,
# which takes no longer.
if [ "$(getconf _NPROCESSORS_ONLN)" -lt 2 ]; then args+=(--no-parallel); fi
# A bound on the whole run (it takes 2 to 5 minutes; CATENA_TEST_TIMEOUT overrides it): a test
# that hangs fails the run instead of holding it. SIGINT is what `swift test` passes on to the
# test process; the tests' `catena` children follow their parent. `timeout` runs in a process
# group of its own, which a terminal's Ctrl-C does not reach: the trap passes it on.
timeout -s INT -k 1m "${CATENA_TEST_TIMEOUT:-30m}" swift test --skip-build ${args[@]+"${args[@]}"} "$@" &
runner=$!
trap 'kill -INT "$runner" 2>/dev/null || true' INT TERM
status=0
wait "$runner" || status=$?
while kill -0 "$runner" 2>/dev/null; do wait "$runner" || status=$?; done
[ "$status" -eq 124 ] && echo "tools/test.sh: the test run passed ${CATENA_TEST_TIMEOUT:-30m} and was stopped" >&2
# After a whole, green run: the client library's documentation (DocC catalog and every doc
# comment) builds with every symbol link resolved.
if [ "$status" -eq 0 ] && [ $# -eq 0 ]; then
  if ! swift package --disable-sandbox generate-documentation --target CatenaClient --warnings-as-errors > .build/docc.log 2>&1; then
    grep -E "^(error|warning):" .build/docc.log >&2 || tail -20 .build/docc.log >&2
    echo "tools/test.sh: the CatenaClient documentation does not build (.build/docc.log)" >&2
    status=1
  fi
fi
exit "$status"
