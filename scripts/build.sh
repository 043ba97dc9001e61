#!/usr/bin/env bash
# Builds the Lambda functions with cargo-lambda (installed into .venv
# from PyPI) into $LAMBDA_DIR/<function>/bootstrap, each with the import
# definition beside it as definition.json (/var/task/definition.json on
# Lambda: template.yaml's default IMPORT_DEFINITION). template.yaml's
# CodeUri points at target/lambda/<function>/, what `make build` makes.
#
#   BUILD_PROFILE  release (default; target/lambda) or debug (target/lambda-debug,
#                  a quick check that never replaces what gets deployed: for
#                  the host, a plain cargo build packaged the same way)
#   DEFINITION     definition to bundle (default examples/users.json)
#   ROUTES         a routes file to bundle too, with the definitions it names
#                  by relative path, as routes/ beside the bootstrap
#                  (/var/task/routes/routes.json: template.yaml's Routes)
#   LAMBDA_ARCH    arm64 or x86_64 (default: arm64 when the Rust target
#                  aarch64-unknown-linux-gnu is installed, else x86_64)
#   LAMBDA_COMPILER  cargo-lambda's --compiler (default: cargo when building
#                  for the host's architecture, cargo-zigbuild when crossing)
# Never downloads a Rust target.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/venv.sh
. "$root/scripts/venv.sh"

cargo_lambda_version="${CARGO_LAMBDA_VERSION:-1.9.2}"
profile="${BUILD_PROFILE:-release}"
definition="${DEFINITION:-examples/users.json}"
routes="${ROUTES:-}"
# custom-worker: the worker around your own processor (WorkerCode=custom).
functions=(orchestrator worker sweeper api custom-worker)
# glibc of provided.al2023: a binary needing newer symbols fails at start.
max_glibc="2.34"

case "$profile" in
  release) lambda_dir="${LAMBDA_DIR:-target/lambda}"; profile_flag=(--release) ;;
  debug) lambda_dir="${LAMBDA_DIR:-target/lambda-debug}"; profile_flag=() ;;
  *) echo "BUILD_PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac

venv_install cargo-lambda "$cargo_lambda_version"
"$venv/bin/python" -c 'import json, sys; json.load(open(sys.argv[1]))' "$definition" ||
  { echo "DEFINITION=$definition is not a readable JSON file" >&2; exit 2; }
export PATH="$venv/bin:$PATH"

host=$(rustc -vV | sed -n 's/^host: //p')
installed=$(rustup target list --installed 2>/dev/null || echo "$host")
arch="${LAMBDA_ARCH:-}"
if [ -z "$arch" ]; then
  if grep -qx aarch64-unknown-linux-gnu <<<"$installed"; then
    arch=arm64
  else
    arch=x86_64
    echo "note: Rust target aarch64-unknown-linux-gnu is not installed: building for x86_64." >&2
    echo "      Deploy with Architecture=x86_64 (or: rustup target add aarch64-unknown-linux-gnu, then rebuild for arm64)." >&2
  fi
fi
case "$arch" in
  arm64) target=aarch64-unknown-linux-gnu; arch_flag=--arm64 ;;
  x86_64) target=x86_64-unknown-linux-gnu; arch_flag=--x86-64 ;;
  *) echo "LAMBDA_ARCH must be arm64 or x86_64, not $arch" >&2; exit 2 ;;
esac
if ! grep -qx "$target" <<<"$installed"; then
  echo "Rust target $target is not installed (rustup target add $target)." >&2
  exit 1
fi
compiler="${LAMBDA_COMPILER:-}"
if [ -z "$compiler" ]; then
  # The system linker only links for the host; zig (the ziglang package
  # cargo-lambda depends on) links for the other architecture.
  if [ "$target" = "$host" ]; then compiler=cargo; else compiler=cargo-zigbuild; fi
fi

echo "building ${functions[*]} ($profile, $arch, compiler $compiler) into $lambda_dir/" >&2
packages=()
for f in "${functions[@]}"; do packages+=(-p "$f"); done
started=$(date +%s)
if [ "$profile" = debug ] && [ "$target" = "$host" ]; then
  # The quick check: the same packages from a plain host build, which the
  # tests' build then reuses (cargo-lambda names its target, which puts
  # its artifacts apart from the host's and compiles everything again).
  cargo build "${packages[@]}"
  for f in "${functions[@]}"; do
    mkdir -p "$lambda_dir/$f"
    cp "${CARGO_TARGET_DIR:-target}/debug/$f" "$lambda_dir/$f/bootstrap"
  done
else
  cargo lambda build "${profile_flag[@]}" --compiler "$compiler" "$arch_flag" \
    --lambda-dir "$lambda_dir" "${packages[@]}"
fi

for f in "${functions[@]}"; do
  bootstrap="$lambda_dir/$f/bootstrap"
  [ -x "$bootstrap" ] || { echo "$bootstrap was not built" >&2; exit 1; }
  cp "$definition" "$lambda_dir/$f/definition.json"
  rm -rf "$lambda_dir/$f/routes"
  if [ -n "$routes" ]; then
    # The routes file and each definition it names by a relative path.
    "$venv/bin/python" - "$routes" "$lambda_dir/$f/routes" <<'PY'
import json, os, shutil, sys
source, target = sys.argv[1], sys.argv[2]
base = os.path.dirname(source)
os.makedirs(target, exist_ok=True)
shutil.copy(source, os.path.join(target, "routes.json"))
for route in json.load(open(source))["routes"]:
    name = route.get("definition")
    if isinstance(name, str) and not name.startswith(("s3://", "/", "file://")):
        os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
        shutil.copy(os.path.join(base, name), os.path.join(target, name))
PY
  fi
  if command -v objdump >/dev/null; then
    needs=$(objdump -T "$bootstrap" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
    if [ -n "$needs" ] && [ "$(printf '%s\n%s\n' "$needs" "$max_glibc" | sort -V | tail -n 1)" != "$max_glibc" ]; then
      echo "$bootstrap needs glibc $needs; provided.al2023 has $max_glibc. Build with LAMBDA_COMPILER=cargo-zigbuild." >&2
      exit 1
    fi
  fi
done
echo "$arch" >"$lambda_dir/architecture"

echo "built in $(($(date +%s) - started)) s:" >&2
for f in "${functions[@]}"; do
  echo "  $lambda_dir/$f/ ($(du -h "$lambda_dir/$f/bootstrap" | cut -f1) bootstrap + definition.json from $definition${routes:+ + routes/ from $routes})" >&2
done
if [ "$profile" = release ]; then
  echo "deploy: sam deploy --guided --parameter-overrides Architecture=$arch" >&2
fi
