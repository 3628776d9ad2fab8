#!/usr/bin/env bash
# The short device check of the distillation work, for a machine with a CUDA GPU.
# Run from the repository root with ddcal importable (installed, or PYTHONPATH=.):
#   1. the CUDA tests (metrics, meter, DSA on the GPU against the CPU);
#   2. benchmarks/cuda_distill.py: DM and MTT for a few hundred iterations (s/iteration, quality);
#   3. benchmarks/bench_train_many.py: 5 evaluation networks one by one and stacked (vmap);
#   4. benchmarks/bench_distill.py on CUDA, with the references side by side when
#      REFERENCE_DC / REFERENCE_MTT name their checkouts.
# Logs go to $OUT (default results/cuda).
set -u
out=${OUT:-results/cuda}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/device.txt"
python3 -m pytest -q -p no:cacheprovider -k cuda \
    tests/test_metrics.py tests/test_meter.py tests/test_augment.py 2>&1 | tee "$out/cuda_tests.log"
timeout "${DISTILL_TIMEOUT:-300}" python3 benchmarks/cuda_distill.py \
    --iterations "${ITERATIONS:-300}" 2>&1 | tee "$out/cuda_distill.log"
references=()
[ -n "${REFERENCE_DC:-}" ] && references+=(--reference-dc "$REFERENCE_DC")
[ -n "${REFERENCE_MTT:-}" ] && references+=(--reference-mtt "$REFERENCE_MTT")
timeout "${BENCH_TIMEOUT:-200}" python3 benchmarks/bench_train_many.py --device cuda \
    --networks 5 --epochs 50 2>&1 | tee "$out/bench_train_many_cuda.log"
timeout "${BENCH_TIMEOUT:-200}" python3 benchmarks/bench_distill.py --device cuda --iterations 3 \
    --methods dm mtt dsa dc "${references[@]}" 2>&1 | tee "$out/bench_distill_cuda.log"
