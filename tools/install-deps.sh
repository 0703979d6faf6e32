#!/usr/bin/env bash
# Installs what a fresh Debian machine with only the Swift toolchain lacks:
# liblz4 (frame API) and libxxhash (XXH3-64) headers, and pkg-config to find them.
# Idempotent: does nothing when they are present.
set -euo pipefail

if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
    export PATH="$PATH:/opt/swift/usr/bin"
fi
command -v swift >/dev/null 2>&1 || { echo "install-deps: no Swift toolchain on PATH (need Swift 6)" >&2; exit 1; }

if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists liblz4 libxxhash \
   && [ -f /usr/include/lz4frame.h ] && [ -f /usr/include/xxhash.h ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing liblz4-dev libxxhash-dev pkg-config" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq liblz4-dev libxxhash-dev pkg-config >/dev/null
