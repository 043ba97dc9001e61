#!/usr/bin/env bash
# Scans CloudFormation templates with checkov (the infrastructure scanner):
# any failed check fails. A check that does not apply to a resource is
# skipped on that resource, with its reason, in the template's Metadata
# (checkov: skip: - id: ..., comment: ...); SAM copies a function's
# Metadata to the function it generates, so the same skips hold after the
# transform.
#   scripts/checkov.sh [TEMPLATE ...]   default: template.yaml and its SAM
#                                       translation, target/sam/template.json
#                                       (scripts/lint-template.sh writes it)
# checkov lives in an environment of its own inside .venv (.venv/checkov):
# it pins boto3, packaging and networkx at versions that moto and cfn-lint
# in .venv do not work with.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/venv.sh
. "$root/scripts/venv.sh"

if [ "$#" -eq 0 ]; then
  set -- template.yaml target/sam/template.json
fi
files=()
for template in "$@"; do
  if [ ! -f "$template" ]; then
    echo "checkov: no $template (scripts/lint-template.sh writes target/sam/template.json)" >&2
    exit 1
  fi
  files+=(--file "$template")
done

(venv="$venv/checkov" && venv_install checkov "${CHECKOV_VERSION:-3.3.30}")

# Offline: no update check, nothing fetched from the vendor's platform.
CKV_SKIP_PACKAGE_UPDATE_CHECK=true "$venv/checkov/bin/checkov" \
  --framework cloudformation --skip-download --quiet --compact "${files[@]}"
echo "checkov: $* clean (each skipped check has its reason in the template)" >&2
