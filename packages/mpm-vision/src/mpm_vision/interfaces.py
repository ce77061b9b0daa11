"""Public contracts of mpm-vision: the protocols it consumes and the dataclasses it produces.

This package imports no other mpm package; ``integration/`` wires packages together through
these shapes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

IGNORE_INDEX = -100
"""Label value that carries no loss (the transformers / PyTorch convention)."""


# ----------------------------------------------------------------------------------------------
# Protocols this package consumes
# ----------------------------------------------------------------------------------------------
@runtime_checkable
class CausalLanguageModel(Protocol):
    """What :class:`~mpm_vision.VisionLanguageModel` needs from a language model.

    Any ``transformers`` ``AutoModelForCausalLM`` satisfies it (also wrapped by peft).
    """

    config: Any

    def get_input_embeddings(self) -> torch.nn.Module: ...

    def generate(self, *args: Any, **kwargs: Any) -> Any: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class Tokenizer(Protocol):
    """The subset of a ``transformers`` tokenizer that is used."""

    pad_token_id: int | None
    eos_token_id: int | None

    def __call__(self, text: Any, **kwargs: Any) -> Any: ...

    def convert_tokens_to_ids(self, tokens: Any) -> Any: ...

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str]: ...

    def get_added_vocab(self) -> dict[str, int]: ...

    def add_tokens(self, new_tokens: Any, special_tokens: bool = False) -> int: ...


# ----------------------------------------------------------------------------------------------
# Configs (frozen, JSON round-trip)
# ----------------------------------------------------------------------------------------------
class _JsonMixin:
    """``to_dict`` / ``to_json`` / ``from_dict`` / ``from_json`` for frozen dataclass configs."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known: {sorted(names)}")
        kwargs = {}
        for key, value in data.items():
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> Any:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class ImagePreprocessing(_JsonMixin):
    """How raw images become ``pixel_values``: resize the shortest edge, centre crop, normalise.

    ``image_size`` is ``(height, width)``; ``mean``/``std`` are per RGB channel in ``[0, 1]`` units.
    Transparent images are composited onto ``background`` before the RGB conversion.
    """

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    background: tuple[int, int, int] = (255, 255, 255)


@dataclass(frozen=True)
class EncoderConfig(_JsonMixin):
    """Everything needed to rebuild an encoder with :func:`~mpm_vision.create_encoder`."""

    name: str
    image_size: int | None = None
    feature_layer: int = -1
    keep_prefix_tokens: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:  # dict field: hash the JSON form
        return hash(self.to_json())


@dataclass(frozen=True)
class BridgeConfig(_JsonMixin):
    """Everything needed to rebuild a bridge with :func:`~mpm_vision.create_bridge`."""

    kind: str
    in_dim: int
    out_dim: int
    num_queries: int = 64
    options: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash(self.to_json())


@dataclass(frozen=True)
class VisionLanguageConfig(_JsonMixin):
    """Settings of a :class:`~mpm_vision.VisionLanguageModel` that are not weights.

    ``prompt_template``/``answer_template`` format single-turn samples and chat turns when the
    tokenizer has no chat template (or ``use_chat_template`` is False); ``{prompt}`` and
    ``{answer}`` are the fields.
    """

    image_token: str = "<image>"
    prompt_template: str = "USER: {prompt}\nASSISTANT:"
    answer_template: str = " {answer}"
    turn_separator: str = "\n"
    use_chat_template: bool = False
    add_eos_to_answer: bool = True
    max_length: int | None = None
    train_encoder: bool = False
    image_separator: str = "\n"


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------
@dataclass
class VisionBatch:
    """A collated training/inference batch (what :meth:`VisionLanguageModel.collate` returns).

    ``pixel_values`` holds every image of the batch in prompt order (``[num_images, 3, H, W]``,
    or ``None`` for a text-only batch); ``image_counts[i]`` is how many belong to sample ``i``.
    Samples collated from stored encoder features carry ``image_features`` (``[num_images, N, C]``)
    instead of ``pixel_values``.
    Behaves like a read-only mapping of its tensor fields, so ``model(**batch)`` works.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    image_counts: list[int] = field(default_factory=list)
    image_features: torch.Tensor | None = None

    _FIELDS = ("pixel_values", "input_ids", "attention_mask", "labels", "image_features")

    def to(self, device: torch.device | str) -> VisionBatch:
        """A copy with every tensor moved to ``device``."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return VisionBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            pixel_values=move(self.pixel_values),
            labels=move(self.labels),
            image_counts=list(self.image_counts),
            image_features=move(self.image_features),
        )

    def keys(self) -> list[str]:
        return [k for k in self._FIELDS if getattr(self, k) is not None]

    def __getitem__(self, key: str) -> Any:
        if key not in self._FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class VisionLanguageOutput:
    """Result of :meth:`VisionLanguageModel.forward`.

    ``logits`` are only computed where they are needed: with labels, ``[num_loss_tokens, vocab]``
    for the label positions (flattened over the batch, in order); without labels,
    ``[batch, 1, vocab]`` at each row's last real token; or whatever ``logits_to_keep`` asked for.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor | None
    num_loss_tokens: int = 0
    image_embeds: torch.Tensor | None = None


@dataclass
class AnswerLogprobs:
    """Result of :meth:`VisionLanguageModel.answer_logprobs`: how likely each answer is.

    ``total``: the sum of the answer's token log-probabilities (float64; the EOS the model appends
    to answers counts as one of its tokens); ``num_tokens``: how many tokens were scored. Both are
    ``[num_images, num_answers]``, or ``[num_pairs]`` when pairs were given.
    """

    total: torch.Tensor
    num_tokens: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """Mean log-probability per token (the score that does not favour short answers)."""
        return self.total / self.num_tokens.clamp(min=1).to(self.total.dtype)


@dataclass
class VisionGenerationOutput:
    """Result of :meth:`VisionLanguageModel.generate`: decoded texts and the new token ids."""

    texts: list[str]
    sequences: torch.Tensor


@dataclass
class ChatHistory:
    """Conversation state for :meth:`VisionLanguageModel.chat`.

    ``image_embeds`` caches the bridge outputs of every image seen so far (``[num_images, K, D]``),
    so later turns never re-run the vision encoder.
    """

    turns: list[tuple[str, str]] = field(default_factory=list)
    image_embeds: torch.Tensor | None = None

    @property
    def num_images(self) -> int:
        return 0 if self.image_embeds is None else int(self.image_embeds.shape[0])


@dataclass
class ChatOutput:
    """Result of one :meth:`VisionLanguageModel.chat` turn."""

    answer: str
    history: ChatHistory


SampleImages = Any  # PIL.Image.Image | numpy array | Sequence of those
Sample = Mapping[str, Any]
Samples = Sequence[Sample]
