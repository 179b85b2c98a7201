#!/usr/bin/env bash
# Build the Go tools the test tier needs (promtool) into .dev/tools/bin, once.
# Versions are pinned by go.mod/go.sum beside this script; `go build` fetches the
# modules through the Go module proxy and caches them, so later runs are instant.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${NEXTBEST_TOOLS_BIN:-$here/../../.dev/tools/bin}"
mkdir -p "$bin"
if [[ -x "$bin/promtool" ]] && "$bin/promtool" --version >/dev/null 2>&1; then
  exit 0
fi
command -v go >/dev/null || { echo "tools: Go is needed to build promtool (https://go.dev/dl or apt-get install golang)"; exit 1; }
echo "tools: building promtool (first time only: a few minutes)"
cd "$here"
GOFLAGS=-mod=mod go build -o "$bin/promtool" github.com/prometheus/prometheus/cmd/promtool
"$bin/promtool" --version | head -n 1
