"""Bridges from vision features ``[B, N, C_in]`` to LLM input embeddings ``[B, K, C_out]``.

Four designs the field uses, behind one registry (``create_bridge`` / ``register_bridge``):

``mlp``        LLaVA: ``Linear -> GELU -> Linear`` per patch token (``K = N``).
``query``      VisCPM: learnable queries appended to the patch tokens, a small transformer over
               both, the query outputs through ``Linear -> GELU -> Linear`` (``K = num_queries``);
               ``multiway=True`` gives patch and query tokens separate feed-forward experts (BEiT-3).
``perceiver``  Flamingo's Perceiver Resampler: latents cross-attend to ``[features; latents]``.
``qformer``    BLIP-2 style: queries self-attend, cross-attend to the features, feed-forward.
``pooled``     the cheap one: mean-pool the tokens, ``LayerNorm -> Linear -> GELU -> Linear`` to
               ``K`` tokens at once (for a frozen CNN's 1280-d features on a CPU: ~4M parameters,
               where a ``query`` bridge at 1280 width over 49 tokens costs ~40M and most of a step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .interfaces import BridgeConfig

__all__ = [
    "BRIDGES",
    "Bridge",
    "MLPBridge",
    "PerceiverBridge",
    "PooledBridge",
    "QFormerBridge",
    "QueryBridge",
    "create_bridge",
    "register_bridge",
]


class Bridge(nn.Module):
    """Base class: ``forward(features [B, N, in_dim]) -> [B, K, out_dim]``."""

    config: BridgeConfig

    def num_output_tokens(self, num_input_tokens: int) -> int:
        """``K`` for ``N`` input tokens."""
        return int(self.config.num_queries)

    def _check(self, features: torch.Tensor) -> None:
        if features.ndim != 3 or features.shape[-1] != self.config.in_dim:
            raise ValueError(
                f"{self.config.kind} bridge expects features [B, N, {self.config.in_dim}], got {list(features.shape)}"
            )


B = TypeVar("B", bound=type[Bridge])
BRIDGES: dict[str, type[Bridge]] = {}
"""The bridge registry: kind -> class. Extend it with :func:`register_bridge`."""


def register_bridge(kind: str) -> Callable[[B], B]:
    """Class decorator adding a :class:`Bridge` subclass to the registry under ``kind``.

    The class is constructed as ``cls(config: BridgeConfig)`` and reads its options from
    ``config.options``.
    """

    def deco(cls: B) -> B:
        if kind in BRIDGES and BRIDGES[kind] is not cls:
            raise ValueError(f"bridge kind {kind!r} is already registered to {BRIDGES[kind].__name__}")
        BRIDGES[kind] = cls
        return cls

    return deco


def create_bridge(kind: str, *, in_dim: int, out_dim: int, num_queries: int = 64, **options: Any) -> Bridge:
    """Create a registered bridge.

    Args:
        kind: ``"mlp"``, ``"query"``, ``"perceiver"``, ``"qformer"`` or a kind added with
            :func:`register_bridge`.
        in_dim: vision feature width (``encoder.feature_dim``).
        out_dim: LLM hidden size.
        num_queries: output tokens for the query-based bridges (ignored by ``mlp``).
        **options: kind-specific options (``depth``, ``num_heads``, ``mlp_ratio``, ``multiway``...).
    """
    if kind not in BRIDGES:
        raise ValueError(f"unknown bridge kind {kind!r}; registered kinds: {sorted(BRIDGES)}")
    if in_dim <= 0 or out_dim <= 0 or num_queries <= 0:
        raise ValueError(
            f"in_dim, out_dim and num_queries must be positive, got {in_dim}, {out_dim}, {num_queries}"
        )
    return bridge_from_config(
        BridgeConfig(
            kind=kind, in_dim=int(in_dim), out_dim=int(out_dim), num_queries=int(num_queries), options=options
        )
    )


def bridge_from_config(config: BridgeConfig) -> Bridge:
    """Rebuild a bridge (random weights) from its :class:`BridgeConfig`."""
    if config.kind not in BRIDGES:
        raise ValueError(f"unknown bridge kind {config.kind!r}; registered kinds: {sorted(BRIDGES)}")
    return BRIDGES[config.kind](config)


def _options(config: BridgeConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(config.options) - set(defaults))
    if unknown:
        raise ValueError(f"{config.kind} bridge: unknown options {unknown}; accepted: {sorted(defaults)}")
    return {**defaults, **config.options}


# ----------------------------------------------------------------------------------------------
@register_bridge("mlp")
class MLPBridge(Bridge):
    """LLaVA's projector: ``Linear(in, out) -> GELU -> Linear(out, out)`` on every token.

    Parameter names match transformers' ``LlavaMultiModalProjector`` (``linear_1``, ``linear_2``).
    Options: ``depth`` (1 = a single linear layer, 2 = LLaVA-1.5), ``bias``.
    """

    def __init__(self, config: BridgeConfig) -> None:
        super().__init__()
        self.config = config
        opt = _options(config, {"depth": 2, "bias": True})
        if opt["depth"] not in (1, 2):
            raise ValueError(f"mlp bridge depth must be 1 or 2, got {opt['depth']}")
        self.linear_1 = nn.Linear(config.in_dim, config.out_dim, bias=opt["bias"])
        self.act = nn.GELU() if opt["depth"] == 2 else nn.Identity()
        self.linear_2 = (
            nn.Linear(config.out_dim, config.out_dim, bias=opt["bias"]) if opt["depth"] == 2 else None
        )

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return int(num_input_tokens)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self._check(features)
        x = self.act(self.linear_1(features))
        return self.linear_2(x) if self.linear_2 is not None else x


# ----------------------------------------------------------------------------------------------
class _Attention(nn.Module):
    """Multi-head attention on ``F.scaled_dot_product_attention`` with separate query and
    key/value inputs (``nn.MultiheadAttention`` would also do, but this keeps one code path for
    self-attention, cross-attention and the perceiver's ``[features; latents]`` keys)."""

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        ctx = x if context is None else context
        h = self.num_heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def _ffn(dim: int, mlp_ratio: float) -> nn.Sequential:
    hidden = int(dim * mlp_ratio)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class _MultiwayBlock(nn.Module):
    """Pre-norm transformer block; with ``multiway`` the last ``num_queries`` tokens use their own
    feed-forward expert (BEiT-3's multiway idea). Written by hand because
    ``nn.TransformerEncoderLayer`` cannot route tokens to different feed-forward networks."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, multiway: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = _Attention(dim, num_heads)
        self.ffn = _ffn(dim, mlp_ratio)
        self.ffn_query = _ffn(dim, mlp_ratio) if multiway else None

    def forward(self, x: torch.Tensor, num_queries: int) -> torch.Tensor:
        x = x + self.attn(self.norm(x))
        if self.ffn_query is None:
            return x + self.ffn(x)
        patches, queries = x[:, :-num_queries], x[:, -num_queries:]
        return torch.cat([patches + self.ffn(patches), queries + self.ffn_query(queries)], dim=1)


@register_bridge("query")
class QueryBridge(Bridge):
    """VisCPM's visual module: ``num_queries`` learnable queries are appended to the patch tokens,
    a small transformer runs over both, and the query outputs go through
    ``Linear(in, hidden) -> GELU -> Linear(hidden, out)`` (``hidden`` defaults to ``out_dim``,
    VisCPM's 1024 -> 4096 -> 4096).

    Options: ``depth`` (2), ``num_heads`` (``max(1, in_dim // 64)``), ``mlp_ratio`` (4),
    ``multiway`` (False), ``hidden_dim`` (``out_dim``).
    """

    def __init__(self, config: BridgeConfig) -> None:
        super().__init__()
        self.config = config
        d = config.in_dim
        opt = _options(
            config,
            {
                "depth": 2,
                "num_heads": max(1, d // 64),
                "mlp_ratio": 4.0,
                "multiway": False,
                "hidden_dim": None,
            },
        )
        self.queries = nn.Parameter(torch.randn(config.num_queries, d) * 0.02)
        self.blocks = nn.ModuleList(
            _MultiwayBlock(d, opt["num_heads"], opt["mlp_ratio"], opt["multiway"])
            for _ in range(opt["depth"])
        )
        self.norm = nn.LayerNorm(d)
        hidden = opt["hidden_dim"] or config.out_dim
        self.proj = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, config.out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self._check(features)
        q = self.config.num_queries
        x = torch.cat([features, self.queries.expand(features.shape[0], -1, -1).to(features.dtype)], dim=1)
        for block in self.blocks:
            x = block(x, q)
        return self.proj(self.norm(x[:, -q:]))


@register_bridge("pooled")
class PooledBridge(Bridge):
    """The mean of the feature tokens through ``LayerNorm -> Linear(in, hidden) -> GELU ->
    Linear(hidden, K * out)``, reshaped to ``K = num_queries`` tokens.

    One vector per image, like the pooled features a contrastive head is trained on, so it is cheap
    to warm-start (``mpm_vision.regress_bridge``) and to train. Options: ``hidden_dim`` (1024).
    """

    def __init__(self, config: BridgeConfig) -> None:
        super().__init__()
        self.config = config
        opt = _options(config, {"hidden_dim": 1024})
        self.norm = nn.LayerNorm(config.in_dim)
        self.proj = nn.Sequential(
            nn.Linear(config.in_dim, int(opt["hidden_dim"])),
            nn.GELU(),
            nn.Linear(int(opt["hidden_dim"]), config.num_queries * config.out_dim),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self._check(features)
        x = self.proj(self.norm(features.mean(1)))
        return x.view(features.shape[0], self.config.num_queries, self.config.out_dim)


@register_bridge("perceiver")
class PerceiverBridge(Bridge):
    """Flamingo's Perceiver Resampler: ``num_queries`` latents; each layer
    ``latents += Attn(q=LN(latents), kv=[LN(features); LN(latents)])`` then a feed-forward; a final
    LayerNorm and a linear map to ``out_dim``.

    Options: ``depth`` (2), ``num_heads`` (``max(1, dim // 64)``), ``mlp_ratio`` (4), ``dim`` (``in_dim``).
    """

    def __init__(self, config: BridgeConfig) -> None:
        super().__init__()
        self.config = config
        opt = _options(config, {"depth": 2, "num_heads": None, "mlp_ratio": 4.0, "dim": None})
        dim = int(opt["dim"] or config.in_dim)
        heads = int(opt["num_heads"] or max(1, dim // 64))
        self.input_proj = nn.Linear(config.in_dim, dim) if dim != config.in_dim else nn.Identity()
        self.latents = nn.Parameter(torch.randn(config.num_queries, dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "norm_media": nn.LayerNorm(dim),
                    "norm_latents": nn.LayerNorm(dim),
                    "attn": _Attention(dim, heads),
                    "ffn": _ffn(dim, opt["mlp_ratio"]),
                }
            )
            for _ in range(int(opt["depth"]))
        )
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, config.out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self._check(features)
        x = self.input_proj(features)
        lat = self.latents.expand(x.shape[0], -1, -1).to(x.dtype)
        layer: Any
        for layer in self.layers:
            media = layer["norm_media"](x)
            ln_lat = layer["norm_latents"](lat)
            lat = lat + layer["attn"](ln_lat, torch.cat([media, ln_lat], dim=1))
            lat = lat + layer["ffn"](lat)
        return self.out(self.norm(lat))


@register_bridge("qformer")
class QFormerBridge(Bridge):
    """BLIP-2 style Q-Former (the query branch): learnable queries run through a stack of
    ``torch.nn.TransformerDecoderLayer`` (self-attention among queries, cross-attention to the
    image features, feed-forward), then a linear map to the LLM width.

    Options: ``depth`` (2), ``num_heads`` (``max(1, dim // 64)``), ``mlp_ratio`` (4), ``dim``
    (``in_dim``), ``dropout`` (0).
    """

    def __init__(self, config: BridgeConfig) -> None:
        super().__init__()
        self.config = config
        opt = _options(config, {"depth": 2, "num_heads": None, "mlp_ratio": 4.0, "dim": None, "dropout": 0.0})
        dim = int(opt["dim"] or config.in_dim)
        heads = int(opt["num_heads"] or max(1, dim // 64))
        if dim % heads:
            raise ValueError(f"qformer width {dim} is not divisible by num_heads {heads}")
        self.input_proj = nn.Linear(config.in_dim, dim) if dim != config.in_dim else nn.Identity()
        self.queries = nn.Parameter(torch.randn(config.num_queries, dim) * 0.02)
        layer = nn.TransformerDecoderLayer(
            dim,
            heads,
            dim_feedforward=int(dim * opt["mlp_ratio"]),
            dropout=float(opt["dropout"]),
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers=int(opt["depth"]), norm=nn.LayerNorm(dim))
        self.out = nn.Linear(dim, config.out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self._check(features)
        memory = self.input_proj(features)
        q = self.queries.expand(memory.shape[0], -1, -1).to(memory.dtype)
        return self.out(self.decoder(q, memory))
