#!/usr/bin/env bash
# Generated requests against the API function, checked against
# docs/openapi.yaml: schemathesis (scripts/schemathesis.toml) sends requests
# it derives from the document, valid and invalid ones, to the real `api`
# function served over HTTP by `cargo lambda watch` (its function URL), over
# the moto server that with-moto.sh started, and checks every answer: no
# 5xx, a documented status, content type and headers, a body valid against
# the documented schema, invalid input refused, 405 with `Allow`.
#   scripts/with-moto.sh scripts/api-schema.sh [st run options, e.g. --report har]
# The state table holds real jobs (completed, completed with errors, still
# processing): the tester draws path ids, `source` values and cursors from
# their ids, objects and pages (dictionaries) as well as generating them, so
# that requests reach real jobs and not only 404s. The run is deterministic
# (derandomized generation, no example database). Logs and reports stay in
# target/api-schema/. OPENAPI_DOC tests another version of the document.
set -euo pipefail
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
venv_install schemathesis "${SCHEMATHESIS_VERSION:-4.32.5}"
export PATH="$venv/bin:$PATH"

bin="${BULKIMPORT:-${CARGO_TARGET_DIR:-$root/target}/debug/bulkimport}"
# scripts/schemathesis.toml reads its dictionaries from here.
out="$root/target/api-schema"
rm -rf "$out"
mkdir -p "$out"
doc="${OPENAPI_DOC:-docs/openapi.yaml}"
# Hypothesis (schemathesis's engine) keeps its caches here, not in .hypothesis/.
export HYPOTHESIS_STORAGE_DIRECTORY="$out/hypothesis"
py() { "$venv/bin/python" "$root/scripts/invoke.py" "$@"; }
step() { printf '\n== %s\n' "$*" >&2; }
started=$SECONDS

# `cargo lambda watch` runs the function with `cargo run --bin api`: built
# the same way here, it starts without a compile.
cargo build --quiet -p bulk-import-cli
cargo build --quiet -p api

step "the state: bucket, queues, tables and three jobs"
resources=$("$bin" setup)
bucket=$(py get bucket <<<"$resources")
queue_url=$(py get queueUrl <<<"$resources")
prepare_queue_url=$(py get prepareQueueUrl <<<"$resources")
state_table=$(py get stateTable <<<"$resources")
# A job that completes, and one with invalid rows over four batches (so
# that failure pages and their cursors span batches), both run to the end.
"$bin" generate "$out/clean.csv" --rows 200 --invalid-every 0 2>/dev/null
"$bin" generate "$out/errors.csv" --rows 2000 --invalid-every 7 2>/dev/null
run_job() {
  if ! "$bin" run "$out/$1.csv" --definition examples/users.json --workers 2 \
    --key "uploads/api-schema/$1.csv" >"$out/$1.out" 2>"$out/$1.log"; then
    cat "$out/$1.log" >&2
    exit 1
  fi
  tail -n 1 "$out/$1.out" | py get jobId
}
completed=$(run_job clean)
with_errors=$(run_job errors)
# A job the orchestrator prepares and no worker runs: `run` without workers
# gives up on it after a second, and it stays PROCESSING (until the tester
# aborts it, which it may).
"$bin" run "$out/clean.csv" --definition examples/users.json --workers 0 --timeout 1 \
  --key uploads/api-schema/open.csv >"$out/open.log" 2>&1 || true
"$bin" status "s3://$bucket/uploads/api-schema/open.csv" >"$out/open.json"
processing=$(py get jobId <"$out/open.json")
if [ "$(py get status <"$out/open.json")" != PROCESSING ]; then
  cat "$out/open.log" "$out/open.json" >&2
  echo "the job meant to stay PROCESSING did not" >&2
  exit 1
fi

step "cargo lambda watch"
# The functions' environment, as template.yaml sets it; the endpoint and
# the dummy credentials come from with-moto.sh through the environment.
env_vars=(
  "STATE_TABLE=$state_table"
  "QUEUE_URL=$queue_url"
  "PREPARE_QUEUE_URL=$prepare_queue_url"
  "IMPORT_DEFINITION=$root/examples/users.json"
  "MAX_WORKERS=2"
  "RETENTION_DAYS=30"
  "REPORT_BUCKET=$bucket"
  "REPORT_PREFIX=reports/"
)
start_watch "$out/watch.log" "${env_vars[@]}"

# The jobs and objects the tester draws from (libFuzzer dictionary files).
printf '"%s"\n' "$completed" "$with_errors" "$processing" >"$out/job-ids.dict"
for name in clean errors open; do
  printf '"s3://%s/uploads/api-schema/%s.csv"\n' "$bucket" "$name"
done >"$out/sources.dict"
echo "jobs: $completed (completed), $with_errors (with errors), $processing (processing)"

url="http://127.0.0.1:$port/lambda-url/api"
# The first request starts the function.
"$venv/bin/python" - "$url/health" <<'PY'
import sys, time, urllib.request
for _ in range(600):
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit("the api function did not answer GET /health")
PY
# Cursors of the job with errors, as its pages hand them out (the tester
# passes them back, to that job and to the others).
"$venv/bin/python" - "$url/jobs/$with_errors/errors?limit=40" >"$out/cursors.dict" <<'PY'
import json, sys, urllib.parse, urllib.request
url, cursors = sys.argv[1], []
while len(cursors) < 6:
    query = "&cursor=" + urllib.parse.quote(cursors[-1]) if cursors else ""
    with urllib.request.urlopen(url + query, timeout=30) as response:
        cursor = json.load(response).get("nextCursor")
    if cursor is None:
        break
    cursors.append(cursor)
if not cursors:
    sys.exit("the job with errors has a single page of them")
print("\n".join(json.dumps(c) for c in cursors))
PY
echo "api: $url (functions' logs: $out/watch.log; ready after $((SECONDS - started)) s)"

step "schemathesis $(st --version | awk '{print $NF}'): $doc against $url"
st_started=$SECONDS
status=0
st --config-file scripts/schemathesis.toml run "$doc" --url "$url" "$@" || status=$?
echo "schemathesis: $((SECONDS - st_started)) s (report: $out/junit.xml)"
if [ "$status" != 0 ]; then
  echo "the API does not answer as $doc says (the functions' logs: $out/watch.log)" >&2
fi
exit "$status"
