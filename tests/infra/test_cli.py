"""The ``meerkat`` command's dispatch: each job's module gets the rest of the command line."""

from __future__ import annotations

import importlib

import pytest

from infra import cli


@pytest.mark.parametrize("command", sorted(cli.JOBS))
def test_every_job_command_runs_its_modules_main_with_the_rest(command, monkeypatch):
    module = importlib.import_module(cli.JOBS[command])
    seen = []
    monkeypatch.setattr(module, "main", lambda argv: seen.append(argv))
    assert cli.main([command, "--config", "x.yaml", "a.b=1"]) == 0
    assert seen == [["--config", "x.yaml", "a.b=1"]]


def test_job_modules_read_the_shared_command_line():
    """Every job but the quickstart takes ``[--config FILE] [a.b.c=value ...]`` (config.from_argv)."""
    import inspect

    for command, name in cli.JOBS.items():
        if command == "quickstart":
            continue
        source = inspect.getsource(importlib.import_module(name).main)
        assert "from_argv(" in source, name


def test_usage_and_unknown_commands(capsys):
    assert cli.main([]) == 2
    assert cli.main(["nope"]) == 2
    assert cli.main(["--help"]) == 0
    assert "meerkat build|train|evaluate|ablate" in capsys.readouterr().out


def test_compare_reads_its_flags(monkeypatch, capsys):
    from pipelines import ablate

    calls = []
    monkeypatch.setattr(ablate, "compare", lambda *args: calls.append(args) or "| table |")
    assert cli.main(["compare", "--ablation", "abl-1", "--metrics", "arig/*/ciou", "*"]) == 0
    assert calls == [("abl-1", "meerkat", None, ["arig/*/ciou", "*"])]
    assert "| table |" in capsys.readouterr().out
