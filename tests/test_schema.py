"""Every file the project reads back is checked field by field when read (schema.py): a wrong type,
a value out of range, an unknown choice, a damaged file, and tensors of the wrong dtype, count or
shape are one line naming the file and the field (exit code 2 in the commands), never a
traceback; files written before a field existed still load. Files are written by the project's own
writers, then damaged by hand."""

from __future__ import annotations

import json
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from adept_dist.commands.export import main as export_main
from adept_dist.common.errors import ConfigError
from adept_dist.common.schema import BestFile, LockFile, ResultsFile, SchemaError, read_json
from adept_dist.config.options import CONFIG_FILE
from adept_dist.config.record import read_run_config
from adept_dist.config.resolve import make_config
from adept_dist.distributed.comm import Dist
from adept_dist.export.adapter import CONFIG, WEIGHTS, AdapterFileError, adapter_config, load_adapter, save_adapter
from adept_dist.export.merge import MERGE_INFO, PROMPT_FILE, merge
from adept_dist.run.artifacts import ArtifactError, restore_best, run_fields
from adept_dist.run.checkpoint import CONSOLIDATED, META, CheckpointError, read_meta
from tests.conftest import DIST_ENV, run_cmd, write_jsonl
from tests.test_model import perturbed_adept


def one_error_line(err: str) -> str:
    """The command's stderr holds exactly one error line and no traceback; that line."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def adapter_dir(tmp_path, tiny_model_dir):
    """An ADePT adapter for the tiny LLaMA, written by save_adapter with every field a run writes."""
    from adept_dist.model.backbone import load_config

    adapter = perturbed_adept(64)
    cfg = adapter_config(adapter, base_model=str(tiny_model_dir), task=None, compute_dtype="fp32", quant="none",
                         vocab_size=load_config(str(tiny_model_dir)).vocab_size, separator=" Label : ",
                         max_length=64, encoding=2, step=3)  # fmt: skip
    return save_adapter(tmp_path / "adapter", dict(adapter.named_parameters()), cfg)


def rewrite(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


BAD_FIELDS = [  # (field, value, what the line says)
    ("separator", 123, "field separator: expected a string, got 123"),
    ("separator", None, "field separator: expected a string, got null"),
    ("max_length", "abc", 'field max_length: expected an integer, got "abc"'),
    ("max_length", 0, "field max_length: expected an integer >= 1, got 0"),
    ("encoding", 99, "field encoding: expected an integer <= 2, got 99"),
    ("task", "no_such_task", "field task: expected a task of this adept-dist (mnli, "),
    ("quant", "int4", "field quant: expected 'nf4' or 'none', got \"int4\""),
    ("dropout", 1.5, "field dropout: expected a number < 1.0, got 1.5"),
    ("m", True, "field m: expected an integer, got true"),
    ("method", "lora", "field method: expected one of adept, dept, pt"),
]


@pytest.mark.parametrize(("field", "value", "says"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS])
def test_a_bad_adapter_config_field_is_one_line_in_predict_and_export(predict, adapter_dir, tmp_path, field, value,
                                                                      says):  # fmt: skip
    """predict.py and export.py --merge (and --peft) refuse it before loading anything, naming the
    file and the field; export.py --merge used to write a merged model from such a config."""
    rewrite(adapter_dir / CONFIG, **{field: value})
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"input": "review : the soup was fantastic"}])
    code, err = predict("--adapter", str(adapter_dir), "--input", str(rows), "--output", str(tmp_path / "p.jsonl"))
    assert code == 2 and f"{adapter_dir / CONFIG}: {says}" in one_error_line(err)
    assert not (tmp_path / "p.jsonl").exists()
    for flags in (["--merge"], ["--merge", "--peft"]):
        code = export_main(["--adapter", str(adapter_dir), *flags, "--output", str(tmp_path / "merged")])
        assert code == 2 and not (tmp_path / "merged").exists()


def test_through_the_real_commands(adapter_dir, tmp_path):
    """launch/predict.py and launch/export.py as a user runs them: exit code 2 and one stderr line."""
    rewrite(adapter_dir / CONFIG, separator=123)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"input": "review : the soup was fantastic"}])
    proc = run_cmd([sys.executable, "launch/predict.py", "--adapter", str(adapter_dir), "--input", str(rows),
                    "--output", str(tmp_path / "p.jsonl")], timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "adapter_config.json: field separator: expected a string, got 123" in one_error_line(proc.stderr)
    rewrite(adapter_dir / CONFIG, separator=" Label : ", max_length="abc")
    proc = run_cmd([sys.executable, "launch/export.py", "--adapter", str(adapter_dir), "--merge", "--output",
                    str(tmp_path / "merged")], timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'adapter_config.json: field max_length: expected an integer, got "abc"' in one_error_line(proc.stderr)
    assert not (tmp_path / "merged").exists()


def tensors_of(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / WEIGHTS))


BAD_TENSORS = {  # name -> (how the file is changed, what the line says)
    "int64": (lambda t: {**t, "A": t["A"].long()}, "tensor A: expected dtype float32 (or bfloat16/float16), got int64"),
    "float64": (lambda t: {**t, "b": t["b"].double()}, "tensor b: expected dtype float32 (or bfloat16/float16), got float64"),
    "missing": (lambda t: {k: v for k, v in t.items() if k != "b"}, "tensor b: expected the tensors prompt, A, a, B, b"),
    "extra": (lambda t: {**t, "lora_A": torch.zeros(2)}, "tensor lora_A: expected only the tensors prompt, A, a, B, b"),
    "shape": (lambda t: {**t, "prompt": torch.zeros(5, 64)}, "tensor prompt: expected shape (4, 64) (the adept adapter of adapter_config.json: m=4, d=64"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_TENSORS)
def test_adapter_tensors_of_the_wrong_dtype_count_or_shape(predict, adapter_dir, tmp_path, case):
    change, says = BAD_TENSORS[case]
    save_file(change(tensors_of(adapter_dir)), str(adapter_dir / WEIGHTS))
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"input": "review : the soup was fantastic"}])
    code, err = predict("--adapter", str(adapter_dir), "--input", str(rows), "--output", str(tmp_path / "p.jsonl"))
    assert code == 2 and f"{adapter_dir / WEIGHTS}: {says}" in one_error_line(err)
    assert export_main(["--adapter", str(adapter_dir), "--merge", "--output", str(tmp_path / "m")]) == 2


def test_bf16_tensors_and_configs_of_earlier_releases_still_load(adapter_dir):
    """An adapter cast to bf16 loads (into fp32 parameters); a config without the fields later
    releases added (method_version, encoding, separator, max_length, task, ...) reads with their
    defaults, as predict.py applies them."""
    save_file({k: v.bfloat16() for k, v in tensors_of(adapter_dir).items()}, str(adapter_dir / WEIGHTS))
    adapter, _ = load_adapter(adapter_dir)
    assert adapter.prompt.dtype == torch.float32
    cfg = json.loads((adapter_dir / CONFIG).read_text())
    old = {k: cfg[k] for k in ("format", "format_version", "method", "m", "d", "r", "dropout")}
    (adapter_dir / CONFIG).write_text(json.dumps(old))
    assert load_adapter(adapter_dir)[1] == old


def test_a_damaged_merged_export_is_one_line(predict, adapter_dir, tmp_path, tiny_model_dir):
    merged = merge(str(adapter_dir), str(tmp_path / "merged"), log=lambda s: None)
    info = json.loads((merged / MERGE_INFO).read_text())
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"input": "review : the soup was fantastic"}])

    def fails(says: str) -> None:
        code, err = predict("--adapter", str(merged), "--input", str(rows), "--output", str(tmp_path / "p.jsonl"))
        assert code == 2 and says in one_error_line(err)

    rewrite(merged / MERGE_INFO, adapter={**info["adapter"], "separator": 123})
    fails(f'{merged / MERGE_INFO} (its "adapter"): field separator: expected a string, got 123')
    rewrite(merged / MERGE_INFO, adapter=info["adapter"], prompt_file="../elsewhere.safetensors")
    fails(f"{merged / MERGE_INFO}: field prompt_file: expected a string matching the pattern")
    rewrite(merged / MERGE_INFO, prompt_file=PROMPT_FILE, m="4")
    fails(f'{merged / MERGE_INFO}: field m: expected an integer, got "4"')
    rewrite(merged / MERGE_INFO, m=4)
    save_file({"prompt": torch.zeros(4, 64, dtype=torch.int64)}, str(merged / PROMPT_FILE))
    fails(f"{merged / PROMPT_FILE}: tensor prompt: expected dtype float32")


# ----------------------------------------------------------------------------- a run's files
def run_record(identity: str, **data) -> dict:
    """A run's config.json as build.run_record writes it (resolved options, identity, history)."""
    record = make_config({"max_steps": 4}).to_dict()
    record["data"].update(data)
    record["identity"] = {"id": identity, "created": "2026-12-06T10:00:00+0000", "host": "h", "encoding": 2}
    record["history"] = []
    return record


def hand_checkpoint(run_dir, identity: str, step: int = 2, model: str = "builtin"):
    """RUN/checkpoints/stepN as checkpoint.save writes it for an ADePT run at world size 2: the
    whole-state file (weights and Adam moments) and adept_meta.json with the checkpoint's identity."""
    adapter = perturbed_adept(16)
    params = {f"param.{k}": v.detach().clone() for k, v in adapter.named_parameters()}
    moments = {
        f"{m}.{k}": torch.zeros_like(v) for m in ("exp_avg", "exp_avg_sq") for k, v in adapter.named_parameters()
    }
    folder = run_dir / "checkpoints" / f"step{step:08d}"
    folder.mkdir(parents=True)
    save_file({**params, **moments}, str(folder / CONSOLIDATED))
    record = run_record(identity)
    own = adapter_config(adapter, **run_fields(record, model, 120, 2, step))
    own["parameter_count"] = sum(p.numel() for p in adapter.parameters())
    meta = {"step": step, "position": 8 * step, "world": 2, "global_batch": 4, "zero_stage": 3, "adapter": own,
            "run_id": identity, "adam_step": step, "scheduler": {"base_lrs": [0.3, 0.001], "last_epoch": step,
            "_step_count": step + 1, "_last_lr": [0.3, 0.001]}}  # fmt: skip
    (folder / META).write_text(json.dumps(meta))
    (run_dir / CONFIG_FILE).write_text(json.dumps(record))
    return folder, adapter, own


BAD_META = {  # name -> (the meta changed, what the line says)
    "step": (lambda m: {**m, "step": "two"}, 'field step: expected an integer, got "two"'),
    "world": (lambda m: {**m, "world": 0}, "field world: expected an integer >= 1, got 0"),
    "zero_stage": (lambda m: {**m, "zero_stage": 4}, "field zero_stage: expected an integer <= 3, got 4"),
    "scheduler": (lambda m: {**m, "scheduler": {"base_lrs": ["x"], "last_epoch": 2}},
                  'field scheduler.base_lrs[0]: expected a number, got "x"'),
    "adapter": (lambda m: {**m, "adapter": {**m["adapter"], "separator": 5}},
                'adept_meta.json (its "adapter"): field separator: expected a string, got 5'),
    "run_id": (lambda m: {**m, "run_id": 7}, "field run_id: expected a string, got 7"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_META)
def test_a_bad_checkpoint_meta_field_is_one_line(tmp_path, capsys, case):
    folder, _, _ = hand_checkpoint(tmp_path / "run", "run-a")
    change, says = BAD_META[case]
    (folder / META).write_text(json.dumps(change(json.loads((folder / META).read_text()))))
    with pytest.raises(CheckpointError, match="fix: resume or export another step") as err:
        read_meta(folder)
    assert says in str(err.value) and "\n" not in str(err.value)
    assert export_main(["--checkpoint", str(folder), "--output", str(tmp_path / "out")]) == 2
    assert says in one_error_line(capsys.readouterr().err) and not (tmp_path / "out").exists()


def test_meta_that_is_no_json_and_meta_of_earlier_releases(tmp_path):
    folder, _, _ = hand_checkpoint(tmp_path / "run", "run-a")
    meta = json.loads((folder / META).read_text())
    (folder / META).write_text('{"step": 2, "posi')  # a write cut short
    with pytest.raises(CheckpointError, match=r"adept_meta.json is not valid JSON \(.*\); fix: resume or export"):
        read_meta(folder)
    old = {k: meta[k] for k in ("step", "position", "world")}  # the first releases' meta
    (folder / META).write_text(json.dumps(old))
    assert read_meta(folder) == old


def test_a_checkpoint_exports_with_its_own_settings_wherever_it_sits(tmp_path, capsys):
    """In its own run folder: its own adapter config, no remark. Copied into another run's folder
    (another identity, another separator and max_length) or into no run folder: the same adapter
    and config as at home, and a line saying the checkpoint's own settings were used."""
    folder, adapter, own = hand_checkpoint(tmp_path / "run", "run-a")
    assert export_main(["--checkpoint", str(folder), "--output", str(tmp_path / "home")]) == 0
    assert "settings" not in capsys.readouterr().out
    home, _ = load_adapter(tmp_path / "home")
    assert json.loads((tmp_path / "home" / CONFIG).read_text()) == own
    torch.testing.assert_close(home.B, adapter.B.detach(), rtol=0, atol=0)

    other = tmp_path / "other"
    shutil.copytree(folder, other / "checkpoints" / folder.name)
    (other / CONFIG_FILE).write_text(json.dumps(run_record("run-b", separator=" => ", max_length=7)))
    assert export_main(["--checkpoint", str(other / "checkpoints" / folder.name), "--output", str(tmp_path / "o")]) == 0
    line = capsys.readouterr().out
    assert "was written by run run-a, not by the run of" in line and "(run-b)" in line
    assert "separator ' Label : ', max_length 256" in line
    assert json.loads((tmp_path / "o" / CONFIG).read_text()) == own  # not " => " and 7
    assert (tmp_path / "o" / WEIGHTS).read_bytes() == (tmp_path / "home" / WEIGHTS).read_bytes()

    loose = shutil.copytree(folder, tmp_path / "loose" / folder.name)
    assert export_main(["--checkpoint", str(loose), "--output", str(tmp_path / "l")]) == 0
    assert "sits in no run folder" in capsys.readouterr().out
    assert json.loads((tmp_path / "l" / CONFIG).read_text()) == own


BAD_STATE = {  # how trainable_state.safetensors is changed -> what the line says
    "int64": (lambda t: {**t, "param.A": t["param.A"].long()}, "tensor param.A: expected dtype float32"),
    "missing": (lambda t: {k: v for k, v in t.items() if k != "param.b"}, "tensor param.b: expected the tensors param.prompt"),
    "shape": (lambda t: {**t, "param.prompt": torch.zeros(6, 16)}, "tensor param.prompt: expected shape (4, 16) (the adept adapter of its adept_meta.json"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_STATE)
def test_checkpoint_tensors_of_the_wrong_dtype_count_or_shape(tmp_path, capsys, case):
    folder, _, _ = hand_checkpoint(tmp_path / "run", "run-a")
    change, says = BAD_STATE[case]
    save_file(change(load_file(str(folder / CONSOLIDATED))), str(folder / CONSOLIDATED))
    assert export_main(["--checkpoint", str(folder), "--output", str(tmp_path / "out")]) == 2
    assert f"{folder / CONSOLIDATED}: {says}" in one_error_line(capsys.readouterr().err)


BAD_RECORD = [  # (section, option, value, what the line says)
    ("data", "max_length", "abc", 'field data.max_length: expected an integer, got "abc"'),
    ("data", "max_length", 0, "field data.max_length: expected an integer >= 1, got 0"),
    ("data", "separator", 123, "field data.separator: expected a string, got 123"),
    ("adapter", "method", "lora", 'field adapter.method: expected one of adept, dept, pt, got "lora"'),
    ("model", "quant", "int4", 'field model.quant: expected one of nf4, none, int8, got "int4"'),
    ("optim", "lr_prompt", "0.3", 'field optim.lr_prompt: expected a finite number, got "0.3"'),
    ("identity", "encoding", "2", 'field identity.encoding: expected an integer, got "2"'),
]


@pytest.mark.parametrize(
    ("section", "name", "value", "says"), BAD_RECORD, ids=[f"{s}.{n}={v!r}" for s, n, v, _ in BAD_RECORD]
)
def test_a_bad_run_config_field_is_one_line(tmp_path, section, name, value, says):  # fmt: skip
    record = run_record("run-a")
    record[section][name] = value
    (tmp_path / CONFIG_FILE).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="fix: restore it from a backup") as err:
        read_run_config(tmp_path / CONFIG_FILE)
    assert f"{tmp_path / CONFIG_FILE}: {says}" in str(err.value)


def test_run_configs_of_earlier_releases_still_read(tmp_path):
    """No identity, history or finished record, an option this release does not know: read as they are."""
    record = make_config({}).to_dict()
    record["data"]["some_later_option"] = [1, 2]
    del record["data"]["packing"]  # runs before packing existed
    (tmp_path / CONFIG_FILE).write_text(json.dumps(record))
    assert read_run_config(tmp_path / CONFIG_FILE) == record


def test_resume_and_export_refuse_a_bad_run_config_in_one_line(tmp_path, monkeypatch, capsys):
    """train.py --resume reads config.json before anything else; export.py --checkpoint of a
    checkpoint without its own settings (an earlier release's) reads its run folder's."""
    from adept_dist.commands.train import main as train_main

    run = tmp_path / "run"
    folder, _, _ = hand_checkpoint(run, "run-a")
    record = json.loads((run / CONFIG_FILE).read_text())
    record["data"]["max_length"] = "abc"
    (run / CONFIG_FILE).write_text(json.dumps(record))
    for k in DIST_ENV:
        monkeypatch.delenv(k, raising=False)
    assert train_main(["--output_dir", str(run), "--resume"]) == 2
    says = f'{run / CONFIG_FILE}: field data.max_length: expected an integer, got "abc"'
    assert says in one_error_line(capsys.readouterr().err)
    meta = json.loads((folder / META).read_text())
    del meta["adapter"], meta["run_id"]
    (folder / META).write_text(json.dumps(meta))
    assert export_main(["--checkpoint", str(folder), "--output", str(tmp_path / "out")]) == 2
    assert says in one_error_line(capsys.readouterr().err)


def test_best_json_and_the_best_adapter_are_checked_on_resume(tmp_path, capsys):
    """restore_best (called by --resume) on OUT/best.json and OUT/adapter as keep_if_best writes
    them: restored when sound; a bad field of best.json, or adapter tensors that are not this run's,
    is one line. The Run is a stand-in holding what restore_best reads (folder, step, adapter)."""
    adapter = perturbed_adept(16)
    out = tmp_path / "run"
    cfg = adapter_config(adapter, step=2, selected={"metric": "accuracy", "value": 75.0})
    save_adapter(out / "adapter", dict(adapter.named_parameters()), cfg)
    best = {"step": 2, "metric": "accuracy", "value": 75.0, "validation": {"step": 2, "eval_accuracy": 75.0}}
    (out / "best.json").write_text(json.dumps(best))

    def stand_in():
        return SimpleNamespace(out=out, step=4, model=SimpleNamespace(adapter=adapter), best=None, best_state=None,
                               d=Dist(0, 1, 0, torch.device("cpu")))  # fmt: skip

    run = stand_in()
    restore_best(run)
    assert run.best == best and torch.equal(run.best_state["B"], adapter.B.detach())
    (out / "best.json").write_text(json.dumps({**best, "value": "high"}))
    with pytest.raises(ArtifactError, match=r'best.json: field value: expected a number, got "high"; fix: restore'):
        restore_best(stand_in())
    (out / "best.json").write_text(json.dumps(best))
    save_file({k: v.detach().long() for k, v in adapter.named_parameters()}, str(out / "adapter" / WEIGHTS))
    with pytest.raises(ArtifactError, match=r"adapter_model.safetensors: tensor \w+: expected dtype float32"):
        restore_best(stand_in())
    rewrite(out / "adapter" / CONFIG, step="2")
    with pytest.raises(AdapterFileError, match='field step: expected an integer, got "2"'):
        restore_best(stand_in())


def test_results_best_and_lock_schemas(tmp_path):
    """The schemas of results.json (read by launch/collect_results.py), best.json and lock.json
    accept what their writers write and name a bad field."""
    from adept_dist.common import lock

    results = {"task": "rte", "method": "adept", "seed": 42, "model": "m", "k_shot": None, "max_steps": 10,
               "init_adapter": None, "trainable_parameters": 100, "metrics": ["accuracy"],
               "selection": {"metric": "accuracy", "step": 10}, "validation": {"loss": 0.5, "examples": 10,
               "accuracy": 70.0}, "test": None, "data": {"train_rows": 10}}  # fmt: skip
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert read_json(path, ResultsFile, "rerun it").seed == 42
    for change, says in [({"seed": "42"}, 'field seed: expected an integer, got "42"'),
                         ({"method": "lora"}, "field method: expected 'adept', 'dept' or 'pt'"),
                         ({"metrics": []}, "field metrics: expected a list of at least 1 item(s), got []")]:  # fmt: skip
        path.write_text(json.dumps({**results, **change}))
        with pytest.raises(SchemaError, match="fix: rerun it") as err:
            read_json(path, ResultsFile, "rerun it")
        assert f"{path}: {says}" in str(err.value)
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"step": -1, "metric": "accuracy", "value": 1.0, "validation": {}}))
    with pytest.raises(SchemaError, match="field step: expected an integer >= 0, got -1"):
        read_json(best, BestFile, "x")
    held = tmp_path / "lock.json"
    held.write_text(json.dumps(lock.me()))
    assert read_json(held, LockFile, "x").pid > 0
    held.write_text(json.dumps({**lock.me(), "pid": "123"}))
    with pytest.raises(SchemaError, match='field pid: expected an integer, got "123"'):
        read_json(held, LockFile, "x")
    held.write_text("[]")
    with pytest.raises(SchemaError, match=r"field \(the whole file\): expected a JSON object, got \[\]"):
        read_json(held, LockFile, "x")
    held.write_text('{"pid": 1, "pid": 2}')
    with pytest.raises(SchemaError, match="is not valid JSON .*key 'pid' appears twice"):
        read_json(held, LockFile, "x")
