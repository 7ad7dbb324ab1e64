"""Connecting a job's driver to Ray: the cluster it was submitted to, or a local one on loopback."""

from __future__ import annotations

import logging
import os

import ray

logger = logging.getLogger(__name__)


def init_ray(num_cpus: int | None = None) -> None:
    """Join the running cluster (``ray job submit``, ``RAY_ADDRESS`` or a local ``ray start``);
    without one, start an in-process Ray bound to 127.0.0.1 with no dashboard."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address="auto", log_to_driver=True)
        logger.info("joined the Ray cluster at %s", ray.get_runtime_context().gcs_address)
    except (ConnectionError, RuntimeError):
        # Logical CPUs above the physical count: training workers, data actors and stream tasks each
        # reserve one, and on a 2-core laptop they would otherwise wait on each other forever.
        ray.init(
            num_cpus=num_cpus or max(6, os.cpu_count() or 1),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
        )
        logger.info("no Ray cluster found: started a local one on 127.0.0.1")
