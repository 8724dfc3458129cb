"""A run's artifacts, the files a finished (or stopped) run leaves for its user, each written by the
main process through ``run.on_main`` (atomic, a full disk named, nothing written once another job
holds the folder): OUT/adapter (the selected or last adapter), best.json (the best validation so
far, and restoring both on --resume), results.json and results.md, traffic.json, and the finished
mark in config.json. Resume checkpoints are ``checkpoint.py``'s.
"""

from __future__ import annotations

from pathlib import Path

from adept_dist.common.errors import ConfigError, UserError
from adept_dist.common.fileio import now, write_json, write_text
from adept_dist.common.schema import BestFile, check, check_tensors, load_json
from adept_dist.config.options import CONFIG_FILE
from adept_dist.config.record import read_run_config
from adept_dist.data.examples import ENCODING
from adept_dist.distributed import traffic
from adept_dist.distributed.zero import full_fp32_state, full_numel
from adept_dist.export.adapter import WEIGHTS, adapter_config, read_adapter_config, read_tensors, save_adapter
from adept_dist.run.context import Run, log0, on_main


class ArtifactError(UserError, RuntimeError):
    """A run's own file (best.json, OUT/adapter) is damaged; the message names it and the fix."""


# ----------------------------------------------------------------------------- the adapter
def portable_model_name(name: str) -> str:
    """A local model folder as an absolute path (the adapter is used from other folders); a hub id
    and "builtin" as they are."""
    path = Path(name).expanduser()
    return str(path.resolve()) if name != "builtin" and path.exists() else name


def export_adapter(run: Run, out_dir: Path, state: dict | None = None, **more) -> None:
    """Write the adapter (the current weights, or `state`); collective when `state` is None."""
    adapter = run.model.adapter
    state = state if state is not None else full_fp32_state(adapter.named_parameters())

    def write() -> None:
        config = {**own_adapter_config(run), **more}
        config["parameter_count"] = sum(v.numel() for v in state.values())
        save_adapter(out_dir, state, config)

    on_main(run.d, write, f"the adapter (step {run.step})", out_dir.parent, "the adapter written before is intact")


def own_adapter_config(run: Run) -> dict:
    """The adapter config of the run at its current step: what OUT/adapter and a checkpoint's
    export get (every checkpoint keeps it in its adept_meta.json)."""
    adapter = run.model.adapter
    fields = run_fields(run.cfg.to_dict(), run.base_model, run.model.backbone.config.vocab_size, ENCODING, run.step)
    config = adapter_config(adapter, **fields)
    config["parameter_count"] = sum(full_numel(p) for p in adapter.parameters())  # ZeRO-3 local numel is 0
    return config


def run_id(out: Path) -> str | None:
    """The identity.id of the run folder's config.json (None: none readable)."""
    try:
        return read_run_config(out / CONFIG_FILE).get("identity", {}).get("id")
    except ConfigError:
        return None


def run_fields(record: dict, base_model: str, vocab_size: int, encoding: int, step: int) -> dict:
    """What an exported adapter says of its run (beside the adapter's own shape fields): `record`
    is the run's configuration by sections (Config.to_dict, or its config.json)."""
    return {
        "base_model": portable_model_name(base_model),
        "task": record["data"]["task"],
        "compute_dtype": record["model"]["compute_dtype"],
        "quant": record["model"]["quant"],
        "vocab_size": vocab_size,
        "separator": record["data"]["separator"],
        "max_length": record["data"]["max_length"],
        "encoding": encoding,  # how text became ids (data.ENCODING): predict.py encodes alike
        "step": step,
    }


# ----------------------------------------------------------------------------- model selection
def write_best(run: Run) -> None:
    """OUT/adapter and OUT/best.json of the best validation so far (run.best, run.best_state; collective)."""
    selected = {k: run.best[k] for k in ("metric", "value")}
    export_adapter(run, run.out / "adapter", run.best_state, selected=selected)
    on_main(
        run.d, lambda: write_json(run.out / "best.json", run.best), "best.json", run.out, "the earlier one is intact"
    )


def restore_best(run: Run) -> None:
    """The best validation result up to the resumed step, and its adapter (a best found after the
    checkpoint is ignored: the resumed run finds it again, identically). A damaged best.json or
    OUT/adapter is one line naming the file and field."""
    best_path, adapter_dir = run.out / "best.json", run.out / "adapter"
    if not best_path.is_file() or not (adapter_dir / WEIGHTS).is_file():
        return
    fix = (f"restore it from a backup, or delete {best_path.name} and adapter/ of {run.out}: the best adapter is then "
           f"selected anew among the validations after step {run.step}")  # fmt: skip
    best = load_json(best_path, fix, ArtifactError)
    check(best, BestFile, best_path, fix, ArtifactError)
    saved_step = read_adapter_config(adapter_dir).get("step")
    if best["step"] <= run.step and saved_step == best["step"]:
        shapes = {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in run.model.adapter.named_parameters()}
        check_tensors(adapter_dir / WEIGHTS, shapes, fix, ArtifactError, "this run's adapter")
        run.best, run.best_state = best, read_tensors(adapter_dir / WEIGHTS, fix)
        log0(run.d, f"best so far: step {best['step']}, validation {best['metric']} {best['value']:.4g}")


# ----------------------------------------------------------------------------- the run's end
def write_results(run: Run, test: dict | None) -> dict:
    """results.json and results.md: the selected step's validation scores and its test scores."""
    cfg, data = run.cfg, run.data

    def strip(res: dict, p: str) -> dict:
        extra = (f"{p}_metric", f"{p}_intervals", f"{p}_interval_method")
        return {k[len(p) + 1 :]: v for k, v in res.items() if k.startswith(p + "_") and k not in extra}

    scored = {
        "validation": (run.best["validation"], "eval") if run.best else None,
        "test": (test, "test") if test else None,
    }
    scored = {split: pair for split, pair in scored.items() if pair}

    results = {
        "task": data.name if data.name != "files" else cfg.data.train_file or "builtin",
        "method": cfg.adapter.method,
        "seed": cfg.optim.seed,
        "model": run.base_model,
        "k_shot": cfg.data.k_shot,
        "max_steps": cfg.optim.max_steps,
        "init_adapter": cfg.run.init_adapter,
        "trainable_parameters": sum(full_numel(p) for p in run.model.adapter.parameters()),
        "metrics": list(data.metrics),
        "selection": {"metric": data.metrics[0], "step": run.best["step"]} if run.best else None,
        "validation": strip(run.best["validation"], "eval") if run.best else None,
        "test": strip(test, "test") if test else None,
        "data": data.info,
        "n": {split: res[f"{p}_examples"] for split, (res, p) in scored.items()},
        # 95% intervals (data/stats.py): Wilson for 0/1 scores, a bootstrap over examples otherwise
        "intervals": {split: res.get(f"{p}_intervals", {}) for split, (res, p) in scored.items()},
        "interval_method": {
            m: how for res, p in scored.values() for m, how in res.get(f"{p}_interval_method", {}).items()
        },
    }

    def write() -> None:
        write_json(run.out / "results.json", results)
        head = ["task", "method", "seed", "best step"]
        row = [str(results["task"]), results["method"], str(results["seed"]), str(run.best and run.best["step"])]
        for split in ("validation", "test"):
            for m in data.metrics:
                if results[split] is not None:
                    head.append(f"{split} {m} [95%]")
                    low_high = results["intervals"].get(split, {}).get(m)
                    row.append(
                        f"{results[split][m]:.2f}" + (f" [{low_high[0]:.1f}, {low_high[1]:.1f}]" if low_high else "")
                    )
        table = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n| " + " | ".join(row) + " |\n"
        write_text(run.out / "results.md", table)

    on_main(run.d, write, "results.json and results.md", run.out, "earlier results are intact")
    return results


def write_traffic(run: Run, steps: int, adapter_bytes: int) -> dict:
    """OUT/traffic.json: every rank's bytes per optimizer step over the steps this start ran, by link
    and collective, with the layout that sent them (collective); its line on the console."""
    report = traffic.gather_report(traffic.COUNTER, steps, adapter_bytes, whole_run=True)
    lay = run.layout
    report = {"scope": lay.scope, "nodes": lay.n_nodes, "world": run.d.world, "shard_groups": [list(g) for g in lay.groups],
              **report, "first_step": run.step - steps + 1, "last_step": run.step}  # fmt: skip
    on_main(run.d, lambda: write_json(run.out / "traffic.json", report), "traffic.json", run.out,
            "the run's other files are intact")  # fmt: skip
    log0(run.d, traffic.describe(report))
    return report


def mark_finished(run: Run) -> None:
    """config.json says the run is done: a later --resume of it stops at once (build.check_not_finished)."""
    record = read_run_config(run.out / CONFIG_FILE)
    record["finished"] = {"step": run.step, "at": now()}
    write_json(run.out / CONFIG_FILE, record)
