#!/usr/bin/env bash
# Everything this project measures or tests only on a GPU, in parts that each fit a 10-minute slot:
#
#   bash benchmarks/gpu_session.sh tests       # CUDA-only tests: masking on the GPU, trial memory, inductor
#   bash benchmarks/gpu_session.sh throughput  # Part B of BENCHMARKS.md: baseline vs Lightning vs raw loop
#   bash benchmarks/gpu_session.sh levers      # the same with one lever off at a time
#   bash benchmarks/gpu_session.sh estimate    # paper run estimate with a measured trial (micro-batch 10 and 125)
#
# Logs go to $OUT (or ./gpu_results), one file per part, with the GPU and software versions at the top.
set -euo pipefail
part=${1:-}
case "$part" in
  tests|throughput|levers|estimate) ;;
  *) echo "usage: bash benchmarks/gpu_session.sh tests|throughput|levers|estimate" >&2; exit 2 ;;
esac
out=${OUT:-gpu_results}
mkdir -p "$out"
log="$out/$part.log"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
  python -c "import torch, lightning, transformers; print('torch', torch.__version__, 'lightning', \
lightning.__version__, 'transformers', transformers.__version__)"
} > "$log"

paper=(experiment=dnabert6_paper data.fasta=data/genomes/human_chr22_20-21M.fa estimate=true)
case "$part" in
  tests)
    DNABERT_TEST_INDUCTOR=1 python -m pytest -q -rs tests/test_masking.py tests/test_trial.py \
      tests/test_levers.py 2>&1 | tee -a "$log" ;;
  throughput)
    python -m benchmarks.train_throughput 2>&1 | tee -a "$log" ;;
  levers)
    for lever in --no-pack --no-compile --no-fused --no-masked-head; do
      python -m benchmarks.train_throughput --runs lightning raw "$lever" 2>&1 | tee -a "$log"
    done ;;
  estimate)
    python train.py "${paper[@]}" 2>&1 | tee -a "$log"
    python train.py "${paper[@]}" data.micro_batch_size=125 2>&1 | tee -a "$log" ;;
esac
