#!/usr/bin/env bash
# `make run`: Kafka and Redis (without Docker), the worker, and a demo journey
# whose triggers are printed as they arrive. Ctrl-C stops everything this
# script started and nothing else.
set -uo pipefail
cd "$(dirname "$0")/../.."
nextbest=.venv/bin/nextbest
export NEXTBEST_DATA_DIR="${NEXTBEST_DATA_DIR:-.dev/worker}"
port="${NEXTBEST_WORKER_PORT:-6066}"

logs="${NEXTBEST_DEV_DIR:-.dev}"  # the processes' logs, beside the dev stack's
record=$(mktemp)  # which services THIS script started: only those are stopped
worker=""
api=""
simulator=""
api_port="${NEXTBEST_API_PORT:-8080}"
say() {  # progress that can never stop the clean-up: stderr, and no error if it is gone
  printf '%s\n' "$*" >&2 2>/dev/null || true
}
cleanup() {
  # Finish whatever happens to the terminal: Ctrl-C also kills `tee` in
  # `make run | tee run.log`, so output may go to a closed pipe (SIGPIPE, EPIPE);
  # a second Ctrl-C or a hang-up must not cut the clean-up short either.
  trap - EXIT
  trap '' INT TERM HUP PIPE
  for pid in $simulator $api $worker; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
    fi
  done
  say "run: stopped the simulator, the API and the worker"
  local out
  out=$(mktemp)
  .venv/bin/python -m nextbest.devstack down --recorded "$record" >"$out" 2>&1
  say "$(cat "$out")"
  rm -f "$record" "$out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE  # the reader went away (`| head`): still clean up

if [[ -z "${NEXTBEST_KAFKA_BOOTSTRAP:-}" ]]; then
  .venv/bin/python -m nextbest.devstack up --record "$record" || exit 1
  export NEXTBEST_KAFKA_BOOTSTRAP="127.0.0.1:${NEXTBEST_DEV_KAFKA_PORT:-9092}"
  export NEXTBEST_REDIS_URL="redis://127.0.0.1:${NEXTBEST_DEV_REDIS_PORT:-6379}/0"
fi

mkdir -p "$logs"
wait_ready() {  # wait_ready NAME PID URL LOG
  for _ in $(seq 1 120); do
    if .venv/bin/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
      "$3" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$2" 2>/dev/null; then
      echo "run: the $1 exited; last lines of $4:"; tail -n 20 "$4"; exit 1
    fi
    sleep 0.5
  done
  echo "run: the $1 was not ready within a minute; see $4"; exit 1
}
"$nextbest" worker >"$logs/worker.log" 2>&1 &
worker=$!
echo "run: worker starting (pid $worker, log $logs/worker.log)"
wait_ready worker "$worker" "http://127.0.0.1:$port/readyz" "$logs/worker.log"
"$nextbest" api >"$logs/api.log" 2>&1 &
api=$!
wait_ready API "$api" "http://127.0.0.1:$api_port/readyz" "$logs/api.log"
"$nextbest" simulate --rate "${NEXTBEST_DEMO_RATE:-20}" --customers 2000 >"$logs/simulate.log" 2>&1 &
simulator=$!
customer="demo-$RANDOM"

cat <<INFO

  nextbest is running.
    Kafka            $NEXTBEST_KAFKA_BOOTSTRAP   (channel apps write events.<channel>, read triggers.<channel>)
    Redis            $NEXTBEST_REDIS_URL   (live context at nextbest:context:<customer id>)
    worker metrics   http://127.0.0.1:$port/metrics
    worker health    http://127.0.0.1:$port/readyz
    worker log       $logs/worker.log
    API              http://127.0.0.1:$api_port/v1/customers/<customer id>/context   (log $logs/api.log)
    widget           http://127.0.0.1:$api_port/widget#customer=$customer
    simulator        ${NEXTBEST_DEMO_RATE:-20} events/s of simulated journeys   (progress in $logs/simulate.log)

  The demo customer $customer now walks web -> mobile -> contact center: open the
  widget to watch its context change. Triggers (the demo's and the simulator's)
  appear below. Ctrl-C stops it all.

INFO
"$nextbest" demo --customer "$customer"
