"""Does *when* survive the tiny model's frozen audio encoder?  A linear probe, no training of the model.

In-process, no Ray, a few CPU minutes:

1. render ``--train-scenes`` and ``--test-scenes`` igatl scenes of the procedural world's ``easy``
   preset (one sounding object with one event of 2-5 s in a 10-s clip, as the demo's);
2. run each clip through the tiny preset's front end and its frozen, randomly initialised HTSAT
   (:class:`meerkat_core.encoders.AudioEncoder`): 64 tokens per 10-s window;
3. for two hypotheses of which time each token covers, label every token "inside the event" or
   not and fit a logistic-regression probe on the train tokens (their features, standardised, with
   no position information), scored on the test tokens:

   * ``sequence``: the token order is the order of time (token j of N covers ``[j, j+1) · T/N``);
   * ``htsat``: HTSAT's layout (:func:`meerkat_core.encoders.audio_token_times`): the tokens are
     ``[frequency band, time]`` row-major, so token j covers time slot ``j mod S`` of S.

   The hypothesis under which the tokens' own features predict the label better is the layout;
   with the right one, the probe's per-token scores, thresholded, give an interval (first to last
   token above 0.5) whose IoU with the true event is reported too (and the event F1 at IoU 0.5);
4. the same for the mean log-mel of each token's time span (an upper reference: the energy is there);
5. with ``--model REF`` (a trained model: ``models:/meerkat-tiny/2`` with ``MLFLOW_TRACKING_URI``
   and the S3 variables of the stack that holds it, or a model directory): the same probe on the
   audio tokens the trained LLM receives (``MeerkatModel.encode_media(...).aud``, with the scene's
   image), and, for a model with ``audio_time_map``, the window its time map implies
   (:func:`meerkat_core.model.time_map_window`) scored against the truth directly.

    .venv/bin/python experiments/temporal_probe.py --train-scenes 150 --test-scenes 60
    .venv/bin/python experiments/temporal_probe.py --model models:/meerkat-tiny/2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meerkat_core import config as cfgmod  # noqa: E402
from meerkat_core import media  # noqa: E402
from meerkat_core.batching import front_ends  # noqa: E402
from meerkat_core.builders import build_model  # noqa: E402
from meerkat_core.encoders import audio_token_layout, audio_token_times  # noqa: E402
from pipelines.avfit.world import WORLD_PRESETS, iter_samples  # noqa: E402


def clips(split: str, n: int, seed: int) -> list[tuple[bytes, tuple[float, float], bytes]]:
    cfg = WORLD_PRESETS["easy"]
    cfg = type(cfg)(**{**cfg.__dict__, "task_weights": {"igatl": 1.0}})
    out = []
    for s in iter_samples(cfg, split, n, seed):
        seg = s["json"]["segments"][0] if s["json"].get("segments") else None
        if seg is None:
            seg = next(e["segment"] for e in s["json"]["sound_events"] if e["object"] is not None)
        out.append((s["audio"], tuple(seg), s["image"]))
    return out


def encode(model, audio_fe, items, window_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """-> tokens ``[n, N, D]`` and the per-token mean log-mel of each token's span ``[n, N, F]``."""
    a = model.config.audio
    starts, ends = audio_token_times(a)
    toks, mels = [], []
    for audio, *_ in items:
        wave = media.load_audio(audio, target_sr=a.sampling_rate, max_seconds=a.clip_seconds)
        mel = audio_fe([wave])  # [1, W, 1, T, F]
        with torch.no_grad():
            toks.append(model.audio_encoder(mel)[0].numpy())
        m = mel[0].numpy()  # [W, 1, T, F]
        w, _, t, f = m.shape
        frames = m[:, 0].reshape(w * t, f)
        times = (np.arange(w)[:, None] + np.arange(t)[None, :] / max(t - 1, 1)).reshape(-1) * window_seconds
        mels.append(
            np.stack(
                [
                    frames[(times >= s) & (times < e) | (times == e)].mean(0)
                    for s, e in zip(starts, ends, strict=True)
                ]
            )
        )
    return np.stack(toks), np.stack(mels)


def labels(items, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``[n, N]``: 1 where the token's span overlaps the event by at least half of the span."""
    out = []
    for _, (s, e), _ in items:
        overlap = np.clip(np.minimum(ends, e) - np.maximum(starts, s), 0, None)
        out.append((overlap >= 0.5 * (ends - starts)).astype(np.int64))
    return np.stack(out)


def probe(x_tr, y_tr, x_te, y_te) -> tuple[dict, np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    n, t, d = x_tr.shape
    sc = StandardScaler().fit(x_tr.reshape(-1, d))
    clf = LogisticRegression(max_iter=2000, C=1.0, class_weight="balanced")
    clf.fit(sc.transform(x_tr.reshape(-1, d)), y_tr.reshape(-1))
    p = clf.predict_proba(sc.transform(x_te.reshape(-1, x_te.shape[-1])))[:, 1]
    yt = y_te.reshape(-1)
    return (
        {
            "auc": round(float(roc_auc_score(yt, p)), 4),
            "balanced_acc": round(float(balanced_accuracy_score(yt, p > 0.5)), 4),
        },
        p.reshape(y_te.shape),
    )


def interval_scores(p: np.ndarray, items, starts, ends, band_slots: int) -> dict:
    """Per clip: average the probe's score over the bands of each time slot, the interval from the
    first to the last slot above 0.5; mean IoU with the truth and event F1 at IoU 0.5."""
    ious = []
    n_slots = band_slots
    for row, (_, (s, e), _) in zip(p, items, strict=True):
        slot_p = row.reshape(-1, n_slots).mean(0)
        on = np.nonzero(slot_p > 0.5)[0]
        if not len(on):
            ious.append(0.0)
            continue
        ious.append(_iou((starts[on[0]], ends[on[-1]]), (s, e)))
    return _iou_summary(ious)


def _iou(a, b) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / max(max(a[1], b[1]) - min(a[0], b[0]), 1e-9)


def _iou_summary(ious) -> dict:
    ious = np.asarray(ious)
    return {"mean_iou": round(float(ious.mean()), 4), "event_f1@0.5": round(float((ious >= 0.5).mean()), 4)}


def llm_side(ref: str, items) -> tuple[np.ndarray, list[float] | None]:
    """Audio tokens the trained LLM of ``ref`` receives ``[n, N, D_T]``; IoUs of its time map's window."""
    from meerkat_core.batching import SamplePreprocessor
    from meerkat_core.builders import load_model
    from meerkat_core.model import time_map_window

    if ref.startswith("models:/"):
        from pipelines import registry

        model = registry.load(ref)
    else:
        model = load_model(ref)
    model.eval()
    pp = SamplePreprocessor(model.config, model.tokenizer)
    a = model.config.audio
    toks, ious = [], []
    for audio, seg, image in items:
        row = pp(image, audio, {"instruction": "x", "answer": "x"}, with_answer=False)
        with torch.no_grad():
            media_tokens = model.encode_media(
                torch.from_numpy(row["pixel_values"])[None], torch.from_numpy(row["audio_features"])[None]
            )
        toks.append(media_tokens.aud[0].float().numpy())
        if media_tokens.time_logits is not None:
            step = a.window_seconds / audio_token_layout(a)[1]
            w = time_map_window(
                media_tokens.time_logits.sigmoid(), model.audio_token_centres, step, a.clip_seconds
            )
            ious.append(_iou(w[0].tolist(), seg))
    return np.stack(toks), (ious or None)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-scenes", type=int, default=150)
    ap.add_argument("--test-scenes", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", default="")
    ap.add_argument("--model", default="", help="a trained model (models:/name/version or a directory)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = cfgmod.PRESETS["tiny"]
    model = build_model(cfg, pretrained=False, seed=0).eval()
    _, audio_fe = front_ends(cfg)
    t0 = time.time()
    tr, te = clips("train", args.train_scenes, args.seed), clips("test", args.test_scenes, args.seed)
    x_tr, m_tr = encode(model, audio_fe, tr, cfg.audio.window_seconds)
    x_te, m_te = encode(model, audio_fe, te, cfg.audio.window_seconds)
    print(f"{len(tr)} train / {len(te)} test clips encoded in {time.time() - t0:.0f}s; tokens {x_tr.shape}")

    n = cfg.audio.num_tokens
    clip = cfg.audio.clip_seconds
    seq_starts = np.arange(n) * clip / n
    seq_ends = seq_starts + clip / n
    h_starts, h_ends = audio_token_times(cfg.audio)
    slots = len(np.unique(h_starts))
    out: dict = {"tokens": list(x_tr.shape[1:]), "time_slots": slots}
    for name, (st, en) in {"sequence": (seq_starts, seq_ends), "htsat": (h_starts, h_ends)}.items():
        y_tr, y_te = labels(tr, st, en), labels(te, st, en)
        res, p = probe(x_tr, y_tr, x_te, y_te)
        out[f"htsat_tokens/{name}"] = res
        print(f"HTSAT tokens, layout {name:<8}: {res}")
    y_tr, y_te = labels(tr, h_starts, h_ends), labels(te, h_starts, h_ends)
    res, p = probe(x_tr, y_tr, x_te, y_te)
    out["htsat_tokens/interval"] = interval_scores(p, te, h_starts[:slots], h_ends[:slots], slots)
    print(f"HTSAT tokens, interval from the probe: {out['htsat_tokens/interval']}")
    res_m, p_m = probe(m_tr, y_tr, m_te, y_te)
    out["mel_of_token_span"] = res_m
    out["mel_of_token_span/interval"] = interval_scores(p_m, te, h_starts[:slots], h_ends[:slots], slots)
    print(f"log-mel of each token's span:    {res_m} {out['mel_of_token_span/interval']}")
    if args.model:
        l_tr, _ = llm_side(args.model, tr)
        l_te, ious = llm_side(args.model, te)
        res_l, p_l = probe(l_tr, y_tr, l_te, y_te)
        out["llm_side_tokens"] = res_l
        out["llm_side_tokens/interval"] = interval_scores(p_l, te, h_starts[:slots], h_ends[:slots], slots)
        print(f"audio tokens the LLM receives: {res_l} {out['llm_side_tokens/interval']}")
        if ious is not None:
            out["time_map_window"] = _iou_summary(ious)
            print(f"the time map's own window:     {out['time_map_window']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
