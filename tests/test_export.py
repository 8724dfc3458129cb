"""Adapter export: only adapter tensors, a readable config, and a reload that reproduces outputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from adept_dist.data.examples import Example, collate
from adept_dist.export.adapter import CONFIG, WEIGHTS, AdapterFileError, adapter_config, load_adapter, save_adapter
from adept_dist.model.backbone import load_backbone
from adept_dist.model.lm import AdeptLM
from tests.test_model import perturbed_adept


@pytest.mark.parametrize("method", ["adept", "dept", "pt"])
def test_export_reload_gives_same_outputs(tiny_model_dir, tmp_path, method):
    from adept_dist.model.adapters import build_adapter

    torch.manual_seed(0)
    adapter = perturbed_adept(64) if method == "adept" else build_adapter(method, 4, 64, max_length=32).eval()
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model = AdeptLM(load_backbone(str(tiny_model_dir), "nf4", torch.device("cpu")), adapter).eval()
    out = save_adapter(
        tmp_path / "adapter",
        {k: v for k, v in adapter.named_parameters()},
        adapter_config(adapter, base_model=str(tiny_model_dir)),
    )
    with safe_open(str(out / WEIGHTS), "pt") as f:
        names = set(f.keys())
        assert all(f.get_tensor(k).dtype == torch.float32 for k in names)
    assert names == {n for n, _ in adapter.named_parameters()}  # the adapter's tensors and nothing else
    assert not any("embed" in n or "layers" in n or "lm_head" in n for n in names)
    cfg = json.loads((out / CONFIG).read_text())
    assert cfg["method"] == method and cfg["m"] == 4 and cfg["d"] == 64 and cfg["base_model"] == str(tiny_model_dir)
    assert cfg["parameter_count"] == sum(p.numel() for p in adapter.parameters())

    reloaded, _ = load_adapter(out)
    fresh = AdeptLM(load_backbone(cfg["base_model"], "nf4", torch.device("cpu")), reloaded.eval()).eval()
    batch = collate([Example([1, 10, 11, 12, 13, 2], 3, 3), Example([1, 20, 21, 2], 2, 2)], pad_id=3)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch)[0], model(**batch)[0], rtol=0, atol=0)


def test_bad_adapter_folders(tmp_path):
    with pytest.raises(AdapterFileError, match="adapter_config.json not found"):
        load_adapter(tmp_path)
    adapter = perturbed_adept(16)
    out = save_adapter(tmp_path / "a", dict(adapter.named_parameters()), adapter_config(adapter))
    data = (out / WEIGHTS).read_bytes()
    (out / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match="is corrupt"):
        load_adapter(out)
    cfg = json.loads((out / CONFIG).read_text())
    (out / CONFIG).write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(
        AdapterFileError, match=r"field format_version: expected 'adept-dist-adapter' version 1, got .* version 99"
    ):
        load_adapter(out)
    (out / CONFIG).write_text("{")
    with pytest.raises(AdapterFileError, match="not valid JSON"):
        load_adapter(out)


def test_save_replaces_an_export_atomically(tmp_path):
    adapter = perturbed_adept(16)
    save_adapter(tmp_path / "a", dict(adapter.named_parameters()), adapter_config(adapter))
    with torch.no_grad():
        adapter.b.add_(1.0)
    save_adapter(tmp_path / "a", dict(adapter.named_parameters()), adapter_config(adapter))
    reloaded, _ = load_adapter(tmp_path / "a")
    torch.testing.assert_close(reloaded.b, adapter.b.detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temp folders left behind


def test_load_checks_name_the_problem(tmp_path, tiny_model_dir):
    """An adapter for another base model, a damaged file or an unknown method version: one clear error."""
    from adept_dist.model.backbone import load_config

    model_cfg = load_config(str(tiny_model_dir))  # hidden 64, vocab of the built-in tokenizer
    adapter = perturbed_adept(64)
    good = adapter_config(adapter, base_model=str(tiny_model_dir), vocab_size=model_cfg.vocab_size)
    out = save_adapter(tmp_path / "a", dict(adapter.named_parameters()), good)
    load_adapter(out, model_cfg, "tiny")  # fits

    def with_config(**changes):
        (out / CONFIG).write_text(json.dumps({**good, **changes}))

    with_config(d=128)
    with pytest.raises(AdapterFileError, match="hidden size 128 but model tiny has 64.*trained on"):
        load_adapter(out, model_cfg, "tiny")
    with_config(vocab_size=32000)
    with pytest.raises(AdapterFileError, match="vocabulary of 32000 tokens but model tiny has"):
        load_adapter(out, model_cfg, "tiny")
    with_config(method_version=2)
    with pytest.raises(AdapterFileError, match=r"field method_version: expected 1 \(the adept maths .*got 2"):
        load_adapter(out)
    with_config(method="lora")
    with pytest.raises(AdapterFileError, match='field method: expected one of adept, dept, pt .*got "lora"'):
        load_adapter(out)
    with_config(r="19")
    with pytest.raises(AdapterFileError, match='field r: expected an integer, got "19"'):
        load_adapter(out)
    with_config(m=5)  # config and tensors disagree
    with pytest.raises(AdapterFileError, match=r"tensor prompt: expected shape \(5, 64\) \(the adept adapter"):
        load_adapter(out)
    with_config()
    (out / WEIGHTS).unlink()
    with pytest.raises(AdapterFileError, match="adapter_model.safetensors not found"):
        load_adapter(out)
    from safetensors.torch import save_file

    state = {k: v.detach().clone() for k, v in adapter.named_parameters()}
    state["B"][0, 0] = float("nan")
    save_file(state, str(out / WEIGHTS))
    with pytest.raises(AdapterFileError, match="B hold NaN or inf"):
        load_adapter(out)
    # a pickle in place of the safetensors file is refused, never unpickled
    torch.save(state, out / WEIGHTS)
    with pytest.raises(AdapterFileError, match="is corrupt"):
        load_adapter(out)


def test_exports_without_method_version_read_as_version_1(tmp_path):
    """Adapters written before method_version existed (format 1) carry version-1 maths."""
    adapter = perturbed_adept(16)
    cfg = adapter_config(adapter)
    del cfg["method_version"]
    out = save_adapter(tmp_path / "a", dict(adapter.named_parameters()), cfg)
    reloaded, _ = load_adapter(out)
    torch.testing.assert_close(reloaded.B, adapter.B.detach())


# ----------------------------------------------------------------------------- from a checkpoint
@pytest.mark.dist
def test_the_adapter_of_any_checkpoint_and_clear_errors_for_bad_ones(tiny_model_dir, tmp_path):
    """A 2-rank ZeRO-3 run of 4 steps without validation saves steps 2 and 4; its OUT/adapter is the
    last one. Exported in this process (no engine, world 1): step 4 equals OUT/adapter bitwise, with
    the same config; step 2 is another adapter that loads alike. Each checkpoint carries that config
    and its run's identity: copied out of its run folder, or into another run's, it exports the same
    adapter, and a line says so; one of an earlier release (without them) takes its folder's
    config.json. A newest checkpoint whose adept_meta.json is damaged is skipped by --resume, which
    goes on from step 2 (at world size 1) to the same final adapter, bitwise."""
    import sys

    from adept_dist.commands.export import main as export_main
    from adept_dist.run.checkpoint import CheckpointError, export_checkpoint
    from tests.conftest import REPO, ranks_cmd, run_cmd, write_jsonl

    train = write_jsonl(tmp_path / "train.jsonl", [{"input": f"review : w{i} was great", "target": "positive"}
                                                   for i in range(16)])  # fmt: skip
    out = tmp_path / "run"
    proc = run_cmd(ranks_cmd(str(REPO / "launch" / "train.py"), "--ds_config", "ds_configs/zero3.json",
                                 "--model", str(tiny_model_dir), "--train_file", str(train), "--output_dir", str(out),
                                 "--max_steps", "4", "--warmup_steps", "0", "--save_every", "2", "--micro_batch_size",
                                 "2"))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpts = out / "checkpoints"
    assert export_main(["--checkpoint", str(ckpts / "step00000004"), "--output", str(tmp_path / "a4")]) == 0
    export_checkpoint(ckpts / "step00000002", tmp_path / "a2")
    final = out / "adapter"
    assert json.loads((tmp_path / "a4" / CONFIG).read_text()) == json.loads((final / CONFIG).read_text())
    assert (tmp_path / "a4" / WEIGHTS).read_bytes() == (final / WEIGHTS).read_bytes()
    a2, cfg2 = load_adapter(tmp_path / "a2")
    a4, _ = load_adapter(tmp_path / "a4")
    assert cfg2["step"] == 2 and cfg2["base_model"] == str(tiny_model_dir) and cfg2["r"] == a4.r
    assert not torch.equal(a2.prompt, a4.prompt)  # another step, another adapter

    def refused(folder, match, output="x"):
        with pytest.raises(CheckpointError, match=match) as err:
            export_checkpoint(folder, tmp_path / output)
        assert "\n" not in str(err.value) and not (tmp_path / output).exists()

    refused(ckpts / "step00000009", "not found: give a folder OUT/checkpoints/stepN")
    partial = shutil.copytree(ckpts / "step00000002", ckpts / "step00000006")
    (partial / "adept_meta.json").unlink()  # as a save killed before its last file leaves it
    refused(partial, "is not a complete checkpoint")
    corrupt = shutil.copytree(ckpts / "step00000002", ckpts / "step00000008")
    state = corrupt / "trainable_state.safetensors"
    state.write_bytes(state.read_bytes()[:200])
    refused(corrupt, "is corrupt .*: export another step")
    record = json.loads((out / "config.json").read_text())
    meta = json.loads((ckpts / "step00000004" / "adept_meta.json").read_text())
    assert meta["adapter"] == json.loads((final / CONFIG).read_text()) and meta["run_id"] == record["identity"]["id"]
    notes = []
    elsewhere = shutil.copytree(ckpts / "step00000002", tmp_path / "loose" / "step00000002")
    export_checkpoint(elsewhere, tmp_path / "a2loose", log=notes.append)
    assert json.loads((tmp_path / "a2loose" / CONFIG).read_text()) == cfg2 and "sits in no run folder" in notes[-1]
    other = tmp_path / "other"  # another run (its own identity) with other data settings
    foreign = shutil.copytree(ckpts / "step00000002", other / "checkpoints" / "step00000002")
    theirs = {**record, "identity": {**record["identity"], "id": "another-run"}}
    theirs["data"] = {**record["data"], "separator": " => ", "max_length": 7}
    (other / "config.json").write_text(json.dumps(theirs))
    export_checkpoint(foreign, tmp_path / "a2other", log=notes.append)
    assert json.loads((tmp_path / "a2other" / CONFIG).read_text()) == cfg2  # separator " Label : ", max_length 256
    assert f"written by run {record['identity']['id']}, not by the run of {other} (another-run)" in notes[-1]
    assert (tmp_path / "a2other" / WEIGHTS).read_bytes() == (tmp_path / "a2" / WEIGHTS).read_bytes()
    old = json.loads((foreign / "adept_meta.json").read_text())  # as an earlier release wrote it
    del old["adapter"], old["run_id"]
    (foreign / "adept_meta.json").write_text(json.dumps(old))
    export_checkpoint(foreign, tmp_path / "a2old", log=notes.append)
    assert json.loads((tmp_path / "a2old" / CONFIG).read_text())["separator"] == " => "  # its folder's, as before
    assert "predates checkpoints that carry their own settings" in notes[-1]
    del theirs["data"]["max_length"]
    (other / "config.json").write_text(json.dumps(theirs))
    refused(foreign, "config.json lacks 'max_length' of a run record")
    loose_old = shutil.copytree(foreign, tmp_path / "loose_old" / "step00000002")
    refused(loose_old, "config.json not found: give the checkpoint inside its run folder")
    # the base model's config comes from --model where given (the run's model may be gone from this machine)
    export_checkpoint(ckpts / "step00000002", tmp_path / "a2m", model=str(tiny_model_dir))
    assert (tmp_path / "a2m" / WEIGHTS).read_bytes() == (tmp_path / "a2" / WEIGHTS).read_bytes()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="exists and is not empty"):
        export_checkpoint(ckpts / "step00000002", tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"

    # --resume past a newest checkpoint whose metadata was cut short: at world size 1 (the same global
    # batch of 4 as 2 micro-batches of 2), from step 2, to the run's own final adapter
    resumed = shutil.copytree(out, tmp_path / "resumed")
    for made in ("step00000006", "step00000008"):  # the damaged copies above
        shutil.rmtree(resumed / "checkpoints" / made)
    (resumed / "checkpoints" / "step00000004" / "adept_meta.json").write_text('{"step": 4, "posi')
    del record["finished"]  # as a run that died after writing step 4 left it
    (resumed / "config.json").write_text(json.dumps(record))
    shutil.rmtree(resumed / "adapter")
    proc = run_cmd([sys.executable, str(REPO / "launch" / "train.py"), "--output_dir", str(resumed), "--resume",
                    "--grad_accum", "2"])  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    assert "resumed from step00000002 after skipping unusable checkpoint(s): step00000004 is corrupt (" in said, said
    assert "adept_meta.json is not valid JSON" in said and "Traceback" not in said
    assert (resumed / "adapter" / WEIGHTS).read_bytes() == (final / WEIGHTS).read_bytes()
