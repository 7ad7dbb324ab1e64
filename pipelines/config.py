"""Job configuration: YAML files under ``pipelines/configs/`` plus dotted command-line overrides.

    cfg = load_config(TrainJobConfig, "pipelines/configs/tiny.yaml", ["optim.lr=1e-4", "model.loss.lambda_ot=0"])

Every job (``build_avfit``, ``train``, ``evaluate``, ``ablate``, ``infra.demo``) is run the same
way: a typed config and a plain function taking it (``train.run(cfg)``, ``evaluate.run(cfg)``,
...), and a ``main(argv)`` that reads the config from its command line with :func:`from_argv`::

    python -m pipelines.<job> [--config FILE] [a.b.c=value ...]

This module is the one owner of that command line and of the overrides' syntax. Jobs that compose
build configs and call the functions (the ablation) or submit the jobs as a user would (the demo),
and read what they produced from their return values or MLflow, never from their output.

Each job declares its config as a tree of frozen dataclasses (fields documented where declared);
:func:`load_config` reads the YAML, applies ``a.b.c=value`` overrides (the value parsed as YAML, so
``1e-4``, ``true``, ``[1, 2]`` work) and builds the tree with
:func:`meerkat_core.config.from_dict`, which rejects unknown keys and wrong types. A YAML may name
``base: other.yaml`` (relative to itself) to start from another file and change only what differs.

The model section is ``{preset: tiny|paper, ...}``: the named preset with any of its fields
overridden (``model.loss.lambda_ac=0``); :func:`resolve_model` turns it into a ``ModelConfig``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml

from meerkat_core.config import PRESETS, ModelConfig, from_dict, to_dict

T = TypeVar("T")
CONFIG_DIR = Path(__file__).parent / "configs"


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in update.items():
        out[k] = (
            deep_merge(out[k], v)
            if isinstance(v, dict) and isinstance(out.get(k), dict)
            else copy.deepcopy(v)
        )
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file with its ``base:`` chain merged in (the file's own keys win)."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping")
    base = data.pop("base", None)
    if base is not None:
        data = deep_merge(read_yaml(path.parent / base), data)
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", ...]`` applied to nested dicts (values parsed as YAML)."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form a.b.c=value")
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[leaf] = parse_value(raw)
    return out


# Numbers in exponent form without a dot ("1e-4"), which YAML 1.1 (PyYAML) reads as strings.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_value(raw: str) -> Any:
    """An override's value: YAML (``true``, ``null``, ``[1, 2]``, ``{a: 1}``), with ``1e-4`` a number."""
    if _EXPONENT_FLOAT.fullmatch(raw.strip()):  # unquoted: a quoted '1e-4' stays a string
        return float(raw)
    return yaml.safe_load(raw)


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    data = read_yaml(path) if path else {}
    return from_dict(cls, apply_overrides(data, overrides or []))


def from_argv(
    cls: type[T], argv: list[str] | None, *, default_config: str | Path | None = None, description: str = ""
) -> T:
    """A job's config from its command line: ``[--config FILE] [a.b.c=value ...]``.

    ``FILE`` defaults to ``default_config`` (no file: the dataclass defaults); the overrides are
    applied in order, as :func:`load_config` does.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config",
        default=default_config,
        help=f"YAML config (pipelines/configs/); default: {default_config or 'none, the built-in defaults'}",
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides a.b.c=value (values parsed as YAML)")
    args = parser.parse_args(argv)
    return load_config(cls, args.config, args.overrides)


def resolve_model(spec: dict[str, Any]) -> ModelConfig:
    """``{preset: name, <field overrides>}`` -> the preset's ModelConfig with the overrides applied."""
    spec = dict(spec)
    name = spec.pop("preset", "tiny")
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return from_dict(ModelConfig, deep_merge(to_dict(PRESETS[name]), spec))


def fingerprint(cfg: Any) -> str:
    """A short stable hash of a config (what makes two runs or builds the same)."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"a.b.c": value}`` (MLflow params)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}
