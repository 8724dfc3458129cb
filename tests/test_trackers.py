"""--report_to: TensorBoard and W&B (offline) get what metrics.jsonl gets; metrics.jsonl stays the record."""

from __future__ import annotations

import json
import sys

import pytest

from adept_dist.common.errors import ConfigError
from adept_dist.common.trackers import TrackerError, flat_scalars, parse_report_to, start
from adept_dist.config.resolve import make_config
from tests.conftest import run_cmd, write_jsonl


def test_report_to_values_and_record_names():
    assert parse_report_to("none") == () and parse_report_to("") == ()
    assert parse_report_to("wandb, tensorboard,wandb") == ("wandb", "tensorboard")
    with pytest.raises(ConfigError, match="--report_to 'mlflow': give none, or a comma list of tensorboard, wandb"):
        make_config({"report_to": "mlflow"})
    with pytest.raises(ConfigError, match="give none, or"):
        make_config({"report_to": "none,wandb"})
    train = {"step": 3, "loss": 1.5, "lr": 0.1, "skipped": True}
    assert flat_scalars(train) == (3, {"train/loss": 1.5, "train/lr": 0.1})
    step, scalars = flat_scalars({"step": 4, "split": "validation", "eval_loss": 0.5, "eval_accuracy": 75.0,
                                  "eval_metric": "accuracy"})  # fmt: skip
    assert step == 4 and scalars == {"validation/loss": 0.5, "validation/accuracy": 75.0}
    assert flat_scalars({"step": 4, "split": "test", "test_loss": 0.7, "test_f1": 50.0}) == (
        4, {"test/loss": 0.7, "test/f1": 50.0})  # fmt: skip


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_a_missing_tracker_package_is_one_line_naming_the_install(tmp_path, monkeypatch, name):
    """Caught with the options, before any model is loaded; and at the start, should the import fail there."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == name else find_spec(n, *a))
    with pytest.raises(ConfigError, match=rf"needs the {name} package: pip install {name} \(or pip install -e "):
        make_config({"report_to": f"{name}"})
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard" if name == "tensorboard" else "wandb", None)
    with pytest.raises(TrackerError, match=rf"needs the {name} package: pip install {name} \(or pip install -e "):
        start((name,), tmp_path, {"run": {}}, 0, "x")


def test_a_tracker_that_fails_stops_reporting_and_the_run_goes_on(tmp_path, capsys):
    from adept_dist.distributed.comm import Dist
    from adept_dist.run.context import MetricsLog

    class Broken:
        def log(self, record):
            raise OSError("disk quota exceeded")

        def close(self):
            raise RuntimeError("cannot close")

    class Kept:
        logged: list = []

        def log(self, record):
            self.logged.append(record)

        def close(self):
            self.logged.append("closed")

    log = MetricsLog(
        tmp_path / "metrics.jsonl", Dist(rank=0, world=1, local_rank=0, device=__import__("torch").device("cpu"))
    )
    broken, kept = Broken(), Kept()
    log.trackers = [broken, kept]
    log.write({"step": 1, "loss": 2.0})
    log.write({"step": 2, "loss": 1.0})
    assert log.trackers == [kept] and kept.logged == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2  # the record is whole
    assert "Broken stopped reporting (disk quota exceeded); metrics.jsonl goes on" in capsys.readouterr().out
    log.trackers = [Broken(), kept]
    log.close()  # one that fails to close does not keep the others from closing
    assert kept.logged[-1] == "closed" and log.trackers == []


@pytest.mark.slow
def test_a_run_reports_to_tensorboard_and_wandb_offline(tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = [{"input": f"review : w{i} was {'great' if i % 2 else 'bad'}", "target": "positive" if i % 2 else "negative"}
            for i in range(12)]  # fmt: skip
    train, dev = write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "dev.jsonl", rows[:4])
    out = tmp_path / "run"
    proc = run_cmd([sys.executable, "launch/train.py", "--ds_config", "ds_configs/zero2.json", "--model",
                    str(tiny_model_dir), "--train_file", str(train), "--eval_file", str(dev), "--test_file", str(dev),
                    "--output_dir", str(out),
                    "--max_steps", "4", "--warmup_steps", "0", "--log_every", "1", "--micro_batch_size", "4",
                    "--report_to", "tensorboard,wandb"])  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if "split" not in r]
    val = [r for r in records if r.get("split") == "validation"]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4] and len(val) == 1

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in train_recs], rel=1e-6)  # stored as float32
    assert [e.value for e in events.Scalars("validation/accuracy")] == [pytest.approx(val[0]["eval_accuracy"])]
    test = next(r for r in records if r.get("split") == "test")
    assert [(e.step, e.value) for e in events.Scalars("test/loss")] == [
        (test["step"], pytest.approx(test["test_loss"]))
    ]
    assert "config/text_summary" in events.Tags()["tensors"]  # the resolved config, as text

    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir())
    identity = json.loads((out / "config.json").read_text())["identity"]["id"]
    records = wandb_records(runs[0] / f"run-{identity}.wandb")  # the run's own id: a resume continues it
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]  # fmt: skip
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert losses == pytest.approx([r["loss"] for r in train_recs], rel=1e-12)
    assert [h["step"] for h in history if "train/loss" in h] == [1, 2, 3, 4]
    assert [h["validation/accuracy"] for h in history if "validation/accuracy" in h] == [val[0]["eval_accuracy"]]
    config = [r.run.config for r in records if r.WhichOneof("record_type") == "run"]
    items = {i.key or "/".join(i.nested_key): i.value_json for c in config for i in c.update}
    assert json.loads(items["run"])["report_to"] == "tensorboard,wandb"  # the resolved config, by sections
    assert any(r.WhichOneof("record_type") == "exit" for r in records)  # finished


def wandb_records(path):
    """The records of a W&B run file, read with W&B's own protobuf class. The file is a 7-byte header
    (":W&B", magic, version) and then LevelDB's log format: 32 KiB blocks of chunks, each a 4-byte
    checksum, a 2-byte little-endian length, a type (1 whole, 2 first, 3 middle, 4 last) and data."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, out, pos, part = path.read_bytes(), [], 7, b""
    assert data[:4] == b":W&B", data[:7]
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            continue
        part = chunk if kind in (1, 2) else part + chunk
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(part)
            out.append(record)
    return out
