"""Build AVFIT into WebDataset shards: the procedural world and/or the public sources, in parallel on Ray.

    ray job submit --address http://127.0.0.1:8265 -- \\
        python -m pipelines.build_avfit --config pipelines/configs/avfit_demo.yaml [out_uri=s3://meerkat/avfit]

Output, per split: ``<out_uri>/<split>/shard-*.tar``, ``manifest.json`` (shards, checksums, counts
per task/source/split) and, for the procedural world, ``baselines.json`` (the scores a model must
beat: the constant mean box, a random object's box, the fact-check majority class).

Parallelism: the world's scenes of each split are cut into ranges of ``scenes_per_task`` and every
range, and every (source, split), is one Ray task writing its own shards (``<prefix>-NNNNNN.tar``)
and a part manifest; the driver merges the parts into the split's manifest when all are done.

Idempotent: a split whose manifest already carries this build's fingerprint is left alone. Within
a split, a public source's part whose part manifest carries it is not converted again (a killed
build resumes where it stopped); world parts are always regenerated, since they also yield the
baselines, and the world and the shard writer are deterministic, so a rewritten shard has the same
bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from tqdm import tqdm

from meerkat_core.config import to_dict
from pipelines import storage
from pipelines.avfit import shards, world
from pipelines.avfit.sample import SPLITS
from pipelines.avfit.sources import iter_source
from pipelines.config import fingerprint, from_argv
from pipelines.raylib import init_ray

logger = logging.getLogger("pipelines.build_avfit")


@dataclass(frozen=True)
class WorldSpec:
    """The procedural audio-visual world's share of the build."""

    preset: str = "easy"
    """A key of ``pipelines.avfit.world.WORLD_PRESETS``."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """``WorldConfig`` fields changed from the preset (all splits)."""
    split_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Further changes per split, e.g. ``{val: {min_objects: 2}}`` so that evaluation scenes always
    hold a distractor and only a model that listens can pick the right object."""
    scenes: dict[str, int] = field(default_factory=lambda: {"train": 200, "val": 40, "test": 40})
    """Scenes per split (each gives several samples of the five tasks)."""

    def config(self, split: str) -> world.WorldConfig:
        base = world.WORLD_PRESETS[self.preset]
        changes = {**self.overrides, **self.split_overrides.get(split, {})}
        return dataclasses.replace(base, **changes)


@dataclass(frozen=True)
class SourceSpec:
    """One public dataset converted from its published annotation files."""

    name: str
    """A key of ``pipelines.avfit.sources.SOURCES``."""
    root: str
    """Local directory holding the dataset's annotation files and media, laid out as documented."""
    splits: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class BuildConfig:
    out_uri: str = "data/avfit"
    """Where the splits go: ``s3://bucket/prefix`` or a local directory."""
    world: WorldSpec | None = field(default_factory=WorldSpec)
    """The procedural world; ``null`` to build public sources only."""
    sources: tuple[SourceSpec, ...] = ()
    shard_max_count: int = 256
    shard_max_bytes: int = 256 * 1024 * 1024
    scenes_per_task: int = 50
    seed: int = 0


def _world_part(
    spec: WorldSpec, split: str, start: int, count: int, seed: int, out: str, prefix: str, fp: str
) -> dict:
    cfg = spec.config(split)
    metas = []
    with shards.ShardWriter(
        out, prefix=prefix, fingerprint=fp, manifest_name=f"part-{prefix}.json"
    ) as writer:
        for sample in world.iter_samples(cfg, split, count, seed, start=start):
            if writer.write(sample) and sample["json"]["task"] in ("arig", "avfact"):
                metas.append(sample["json"])
    return {"manifest": writer.close(), "metas": metas}


def _source_part(name: str, root: str, split: str, seed: int, out: str, prefix: str, fp: str) -> dict:
    with shards.ShardWriter(
        out, prefix=prefix, fingerprint=fp, manifest_name=f"part-{prefix}.json"
    ) as writer:
        for sample in iter_source(name, root, split, seed=seed):
            writer.write(sample)
    return {"manifest": writer.close(), "metas": []}


def _built(uri: str, fp: str) -> dict | None:
    """The manifest at ``uri`` if it exists, is valid and carries fingerprint ``fp``; else None."""
    if not storage.exists(uri):
        return None
    try:
        manifest = shards.read_manifest(uri)
    except ValueError as exc:  # unreadable or foreign: rebuild over it
        logger.warning("ignoring the manifest at %s: %s", uri, exc)
        return None
    return manifest if manifest.get("fingerprint") == fp else None


def plan(cfg: BuildConfig) -> dict[str, list[tuple[str, Any, tuple]]]:
    """Per split: the parts to write, as ``(prefix, function, args)``."""
    parts: dict[str, list[tuple[str, Any, tuple]]] = {s: [] for s in SPLITS}
    if cfg.world is not None:
        for split, n in cfg.world.scenes.items():
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r} in world.scenes")
            for start in range(0, n, cfg.scenes_per_task):
                count = min(cfg.scenes_per_task, n - start)
                parts[split].append(
                    (f"world-{start:06d}", _world_part, (cfg.world, split, start, count, cfg.seed))
                )
    for src in cfg.sources:
        for split in src.splits:
            parts[split].append((f"{src.name}", _source_part, (src.name, src.root, split, cfg.seed)))
    return {s: p for s, p in parts.items() if p}


def build(cfg: BuildConfig, *, progress: bool = True) -> dict[str, dict]:
    """Run the build on the connected Ray cluster; returns per split its manifest and baselines."""
    fp = fingerprint(cfg)
    results: dict[str, dict] = {}
    pending: dict[Any, tuple[str, str]] = {}
    done_parts: dict[str, list[dict]] = {}
    for split, parts in plan(cfg).items():
        out = storage.join_uri(cfg.out_uri, split)
        if (manifest := _built(storage.join_uri(out, shards.MANIFEST_NAME), fp)) is not None:
            logger.info("%s: already built with fingerprint %s, left alone", split, fp)
            results[split] = {"manifest": manifest, "reused": True}
            continue
        done_parts[split] = []
        for prefix, fn, args in parts:
            part_uri = storage.join_uri(out, f"part-{prefix}.json")
            if fn is not _world_part and (manifest := _built(part_uri, fp)) is not None:
                done_parts[split].append({"manifest": manifest, "metas": []})
                continue
            ref = ray.remote(num_cpus=1)(fn).remote(*args, out, prefix, fp)
            pending[ref] = (split, prefix)
    bar = tqdm(total=len(pending), desc="AVFIT parts", unit="part", disable=not progress, file=sys.stdout)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        split, prefix = pending.pop(ready[0])
        part = ray.get(ready[0])
        done_parts[split].append(part)
        bar.set_postfix_str(f"{split}/{prefix}: {part['manifest']['total']} samples")
        bar.update()
    bar.close()
    for split, parts in done_parts.items():
        out = storage.join_uri(cfg.out_uri, split)
        manifest = shards.merge_manifests(out, [p["manifest"] for p in parts], fingerprint=fp)
        metas = [m for p in parts for m in p["metas"]]
        result: dict[str, Any] = {"manifest": manifest, "reused": False}
        if metas:
            result["baselines"] = world.baselines({"json": m} for m in metas)
            storage.atomic_write_bytes(
                storage.join_uri(out, "baselines.json"), json.dumps(result["baselines"], indent=1).encode()
            )
        results[split] = result
    return results


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """``python -m pipelines.build_avfit [--config FILE] [a.b.c=value ...]`` (no file: the defaults)."""
    cfg = from_argv(
        BuildConfig, argv, description="Build AVFIT shards (procedural world and public sources)."
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(json.dumps({"build_config": to_dict(cfg)}, indent=1, default=str))
    init_ray()
    t0 = time.perf_counter()
    results = build(cfg)
    for split, r in sorted(results.items()):
        m = r["manifest"]
        state = "reused" if r["reused"] else "built"
        print(
            f"{split:5s} {state}: {m['total']} samples in {len(m['shards'])} shards; tasks {m['counts']['task']}; skipped {m['skipped']}"
        )
        if r.get("baselines"):
            b = r["baselines"]
            print(
                f"      baselines: mean-box mIoU {b['arig_mean_box_miou']:.3f}, random-object mIoU "
                f"{b['arig_random_object_miou']:.3f}, fact-check majority {b['avfact_majority_acc']:.3f}"
            )
    print(f"AVFIT built at {cfg.out_uri} in {time.perf_counter() - t0:.1f}s")
    return results


if __name__ == "__main__":
    # Run the importable module's main, not __main__'s: Ray pickles functions and config classes
    # by reference only when they live in an importable module.
    from pipelines.build_avfit import main as _main

    _main()
