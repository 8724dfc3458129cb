"""The ``adept-train`` command (``launch/train.py``): parse, init distributed, build, train, close.
Expected errors (bad options, data, model, checkpoint) end the process with one line naming the
problem and the fix, and exit code 2 (see errors.py)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import NoReturn

from adept_dist.common.errors import EXIT_OK, EXIT_STOPPED, EXIT_USER_ERROR, exit_process, guarded

ONE_CPU_RANK = (
    "one rank on this CPU machine; two ranks (ZeRO-3 sharding across processes, gloo) with "
    "`deepspeed --num_gpus 2 launch/train.py ...`"
)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings(
        "ignore", category=FutureWarning, module=r"torch\.distributed"
    )  # DeepSpeed's deprecated calls
    from adept_dist.common.errors import ConfigError
    from adept_dist.config.resolve import parse_config

    try:
        cfg, local_rank = parse_config(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR

    from adept_dist.common.lock import release_held
    from adept_dist.common.watchdog import watch_launchers
    from adept_dist.distributed.comm import init_distributed
    from adept_dist.run.build import build
    from adept_dist.run.context import log0
    from adept_dist.run.loop import train

    watch_launchers()  # a rank never outlives the launcher that started it

    d = init_distributed(local_rank)
    if d.world == 1 and d.device.type == "cpu":
        log0(d, ONE_CPU_RANK)

    def run_all() -> dict:
        try:
            result = train(build(cfg, d))
        finally:
            release_held()
        stop_file = os.environ.get("ADEPT_STOP_FILE")
        if result.get("stopped") and stop_file and d.main:  # survives exit codes lost in a launcher's teardown
            Path(stop_file).write_text(f"{result['step']}\n")
        return result

    code, result = guarded(d.rank, run_all)
    if code or result is None:
        return code
    return EXIT_STOPPED if result.get("stopped") else EXIT_OK


def command() -> NoReturn:
    """adept-train and launch/train.py: `main` in a process that ends without finalisation
    (errors.exit_process)."""
    exit_process(main())
