"""run.on_main and run.any_rank, the one way ranks agree (2 real gloo processes, no DeepSpeed):
the main process's result reaches every rank, and its error is raised on every rank, with its exit
code, so no rank waits for a main process that has given up."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from adept_dist.common.errors import ConfigError, UserError
from adept_dist.distributed.comm import Dist
from adept_dist.run.context import any_rank, on_main
from tests.conftest import run_gloo


def outcome(fn) -> tuple:
    try:
        return ("ok", fn())
    except UserError as exc:
        return (type(exc).__name__, str(exc), exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the test reports what each rank raised
        return (type(exc).__name__, str(exc))


def _ranks(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    d = Dist(rank, world, rank, torch.device("cpu"))
    runs_here = []

    def value():
        runs_here.append(rank)
        return {"loss": 0.5, "steps": [1, 2], "nan": float("nan") if rank == 0 else 0.0}

    def refused():
        raise ConfigError("--max_length 0: give a positive length")

    def bug():
        raise KeyError("oops")

    got = {
        "value": outcome(lambda: on_main(d, value, returns=True)),
        "unasked": outcome(lambda: on_main(d, lambda: object())),  # no result asked for: None everywhere
        "tensors": outcome(lambda: on_main(d, lambda: ({"ids": torch.arange(4) * (rank + 1)}, "meta"), tensors=True)),
        "refused": outcome(lambda: on_main(d, refused)),
        "bug": outcome(lambda: on_main(d, bug)),
        "no_json": outcome(lambda: on_main(d, lambda: object(), returns=True)),
        "any_rank": [any_rank(rank == 1), any_rank(False)],
        "ran_on": runs_here,
    }
    got["tensors"] = (got["tensors"][0], got["tensors"][1][0]["ids"].tolist(), got["tensors"][1][1])
    queue.put((rank, got))
    dist.destroy_process_group()


def test_the_main_result_or_error_reaches_every_rank():
    got = run_gloo(_ranks, 2)
    main, other = got[0], got[1]
    assert main["ran_on"] == [0] and other["ran_on"] == []  # fn runs on the main process only
    assert other["value"][1]["loss"] == 0.5 and other["value"][1]["steps"] == [1, 2]
    assert str(other["value"][1]["nan"]) == "nan"  # a JSON value, NaN included
    assert main["tensors"] == other["tensors"] == ("ok", [0, 1, 2, 3], "meta")  # rank 0's tensors
    assert main["refused"] == ("ConfigError", "--max_length 0: give a positive length", 2)
    assert other["refused"] == ("RankZeroError", "--max_length 0: give a positive length (reported by rank 0)", 2)
    assert main["bug"] == ("KeyError", "'oops'")  # the bug keeps its own type (and traceback) on rank 0
    assert other["bug"] == ("RankZeroError", "the main process failed: 'oops' (reported by rank 0)", 1)
    assert main["no_json"][0] == "TypeError" and other["no_json"][0] == "RankZeroError"
    assert main["unasked"] == other["unasked"] == ("ok", None)
    assert main["any_rank"] == other["any_rank"] == [True, False]
