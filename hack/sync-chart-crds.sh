#!/usr/bin/env bash
# Copy the generated CRDs (crds/*.yaml, from `make crd`) into the Helm chart's
# crds/, which Helm installs before the templates. The chart also holds kopf's
# peering CRDs (*.kopf.dev.yaml), which are written for the chart and left alone.
# tests/unit/test_packaging.py fails when the copies drift.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/crds"
dest="$root/charts/avatar-operator/crds"

shopt -s nullglob
generated=("$src"/*.yaml)
((${#generated[@]})) || { echo "sync-chart-crds: no CRDs in $src (run make crd)" >&2; exit 1; }

# A CRD removed from crds/ must leave the chart too: drop stale copies first.
for old in "$dest"/*.yaml; do
  case "$(basename "$old")" in
    *.kopf.dev.yaml) ;;
    *) [[ -e "$src/$(basename "$old")" ]] || { rm -f -- "$old"; echo "removed $old"; } ;;
  esac
done
for crd in "${generated[@]}"; do
  cp -- "$crd" "$dest/"
  echo "copied $(basename "$crd") -> charts/avatar-operator/crds/"
done
