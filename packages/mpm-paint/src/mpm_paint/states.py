"""Conditioning from **precomputed** text states (a pivot LLM's cached hidden states).

:class:`LLMConditioner` runs the frozen LM at every step. When the states are computed once and
cached (one pooled vector per caption, or per-token states), :class:`StateConditioner` is the
trainable part alone: ``[B, D]`` pooled vectors (or ``[B, L, D]`` token states) ->
``LayerNorm (no affine) -> Linear -> LayerNorm`` -> ``num_tokens`` cross-attention tokens per input
vector. The unconditional branch (classifier-free guidance) is the all-zero conditioning, which is
also what :class:`MPMPaintPipeline` uses when it has no text conditioner.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .interfaces import Conditioning


class StateConditioner(ModelMixin, ConfigMixin):
    """Precomputed text states -> :class:`Conditioning` for the UNet's cross-attention.

    Args:
        in_dim: width of the cached states (the pivot LM's hidden size).
        out_dim: the UNet's ``cross_attention_dim``.
        num_tokens: tokens made from each input vector (a pooled vector becomes ``num_tokens``
            tokens through one ``Linear(in_dim, num_tokens * out_dim)``; per-token states use
            ``num_tokens = 1``, VisCPM's ``trans_block``).
        normalize_input: standardise each input vector first (``LayerNorm`` without parameters),
            so that states of another language, whose norm differs, land on the same scale.
        hidden_dim: ``0`` = a linear projection; ``> 0`` = an MLP with one hidden layer this wide.

    Only this module trains; it never sees text. Saved and loaded by diffusers' ``ModelMixin``
    (``config.json`` + ``diffusion_pytorch_model.safetensors``).
    """

    config_name = "config.json"  # type: ignore[assignment]

    @register_to_config
    def __init__(
        self,
        *,
        in_dim: int,
        out_dim: int,
        num_tokens: int = 4,
        normalize_input: bool = True,
        hidden_dim: int = 0,
    ) -> None:
        super().__init__()
        for key, value in (("in_dim", in_dim), ("out_dim", out_dim), ("num_tokens", num_tokens)):
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        if hidden_dim < 0:
            raise ValueError(f"hidden_dim must be >= 0 (0 = linear), got {hidden_dim}")
        self.input_norm: nn.Module = (
            nn.LayerNorm(in_dim, elementwise_affine=False) if normalize_input else nn.Identity()
        )
        width = num_tokens * out_dim
        layers: list[nn.Module] = (
            [nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, width)]
            if hidden_dim
            else [nn.Linear(in_dim, width, bias=False)]
        )
        self.projection = nn.Sequential(*layers)
        self.output_norm = nn.LayerNorm(out_dim)

    @property
    def in_dim(self) -> int:
        return int(self.config["in_dim"])

    @property
    def out_dim(self) -> int:
        return int(self.config["out_dim"])

    @property
    def num_tokens(self) -> int:
        return int(self.config["num_tokens"])

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter of this module (the projection and the output norm)."""
        return list(self.parameters())

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Conditioning:
        """``[B, D]`` (pooled) or ``[B, L, D]`` (+ ``[B, L]`` mask) states -> ``[B, L * num_tokens, out_dim]``."""
        if states.dim() == 2:
            states = states[:, None, :]
            if attention_mask is not None:
                raise ValueError("an attention_mask only goes with [B, L, D] token states, not [B, D]")
        if states.dim() != 3:
            raise ValueError(f"states must be [B, D] or [B, L, D], got shape {tuple(states.shape)}")
        if states.shape[-1] != self.in_dim:
            raise ValueError(
                f"states have width {states.shape[-1]} but this StateConditioner expects in_dim={self.in_dim} "
                "(the pivot's hidden size it was built for)"
            )
        if not bool(torch.isfinite(states).all()):
            raise ValueError("states hold NaN or inf values")
        b, length, _ = states.shape
        mask = (
            torch.ones((b, length), dtype=torch.long, device=states.device)
            if attention_mask is None
            else attention_mask.to(states.device)
        )
        if tuple(mask.shape) != (b, length):
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, expected {(b, length)}")
        p = next(self.projection.parameters())
        x = self.input_norm(states.to(device=p.device, dtype=p.dtype))
        out = self.projection(x).reshape(b, length * self.num_tokens, self.out_dim)
        out = self.output_norm(out)
        mask = mask.to(p.device).repeat_interleave(self.num_tokens, dim=1)
        return Conditioning(out, mask)

    def unconditional(self, batch: int = 1) -> Conditioning:
        """The unconditional branch: one all-zero token per row (what training's condition dropout uses)."""
        p = next(self.projection.parameters())
        return Conditioning(
            torch.zeros((batch, 1, self.out_dim), device=p.device, dtype=p.dtype),
            torch.ones((batch, 1), dtype=torch.long, device=p.device),
        )
