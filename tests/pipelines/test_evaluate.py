"""The evaluation job: scoring on hand-made predictions (unit), then end to end on Ray + MLflow."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import pytest

from meerkat_core import checkpoint
from pipelines import evaluate
from pipelines.config import CONFIG_DIR, from_argv, load_config


def _arig(pred: str, sounding: list, other: list) -> dict:
    return {
        "prediction": pred,
        "meta": {
            "task": "arig",
            "source": "world",
            "boxes": [sounding],
            "objects": [{"box": sounding, "sounds": True}, {"box": other, "sounds": False}],
        },
    }


def test_sounding_rate_and_baselines_hand_case():
    left, right = [0.0, 0.0, 0.4, 0.4], [0.6, 0.6, 1.0, 1.0]
    rows = [
        _arig("[0.00, 0.00, 0.40, 0.40]", left, right),  # on the sounding object
        _arig("[0.60, 0.60, 1.00, 1.00]", left, right),  # on the other one
        _arig("garbage", right, left),  # unparsed: a miss
        _arig("[0.60, 0.60, 0.90, 0.90]", right, left),  # on the sounding object
    ]
    res = evaluate.score(rows)["arig"]["world"]
    assert res["model"]["sounding_rate"] == pytest.approx(0.5)
    assert res["model"]["n_unparsed"] == 1
    assert res["model"]["ciou"] == pytest.approx(0.5)  # samples 0 and 3 (cIoU 0.5625 >= 0.5)
    assert set(res) == {"model", "baseline_mean_box", "baseline_random_object"}
    assert res["baseline_mean_box"]["box_mean_iou"] < 0.3


def test_fact_check_and_temporal_scoring():
    facts = [
        {"prediction": p, "meta": {"task": "avfact", "source": "world", "label": lab, "fact_type": t}}
        for p, lab, t in [("True", True, 1), ("False", False, 1), ("True", False, 2), ("False", True, 2)]
    ]
    windows = [
        {
            "prediction": "[2.0, 4.0]",
            "meta": {"task": "igatl", "source": "llp", "segments": [[2.0, 4.0]], "duration": 10.0},
        },
        {
            "prediction": "nope",
            "meta": {"task": "igatl", "source": "llp", "segments": [[5.0, 6.0]], "duration": 10.0},
        },
    ]
    res = evaluate.score(facts + windows)
    assert res["avfact"]["world"]["model"]["accuracy"] == pytest.approx(0.5)
    assert res["avfact"]["world"]["baseline_majority"]["accuracy"] == pytest.approx(0.5)
    seg = res["igatl"]["llp"]["model"]
    # Published protocol: each row its own video (no clip_id); F1 1 and 0, averaged.
    assert seg["f1"] == pytest.approx(0.5) and seg["event_f1"] == pytest.approx(0.5)
    # The project's variants beside it: micro over bins (TP 2, FN 1) and greedy one-to-one events.
    assert (seg["micro_tp"], seg["micro_fn"], seg["micro_fp"]) == (2, 1, 0)
    assert seg["micro_f1"] == pytest.approx(0.8)
    assert seg["greedy_event_f1"] == pytest.approx(2 / 3)
    assert res["igatl"]["llp"]["baseline_whole_clip"]["micro_recall"] == pytest.approx(1.0)


def test_temporal_rows_of_one_clip_average_as_its_classes():
    def row(pred: str, segments: list, clip: str) -> dict:
        meta = {"task": "igatl", "source": "llp", "segments": segments, "duration": 10.0, "clip_id": clip}
        return {"prediction": pred, "meta": meta}

    rows = [
        row("[0.0, 2.0]", [[0.0, 2.0]], "a"),
        row("nothing", [[4.0, 6.0]], "a"),
        row("[1.0, 2.0]", [[1, 2]], "b"),
    ]
    seg = evaluate.score(rows)["igatl"]["llp"]["model"]
    # Clip a: classes 1.0 and 0.0 -> 0.5; clip b: 1.0. Mean over the two clips.
    assert seg["f1"] == pytest.approx(0.75) and seg["n_videos"] == 2 and seg["n"] == 3


def test_metric_names_follow_the_convention():
    flat = evaluate.flatten_metrics(
        {
            "avfact": {
                "world": {
                    "model": {"f1": 0.5, "per_type": {1: {"f1": 0.25}}},
                    "baseline_majority": {"f1": 0.1},
                }
            }
        }
    )
    assert flat == {
        "eval/avfact/world/f1": 0.5,
        "eval/avfact/world/per_type/type1/f1": 0.25,
        "eval/avfact/world/baseline_majority/f1": 0.1,
    }


def test_selection_keeps_the_paper_splits_and_asked_tasks_and_leaves_bad_json_to_be_counted():
    splits = {"valor": "val", "vggss": "test"}
    assert evaluate.selected(b'{"source": "valor", "split": "val"}', paper_splits=splits)
    assert not evaluate.selected(b'{"source": "valor", "split": "test"}', paper_splits=splits)
    assert evaluate.selected('{"source": "world", "split": "test"}', paper_splits=splits)  # not in the paper
    wanted = frozenset({"arig", "avfact"})
    assert evaluate.selected(b'{"task": "avfact"}', tasks=wanted)
    assert not evaluate.selected('{"task": "avc"}', tasks=wanted)
    assert not evaluate.selected(
        b'{"source": "valor", "split": "test", "task": "arig"}', paper_splits=splits, tasks=wanted
    )
    assert not evaluate.selected(
        b'{"source": "valor", "split": "val", "task": "avc"}', paper_splits=splits, tasks=wanted
    )
    # left for the Answerer to count as bad: no member, not JSON, not a mapping, a task that is no name
    for raw in [None, b"{not json", b"[1, 2]", b'{"task": ["arig"]}', b'{"source": ["x"], "split": "test"}']:
        assert evaluate.selected(raw, paper_splits=splits, tasks=wanted)


def test_caption_budget_fits_the_longest_reference():
    from meerkat_core.prompts import chat_target
    from meerkat_core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(None)
    short, long = "a dog barks.", " ".join(["a man plays a red guitar on a stage while people clap"] * 8)
    n_long = len(tokenizer(chat_target(long), add_special_tokens=False)["input_ids"])
    assert n_long + 1 > 48  # the old fixed budget would cut it
    assert evaluate.caption_budget([short, long], tokenizer) == n_long + 1  # + EOS
    assert evaluate.caption_budget([short], tokenizer) == 48  # the floor
    assert evaluate.caption_budget([], tokenizer, floor=16) == 16


def test_run_record_names_the_data_decoding_prompts_boxes_and_code(tmp_path):
    from pipelines.avfit import shards
    from pipelines.avfit.world import WORLD_PRESETS, iter_samples

    test_uri, val_uri = str(tmp_path / "test"), str(tmp_path / "val")
    written = {}
    for uri, split, n in ((test_uri, "test", 3), (val_uri, "val", 2)):
        with shards.ShardWriter(uri, max_count=20, fingerprint=f"fp-{split}") as writer:
            samples = list(iter_samples(WORLD_PRESETS["easy"], split, n, 5))  # several tasks per scene
            for sample in samples:
                writer.write(sample)
        written[split] = len(samples)
    record = evaluate.run_record([test_uri, val_uri], {"max_new_tokens": 64}, paper_splits=True)
    assert record["data.0.uri"] == test_uri and record["data.1.uri"] == val_uri
    assert (record["data.0.fingerprint"], record["data.1.fingerprint"]) == ("fp-test", "fp-val")
    assert (record["data.0.total"], record["data.1.total"]) == (written["test"], written["val"])
    assert json.loads(record["data.1.counts.split"]) == {"val": written["val"]}
    assert sum(json.loads(record["data.0.counts.task"]).values()) == written["test"]
    assert record["decoding.max_new_tokens"] == 64 and record["data.paper_splits"] is True
    assert record["boxes.convention"].startswith("xyxy normalised to the original image")
    assert len(record["prompt.templates_version"]) == 12
    assert record["prompt.templates_version"] == evaluate.prompt_templates_version()  # stable
    assert record["code.version"].startswith(("git:", "meerkat-ray==")), record["code.version"]
    single = evaluate.run_record([test_uri], {}, paper_splits=False)
    assert single["data.uri"] == test_uri and "data.0.uri" not in single


def test_prompt_version_changes_with_a_template(monkeypatch):
    from meerkat_core import prompts

    before = evaluate.prompt_templates_version()
    changed = {**prompts.TEMPLATES, "arig": (*prompts.TEMPLATES["arig"], "Where? {obj}")}
    monkeypatch.setattr(prompts, "TEMPLATES", changed)
    assert evaluate.prompt_templates_version() != before


def test_config_from_the_command_line_one_split_or_several():
    one = from_argv(evaluate.EvaluateConfig, ["model=models:/m/1", "data=s3://b/avfit/test", "actors=2"])
    assert one.data_uris == ["s3://b/avfit/test"] and one.actors == 2 and one.tasks is None
    several = from_argv(
        evaluate.EvaluateConfig,
        ["--config", str(CONFIG_DIR / "evaluate.yaml"), "model=m", "data=[a/test, a/val]", "tasks=[avc]"],
    )
    assert several.data_uris == ["a/test", "a/val"] and several.tasks == ("avc",)
    assert several.batch_size == 8 and several.experiment == "meerkat"  # the file's
    with pytest.raises(KeyError, match="max_new_token"):  # a typo fails loudly
        from_argv(evaluate.EvaluateConfig, ["max_new_token=3"])
    for missing in (["data=x"], ["model=m"]):
        with pytest.raises(ValueError, match="no (model|data)"):
            evaluate.EvaluateConfig(**dict(kv.split("=") for kv in missing)).check()


def test_generation_budget_without_reading_the_data():
    cfg = evaluate.EvaluateConfig(model="m", data="d", max_new_tokens=16)
    assert evaluate.generation_budget(cfg) == (16, "argument")
    no_captions = dataclasses.replace(cfg, max_new_tokens=None, tasks=("arig", "igatl"))
    assert evaluate.generation_budget(no_captions) == (evaluate.DEFAULT_MAX_NEW_TOKENS, "default")


def test_evaluation_job_end_to_end(ray_local, s3_server, mlflow_server, tmp_path, monkeypatch):
    import mlflow

    from meerkat_core.builders import build_model
    from meerkat_core.config import PRESETS
    from pipelines import registry
    from pipelines.avfit import shards
    from pipelines.avfit.world import WORLD_PRESETS, iter_samples

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    data_uri = s3_server.uri(f"eval-{uuid.uuid4().hex[:6]}", "test")
    with shards.ShardWriter(data_uri, max_count=20, fingerprint="t") as w:
        for s in iter_samples(WORLD_PRESETS["easy"], "test", 5, 11):
            w.write(s)
    model = build_model(PRESETS["tiny"], pretrained=False, seed=0)
    model.save_pretrained(tmp_path / "m", seed=0, pretrained=False)
    name = f"eval-it-{uuid.uuid4().hex[:6]}"
    mlflow.set_experiment("meerkat")
    with mlflow.start_run(run_name="train") as train_run:
        registry.log_and_register(tmp_path / "m", registered_name=name)

    out = evaluate.main([f"model=models:/{name}/1", f"data={data_uri}", "batch_size=8", "max_new_tokens=16"])
    assert out["n"] == shards.read_manifest(data_uri)["total"]
    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(out["eval_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == train_run.info.run_id
    params = run.data.params
    assert params["data.uri"] == data_uri and params["data.fingerprint"] == "t"
    assert int(params["data.total"]) == out["n"]
    assert params["decoding.max_new_tokens"] == "16" and params["decoding.strategy"] == "greedy"
    assert params["metrics.protocol_version"] == evaluate.METRICS_PROTOCOL_VERSION
    for key in ("prompt.templates_version", "boxes.convention", "code.version", "data.counts.task"):
        assert params[key], key
    keys = set(run.data.metrics)
    for k in (
        "eval/arig/world/ciou",
        "eval/arig/world/auc",
        "eval/arig/world/baseline_random_object/box_mean_iou",
        "eval/avfact/world/accuracy",
        "eval/igatl/world/f1",
        "eval/avqa/world/accuracy",
        "eval/avc/world/cider",
    ):
        assert k in keys, k
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "plots")
    }
    assert {
        "results.md",
        "results.json",
        "predictions.json",
        "plots/success_curve.png",
        "plots/grounding.png",
        "plots/segments.png",
        evaluate.BASELINES_ARTIFACT,
    } <= artifacts
    baselines = client.download_artifacts(run.info.run_id, evaluate.BASELINES_ARTIFACT, str(tmp_path))
    assert Path(baselines).read_text().startswith("# Model against trivial baselines")

    # The paper's splits over two split directories, with the caption budget measured: a "valor"
    # test caption is dropped (the paper reads VALOR-32K on val), the world's are kept.
    val_uri = s3_server.uri(data_uri.rsplit("/", 2)[-2], "val")
    world_captions = 0
    with shards.ShardWriter(val_uri, max_count=20, fingerprint="v") as w:
        for s in iter_samples(WORLD_PRESETS["easy"], "val", 2, 11):
            world_captions += s["json"]["task"] == "avc"
            w.write(s)
        long_caption = " ".join(["a red circle hums low and a blue square beeps twice"] * 6)
        relabelled = {
            **s,
            "__key__": "valor-x-avc",
            "json": {**s["json"], "source": "valor", "split": "test"},
        }
        relabelled["json"].update(task="avc", answer=long_caption, references=[long_caption])
        w.write(relabelled)
    world_captions += sum(
        s["json"]["task"] == "avc" for s in iter_samples(WORLD_PRESETS["easy"], "test", 5, 11)
    )
    # the job as a function of its config, as the ablation calls it; the config's tags on the run.
    # max_samples counts the asked task's samples: all but one of the captions, not the first
    # samples read (five of every six are other tasks).
    cfg = load_config(
        evaluate.EvaluateConfig,
        CONFIG_DIR / "evaluate.yaml",
        [
            f"model=models:/{name}/1",
            f"data=[{data_uri}, {val_uri}]",
            "paper_splits=true",
            "tasks=[avc]",
            f"max_samples={world_captions - 1}",
        ],
    )
    out = evaluate.run(dataclasses.replace(cfg, tags={"meerkat.variant": "v"}))
    assert set(out["results"]["avc"]) == {"world"} and out["n"] == world_captions - 1
    assert client.get_run(out["eval_run_id"]).data.tags["meerkat.variant"] == "v"
    params = client.get_run(out["eval_run_id"]).data.params
    assert (params["data.0.uri"], params["data.1.uri"]) == (data_uri, val_uri)
    assert params["data.1.fingerprint"] == "v" and params["data.paper_splits"] == "True"
    # The dropped caption still sets no budget: only the evaluated (paper-split) references count.
    assert params["decoding.max_new_tokens_from"].startswith("longest of")
    assert int(params["decoding.max_new_tokens"]) == 48


def test_compare_reads_whatever_datasets_and_metrics_the_runs_hold():
    from pipelines.ablate import compare_table

    public = {
        "eval/arig/vggss/ciou": 0.41,
        "eval/arig/vggss/auc": 0.4,
        "eval/arig/vggss/mean_ciou": 0.38,
        "eval/arig/vggss/baseline_mean_box/ciou": 0.12,
        "eval/arig/flickr_soundnet/ciou": 0.7,
        "eval/igatl/llp/f1": 0.5,
        "eval/igatl/llp/micro_f1": 0.6,
        "eval/avc/valor/cider": 0.3,
        "eval/avfact/openimages_audioset/per_type/type1/f1": 0.9,
        "eval/skipped/bad_media": 2.0,
    }
    world = {"eval/arig/world/ciou": 0.9, "eval/avqa/world/accuracy": 0.8}
    table = compare_table([("public", public), ("world", world)])
    lines = table.splitlines()
    assert lines[0] == (
        "| variant | arig flickr_soundnet ciou | arig vggss ciou | arig vggss auc | arig world ciou | "
        "igatl llp f1 | avqa world accuracy | avc valor cider |"
    )
    assert lines[2] == "| public | 0.700 | 0.410 | 0.400 | – | 0.500 | – | 0.300 |"
    assert lines[3] == "| world | – | – | – | 0.900 | – | 0.800 | – |"
    assert lines[4] == "| baseline: mean box | – | 0.120 | – | – | – | – | – |"
    # Any metric by pattern, the project's variants included.
    chosen = compare_table([("public", public)], ["igatl/*/*", "arig/vggss/mean_ciou"])
    assert chosen.splitlines()[0] == "| variant | arig vggss mean_ciou | igatl llp f1 | igatl llp micro_f1 |"
    assert "per_type/type1/f1" in compare_table([("public", public)], ["avfact/*"])
    assert compare_table([("x", {"eval/skipped/bad_json": 1.0})]).startswith("no evaluation metrics")


def test_compare_shows_the_protocol_version_and_refuses_to_mix_versions():
    from pipelines.ablate import compare_table

    new, old = {"eval/igatl/llp/f1": 0.5}, {"eval/igatl/llp/f1": 0.6}
    table = compare_table([("a", new), ("b", new)], protocols=["2", "2"])
    assert table.splitlines()[0] == "| variant | protocol | igatl llp f1 |"
    assert table.splitlines()[2] == "| a | 2 | 0.500 |"
    with pytest.raises(ValueError, match=r"different protocol versions .*version 1: old; version 2: a"):
        compare_table([("a", new), ("old", old)], protocols=["2", "1"])


def test_every_evaluation_run_records_its_protocol_version_and_compare_reads_it(tmp_path, monkeypatch):
    """Through MLflow (a sqlite store): ``log_to_mlflow`` writes ``metrics.protocol_version``; a run
    without it (from before the param) counts as version 1 and is not compared with a new one."""
    import mlflow

    from pipelines.ablate import compare

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("cmp", artifact_location=(tmp_path / "artifacts").as_uri())
    results = {"igatl": {"llp": {"model": {"f1": 0.5}}}}
    run_id = evaluate.log_to_mlflow(
        results, [], model_ref=str(tmp_path / "m"), data_uri="d", experiment="cmp", run_name="new", skipped={}
    )
    params = mlflow.MlflowClient().get_run(run_id).data.params
    assert params["metrics.protocol_version"] == evaluate.METRICS_PROTOCOL_VERSION
    assert "| new | 2 | 0.500 |" in compare(experiment="cmp")
    with mlflow.start_run(run_name="old", tags={"meerkat.kind": "evaluation"}):
        mlflow.log_metric("eval/igatl/llp/f1", 0.6)
    with pytest.raises(SystemExit, match="version 1: old; version 2: new"):
        compare(experiment="cmp")
    assert "| old | 1 | 0.600 |" in compare(experiment="cmp", run_ids=[mlflow.last_active_run().info.run_id])


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from meerkat_core.builders import build_model
    from meerkat_core.config import PRESETS

    model = build_model(PRESETS["tiny"], pretrained=False, seed=0)
    return model.save_pretrained(tmp_path_factory.mktemp("tiny") / "m", seed=0, pretrained=False)


def test_caption_budget_reads_only_caption_splits_json_and_the_tokenizer(
    tiny_model_dir, tmp_path, monkeypatch
):
    """The budget pass reads the ``.json`` members of the splits whose manifest counts captions (a
    split without any is never opened), through no Ray pass and no whole-model download, and leaves
    no temporary directory behind."""
    import tempfile

    from pipelines import registry
    from pipelines.avfit import shards
    from pipelines.avfit.world import WORLD_PRESETS, iter_samples

    captions_uri, plain_uri = str(tmp_path / "val"), str(tmp_path / "test")
    long_caption = " ".join(["a man plays a red guitar on a stage while people clap"] * 8)
    refs = []
    with shards.ShardWriter(captions_uri, max_count=20, fingerprint="v") as w:
        for s in iter_samples(WORLD_PRESETS["easy"], "val", 2, 11):
            if s["json"]["task"] == "avc":
                refs += s["json"].get("references") or [s["json"]["answer"]]
            w.write(s)
        for split, key in (("val", "valor-kept-avc"), ("test", "valor-dropped-avc")):
            meta = {**s["json"], "source": "valor", "split": split, "task": "avc", "answer": long_caption}
            w.write({**s, "__key__": key, "json": {**meta, "references": [long_caption + split]}})
    refs.append(long_caption + "val")  # the VALOR test caption is not of the paper's split
    with shards.ShardWriter(plain_uri, max_count=20, fingerprint="t") as w:
        for s in iter_samples(WORLD_PRESETS["easy"], "test", 2, 11):
            if s["json"]["task"] != "avc":
                w.write(s)
    for shard in shards.shard_uris(plain_uri):
        open(shard, "wb").write(b"not a tar")  # reading this split at all would fail
    assert evaluate.caption_splits([plain_uri, captions_uri]) == [captions_uri]
    first = shards.read_manifest(captions_uri)["shards"][0]
    metas = [json.loads(raw) for raw in evaluate.iter_json_members(shards.shard_uris(captions_uri)[0])]
    assert len(metas) == first["count"] and all("task" in m for m in metas)

    def boom(*args, **kwargs):
        raise AssertionError("not for the caption budget")

    monkeypatch.setattr(evaluate, "_read", boom)  # no Ray pass over whole samples
    monkeypatch.setattr(registry, "resolve", boom)  # not the whole model
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    budget, n = evaluate.measure_caption_budget(
        str(tiny_model_dir), [plain_uri, captions_uri], paper_splits=True
    )
    tokenizer = checkpoint.read_tokenizer(tiny_model_dir)
    assert n == len(refs)
    assert budget == evaluate.caption_budget(refs, tokenizer) > 48
    assert list(scratch.iterdir()) == []  # the scratch directory is removed


def test_answerer_skips_and_counts_damaged_samples_and_answers_the_rest(tiny_model_dir, monkeypatch):
    """The actor outside Ray: the shared decode (a bad json member counted), then one generation
    batch for the rest, whatever their task."""
    import numpy as np

    from pipelines import data
    from pipelines.avfit.world import WORLD_PRESETS, iter_samples

    reported = []
    monkeypatch.setattr(data, "report_skips", lambda counts: reported.append(dict(counts)))
    samples = list(iter_samples(WORLD_PRESETS["easy"], "test", 2, 11))
    arig = [s for s in samples if s["json"]["task"] == "arig"][:2]
    other = next(s for s in samples if s["json"]["task"] != "arig")
    batch = {
        "__key__": np.asarray([s["__key__"] for s in [*arig, other]] + ["broken"]),
        "jpg": np.asarray([s["image"] for s in [*arig, other, arig[0]]], dtype=object),
        "flac": np.asarray([s["audio"] for s in [*arig, other, arig[0]]], dtype=object),
        "json": np.asarray(
            [json.dumps(s["json"]).encode() for s in [*arig, other]] + [b"{not json"], dtype=object
        ),
    }
    answerer = evaluate.Answerer(str(tiny_model_dir), max_new_tokens=4)
    out = answerer(batch)  # every sample it is given: the tasks were chosen at the read (``selected``)
    assert list(out["__key__"]) == [s["__key__"] for s in [*arig, other]]
    assert list(out["task"]) == ["arig", "arig", other["json"]["task"]] and len(out["prediction"]) == 3
    assert all(isinstance(text, str) for text in out["prediction"])
    assert out["attn"].shape[0] == 3
    assert reported == [{"bad_json": 1}]
