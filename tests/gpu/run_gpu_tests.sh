#!/usr/bin/env bash
# Run the test suite on a CUDA machine and keep the full log:
#   bash tests/gpu/run_gpu_tests.sh [extra pytest arguments]
# Writes $OUT/gpu_tests.log (default OUT=/tmp/out); commit it as tests/gpu/<gpu>-<date>.log.
# Environment: WHEELS - if set, install these wheels first (pip --no-index --no-deps into a private
# folder put on PYTHONPATH), e.g. on a machine without Ultralytics; WORKERS (pytest-xdist workers,
# default 8), SELECT (pytest -k expression, default "not cpu"), TEST_TIMEOUT (seconds, default 480).
set -uo pipefail
if [ -n "${WHEELS:-}" ]; then
  site="${TMPDIR:-/tmp}/yolo13_attn_test_site"
  python3 -m pip install -q --no-index --no-deps --target "$site" "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
  echo "# yolo13-attn GPU test log"
  echo "# date: $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  python3 -m yolo13_attn info
} > "$OUT/gpu_tests.log" 2>&1
# CPU-only cases already run in CI; on a GPU machine run the rest, 8 workers sharing the GPU
# (Triton compiles are CPU-bound). -v goes to the log, the summary to stdout.
timeout "${TEST_TIMEOUT:-480}" python3 -m pytest tests/ -v -rfEs -p no:cacheprovider -n "${WORKERS:-8}" \
  --ignore=tests/test_bench_outputs.py -k "${SELECT:-not cpu}" "$@" 2>&1 | tee -a "$OUT/gpu_tests.log" \
  | grep -vE "^\[gw[0-9]+\] \[ *[0-9]+%\] (PASSED|SKIPPED)" | tail -60
