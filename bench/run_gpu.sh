#!/usr/bin/env bash
# The whole GPU benchmark job in one call (about 7 minutes on one H100), e.g. through the device
# tool with carry [".whl"]:   bash bench/run_gpu.sh
#
# Installs the Ultralytics wheels of .whl/ (the GPU box has no ultralytics) into /tmp/site, then,
# each part under a time budget (configurations not started in time are listed as "not run"):
#   1. kernel sweep 640x640, fp16, batch 1/8/16, every op, scale and available backend
#   2. kernel sweep 640x640, bf16 and fp32, batch 1/16              (--append: same files)
#   3. kernel sweep 320x256 and 1280x1280, fp16, batch 1/16          (--append)
#   4. model latency n/s/l/x, batch 1/16, fp16 and fp32, eager and CUDA graph
# and prints a short table. Results are written to $RES (default /tmp/bench_results); because the
# device tool returns at most 8 files, $OUT receives bench_results.tar.gz (everything: CSV, JSON,
# markdown, PNG, logs) plus the two markdown reports and summary.txt. Unpack the tarball into
# bench/results/<gpu-slug>-<date>/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/gpu-$(date -u +%Y-%m-%d)}"
RES="${RES:-/tmp/bench_results}"
mkdir -p "$OUT" "$RES"
B640="${B640:-100}"       # seconds of budget per part
B640X="${B640X:-75}"
BEXTRA="${BEXTRA:-60}"
BMODEL="${BMODEL:-135}"
SAMPLES="${SAMPLES:-10}"

pack() {
    tar -czf "$OUT/bench_results.tar.gz" -C "$RES" . 2>/dev/null
    cp "$RES"/kernel_sweep.md "$RES"/model_latency.md "$RES"/summary.txt "$OUT"/ 2>/dev/null
    true
}
trap pack EXIT

python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
start=$(date +%s)
el() { echo "$(( $(date +%s) - start ))s"; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; python3 -m yolo13_attn info; } > "$RES/environment.txt" 2>&1
grep -E "NVIDIA|torch|triton|ultralytics|  (triton|cuda|flash|sdpa|naive) " "$RES/environment.txt" | head -20

sweep() {  # $1 log name, $2 budget, rest: flags
    local log=$1 budget=$2; shift 2
    timeout $(( budget + 90 )) python3 bench/kernel_sweep.py --out "$RES" --samples "$SAMPLES" --budget-s "$budget" "$@" > "$RES/$log" 2>&1
    echo "  rc $? - $(grep -c '^\[' "$RES/$log") configurations; $(grep -c 'check FAIL' "$RES/$log") failed checks; $(grep -cE ' (error|oom): ' "$RES/$log") errors; $(el)"
}
echo "== kernel sweep 640x640 fp16 ($(el))"
sweep kernel_sweep_640_fp16.log "$B640" --images 640x640 --dtypes fp16 --batches 1,8,16
echo "== kernel sweep 640x640 bf16, fp32 ($(el))"
sweep kernel_sweep_640_bf16_fp32.log "$B640X" --append --images 640x640 --dtypes bf16,fp32 --batches 1,16
echo "== kernel sweep 320x256, 1280x1280 fp16 ($(el))"
sweep kernel_sweep_320_1280.log "$BEXTRA" --append --images 320x256,1280x1280 --dtypes fp16 --batches 1,16

echo "== model latency ($(el))"
timeout $(( BMODEL + 120 )) python3 bench/model_latency.py --out "$RES" --scales n,s,l,x --batches 1,16 --dtypes fp16,fp32 \
    --eager-budget-s 0.5 --budget-s "$BMODEL" > "$RES/model_latency.log" 2>&1
echo "  rc $?; $(grep -c ' check ' "$RES/model_latency.log") configurations; $(el)"
grep -iE "error|traceback" "$RES/model_latency.log" | head -n 10

echo "== summary ($(el))"
python3 bench/summarize.py "$RES" --dtype fp16 --image 640x640 | tee "$RES/summary.txt"
