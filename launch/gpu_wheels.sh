#!/usr/bin/env bash
# Wheels for launch/gpu_check.sh --wheels DIR on a GPU machine without network: the packages such a
# machine's PyTorch image usually lacks (DeepSpeed and what it needs beyond the image, bitsandbytes),
# at the versions installed in this environment, for that machine's Python (default 3.12) on
# x86-64 Linux. Run it where PyPI is reachable, inside this project's environment:
#
#   launch/gpu_wheels.sh DIR [PYTHON_VERSION]
#
# DeepSpeed has no wheel on PyPI: its source is built into a pure-Python wheel here (no compiled
# ops; adept-dist needs none on a GPU). 46 MB in all (measured 2026-12-05), bitsandbytes 42 MB of it.
# DeepSpeed's other needs (einops, msgpack, ninja, numpy, packaging, psutil, py-cpuinfo, tqdm) are in
# the GPU image this was written for; add them to the download line below for a barer one.
set -euo pipefail
dir="${1:?usage: launch/gpu_wheels.sh DIR [PYTHON_VERSION]}" py="${2:-3.12}"
mkdir -p "$dir"
version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp "${platforms[@]}" \
  -d "$dir" "bitsandbytes==$(version bitsandbytes)" "pydantic==$(version pydantic)" \
  "pydantic-core==$(version pydantic-core)" "annotated-types==$(version annotated-types)" \
  "typing-inspection==$(version typing-inspection)" "hjson==$(version hjson)"
DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps --no-build-isolation -w "$dir" "deepspeed==$(version deepspeed)"
du -sh "$dir"
ls "$dir"
