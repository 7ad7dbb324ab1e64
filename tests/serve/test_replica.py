"""The model replica without Ray: its description for the ingress, health check and batching config."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from serve import replica
from serve.batcher import DynamicBatcher
from serve.replica import BatchingConfig, ModelInfo, ModelReplica


@pytest.fixture()
def bare_replica():
    """The replica's class as written (under Serve's wrapper), its state set by hand: no model load."""
    user_class = ModelReplica.func_or_class
    loaded = object.__new__(user_class)
    loaded.info = ModelInfo("meerkat-tiny/3", None, None)
    loaded.busy_since = None
    return loaded


def test_the_replica_describes_its_model_and_answers_pings(bare_replica):
    assert bare_replica.describe() is bare_replica.info
    assert bare_replica.ping() == "meerkat-tiny/3"


def test_a_batch_stuck_past_the_limit_fails_the_health_check(bare_replica):
    bare_replica.check_health()
    bare_replica.busy_since = time.monotonic()
    bare_replica.check_health()
    bare_replica.busy_since = time.monotonic() - replica.STUCK_AFTER_S - 1
    with pytest.raises(RuntimeError, match="generating for over"):
        bare_replica.check_health()


def test_batching_config_is_the_deployments_user_config():
    assert ModelReplica.user_config == BatchingConfig().model_dump()
    assert ModelReplica.max_ongoing_requests > BatchingConfig().max_batch_size
    with pytest.raises(ValidationError):
        BatchingConfig.model_validate({"max_batch_size": 0})
    with pytest.raises(ValidationError):
        BatchingConfig.model_validate({"max_batch_size": 4, "unknown": 1})


def test_reconfigure_reaches_the_batcher_and_batch_stats_reports_it(bare_replica):
    bare_replica.batcher = DynamicBatcher(lambda items: None, max_batch_size=16, wait_s=0.01)
    bare_replica.reconfigure({"max_batch_size": 4, "batch_wait_timeout_s": 0.2})
    assert (bare_replica.batcher.max_batch_size, bare_replica.batcher.wait_s) == (4, 0.2)
    bare_replica.batcher.batch_sizes.update({1: 2, 4: 1})
    assert bare_replica.batch_stats() == {1: 2, 4: 1}
