"""The Meerkat Ray Serve application: grounded answers over HTTP.

Two deployments, one per resource profile, composed by the application builder :func:`app`:

- :class:`serve.replica.ModelReplica` holds a trained model, loaded by
  :func:`pipelines.registry.load` from a registry name and version or alias
  (``models:/meerkat-tiny/3``, ``models:/meerkat-tiny@prod``), a run, an ``s3://`` checkpoint or a
  local directory, and generates for dynamic batches of preprocessed requests (GPUs, when given).
- :class:`serve.ingress.MeerkatAPI` is the FastAPI ingress (CPU): authentication, size and type
  checks, decoding and feature extraction, prompt rendering and answer parsing. Every request is
  fully validated and turned into model tensors there, so that nothing that reaches a batch can
  fail it.

The rest of the package, by concept: :mod:`serve.settings` (the builder's arguments),
:mod:`serve.api` (the FastAPI app, error responses, event streams), :mod:`serve.tasks` (the task
endpoints' table), :mod:`serve.schemas` (the bodies), :mod:`serve.inputs` (reading and checking
requests), :mod:`serve.generation` (batches, sampling settings, isolation of failures),
:mod:`serve.auth`, :mod:`serve.errors`, :mod:`serve.examples` (the demo page's scenes) and
:mod:`serve.deploy` (``meerkat serve``).

Run it::

    serve run serve.app:app model=models:/meerkat-tiny/latest     # a shell on the cluster
    serve deploy serve/config.yaml -a http://127.0.0.1:8265        # a running cluster
    meerkat serve                                                   # the local stack

Decisions made here:

- The model reference is resolved once, in the application builder (at deploy), to a fixed
  registry version (:func:`pipelines.registry.resolve_version`), and that version is what every
  model replica loads: ``models:/name/latest`` can never mean two versions in one application.
- Overload is refused at once: each deployment has ``max_queued_requests`` (``serve/config.yaml``);
  ``graceful_shutdown_timeout_s`` is above ``request_timeout_s``, so a scale-down or redeploy lets
  admitted requests finish.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray.serve import Application

from pipelines import registry
from serve.ingress import MeerkatAPI
from serve.replica import ModelReplica
from serve.settings import MODEL_REF_ENV, AppArgs


def served_name(ref: str) -> str:
    """The public name of a model reference: the registry name/version, the run's model path, or
    the directory name."""
    parsed = registry.parse_model_ref(ref)
    if parsed.kind in ("registry", "run"):
        return parsed.body
    return Path(ref.rstrip("/")).name or ref


def app(args: dict[str, Any] | AppArgs) -> Application:
    """The application builder: ``serve run serve.app:app model=<ref>`` or ``import_path: serve.app:app``."""
    settings = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    ref = settings.model or os.environ.get(MODEL_REF_ENV)
    if not ref:
        raise ValueError(f"no model reference: pass the argument model=<ref> or set ${MODEL_REF_ENV}")
    ref = registry.resolve_version(ref)  # once, at deploy: every replica loads this version
    name = settings.served_model_name or served_name(ref)
    settings = settings.model_copy(update={"model": ref, "served_model_name": name})
    return MeerkatAPI.bind(ModelReplica.bind(ref, name, settings.device), settings)
