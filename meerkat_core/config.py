"""Typed configuration of the Meerkat model, and its named presets.

Two tiers, as in torchtune/litgpt: :class:`ModelConfig` has every dimension as a field, and
``PRESETS`` names the two shapes this project ships:

* ``"paper"`` — CLIP ViT-B/16 (224 px, 197 tokens), CLAP's HTSAT audio transformer, Llama-2-7B-Chat
  with its own tokenizer, LoRA r=32 on ``q,k,v,o``. Weights come from ``name_or_path`` (a hub name
  or a local directory) at ``revision`` when ``build_model(..., pretrained=True)``, through
  :mod:`meerkat_core.pretrained` (every tensor accounted for; shapes from the checkpoint's own
  config), and each encoder's front end from that checkpoint's ``preprocessor_config.json``
  (:func:`meerkat_core.batching.front_ends`); with ``pretrained=False`` the preset's shapes are
  built with random weights (on ``device="meta"`` this allocates nothing). Specifically:

  - CLIP: ``openai/clip-vit-base-patch16``, the paper's ViT-B/16.
  - CLAP: ``laion/clap-htsat-unfused``. The paper cites Microsoft's CLAP, but its audio encoder is
    HTSAT and the authors' code loads LAION's CLAP; transformers implements only LAION's
    ``ClapModel`` layout (Microsoft's checkpoints need the ``msclap`` package and another front
    end). Unfused, because the fused variant mixes a downsampled whole clip with random 10-s crops
    of a longer one, while this model encodes a clip as consecutive 10-s windows in time order
    (:mod:`meerkat_core.encoders`), which the temporal task needs.
  - Revisions: ``"main"`` for all three and the tokenizer (:data:`PAPER_REVISION`): branch names,
    not commit hashes, since no commit could be verified from here. Pin them by overriding.
  - ``base_dtype = "bfloat16"``: the frozen base (both encoders, the LLM's base weights) in bf16,
    every trainable parameter in fp32 (:func:`meerkat_core.builders.build_model`).
  - AVACE is the paper's: ``avace.map_tokens`` and ``avace.map_box_tokens`` (the map written back
    into the image tokens, and the box it implies as features on every token;
    :mod:`meerkat_core.attention`) are off. Neither is in the paper; both were added for the tiny
    model and are ablations here (``pipelines/ablate.py``).
* ``"tiny"`` — the same transformers classes with small widths and depths, random weights and the
  offline tokenizer of :mod:`meerkat_core.tokenizer`, small enough to train on a CPU. float32
  throughout. Both AVACE write-backs are on: a small random LLM would otherwise have to learn from
  scratch to turn a highlighted patch region into box coordinates (the reasons are in
  :mod:`meerkat_core.attention`).

Decisions the paper leaves open, made here (see also the module docstrings they refer to):

* ``lora.alpha = 2 * r`` and dropout 0.05 (the paper gives only r=32).
* ``loss.lambda_ot = 0.1`` and ``loss.lambda_ac = 1.0``: the paper gives λ1 = λ2 = 0.5 inside L_AC
  but not the outer weights. The OT term is a weak prior (cosine distances in [0, 2]) and is kept
  small so that it cannot dominate CE; AC is the box-supervised signal that teaches the model which
  object sounds, so it gets full weight.
* ``llm_image_pool``: the LLM reads the AVACE-fused image tokens average-pooled k×k over the patch
  grid (1 for the paper, 2 for tiny); AVACE and L_AC always work on the full grid.
* ``region_prompts``: a box or time window written in a prompt (fact-checking) is also given to the
  LLM as features of what it covers (:mod:`meerkat_core.regions`). Off in ``paper`` (not in the paper;
  Llama-2 reads coordinates as text), on in ``tiny``, whose random LLM has no pre-trained sense of
  where a written coordinate lies.
* ``av_match``: how well anything in the picture matches the sound is given to the LLM as features
  (:mod:`meerkat_core.correspondence`), and ``loss.lambda_match`` (0.5) trains those similarities on
  every pair of the batch that the samples' classes label, mismatched pairs included. Off in
  ``paper`` (not in the paper), on in ``tiny``.

Configs are frozen dataclasses; :func:`from_dict` builds one from nested dicts and fails loudly on
unknown keys, :func:`to_dict` goes back (for YAML and MLflow params).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ImageEncoderConfig:
    """CLIP vision transformer (``transformers.CLIPVisionModel``)."""

    name_or_path: str | None = None
    """Hub name or local directory of a CLIP checkpoint (a ``CLIPModel`` or ``CLIPVisionModel``);
    ``None``: random init only. Loaded, its own config fixes the widths and depths below."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of ``name_or_path``; ``None``: the hub's default branch.
    Ignored for a local directory."""
    image_size: int = 224
    """Input side in pixels (square, after the CLIP centre crop)."""
    patch_size: int = 16
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )

    @property
    def grid(self) -> int:
        """Patches per side: 14 for ViT-B/16 at 224 px."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens out of the encoder: the patch grid plus CLS (197 for ViT-B/16)."""
        return self.grid**2 + 1


@dataclass(frozen=True)
class AudioEncoderConfig:
    """CLAP's HTSAT audio transformer (``transformers.ClapAudioModel``) and its front end.

    A clip is cut into ``num_windows`` consecutive windows of ``window_seconds`` (CLAP sees 10 s);
    each window is encoded alone and the token sequences are concatenated in time order, so a
    30-second clip (the paper's temporal task) gives 3× the tokens of one window.
    """

    name_or_path: str | None = None
    """Hub name or local directory of a CLAP checkpoint (a ``ClapModel``, as LAION's are);
    ``None``: random init only. Loaded, its own config fixes the widths and depths below, and its
    ``preprocessor_config.json`` the front end (which must agree with the fields here)."""
    revision: str | None = None
    """Hub revision of ``name_or_path``; ``None``: the default branch. Ignored for a local directory."""
    sampling_rate: int = 48_000
    """Hz; every clip is resampled to this before the mel front end."""
    num_mel_bins: int = 64
    hop_length: int = 480
    """Samples between mel frames (10 ms at 48 kHz): 1001 frames per 10-s window."""
    window_seconds: float = 10.0
    num_windows: int = 1
    """Windows per clip; longer clips are truncated, shorter ones zero-padded."""
    spec_size: int = 256
    patch_size: int = 4
    patch_embeds_hidden_size: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_attention_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 8
    hidden_size: int = 768
    """Width of CLAP's projection head (unused: we read the transformer's patch tokens)."""

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.num_attention_heads):
            raise ValueError("audio depths and num_attention_heads must have the same length")
        if self.spec_size % self.num_mel_bins:
            raise ValueError("spec_size must be a multiple of num_mel_bins (CLAP's freq_ratio)")
        if self.frames_per_window > self.spec_size * (self.spec_size // self.num_mel_bins):
            raise ValueError(
                f"{self.frames_per_window} mel frames per window exceed what spec_size {self.spec_size} holds"
            )

    @property
    def frames_per_window(self) -> int:
        return int(round(self.window_seconds * self.sampling_rate)) // self.hop_length + 1

    @property
    def token_dim(self) -> int:
        """Width of the last HTSAT stage: the audio token dimension D_A."""
        return self.patch_embeds_hidden_size * 2 ** (len(self.depths) - 1)

    @property
    def tokens_per_window(self) -> int:
        """HTSAT reduces the (spec_size/patch)² grid by 2 per stage after the first."""
        side = self.spec_size // self.patch_size // 2 ** (len(self.depths) - 1)
        return side * side

    @property
    def num_tokens(self) -> int:
        return self.tokens_per_window * self.num_windows

    @property
    def clip_seconds(self) -> float:
        return self.window_seconds * self.num_windows


@dataclass(frozen=True)
class LLMConfig:
    """The language model (``transformers.LlamaForCausalLM``)."""

    name_or_path: str | None = None
    """Hub name or local directory of Llama-2-7B-Chat (or another Llama); ``None``: random init.
    Loaded, its own config fixes every field below."""
    revision: str | None = None
    """Hub revision of ``name_or_path``; ``None``: the default branch. Ignored for a local directory."""
    vocab_size: int = 32_000
    """Base vocabulary; the special media tokens are added on top of it."""
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5


@dataclass(frozen=True)
class LoraConfig:
    """LoRA on the LLM's attention projections (paper §5.3: r=32 is best)."""

    r: int = 32
    """Rank; 0 means full fine-tuning of the LLM (the Fig. 4 'full' variant)."""
    alpha: int = 64
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    modules_to_save: tuple[str, ...] = ()
    """LLM modules trained in full beside the adapters (peft's ``modules_to_save``). The tiny preset
    trains ``lm_head``: a randomly initialised head (std 0.02) caps the logits so low that no LoRA
    update can make the next token likely; a pretrained Llama's head has no such problem."""

    @property
    def full_finetune(self) -> bool:
        return self.r == 0


@dataclass(frozen=True)
class AVACEConfig:
    """The AVACE cross-modal attention adapter (see :mod:`meerkat_core.attention`)."""

    dim: int = 768
    """Width of the shared audio-visual space where attention and the OT cost are computed."""
    num_heads: int = 8
    dropout: float = 0.0
    map_tokens: bool = True
    """Write the map back into the image tokens as ``A^c(k) · e_sound`` on each patch k (not in the
    paper; see :mod:`meerkat_core.attention`)."""
    map_box_tokens: bool = True
    """Add the box the map implies, as Fourier features through a learned projection, to every image
    token (not in the paper; see :mod:`meerkat_core.attention`)."""


@dataclass(frozen=True)
class LossConfig:
    """Weights of Eq. 4 and the parameters of Eq. 2-3."""

    lambda_ot: float = 0.1
    lambda_ac: float = 1.0
    ot_solver: str = "sinkhorn"
    """"exact" (POT's network simplex, one sample at a time) or "sinkhorn" (batched, entropic)."""
    ot_reg: float = 0.05
    """Entropic regulariser of the Sinkhorn solver, in units of the cosine cost."""
    ot_iters: int = 100
    ac_lambda1: float = 0.5
    ac_lambda2: float = 0.5
    ac_eps1: float = 1e-6
    ac_eps2: float = 1e-6
    lambda_time: float = 1.0
    """Weight of the time map's loss (``ModelConfig.audio_time_map``; :func:`meerkat_core.model.time_map_loss`)."""
    lambda_match: float = 0.0
    """Weight of the match loss (:func:`meerkat_core.correspondence.match_loss`): a sigmoid loss on
    how well each sound in the batch matches each picture, labelled by the classes the samples list,
    so that mismatched pairs are pushed apart as the OT loss pulls matching ones together. Needs
    ``ModelConfig.av_match``; not in the paper (0), on in ``tiny``."""
    number_label_sigma: float = 0.0
    """σ, in steps of the number grid, of Gaussian soft labels for whole-number answer tokens (see
    :mod:`meerkat_core.losses`); 0 is plain cross-entropy. Only a tokenizer with whole-number tokens
    (the offline one of ``tiny``) has any to smooth."""

    def __post_init__(self) -> None:
        if self.ot_solver not in ("exact", "sinkhorn"):
            raise ValueError(f"ot_solver must be 'exact' or 'sinkhorn', got {self.ot_solver!r}")
        if min(self.lambda_ot, self.lambda_ac, self.lambda_time, self.lambda_match) < 0:
            raise ValueError("loss weights must be >= 0")
        if self.number_label_sigma < 0:
            raise ValueError("number_label_sigma must be >= 0")


BASE_DTYPES = ("float32", "bfloat16")
"""Values of ``ModelConfig.base_dtype`` (names of torch dtypes)."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the model's shapes and its training objective."""

    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    avace: AVACEConfig = field(default_factory=AVACEConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    tokenizer: str | None = None
    """Hub name or directory of the tokenizer; ``None``: the offline tokenizer built in code."""
    tokenizer_revision: str | None = None
    """Hub revision of ``tokenizer``; ``None``: the default branch. Ignored for a local directory."""
    base_dtype: str = "float32"
    """dtype of the frozen base (both encoders and the LLM's base weights): "float32" or
    "bfloat16". Trainable parameters are always float32 (see :func:`~meerkat_core.builders.build_model`)."""
    llm_image_pool: int = 1
    """k: the LLM reads the image patch grid average-pooled k×k (1 = all patches)."""
    max_text_tokens: int = 256
    """Longest tokenized prompt + answer; longer ones are truncated from the prompt's start."""
    freeze_encoders: bool = True
    region_prompts: bool = False
    """A box or time window written in the prompt is also given to the LLM as features of what it
    covers (see :mod:`meerkat_core.regions`); not in the paper, on in ``tiny``."""
    audio_time_stamps: bool = False
    """Add to each audio token the LLM's own input embedding of the time token (``"3.1"``) at the
    centre of the stretch of the clip it covers (:func:`meerkat_core.encoders.time_stamp_ids`), times
    a learned gain (starts at 1): the audio tokens then say *when* in the vocabulary the answer is
    written in, and a time window is found by copying the stamps of its first and last sounding
    tokens. Needs a tokenizer with one token per time (the offline one); not in the paper (Llama-2
    writes numbers digit by digit), on in ``tiny``."""
    audio_time_map: bool = False
    """A time map, the temporal counterpart of AVACE's box map (:mod:`meerkat_core.attention`): a
    linear head scores each fused audio token "inside the sound", trained by a per-token
    cross-entropy against the window of each answer that is one (igatl; ``loss.lambda_time``), and
    the window its scores imply goes to the LLM as features (see
    :meth:`meerkat_core.model.MeerkatModel.encode_media`). Needs a tokenizer with one token per
    time, to read the window off the labels; not in the paper, on in ``tiny``."""

    av_match: bool = False
    """How well anything in the picture matches the sound (the closest image patch of each audio
    token by cosine similarity in AVACE's projections, the spread of AVACE's map, and the match
    loss's probability) goes to the
    LLM as features added to every audio token (see :mod:`meerkat_core.correspondence`): the
    absolute judgement a type-4 fact-check asks for, which AVACE's peak-normalised map cannot give.
    Not in the paper, on in ``tiny``; ``loss.lambda_match`` trains those similarities."""

    def __post_init__(self) -> None:
        if self.loss.lambda_match > 0 and not self.av_match:
            raise ValueError(
                "loss.lambda_match > 0 needs model.av_match (the match loss's scale and bias live there)"
            )
        if self.base_dtype not in BASE_DTYPES:
            raise ValueError(f"base_dtype must be one of {sorted(BASE_DTYPES)}, got {self.base_dtype!r}")
        if self.image.grid % self.llm_image_pool:
            raise ValueError(
                f"llm_image_pool {self.llm_image_pool} must divide the patch grid {self.image.grid}"
            )

    @property
    def llm_image_tokens(self) -> int:
        return (self.image.grid // self.llm_image_pool) ** 2


PAPER_REVISION = "main"
"""Revision of the paper preset's three checkpoints: the branch name, not a commit hash — no commit
of these repositories was checked from here (no network). Pin a commit by overriding the
``revision`` fields (``model.image.revision=<sha>`` ...) once one has been verified."""

PAPER = ModelConfig(
    image=ImageEncoderConfig(name_or_path="openai/clip-vit-base-patch16", revision=PAPER_REVISION),
    audio=AudioEncoderConfig(name_or_path="laion/clap-htsat-unfused", revision=PAPER_REVISION),
    llm=LLMConfig(name_or_path="meta-llama/Llama-2-7b-chat-hf", revision=PAPER_REVISION),
    lora=LoraConfig(r=32, alpha=64),
    avace=AVACEConfig(dim=768, num_heads=8, map_tokens=False, map_box_tokens=False),
    tokenizer="meta-llama/Llama-2-7b-chat-hf",
    tokenizer_revision=PAPER_REVISION,
    base_dtype="bfloat16",
    llm_image_pool=1,
    max_text_tokens=512,
)

TINY = ModelConfig(
    image=ImageEncoderConfig(
        image_size=224,
        patch_size=16,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
    ),
    audio=AudioEncoderConfig(
        spec_size=256,
        patch_size=4,
        patch_embeds_hidden_size=16,
        depths=(1, 1, 1, 1),
        num_attention_heads=(2, 2, 2, 2),
        window_size=8,
        hidden_size=64,
    ),
    llm=LLMConfig(
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
    ),
    lora=LoraConfig(r=8, alpha=16, dropout=0.0, modules_to_save=("lm_head",)),
    avace=AVACEConfig(dim=64, num_heads=4),
    llm_image_pool=2,
    max_text_tokens=160,
    region_prompts=True,
    audio_time_stamps=True,
    audio_time_map=True,
    av_match=True,
    loss=LossConfig(lambda_match=0.5),
)

PRESETS: dict[str, ModelConfig] = {"tiny": TINY, "paper": PAPER}


def to_dict(cfg: Any) -> Any:
    """A config (or any nesting of dataclasses, tuples, dicts) as plain YAML/JSON-able values."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, _where=where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise TypeError(f"{where}: {value!r} fits none of {tp}: {errors}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        (arg, *_rest) = typing.get_args(tp)
        return tuple(_coerce(arg, v, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {k: _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (arg,) = typing.get_args(tp)
        return [_coerce(arg, v, where) for v in value]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"{where}: expected true/false, got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, _where: str = "") -> T:
    """Build a config dataclass from nested dicts; unknown keys and wrong types raise."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise KeyError(
            f"unknown config key(s) {[f'{_where}.{k}'.lstrip('.') for k in unknown]} for {cls.__name__}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{_where}.{k}".lstrip(".")) for k, v in data.items()}
    return cls(**kwargs)


def replace_path(cfg: T, dotted: str, value: Any) -> T:
    """Return ``cfg`` with the field at ``a.b.c`` replaced (typed, validated); unknown paths raise."""
    head, _, rest = dotted.partition(".")
    if not dataclasses.is_dataclass(cfg) or head not in {f.name for f in dataclasses.fields(cfg)}:
        raise KeyError(f"unknown config key {dotted!r} for {type(cfg).__name__}")
    current = getattr(cfg, head)
    if rest:
        new = replace_path(current, rest, value)
    else:
        hint = typing.get_type_hints(type(cfg))[head]
        new = _coerce(hint, value, head)
    return dataclasses.replace(cfg, **{head: new})
