"""Which fact-check statements does a trained model get wrong?  A breakdown of one evaluation run.

``pipelines.evaluate`` scores each fact type as a whole; a type can sit below the line for one
kind of statement alone. This joins the run's ``predictions.json`` with the test shards' metadata
(the scene's objects and sound events, which the statement does not show) and scores every kind of
statement of each type apart:

* type 1 (a box): true; false on another object; false on the background;
* type 2 (an object and a window): true; false, the sounding object at a window where it is silent;
  false, a silent object at the sound's own window; false, a silent object at another window;
* type 3 (a box and a window): true; false box; false window;
* type 4 (nothing written: is the sound's source in the picture?): true; false (the sounds replaced
  by a class absent from the picture), the latter also per absent class. That split is exact where the
  world has no off-screen distractors (the demo's ``easy`` preset); with them, a distractor's class
  joins the key (``a/b``), as one sample does not tell it from the replacing class.

With ``MLFLOW_TRACKING_URI`` and the S3 variables of the stack that holds the run and the shards::

    .venv/bin/python experiments/fact_errors.py --run RUN_ID --data s3://meerkat/avfit/test
"""

from __future__ import annotations

import argparse
import io
import tarfile
from collections import defaultdict

from meerkat_core import metrics
from pipelines import storage
from pipelines.avfit import shards
from pipelines.avfit.sample import read_meta


def shard_metas(data_uri: str) -> dict[str, dict]:
    """Every sample's metadata in the split at ``data_uri``, by key."""
    metas = {}
    for uri in shards.shard_uris(data_uri):
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(uri))) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    metas[member.name[: -len(".json")]] = read_meta(tar.extractfile(member).read())
    return metas


def _same_box(a: list[float], b: list[float]) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-6


def kind(meta: dict) -> str:
    """The kind of fact-check statement ``meta`` holds (see the module docstring)."""
    fact_type, label = int(meta["fact_type"]), bool(meta["label"])
    if label:
        return "true"
    objects, events = meta["objects"], meta["sound_events"]
    if fact_type == 1:
        return (
            "false: another object"
            if any(_same_box(meta["boxes"][0], o["box"]) for o in objects)
            else "false: background"
        )
    if fact_type == 2:
        name = meta["label_text"][0]
        if any(o["class"] == name and o["sounds"] for o in objects):
            return "false: sounding object, wrong window"
        window = meta["segments"][0]
        own = any(_same_box(window, e["segment"]) for e in events if e["object"] is not None)
        return "false: silent object, the sound's window" if own else "false: silent object, another window"
    if fact_type == 3:
        sounding = [o["box"] for o in objects if o["sounds"]]
        wrong_box = not any(_same_box(meta["boxes"][0], box) for box in sounding)
        return "false: wrong box" if wrong_box else "false: wrong window"
    on_screen = {o["class"] for o in objects}
    absent = sorted({e["class"] for e in events} - on_screen)
    return f"false: sound of a {'/'.join(absent) or '?'} (absent)"


def breakdown(rows: list[tuple[dict, str]]) -> dict[int, dict[str, dict[str, float]]]:
    """``{fact_type: {kind: {"accuracy", "n"}}}`` for (meta, prediction) pairs."""
    groups: dict[tuple[int, str], list[tuple[dict, str]]] = defaultdict(list)
    for meta, pred in rows:
        groups[(int(meta["fact_type"]), kind(meta))].append((meta, pred))
        if int(meta["fact_type"]) == 4 and not meta["label"]:
            groups[(4, "false (all)")].append((meta, pred))
    out: dict[int, dict[str, dict[str, float]]] = defaultdict(dict)
    for (fact_type, name), members in sorted(groups.items()):
        scores = metrics.factcheck_scores(
            [p for _, p in members], [m["label"] for m, _ in members], [fact_type] * len(members)
        )
        out[fact_type][name] = {"accuracy": scores["accuracy"], "n": scores["n"]}
    return dict(out)


def _predictions(run_id: str) -> list[dict]:
    import mlflow

    table = mlflow.artifacts.load_dict(f"runs:/{run_id}/predictions.json")
    columns = table["columns"]
    return [dict(zip(columns, row, strict=True)) for row in table["data"]]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="the MLflow run id of a pipelines.evaluate run")
    parser.add_argument(
        "--data", required=True, help="the test split it evaluated (its shards hold the scenes)"
    )
    args = parser.parse_args(argv)
    metas = shard_metas(args.data)
    rows = [(metas[p["key"]], p["prediction"]) for p in _predictions(args.run) if p["task"] == "avfact"]
    result = breakdown(rows)
    for fact_type, kinds in result.items():
        for name, s in kinds.items():
            print(f"type {fact_type}  {name:<45} accuracy {s['accuracy']:.3f}  n={s['n']}")
    return result


if __name__ == "__main__":
    main()
