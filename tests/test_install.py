"""A plain (non-editable) install works from any folder: the default DeepSpeed config ships inside
the package, so `adept-train` run from an empty folder, far from this checkout, finds it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from adept_dist.distributed.buildlock import extensions_dir
from tests.conftest import REPO, child_env


@pytest.mark.slow
def test_a_non_editable_install_trains_from_an_empty_folder(tmp_path):
    """A fresh venv, this checkout installed into it with `pip install .` (not editable; the
    dependencies are this environment's, seen through a .pth file, so only the build backend that
    pyproject.toml asks for is fetched, as for any install), then
    `adept-train --max_steps 2` in an empty folder: it trains the built-in model with the packaged
    ds_configs/zero3.json, importing adept_dist from the venv, not from the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)  # pip: this one's
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (Path(site) / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, deepspeed, ...
    env = {k: v for k, v in child_env().items() if k != "PYTHONPATH"}
    # DeepSpeed's CPU comm op from this environment's build, as a TORCH_EXTENSIONS_DIR the user set:
    # the new venv would otherwise compile its own for a minute (tests/test_comm_op.py tests that)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir()[0]))
    source = tmp_path / "source"  # pip builds in the source folder (build/, *.egg-info): not in the checkout
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "runs", ".pytest_cache", ".ruff_cache", "tests"))  # fmt: skip
    build = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--quiet", str(source)],
                           capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    assert (Path(site) / "adept_dist" / "ds_configs" / "zero3.json").is_file()
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    where = subprocess.run([str(py), "-c", "import adept_dist; print(adept_dist.__file__)"], cwd=empty, env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert where.stdout.startswith(site), where.stdout + where.stderr
    proc = subprocess.run([str(venv / "bin" / "adept-train"), "--max_steps", "2", "--max_eval_samples", "8"],
                          cwd=empty, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (empty / "runs" / "builtin" / "adapter" / "adapter_config.json").is_file()
    assert os.listdir(empty) == ["runs"]  # nothing else written where it ran
