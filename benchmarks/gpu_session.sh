#!/usr/bin/env bash
# Everything this project measures or tests only on a GPU, in one command that keeps to its time budget
# (benchmarks/gpu_session.py; benchmarks/README.md, "GPU session", gives the whole procedure):
#
#   bash benchmarks/gpu_session.sh --install-wheels     # on the GPU node: files under $OUT, else gpu_results/
#   bash benchmarks/gpu_session.sh --device cpu --preset tiny ...   # the CPU rehearsal the tests run
#
# --install-wheels first installs .gpu_wheels/ (python -m benchmarks.prepare_gpu_wheels on a machine with
# internet, copied to the node with the checkout) into a private folder put first on PYTHONPATH: a GPU node
# often reaches no package index, and its Python lacks some of the project's dependencies (hydra, datasets,
# wandb...). Every other argument goes to benchmarks/gpu_session.py (--help).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--install-wheels" ]]; then
  shift
  site=/tmp/dnabert_gpu_site
  if ! compgen -G ".gpu_wheels/*.whl" >/dev/null; then
    echo "no wheels in .gpu_wheels/: run python -m benchmarks.prepare_gpu_wheels where pip reaches PyPI," \
      "then copy .gpu_wheels/ into this checkout" >&2
    exit 3
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    .gpu_wheels/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec python3 -m benchmarks.gpu_session "$@"
