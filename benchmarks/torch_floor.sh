#!/usr/bin/env bash
# Does the project run on an older torch (a cluster's module system often offers one)? Builds a fresh venv with
# that torch and runs a smoke subset: every module imports, FlexAttention equals SDPA on packed rows (the tests;
# forward only: FlexAttention has no backward on a CPU), a few pretraining steps of each family, one fine-tuning
# epoch, an export read back by transformers. Prints PASS or FAIL per step and overall; exit 0 only when every
# step passed. docs/guide/install.md, "Tested versions", lists what passed.
#
#   bash benchmarks/torch_floor.sh <torch version> [venv dir] [--floors] [--reuse]
#
#   <torch version>  e.g. 2.6.0; installed from PyPI (on Linux the older releases are CUDA builds, torch plus the
#                    nvidia-* packages: a few GB to download, fine on a CPU). Not for every CI run.
#   [venv dir]       default /tmp/dnabert_torch_<version>; recreated unless --reuse (then pip only adjusts it,
#                    for a quick rerun: record results of fresh venvs). Logs go to <venv dir>/smoke/.
#   --floors         every other dependency at the lower bound pyproject.toml declares (name==bound), so the
#                    run tests the floors themselves; without it pip picks the newest versions that fit.
#   PYTHON=python3.11 picks the interpreter (default python3).
#
# Runs from the repository root without installing the project (cwd puts `dnabert` on the path): run outputs go
# under the venv dir, and the checkout gets only what any run leaves beside the bundled genomes (git-ignored
# indexes, the bgzip genome's plain copy). Small on purpose: a tiny model, a few steps, a 400-row task; minutes
# on 2 CPU cores after the install.
set -uo pipefail
cd "$(dirname "$0")/.."

floors=false
reuse=false
positional=()
for arg in "$@"; do
  case "$arg" in
    --floors) floors=true ;;
    --reuse) reuse=true ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) positional+=("$arg") ;;
  esac
done
if (( ${#positional[@]} < 1 || ${#positional[@]} > 2 )); then
  echo "usage: bash benchmarks/torch_floor.sh <torch version> [venv dir] [--floors] [--reuse]" >&2
  exit 2
fi
torch_version=${positional[0]}
venv=${positional[1]:-/tmp/dnabert_torch_$torch_version}
host_python=${PYTHON:-python3}
logs=$venv/smoke
work=$venv/smoke/work
names=()
results=()

# step <description> <function>: run it with its output in <logs>/<n>_<function>.log; record PASS/FAIL, seconds
step() {
  local name=$1 log="$logs/$(( ${#names[@]} + 1 ))_$2.log" start=$SECONDS
  shift
  echo "== $name"
  if "$@" >"$log" 2>&1; then
    results+=("PASS  $(( SECONDS - start )) s")
  else
    results+=("FAIL  $(( SECONDS - start )) s  (log: $log)")
    tail -n 25 "$log" | sed 's/^/   | /'
  fi
  names+=("$name")
}

summary() {
  local failed=0 index
  echo
  echo "torch floor smoke: torch $torch_version, $("$venv/bin/python" -c 'import platform; print("Python", platform.python_version())' 2>/dev/null || echo "no venv"), floors of the other dependencies: $floors"
  for index in "${!names[@]}"; do
    printf '  %-34s %s\n' "${names[$index]}" "${results[$index]}"
    [[ ${results[$index]} == PASS* ]] || failed=1
  done
  if (( failed )); then echo "FAIL"; else echo "PASS"; fi
  return $failed
}

dependencies() {  # pyproject.toml's dependencies; with --floors each `name>=bound` becomes `name==bound`
  "$venv/bin/python" - "$floors" <<'EOF'
import sys, tomllib
from packaging.requirements import Requirement
floors = sys.argv[1] == "true"
for line in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    requirement = Requirement(line)
    if requirement.name == "torch":
        continue  # the version under test, installed first
    bounds = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    print(f"{requirement.name}=={bounds[0]}" if floors and bounds else line)
EOF
}

install() {
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$torch_version" packaging &&
    mapfile -t requirements < <(dependencies) &&
    echo "installing: ${requirements[*]}" &&
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$torch_version" \
      "${requirements[@]}" pytest &&
    "$venv/bin/python" -m pip list --format=freeze
}

imports() {  # the GPU preflight's check: pyproject's requirements are met, every module and deferred import loads
  "$venv/bin/python" - <<'EOF'
from benchmarks.gpu_session import preflight
fatal, warnings = preflight()
print("\n".join(["unmet requirements (not fatal: the steps below decide):", *warnings] if warnings else ["requirements met"]))
print("\n".join(fatal) or "every dnabert module and deferred import loads")
raise SystemExit(1 if fatal else 0)
EOF
}

kmer_pretrain() {  # the k-mer demo, tiny: 8 optimiser steps (non-finite guard, validation, checkpoint, export)
  "$venv/bin/python" train.py model.hidden_size=32 model.num_hidden_layers=1 model.num_attention_heads=2 \
    model.intermediate_size=64 data.max_tokens=64 data.micro_batch_size=4 data.val_max_windows=16 \
    global_batch_size=8 max_steps=8 masking.final_rate_steps=4 trainer.val_every_n_steps=4 \
    callbacks.model_checkpoint.every_n_train_steps=4 probe.path=null "paths.output_root=$work" run_name=kmer &&
    test -f "$work/demo/kmer/hf_model/config.json"
}

flex_tests() {  # both families' FlexAttention against SDPA on packed rows (eager FlexAttention, CPU)
  "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_levers.py tests/test_dnabert2_model.py \
    -k flex_attention_equals_sdpa
}

dnabert2_pretrain() {  # DNABERT-2 in miniature (BPE trained first, ALiBi, packed rows): 4 steps; its export
  # needs the optional multimolecule package, so the run ends at its checkpoint
  "$venv/bin/python" train.py experiment=dnabert2_demo model.hidden_size=32 model.num_hidden_layers=1 \
    model.num_attention_heads=2 model.intermediate_size=48 data.pack_rows=true \
    tokenizer.train_bp=200000 tokenizer.vocab_size=512 data.val_max_windows=16 global_batch_size=8 \
    data.micro_batch_size=4 max_steps=4 trainer.val_every_n_steps=4 callbacks.model_checkpoint.every_n_train_steps=4 \
    probe.path=null export=false "paths.output_root=$work" run_name=bpe &&
    test -f "$work/dnabert2_demo/bpe/checkpoints/last.ckpt"
}

finetune() {  # one epoch on 400 rows of the bundled promoter task, from the k-mer run
  head -n 401 data/tasks/prom_core.tsv >"$work/task.tsv" &&
    "$venv/bin/python" finetune.py "pretrained=$work/demo/kmer" task=file "task.train=$work/task.tsv" \
      task.test_fraction=0.2 max_epochs=1 batch_size=16 seed=1 "paths.output_root=$work" &&
    ls "$work"/finetune_custom/*/results.json
}

export_and_read() {  # the export command on the k-mer run, read back as transformers' BertForMaskedLM
  "$venv/bin/python" -m dnabert.tools.export "$work/demo/kmer" "$work/hf_out" &&
    "$venv/bin/python" -c "import sys; from transformers import BertForMaskedLM
model = BertForMaskedLM.from_pretrained(sys.argv[1]); print(type(model).__name__, model.num_parameters())" \
      "$work/hf_out"
}

$reuse && [[ -x $venv/bin/python ]] || rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
if [[ ! -x $venv/bin/python ]] && ! "$host_python" -m venv "$venv"; then
  echo "could not create a venv with $host_python" >&2
  exit 1
fi
rm -rf "$logs"
mkdir -p "$work"
step install install
if [[ ${results[0]} == PASS* ]]; then
  export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 WANDB_MODE=disabled
  step "import every module" imports
  step "pretrain k-mer (8 steps)" kmer_pretrain
  step "FlexAttention = SDPA (tests)" flex_tests
  step "pretrain DNABERT-2 (4 steps)" dnabert2_pretrain
  step "fine-tune (1 epoch)" finetune
  step "export, read back" export_and_read
fi
summary
