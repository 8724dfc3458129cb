"""The command line of launch/train.py. Expected errors (bad options, data, model, checkpoint)
end the process with one line naming the problem and the fix, and exit code 2."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

EXIT_STOPPED = 3  # stopped by SIGUSR1/SIGTERM after saving a checkpoint: rerun with --resume


def _user_errors() -> tuple[type[Exception], ...]:
    from .backbone import ModelError
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError
    from .export import AdapterFileError
    from .trainer import TrainError

    return (ConfigError, DataError, ModelError, AdapterFileError, TrainError, CheckpointError)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings(
        "ignore", category=FutureWarning, module=r"torch\.distributed"
    )  # DeepSpeed's deprecated calls
    from .config import ConfigError, parse_config

    try:
        cfg, local_rank = parse_config(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from .dist import init_distributed
    from .trainer import build, setup_engine, train

    d = init_distributed(local_rank)

    def run_all() -> dict:
        run = build(cfg, d)
        setup_engine(run)
        result = train(run)
        stop_file = os.environ.get("ADEPT_STOP_FILE")
        if result.get("stopped") and stop_file and d.main:  # survives exit codes lost in a launcher's teardown
            Path(stop_file).write_text(f"{result['step']}\n")
        return result

    code, result = guarded(d.rank, run_all)
    if code:
        return code
    return EXIT_STOPPED if result.get("stopped") else 0


def guarded(rank: int, fn):
    """(0, fn()) or, for a user error, (2, None) after printing it as one line; the process group
    is torn down either way."""
    import torch.distributed as dist

    try:
        return 0, fn()
    except _user_errors() as exc:
        print(f"error (rank {rank}): {exc}", file=sys.stderr)
        return 2, None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
