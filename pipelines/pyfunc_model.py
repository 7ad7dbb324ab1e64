"""The MLflow pyfunc model of a registered Meerkat model (MLflow's models-from-code).

:func:`pipelines.registry.log_and_register` logs this file as the model's code, ``meerkat_core`` as
its code path and the model directory (``config.json``, trainable weights, ``tokenizer/``) as its
artifact ``meerkat``. ``mlflow.pyfunc.load_model`` runs this file in whatever environment loads the
model (a fresh virtualenv built from the model's own ``requirements.txt`` included), so it imports
nothing but MLflow and ``meerkat_core``: no ``pipelines``, Ray or boto3.

Input: rows of ``image`` and ``audio`` (base64 of the files' bytes: JPEG/PNG, WAV/FLAC) and
``instruction``; output: one answer text per row. Parameter ``max_new_tokens`` (default
:data:`meerkat_core.generation.DEFAULT_MAX_NEW_TOKENS`); prompts, batching and generation are
:mod:`meerkat_core.generation`'s. The model goes onto CUDA when torch sees a GPU, else the CPU.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel

ARTIFACT = "meerkat"
"""Name of the model directory among the logged model's artifacts."""


class MeerkatPyfunc(PythonModel):
    def load_context(self, context) -> None:  # noqa: ANN001
        import torch

        from meerkat_core.batching import SamplePreprocessor
        from meerkat_core.builders import load_model

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_model(context.artifacts[ARTIFACT], device=self.device)
        self.prep = SamplePreprocessor(self.model.config, self.model.tokenizer)

    # Untyped on purpose: MLflow reads predict's type hints as an input schema; the signature logged
    # with the model is the schema.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        import base64

        import pandas as pd

        from meerkat_core import generation

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = sorted({"image", "audio", "instruction"} - set(frame.columns))
        if missing:
            raise ValueError(
                f"Meerkat's input needs the columns image, audio, instruction: missing {missing}"
            )
        records = frame.to_dict("records")
        rows = [
            generation.prompt_row(
                self.prep,
                base64.b64decode(r["image"]),
                base64.b64decode(r["audio"]),
                {"instruction": r["instruction"]},
            )
            for r in records
        ]
        max_new_tokens = int((params or {}).get("max_new_tokens", generation.DEFAULT_MAX_NEW_TOKENS))
        return generation.generate_answers(
            self.model, rows, max_new_tokens=max_new_tokens, device=self.device
        )


mlflow.models.set_model(MeerkatPyfunc())
