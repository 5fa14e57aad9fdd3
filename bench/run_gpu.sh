#!/usr/bin/env bash
# The whole GPU benchmark job in one call (about 7-8 minutes on one H100), e.g. through the device
# tool with carry [".whl"]:   bash bench/run_gpu.sh
# Installs the Ultralytics wheels of .whl/ (the GPU box has no ultralytics) into /tmp/site, then runs
# the kernel sweep (640x640 in full, 320x256 and 1280x1280 at batch 1/16 fp16) and the model
# latency (n/s/l/x, batch 1/16, fp16 and fp32, eager and CUDA graph) into $OUT, each under a time
# budget (configurations not started in time are listed as "not run"), and prints a short table.
# Copy $OUT to bench/results/<gpu-slug>-<date>/ afterwards.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/gpu-$(date -u +%Y-%m-%d)}"
mkdir -p "$OUT"
SWEEP_BUDGET="${SWEEP_BUDGET:-130}"   # seconds, 640x640 sweep
EXTRA_BUDGET="${EXTRA_BUDGET:-40}"    # seconds, 320x256 + 1280x1280
MODEL_BUDGET="${MODEL_BUDGET:-120}"   # seconds, model latency

python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
start=$(date +%s)
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; python3 -m yolo13_attn info; } > "$OUT/environment.txt" 2>&1
echo "== environment ($(( $(date +%s) - start ))s)"; head -20 "$OUT/environment.txt"

echo "== kernel sweep, 640x640"
timeout $(( SWEEP_BUDGET + 90 )) python3 bench/kernel_sweep.py --out "$OUT" --images 640x640 --batches 1,8,16 \
    --dtypes fp16,bf16,fp32 --budget-s "$SWEEP_BUDGET" 2>&1 | tee "$OUT/kernel_sweep.log" | grep -v "^\[" | tail -n 40
grep -c "^\[" "$OUT/kernel_sweep.log" | sed 's/^/configurations timed or declined: /'
echo "== kernel sweep, 320x256 and 1280x1280 ($(( $(date +%s) - start ))s)"
timeout $(( EXTRA_BUDGET + 60 )) python3 bench/kernel_sweep.py --out "$OUT" --append --images 320x256,1280x1280 --batches 1,16 \
    --dtypes fp16 --budget-s "$EXTRA_BUDGET" > "$OUT/kernel_sweep_extra.log" 2>&1
tail -n 3 "$OUT/kernel_sweep_extra.log"

echo "== model latency ($(( $(date +%s) - start ))s)"
timeout $(( MODEL_BUDGET + 90 )) python3 bench/model_latency.py --out "$OUT" --scales n,s,l,x --batches 1,16 --dtypes fp16,fp32 \
    --eager-budget-s 0.5 --budget-s "$MODEL_BUDGET" > "$OUT/model_latency.log" 2>&1
grep -E "^(built|wrote)|error|Error" "$OUT/model_latency.log" | tail -n 20

echo "== summary ($(( $(date +%s) - start ))s)"
python3 bench/summarize.py "$OUT" --dtype fp16 --image 640x640
