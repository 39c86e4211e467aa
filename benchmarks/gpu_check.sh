#!/usr/bin/env bash
# The device check of issue 14, prepared for a session lent a GPU (one H100/H200; about 8
# minutes there, each step capped so that the whole ends inside 10). Run from the repository
# root on the GPU machine, with its own python3 (PyTorch with CUDA, Triton):
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# Writes into $OUT (default gpu-results/): env.txt, test_cuda.txt, train.jsonl (one JSON row
# per bench_train.py --config run: samples/s, empty rows, TFLOP/s and share of peak, test
# logits per model, projected hours), precision.txt (bf16 against fp32 on the digits demo)
# and log.txt. docs/scaling.md says what to do with each figure.
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }

log "environment"
{ nvidia-smi; $PY -c "import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).total_memory // 2**30, 'GiB')"; } \
    > "$OUT/env.txt" 2>&1

log "CUDA tests (isolation, resume, loaded logits; fp32/bf16, eager/compiled)"
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/training/test_cuda.py > "$OUT/test_cuda.txt" 2>&1
log "tests exit $?"

bench() {  # one bench_train --config run, its JSON rows appended to train.jsonl
    log "bench_train $*"
    timeout "$1" $PY benchmarks/bench_train.py --device cuda --json --sample-chunks 2 --sample-epochs 2 \
        "${@:2}" >> "$OUT/train.jsonl" 2>> "$OUT/log.txt"
    log "exit $?"
}
CONFIGS=(--config cifar10-k250 --config mnist-k1200 --config cifar10-k50-fa-d16)
bench 70 "${CONFIGS[@]}"                             # fp32, eager: today's default
bench 70 "${CONFIGS[@]}" --precision bf16            # bf16 autocast
bench 130 "${CONFIGS[@]}" --compile                  # compiled step and test logits
bench 40 --config mnist-k1200 --config cifar10-k250 --chunk-size 1   # one-model chunks: no empty rows
bench 60 --config mnist-k1200 --chunk-size 1 --compile --compile-mode reduce-overhead  # + CUDA graphs

log "bf16 parity on the digits demo"
timeout 100 $PY benchmarks/bench_precision.py --device cuda > "$OUT/precision.txt" 2>&1
log "precision exit $?"
