"""pipelines.raylib.init_ray: join a running cluster, else start a local Ray on loopback (Ray mocked)."""

from __future__ import annotations

import types

import pytest

from pipelines import raylib


@pytest.fixture
def fake_ray(monkeypatch):
    calls: list[dict] = []
    state = {"initialized": False, "cluster": False}

    def init(**kwargs):
        calls.append(kwargs)
        if kwargs.get("address") == "auto" and not state["cluster"]:
            raise ConnectionError("no cluster")
        state["initialized"] = True

    context = types.SimpleNamespace(gcs_address="10.0.0.1:6379")
    fake = types.SimpleNamespace(
        init=init,
        is_initialized=lambda: state["initialized"],
        get_runtime_context=lambda: context,
    )
    monkeypatch.setattr(raylib, "ray", fake)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # init_ray sets it; restored after the test
    return calls, state


def test_joins_a_running_cluster(fake_ray):
    calls, state = fake_ray
    state["cluster"] = True
    raylib.init_ray()
    assert calls == [{"address": "auto", "log_to_driver": True}]


def test_without_a_cluster_starts_a_local_ray_on_loopback(fake_ray):
    calls, _ = fake_ray
    raylib.init_ray(num_cpus=3)
    assert calls[1] == {"num_cpus": 3, "include_dashboard": False, "_node_ip_address": "127.0.0.1"}
    raylib.init_ray()  # already initialised: nothing more
    assert len(calls) == 2


def test_a_local_ray_gets_at_least_six_logical_cpus(fake_ray, monkeypatch):
    calls, _ = fake_ray
    monkeypatch.setattr(raylib.os, "cpu_count", lambda: 2)
    raylib.init_ray()
    assert calls[1]["num_cpus"] == 6
