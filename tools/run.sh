#!/usr/bin/env bash
# Catena's main job: builds the release binary and runs a local cluster with `catena up`
# (master + 3-node chain from topology/local.yaml, data under .catena/local/) until Ctrl-C.
# Extra arguments go to `catena up` (see `catena up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
export PATH="$PATH:/opt/swift/usr/bin"
swift build -c release --product catena
exec .build/release/catena up "$@"
