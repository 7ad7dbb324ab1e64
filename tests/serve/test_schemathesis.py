"""Schemathesis against the deployed application's OpenAPI schema (integration).

Its CLI (``schemathesis run``), in all its generation modes (valid and invalid data) and phases,
25 examples per operation with a fixed seed, a 60 s limit per request, at most 10 minutes in all.
Every check runs except ``positive_data_acceptance``: a schema cannot say that ``image`` must hold
a decodable picture, so schema-valid random media are rightly refused with 400. What the run must
show is no server error, and responses, status codes and content types as documented.

(The CLI rather than the pytest plugin: the plugin's lazy schema loader, needed for a schema
that exists only once a fixture has deployed the service, uses pytest internals that pytest 9
removed.)
"""

from __future__ import annotations

import subprocess
import sys

MAX_EXAMPLES = 25
RUN_TIMEOUT_S = 600


def test_schemathesis_finds_no_server_error(meerkat_service, tmp_path):
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{meerkat_service.url}/openapi.json",
        "--header", f"Authorization: Bearer {meerkat_service.token}",
        "--checks", "all",
        "--exclude-checks", "positive_data_acceptance",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", "1",
        "--request-timeout", "60",
        "--workers", "1",
        "--no-color",
        "--report", "junit",
        "--report-dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=tmp_path)
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary + result.stderr[-2000:]
    assert "Tested: 8" in summary, summary
