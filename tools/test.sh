#!/usr/bin/env bash
# Runs Catena's whole test suite (unit, codec, crash-simulation and storage tests).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
export PATH="$PATH:/opt/swift/usr/bin"
swift build --build-tests
swift test --skip-build "$@"
