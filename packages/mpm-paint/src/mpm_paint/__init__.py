"""mpm-paint: Diffusion decoder conditioned on multilingual LLM hidden states (diffusers).

VisCPM-Paint generalised: a frozen transformers LM's hidden states -> ``Linear -> LayerNorm``
(:class:`LLMConditioner`) -> the cross-attention of a diffusers ``UNet2DConditionModel``, sampled
by :class:`MPMPaintPipeline` (any diffusers scheduler, pixel or latent space) and trained through
:class:`PaintTrainable` / :func:`diffusion_loss`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .conditioner import LLMConditioner, tokenize_prompts
from .interfaces import (
    Conditioning,
    ImageFilter,
    ImageScorer,
    PaintBatch,
    PaintHooks,
    PaintTrainingConfig,
    PromptFilter,
)
from .pipeline import MPMPaintPipeline, MPMPaintPipelineOutput
from .states import StateConditioner
from .training import STAGES, PaintTrainable, collate, diffusion_loss, make_collate

try:
    __version__ = version("mpm-paint")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "STAGES",
    "Conditioning",
    "ImageFilter",
    "ImageScorer",
    "LLMConditioner",
    "MPMPaintPipeline",
    "MPMPaintPipelineOutput",
    "PaintBatch",
    "PaintHooks",
    "PaintTrainable",
    "PaintTrainingConfig",
    "PromptFilter",
    "StateConditioner",
    "__version__",
    "collate",
    "diffusion_loss",
    "make_collate",
    "tokenize_prompts",
]
