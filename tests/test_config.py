"""Options: defaults, config files, types, the DeepSpeed JSON's 'auto' values."""

from __future__ import annotations

import copy
import json

import pytest

from adept_dist.common.errors import ConfigError
from adept_dist.config.options import Config
from adept_dist.config.resolve import check_given, check_resolved, make_config, parse_config, resolve_config
from adept_dist.distributed.dsconfig import resolve_ds_config
from tests.conftest import REPO


def test_defaults_and_derived_values():
    cfg, local_rank = parse_config([])
    assert local_rank is None
    assert cfg.adapter.method == "adept" and cfg.adapter.prompt_length == 60
    assert cfg.optim.max_steps == 300 and cfg.optim.warmup_steps == 30  # built-in task: 300 steps, 10% warmup
    user, _ = parse_config(["--model", "x", "--train_file", "t.jsonl", "--method", "pt", "--local_rank=1"])
    assert user.adapter.prompt_length == 100 and user.optim.max_steps == 30000 and user.optim.warmup_steps == 500


def test_the_configuration_is_resolved_in_one_pure_pass_and_checks_change_nothing():
    """resolve_config returns a new Config and leaves the parsed one as it was; the checks only read;
    Config.replaced copies. (Before the house issue check_config filled defaults in place and the
    build rewrote the config twice.)"""
    raw = Config()
    raw.data.task = "rte"
    before = copy.deepcopy(raw)
    resolved = resolve_config(raw)
    assert raw == before and resolved is not raw and resolved.data is not raw.data
    assert (raw.adapter.prompt_length, raw.optim.max_steps, raw.optim.lr_ffn, raw.data.pack_tokens) == (None,) * 4
    assert (resolved.adapter.prompt_length, resolved.optim.lr_ffn, resolved.data.pack_tokens) == (60, 1e-4, 4096)
    assert resolved.optim.max_steps > 1000 and resolved.run.eval_every == 1000  # a paper task: the reference's
    assert resolve_config(resolved) == resolved  # resolving twice changes nothing
    cfg = make_config({"method": "pt", "max_length": 5000})
    kept = copy.deepcopy(cfg)
    check_given(cfg)
    check_resolved(cfg)
    assert cfg == kept
    other = cfg.replaced(loader="layerwise", shard_scope="node", compute_dtype="fp32")
    assert cfg == kept and (other.model.loader, other.run.shard_scope, other.model.compute_dtype) == (
        "layerwise", "node", "fp32")  # fmt: skip
    assert other.adapter is cfg.adapter  # untouched sections are shared, never copied into a second truth


def test_packing_is_on_wherever_it_is_exact():
    assert make_config({}).data.packing and make_config({"method": "pt"}).data.packing
    assert make_config({}).data.pack_tokens == 4096
    assert make_config({"max_length": 8000}).data.pack_tokens == 8060  # one longest example and the prompt
    assert not make_config({"method": "dept"}).data.packing  # position-wise offsets keep the fixed length
    assert not make_config({"attn_implementation": "flash_attention_2"}).data.packing  # takes no 4D mask
    assert not make_config({"packing": False}).data.packing


def test_config_file_then_flags(tmp_path):
    f = tmp_path / "run.json"
    f.write_text(json.dumps({"optim": {"lr_prompt": 0.4, "max_steps": 50}, "micro_batch_size": 4}))
    cfg, _ = parse_config(["--config", str(f), "--max_steps", "20"])
    assert cfg.optim.lr_prompt == 0.4 and cfg.data.micro_batch_size == 4 and cfg.optim.max_steps == 20
    y = tmp_path / "run.yaml"
    y.write_text("method: dept\nmax_length: 64\n")
    cfg, _ = parse_config(["--config", str(y)])
    assert cfg.adapter.method == "dept" and cfg.data.max_length == 64


@pytest.mark.parametrize(
    "values,match",
    [
        ({"learning_rate": 1.0}, "unknown option 'learning_rate'"),
        ({"max_steps": "ten"}, "max_steps must be a int"),
        ({"activation_checkpointing": 1}, "must be a bool"),
        ({"method": "lora"}, "method='lora' is not one of"),
        ({"quant": "int8"}, "int8 is not supported"),
        ({"micro_batch_size": 0}, "micro_batch_size must be >= 1"),
        ({"train_file": "x.jsonl"}, "--train_file needs --model"),
        ({"max_steps": 10, "warmup_steps": 10}, "warmup_steps=10 must be in"),
        ({"method": "dept", "packing": True}, "--packing does not apply to dept"),
        ({"attn_implementation": "flash_attention_2", "packing": True}, "--packing needs --attn_implementation"),
        ({"max_length": 100, "pack_tokens": 159}, r"--pack_tokens 159 cannot hold .* = 160"),
    ],
)
def test_bad_options(values, match):
    with pytest.raises(ConfigError, match=match):
        make_config(values)


def test_cli_rejects_unknown_flags_and_wrong_types(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--learning_rate", "1"])
    with pytest.raises(SystemExit):
        parse_config(["--max_steps", "ten"])
    assert "invalid int value" in capsys.readouterr().err


def test_bad_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        parse_config(["--config", str(tmp_path / "none.json")])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid json"):
        parse_config(["--config", str(bad)])
    bad.write_text(json.dumps({"optim": {"micro_batch_size": 3}}))
    with pytest.raises(ConfigError, match="unknown option optim.micro_batch_size"):
        parse_config(["--config", str(bad)])


@pytest.mark.parametrize("name", ["zero3.json", "zero3_offload.json", "zero2.json"])
def test_ds_configs_autos_filled_in_one_place(name):
    cfg = make_config({"micro_batch_size": 4, "grad_accum": 3, "grad_clip": 0.5, "compute_dtype": "bf16"})
    raw = json.loads((REPO / "ds_configs" / name).read_text())
    ds = resolve_ds_config(str(REPO / "ds_configs" / name), cfg.ds_settings(2))
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 24 and ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is True
    assert ds["zero_optimization"]["stage"] == raw["zero_optimization"]["stage"]
    assert "auto" not in json.dumps(ds)


def test_ds_config_conflicts_are_errors(tmp_path):
    cfg = make_config({"micro_batch_size": 4, "compute_dtype": "fp32"})
    path = tmp_path / "ds.json"
    for body, match in [
        ({"train_micro_batch_size_per_gpu": 8}, "train_micro_batch_size_per_gpu=8 but the run asks for 4"),
        ({"scheduler": {"type": "WarmupLR"}}, "scheduler block"),
        ({"optimizer": {"type": "SGD"}}, "trains with AdamW"),
        ({"optimizer": {"type": "AdamW", "params": {"lr": 0.1}}}, "optimizer.params.lr=0.1"),
        ({"fp16": {"enabled": True}}, "enables fp16"),
        ({"zero_optimization": {"stage": 3, "zero_quantized_weights": True}}, "re-quantize packed NF4"),
    ]:
        path.write_text(json.dumps(body))
        with pytest.raises(ConfigError, match=match):
            resolve_ds_config(str(path), cfg.ds_settings(1))
    path.write_text(json.dumps({"optimizer": {"type": "AdamW", "params": {"lr": "auto", "eps": 1e-6}}}))
    assert "optimizer" not in resolve_ds_config(str(path), cfg.ds_settings(1))  # ours is built from the run config
    with pytest.raises(ConfigError, match="not found"):
        resolve_ds_config(str(tmp_path / "missing.json"), cfg.ds_settings(1))
    path.write_text('{"bf16": {"enabled": true}, // comment\n}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve_ds_config(str(path), cfg.ds_settings(1))


def test_help_says_each_default_once(capsys):
    """A field whose doc explains its default shows no second "(default: ...)"; plain ones show theirs."""
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text
    assert "default 60 (adept, dept) or 100 (pt)" in text and "100 (pt) (default" not in text
    assert "learning rate of the soft prompt (default: 0.3)" in text


def test_duplicate_keys_in_json_files_are_errors(tmp_path):
    """json keeps the last of two equal keys silently; a config or DeepSpeed file that gives one
    twice is refused, naming the key."""
    path = tmp_path / "run.json"
    path.write_text('{"lr_prompt": 0.3, "lr_prompt": 0.03}')
    with pytest.raises(ConfigError, match="key 'lr_prompt' appears twice"):
        parse_config(["--config", str(path)])
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 3, "stage": 2}}')
    with pytest.raises(ConfigError, match="key 'stage' appears twice"):
        resolve_ds_config(str(ds), make_config({"compute_dtype": "fp32"}).ds_settings(1))


def test_duplicate_options_in_yaml_files_are_errors(tmp_path):
    """YAML, too, keeps the last of two equal keys silently; and an option may be written flat or in
    its section, but not both."""
    path = tmp_path / "run.yaml"
    path.write_text("lr_prompt: 0.3\nmax_steps: 5\nlr_prompt: 0.03\n")
    with pytest.raises(ConfigError, match=r"run.yaml is not valid yaml: .*key 'lr_prompt' appears twice \(line 3\)$"):
        parse_config(["--config", str(path)])
    path.write_text("lr_prompt: 0.3\noptim:\n  lr_prompt: 0.03\n")
    with pytest.raises(ConfigError, match="option lr_prompt is given twice"):
        parse_config(["--config", str(path)])
    path.write_text("optim:\n  lr_prompt: 0.03\n  max_steps: 5\n")  # sections still work
    assert parse_config(["--config", str(path)])[0].optim.lr_prompt == 0.03


def test_resume_starts_from_the_runs_own_config(tmp_path):
    """--resume reads OUT/config.json: options not given now come from it (not from the defaults),
    options that only change logging or the machine may be given anew, and a given option that
    changes the optimisation or the data is refused, naming each difference."""
    from adept_dist.config.record import resumed_config

    first = make_config({"model": "m", "train_file": "t.jsonl", "lr_prompt": 0.1, "seed": 7, "compute_dtype": "fp32"})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(first.to_dict()))
    now, _ = parse_config(["--resume", "--output_dir", str(tmp_path), "--log_every", "5", "--seed", "7"])
    cfg = resumed_config(now, path, builtin_model="/nowhere")
    assert (cfg.model.model, cfg.data.train_file, cfg.optim.lr_prompt, cfg.optim.seed) == ("m", "t.jsonl", 0.1, 7)
    assert (cfg.run.log_every, cfg.run.resume, cfg.run.output_dir) == (5, True, str(tmp_path))
    changed, _ = parse_config(["--resume", "--output_dir", str(tmp_path), "--lr_prompt", "0.05", "--method", "dept"])
    with pytest.raises(ConfigError, match=r"\(lr_prompt 0\.1 -> 0\.05; method 'adept' -> 'dept'\)"):
        resumed_config(changed, path, builtin_model="/nowhere")
    builtin = make_config({"compute_dtype": "fp32"}).to_dict()
    builtin["model"]["model"] = "/home/x/builtin/model"  # what a built-in run records
    path.write_text(json.dumps(builtin))
    plain, _ = parse_config(["--resume", "--output_dir", str(tmp_path)])
    assert resumed_config(plain, path, builtin_model="/home/x/builtin/model").model.model is None
    # the built-in model's folder given as --model with the user's own data (found probing, 2026-12-04: the
    # resume was refused with "--train_file needs --model"): it stays that folder
    own = make_config({"model": "/home/x/builtin/model", "train_file": "t.csv", "compute_dtype": "fp32"}).to_dict()
    path.write_text(json.dumps(own))
    assert resumed_config(plain, path, builtin_model="/home/x/builtin/model").model.model == "/home/x/builtin/model"


def test_resume_keeps_the_runs_packing(tmp_path):
    """docs/RELIABILITY.md says a resume that changes --packing is refused: packed and padded steps lay the
    micro-batches out in other rows (other dropout draws, other sums), so the adapter would differ
    from the uninterrupted run's. Found accepted (2026-12-06): packing and pack_tokens were listed as
    changeable. Giving the run's own layout again, or nothing, still resumes it."""
    from adept_dist.config.record import resumed_config

    path = tmp_path / "config.json"

    def resume(*flags: str):
        now, _ = parse_config(["--resume", "--output_dir", str(tmp_path), *flags])
        return resumed_config(now, path, builtin_model="/nowhere")

    packed = make_config({"model": "m", "train_file": "t.jsonl", "compute_dtype": "fp32"})  # packing resolved: on
    path.write_text(json.dumps(packed.to_dict()))
    assert (packed.data.packing, packed.data.pack_tokens) == (True, 4096)
    with pytest.raises(ConfigError, match=r"started with other settings \(packing True -> False\); .*cannot change"):
        resume("--no-packing")
    with pytest.raises(ConfigError, match=r"\(pack_tokens 4096 -> 8192\)"):
        resume("--pack_tokens", "8192")
    with pytest.raises(ConfigError, match=r"packs its examples, which --attn_implementation flash_attention_2 cannot"):
        resume("--attn_implementation", "flash_attention_2")  # it would have to unpack
    for same in ((), ("--packing",), ("--packing", "--pack_tokens", "4096")):
        cfg = resume(*same)
        assert (cfg.data.packing, cfg.data.pack_tokens, cfg.changes) == (True, 4096, {}), same

    padded = make_config({"model": "m", "train_file": "t.jsonl", "compute_dtype": "fp32", "packing": False})
    path.write_text(json.dumps(padded.to_dict()))
    with pytest.raises(ConfigError, match=r"\(packing False -> True\)"):
        resume("--packing")
    assert not resume().data.packing and not resume("--no-packing").data.packing
    cfg = resume("--attn_implementation", "flash_attention_2")  # padded: any kernel, as before
    assert cfg.changes == {"attn_implementation": ["sdpa", "flash_attention_2"]} and not cfg.data.packing
