"""A GGUF file (llama.cpp's single-file format) as ``--model``: converted once into a cached
Hugging Face folder, which then takes the normal path (layerwise loader, NF4).

transformers reads GGUF with the ``gguf`` package, de-quantising every tensor to fp32. The model
it returns is marked quantized and cannot be saved, so the weights are moved into a plain model of
the same config and written as ``model.safetensors`` in bf16 (the dtype these models are trained
and shipped in: rounding a de-quantised 4-bit weight to bf16 changes it by at most 2^-9 of its
value, far below the 4-bit step), beside the tokenizer and config. The folder lives in
``$ADEPT_DIST_HOME/gguf/<first 16 hex digits of the file's sha256>-c<CONVERSION>``, so a renamed or moved copy of
the same file reuses it and a changed file gets its own. The hash of a (path, size, mtime) is
remembered, so a 40 GB file is read once, not at every start.

Converting needs about 4 bytes per parameter of memory (transformers de-quantises the whole
model to fp32 first) and 2 bytes per parameter of disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from adept_dist.common.errors import UserError, first_line
from adept_dist.common.fileio import atomic_write, home

MAGIC = b"GGUF"
# llama.cpp's architecture names that transformers reads into a family adept-dist supports
ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen2moe": "qwen2_moe", "qwen3": "qwen3",
                 "qwen3moe": "qwen3_moe"}  # fmt: skip
MARKER = "gguf_source.json"  # written last: a folder without it is not a finished conversion


class GGUFError(UserError, ValueError):
    """A GGUF file that cannot be used; the message names the file and the fix."""


def is_gguf(name: str) -> bool:
    return str(name).lower().endswith(".gguf")


def cache_root() -> Path:
    return home() / "gguf"


CONVERSION = 1  # bump when convert() writes something else: older folders are then not reused
_hashes: dict[str, str] = {}  # this process's, in case hashes.json cannot be written


def file_sha256(path: Path) -> str:
    """The file's sha256, remembered per (path, size, mtime) in the cache's hashes.json."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key in _hashes:
        return _hashes[key]
    index_path = cache_root() / "hashes.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if isinstance(index, dict) and isinstance(index.get(key), str):
        return index[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    digest = _hashes[key] = h.hexdigest()
    index = index if isinstance(index, dict) else {}
    index[key] = digest
    try:
        index_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(index_path, lambda tmp: tmp.write_text(json.dumps(index, indent=1)))
    except OSError:
        pass  # only a shortcut: the next start hashes again
    return digest


def read_architecture(path: Path) -> str:
    """general.architecture from the file's header (the gguf package maps the file, reads no weights)."""
    try:
        import gguf
    except ImportError:
        raise GGUFError(
            f"--model {path} is a GGUF file, which needs the gguf package: pip install gguf "
            f'(or pip install "adept-dist[gguf]")'
        ) from None
    try:
        reader = gguf.GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except KeyError:
        raise GGUFError(
            f"GGUF file {path} has no general.architecture field: it is damaged; download it again"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any parse failure of a damaged file: one line naming it
        raise GGUFError(
            f"GGUF file {path} is truncated or corrupt ({first_line(exc, 200)}): download it again"
        ) from None


def check_magic(path: Path) -> None:
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise GGUFError(f"--model {path} {what}: give the path of a .gguf file")
    with path.open("rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise GGUFError(
            f"--model {path} is not a GGUF file (it starts with {head!r}, not {MAGIC!r}): download it again"
        )


def check_file(path: Path) -> str:
    """Refuse what cannot be converted before anything heavy happens; the architecture otherwise."""
    check_magic(path)
    arch = read_architecture(path)
    if arch not in ARCHITECTURES:
        raise GGUFError(
            f"GGUF file {path} holds a {arch!r} model; adept-dist converts GGUF models of the families "
            f"{', '.join(sorted(ARCHITECTURES))} (LLaMA-family decoders transformers reads from GGUF): give the "
            f"model's Hugging Face folder instead"
        )
    return arch


def converted_folder(name: str, log=None) -> Path:
    """The cached Hugging Face folder of a GGUF file, converted now if it is not there yet. Safe
    for several processes at once: each converts into its own temporary folder and the first
    rename wins."""
    log = log or (lambda msg: print(f"[adept-dist] {msg}", flush=True))
    path = Path(name).expanduser()
    check_magic(path)
    folder = cache_root() / f"{file_sha256(path)[:16]}-c{CONVERSION}"
    if (folder / MARKER).is_file():
        return folder
    check_file(path)
    log(f"converting {path} to a Hugging Face folder in {folder} (once; the file is de-quantised)")
    t0 = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a shared cache is read by other users
    try:
        convert(path, tmp)
        (tmp / MARKER).write_text(json.dumps({"file": str(path.resolve()), "size": path.stat().st_size,
                                              "sha256": file_sha256(path)}, indent=1) + "\n")  # fmt: skip
        try:
            os.rename(tmp, folder)  # the marker is inside: a folder appears complete or not at all
        except OSError:
            if not (folder / MARKER).is_file():  # not another process's finished copy
                raise GGUFError(
                    f"{folder} exists but holds no finished conversion ({MARKER} is missing): delete it and start again"
                ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"converted in {time.perf_counter() - t0:.0f} s")
    return folder


def convert(path: Path, dest: Path) -> None:
    """Write config, bf16 weights and tokenizer of a GGUF model into `dest`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, file = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=file)
        loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=file, dtype=torch.float32)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise GGUFError(f"transformers cannot read GGUF file {path}: {first_line(exc, 300)}") from None
    config = loaded.config
    for attr in ("quantization_config", "_name_or_path"):  # the plain model must not claim to be quantized
        if hasattr(config, attr):
            delattr(config, attr)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    del loaded
    plain.to(torch.bfloat16)
    plain.config.dtype = torch.bfloat16
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.save_pretrained(dest, is_main_process=True)  # any rank may convert (node-local caches)
    tokenizer.save_pretrained(dest)
    missing = [n for n in ("config.json", "tokenizer.json") if not (dest / n).is_file()]
    if missing or not any(dest.glob("model*.safetensors")):
        raise RuntimeError(f"converting {path}: {dest} lacks {missing or 'model.safetensors'} after saving")
