#!/usr/bin/env bash
# Run the test suite on a CUDA machine and keep the full log, from a checkout with the project installed
# (pip install torch torchvision -e ".[dev]"):
#   bash tests/gpu/run_gpu_tests.sh [extra pytest arguments]
# Writes $LOG (default tests/gpu/<gpu>-<date>.log); commit it.
# Environment: LOG; WORKERS (pytest-xdist workers, default 8), SELECT (pytest -k expression, default "not cpu"),
# TEST_TIMEOUT (seconds, default 480).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
gpu=$(python3 -c 'import torch, re; print(re.sub("[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()))')
LOG=${LOG:-tests/gpu/$gpu-$(date -u +%Y-%m-%d).log}
mkdir -p "$(dirname "$LOG")"
{
  echo "# yolo13-attn GPU test log"
  echo "# date: $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  python3 -m yolo13_attn info
} > "$LOG" 2>&1
# CPU-only cases already run in CI; on a GPU machine run the rest, 8 workers sharing the GPU
# (Triton compiles are CPU-bound). -v goes to the log, the summary to stdout.
timeout "${TEST_TIMEOUT:-480}" python3 -m pytest tests/ -v -rfEs -p no:cacheprovider -n "${WORKERS:-8}" \
  --ignore=tests/test_bench_outputs.py -k "${SELECT:-not cpu}" "$@" 2>&1 | tee -a "$LOG" \
  | grep -vE "^\[gw[0-9]+\] \[ *[0-9]+%\] (PASSED|SKIPPED)" | tail -60
