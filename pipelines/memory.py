"""Per-GPU training memory of a training config, from the memory model of :mod:`meerkat_core.memory`.

    python -m pipelines.memory --config pipelines/configs/paper.yaml [--workers N] [--gpu-gb 24 40 80]

Prints the breakdown at the config's micro-batch (without and with activation checkpointing), then
for each GPU size whether that micro-batch fits, the largest micro-batch that fits, and the largest
one that also divides the config's effective batch over the workers.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from meerkat_core import memory


def _gb(n: int) -> str:
    return f"{n / 1e9:8.2f}"


def table(
    model_cfg: memory.ModelConfig,
    *,
    micro_batch: int,
    workers: int,
    strategy: str,
    gpu_gb: Sequence[float],
    effective_batch: int | None,
    answer_tokens: int = memory.ANSWER_TOKENS,
) -> str:
    """The text :func:`main` prints."""
    kwargs = {"answer_tokens": answer_tokens}
    plain = memory.estimate(model_cfg, micro_batch, None, workers, strategy, **kwargs)
    ckpt = memory.estimate(
        model_cfg, micro_batch, None, workers, strategy, activation_checkpointing=True, **kwargs
    )
    seq = plain.seq_len
    lines = [
        f"per-GPU memory, GB (10^9 bytes): micro-batch {micro_batch}, sequence {seq} tokens "
        f"({model_cfg.max_text_tokens - 2} text + {model_cfg.llm_image_tokens} image + "
        f"{model_cfg.audio.num_tokens} audio), {workers} workers, {strategy}",
        "",
        f"{'':22}{'no act. ckpt':>14}{'act. ckpt':>12}",
    ]
    for name in memory.MemoryEstimate.BREAKDOWN:
        lines.append(
            f"{name.replace('_', ' '):22}{_gb(getattr(plain, name)):>14}{_gb(getattr(ckpt, name)):>12}"
        )
    lines.append(f"{'total':22}{_gb(plain.total):>14}{_gb(ckpt.total):>12}")
    lines += [
        "",
        f"{'GPU':8}{'fits mb ' + str(micro_batch):>12}{'largest mb':>12}{'usable mb':>11}"
        f"{'fits (ckpt)':>13}{'largest (ckpt)':>16}{'usable (ckpt)':>15}",
    ]
    per_worker = None if effective_batch is None else effective_batch // workers
    for gb in gpu_gb:
        row = f"{f'{gb:g} GB':8}"
        cells = []
        for est, ckpt_on in ((plain, False), (ckpt, True)):
            largest = memory.largest_micro_batch(
                model_cfg, gb, None, workers, strategy, activation_checkpointing=ckpt_on, **kwargs
            )
            usable = largest
            if per_worker is not None:
                usable = max((b for b in range(1, largest + 1) if per_worker % b == 0), default=0)
            cells.append(("yes" if est.fits(gb) else "no", largest, usable))
        (f1, l1, u1), (f2, l2, u2) = cells
        row += f"{f1:>12}{l1:>12}{u1:>11}{f2:>13}{l2:>16}{u2:>15}"
        lines.append(row)
    if per_worker is not None:
        lines += [
            "",
            f"usable: divides the effective batch {effective_batch} over {workers} workers ({per_worker})",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from pipelines.config import load_config, resolve_model
    from pipelines.train import TrainJobConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a training config (pipelines/configs/*.yaml)")
    p.add_argument("--workers", type=int, default=None, help="default: the config's scaling.num_workers")
    p.add_argument("--micro-batch", type=int, default=None, help="default: the config's optim.batch_size")
    p.add_argument("--strategy", choices=memory.STRATEGIES, default=None, help="default: the config's")
    p.add_argument("--gpu-gb", type=float, nargs="+", default=list(memory.GPU_SIZES_GB))
    p.add_argument("--answer-tokens", type=int, default=memory.ANSWER_TOKENS)
    args = p.parse_args(argv)
    cfg = load_config(TrainJobConfig, args.config)
    workers = args.workers or cfg.scaling.num_workers
    print(
        table(
            resolve_model(cfg.model),
            micro_batch=args.micro_batch or cfg.optim.batch_size,
            workers=workers,
            strategy=args.strategy or cfg.scaling.strategy,
            gpu_gb=args.gpu_gb,
            effective_batch=cfg.optim.effective_batch,
            answer_tokens=args.answer_tokens,
        )
    )


if __name__ == "__main__":
    main()
