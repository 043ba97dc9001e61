#!/usr/bin/env bash
# The demo: a 20k-row sample (or FILE) through the whole pipeline against
# the emulator started by with-moto.sh. Prints the job summary last.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="${BULKIMPORT:-$root/target/debug/bulkimport}"
definition="${DEFINITION:-$root/examples/users.json}"
file="${FILE:-}"
if [ -z "$file" ]; then
  mkdir -p "$root/.demo"
  file="$root/.demo/users.csv"
  "$bin" generate "$file" --rows "${ROWS:-20000}"
fi
args=(run "$file" --definition "$definition" --workers "${WORKERS:-4}")
if [ -n "${EXPORT:-}" ]; then args+=(--export "$EXPORT"); fi
exec "$bin" "${args[@]}"
