"""Imports that would otherwise cost every process seconds at start for nothing it uses.

bitsandbytes and DeepSpeed's ZeRO optimizers (through its Muon module) decorate functions with
torch.compile when they are imported. torch.compile imports TorchDynamo's and Inductor's compiler
stack as it is called, not when a compiled function first runs: about 2.5 s for each of the two on
a 2-core CPU machine, in every rank of every run, for functions our runs never call (NF4 kernels
that the CUDA and CPU backends replace with their own; bitsandbytes' and Muon's optimisers).
Measured 2026-12-07 here: torch + deepspeed + transformers' llama + bitsandbytes imported in 13.5 s
against 11 s with bitsandbytes imported through `import_deferring_compile` (medians of 4 alternated
runs). Deferring changes when a function is compiled, not whether or how.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys

import torch


@contextlib.contextmanager
def deferred_compile():
    """Inside, torch.compile(fn, **kwargs) returns a function that calls the real torch.compile(fn,
    **kwargs) on its first call (running fn uncompiled if that raises, as bitsandbytes and DeepSpeed
    do when torch.compile fails at import) and the compiled function from then on."""
    real = torch.compile

    def deferred(model=None, **kwargs):
        if model is None:  # @torch.compile(...) with arguments
            return lambda fn: deferred(fn, **kwargs)
        compiled = None

        @functools.wraps(model)
        def call(*args, **kw):
            nonlocal compiled
            if compiled is None:
                try:
                    compiled = real(model, **kwargs)
                except Exception:
                    compiled = model
            return compiled(*args, **kw)

        return call

    torch.compile = deferred
    try:
        yield
    finally:
        torch.compile = real


def import_deferring_compile(name: str):
    """The module `name`, imported (if no one has yet) with its torch.compile calls deferred."""
    if name in sys.modules:
        return sys.modules[name]
    with deferred_compile():
        return importlib.import_module(name)
