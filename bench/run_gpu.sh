#!/usr/bin/env bash
# The benchmarks on a CUDA machine in one call, then a short table of the results.
#
#   pip install torch torchvision -e .                      # Ultralytics comes with the package
#   bash bench/run_gpu.sh                                   # every part: about 17 minutes on one H100
#   PARTS=model_compiled,train_step bash bench/run_gpu.sh   # about 8 minutes on one H100
#
# Each part runs under its own time budget: configurations not started in time are recorded as
# "not run" (and a part stopped by its timeout still writes what ran). Every part merges into the
# files in $RES (--append: a configuration measured again is replaced, new modes are added).
# Parts (PARTS, comma-separated, in this order; default all):
#   sweep           kernel sweep: 640x640 fp16 batch 1/8/16; 640x640 bf16, fp32 batch 1/16;
#                   320x256 and 1280x1280 fp16 batch 1/16 (every op, scale and available backend)
#   model           whole models n/s/l/x, batch 1/16, fp16/fp32, eager and CUDA graph
#   model_compiled  torch.compile (compiled) and the compiled forward in a CUDA graph (compiled_graph),
#                   fp16, YOLOv13-n batch 1 640x640, YOLOv13-x batch 16 640x640, YOLOv13-x batch 4
#                   1280x1280, backends in the order naive, auto, triton, sdpa, flash. Every backend
#                   compiles cold (1-2 minutes for YOLOv13-x), so the default budget reaches about
#                   naive, auto and triton per shape: run again with BACKENDS_COMPILED=sdpa,flash
#   train_step      forward + backward under AMP fp16, YOLOv13-n batch 16 and YOLOv13-x batch 8,
#                   640x640, every backend, 3 rounds in rotated order (best round kept)
#   train_sweep     kernel sweep of the training ops (forward + backward of the area-attention and
#                   hypergraph cores): 640x640, fp16 batch 1/8/16, bf16 batch 16
#   train_profile   per-layer forward/backward profile of the training step (bench/train_profile.py),
#                   YOLOv13-n batch 16 and YOLOv13-x batch 8: unpatched, fa2path, auto
#   train_epochs    YOLO.train, YOLOv13-n batch 16, 20 epochs on a generated dataset: epoch time and
#                   loss curves, unpatched, fa2path, auto (bench/train_epochs.py)
#   cuda_tuning     (not in the default list) the cuda backend's forward kernels one by one and its
#                   automatic choice beside Triton on every area-attention shape (bench/cuda_area_tuning.py)
# Environment:
#   RES                 results folder (default bench/results/<gpu>-<date>)
#   B_SWEEP B_MODEL B_COMPILED B_TRAIN   seconds of budget per part (defaults below)
#   BACKENDS_COMPILED   backends of model_compiled (default naive,auto,triton,sdpa,flash)
#   TARBALL             if set, also pack the results folder into this .tar.gz file
set -uo pipefail
cd "$(dirname "$0")/.."
PARTS="${PARTS:-sweep,model,model_compiled,train_step,train_sweep,train_profile,train_epochs}"
B_SWEEP="${B_SWEEP:-240}"
B_MODEL="${B_MODEL:-135}"
B_COMPILED="${B_COMPILED:-300}"
B_TRAIN="${B_TRAIN:-80}"
BACKENDS_COMPILED="${BACKENDS_COMPILED:-naive,auto,triton,sdpa,flash}"
export PYTHONUNBUFFERED=1
RES="${RES:-bench/results/$(python3 -c 'import torch, re; print(re.sub("[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()))')-$(date -u +%Y-%m-%d)}"
mkdir -p "$RES"
start=$(date +%s)
el() { echo "$(($(date +%s) - start))s"; }
has() { [[ ",$PARTS," == *",$1,"* ]]; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; python3 -m yolo13_attn info; } >"$RES/environment.txt" 2>&1
grep -E "NVIDIA|torch|triton|ultralytics|  (triton|cuda|flash|sdpa|naive) " "$RES/environment.txt" | head -20

run() { # $1 log name, $2 budget (s), rest: the script and its flags; SIGTERM at budget + 150 s writes what ran
    local log=$1 budget=$2
    shift 2
    timeout --kill-after=60 $((budget + 150)) python3 "$@" --out "$RES" --append --budget-s "$budget" >"$RES/$log" 2>&1
    echo "  rc $?; $(grep -cE 'check FAIL' "$RES/$log") failed checks; $(grep -cE ' (error|oom): ' "$RES/$log") errors; $(el)"
}
if has sweep; then
    third=$((B_SWEEP / 3))
    echo "== kernel sweep ($(el))"
    run kernel_sweep_640_fp16.log "$third" bench/kernel_sweep.py --images 640x640 --dtypes fp16 --batches 1,8,16 --samples 10
    run kernel_sweep_640_bf16_fp32.log "$third" bench/kernel_sweep.py --images 640x640 --dtypes bf16,fp32 --batches 1,16 --samples 10
    run kernel_sweep_320_1280.log "$third" bench/kernel_sweep.py --images 320x256,1280x1280 --dtypes fp16 --batches 1,16 --samples 10
fi
if has model; then
    echo "== model latency, eager and CUDA graph ($(el))"
    run model_latency.log "$B_MODEL" bench/model_latency.py --scales n,s,l,x --batches 1,16 --dtypes fp16,fp32 --mode-budget-s 0.5
fi
if has model_compiled; then
    echo "== model latency, torch.compile ($(el))"
    run model_compiled.log "$B_COMPILED" bench/model_latency.py --cases n:1:640,x:16:640,x:4:1280 --dtypes fp16 \
        --modes compiled,compiled_graph --backends "$BACKENDS_COMPILED"
fi
if has train_step; then
    echo "== training step ($(el))"
    run train_step.log "$B_TRAIN" bench/model_latency.py --cases n:16:640,x:8:640 --dtypes fp16 --modes train_step
fi
if has train_sweep; then
    echo "== kernel sweep, training ops ($(el))"
    run kernel_sweep_train_fp16.log "${B_TRAIN_SWEEP:-150}" bench/kernel_sweep.py --ops area_core_train,hg_core_train \
        --images 640x640 --dtypes fp16 --batches 1,8,16 --samples 10
    run kernel_sweep_train_bf16.log 60 bench/kernel_sweep.py --ops area_core_train,hg_core_train \
        --images 640x640 --dtypes bf16 --batches 16 --samples 10
fi
if has train_profile; then
    echo "== training-step profile per layer ($(el))"
    timeout 400 python3 bench/train_profile.py --out "$RES" >"$RES/train_profile.log" 2>&1
    echo "  rc $?; $(el)"
fi
if has train_epochs; then
    echo "== YOLO.train epochs and loss curves ($(el))"
    timeout 500 python3 bench/train_epochs.py --out "$RES" >"$RES/train_epochs.log" 2>&1
    echo "  rc $?; $(el)"
fi
if has cuda_tuning; then
    echo "== cuda forward kernels ($(el))"
    timeout 600 python3 bench/cuda_area_tuning.py --out "$RES/cuda_area_tuning_fp16.json" \
        >"$RES/cuda_area_tuning_fp16.log" 2>&1
    echo "  rc $?; $(grep -c FAIL "$RES/cuda_area_tuning_fp16.log") failed cells; $(el)"
fi
grep -hiE "traceback|error:" "$RES"/*.log | head -n 10
echo "== summary ($(el))"
python3 bench/summarize.py "$RES" --dtype fp16 --image 640x640 | tee "$RES/summary.txt"
if [ -n "${TARBALL:-}" ]; then
    tar -czf "$TARBALL" -C "$RES" . && echo "packed $RES into $TARBALL"
fi
