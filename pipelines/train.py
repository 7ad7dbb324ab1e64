"""Distributed LoRA fine-tuning of Meerkat on Ray Train, tracked in MLflow.

    ray job submit --address http://127.0.0.1:8265 -- \\
        python -m pipelines.train --config pipelines/configs/tiny.yaml [data.uri=s3://meerkat/avfit/train ...]

One ``TorchTrainer``: N workers (``scaling``), each reading its split of the AVFIT stream
(:mod:`pipelines.data`) and minimising ``CE + λ_OT·OT + λ_AC·AC`` (:class:`MeerkatModel`), with
gradient accumulation to ``optim.effective_batch`` (the paper's 128; gradients are reduced on the
last micro-step only), global gradient clipping, linear warm-up then cosine decay, and task mixing
by ``data.task_weights``. The strategies (:mod:`meerkat_core.parallel`, which says when each is
right): ``scaling.strategy: ddp`` replicates the model (the tiny preset; gloo on CPU, NCCL on GPU,
bf16 autocast on GPU); ``fsdp`` shards the frozen bf16 base per decoder layer with FSDP2 (the paper
preset) — torch-native rather than DeepSpeed: no extra build or JSON config, per-parameter sharding
that keeps LoRA's fp32 tensors apart from the bf16 base, and checkpoints in
``torch.distributed.checkpoint`` that any worker count can read. The model is sharded here, not by
``ray.train.torch.prepare_model`` (whose FSDP path is FSDP1's flat parameters).

Checkpoints hold only what training changes — the trainable state (LoRA, AVACE, projections),
optimizer, scheduler, step and data position — every ``checkpoint.every`` steps, in the format of
:mod:`meerkat_core.checkpoint`: every rank writes its shards with ``torch.distributed.checkpoint``
and Ray Train merges the ranks' files into one directory of the ``RunConfig`` storage (S3 or
local), registered as the run's latest once complete; the last ``checkpoint.keep`` are kept. A
checkpoint restores on a different number of workers and loads in one process (evaluation,
Serve). A worker that dies makes Ray Train restart the group (``max_failures``) from the latest
checkpoint; re-submitting the same ``name`` resumes the run, the same MLflow run included (found
by its ``meerkat.run_name`` tag).

MLflow (rank 0 logs; metrics every ``log_every`` steps): the resolved config as params and as a
file; ``train/loss``, ``train/loss_ce``, ``train/loss_ot``, ``train/loss_ac`` (and ``train/loss_time``
with ``model.audio_time_map``, ``train/loss_match`` with ``model.av_match``), ``train/lr``,
``train/grad_norm``, ``train/samples_per_s``, ``train/data_wait_frac``, ``train/skipped/<reason>``
(losses and data wait are means over the ranks), ``train/frozen_shard_fraction/rank<k>``;
and at the end the model, logged as a pyfunc and registered (``mlflow.register_as``), loadable with
``pipelines.registry.load("models:/<name>/<version>")``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from meerkat_core.config import ModelConfig, from_dict, to_dict
from pipelines.data import DataConfig

logger = logging.getLogger("pipelines.train")


@dataclass(frozen=True)
class ScalingSpec:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    """Used only with ``use_gpu``."""
    strategy: str = "ddp"
    """"ddp" or "fsdp" (shards the frozen base; for the paper preset on GPUs)."""
    placement_strategy: str = "PACK"
    """Ray placement of the workers: "PACK", "SPREAD" or "STRICT_SPREAD" (one worker per node)."""

    def __post_init__(self) -> None:
        if self.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"scaling.strategy must be 'ddp' or 'fsdp', got {self.strategy!r}")
        if self.num_workers < 1:
            raise ValueError("scaling.num_workers must be >= 1")


@dataclass(frozen=True)
class OptimSpec:
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    max_steps: int = 300
    """Optimizer steps of the whole run (a resumed run continues to this count)."""
    batch_size: int = 8
    """Samples per worker per micro-batch."""
    effective_batch: int | None = None
    """Samples per optimizer step over all workers (the paper: 128); ``None``: one micro-batch per
    worker. Must be a multiple of ``batch_size * num_workers``."""
    grad_clip: float = 1.0
    min_lr_ratio: float = 0.1
    """The cosine decays to ``lr * min_lr_ratio``."""


@dataclass(frozen=True)
class CheckpointSpec:
    every: int = 50
    """Steps between checkpoints (also a ``ray.train.report``, a barrier of every worker: keep it sparse)."""
    keep: int = 2


@dataclass(frozen=True)
class MLflowSpec:
    tracking_uri: str | None = None
    """``None``: ``MLFLOW_TRACKING_URI`` from the environment (the local stack sets it)."""
    experiment: str = "meerkat"
    register_as: str | None = "meerkat-tiny"
    """Registered model name; ``None`` logs the model without registering it."""
    tags: dict[str, str] = field(default_factory=dict)
    """Further tags of the MLflow run (the ablation tags its runs with its id and variant)."""


@dataclass(frozen=True)
class TrainJobConfig:
    name: str = "meerkat-tiny"
    """Run name: the Ray Train run and the MLflow run. Re-submitting a name resumes that run."""
    storage_uri: str = "data/runs"
    """Where checkpoints go: ``s3://bucket/prefix`` or a local directory."""
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})
    """``{preset: tiny|paper, <ModelConfig overrides>}``."""
    pretrained: bool = False
    """Load encoder/LLM weights from the preset's ``name_or_path`` (the paper preset on a cluster)."""
    data: DataConfig = field(default_factory=DataConfig)
    scaling: ScalingSpec = field(default_factory=ScalingSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    mlflow: MLflowSpec = field(default_factory=MLflowSpec)
    max_failures: int = 2
    log_every: int = 10
    seed: int = 0
    trace_dir: str | None = None
    """A directory on the workers' filesystem where each rank appends, per micro-batch, the keys of
    the samples it trains on (``rank<k>.jsonl``: attempt, step, keys); for audits and tests."""

    def __post_init__(self) -> None:
        per_step = self.optim.batch_size * self.scaling.num_workers
        if self.optim.effective_batch is not None and self.optim.effective_batch % per_step:
            raise ValueError(
                f"optim.effective_batch {self.optim.effective_batch} is not a multiple of "
                f"batch_size x num_workers = {per_step}"
            )

    @property
    def grad_accum(self) -> int:
        per_step = self.optim.batch_size * self.scaling.num_workers
        return 1 if self.optim.effective_batch is None else self.optim.effective_batch // per_step


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------------
# The training loop (runs on every Ray Train worker): its steps first, then the recipe that calls
# them in order, train_loop_per_worker: _setup, _start_tracking, then per optimizer step
# _train_step, _log and _checkpoint.
# --------------------------------------------------------------------------------------------------


def _setup_model(cfg: TrainJobConfig, model_cfg: ModelConfig, device: torch.device):
    """The model, built on this worker and wrapped for the configured strategy.

    Returns ``(model, wrapped)``: ``model`` is the :class:`MeerkatModel` (sharded in place under
    FSDP), ``wrapped`` what the loop calls (the DDP wrapper under DDP, the model itself under FSDP).
    """
    from meerkat_core import parallel
    from meerkat_core.builders import build_model

    model = build_model(model_cfg, pretrained=cfg.pretrained, seed=cfg.seed)
    if cfg.scaling.strategy == "fsdp":
        return model, parallel.shard(model)  # moves each unit's shard to the mesh's device
    model.to(device)
    return model, parallel.replicate(model, device)


def _setup_optimizer(cfg: TrainJobConfig, model: torch.nn.Module):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    o = cfg.optim
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, o.warmup_steps, o.max_steps, o.min_lr_ratio)
    )
    return params, opt, sched


def _restore(checkpoint, model, opt, sched) -> dict[str, Any]:
    """Model and optimizer from the checkpoint's ``dcp/`` (any worker count), then the schedule."""
    from meerkat_core import checkpoint as ckpt

    with checkpoint.as_directory() as d:
        state = ckpt.load_training_state(d, model, opt)
    sched.load_state_dict(state.pop("scheduler"))
    return state


def _save(model, opt, sched, state: dict[str, Any], step: int) -> None:
    """Every rank writes its part of the checkpoint and reports it; Ray Train merges the parts."""
    import ray.train

    from meerkat_core import checkpoint as ckpt

    with tempfile.TemporaryDirectory() as tmp:
        ckpt.save_training_state(
            tmp,
            model,
            opt,
            {**state, "scheduler": sched.state_dict()},
            seed=state["seed"],
            pretrained=state["pretrained"],
        )
        ray.train.report(
            {"step": step, "epoch": state["epoch"]},
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"step-{step:07d}",
        )


def _forward_backward(wrapped, batch: dict[str, Any], accum: int, device, sync: bool) -> dict[str, float]:
    """One micro-step: forward, backward of ``loss / accum``; gradients reduced only when ``sync``."""
    from meerkat_core import parallel

    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    # bf16 autocast for DDP on GPU; FSDP casts by its mixed-precision policy instead.
    amp = device.type == "cuda" and not hasattr(wrapped, "set_requires_gradient_sync")
    with parallel.grad_sync(wrapped, sync), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        out = wrapped(batch)
        (out["loss"] / accum).backward()
    # loss_time: model.audio_time_map; loss_match: model.av_match
    keys = ("loss", "loss_ce", "loss_ot", "loss_ac", "loss_time", "loss_match")
    return {k: float(out[k].detach()) for k in keys if k in out}


def _optimizer_step(cfg: TrainJobConfig, params, opt, sched) -> float:
    from meerkat_core import parallel

    grad_norm = parallel.clip_grad_norm(params, cfg.optim.grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return grad_norm


class _Window:
    """What the loop logs every ``log_every`` steps: losses averaged over micro-steps and ranks."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.micro = 0
        self.samples = 0
        self.wait_s = 0.0
        self.start = time.perf_counter()

    def add(self, losses: dict[str, float], samples: int) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.micro += 1
        self.samples += samples

    def metrics(self, world: int, lr: float, grad_norm: float) -> dict[str, float]:
        """Collective: every rank must call it at the same step."""
        from meerkat_core import parallel

        elapsed = max(time.perf_counter() - self.start, 1e-9)
        local = {f"train/{k}": v / max(self.micro, 1) for k, v in self.sums.items()}
        local["train/data_wait_frac"] = self.wait_s / elapsed
        metrics = parallel.mean_over_ranks(local)
        metrics.update(
            {
                "train/lr": lr,
                "train/grad_norm": grad_norm,
                "train/samples_per_s": self.samples * world / elapsed,
            }
        )
        return metrics


def _trace(cfg: TrainJobConfig, rank: int, state: dict[str, Any], keys: list[str]) -> None:
    """Append the keys of a micro-batch to this rank's trace file (``trace_dir``)."""
    if cfg.trace_dir is None:
        return
    path = Path(cfg.trace_dir) / f"rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"attempt": state["attempt"], "step": state["step"] + 1, "keys": keys}
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _resume_position(state: dict[str, Any], rank: int, world: int) -> dict[str, int] | None:
    """Where this rank's stream resumes: the checkpoint's position of this rank (``streams``).

    Positions are per rank of the world size that wrote them; on another world size the shards
    fall to other ranks, so the run restarts the earliest epoch any rank was in (logged: samples
    of that epoch are seen again).
    """
    streams = state.get("streams")
    if not streams:
        return None
    if streams["world"] == world:
        return streams["ranks"][rank]
    epoch = min(p["epoch"] for p in streams["ranks"])
    logger.warning(
        "resuming on %d workers from a checkpoint of %d: epoch %d starts again",
        world,
        streams["world"],
        epoch,
    )
    return {"epoch": epoch, "group": 0, "index": 0}


def _stream_positions(state: dict[str, Any]) -> dict[str, Any]:
    """Collective: every rank's stream position (what it last trained on), for the checkpoint."""
    world = torch.distributed.get_world_size()
    ranks: list[Any] = [None] * world
    torch.distributed.all_gather_object(ranks, state["stream"])
    return {"world": world, "ranks": ranks}


def _batches(cfg: TrainJobConfig, loop_config: dict[str, Any], collate, rank: int, state: dict[str, Any]):
    """The worker's batches from the resume point on, each with its epoch and index in the epoch.

    Streaming (the default): each rank reads its own share of every epoch
    (``pipelines.data.build_dataset(rank=, world=)``: seeded shard order, fixed per-rank read
    groups, order preserved), so where it is fits in a few numbers (``pipelines.data.stream_position``)
    that the checkpoint keeps for every rank (``streams``); a resumed rank starts its stream
    there, reading at most one group it had read before and training on no sample twice. With
    ``data.cache``, the rank's fixed share of the cached split (``build_cached_epochs``, handed to
    every worker; not Ray Train's ``streaming_split``, whose per-epoch barrier deadlocks ranks
    whose thinned epochs differ in length), one pass per epoch counted here, thinned per epoch
    (``cached_batches``), shuffled by a seeded local buffer; a resumed worker skips
    ``batch_in_epoch`` batches of the checkpoint's epoch (read again from the object store). Batches leave the collate on the
    trainer's device, media already normalised to float32.
    """
    import ray.data
    import ray.train
    import ray.train.torch

    from pipelines import data

    ray.data.DataContext.get_current().enable_progress_bars = False
    world = ray.train.get_context().get_world_size()
    collate = data.MeerkatCollate(collate.pad_id, collate.side, device=ray.train.torch.get_device())
    current, in_epoch = state["epoch"], state["batch_in_epoch"]
    if cfg.data.cache:  # this rank's blocks of the cached split, one pass per epoch, no barrier
        share, keep, epoch = (
            loop_config["cached"].split(world, equal=True)[rank],
            data.keep_probs(cfg.data),
            state["epoch"],
        )
        while True:
            rows = share.iter_batches(
                batch_size=cfg.optim.batch_size,
                local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                local_shuffle_seed=cfg.seed * 1000 + epoch * 10 + rank,
            )
            thinned = data.cached_batches(
                rows, keep=keep, seed=cfg.data.seed, epoch=epoch, batch_size=cfg.optim.batch_size
            )
            i = 0
            for i, batch in enumerate(thinned, start=1):
                if epoch == state["epoch"] and i <= state["batch_in_epoch"]:
                    continue
                yield epoch, i, collate(batch)
            if not i:
                raise ValueError(
                    f"rank {rank}: its share of the cached split gives no batch of {cfg.optim.batch_size}"
                )
            epoch += 1
    model_cfg = from_dict(ModelConfig, loop_config["model"])
    tokenizer_dir = model_cfg.tokenizer if cfg.pretrained else None
    position = _resume_position(state, rank, world)
    while True:
        ds = data.build_dataset(
            cfg.data, model_cfg, tokenizer_dir, epochs=loop_config["epochs_per_pass"], rank=rank, world=world,
            position=position,
        )  # fmt: skip
        for batch in ds.iter_torch_batches(
            batch_size=cfg.optim.batch_size, collate_fn=collate, drop_last=True
        ):
            position = state["stream"] = data.stream_position(batch)
            for name in data.POSITION_COLUMNS:
                batch.pop(name)
            if position["epoch"] != current:
                current, in_epoch = position["epoch"], 0
            in_epoch += 1
            yield current, in_epoch, batch
        logger.warning(
            "rank %d: the stream ended before max_steps; reading on from epoch %d", rank, current + 1
        )
        position = {"epoch": current + 1, "group": 0, "index": 0}


AfterStep = Callable[[int, dict[str, Any]], None]
"""``after_step(rank, state)``: called on every worker after each optimizer step (``state["step"]``
the step just taken, ``state["attempt"]`` 0 on the first attempt). Production runs install none;
the tests install one to inject faults (a worker that SIGKILLs itself mid-run)."""


@dataclass
class _Worker:
    """What one worker's loop holds between its functions."""

    cfg: TrainJobConfig
    rank: int
    world: int
    device: torch.device
    model: Any
    """The :class:`MeerkatModel` (sharded in place under FSDP); checkpoints read and write it."""
    wrapped: Any
    """What the loop calls: the DDP wrapper under DDP, the model itself under FSDP."""
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    sched: Any
    state: dict[str, Any]
    """Step, epoch, batch in the epoch, stream position, attempt: what a checkpoint keeps."""
    resumed: bool


def _setup(loop_config: dict[str, Any]) -> _Worker:
    """Seed, build the model and optimizer, and restore the run's latest checkpoint if there is one."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(TrainJobConfig, loop_config["job"])
    model_cfg = from_dict(ModelConfig, loop_config["model"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed + rank)
    device = ray.train.torch.get_device()
    model, wrapped = _setup_model(cfg, model_cfg, device)
    params, opt, sched = _setup_optimizer(cfg, model)
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "seed": cfg.seed, "pretrained": cfg.pretrained}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = _restore(checkpoint, model, opt, sched)
        logger.info(
            "rank %d resumed at step %d (epoch %d, batch %d; written by %d %s workers)",
            rank, state["step"], state["epoch"], state["batch_in_epoch"],
            state.get("world_size", 0), state.get("strategy", "?"),
        )  # fmt: skip
    state["attempt"] = state.get("attempt", -1) + 1 if checkpoint is not None else 0
    state.update(world_size=world, strategy=cfg.scaling.strategy)
    return _Worker(
        cfg, rank, world, device, model, wrapped, params, opt, sched, state, checkpoint is not None
    )


def _start_tracking(w: _Worker, loop_config: dict[str, Any]) -> None:
    """Collective: rank 0 joins the run's MLflow run and logs where the workers run, the share of
    the frozen base each holds, and (on a restart) the step the run picked up at."""
    import mlflow
    import ray

    from meerkat_core import parallel

    nodes = [None] * w.world
    torch.distributed.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    fractions = [0.0] * w.world
    torch.distributed.all_gather_object(fractions, parallel.shard_fraction(w.model, frozen=True))
    if w.rank != 0:
        return
    mlflow.set_tracking_uri(loop_config["tracking_uri"])
    mlflow.start_run(run_id=loop_config["mlflow_run_id"])
    mlflow.set_tag("meerkat.worker_nodes", ",".join(nodes))
    mlflow.log_metrics({f"train/frozen_shard_fraction/rank{r}": f for r, f in enumerate(fractions)})
    print(f"frozen parameters held per rank: {[round(f, 4) for f in fractions]}", flush=True)
    if w.resumed:  # one point per restart: where the run picked up again
        mlflow.log_metric("train/resumed_at_step", w.state["step"], step=w.state["step"])


def _train_step(w: _Worker, batches, window: _Window) -> float:
    """One optimizer step: ``grad_accum`` micro-batches (gradients reduced on the last), clipping,
    the optimizer and the schedule; returns the gradient norm."""
    accum = w.cfg.grad_accum
    for micro in range(1, accum + 1):
        t_wait = time.perf_counter()
        w.state["epoch"], w.state["batch_in_epoch"], batch = next(batches)
        window.wait_s += time.perf_counter() - t_wait
        _trace(w.cfg, w.rank, w.state, list(batch["__key__"]))
        losses = _forward_backward(w.wrapped, batch, accum, w.device, sync=micro == accum)
        window.add(losses, len(batch["input_ids"]))
    grad_norm = _optimizer_step(w.cfg, w.params, w.opt, w.sched)
    w.state["step"] += 1
    return grad_norm


def _log(w: _Worker, window: _Window, grad_norm: float) -> None:
    """Collective: the window's metrics (means over the ranks); rank 0 logs them with the skip counts."""
    import mlflow

    from pipelines.data import skip_counts

    step, metrics = w.state["step"], window.metrics(w.world, w.sched.get_last_lr()[0], grad_norm)
    if w.rank != 0:
        return
    metrics.update({f"train/skipped/{k}": float(v) for k, v in skip_counts().items()})
    mlflow.log_metrics(metrics, step=step)
    print(
        f"step {step}/{w.cfg.optim.max_steps} "
        + " ".join(f"{k[6:]}={v:.4g}" for k, v in metrics.items() if "/skipped/" not in k),
        flush=True,
    )


def _checkpoint(w: _Worker) -> None:
    """Collective: every rank's stream position (streaming), then every rank writes its part."""
    if not w.cfg.data.cache:
        w.state["streams"] = _stream_positions(w.state)
    _save(w.model, w.opt, w.sched, w.state, w.state["step"])


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The recipe every Ray Train worker runs: set up (and restore), then step, log, checkpoint."""
    import mlflow

    from pipelines.data import MeerkatCollate

    w = _setup(loop_config)
    _start_tracking(w, loop_config)
    cfg, after_step = w.cfg, loop_config.get("after_step")
    batches = _batches(cfg, loop_config, MeerkatCollate(w.model.tokenizer.pad_token_id), w.rank, w.state)
    window = _Window()
    w.wrapped.train()
    while w.state["step"] < cfg.optim.max_steps:
        grad_norm = _train_step(w, batches, window)
        if after_step is not None:
            after_step(w.rank, w.state)
        last = w.state["step"] == cfg.optim.max_steps
        if w.state["step"] % cfg.log_every == 0 or last:
            _log(w, window, grad_norm)
            window = _Window()
        if w.state["step"] % cfg.checkpoint.every == 0 or last:
            _checkpoint(w)
    if w.rank == 0:
        mlflow.end_run()


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------


def model_changes(recorded: dict[str, Any], model_cfg: ModelConfig) -> list[str]:
    """``model.<field>: <run's value> -> <this job's>`` for each model field a resumed run would change.

    ``recorded`` is the ``model`` section of the run's ``config/resolved.yaml``; a field added to
    :class:`~meerkat_core.config.ModelConfig` since the run started reads as its default, the value
    the run was trained with.
    """
    from pipelines.config import flatten

    before = flatten(to_dict(from_dict(ModelConfig, recorded)))
    after = flatten(to_dict(model_cfg))
    return [
        f"model.{k}: {before.get(k)!r} -> {after.get(k)!r}"
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
    ]


def _check_resumed_model(run_id: str, cfg: TrainJobConfig, model_cfg: ModelConfig) -> None:
    """Refuse to resume run ``cfg.name`` with another model than the one it started with, naming the
    fields, before any worker starts (its checkpoint would be refused too, with less to go on; a
    change that keeps every shape, a loss weight, would be taken without a word)."""
    import mlflow
    import yaml

    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/config/resolved.yaml")
    except (mlflow.exceptions.MlflowException, OSError) as err:  # no record: the checkpoint check remains
        logger.warning(
            "run %s has no config/resolved.yaml to compare with (%s)", cfg.name, type(err).__name__
        )
        return
    changes = model_changes(yaml.safe_load(text)["model"], model_cfg)
    if changes:
        raise ValueError(
            f"training run {cfg.name!r} exists and resuming it would change its model: "
            + "; ".join(changes)
            + ". Resubmit with the run's values (e.g. model.<field>=<value>) or under a new name."
        )


def _mlflow_run(
    cfg: TrainJobConfig, params: dict[str, Any], config_yaml: str, model_cfg: ModelConfig | None = None
) -> str:
    """The MLflow run of this training run: found by tag when resuming (refused if ``model_cfg`` is
    another model than the run's, :func:`model_changes`), else created with params."""
    import mlflow

    mlflow.set_experiment(cfg.mlflow.experiment)
    exp = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    found = mlflow.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`meerkat.run_name` = '{cfg.name}'",
        output_format="list",
        max_results=1,
    )
    job_id = os.environ.get("RAY_JOB_SUBMISSION_ID") or os.environ.get("RAY_JOB_ID") or "local"
    if found:
        run_id = found[0].info.run_id
        if model_cfg is not None:
            _check_resumed_model(run_id, cfg, model_cfg)
        with mlflow.start_run(run_id=run_id):
            mlflow.set_tags({**cfg.mlflow.tags, "meerkat.last_ray_job": job_id})
        return run_id
    with mlflow.start_run(run_name=cfg.name) as run:
        mlflow.set_tags(
            {
                **cfg.mlflow.tags,
                "meerkat.run_name": cfg.name,
                "meerkat.ray_job": job_id,
                "meerkat.last_ray_job": job_id,
            }
        )
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            mlflow.log_params(dict(items[i : i + 100]))
        mlflow.log_text(config_yaml, "config/resolved.yaml")
        return run.info.run_id


def epochs_needed(cfg: TrainJobConfig, per_epoch: float) -> int:
    """Epochs of the training stream: enough for ``max_steps`` with a margin for what gets dropped.

    Each worker drops its last partial batch, and the task-mixing draw varies around its
    expectation; the margin (25 % and one epoch) covers both. The loop re-reads the stream should
    it still run short.
    """
    samples = cfg.optim.max_steps * cfg.grad_accum * cfg.optim.batch_size * cfg.scaling.num_workers
    if per_epoch <= 0:
        raise ValueError(f"the split at {cfg.data.uri} yields no samples for the task mix asked")
    return max(1, math.ceil(1.25 * samples / per_epoch) + 1)


def run(cfg: TrainJobConfig, *, after_step: AfterStep | None = None) -> dict[str, Any]:
    """Train on the connected Ray cluster; returns the MLflow run id, registered version and checkpoint.

    ``after_step``: see :data:`AfterStep` (tests only); it travels to the workers with the loop's
    config, so it must pickle (a function or instance of an importable module).
    """
    import mlflow
    import ray.data
    import ray.train
    import yaml
    from ray.train.torch import TorchConfig, TorchTrainer

    from meerkat_core import checkpoint
    from pipelines import registry, storage
    from pipelines.config import flatten, resolve_model
    from pipelines.data import build_cached_epochs, check_shards, samples_per_epoch, skip_counter, skip_counts

    model_cfg = resolve_model(cfg.model)
    resolved = {"job": to_dict(cfg), "model": to_dict(model_cfg)}
    tracking_uri = (
        cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    )
    mlflow.set_tracking_uri(tracking_uri)
    params = {k: v for k, v in flatten(resolved).items() if k != "job.trace_dir"}
    run_id = _mlflow_run(cfg, params, yaml.safe_dump(resolved, sort_keys=False), model_cfg)

    tokenizer_dir = model_cfg.tokenizer if cfg.pretrained else None
    # Per-operator progress bars turn into thousands of lines in a job's log; the loop logs its own.
    ray.data.DataContext.get_current().enable_progress_bars = False
    skip_counter()  # the driver owns the job's skip counter; every stage reports to it
    cached = None
    if cfg.data.cache:
        t0 = time.perf_counter()
        cached = build_cached_epochs(cfg.data, model_cfg, tokenizer_dir)
        epochs_per_pass = 0  # one epoch per iteration, counted by the loop
        logger.info("split preprocessed once and cached in %.0f s", time.perf_counter() - t0)
    else:  # each worker streams its own share (_batches): resumable exactly, nothing split at run time
        check_shards(cfg.data.uri)
        epochs_per_pass = epochs_needed(cfg, samples_per_epoch(cfg.data))
        logger.info("training stream: %d epochs of %s", epochs_per_pass, cfg.data.uri)
    fs, path = storage.pyarrow_fs(cfg.storage_uri)
    if not cfg.storage_uri.startswith("s3://"):
        Path(path).mkdir(parents=True, exist_ok=True)
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "job": to_dict(cfg),
            "model": to_dict(model_cfg),
            "mlflow_run_id": run_id,
            "tracking_uri": tracking_uri,
            "epochs_per_pass": epochs_per_pass,
            "cached": cached,
            "after_step": after_step,
        },
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=resources,
            placement_strategy=cfg.scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {cfg.name} finished without a checkpoint")
    skipped = skip_counts()
    version = None
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        with result.checkpoint.as_directory() as ckpt_dir:
            # the sharded training checkpoint -> one model directory of full trainable tensors
            model_dir = checkpoint.consolidate(ckpt_dir, Path(tmp) / "meerkat")
        mlflow.log_metrics({f"train/skipped_total/{k}": float(v) for k, v in skipped.items()})
        mlflow.set_tag("meerkat.checkpoint", result.checkpoint.path)
        version = registry.log_and_register(model_dir, registered_name=cfg.mlflow.register_as)
    out = {
        "mlflow_run_id": run_id,
        "registered_version": version,
        "checkpoint": result.checkpoint.path,
        "skipped": skipped,
    }
    print(json.dumps(out))
    return out


def main(argv: list[str] | None = None, *, after_step: AfterStep | None = None) -> dict[str, Any]:
    """``python -m pipelines.train [--config FILE] [a.b.c=value ...]`` (default: ``tiny.yaml``)."""
    from pipelines.config import CONFIG_DIR, from_argv
    from pipelines.raylib import init_ray

    cfg = from_argv(
        TrainJobConfig,
        argv,
        default_config=CONFIG_DIR / "tiny.yaml",
        description="Meerkat LoRA fine-tuning on Ray Train.",
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    init_ray()
    return run(cfg, after_step=after_step)


if __name__ == "__main__":
    # Run the importable module's main, not __main__'s: Ray pickles functions and config classes
    # by reference only when they live in an importable module.
    from pipelines.train import main as _main

    _main()
