"""The model deployment: a loaded Meerkat model generating answers for batches of requests.

:class:`ModelReplica` loads a trained model by :func:`pipelines.registry.load` (a registry name and
version, a run, an ``s3://`` checkpoint or a local directory) and generates for dynamic batches of
preprocessed requests (:class:`serve.batcher.DynamicBatcher`, which forms a batch when the model is
free; see there why not ``@serve.batch``), through :class:`serve.generation.Generator`. Batch size
and wait come from its ``user_config`` (:class:`BatchingConfig`), so they change on a running
replica without a restart; GPUs come through ``ray_actor_options``.

Decisions made here:

- The ingress asks the replica for its config and tokenizer at start-up (:meth:`ModelReplica.describe`)
  instead of loading the model reference a second time: one download, and the two can never
  disagree.
- Each batch runs on a worker thread, so that the replica keeps queueing requests while one batch
  is generating; the queue is the next batch.
- A batch running longer than :data:`STUCK_AFTER_S` fails Serve's health check, and Serve
  replaces the replica.
- ``graceful_shutdown_timeout_s`` is above the ingress's default request timeout, so a scale-down
  or redeploy lets admitted requests finish.
"""

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import metrics
from transformers import PreTrainedTokenizerBase

from meerkat_core.config import ModelConfig
from pipelines import registry
from serve.batcher import DynamicBatcher
from serve.generation import Completion, Generation, Generator


@dataclass(frozen=True)
class ModelInfo:
    """What the ingress needs to build requests for the model."""

    name: str
    config: ModelConfig
    tokenizer: PreTrainedTokenizerBase


class BatchingConfig(BaseModel):
    """``user_config`` of ``ModelReplica``: applied to running replicas without restarting them."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(16, ge=1)
    """Keep it below the deployment's ``max_ongoing_requests``, or batches never fill."""
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    """How long a batch may wait for more requests, counted from its oldest request's arrival."""


_BATCHING = BatchingConfig()
# Above the default request_timeout_s (60 s), so that admitted requests finish on a scale-down.
GRACEFUL_SHUTDOWN_S = 75.0
# A batch running longer than this means a stuck replica: check_health fails and Serve replaces it.
STUCK_AFTER_S = 300.0


@serve.deployment(
    max_ongoing_requests=32,
    max_queued_requests=64,
    graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S,
    user_config=_BATCHING.model_dump(),
    ray_actor_options={"num_cpus": 1},
)
class ModelReplica:
    """A loaded Meerkat model generating answers for batches of preprocessed requests."""

    def __init__(self, model_ref: str, name: str, device: str = "auto") -> None:
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.model = registry.load(model_ref, device=self.device)
        self.generator = Generator(self.model, self.device)
        self.info = ModelInfo(name, self.model.config, self.model.tokenizer)
        self.busy_since: float | None = None
        self.batcher: DynamicBatcher[Generation, Completion] = DynamicBatcher(
            self._run_batch, _BATCHING.max_batch_size, _BATCHING.batch_wait_timeout_s
        )
        self.batch_size_metric = metrics.Histogram(
            "meerkat_batch_size",
            description="Requests per batch the model replica generated for.",
            boundaries=[1, 2, 4, 8, 16, 32, 64],
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = BatchingConfig.model_validate(user_config)
        self.batcher.max_batch_size = config.max_batch_size
        self.batcher.wait_s = config.batch_wait_timeout_s

    def batch_stats(self) -> dict[int, int]:
        """How many batches of each size this replica has run since it started."""
        return dict(self.batcher.batch_sizes)

    def describe(self) -> ModelInfo:
        return self.info

    def ping(self) -> str:
        return self.info.name

    def check_health(self) -> None:
        """Serve's periodic check: a batch stuck for ``STUCK_AFTER_S`` fails it (the replica is replaced)."""
        if self.busy_since is not None and time.monotonic() - self.busy_since > STUCK_AFTER_S:
            raise RuntimeError(f"a batch has been generating for over {STUCK_AFTER_S:g} s")

    async def generate(self, request: Generation) -> Completion:
        """``request``'s answer, generated in the next batch."""
        return await self.batcher.submit(request)

    async def _run_batch(self, requests: list[Generation]) -> list[Completion]:
        # A worker thread, so that the replica keeps queueing requests while this batch runs.
        self.busy_since = time.monotonic()
        self.batch_size_metric.observe(len(requests))
        try:
            return await asyncio.to_thread(self.generator, requests)
        finally:
            self.busy_since = None
