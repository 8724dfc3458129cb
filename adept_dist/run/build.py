"""Build a run. The build order, fixed and written down once:

    output folder check (a finished run resumed stops here, touching nothing) -> the folder's lock ->
    model and data sources (the built-in demo where none is given) ->
    tokenizer + data (the main process loads, the other ranks receive) -> DeepSpeed JSON resolved,
    loader chosen -> backbone (quantized, frozen; layerwise under ZeRO-3) -> adapter (seeded,
    the same on every rank; prompt init or --init_adapter) -> validate the trainable set ->
    optimizer and schedule -> deepspeed.initialize -> resume state -> config.json (the resolved
    options, the run's identity, the history of options changed on resume) and ds_config.json
    written (a start that fails before leaves no config.json behind); the trainer marks the run
    finished in config.json at its end

``prepare`` runs it up to the validated model (``RunParts``: no DeepSpeed engine yet);
``assemble`` starts the engine and resumes, returning a whole ``Run``; ``build`` is both.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import torch
import torch.distributed as dist

from adept_dist.common import lock
from adept_dist.common.errors import EXIT_OK, ConfigError, UserError
from adept_dist.common.fileio import now, write_json
from adept_dist.common.trackers import parse_report_to
from adept_dist.config.options import CONFIG_FILE, Config
from adept_dist.config.record import read_run_config, resumed_config
from adept_dist.config.resolve import choose_loader
from adept_dist.data import splits
from adept_dist.data.examples import ENCODING, UNKNOWN_WARN_SHARE, make_stream, unknown_shares
from adept_dist.data.tasks import get_task
from adept_dist.distributed import traffic
from adept_dist.distributed.comm import Dist, all_reduce_
from adept_dist.distributed.dsconfig import AUTO, DEFAULT_DS_CONFIG, apply_shard_scope, resolve_ds_config, zero_stage
from adept_dist.distributed.topology import Layout, discover_nodes, make_layout
from adept_dist.distributed.zero import build_engine, full_numel, gathered
from adept_dist.export.adapter import load_adapter
from adept_dist.model import builtin, gguf
from adept_dist.model.adapters import PromptAdapter, build_adapter
from adept_dist.model.backbone import (
    DTYPES,
    load_backbone,
    load_config,
    load_tokenizer,
    resolve_compute_dtype,
    resolve_source,
    shard_map,
)
from adept_dist.model.lm import AdeptLM
from adept_dist.model.loader import check_world_group, load_layerwise, partition_adapter
from adept_dist.plan.inputs import Cluster, PlanError, Workload, Zero, memory_size, shape_of
from adept_dist.plan.layout import plan
from adept_dist.plan.measure import DEVICE_MEMORY, device_bytes
from adept_dist.run.checkpoint import resume_state
from adept_dist.run.context import MetricsLog, Run, RunParts, TrainError, log0, on_main
from adept_dist.run.evaluation import options_of
from adept_dist.run.optim import make_optimizer


def build(cfg: Config, d: Dist) -> Run:
    return assemble(prepare(cfg, d))


def prepare(cfg: Config, d: Dist) -> RunParts:
    """Everything before DeepSpeed: folder, data, backbone, adapter (collective). Nothing is
    written into the output folder yet. --resume starts from the run's own config.json."""
    out = Path(cfg.run.output_dir)
    if cfg.run.resume and (text := run_config_text(out / CONFIG_FILE, d)):
        cfg = resumed_config(cfg, out / CONFIG_FILE, str(builtin.builtin_dir() / "model"), text)
        stored = read_run_config(out / CONFIG_FILE, text)
        check_not_finished(out, cfg, stored)
        check_encoding(out, stored)
    check_output_dir(out, cfg.run.resume)
    dist.barrier()  # every rank has looked before the main one writes
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    on_main(d, lambda: lock.acquire(out, cfg.run.take_over, log=lambda m: log0(d, m)), lock.LOCK, out,
            "nothing was written")  # fmt: skip

    model_name, files = sources(cfg, d)
    model_config = load_config(model_name)  # refuse a missing or non-decoder model before reading data
    check_positions(cfg, model_config, model_name)
    if not d.main:  # one progress bar per job, not per rank
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    cfg, ds_config, layout, group = place(cfg, d, model_config, model_name)
    tokenizer = load_tokenizer(model_name)
    data = load_data(cfg, d, tokenizer, files)
    if cfg.data.eval_mode == "rank" and (free := [s for s in data.evals if options_of(data, s) is None]):
        raise ConfigError(f"--eval_mode rank chooses among each example's options, but the {free[0]} answers of "
                          f"{data.name} are free text (no label words, no 'options' per row): use --eval_mode "
                          f"generate, or give each row its 'options'")  # fmt: skip

    dtype = DTYPES[cfg.model.compute_dtype]
    mc = cfg.model
    if mc.loader == "layerwise":
        backbone = load_layerwise(model_name, mc.quant, d.device, dtype, ds_config, mc.attn_implementation,
                                  mc.activation_checkpointing, log=lambda m: log0(d, m), group=group)  # fmt: skip
    else:
        backbone = load_backbone(model_name, mc.quant, d.device, mc.attn_implementation,
                                 mc.activation_checkpointing, dtype)  # fmt: skip
    adapter = make_adapter(cfg, backbone, tokenizer, model_name)
    # DeepSpeed casts a module to its compute dtype unless the module is already ZeRO-partitioned
    # (the layerwise loader's): then the adapter gets the same cast here (fp32 masters stay in the optimizer)
    adapter.to(d.device, dtype=dtype if mc.loader == "layerwise" else None)
    if group is not None:  # a node-group backbone: the adapter must not inherit its group (loader.partition_adapter)
        partition_adapter(adapter, ds_config)
    model = AdeptLM(backbone, adapter)
    check_trainable(model)
    a = cfg.adapter
    log0(
        d,
        f"{a.method}: m={adapter.m} r={getattr(adapter, 'r', '-')} d={adapter.d}, "
        f"{sum(full_numel(p) for p in adapter.parameters()):,} trainable parameters; backbone {mc.quant}, frozen",
    )
    lengths = [len(e.input_ids) for e in data.train]
    window = 0 if a.method == "dept" else cfg.data.group_window  # DePT pads every batch to max_length anyway
    stream = make_stream(lengths, cfg.optim.seed, cfg.data.global_batch(d.world), window)
    return RunParts(cfg, d, out, tokenizer, data, model, stream, ds_config, cfg.model.model or "builtin", model_name,
                    layout)  # fmt: skip


def place(cfg: Config, d: Dist, model_config, model_name: str) -> tuple[Config, dict, Layout, object]:
    """The options this machine and this model decide, chosen once (collective): the compute dtype
    (the device), the DeepSpeed JSON and the sharding scope (the plan's for "auto"), the loader (the
    model's family, ZeRO's stage). Returns the config with them set (a new one: config.json records
    them), the DeepSpeed JSON as it runs, the layout and this rank's shard group."""
    cfg = cfg.replaced(compute_dtype=resolve_compute_dtype(cfg.model.compute_dtype, d.device))
    ds_path = DEFAULT_DS_CONFIG if cfg.run.ds_config == AUTO else cfg.run.ds_config
    ds_config = resolve_ds_config(ds_path, cfg.ds_settings(d.world))
    scope = cfg.run.shard_scope
    nodes = discover_nodes(d.world, cfg.run.ranks_per_node)  # collective: found once, for the plan and the layout
    if scope == AUTO or (scope is None and cfg.run.ds_config == AUTO):
        scope = planned_scope(cfg, d, nodes, model_config.to_dict(), ds_config, model_name)
    ds_config, scope, note = apply_shard_scope(ds_config, scope, ds_path)
    if note:
        log0(d, note)
    layout, group = make_layout(scope, cfg.run.shard_group_size, cfg.run.ranks_per_node, nodes)
    traffic.COUNTER.set_nodes(list(layout.nodes), d.rank)
    log0(d, layout.describe())
    zero3 = zero_stage(ds_config) == 3
    loader = choose_loader(cfg.model.loader, zero3, model_config.model_type, ds_path)
    if group is not None and loader != "layerwise":
        raise ConfigError(f"--shard_scope node partitions each layer over its group as it is loaded, which the "
                          f"{loader} loader cannot: drop --loader {loader}")  # fmt: skip
    if loader == "layerwise" and Path(resolve_source(model_name)).is_dir():  # .bin-only: refused before data
        shard_map(Path(resolve_source(model_name)), model_name, "the layerwise loader (the default under ZeRO-3)",
                  "pass --loader transformers, or ")  # fmt: skip
    return cfg.replaced(shard_scope=scope, loader=loader), ds_config, layout, group


def size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def planned_scope(cfg: Config, d: Dist, nodes: list[int], model_config: dict, ds_config: dict, model_name: str) -> str:
    """--shard_scope auto (or --ds_config auto): the scope adept-plan recommends for this model, these
    options and this job's nodes (`nodes`: every rank's), ranks and device memory (collective: the
    smallest device memory is all-reduced)."""
    n_nodes = len(set(nodes))
    per_node = d.world // n_nodes
    if per_node * n_nodes != d.world:
        raise ConfigError(f"--shard_scope auto plans nodes of equal size, but this job's {d.world} ranks sit "
                          f"unevenly on {n_nodes} nodes: pass --shard_scope global, node or none")  # fmt: skip
    mine = device_bytes(d.device, nodes.count(nodes[d.rank]))
    mine = memory_size(mine, f"${DEVICE_MEMORY}") if isinstance(mine, str) else mine
    least = all_reduce_(torch.tensor([float(mine)], dtype=torch.float64), dist.ReduceOp.MIN)  # the smallest decides
    memory = int(least.item())
    c, a = cfg, cfg.adapter
    work = Workload(
        max_length=c.data.max_length, micro_batch=c.data.micro_batch_size, grad_accum=c.data.grad_accum,
        method=a.method, prompt_length=a.prompt_length, offset_rank=a.offset_rank,
        activation_checkpointing=c.model.activation_checkpointing, compute_dtype=c.model.compute_dtype,
        quant=c.model.quant, packing=c.data.packing, pack_tokens=c.data.pack_tokens,
    )  # fmt: skip
    cluster = Cluster(n_nodes, per_node, memory, cfg.run.shard_group_size)
    try:
        pl = plan(shape_of(model_config, model_name), cluster, work, Zero.from_ds(ds_config),
                    cpu=d.device.type == "cpu")  # fmt: skip
    except PlanError as exc:
        raise ConfigError(f"--shard_scope auto cannot plan this model ({exc}): pass --shard_scope global, node or "
                          f"none") from None  # fmt: skip
    figures = ", ".join(
        f"{lay.scope}: {size(lay.peak_bytes_per_gpu)} peak{'' if lay.fits else ' (does not fit)'}, "
        f"{size(lay.inter_node_bytes_per_step)} inter-node per step"
        for lay in pl.layouts
    )
    if pl.recommended is None:
        raise ConfigError(f"--shard_scope auto: no sharding scope fits in {size(cluster.usable)} per rank "
                          f"({figures}): try --activation_checkpointing, a smaller --micro_batch_size, more ranks, "
                          f"or pass --shard_scope to try one anyway")  # fmt: skip
    log0(d, f"--shard_scope auto: {pl.recommended} on {n_nodes} node(s) x {per_node} rank(s) with "
            f"{size(memory)} each ({figures}); adept-plan shows the whole plan")  # fmt: skip
    return pl.recommended


def assemble(parts: RunParts) -> Run:
    """deepspeed.initialize around the model, then the resume state (collective)."""
    optimizer, scheduler = make_optimizer(parts.model.adapter, parts.cfg.optim)
    engine, _, _ = build_engine(parts.model, optimizer, scheduler, parts.ds_config)
    check_world_group(parts.model.adapter.named_parameters())
    fields = {k: getattr(parts, k) for k in RunParts.__dataclass_fields__}
    run = Run(**fields, engine=engine, metrics=MetricsLog(parts.out / "metrics.jsonl", parts.d))
    if run.cfg.run.resume:
        resume_state(run)
        run.metrics.drop_after(run.step, final=run.step == run.cfg.optim.max_steps)

    def record() -> None:  # only a run that could start writes what it runs: the resolved options and DeepSpeed JSON
        write_json(run.out / CONFIG_FILE, run_record(run))
        write_json(run.out / "ds_config.json", run.ds_config)

    on_main(run.d, record, f"{CONFIG_FILE} and ds_config.json", run.out, "the run's files are as they were")
    run_id = read_run_config(run.out / CONFIG_FILE)["identity"]["id"] if run.d.main else ""
    run.metrics.start_trackers(parse_report_to(run.cfg.run.report_to), run.cfg.to_dict(), run.step, run_id)
    return run


def run_record(run: Run) -> dict:
    """config.json: the resolved options (the model actually loaded), the run's identity (kept from
    its first start) and the history of options a resume changed."""
    record = run.cfg.to_dict()
    record["model"]["model"] = run.model_path
    path = run.out / CONFIG_FILE
    old = read_run_config(path) if run.cfg.run.resume and path.is_file() else {}
    record["identity"] = old.get("identity") or {
        "id": uuid.uuid4().hex,
        "created": now(),
        "host": socket.gethostname(),
        "encoding": ENCODING,
    }
    history = list(old.get("history", []))
    if run.cfg.changes:
        history.append({"at": now(), "step": run.step, "changed": run.cfg.changes})
    record["history"] = history
    return record


# ----------------------------------------------------------------------------- the steps
class RunFinished(UserError):
    """--resume of a run that has reached its --max_steps: nothing to do, nothing touched."""

    exit_code = EXIT_OK


def run_config_text(path: Path, d: Dist) -> str:
    """The run's config.json as the main process reads it, on every rank ("" when there is none), so
    all ranks decide alike even while the file changes (collective)."""

    def read() -> str:
        try:
            return path.read_text() if path.is_file() else ""
        except OSError as exc:
            raise ConfigError(f"--resume: {path} is unreadable ({exc}): restore it from a backup, or start a new "
                              f"run in another --output_dir") from None  # fmt: skip

    return on_main(d, read, returns=True)


def check_encoding(out: Path, stored: dict) -> None:
    """A run tokenised by an older adept-dist is not continued with another encoding of its data."""
    if not stored:
        return
    was = (stored.get("identity") or {}).get("encoding", 1)
    if was != ENCODING:
        raise ConfigError(
            f"run {out} turned its text into ids with data encoding {was}, this adept-dist uses {ENCODING} (see "
            f"data.ENCODING): resuming would change its data; finish it with the version that started it, or start "
            f"a new --output_dir"
        )


def check_not_finished(out: Path, cfg: Config, stored: dict) -> None:
    finished = stored.get("finished")
    if finished and cfg.optim.max_steps < finished.get("step", -1):
        raise ConfigError(
            f"--max_steps {cfg.optim.max_steps} is below the step this run finished at ({finished['step']}): give "
            f"--max_steps {finished['step']} or more"
        )
    if finished and finished.get("step", -1) >= cfg.optim.max_steps:
        kept = [name for name in ("results.json", "adapter", "metrics.jsonl") if (out / name).exists()]
        where = f"{', '.join(kept)} in that folder" if kept else "nothing of it is left in that folder"
        raise RunFinished(
            f"run {out} finished at step {finished['step']} on {finished.get('at')}: nothing to do ({where}); to "
            f"train on, resume with a larger --max_steps and --reschedule"
        )


def check_output_dir(out: Path, resume: bool) -> None:
    """Never overwrite earlier results: a non-empty folder needs --resume."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output_dir {out} is a file: choose a folder")
    if out.is_dir() and any(p.name != lock.LOCK for p in out.iterdir()) and not resume:
        raise ConfigError(
            f"--output_dir {out} is not empty: pass --resume to continue that run, or choose a new --output_dir"
        )


def sources(cfg: Config, d: Dist) -> tuple[str, dict]:
    """The model to load and the data files: the built-in demo's where none are given (built once
    per machine, by one process per node)."""
    dc = cfg.data
    model_name = cfg.model.model
    files = {"train_file": dc.train_file, "eval_file": dc.eval_file, "test_file": dc.test_file}
    if model_name is None or (dc.train_file is None and dc.task is None):
        if d.local_rank == 0:
            builtin.ensure_builtin(log=lambda s: log0(d, s))
        dist.barrier()
        root = builtin.builtin_dir()
        model_name = model_name or str(root / "model")
        if dc.train_file is None and dc.task is None:
            files = {"train_file": str(root / "train.jsonl"), "eval_file": str(root / "dev.jsonl")}
    convert_gguf(model_name, d)
    if cfg.model.model is None and dc.task is not None:
        log0(d, f"warning: --task {dc.task} without --model runs the built-in tiny demo model, which knows only "
                f"the demo's words: its scores mean nothing; pass --model for real results")  # fmt: skip
    return model_name, files


def convert_gguf(model_name: str, d: Dist) -> None:
    """A .gguf --model converted once, by the main process (its errors reach every rank), before any
    rank resolves it (collective; nothing for other models). Another node's first rank then converts
    into its own cache, if that is not shared."""
    if not gguf.is_gguf(model_name):
        return
    on_main(d, lambda: gguf.converted_folder(model_name, log=lambda s: log0(d, s)))
    if d.local_rank == 0 and not d.main:
        gguf.converted_folder(model_name, log=lambda s: None)
    if d.world > 1:
        dist.barrier()


def check_positions(cfg: Config, model_config, model_name: str) -> None:
    """Every training sequence (m prompt vectors + up to --max_length tokens) must fit the model's positions."""
    limit = getattr(model_config, "max_position_embeddings", None)
    m, length = cfg.adapter.prompt_length, cfg.data.max_length
    if limit is not None and m + length > limit:
        raise ConfigError(
            f"--prompt_length {m} + --max_length {length} = {m + length} positions, but model {model_name} has "
            f"{limit}: lower --max_length or --prompt_length"
        )


def load_data(cfg: Config, d: Dist, tokenizer, files: dict) -> splits.TaskData:
    """The main process loads, splits, formats and tokenises (or reads its cache); the other ranks
    receive the token ids instead of redoing the work. An error on the main process reaches all."""
    dc = cfg.data
    opts = {
        **files,
        "data_dir": dc.data_dir,
        "max_length": dc.max_length,
        "separator": dc.separator,
        "split_seed": dc.split_seed,
        "validation_size": dc.validation_size,
        "k_shot": dc.k_shot,
        "seed": cfg.optim.seed,
    }
    task = get_task(dc.task) if dc.task else None
    data = None

    def prepare() -> tuple[dict, str]:
        nonlocal data
        cache = Path(dc.cache_dir) if dc.cache_dir else builtin.home() / "tokenized"
        data = splits.prepare_main(task, tokenizer, opts, cache, log=lambda m: log0(d, m))
        return splits.pack(data) if d.world > 1 else ({}, "")

    tensors, meta = on_main(d, prepare, tensors=True)
    if data is None:
        data = splits.unpack(tensors, meta)
    if dc.max_eval_samples:
        for es in data.evals.values():
            es.examples, es.refs = es.examples[: dc.max_eval_samples], es.refs[: dc.max_eval_samples]
    sizes = ", ".join([f"train {len(data.train)}"] + [f"{k} {len(v.examples)}" for k, v in data.evals.items()])
    trunc = sum(v for k, v in data.info.items() if k.endswith("_truncated"))
    log0(d, f"data ({data.name}): {sizes} examples; {trunc} inputs truncated to max_length={dc.max_length}")
    special = {t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    unk_in, unk_tgt = unknown_shares(data.train, tokenizer.unk_token_id, special)
    if unk_in or unk_tgt:
        log0(d, f"unknown tokens (<unk>): {unk_in:.1%} of the training inputs' tokens, {unk_tgt:.1%} of the targets'")
    if unk_tgt > UNKNOWN_WARN_SHARE:
        log0(d, f"warning: {unk_tgt:.0%} of the training targets' tokens are <unk>: the tokenizer of "
                f"{cfg.model.model or 'the built-in model'} does not know these words, so the answers cannot be "
                f"learnt; use a model whose tokenizer covers your data (--model)")  # fmt: skip
    return data


def make_adapter(cfg: Config, backbone, tokenizer, model_name: str) -> PromptAdapter:
    """The adapter, initialised from the same seed on every rank: the prompt from --prompt_init,
    or every tensor from --init_adapter."""
    a = cfg.adapter
    torch.manual_seed(cfg.optim.seed)  # identical adapter init on every rank
    hidden = backbone.config.hidden_size
    adapter = build_adapter(a.method, a.prompt_length, hidden, a.offset_rank, cfg.data.max_length, a.dropout)
    adapter.init_prompt(prompt_init_rows(cfg, backbone.get_input_embeddings(), tokenizer, a.prompt_length))
    if cfg.run.init_adapter:
        init_from_adapter(adapter, cfg.run.init_adapter, backbone.config, model_name)
    return adapter


@torch.no_grad()
def prompt_init_rows(cfg: Config, embedding: torch.nn.Embedding, tokenizer, m: int) -> torch.Tensor:
    """(m, d) rows for the soft prompt: text init (repeated/truncated), random vocab rows, or normal.
    Only the m rows needed leave the table (a 128k x 8k vocabulary is 4 GB in fp32)."""
    a = cfg.adapter
    g = torch.Generator().manual_seed(cfg.optim.seed)
    vocab = min(embedding.num_embeddings, len(tokenizer))
    if a.prompt_init == "vocab":
        ids = torch.randint(0, vocab, (m,), generator=g)
    elif a.prompt_init == "text":
        text_ids = tokenizer(a.prompt_init_text, add_special_tokens=False).input_ids
        if not text_ids:
            raise ConfigError("--prompt_init_text tokenizes to nothing: give some text or use --prompt_init vocab")
        ids = torch.tensor((text_ids * (m // len(text_ids) + 1))[:m])
    with gathered([embedding.weight]):
        weight = embedding.weight.detach()  # (V, d)
        if a.prompt_init == "normal":
            return torch.randn(m, weight.shape[1], generator=g) * weight.float().std().cpu()
        return weight[ids.to(weight.device)].float().cpu().clone()


def init_from_adapter(adapter: PromptAdapter, path: str, model_config, model_name: str) -> None:
    """Start from an exported adapter (same method and shapes), e.g. to evaluate it with --max_steps 0."""
    loaded, cfg = load_adapter(path, model_config, model_name)
    mine = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in loaded.state_dict().items()}
    if type(loaded) is not type(adapter) or mine != theirs:
        raise ConfigError(
            f"--init_adapter {path} is a {cfg['method']} adapter with tensors {theirs}, this run builds {mine}: "
            f"use the same --method, --prompt_length and --offset_rank, on a model of the same hidden size"
        )
    adapter.load_state_dict(loaded.state_dict())


def check_trainable(model: AdeptLM) -> None:
    """The trainable parameters are exactly the adapter's (the backbone is frozen)."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    adapter = {id(p) for p in model.adapter.parameters()}
    if trainable != adapter:
        extra = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in adapter]
        raise TrainError(f"trainable parameters differ from the adapter's: {extra[:5]}")
