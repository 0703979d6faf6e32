#!/usr/bin/env bash
# Catena's main job. Until the chain exists (next milestone: `catena up`, a local cluster),
# it builds the release binary and runs the storage benchmark on a temporary directory.
# Extra arguments go to `catena bench-storage` (see `catena bench-storage --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
export PATH="$PATH:/opt/swift/usr/bin"
swift build -c release --product catena
exec .build/release/catena bench-storage "$@"
