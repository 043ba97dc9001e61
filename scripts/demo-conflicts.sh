#!/usr/bin/env bash
# The demo twice on fresh emulators: DynamoDB transaction-conflict
# emulation off, then on (MOTO_TRANSACTION_HOLD_MS, MOTO_LATENCY_MS as
# with-moto.sh sets them), and the two wall-clock times side by side.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
declare -A seconds summary
for conflicts in 0 1; do
  out=$(mktemp)
  start=$(date +%s.%N)
  MOTO_CONFLICTS=$conflicts "$root/scripts/with-moto.sh" "$root/scripts/demo.sh" >"$out" 2>&1 || {
    cat "$out" >&2
    exit 1
  }
  end=$(date +%s.%N)
  seconds[$conflicts]=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  summary[$conflicts]=$(tail -n 1 "$out")
  rm -f "$out"
done
echo "conflicts off: ${seconds[0]} s  ${summary[0]}"
echo "conflicts on:  ${seconds[1]} s  ${summary[1]}"
awk -v off="${seconds[0]}" -v on="${seconds[1]}" 'BEGIN { printf "ratio on/off: %.2f\n", on / off }'
