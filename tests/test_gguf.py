"""A .gguf file as --model: what cannot be converted is refused with one line, before anything
heavy (tiny GGUF files written with the gguf package; the real model's conversion is in test_real.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from adept_dist.model.backbone import resolve_source
from adept_dist.model.gguf import GGUFError, check_file, file_sha256, is_gguf


def write_gguf(path: Path, arch: str) -> Path:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_family_adept_dist_cannot_use_is_refused_naming_it(tmp_path):
    path = write_gguf(tmp_path / "g.gguf", "gemma")
    with pytest.raises(GGUFError, match="holds a 'gemma' model; adept-dist converts GGUF models of the families llama"):
        resolve_source(str(path))
    assert check_file(write_gguf(tmp_path / "l.gguf", "llama")) == "llama"  # the same file with a known family passes


def test_damaged_and_missing_files(tmp_path):
    good = write_gguf(tmp_path / "g.gguf", "llama")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:40])  # inside the header
    with pytest.raises(GGUFError, match=r"cut.gguf is truncated or corrupt .*download it again"):
        check_file(cut)
    other = tmp_path / "model.gguf"
    other.write_bytes(b"PK\x03\x04" + b"\0" * 100)  # e.g. a zip saved under the wrong name
    with pytest.raises(GGUFError, match=r"is not a GGUF file \(it starts with b'PK\\x03\\x04'"):
        check_file(other)
    with pytest.raises(GGUFError, match="does not exist: give the path of a .gguf file"):
        resolve_source(str(tmp_path / "missing.gguf"))
    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(GGUFError, match="is a folder"):
        resolve_source(str(tmp_path / "dir.gguf"))


def test_missing_gguf_package_names_the_install(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "g.gguf", "llama")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(GGUFError, match=r"needs the gguf package: pip install gguf"):
        check_file(path)


def test_hash_is_remembered_per_path_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("ADEPT_DIST_HOME", str(tmp_path / "home"))
    path = write_gguf(tmp_path / "g.gguf", "llama")
    first = file_sha256(path)
    import hashlib

    assert first == hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == first and (tmp_path / "home" / "gguf" / "hashes.json").is_file()
    with path.open("ab") as f:  # another size: hashed again, never the stale value
        f.write(b"x")
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest() != first
    assert is_gguf("a/B.GGUF") and not is_gguf("a/model.safetensors")
