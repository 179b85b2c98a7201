#!/usr/bin/env bash
# `make run`: Kafka and Redis (without Docker), the worker, and a demo journey
# whose triggers are printed as they arrive. Ctrl-C stops everything this
# script started and nothing else.
set -uo pipefail
cd "$(dirname "$0")/../.."
nextbest=.venv/bin/nextbest
export NEXTBEST_DATA_DIR="${NEXTBEST_DATA_DIR:-.dev/worker}"
port="${NEXTBEST_WORKER_PORT:-6066}"

record=$(mktemp)  # which services THIS script started: only those are stopped
worker=""
cleanup() {
  trap - EXIT INT TERM
  if [[ -n "$worker" ]] && kill -0 "$worker" 2>/dev/null; then
    echo "run: stopping the worker"
    kill -TERM "$worker" 2>/dev/null
    wait "$worker" 2>/dev/null
  fi
  .venv/bin/python -m nextbest.devstack down --recorded "$record"
  rm -f "$record"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z "${NEXTBEST_KAFKA_BOOTSTRAP:-}" ]]; then
  .venv/bin/python -m nextbest.devstack up --record "$record" || exit 1
  export NEXTBEST_KAFKA_BOOTSTRAP="127.0.0.1:${NEXTBEST_DEV_KAFKA_PORT:-9092}"
  export NEXTBEST_REDIS_URL="redis://127.0.0.1:${NEXTBEST_DEV_REDIS_PORT:-6379}/0"
fi

mkdir -p .dev
"$nextbest" worker >.dev/worker.log 2>&1 &
worker=$!
echo "run: worker starting (pid $worker, log .dev/worker.log)"
for _ in $(seq 1 120); do
  if .venv/bin/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$worker" 2>/dev/null; then
    echo "run: the worker exited; last lines of .dev/worker.log:"; tail -n 20 .dev/worker.log; exit 1
  fi
  sleep 0.5
done

cat <<INFO

  nextbest is running.
    Kafka            $NEXTBEST_KAFKA_BOOTSTRAP   (channel apps write events.<channel>, read triggers.<channel>)
    Redis            $NEXTBEST_REDIS_URL   (live context at nextbest:context:<customer id>)
    worker metrics   http://127.0.0.1:$port/metrics
    worker health    http://127.0.0.1:$port/readyz
    worker log       .dev/worker.log

  A demo customer now walks web -> mobile -> contact center; triggers appear below.
  Send your own events to events.<channel> and they show up here too. Ctrl-C stops it all.

INFO
"$nextbest" demo
