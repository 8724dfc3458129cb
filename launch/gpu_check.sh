#!/usr/bin/env bash
# The GPU check: adept-dist's training speed on one GPU at a LLaMA-7B shape, in one command, with
# nothing but this checkout (no download: the model is random, built on the GPU).
#
#   launch/gpu_check.sh [--wheels DIR] [--json FILE] [--plan_json FILE | --no_plan] [more bench/bench.py flags]
#
# Runs bench/bench.py at hidden 4096, 32 layers, 32 heads, vocabulary 32000 (LLaMA-2-7B), NF4 with
# bf16 compute, examples of 256-1024 tokens, 8 per step, one round of: floor and floor_padded,
# anchor (PEFT prompt tuning), ours (packed, replicated backbone), ours_padded, ours_zero3 (ZeRO-3,
# layerwise loader), and writes one JSON (default gpu_check.json): per mode ms/step, tokens/s,
# MFU against the bf16 matmul peak it measures, peak GPU memory in training, and for ours the peak
# while loading. Flags after the options go to bench.py and override these (--layers 8 for a quicker
# look). A mode that fails is recorded in the JSON's "failed" and the others still run.
#
# Then the plan against this GPU (unless --no_plan): bench/bench_plan.py --device cuda trains random
# LLaMA-2-7B-shaped models of 2 and 4 layers (bf16, micro-batch 4 x 1024 tokens, ZeRO-3 and
# replicated, one GPU) a few steps each, and writes adept-plan's predicted peak per GPU beside CUDA's
# measured allocator peak to --plan_json (default gpu_plan.json). Both parts run whatever the other
# did; the exit status is the worse of the two.
#
# --wheels DIR: install the Python packages the GPU machine lacks from wheel files in DIR first (into
# a folder of their own on PYTHONPATH; the machine's torch is kept). launch/gpu_wheels.sh DIR fetches
# them on a machine with PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels="" json="gpu_check.json" plan_json="gpu_plan.json" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels="${2:?--wheels needs a folder of wheel files}"; shift 2 ;;
    --json) json="${2:?--json needs a file name}"; shift 2 ;;
    --plan_json) plan_json="${2:?--plan_json needs a file name}"; shift 2 ;;
    --no_plan) plan_json=""; shift ;;
    *) extra+=("$1"); shift ;;
  esac
done
if [ -n "$wheels" ]; then
  site="${TMPDIR:-/tmp}/adept-gpu-site"
  compgen -G "$wheels/*.whl" > /dev/null || { echo "gpu_check: no .whl files in $wheels (launch/gpu_wheels.sh fetches them)" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 - <<'PY'
import contextlib, importlib, sys
with contextlib.suppress(Exception):  # bitsandbytes (PEFT imports it) without its import-time torch.compile cost
    from adept_dist.common.imports import import_deferring_compile
    import_deferring_compile("bitsandbytes")
missing = []
for name in ("torch", "transformers", "deepspeed", "bitsandbytes", "peft", "safetensors", "tokenizers"):
    try:
        importlib.import_module(name)
    except Exception as exc:  # one line per package, then stop
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
if missing:
    sys.exit("gpu_check: cannot import " + "; ".join(missing) + ": pass --wheels DIR (see launch/gpu_wheels.sh)")
import torch
print(f"gpu_check: torch {torch.__version__}, " + (torch.cuda.get_device_name() if torch.cuda.is_available()
      else "no GPU (the CPU runs it: only sensible with small shape flags)"), flush=True)
PY
start=$(date +%s) status=0
python3 bench/bench.py --hidden 4096 --layers 32 --heads 32 --vocab 32000 --min_len 256 --max_len 1024 \
  --batch 8 --examples 64 --warmup 2 --steps 4 --rounds 1 --keep_going \
  --modes floor,floor_padded,anchor,ours,ours_padded,ours_zero3 --json "$json" ${extra[@]+"${extra[@]}"} || status=$?
echo "gpu_check: speed in $(( $(date +%s) - start )) s (exit $status); figures in $json"
if [ -n "$plan_json" ] && ! python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: no GPU, so no plan check (it compares the plan with CUDA's allocator peak)"
elif [ -n "$plan_json" ]; then
  plan_start=$(date +%s) plan_status=0
  python3 bench/bench_plan.py --device cuda --shapes 7b-2l,7b-4l --worlds 1 --scopes global,none --keep_going \
    --json "$plan_json" || plan_status=$?
  echo "gpu_check: plan against the GPU's peak in $(( $(date +%s) - plan_start )) s (exit $plan_status); figures in $plan_json"
  [ "$status" -ne 0 ] || status=$plan_status
fi
echo "gpu_check: $(( $(date +%s) - start )) s in all"
exit "$status"
