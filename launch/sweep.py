"""Run the paper's comparison: tasks x methods x seeds, one run folder each, through the same
training path, then collect the table.

    # on a SLURM cluster: one job per run (launch/slurm/train.sbatch, requeued on preemption)
    python launch/sweep.py --config run.yaml --tasks rte,cb,mrpc --methods adept,dept,pt --seeds 42,43,44 \\
        --runs_dir runs/sweep --slurm "--nodes=1 --ntasks-per-node=8 --gpus-per-node=8"
    # on one machine: the runs one after another under the deepspeed launcher
    python launch/sweep.py --config run.yaml --tasks rte --methods adept,pt --seeds 42 --local --num_gpus 8
    # (a second local sweep beside it needs its own --master_port)
    # then
    python launch/collect_results.py runs/sweep

--dry_run prints the commands instead. Flags after "--" go to every run (e.g. -- --max_steps 3000).
A run whose folder already holds results.json is skipped, so the sweep can be re-submitted.
Tasks are the paper's, BIG-bench's (bigbench:NAME; its folder is named bigbench-NAME) or data files of
your own (files:DIR, for DIR/train.jsonl, DIR/dev.jsonl and DIR/test.jsonl, as launch/fetch_data.py
writes them; its folder is named after DIR, and collect_results.py names the task so). The method
"untrained" is the zero-training baseline: ADePT's initial prompt evaluated with --max_steps 0
(its offset starts at zero), run for the first seed only (nothing in it depends on the seed).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from adept_dist.data.tasks import TASKS, get_task
from adept_dist.model.adapters import METHODS

UNTRAINED = "untrained"  # the zero-training baseline

REPO = Path(__file__).resolve().parent.parent


def parse_list(text: str, known=None, what: str = "") -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if known is not None:
        bad = [x for x in items if x not in known]
        if bad:
            raise SystemExit(f"error: unknown {what} {', '.join(bad)}; known: {', '.join(known)}")
    return items


FILES = "files:"  # a task of one's own data files: files:DIR
SPLIT_FILES = (("--train_file", "train"), ("--eval_file", "dev"), ("--test_file", "test"))


def task_flags(task: str) -> list[str]:
    """The flags that name a task: --task NAME, or the three data files of files:DIR."""
    if not task.startswith(FILES):
        return ["--task", task]
    folder = Path(task.removeprefix(FILES)).resolve()  # the runs may start in another folder (--local: the checkout)
    return [x for flag, split in SPLIT_FILES for x in (flag, str(folder / f"{split}.jsonl"))]


def task_folder(task: str) -> str:
    if task.startswith(FILES):
        return Path(task.removeprefix(FILES)).name
    return task.replace(":", "-").replace("/", "-")


def known_task(name: str) -> bool:
    if name.startswith(FILES):
        folder = Path(name.removeprefix(FILES))
        return all((folder / f"{split}.jsonl").is_file() for _, split in SPLIT_FILES)
    try:
        get_task(name)
        return True
    except ValueError:
        return False


def commands(args, extra: list[str]) -> list[tuple[Path, list[str]]]:
    runs = []
    tasks = parse_list(args.tasks)
    if bad := [t for t in tasks if not known_task(t)]:
        raise SystemExit(
            f"error: unknown task(s) {', '.join(bad)}; known: {', '.join(TASKS)}, bigbench:NAME, "
            "files:DIR (a folder holding train.jsonl, dev.jsonl and test.jsonl)"
        )
    folders = [task_folder(t) for t in tasks]
    if twice := sorted({f for f in folders if folders.count(f) > 1}):
        raise SystemExit(f"error: two tasks would share the run folders {', '.join(twice)}-*: give data folders "
                         "different names")  # fmt: skip
    for task in tasks:
        for method in parse_list(args.methods, (*METHODS, UNTRAINED), "method(s)"):
            for seed in parse_list(args.seeds)[: 1 if method == UNTRAINED else None]:
                out = Path(args.runs_dir) / f"{task_folder(task)}-{method}-s{seed}"
                how = ["--method", "adept", "--max_steps", "0"] if method == UNTRAINED else ["--method", method]
                flags = [*task_flags(task), "--seed", seed, "--output_dir", str(out), *extra, *how]  # how wins
                if args.local:
                    cmd = ["deepspeed", "--num_gpus", str(args.num_gpus)]
                    if getattr(args, "master_port", None):  # two sweeps side by side need two ports
                        cmd += ["--master_port", str(args.master_port)]
                    cmd += ["launch/train.py"]
                    cmd += (["--config", args.config] if args.config else []) + flags
                    cmd += ["--resume"]
                else:
                    if not args.config:
                        raise SystemExit("error: --config is required with SLURM (launch/slurm/train.sbatch takes it)")
                    # submitted from here, so the config and the run folders mean the same to the job
                    # as to this script; each job's log beside the runs (%x: the job name)
                    cmd = ["sbatch", f"--job-name=adept-{out.name}"]
                    cmd += [f"--output={Path(args.runs_dir) / '%x-%j.out'}", *shlex.split(args.slurm)]
                    cmd += [str(REPO / "launch" / "slurm" / "train.sbatch"), args.config, *flags]
                runs.append((out, cmd))
    return runs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="run options (model, ds_config, ...) shared by every run")
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--methods", default="adept,dept,pt")
    p.add_argument("--seeds", default="42")
    p.add_argument("--runs_dir", default="runs/sweep")
    p.add_argument("--local", action="store_true", help="run here, one after another, instead of sbatch")
    p.add_argument("--num_gpus", type=int, default=1, help="with --local: ranks of each run")
    p.add_argument("--master_port", type=int, help="with --local: the launcher's port (default 29500)")
    p.add_argument("--slurm", default="", help="extra sbatch options, e.g. '--nodes=2 --gpus-per-node=8'")
    p.add_argument("--dry_run", action="store_true", help="print the commands only")
    args = p.parse_args(argv)
    failed = 0
    for out, cmd in commands(args, extra):
        if (out / "results.json").is_file():
            print(f"# {out}: done, skipped")
            continue
        print(shlex.join(cmd), flush=True)
        if not args.dry_run:
            if not args.local:
                Path(args.runs_dir).mkdir(parents=True, exist_ok=True)  # SLURM does not create the log's folder
            rc = subprocess.run(cmd, cwd=REPO if args.local else None).returncode
            if rc != 0:
                print(f"# {out}: exit code {rc}", file=sys.stderr)
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
