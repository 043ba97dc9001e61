# Sourced by scripts that run the functions locally (invoke.sh,
# api-schema.sh): `start_watch LOG VAR=VALUE...` starts `cargo lambda watch`
# (the Lambda runtime API emulator, which also serves function URLs) on a
# free port, left in $port, with those environment variables, in its own
# process group so that stopping it stops the functions too; it returns once
# the port answers, and the watch stops when the script exits. Needs $venv
# (scripts/venv.sh) and cargo-lambda on PATH.

start_watch() {
  local log=$1
  shift
  port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local watch_args=(--ignore-changes --invoke-address 127.0.0.1 --invoke-port "$port")
  local v
  for v in "$@"; do watch_args+=(--env-var "$v"); done
  set -m
  cargo lambda watch "${watch_args[@]}" >"$log" 2>&1 &
  watch_pid=$!
  set +m
  trap stop_watch EXIT
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if ! kill -0 "$watch_pid" 2>/dev/null; then
      cat "$log" >&2
      echo "cargo lambda watch exited" >&2
      exit 1
    fi
    sleep 0.1
  done
}

stop_watch() {
  kill -TERM -- "-$watch_pid" 2>/dev/null || true
  wait "$watch_pid" 2>/dev/null || true
}
