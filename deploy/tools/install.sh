#!/usr/bin/env bash
# The tools the test tier needs, built or installed once into .dev/tools:
#   bin/promtool, bin/helm  Go tools pinned by go.mod/go.sum beside this script,
#                           built through the Go module proxy (minutes the first
#                           time; the module and build caches make reruns instant)
#   venv/                   checkov and kubernetes-validate (PyPI), apart from the
#                           project's own virtualenv: checkov pins many libraries
#   asyncapi/               the AsyncAPI parser (npm, pinned by asyncapi/package-lock.json
#                           beside this script), which validates docs/asyncapi.yaml
#   chromium, kcat          Debian's, for the widget's browser test and the kcat test
#                           and README examples (installed when root; else it says so)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tools="${NEXTBEST_TOOLS_DIR:-$here/../../.dev/tools}"
mkdir -p "$tools/bin"

build() {  # build NAME PACKAGE
  if [[ -x "$tools/bin/$1" ]] && "$tools/bin/$1" --help >/dev/null 2>&1; then return; fi
  command -v go >/dev/null || { echo "tools: Go is needed to build $1 (apt-get install golang)"; exit 1; }
  echo "tools: building $1 (the first time takes a few minutes)"
  (cd "$here" && GOFLAGS=-mod=mod go build -o "$tools/bin/$1" "$2")
}
build promtool github.com/prometheus/prometheus/cmd/promtool
build helm helm.sh/helm/v3/cmd/helm

if [[ ! -x "$tools/venv/bin/checkov" || ! -x "$tools/venv/bin/kubernetes-validate" ]]; then
  echo "tools: installing checkov and kubernetes-validate"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
    "checkov>=3.2,<4" "kubernetes-validate>=1.31,<2"
fi

# Debian packages: chromium (the widget's browser test), kcat (the shell producer
# of the README, tested end to end), node and npm (the AsyncAPI parser below)
debs=()
command -v chromium >/dev/null 2>&1 || debs+=(chromium)
command -v kcat >/dev/null 2>&1 || debs+=(kcat)
command -v npm >/dev/null 2>&1 || debs+=(nodejs npm)
if ((${#debs[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "tools: installing Debian's ${debs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${debs[@]}" >/dev/null
  else
    echo "tools: ${debs[*]} missing and this is not root: install them (apt-get install ${debs[*]})"
    exit 1
  fi
fi

# The AsyncAPI parser, exactly as package-lock.json pins it; again when the lock changes.
# --ignore-scripts: no install scripts run (one dependency's only reports analytics).
asyncapi="$tools/asyncapi"
if ! cmp -s "$here/asyncapi/package-lock.json" "$asyncapi/.installed-lock" 2>/dev/null; then
  echo "tools: installing the AsyncAPI parser (npm ci)"
  rm -rf "$asyncapi"
  mkdir -p "$asyncapi"
  cp "$here/asyncapi/package.json" "$here/asyncapi/package-lock.json" "$asyncapi/"
  (cd "$asyncapi" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
  cp "$here/asyncapi/package-lock.json" "$asyncapi/.installed-lock"
fi
