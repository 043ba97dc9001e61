#!/usr/bin/env bash
# Runs a command against a fresh moto server (the local AWS emulator):
# installs moto into .venv when missing, starts it on a free port, exports
# the endpoint and dummy credentials, runs the command, stops the server.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="${VENV:-$root/.venv}"
moto_version="${MOTO_VERSION:-5.2.5}"

if [ ! -x "$venv/bin/moto_server" ]; then
  echo "installing moto[server]==$moto_version into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$moto_version"
fi

port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log="${MOTO_LOG:-$root/target/moto-$port.log}"
mkdir -p "$(dirname "$log")"
# Small multipart parts, so tests can exercise multipart uploads without
# producing 5 MiB (S3's real minimum, which the code respects by default).
# DynamoDB's transaction conflicts are emulated (see moto_server.py): each
# transaction holds its items for MOTO_TRANSACTION_HOLD_MS, and every request
# waits MOTO_LATENCY_MS, so that requests overlap as they do against AWS.
S3_UPLOAD_PART_MIN_SIZE=1024 \
  MOTO_CONFLICTS="${MOTO_CONFLICTS:-1}" \
  MOTO_TRANSACTION_HOLD_MS="${MOTO_TRANSACTION_HOLD_MS:-5}" \
  MOTO_LATENCY_MS="${MOTO_LATENCY_MS:-1}" \
  "$venv/bin/python" "$root/scripts/moto_server.py" 127.0.0.1 "$port" >"$log" 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true' EXIT

"$venv/bin/python" - "$port" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/moto-api/"
for _ in range(200):
    try:
        urllib.request.urlopen(url, timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.05)
sys.exit("moto server did not start")
PY

export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_SESSION_TOKEN=test
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
"$@"
