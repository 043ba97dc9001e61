#!/usr/bin/env bash
# Lints template.yaml with cfn-lint (errors and warnings fail), then
# translates it with the SAM translator, offline, as CloudFormation would on
# deploy, and lints the result: that catches what SAM itself rejects and
# what only shows after the transform (cycles, generated resources). Then
# scripts/check-iam.py checks the policies' actions and "*" resources, and
# scripts/checkov.sh scans both templates with checkov (any failed check
# fails; skips carry their reasons in the template).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/venv.sh
. "$root/scripts/venv.sh"
template="${TEMPLATE:-template.yaml}"

venv_install cfn-lint "${CFN_LINT_VERSION:-1.58.0}"
venv_install aws-sam-translator "${SAM_TRANSLATOR_VERSION:-1.115.0}"

"$venv/bin/cfn-lint" -- "$template"

out="$root/target/sam"
mkdir -p "$out"
"$venv/bin/python" "$root/scripts/sam-translate.py" "$template" >"$out/template.json"
"$venv/bin/cfn-lint" -- "$out/template.json"
"$venv/bin/python" "$root/scripts/check-iam.py" "$out/template.json"
"$root/scripts/checkov.sh" "$template" "$out/template.json"
echo "$template: cfn-lint clean, SAM transform ($out/template.json) cfn-lint clean, IAM checked, checkov clean" >&2
