#!/usr/bin/env bash
# Install or upgrade a token-broker release carrying this repository's policy files.
#
# Every policies/*.yaml and policies/*.yml file becomes one entry of the chart's `policies` value
# (file name → content) through `--set-file policies.<name>=<path>`, so the release holds exactly
# the files in git. Helm's --set syntax reads dots as nesting and commas as separators, so dots in
# the file name are escaped (`per-user.yaml` → `policies.per-user\.yaml`), and backslashes and
# commas in the path too.
#
# usage: scripts/helm-install-policies.sh [options] RELEASE [HELM ARGS...]
#   --policies DIR  the policy files (default: policies/ of this repository)
#   --chart PATH    the chart (default: helm/token-broker of this repository)
#   --template      render with `helm template` instead of `helm upgrade --install` (no cluster)
#   --print-args    only print the --set-file arguments, shell-quoted, one per line
#   HELM ARGS       passed on to helm, e.g. --namespace apps -f values-prod.yaml --dry-run=server
# The helm binary is $HELM if set, otherwise `helm` from PATH.
#
# Examples:
#   scripts/helm-install-policies.sh token-broker --namespace apps -f values-prod.yaml
#   scripts/helm-install-policies.sh --template token-broker -f values-prod.yaml | kubectl diff -f -
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
policies_dir="$root/policies"
chart="$root/helm/token-broker"
mode=install

usage() {
  sed -n '10,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --policies) [ $# -ge 2 ] || usage; policies_dir="$2"; shift 2 ;;
    --chart) [ $# -ge 2 ] || usage; chart="$2"; shift 2 ;;
    --template) mode=template; shift ;;
    --print-args) mode=print; shift ;;
    -h | --help) usage 0 ;;
    --) shift; break ;;
    -*) echo "helm-install-policies: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done

if [ ! -d "$policies_dir" ]; then
  echo "helm-install-policies: $policies_dir is not a directory" >&2
  exit 2
fi

shopt -s nullglob
files=("$policies_dir"/*.yaml "$policies_dir"/*.yml)
shopt -u nullglob
if [ ${#files[@]} -eq 0 ]; then
  echo "helm-install-policies: no *.yaml or *.yml policy files in $policies_dir" >&2
  exit 2
fi

args=()
for path in "${files[@]}"; do
  name="$(basename "$path")"
  # The name becomes a ConfigMap key (and the broker loads only *.yaml/*.yml files).
  if ! [[ "$name" =~ ^[-._a-zA-Z0-9]+$ ]]; then
    echo "helm-install-policies: $name: a policy file name may only hold letters, digits, '-', '_' and '.'" >&2
    exit 2
  fi
  escaped_path="${path//\\/\\\\}"
  escaped_path="${escaped_path//,/\\,}"
  args+=("--set-file" "policies.${name//./\\.}=$escaped_path")
done

case "$mode" in
  print)
    printf '%q\n' "${args[@]}"
    ;;
  template)
    [ $# -ge 1 ] || usage
    release="$1"
    shift
    exec "${HELM:-helm}" template "$release" "$chart" "${args[@]}" "$@"
    ;;
  install)
    [ $# -ge 1 ] || usage
    release="$1"
    shift
    exec "${HELM:-helm}" upgrade --install "$release" "$chart" "${args[@]}" "$@"
    ;;
esac
