#!/usr/bin/env bash
# Runs the real Lambda functions locally with `cargo lambda watch` (the
# Lambda runtime API emulator) and `cargo lambda invoke`, against the moto
# server that with-moto.sh started:
#   scripts/with-moto.sh scripts/invoke.sh orchestrator|worker|sweeper
# orchestrator: setup, upload a generated CSV, invoke the orchestrator with
#   events/s3-put.json patched for that upload (target/invoke/s3-put.json),
#   then with events/sqs-prepare-continuation.json for its job (a prepare
#   queue message; the job is prepared already, so it changes nothing).
# worker: the same, then the worker on the fan-out messages (SQS events built
#   from them), deleting what it did not report failed, until the job ends.
# sweeper: the orchestrator, then the sweeper on events/sweeper-schedule.json.
# Events, responses and the functions' logs (watch.log) stay in target/invoke/.
# INVOKE_ROWS (2000) sets the sample's size.
set -euo pipefail
mode="${1:-}"
case "$mode" in
  orchestrator | worker | sweeper) ;;
  *) echo "usage: scripts/with-moto.sh $0 orchestrator|worker|sweeper" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/venv.sh
. "$root/scripts/venv.sh"
# shellcheck source=scripts/lambda-watch.sh
. "$root/scripts/lambda-watch.sh"
if [ -z "${AWS_ENDPOINT_URL:-}" ]; then
  echo "AWS_ENDPOINT_URL is not set: run this through scripts/with-moto.sh" >&2
  exit 2
fi
venv_install cargo-lambda "${CARGO_LAMBDA_VERSION:-1.9.2}"
export PATH="$venv/bin:$PATH"

bin="${BULKIMPORT:-$root/target/debug/bulkimport}"
out="$root/target/invoke"
rm -rf "$out"
mkdir -p "$out"
py() { "$venv/bin/python" "$root/scripts/invoke.py" "$@"; }
step() { printf '\n== %s\n' "$*" >&2; }

step "bulkimport setup"
resources=$("$bin" setup)
echo "$resources"
bucket=$(py get bucket <<<"$resources")
queue_url=$(py get queueUrl <<<"$resources")
prepare_queue_url=$(py get prepareQueueUrl <<<"$resources")
state_table=$(py get stateTable <<<"$resources")
target_table=$(py get targetTable <<<"$resources")
events_url=$(py event-tap bulk-import-events | py get queueUrl)

step "upload a sample"
"$bin" generate "$out/users.csv" --rows "${INVOKE_ROWS:-2000}"
# Spaces and parentheses, to exercise the key's URL-encoding in the event.
key="uploads/invoke $(date +%s)/users (sample).csv"
py upload "$out/users.csv" "$bucket" "$key" >"$out/object.json"
cat "$out/object.json"
echo
py s3-event events/s3-put.json "$out/object.json" "$out/s3-put.json"
echo "event: $out/s3-put.json (key $(py get Records.0.s3.object.key <"$out/s3-put.json"))"

step "cargo lambda watch"
# Built first so that the first invoke does not wait for a compile.
cargo build --quiet -p orchestrator -p worker -p sweeper
# The functions' environment, as template.yaml sets it. The endpoint and the
# dummy credentials come from with-moto.sh through the environment.
env_vars=(
  "STATE_TABLE=$state_table"
  "QUEUE_URL=$queue_url"
  "PREPARE_QUEUE_URL=$prepare_queue_url"
  "TARGET_TABLE=$target_table"
  "EVENT_BUS_NAME=default"
  "IMPORT_DEFINITION=$root/examples/users.json"
  "MAX_WORKERS=${INVOKE_MAX_WORKERS:-2}"
  "LEASE_SECONDS=60"
  "PREPARE_LEASE_SECONDS=60"
  # cargo lambda watch sends a fixed deadline in 1970; the worker ignores a
  # deadline that has already passed and works until nothing is claimable.
  "DEADLINE_MARGIN_SECONDS=20"
  "RETENTION_DAYS=30"
  "REPORT_BUCKET=$bucket"
  "REPORT_PREFIX=reports/"
)
start_watch "$out/watch.log" "${env_vars[@]}"
echo "listening on 127.0.0.1:$port (logs: $out/watch.log)"

# invoke FUNCTION EVENT_FILE RESPONSE_FILE: prints the response.
invoke() {
  local started=$SECONDS
  if ! cargo lambda invoke "$1" --invoke-address 127.0.0.1 --invoke-port "$port" \
    --data-file "$2" --output-format json >"$3"; then
    echo "invoking $1 failed; the functions' logs:" >&2
    tail -n 40 "$out/watch.log" >&2
    exit 1
  fi
  cat "$3"
  echo "($1: $((SECONDS - started)) s)" >&2
}

step "cargo lambda invoke orchestrator --data-file $out/s3-put.json"
invoke orchestrator "$out/s3-put.json" "$out/orchestrator-response.json"
job_id=$(py get 0.jobId <"$out/orchestrator-response.json")

case "$mode" in
  orchestrator)
    sed "s/3f2b8c0e9a7d4e51b6c2d1f0a9e8b7c6/$job_id/" events/sqs-prepare-continuation.json \
      >"$out/sqs-prepare-continuation.json"
    step "cargo lambda invoke orchestrator --data-file $out/sqs-prepare-continuation.json"
    invoke orchestrator "$out/sqs-prepare-continuation.json" "$out/continuation-response.json"
    ;;
  worker)
    for i in $(seq 1 "${INVOKE_MAX_ROUNDS:-20}"); do
      status=$(py job "$state_table" "$job_id" | py get status)
      [ "$status" = PROCESSING ] || break
      received=$(py sqs-event "$queue_url" "$out/sqs-$i.json" --wait 10 | py get messages)
      if [ "$received" = 0 ]; then
        echo "no work message while the job is $status" >&2
        break
      fi
      step "cargo lambda invoke worker --data-file $out/sqs-$i.json ($received messages)"
      invoke worker "$out/sqs-$i.json" "$out/worker-response-$i.json"
      py settle "$queue_url" "$out/sqs-$i.json" "$out/worker-response-$i.json" >/dev/null
    done
    ;;
  sweeper)
    step "cargo lambda invoke sweeper --data-file events/sweeper-schedule.json"
    invoke sweeper events/sweeper-schedule.json "$out/sweeper-response.json"
    ;;
esac

step "job $job_id (state table item pk J#$job_id, sk JOB)"
py job "$state_table" "$job_id"
echo
if [ "$mode" = worker ]; then
  step "target table"
  py count "$target_table"
  echo
  step "job events (a rule on the default bus forwards them to a queue)"
  py drain "$events_url"
  echo
  report=$(py job "$state_table" "$job_id" | py get report 2>/dev/null || true)
  if [ -n "$report" ]; then
    step "error report $report (first lines)"
    py head "$report"
  fi
  status=$(py job "$state_table" "$job_id" | py get status)
  if [ "$status" = PROCESSING ]; then
    echo "the job did not finish" >&2
    exit 1
  fi
fi
