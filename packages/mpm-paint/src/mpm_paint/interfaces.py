"""Public contracts of mpm-paint: the protocols it consumes and the dataclasses it produces.

This package imports no other mpm package; ``integration/`` wires packages together through
these shapes.

Produced
--------
``Conditioning``        what a conditioner hands the UNet's cross-attention (hidden states + mask)
``PaintHooks``          the optional safety filters and reranker of the pipeline (all off by default)
``PaintTrainingConfig`` the loss settings of :class:`mpm_paint.PaintTrainable` (JSON round-trip)

Consumed
--------
``PromptFilter``, ``ImageFilter``, ``ImageScorer`` callables (VisCPM's safety checkers, a reranker's
scorer) and the trainer's batch, whose contract is :class:`PaintBatch`:

``PaintBatch`` (what ``PaintTrainable.training_step(batch)`` accepts, what ``collate`` returns)
    ``pixel_values``   ``float`` tensor ``[B, 3, H, W]`` in ``[-1, 1]`` (H, W divisible by the model's
                       total downsampling factor)
    and either
    ``prompts``        ``list[str]`` of length ``B`` (tokenized by the conditioner), or
    ``input_ids``      ``long`` ``[B, L]`` from the conditioner's tokenizer, **right**-padded, with
    ``attention_mask`` ``long`` ``[B, L]`` (1 = real token); :func:`mpm_paint.tokenize_prompts` makes them.
    When both are present ``input_ids`` win. Extra keys are ignored.
    With a :class:`mpm_paint.StateConditioner` the text is replaced by precomputed states:
    ``prompt_embeds``  ``float`` ``[B, D]`` (pooled) or ``[B, L, D]`` (per token), with an optional
    ``prompt_embeds_mask`` ``long`` ``[B, L]``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Protocol, TypedDict, runtime_checkable

import torch

PredictionType = Literal["epsilon", "v_prediction", "sample"]


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning for the UNet's cross-attention.

    Attributes:
        hidden_states: ``[B, L, D]`` vectors fed as ``encoder_hidden_states``.
        attention_mask: ``[B, L]`` with 1 for real tokens and 0 for padding
            (fed as ``encoder_attention_mask``).
    """

    hidden_states: torch.Tensor
    attention_mask: torch.Tensor

    def __post_init__(self) -> None:
        hs, mask = self.hidden_states, self.attention_mask
        if hs.dim() != 3:
            raise ValueError(f"Conditioning.hidden_states must be [B, L, D], got shape {tuple(hs.shape)}")
        if tuple(mask.shape) != tuple(hs.shape[:2]):
            raise ValueError(
                f"Conditioning.attention_mask shape {tuple(mask.shape)} does not match hidden_states "
                f"[B, L] = {tuple(hs.shape[:2])}"
            )

    @classmethod
    def from_embeds(cls, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Conditioning:
        """Wrap raw ``[B, L, D]`` embeddings; a missing mask means every position is real."""
        if attention_mask is None:
            attention_mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return cls(embeds, attention_mask.to(embeds.device))

    def __len__(self) -> int:
        return int(self.hidden_states.shape[0])

    @property
    def dim(self) -> int:
        """Width ``D`` of the vectors (must equal the UNet's ``cross_attention_dim``)."""
        return int(self.hidden_states.shape[-1])

    @property
    def length(self) -> int:
        """Sequence length ``L``."""
        return int(self.hidden_states.shape[1])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Conditioning:
        """Move (and optionally cast the hidden states of) this conditioning."""
        return Conditioning(
            self.hidden_states.to(device=device, dtype=dtype), self.attention_mask.to(device=device)
        )

    def repeat_interleave(self, repeats: int) -> Conditioning:
        """Repeat each row ``repeats`` times (``num_images_per_prompt``)."""
        return Conditioning(
            self.hidden_states.repeat_interleave(repeats, dim=0),
            self.attention_mask.repeat_interleave(repeats, dim=0),
        )

    def pad_to(self, length: int) -> Conditioning:
        """Right-pad with zero vectors (mask 0) to ``length`` positions."""
        if length < self.length:
            raise ValueError(f"cannot pad a conditioning of length {self.length} down to {length}")
        if length == self.length:
            return self
        extra = length - self.length
        hs = torch.nn.functional.pad(self.hidden_states, (0, 0, 0, extra))
        mask = torch.nn.functional.pad(self.attention_mask, (0, extra))
        return Conditioning(hs, mask)

    def select(self, index: torch.Tensor | Sequence[int]) -> Conditioning:
        """Rows ``index`` of this conditioning."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.hidden_states.device)
        return Conditioning(self.hidden_states[idx], self.attention_mask[idx])

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        """Concatenate along the batch, right-padding to the longest sequence."""
        if not items:
            raise ValueError("Conditioning.cat needs at least one conditioning")
        dims = {c.dim for c in items}
        if len(dims) != 1:
            raise ValueError(f"cannot concatenate conditionings of different widths {sorted(dims)}")
        length = max(c.length for c in items)
        padded = [c.pad_to(length) for c in items]
        return Conditioning(
            torch.cat([c.hidden_states for c in padded]), torch.cat([c.attention_mask for c in padded])
        )


class TokenizerLike(Protocol):
    """The slice of a transformers tokenizer that mpm-paint uses."""

    pad_token_id: int | None
    bos_token_id: int | None
    eos_token_id: int | None

    def __call__(self, text: list[str], **kwargs: Any) -> Any: ...


@runtime_checkable
class PromptFilter(Protocol):
    """Flags unsafe prompts: returns one bool per prompt, ``True`` = blocked (no image is generated)."""

    def __call__(self, prompts: list[str]) -> Sequence[bool]: ...


@runtime_checkable
class ImageFilter(Protocol):
    """Flags unsafe images: ``images`` is ``[N, 3, H, W]`` in ``[0, 1]``; ``True`` = blocked (blacked out)."""

    def __call__(self, images: torch.Tensor, prompts: list[str] | None) -> Sequence[bool]: ...


@runtime_checkable
class ImageScorer(Protocol):
    """Scores candidate images for the reranker (higher is better): returns ``[N]`` scores.

    ``images`` is ``[N, 3, H, W]`` in ``[0, 1]``; ``prompts`` (one per image) is ``None`` when the
    pipeline was called with ``prompt_embeds`` only.
    """

    def __call__(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor | Sequence[float]: ...


@dataclass
class PaintHooks:
    """Optional pipeline hooks, all off by default.

    Attributes:
        prompt_filter: blocks prompts before generation (VisCPM's text safety checker).
        image_filter: blocks generated images (VisCPM's image safety checker); blocked images are black.
        scorer: reranker; with ``rerank_factor = k > 1`` the pipeline draws ``k`` times as many
            images per prompt and keeps the ``num_images_per_prompt`` best by this score.
        rerank_factor: the ``k`` above (1 = no reranking).
    """

    prompt_filter: PromptFilter | None = None
    image_filter: ImageFilter | None = None
    scorer: ImageScorer | None = None
    rerank_factor: int = 1

    def __post_init__(self) -> None:
        if self.rerank_factor < 1:
            raise ValueError(f"rerank_factor must be >= 1, got {self.rerank_factor}")
        if self.rerank_factor > 1 and self.scorer is None:
            raise ValueError(f"rerank_factor={self.rerank_factor} needs a scorer")


class PaintBatch(TypedDict, total=False):
    """The batch contract of :meth:`mpm_paint.PaintTrainable.training_step` (see the module docstring)."""

    pixel_values: torch.Tensor
    prompts: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_embeds: torch.Tensor
    prompt_embeds_mask: torch.Tensor


@dataclass(frozen=True)
class PaintTrainingConfig:
    """Loss settings of :class:`mpm_paint.PaintTrainable`.

    Attributes:
        prediction_type: the UNet's target, ``"epsilon"`` (VisCPM, SD), ``"v_prediction"`` or
            ``"sample"`` (the clean image ``x0``);
            ``None`` takes the noise scheduler's ``prediction_type``.
        snr_gamma: min-SNR-gamma loss weighting (e.g. 5.0); ``None`` = plain MSE.
        cond_dropout: probability of replacing a sample's conditioning with the empty prompt's
            (trains the unconditional branch used by classifier-free guidance).
        noise_offset: offset-noise strength (0 = off).
    """

    prediction_type: PredictionType | None = None
    snr_gamma: float | None = None
    cond_dropout: float = 0.1
    noise_offset: float = 0.0

    def __post_init__(self) -> None:
        if self.prediction_type not in (None, "epsilon", "v_prediction", "sample"):
            raise ValueError(
                f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {self.prediction_type!r}"
            )
        if not 0.0 <= self.cond_dropout <= 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1], got {self.cond_dropout}")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be positive, got {self.snr_gamma}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PaintTrainingConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown PaintTrainingConfig keys {sorted(unknown)}")
        return cls(**data)
