"""Deploy ``serve/config.yaml`` to a running Ray cluster and wait until it answers (``meerkat serve``).

::

    meerkat serve [--model REF] [--port 8000] [--max-batch-size N] [--batch-wait-timeout-s S]
    meerkat serve status      # the application's state and its replicas
    meerkat serve down        # remove the application

``meerkat serve`` targets the local stack (it reads ``.local-stack/stack.env``, or ``--dir``); with
``python -m serve.deploy --address http://<dashboard>:8265`` (or ``$RAY_ADDRESS``) any cluster.
This is ``serve deploy`` with overrides: the config is sent to the Ray dashboard's REST API and
the Serve controller builds the application from ``serve.app:app`` on the cluster. The model is
``--model``, else ``$MEERKAT_MODEL_REF``, else the config's. When ``$MEERKAT_API_TOKEN`` is set,
only its SHA-256 goes into the config, and clients must send the token.

A config deploy declares *all* of a cluster's config-deployed applications, so other
applications' configs are read back and sent along unchanged, and ``down`` keeps them too.
Changing only the batching (``user_config``) updates the running replicas in place.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from serve import auth
from serve.settings import MODEL_REF_ENV

CONFIG = Path(__file__).with_name("config.yaml")
APP_NAME = "meerkat"
MODEL_DEPLOYMENT = "ModelReplica"
"""The model deployment's name in the config (:class:`serve.replica.ModelReplica`)."""


class DeployError(RuntimeError):
    """The application did not come up; the message says what the Serve controller reported."""


def deploy_config(
    path: str | os.PathLike[str] = CONFIG,
    *,
    model: str | None = None,
    port: int | None = None,
    max_batch_size: int | None = None,
    batch_wait_timeout_s: float | None = None,
    api_token_sha256: str | None = None,
) -> dict[str, Any]:
    """The deploy config at ``path`` with the given overrides applied (None: keep the file's)."""
    config = yaml.safe_load(Path(path).read_text())
    app = next(a for a in config["applications"] if a["name"] == APP_NAME)
    args = app.setdefault("args", {})
    if model is not None:
        args["model"] = model
    if api_token_sha256 is not None:
        args["api_token_sha256"] = api_token_sha256
    if port is not None:
        config.setdefault("http_options", {})["port"] = port
    model_deployment = next(d for d in app["deployments"] if d["name"] == MODEL_DEPLOYMENT)
    batching = model_deployment.setdefault("user_config", {})
    if max_batch_size is not None:
        batching["max_batch_size"] = max_batch_size
    if batch_wait_timeout_s is not None:
        batching["batch_wait_timeout_s"] = batch_wait_timeout_s
    return config


def base_url(config: dict[str, Any]) -> str:
    http = config.get("http_options", {})
    return f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"


def _client(address: str) -> Any:
    # The client of `serve deploy`; it reads Ray's token settings (RAY_AUTH_*) from the environment.
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    return ServeSubmissionClient(address)


def _other_apps(details: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        app["deployed_app_config"]
        for name, app in details.get("applications", {}).items()
        if name != APP_NAME and app.get("deployed_app_config")
    ]


def application(address: str) -> dict[str, Any] | None:
    """The Serve controller's details of the application (status, deployments, replicas), or None."""
    return _client(address).get_serve_details().get("applications", {}).get(APP_NAME)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def deploy(address: str, config: dict[str, Any], *, timeout_s: float = 600.0) -> dict[str, Any]:
    """Deploy ``config`` and wait until the application runs and ``/healthz`` answers.

    Returns the application's details. Raises DeployError when Serve reports a failed deploy or
    the application is not up within ``timeout_s``.
    """
    client = _client(address)
    before = client.get_serve_details()
    previous = before.get("applications", {}).get(APP_NAME, {}).get("last_deployed_time_s", 0.0)
    payload = copy.deepcopy(config)
    payload["applications"] = [*_other_apps(before), *config["applications"]]
    client.deploy_applications(payload)
    deadline = time.monotonic() + timeout_s
    url = base_url(config)
    while time.monotonic() < deadline:
        app = client.get_serve_details().get("applications", {}).get(APP_NAME)
        if app is not None and app.get("last_deployed_time_s", 0.0) > previous:
            if app["status"] == "DEPLOY_FAILED":
                raise DeployError(f"deploy failed: {app.get('message', '')}")
            if app["status"] == "RUNNING" and _healthy(url):
                return app
        time.sleep(1.0)
    raise DeployError(f"the application was not running within {timeout_s:.0f} s")


def shutdown(address: str) -> None:
    """Remove the application, keeping the cluster's other config-deployed applications."""
    client = _client(address)
    details = client.get_serve_details()
    if APP_NAME not in details.get("applications", {}):
        return
    others = _other_apps(details)
    if others:
        kept = {key: details[key] for key in ("proxy_location", "http_options") if key in details}
        client.deploy_applications({**kept, "applications": others})
    else:
        client.delete_applications()


def _print_status(app: dict[str, Any] | None) -> None:
    if app is None:
        print(f"application {APP_NAME!r} is not deployed")
        return
    print(f"{APP_NAME}: {app['status']} {app.get('message', '')}".rstrip())
    for name, deployment in app.get("deployments", {}).items():
        replicas = ", ".join(f"{r['state']} pid {r.get('pid')}" for r in deployment.get("replicas", []))
        print(f"  {name}: {deployment['status']} [{replicas}]")


def main(argv: list[str] | None = None, *, prog: str = "python -m serve.deploy") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=("up", "status", "down"), default="up")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray dashboard URL")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--model", default=os.environ.get(MODEL_REF_ENV), help="model reference")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default: the config's)")
    parser.add_argument("--max-batch-size", type=int, default=None)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=None)
    parser.add_argument("--timeout-s", type=float, default=600.0, help="wait at most this long")
    args = parser.parse_args(argv)
    if not args.address or "://" not in args.address:
        parser.error("give the Ray dashboard URL: --address http://127.0.0.1:8265 (or set RAY_ADDRESS)")
    if args.action == "status":
        _print_status(application(args.address))
        return 0
    if args.action == "down":
        shutdown(args.address)
        print(f"application {APP_NAME!r} removed")
        return 0
    config = deploy_config(
        args.config,
        model=args.model,
        port=args.port,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_timeout_s,
        api_token_sha256=auth.digest_from_env(),
    )
    app_config = next(a for a in config["applications"] if a["name"] == APP_NAME)
    print(f"deploying {app_config['args'].get('model')} to {args.address} ...", flush=True)
    try:
        deploy(args.address, config, timeout_s=args.timeout_s)
    except DeployError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    url = base_url(config)
    print(f"demo page  {url}/")
    print(f"API docs   {url}/docs")
    print(f"OpenAI API {url}/v1  (POST /v1/chat/completions)")
    print(f"tasks      {url}/v1/ground | localize | factcheck | answer | caption")
    print(f"health     {url}/healthz")
    if auth.digest_from_env():
        print(f"auth       bearer token required (${auth.TOKEN_ENV})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
