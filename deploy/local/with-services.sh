#!/usr/bin/env bash
# Run a command with Kafka and Redis available, then stop what this script started.
#
#   deploy/local/with-services.sh make lint unit ...
#
# When NEXTBEST_KAFKA_BOOTSTRAP and NEXTBEST_REDIS_URL are both set they are used
# as they are and nothing is started. Otherwise `nextbest dev up` starts the local
# stack (if it is not already running) and `nextbest dev down` stops it afterwards,
# whether the command passed or failed; the command's exit status is kept.
set -uo pipefail
cd "$(dirname "$0")/../.."
# which services THIS run started (none when they were already running), so that
# exactly those are stopped afterwards
record=$(mktemp)
stop() {
  # Finish whatever happens to the terminal (`make test | tee log` and Ctrl-C
  # closes the pipe; a second Ctrl-C or a hang-up must not cut this short).
  local status=$? out
  trap - EXIT
  trap '' INT TERM HUP PIPE
  out=$(mktemp)
  .venv/bin/python -m nextbest.devstack down --recorded "$record" >"$out" 2>&1
  printf '%s\n' "$(cat "$out")" >&2 2>/dev/null || true
  rm -f "$record" "$out"
  exit "$status"
}
trap stop EXIT
trap 'exit 130' INT TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

if [[ -n "${NEXTBEST_KAFKA_BOOTSTRAP:-}" && -n "${NEXTBEST_REDIS_URL:-}" ]]; then
  echo "with-services: using Kafka at $NEXTBEST_KAFKA_BOOTSTRAP and Redis at $NEXTBEST_REDIS_URL"
else
  .venv/bin/python -m nextbest.devstack up --record "$record" ||
    { echo "with-services: could not start Kafka and Redis (see above)"; exit 1; }
  export NEXTBEST_KAFKA_BOOTSTRAP="127.0.0.1:${NEXTBEST_DEV_KAFKA_PORT:-9092}"
  export NEXTBEST_REDIS_URL="redis://127.0.0.1:${NEXTBEST_DEV_REDIS_PORT:-6379}/0"
fi

"$@"
