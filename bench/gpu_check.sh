#!/usr/bin/env bash
# The first GPU hour in one command: every check and figure that needs a GPU (see bench/gpu_check.py).
#
#   bash bench/gpu_check.sh [OUT]            # on a GPU machine with torch, triton, timm, pyarrow, torchvision
#   bash bench/gpu_check.sh --smoke [OUT]    # CPU, tiny shapes (what CI runs so that the script cannot rot)
#
# neuroprint need not be installed: without an installed package the script points Python at this checkout
# through a folder of links (neuroprint -> engine/, neuroprint/kernels -> kernels/; GPU_CHECK_LINKS=1 forces
# it). Ray and DALI are not used.
# A hard limit of 9.5 minutes (GPU_CHECK_LIMIT seconds) keeps it inside a 10-minute device slot; the JSON is
# written after every step, so what finished is kept.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=()
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=(--smoke); shift; fi
OUT="${1:-gpu-check-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if [[ -n "${GPU_CHECK_LINKS:-}" ]] || ! "$PY" -c "import neuroprint.kernels" >/dev/null 2>&1; then
  LINKS="$(mktemp -d)"
  mkdir -p "$LINKS/neuroprint"
  for f in engine/*; do ln -s "$PWD/$f" "$LINKS/neuroprint/$(basename "$f")"; done
  ln -s "$PWD/kernels" "$LINKS/neuroprint/kernels"
  export PYTHONPATH="$LINKS${PYTHONPATH:+:$PYTHONPATH}"
fi
timeout --signal=INT "${GPU_CHECK_LIMIT:-570}" "$PY" bench/gpu_check.py "${SMOKE[@]}" --out "$OUT"
rc=$?
echo "gpu_check: exit $rc; figures in $OUT/gpu_check.json, rows for bench/RESULTS.md in $OUT/RESULTS_rows.md"
exit $rc
