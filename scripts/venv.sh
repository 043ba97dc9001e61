#!/usr/bin/env bash
# Sourced by the other scripts: the project's Python tools live in .venv
# (the same one with-moto.sh installs moto into; never delete it from here).
#   venv_install NAME VERSION   installs NAME==VERSION unless that is there
# Sets $venv to the environment's directory.
root=${root:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
venv="${VENV:-$root/.venv}"

venv_install() {
  local name=$1 version=$2
  if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv" >&2
    python3 -m venv "$venv"
  fi
  local have
  have=$("$venv/bin/python" - "$name" <<'PY'
import sys
from importlib import metadata
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    pass
PY
)
  if [ "$have" != "$version" ]; then
    echo "installing $name==$version into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$name==$version"
  fi
}
