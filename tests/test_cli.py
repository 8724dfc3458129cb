"""The real entry point: bad inputs fail with one clear line; runs write what they promise."""

from __future__ import annotations

import json
import sys

import pytest

from adept_dist.commands.train import main
from tests.conftest import DIST_ENV, deepspeed_cmd, ranks_cmd, run_cmd, write_jsonl


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run launch/train.py's main() in-process as a world of one; return (exit code, stderr)."""

    def call(*argv: str) -> tuple[int, str]:
        for k in DIST_ENV:
            monkeypatch.delenv(k, raising=False)
        code = main(list(argv))
        return code, capsys.readouterr().err

    return call


def test_a_command_ends_its_process_after_its_exit_hooks_with_its_code():
    """errors.exit_process (adept-train and adept-predict end through it): the exit hooks still
    run (the run folder's lock is released by one), buffered output is not lost, the code is the
    command's, and what would run during interpreter finalisation (here a __del__ at shutdown) does
    not: that finalisation is what aborted a finished two-rank run in CI."""
    code = (
        "import atexit, sys\n"
        "from adept_dist.common.errors import exit_process\n"
        "class Late:\n"
        "    def __del__(self): print('finalised')\n"
        "keep = Late()\n"
        "atexit.register(lambda: print('hook ran'))\n"
        "sys.stdout.write('buffered, no newline')\n"
        "exit_process(3)\n"
    )
    proc = run_cmd([sys.executable, "-c", code])
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "buffered, no newlinehook ran\n"


def _rows(n=8):
    return [{"input": "review : the food was great", "target": "positive"}] * n


@pytest.mark.parametrize("case", ["missing_file", "bad_json", "unknown_model", "not_decoder", "target_too_long"])
def test_bad_inputs_fail_with_one_clear_line(cli, tmp_path, tiny_model_dir, case):
    model, train = str(tiny_model_dir), tmp_path / "train.jsonl"
    write_jsonl(train, _rows())
    args = ["--output_dir", str(tmp_path / "out"), "--max_steps", "2"]
    if case == "missing_file":
        args += ["--model", model, "--train_file", str(tmp_path / "nope.jsonl")]
        match = "data file .*nope.jsonl not found"
    elif case == "bad_json":
        train.write_text('{"input": "a", "target": "b"}\n{"input": oops}\n')
        args += ["--model", model, "--train_file", str(train)]
        match = r"train.jsonl:2: not valid JSON"
    elif case == "unknown_model":
        args += ["--model", str(tmp_path / "no_model"), "--train_file", str(train)]
        match = "model path .*no_model does not exist"
    elif case == "not_decoder":
        (tmp_path / "bert").mkdir()
        (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
        args += ["--model", str(tmp_path / "bert"), "--train_file", str(train)]
        match = "is a 'bert' model, not a decoder-only"
    else:
        write_jsonl(train, [{"input": "x", "target": "the food was great and the room was dirty"}])
        args += ["--model", model, "--train_file", str(train), "--max_length", "8"]
        match = r"train.jsonl:1: target needs 10 tokens"
    code, err = cli(*args)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and __import__("re").search(match, lines[0]), err[-2000:]


@pytest.mark.parametrize("case", ["positions", "nan_lr", "hostile_adapter"])
def test_bad_starts_are_refused_and_leave_no_config(cli, tmp_path, tiny_model_dir, case):
    """Refused before anything is allocated or written: sequences longer than the model's positions,
    a non-finite learning rate, an --init_adapter whose config claims a huge prompt (its shapes are
    checked against the file's header). A failed start leaves no config.json: the fixed rerun is
    not asked for --resume."""
    import resource

    from adept_dist.export.adapter import CONFIG, adapter_config, save_adapter
    from adept_dist.model.adapters import build_adapter

    out, train = tmp_path / "out", write_jsonl(tmp_path / "train.jsonl", _rows())
    args = ["--model", str(tiny_model_dir), "--train_file", str(train), "--output_dir", str(out), "--max_steps", "2"]
    if case == "positions":  # the tiny model has 512 positions
        args += ["--max_length", "500"]
        match = r"--prompt_length 60 \+ --max_length 500 = 560 positions, but model .* has 512"
    elif case == "nan_lr":
        args += ["--lr_prompt", "nan"]
        match = "option lr_prompt must be a finite number, got nan"
    else:
        adapter = build_adapter("adept", 60, 64)
        save_adapter(tmp_path / "adapter", adapter.state_dict(), adapter_config(adapter))
        cfg = json.loads((tmp_path / "adapter" / CONFIG).read_text())
        (tmp_path / "adapter" / CONFIG).write_text(json.dumps({**cfg, "m": 2**26}))  # 16 GB if built
        args += ["--init_adapter", str(tmp_path / "adapter")]
        match = r"tensor prompt: expected shape \(67108864, 64\) \(the adept adapter of adapter_config.json"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, err = cli(*args)
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert code == 2 and len(lines) == 1 and __import__("re").search(match, lines[0]), err[-2000:]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 2**20  # KB: under 1 GB more
    assert not out.exists() or not any(out.iterdir())


def test_unknown_option_and_wrong_type_are_errors(cli):
    with pytest.raises(SystemExit) as exc:
        cli("--lr", "0.1")
    assert exc.value.code == 2
    code, err = cli("--eval_every", "0")
    assert code == 2 and "eval_every must be >= 1" in err


def test_non_empty_output_dir_is_never_overwritten(cli, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    train = write_jsonl(tmp_path / "train.jsonl", _rows())
    code, err = cli("--model", str(tiny_model_dir), "--train_file", str(train), "--output_dir", str(out))
    assert code == 2 and "is not empty: pass --resume" in err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'


def read_metrics(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_builtin_training_lowers_the_loss(tmp_path):
    """60 steps on the built-in task, one process: the loss falls by more than half.

    Measured on the 2-core CI machine (fp32 on CPU, 2026-11-24): mean loss of steps 1-5 9.11, of
    steps 56-60 2.79 (ratio 0.31), so the 0.5 bound leaves room for thread-count rounding."""
    out = tmp_path / "run"
    proc = run_cmd(
        [
            sys.executable,
            "launch/train.py",
            "--ds_config",
            "ds_configs/zero2.json",
            "--output_dir",
            str(out),
            "--max_steps",
            "60",
            "--log_every",
            "1",
            "--max_eval_samples",
            "64",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [m["loss"] for m in read_metrics(out) if "loss" in m]
    assert len(losses) == 60
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)


@pytest.mark.slow
def test_config_json_records_what_ran(tmp_path):
    """config.json holds the resolved options (the built-in model's folder instead of null, the
    compute dtype and loader chosen for "auto") and ds_config.json the DeepSpeed JSON as it ran."""
    from adept_dist.model.builtin import builtin_dir

    out = tmp_path / "run"
    proc = run_cmd([sys.executable, "launch/train.py", "--ds_config", "ds_configs/zero3.json", "--output_dir", str(out),
                    "--max_steps", "0", "--max_eval_samples", "8"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["model"] == str(builtin_dir() / "model")
    assert (cfg["model"]["compute_dtype"], cfg["model"]["loader"]) == ("fp32", "layerwise")  # CPU, ZeRO-3, llama
    assert (cfg["optim"]["max_steps"], cfg["optim"]["lr_ffn"], cfg["adapter"]["prompt_length"]) == (0, 1e-3, 60)
    ds = json.loads((out / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"] == {"enabled": False}
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (
        8,
        1,
        8,
    )
    assert ds["gradient_clipping"] == 1.0


@pytest.mark.dist
@pytest.mark.slow
def test_world2_zero3_run_export_resume(tmp_path):
    """The issue's command at world size 2, then: a re-run is refused, --resume continues from the
    checkpoint before a corrupt one (which is reported); with none usable it stops with code 2; the
    export holds only the adapter and reproduces the final eval loss."""
    out = tmp_path / "OUT"
    train = ["launch/train.py", "--ds_config", "ds_configs/zero3.json", "--output_dir", str(out), "--save_every", "10"]
    proc = run_cmd(deepspeed_cmd(*train, "--max_steps", "20"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (
        out / "adapter" / "adapter_config.json"
    ).is_file()
    metrics = read_metrics(out)
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == [10, 20]
    assert all({"step", "loss", "lr", "tokens_per_s"} <= set(m) for m in steps)
    final_eval = [m for m in metrics if "eval_loss" in m][-1]
    assert final_eval["step"] == 20 and final_eval["eval_examples"] == 400
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (cfg["method"], cfg["m"], cfg["r"], cfg["d"], cfg["base_model"], cfg["dtype"]) == (
        "adept",
        60,
        19,
        128,
        "builtin",
        "float32",
    )
    ckpt = out / "checkpoints" / "step00000020"
    assert (ckpt / "adept_meta.json").is_file()
    ckpt_bytes = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    assert ckpt_bytes < 2_000_000  # adapter + optimizer state only; the frozen backbone alone is bigger
    _check_export_reproduces_eval(out, final_eval["eval_loss"])

    before = (out / "metrics.jsonl").read_text()
    again = run_cmd(ranks_cmd(*train, "--max_steps", "20"))
    assert again.returncode != 0 and "is not empty: pass --resume" in again.stderr
    assert (out / "metrics.jsonl").read_text() == before

    # --resume past a save killed midway (a temp folder: never loaded) and a last checkpoint with one
    # rank's file corrupt (truncated, as by a full disk on one node): the one before it is used. Rank 0
    # went into DeepSpeed's load and waited there for rank 1 for good (found 2026-12-07): every rank now
    # reads its own files and all agree before the load.
    (out / "checkpoints" / ".tmp-step00000030").mkdir()
    [f] = (out / "checkpoints" / "step00000020").glob("zero_pp_rank_1_*optim_states.pt")
    f.write_bytes(f.read_bytes()[:100])
    fallback = run_cmd(ranks_cmd(*train, "--max_steps", "30", "--resume", "--reschedule"), timeout=300)
    assert fallback.returncode == 0, fallback.stderr[-3000:]
    text = fallback.stdout + fallback.stderr
    assert "resumed from step00000010 after skipping unusable checkpoint(s): step00000020 is corrupt" in text
    assert "(zero_pp_rank_1_mp_rank_00_optim_states.pt: " in text and "(rank 1))" in text
    assert [m["step"] for m in read_metrics(out) if "loss" in m] == [10, 20, 30]

    for f in (out / "checkpoints").rglob("*optim_states.pt"):
        f.write_bytes(b"")
    broken = run_cmd(deepspeed_cmd(*train, "--max_steps", "40", "--resume", "--reschedule"))
    assert broken.returncode == 2
    assert "no usable checkpoint in" in broken.stderr and "step00000030 is corrupt" in broken.stderr
    assert (out / "adapter" / "adapter_config.json").is_file()  # earlier results are left alone


def _check_export_reproduces_eval(out, eval_loss):
    """Reload the exported adapter into a fresh NF4 built-in model: its loss on the dev set equals
    the eval loss the distributed run logged (bf16 compute, other batch padding: 1% tolerance)."""
    import torch

    from adept_dist.data.examples import collate, encode, read_rows
    from adept_dist.export.adapter import load_adapter
    from adept_dist.model.backbone import load_backbone, load_tokenizer
    from adept_dist.model.builtin import builtin_dir
    from adept_dist.model.lm import AdeptLM

    adapter, cfg = load_adapter(out / "adapter")
    model_dir = str(builtin_dir() / "model")
    tok = load_tokenizer(model_dir)
    model = AdeptLM(load_backbone(model_dir, "nf4", torch.device("cpu")), adapter).eval()
    examples, _ = encode(read_rows(str(builtin_dir() / "dev.jsonl")), tok, cfg["max_length"], cfg["separator"])
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(examples), 50):
            loss, n = model(**collate(examples[s : s + 50], tok.pad_token_id))
            total, count = total + loss.item(), count + n.item()
    assert total / count == pytest.approx(eval_loss, rel=1e-2)


@pytest.mark.slow
def test_ds_configs_train_the_same(tmp_path):
    """ZeRO-2, ZeRO-3 and ZeRO-3 with CPU offload are the same optimisation (fp32 on CPU): their
    first 8 losses agree (measured: 1.4e-7 relative at most; bound 1e-4 for summation order)."""
    losses = {}
    for name in ("zero2", "zero3", "zero3_offload"):
        out = tmp_path / name
        proc = run_cmd(
            [
                sys.executable,
                "launch/train.py",
                "--ds_config",
                f"ds_configs/{name}.json",
                "--output_dir",
                str(out),
                "--max_steps",
                "8",
                "--log_every",
                "1",
                "--max_eval_samples",
                "16",
            ]
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses[name] = [m["loss"] for m in read_metrics(out) if "loss" in m]
    assert len(losses["zero2"]) == 8 and losses["zero2"][-1] < losses["zero2"][0]
    for name in ("zero3", "zero3_offload"):
        assert losses[name] == pytest.approx(losses["zero2"], rel=1e-4), name


@pytest.fixture
def poisoned_model(tmp_path, tiny_model_dir):
    """The tiny model with a NaN embedding row for the word 'awful': any example holding it has a NaN loss."""
    import shutil

    from safetensors.torch import load_file, save_file

    from adept_dist.model.backbone import load_tokenizer

    folder = tmp_path / "poisoned"
    shutil.copytree(tiny_model_dir, folder)
    weights = load_file(str(folder / "model.safetensors"))
    awful = load_tokenizer(str(folder))("awful", add_special_tokens=False).input_ids[0]
    weights["model.embed_tokens.weight"][awful] = float("nan")
    save_file(
        {k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"}
    )
    rows = [{"input": "review : the food was great", "target": "positive"}] * 7 + [
        {"input": "review : the food was awful", "target": "negative"}
    ]
    return folder, write_jsonl(tmp_path / "train.jsonl", rows)


def test_nonfinite_loss_stop_and_skip(tmp_path, poisoned_model):
    """8 rows, one of them NaN, micro batch 2: some steps hold it. 'stop' ends the run naming the step
    and samples; 'skip' discards exactly those updates and finishes with a finite adapter; under ZeRO-2
    the same steps are skipped with the same learning rates."""
    import math

    from safetensors.torch import load_file

    model, train = poisoned_model
    base = [
        sys.executable,
        "launch/train.py",
        "--model",
        str(model),
        "--train_file",
        str(train),
        "--micro_batch_size",
        "2",
        "--max_steps",
        "8",
        "--log_every",
        "1",
        "--ds_config",
        "ds_configs/zero3.json",
    ]
    stop = run_cmd([*base, "--output_dir", str(tmp_path / "stop")])
    err = stop.stderr
    assert (
        stop.returncode == 2
        and "non-finite loss nan at step" in err
        and "(samples " in err
        and "--nonfinite skip" in err
    )
    skip = run_cmd([*base, "--output_dir", str(tmp_path / "skip"), "--nonfinite", "skip"])
    assert skip.returncode == 0, skip.stderr[-2000:]
    steps = read_metrics(tmp_path / "skip")
    skipped = [m["step"] for m in steps if m.get("skipped")]
    assert 1 <= len(skipped) < 8 and all(math.isnan(m["loss"]) for m in steps if m.get("skipped"))
    assert all(math.isfinite(m["loss"]) for m in steps if not m.get("skipped"))
    adapter = load_file(str(tmp_path / "skip" / "adapter" / "adapter_model.safetensors"))
    assert all(bool(v.isfinite().all()) for v in adapter.values())
    # ZeRO-2 in fp32 checks for overflow in its own step (DeepSpeed's stage_1_and_2), which could hold
    # its schedule back after a skip (a review's suspicion, 2026-12-07): the same steps skip with the
    # same learning rates as ZeRO-3
    zero2 = [*base[:-1], "ds_configs/zero2.json", "--output_dir", str(tmp_path / "skip2"), "--nonfinite", "skip"]
    assert run_cmd(zero2).returncode == 0
    steps2 = read_metrics(tmp_path / "skip2")
    assert [m.get("skipped") for m in steps2] == [m.get("skipped") for m in steps]
    assert [m["lr"] for m in steps2 if "lr" in m] == [m["lr"] for m in steps if "lr" in m]


def test_targets_the_tokenizer_does_not_know_are_warned_of(tmp_path, tiny_model_dir, tokenizer):
    """Words outside the tokenizer's vocabulary become <unk> (id 0 here): a target of unknown words
    cannot be learnt, and the run said nothing (issue 14: accuracy 0 with the built-in model's
    folder on a user's file). Known words: a share of 0, nothing reported."""
    from adept_dist.data.examples import encode, unknown_shares

    def examples(target):
        return encode([{"input": "review : the food was great", "target": target}], tokenizer, 64, " Label : ")[0]

    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    assert unknown_shares(examples("positive"), tokenizer.unk_token_id, special) == (0.0, 0.0)
    assert unknown_shares(examples("zqxj"), tokenizer.unk_token_id, special) == (0.0, 1.0)  # EOS not counted
    assert unknown_shares(examples("zqxj"), None, special) == (0.0, 0.0)  # a tokenizer without <unk>
    # an unknown token that is also EOS (GPT-2's <|endoftext|>): every EOS would count as unknown
    assert unknown_shares(examples("zqxj"), tokenizer.eos_token_id, special) == (0.0, 0.0)
    unknown = write_jsonl(
        tmp_path / "unknown.jsonl", [{"input": "review : the food was great", "target": "zqxj vwpk"}] * 8
    )
    proc = run_cmd([sys.executable, "launch/train.py", "--model", str(tiny_model_dir), "--train_file", str(unknown),
                    "--max_steps", "1", "--output_dir", str(tmp_path / "run")])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    # "zqxj vwpk": both target tokens unknown (EOS is not counted); the input's words are all known
    assert "unknown tokens (<unk>): 0.0% of the training inputs' tokens, 100.0% of the targets'" in proc.stdout
    assert "warning: 100% of the training targets' tokens are <unk>" in proc.stdout
