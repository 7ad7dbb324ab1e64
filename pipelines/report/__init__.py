"""Evaluation artefacts: the paper's Tables 3-6 with this run's row, baseline tables, and figures.

Pure functions; the evaluation job computes the metrics (``meerkat_core.metrics``) and logs what
these return to MLflow (markdown with ``mlflow.log_text``, figures with ``mlflow.log_figure`` or PNG
bytes from ``figure_png``). By concept:

- :mod:`pipelines.report.paper`: the paper's published numbers, splits and sample counts;
- :mod:`pipelines.report.tables`: the markdown tables (``results_markdown``, ``baselines_markdown``);
- :mod:`pipelines.report.figures`: the success-rate curve, grounding and time-window figures.

``results`` is keyed ``results[task][dataset] = metrics dict``: ``task`` one of ``arig``, ``igatl``,
``avfact``, ``avqa``, ``avc``; ``dataset`` a source registry name (``vggss``, ``flickr_soundnet``,
``pascal_sound``, ``avsbench``, ``llp``, ``audioset_strong``, ``avqa``, ``music_avqa``, ``valor``)
or ``world``, the procedural world. The metrics dicts are those of ``meerkat_core.metrics``:

=======  ===========================================================================================
task     metrics dict
=======  ===========================================================================================
arig     ``localization_scores`` (``ciou``, ``auc``, ``mean_ciou``, ``n``), optionally with
         ``box_mean_iou`` (``mean_box_iou``'s ``mean_iou``) and ``sounding_rate`` merged in
igatl    ``f1`` and ``event_f1``: ``avvp_f1``'s ``segment_f1`` and ``event_f1`` (the LLP protocol),
         ``n``; the project's variants beside them (``micro_f1``, ``greedy_event_f1``, ...)
avfact   ``factcheck_scores`` (``f1``, ``accuracy``, ``per_type`` {1..4: {``f1``, ...}}, ``n``)
avqa     ``avqa_accuracy`` (``accuracy``, ``per_category`` {name: {``accuracy``, ``n``}}, ``n``)
avc      ``caption_scores`` (``bleu4``, ``meteor``, ``rouge_l``, ``cider``, ``n``)
=======  ===========================================================================================
"""

from pipelines.report.figures import figure_png, grounding_figure, segments_figure, success_curve_figure
from pipelines.report.paper import PAPER_REFERENCE, PAPER_SAMPLES, PAPER_SPLITS, dataset_label
from pipelines.report.tables import baselines_markdown, results_markdown

__all__ = [
    "PAPER_REFERENCE",
    "PAPER_SAMPLES",
    "PAPER_SPLITS",
    "baselines_markdown",
    "dataset_label",
    "figure_png",
    "grounding_figure",
    "results_markdown",
    "segments_figure",
    "success_curve_figure",
]
