"""The cluster configs, checked statically: no AWS, no Kubernetes API, no docker build.

- ``ray_cluster.yaml`` against the JSON schema shipped inside the installed ``ray`` package, then
  Ray's own defaults and semantic checks (what ``ray up`` runs before it calls AWS).
- ``infra/k8s/*.yaml``: kinds and API versions, the ``python -m pipelines.<job> --config ...``
  entrypoints against the real modules and configs, the RayService against the Serve app, the
  MLflow server against its clients, and the fit of the paper preset on the GPU groups.
- The paper preset's training on every GPU node type of both, by the memory model of
  ``meerkat_core/memory.py``: ``pipelines/configs/paper.yaml``'s micro-batch fits each GPU and is
  the largest usable one on the smallest.
- ``infra/docker/Dockerfile``: its base is Ray's image at the pinned version, it installs the
  project, it does not run as root.
- No file among them holds a credential.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import mlflow
import pytest
import ray
import ray.autoscaler
import yaml
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "ray_cluster.yaml"
K8S_DIR = REPO / "infra" / "k8s"
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SERVE_CONFIG = REPO / "serve" / "config.yaml"
SERVE_IMPORT_PATH = "serve.app:app"
NAMESPACE = "meerkat"
RAY_VERSION = ray.__version__

# Each job module a manifest may run, and the config class its --config file must load into.
JOB_CONFIG_CLASSES = {
    "pipelines.train": "pipelines.train:TrainJobConfig",
    "pipelines.build_avfit": "pipelines.build_avfit:BuildConfig",
}

EXPECTED_API_VERSIONS = {
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "ConfigMap": "v1",
    "PersistentVolumeClaim": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "RayJob": "ray.io/v1",
    "RayService": "ray.io/v1",
}

# vCPUs and GPUs of the instance types the configs name: a node type's declared resources or a
# pod's requests are checked against the machine. Add a row when a config names a new type.
INSTANCE_SHAPES = {
    "m6i.2xlarge": (8, 0),
    "m6i.8xlarge": (32, 0),
    "g5.2xlarge": (8, 1),
    "g5.12xlarge": (48, 4),
    "p4d.24xlarge": (96, 8),
}

# GPU memory (GB, as the memory model counts it) of the GPU instance types: A10G 24 GB, A100 40 GB.
GPU_MEMORY_GB = {
    "g5.2xlarge": 24,
    "g5.12xlarge": 24,
    "p4d.24xlarge": 40,
}

# Fields of the KubeRay ray.io/v1 specs (union over recent KubeRay releases). The API server
# rejects, or silently drops, anything else; a typo here would otherwise surface only on apply.
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "clusterSelector",
    "deletionStrategy",
    "entrypoint",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "entrypointResources",
    "jobId",
    "managedBy",
    "metadata",
    "rayClusterSpec",
    "runtimeEnvYAML",
    "shutdownAfterJobFinishes",
    "submissionMode",
    "submitterConfig",
    "submitterPodTemplate",
    "suspend",
    "ttlSecondsAfterFinished",
}
RAYSERVICE_SPEC_FIELDS = {
    "deploymentUnhealthySecondThreshold",
    "excludeHeadPodFromServeSvc",
    "rayClusterConfig",
    "serveConfigV2",
    "serveService",
    "serviceUnhealthySecondThreshold",
    "upgradeStrategy",
}
RAYCLUSTER_SPEC_FIELDS = {
    "autoscalerOptions",
    "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions",
    "headGroupSpec",
    "headServiceAnnotations",
    "managedBy",
    "rayVersion",
    "suspend",
    "workerGroupSpecs",
}
HEAD_GROUP_FIELDS = {"enableIngress", "headService", "rayStartParams", "serviceType", "template"}
WORKER_GROUP_FIELDS = {
    "groupName",
    "idleTimeoutSeconds",
    "maxReplicas",
    "minReplicas",
    "numOfHosts",
    "rayStartParams",
    "replicas",
    "scaleStrategy",
    "suspend",
    "template",
}

# What a credential looks like in a text file. Names of AWS key variables count too: with IAM
# roles nothing in these files has a reason to mention them.
CREDENTIAL_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS key variable": re.compile(
        r"aws_access_key_id|aws_secret_access_key|aws_session_token|secretAccessKey", re.IGNORECASE
    ),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "password in a URI": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@<>]+:[^\s/@<>]+@"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    # key: value or KEY=value with a literal value (a reference such as {...}, $VAR or <...> is fine)
    "password value": re.compile(
        r"(?im)^[ \t-]*[\w.-]*(?:password|passwd|secret)[\w.-]*[ \t]*[:=][ \t]*(?![{$<])\S+"
    ),
}
# Environment variables whose value is a secret: a database URI carries its password.
SECRET_LIKE_NAME = re.compile(
    r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|ACCESS_KEY|CREDENTIAL|BACKEND_STORE_URI|DATABASE_URL"
)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


@functools.cache
def _cluster_config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@functools.cache
def _manifests() -> tuple[tuple[str, dict[str, Any]], ...]:
    """Every document of every ``infra/k8s/*.yaml`` as ``(file name, document)``."""
    out = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), f"{path.name}: an empty or non-mapping YAML document"
            out.append((path.name, doc))
    return tuple(out)


def _docs(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _manifests() if doc["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _docs(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name!r}, found {len(found)}"
    return found[0]


def _ray_clusters() -> list[tuple[str, dict[str, Any]]]:
    """``(owner, RayClusterSpec)`` of every RayJob and RayService."""
    out = [(f"RayJob/{d['metadata']['name']}", d["spec"]["rayClusterSpec"]) for d in _docs("RayJob")]
    out += [
        (f"RayService/{d['metadata']['name']}", d["spec"]["rayClusterConfig"]) for d in _docs("RayService")
    ]
    return out


def _groups(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(group name, group spec)`` for the head (named "head") and each worker group."""
    yield "head", spec["headGroupSpec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod template of the manifests: Ray groups and Deployments."""
    for owner, spec in _ray_clusters():
        for group, group_spec in _groups(spec):
            yield f"{owner}/{group}", group_spec["template"]["spec"]
    for d in _docs("Deployment"):
        yield f"Deployment/{d['metadata']['name']}", d["spec"]["template"]["spec"]


@functools.cache
def _dockerfile() -> tuple[tuple[str, str], ...]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        pending += stripped
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        instruction, _, args = pending.partition(" ")
        out.append((instruction.upper(), args.strip()))
        pending = ""
    return tuple(out)


def _docker_args() -> dict[str, str]:
    return dict(a.split("=", 1) for i, a in _dockerfile() if i == "ARG" and "=" in a)


def _base_image() -> str:
    froms = [args.split()[0] for i, args in _dockerfile() if i == "FROM"]
    assert froms, "the Dockerfile has no FROM"
    return froms[-1]


def _workdir() -> str:
    workdirs = [args for i, args in _dockerfile() if i == "WORKDIR"]
    assert workdirs, "the Dockerfile sets no WORKDIR"
    return workdirs[-1]


def _load_object(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _cpu(quantity: Any) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _check_pinned_ray_image(image: str, where: str) -> None:
    """``image`` is Ray's image at the pinned version (the Dockerfile's base) or the project image
    built from it, whose tag names the same Ray, Python and CUDA: ``...:<ver>-ray<ray>-py311-cu130``."""
    base = _base_image()
    if image == base:
        return
    base_tail = base.rpartition(":")[2].removeprefix(f"{RAY_VERSION}-")
    tag = image.rpartition(":")[2]
    assert tag.endswith(f"ray{RAY_VERSION}-{base_tail}"), (
        f"{where}: image {image!r} is neither {base!r} nor a project image tagged "
        f"'<version>-ray{RAY_VERSION}-{base_tail}' (Ray installed here: {RAY_VERSION})"
    )


def _job_invocation(entrypoint: str) -> tuple[str, str | None, list[str]]:
    """``python -m <module> [--config <path>] [overrides...]`` -> (module, path, overrides)."""
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "-m"] and len(argv) >= 3, (
        f"entrypoint {entrypoint!r} is not `python -m pipelines.<job> ...`"
    )
    module, rest = argv[2], argv[3:]
    config = None
    if "--config" in rest:
        i = rest.index("--config")
        config = rest[i + 1]
        rest = rest[:i] + rest[i + 2 :]
    return module, config, rest


def _load_job_config(entrypoint: str) -> tuple[str, Any]:
    from pipelines.config import load_config

    module, config, overrides = _job_invocation(entrypoint)
    assert config is not None, f"{entrypoint!r} names no --config"
    assert (REPO / config).is_file(), f"{entrypoint!r}: {config} does not exist in the repository"
    cls = _load_object(JOB_CONFIG_CLASSES[module])
    cfg = load_config(cls, REPO / config, overrides)
    assert isinstance(cfg, cls)
    return module, cfg


def _train_slots(cpus: float, gpus: float, cfg: Any) -> int:
    """Ray Train workers of ``cfg`` one node of ``cpus``/``gpus`` can hold."""
    s = cfg.scaling
    by_cpu = int(cpus // s.cpus_per_worker)
    return min(by_cpu, int(gpus // s.gpus_per_worker)) if s.use_gpu else by_cpu


def _paper_config() -> Any:
    from pipelines.config import load_config
    from pipelines.train import TrainJobConfig

    return load_config(TrainJobConfig, REPO / "pipelines/configs/paper.yaml")


def _check_fits_training(nodes: dict[str, tuple[float, float, int]], cfg: Any, where: str) -> None:
    """``nodes``: GPU node kind -> (CPUs, GPUs, how many at most). Every GPU kind holds at least
    one Train worker of ``cfg``, and some kind alone holds all of them plus Ray Data's
    preprocessing actors (so the placement never needs two kinds at once)."""
    assert cfg.scaling.use_gpu
    n, s = cfg.scaling.num_workers, cfg.scaling
    # Preprocessing autoscales into the CPUs the workers leave (data.preprocess_tasks None): at
    # least one task must fit beside them; a configured cap must fit whole.
    data_cpus = (cfg.data.preprocess_tasks or 1) * cfg.data.preprocess_cpus
    assert nodes, f"{where}: no GPU node kind"
    whole = []
    for kind, (cpus, gpus, count) in nodes.items():
        slots = _train_slots(cpus, gpus, cfg)
        assert slots >= 1, f"{where}/{kind}: cannot hold one Train worker ({s})"
        spare = count * cpus - n * s.cpus_per_worker
        if count * slots >= n and spare >= data_cpus:
            whole.append(kind)
    assert whole, (
        f"{where}: no GPU node kind holds {n} Train workers x "
        f"({s.gpus_per_worker} GPU, {s.cpus_per_worker} CPU) plus {data_cpus} CPUs of data actors: {nodes}"
    )


def _check_fits_memory(gpu_instances: dict[str, str], cfg: Any, where: str) -> None:
    """``gpu_instances``: node kind -> instance type. By the memory model, ``cfg``'s micro-batch fits
    the GPU of every kind, and it is the largest micro-batch that fits the smallest of them and
    divides the effective batch over the workers (the config is sized by the model, not by hand)."""
    from meerkat_core import memory
    from pipelines.config import resolve_model

    model = resolve_model(cfg.model)
    s, o = cfg.scaling, cfg.optim
    est = memory.estimate(model, o.batch_size, None, s.num_workers, s.strategy)
    sizes = {}
    for kind, instance in gpu_instances.items():
        assert instance in GPU_MEMORY_GB, f"{where}/{kind}: add {instance} to GPU_MEMORY_GB"
        gb = sizes[kind] = GPU_MEMORY_GB[instance]
        assert est.fits(gb), (
            f"{where}/{kind}: the memory model predicts {est.total / 1e9:.1f} GB per GPU at micro-batch "
            f"{o.batch_size} ({s.num_workers} workers, {s.strategy}), more than the {gb} GB of {instance}"
        )
    smallest = min(sizes.values())
    largest = memory.largest_micro_batch(model, smallest, None, s.num_workers, s.strategy)
    per_worker = (o.effective_batch or o.batch_size * s.num_workers) // s.num_workers
    usable = max(b for b in range(1, largest + 1) if per_worker % b == 0)
    assert o.batch_size == usable, (
        f"{where}: micro-batch {o.batch_size}, but {usable} is the largest that fits {smallest} GB and "
        f"divides {per_worker} (python -m pipelines.memory --config pipelines/configs/paper.yaml)"
    )


def _credential_findings(text: str) -> list[str]:
    return [
        f"{what}: {m.group(0)[:40]!r}" for what, rx in CREDENTIAL_PATTERNS.items() for m in rx.finditer(text)
    ]


# --------------------------------------------------------------------------------------------------
# ray_cluster.yaml
# --------------------------------------------------------------------------------------------------


def test_cluster_yaml_is_valid_for_the_installed_ray():
    cfg = _cluster_config()
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(cfg, json.loads(schema_path.read_text()))

    # What `ray up` does before it calls AWS: fill in the provider's defaults, then check the
    # schema again plus what it cannot express (head type among the node types, min <= max).
    # Private API, used on purpose: it is exactly the launcher's code path.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cfg))


def test_cluster_head_runs_no_training_but_hosts_the_drivers():
    cfg = _cluster_config()
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head must advertise no CPU to tasks and actors"
    assert not head["resources"].get("GPU")
    assert INSTANCE_SHAPES[head["node_config"]["InstanceType"]][1] == 0, "the head should be a CPU instance"
    start = " ".join(cfg["head_start_ray_commands"])
    assert "--num-cpus=0" in start, "the raylet itself should be told the head has no CPU for work"
    assert "--head" in start and "--dashboard-host=0.0.0.0" in start


def test_cluster_node_types_match_their_instances_and_hold_the_paper_preset():
    cfg = _cluster_config()
    gpu_nodes = {}
    for name, node_type in cfg["available_node_types"].items():
        instance = node_type["node_config"]["InstanceType"]
        assert instance in INSTANCE_SHAPES, f"{name}: add {instance} to INSTANCE_SHAPES"
        vcpus, gpus = INSTANCE_SHAPES[instance]
        if name == cfg["head_node_type"]:
            continue
        res = node_type["resources"]
        assert (res.get("CPU"), res.get("GPU", 0)) == (vcpus, gpus), (
            f"{name}: declared {res} but {instance} has {vcpus} vCPU and {gpus} GPU"
        )
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
        if gpus:
            gpu_nodes[name] = (vcpus, gpus, node_type["max_workers"])
    assert len(gpu_nodes) >= 2, "expected a choice of GPU worker types"
    assert sum(t.get("max_workers", 0) for t in cfg["available_node_types"].values()) <= cfg["max_workers"]
    _check_fits_training(gpu_nodes, _paper_config(), "ray_cluster.yaml")


def test_cluster_gpus_hold_the_paper_preset_by_the_memory_model():
    cfg = _cluster_config()
    gpu_nodes = {
        name: t["node_config"]["InstanceType"]
        for name, t in cfg["available_node_types"].items()
        if t.get("resources", {}).get("GPU")
    }
    _check_fits_memory(gpu_nodes, _paper_config(), "ray_cluster.yaml")


def test_cluster_runs_the_pinned_ray_image():
    docker = _cluster_config()["docker"]
    for key in ("image", "head_image", "worker_image"):
        if key in docker:
            _check_pinned_ray_image(docker[key], f"ray_cluster.yaml docker.{key}")
    for name, node_type in _cluster_config()["available_node_types"].items():
        if "worker_image" in node_type.get("docker", {}):
            _check_pinned_ray_image(node_type["docker"]["worker_image"], f"ray_cluster.yaml {name}")


def test_cluster_setup_installs_the_project_at_the_images_pins():
    cfg = _cluster_config()
    remote, local = next(iter(cfg["file_mounts"].items()))
    assert (REPO / local).resolve() == REPO, "file_mounts should ship the repository"
    setup = " ".join(cfg["setup_commands"])
    assert f"cd {remote}" in setup and "pip install" in setup and '-e ".[ray]"' in setup
    assert f'"ray[train,data,serve]=={RAY_VERSION}"' in setup, "Ray must stay at the image's version"
    assert f'"torch=={_docker_args()["TORCH_VERSION"]}"' in setup, (
        "torch must be the Dockerfile's (the CUDA build that matches the image)"
    )
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in cfg[key] if "ray start" in c)
        # Job drivers inherit the raylet's working directory: relative --config paths need the repo.
        assert start.strip().startswith(f"cd {remote}"), f"{key} should start Ray from {remote}"


def test_cluster_environment_points_jobs_at_mlflow_and_s3():
    cfg = _cluster_config()
    env = {}
    for option in cfg["docker"]["run_options"]:
        flag, _, value = option.partition(" ")
        if flag in ("--env", "-e"):
            key, _, val = value.partition("=")
            env[key] = val
    assert urlsplit(env["MLFLOW_TRACKING_URI"]).scheme in ("http", "https")
    assert env["MEERKAT_DATA_URI"].startswith("s3://")
    assert env["AWS_DEFAULT_REGION"] == cfg["provider"]["region"]
    assert not any(k.startswith("AWS_ENDPOINT_URL") for k in env), "real S3 needs no endpoint override"


def test_cluster_credentials_come_from_instance_profiles():
    for name, node_type in _cluster_config()["available_node_types"].items():
        profile = node_type["node_config"].get("IamInstanceProfile", {})
        assert profile.get("Name") or profile.get("Arn"), f"{name}: no IamInstanceProfile"
        assert node_type["node_config"].get("MetadataOptions", {}).get("HttpTokens") == "required"


# --------------------------------------------------------------------------------------------------
# infra/k8s
# --------------------------------------------------------------------------------------------------


def test_manifests_parse_with_the_expected_kinds_and_api_versions():
    assert _manifests(), "no manifest under infra/k8s"
    for filename, doc in _manifests():
        kind = doc.get("kind")
        assert kind in EXPECTED_API_VERSIONS, f"{filename}: unexpected kind {kind!r}"
        assert doc.get("apiVersion") == EXPECTED_API_VERSIONS[kind], f"{filename}: {kind} apiVersion"
        assert doc["metadata"].get("name"), f"{filename}: {kind} without a name"
        if kind != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{filename}: {kind} namespace"
    kinds = [doc["kind"] for _, doc in _manifests()]
    assert kinds.count("RayJob") >= 2 and "RayService" in kinds
    assert "Deployment" in kinds and "Service" in kinds


def test_ray_specs_use_only_kuberay_fields():
    for d in _docs("RayJob"):
        assert set(d["spec"]) <= RAYJOB_SPEC_FIELDS, set(d["spec"]) - RAYJOB_SPEC_FIELDS
    for d in _docs("RayService"):
        assert set(d["spec"]) <= RAYSERVICE_SPEC_FIELDS, set(d["spec"]) - RAYSERVICE_SPEC_FIELDS
    for owner, spec in _ray_clusters():
        assert set(spec) <= RAYCLUSTER_SPEC_FIELDS, (owner, set(spec) - RAYCLUSTER_SPEC_FIELDS)
        assert set(spec["headGroupSpec"]) <= HEAD_GROUP_FIELDS, owner
        for group in spec.get("workerGroupSpecs", []):
            assert set(group) <= WORKER_GROUP_FIELDS, (owner, set(group) - WORKER_GROUP_FIELDS)
            assert {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(group)
            assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], owner
        for group, group_spec in _groups(spec):
            params = group_spec["rayStartParams"]
            # KubeRay's rayStartParams is map[string]string: a bare 0 fails validation.
            assert all(isinstance(v, str) for v in params.values()), (owner, group, params)


def test_job_entrypoints_name_existing_jobs_and_configs():
    modules = set()
    for d in _docs("RayJob"):
        entrypoint = d["spec"]["entrypoint"]
        module, _, _ = _job_invocation(entrypoint)
        assert module in JOB_CONFIG_CLASSES, f"{entrypoint!r}: add {module} to JOB_CONFIG_CLASSES"
        main = getattr(importlib.import_module(module), "main", None)
        assert callable(main), f"{module} has no main()"
        _load_job_config(entrypoint)
        modules.add(module)
    assert modules == {"pipelines.build_avfit", "pipelines.train"}


def test_training_job_reads_what_the_build_job_writes():
    configs = dict(_load_job_config(d["spec"]["entrypoint"]) for d in _docs("RayJob"))
    build, train = configs["pipelines.build_avfit"], configs["pipelines.train"]
    assert train.data.uri.startswith(build.out_uri.rstrip("/") + "/"), (train.data.uri, build.out_uri)


def test_training_job_groups_hold_its_workers():
    for d in _docs("RayJob"):
        module, cfg = _load_job_config(d["spec"]["entrypoint"])
        if module != "pipelines.train" or not cfg.scaling.use_gpu:
            continue
        nodes = {}
        for group in d["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
            (container,) = group["template"]["spec"]["containers"]
            limits = container["resources"]["limits"]
            if int(limits.get("nvidia.com/gpu", 0)):
                nodes[group["groupName"]] = (
                    _cpu(limits["cpu"]),
                    int(limits["nvidia.com/gpu"]),
                    group["maxReplicas"],
                )
        _check_fits_training(nodes, cfg, f"RayJob/{d['metadata']['name']}")


def test_training_job_gpus_hold_it_by_the_memory_model():
    jobs = 0
    for d in _docs("RayJob"):
        module, cfg = _load_job_config(d["spec"]["entrypoint"])
        if module != "pipelines.train" or not cfg.scaling.use_gpu:
            continue
        instances = {}
        for group in d["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
            pod = group["template"]["spec"]
            (container,) = pod["containers"]
            if int(container["resources"]["limits"].get("nvidia.com/gpu", 0)):
                instances[group["groupName"]] = pod["nodeSelector"]["node.kubernetes.io/instance-type"]
        _check_fits_memory(instances, cfg, f"RayJob/{d['metadata']['name']}")
        jobs += 1
    assert jobs, "no GPU training RayJob"


def test_ray_clusters_run_the_pinned_ray_and_one_image():
    images = set()
    for owner, spec in _ray_clusters():
        assert spec["rayVersion"] == RAY_VERSION, owner
        for group, group_spec in _groups(spec):
            for container in group_spec["template"]["spec"]["containers"]:
                _check_pinned_ray_image(container["image"], f"{owner}/{group}")
                images.add(container["image"])
    assert len(images) == 1, f"heads and workers must run the same code: {images}"


def test_ray_heads_run_no_workloads():
    for owner, spec in _ray_clusters():
        head = spec["headGroupSpec"]
        assert head["rayStartParams"].get("num-cpus") == "0", f"{owner}: the head should advertise 0 CPUs"
        for container in head["template"]["spec"]["containers"]:
            assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {}), owner


def test_ray_pods_share_identity_environment_and_code_location():
    accounts = {d["metadata"]["name"]: d for d in _docs("ServiceAccount")}
    configmaps = {d["metadata"]["name"] for d in _docs("ConfigMap")}
    claims = {d["metadata"]["name"] for d in _docs("PersistentVolumeClaim")}
    for owner, spec in _ray_clusters():
        for group, group_spec in _groups(spec):
            pod = group_spec["template"]["spec"]
            where = f"{owner}/{group}"
            account = accounts.get(pod.get("serviceAccountName"))
            assert account is not None, f"{where}: needs a service account from base.yaml"
            assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
                "arn:aws:iam::"
            )
            nodes = pod.get("nodeSelector", {}).get("node.kubernetes.io/instance-type")
            for container in pod["containers"]:
                refs = {
                    e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e
                }
                assert "meerkat-env" in refs and refs <= configmaps, where
                # The entrypoints' relative --config paths resolve against the image's repo root.
                assert container.get("workingDir") == _workdir(), where
                requests, limits = container["resources"]["requests"], container["resources"]["limits"]
                assert requests.get("nvidia.com/gpu") == limits.get("nvidia.com/gpu"), where
                if nodes:
                    assert nodes in INSTANCE_SHAPES, f"{where}: add {nodes} to INSTANCE_SHAPES"
                    vcpus, gpus = INSTANCE_SHAPES[nodes]
                    assert _cpu(limits["cpu"]) < vcpus and int(limits.get("nvidia.com/gpu", 0)) <= gpus, where
            for volume in pod.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims, where


def _serve_configs() -> list[tuple[str, Any]]:
    """``(owner, ServeDeploySchema)`` of every RayService, validated by Ray's own schema."""
    from ray.serve.schema import ServeDeploySchema

    return [
        (
            f"RayService/{d['metadata']['name']}",
            ServeDeploySchema.model_validate(yaml.safe_load(d["spec"]["serveConfigV2"])),
        )
        for d in _docs("RayService")
    ]


def test_rayservice_serves_the_serve_app_on_its_gpus():
    services = {f"RayService/{d['metadata']['name']}": d for d in _docs("RayService")}
    for owner, config in _serve_configs():
        assert [app.import_path for app in config.applications] == [SERVE_IMPORT_PATH], owner
        # Reachable from the Kubernetes Service in front of the proxies, not only inside a pod.
        assert config.http_options.host == "0.0.0.0", owner
        # Every replica fits a worker pod (the head advertises no CPU), and the model gets a GPU.
        pods = []
        for group in services[owner]["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
            (container,) = group["template"]["spec"]["containers"]
            limits = container["resources"]["limits"]
            pods.append((_cpu(limits["cpu"]), int(limits.get("nvidia.com/gpu", 0))))
        gpus_asked = 0
        for app in config.applications:
            for dep in app.deployments:
                # Unset (or Serve's DEFAULT sentinel): one CPU and no GPU per replica.
                cpus = getattr(dep.ray_actor_options, "num_cpus", None)
                gpus = getattr(dep.ray_actor_options, "num_gpus", None)
                cpus, gpus = (1 if cpus is None else cpus), (gpus or 0)
                assert any(cpus <= c and gpus <= g for c, g in pods), (
                    f"{owner}: {dep.name} fits no worker pod"
                )
                gpus_asked += gpus
        assert gpus_asked >= 1, f"{owner}: the paper model should be served on a GPU"


def test_serve_deployments_shed_overload_and_drain_admitted_requests():
    """Every Serve config (serve/config.yaml and the RayService's): each deployment bounds its
    queue (overload answers 503 at once) and drains longer than the ingress's request timeout."""
    configs = [("serve/config.yaml", yaml.safe_load(SERVE_CONFIG.read_text()))]
    configs += [
        (f"RayService/{d['metadata']['name']}", yaml.safe_load(d["spec"]["serveConfigV2"]))
        for d in _docs("RayService")
    ]
    for owner, config in configs:
        for app in config["applications"]:
            timeout = app["args"]["request_timeout_s"]
            for dep in app["deployments"]:
                assert dep.get("max_queued_requests", -1) > 0, (owner, dep["name"])
                assert dep.get("graceful_shutdown_timeout_s", 0) >= timeout, (owner, dep["name"])


def test_rayservice_serves_what_training_registers():
    jobs = [_load_job_config(d["spec"]["entrypoint"]) for d in _docs("RayJob")]
    registered = {cfg.mlflow.register_as for module, cfg in jobs if module == "pipelines.train"}
    for owner, config in _serve_configs():
        for app in config.applications:
            model = (app.args or {}).get("model", "")
            name = re.sub(r"^models:/([^/@]+).*$", r"\1", model)
            assert model.startswith("models:/") and name in registered, (
                f"{owner}: serves {model!r}, the training job registers {registered}"
            )


def _serve_apps(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What makes two Serve configs the same application: import path, route prefix, the
    deployments by name, and the builder's argument names (their values may differ)."""
    return {
        app["import_path"]: {
            "route_prefix": app.get("route_prefix", "/"),
            "deployments": sorted(dep["name"] for dep in app.get("deployments", [])),
            "args": sorted(app.get("args", {})),
        }
        for app in config["applications"]
    }


@pytest.mark.skipif(not SERVE_CONFIG.exists(), reason="serve/config.yaml is not written yet")
def test_rayservice_is_the_same_application_as_serve_config():
    local = _serve_apps(yaml.safe_load(SERVE_CONFIG.read_text()))
    for d in _docs("RayService"):
        cluster = _serve_apps(yaml.safe_load(d["spec"]["serveConfigV2"]))
        assert cluster == local, (
            f"RayService/{d['metadata']['name']} serveConfigV2 and serve/config.yaml differ in "
            f"import path, route prefix, deployments or argument names: {cluster} != {local}"
        )
    module, _, attr = SERVE_IMPORT_PATH.partition(":")
    source = REPO / (module.replace(".", "/") + ".py")
    assert source.is_file(), f"{SERVE_IMPORT_PATH}: no {source.relative_to(REPO)}"
    # Parsed, not imported: the app module pulls in torch, FastAPI and Serve.
    tree = ast.parse(source.read_text())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    defined |= {
        t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
    }
    assert attr in defined, f"{source.relative_to(REPO)} defines no module-level {attr!r}"


def test_mlflow_server_is_the_one_the_jobs_log_to():
    deployment, service = _one("Deployment", "mlflow"), _one("Service", "mlflow")
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert container["image"].rpartition(":")[2].removeprefix("v").startswith(f"{mlflow.__version__}"), (
        f"the server should run the clients' MLflow {mlflow.__version__}: {container['image']}"
    )
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}

    # Runs and registry in PostgreSQL whose URI only a Secret holds; artifacts proxied to S3 with
    # the IRSA role of the mlflow service account.
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]
    args = " ".join(container["args"])
    assert "--serve-artifacts" in args and "--artifacts-destination=s3://" in args
    account = _one("ServiceAccount", pod["spec"]["serviceAccountName"])
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]

    tracking = urlsplit(_one("ConfigMap", "meerkat-env")["data"]["MLFLOW_TRACKING_URI"])
    assert tracking.hostname == f"mlflow.{NAMESPACE}.svc.cluster.local" and tracking.port == port["port"]
    assert tracking.netloc in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(","), (
        "MLflow 3 answers 403 to a Host header it does not allow"
    )


# --------------------------------------------------------------------------------------------------
# infra/docker
# --------------------------------------------------------------------------------------------------


def test_image_builds_on_rays_gpu_image_at_the_pinned_version():
    base = _base_image()
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(cu\d+|gpu)", base)
    assert m, f"FROM {base!r} is not a tagged Ray GPU image"
    assert m.group(1) == RAY_VERSION, f"FROM Ray {m.group(1)}, installed Ray {RAY_VERSION}"
    assert _docker_args()["RAY_VERSION"] == RAY_VERSION
    # The project's own bounds, as installed from pyproject.toml (no tomllib on Python 3.10).
    project = importlib.metadata.metadata("meerkat-ray")
    assert f"{m.group(2)}.{m.group(3)}" in SpecifierSet(project["Requires-Python"])
    torch_spec = next(r for r in importlib.metadata.requires("meerkat-ray") if re.match(r"torch\b", r))
    assert _docker_args()["TORCH_VERSION"] in SpecifierSet(torch_spec.removeprefix("torch"))


def test_image_installs_the_project_and_does_not_run_as_root():
    instructions = _dockerfile()
    runs = [args for i, args in instructions if i == "RUN"]
    assert any("pip install" in r and '-e ".[ray]"' in r for r in runs), "the project with its ray extra"
    assert any(i == "COPY" and args.split()[-2:] == [".", "."] for i, args in instructions), "the sources"
    users = [args for i, args in instructions if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    ignored = set(DOCKERIGNORE.read_text().split())
    assert {".git", ".venv"} <= ignored, "a local venv or .git must not reach the build context"


# --------------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------------


def _cluster_files() -> list[Path]:
    return [CLUSTER_YAML, DOCKERFILE, DOCKERIGNORE, *sorted(K8S_DIR.glob("*.yaml"))]


@pytest.mark.parametrize("path", _cluster_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_credentials_in_cluster_files(path):
    assert _credential_findings(path.read_text()) == []


def test_credential_scan_catches_planted_values():
    planted = [
        "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY=abc",
        "uri: postgresql://mlflow:hunter2@db:5432/mlflow",
        "db_password: hunter2",
        "-----BEGIN RSA PRIVATE KEY-----",
    ]
    for text in planted:
        assert _credential_findings(text), text


def test_manifests_hold_no_secret_values():
    assert not _docs("Secret"), "Secrets are created from a secret store, never committed"
    for name, pod in _pod_specs():
        for container in pod["containers"]:
            for var in container.get("env", []):
                if SECRET_LIKE_NAME.search(var["name"]):
                    assert "secretKeyRef" in var.get("valueFrom", {}), (
                        f"{name}: {var['name']} must come from a Secret"
                    )
    for d in _docs("ConfigMap"):
        for key in d["data"]:
            assert not SECRET_LIKE_NAME.search(key), (
                f"ConfigMap {d['metadata']['name']}: {key} belongs in a Secret"
            )
