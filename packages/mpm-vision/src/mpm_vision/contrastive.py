"""A contrastive head: pooled image features -> a frozen LLM's text-state space (MPM stage 1a).

The head is trained with InfoNCE against *cached* text states (for example the pivot LLM's hidden
state of each concept's English name), so a training step costs a matrix product: no LLM and no
vision backbone runs while it trains. At test time an image is classified by its nearest text state
in any language, which is what makes the English-only head zero-shot in the pivot's other languages.

    head = ContrastiveHead(ContrastiveHeadConfig(in_dim=1280, out_dim=640))
    losses = fit_contrastive_head(head, features, targets, text_states, steps=400)
    scores = head.similarity(features_test, text_states_x)          # [B, N] cosine similarities
    head.save_pretrained("run/head"); ContrastiveHead.from_pretrained("run/head")
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["ContrastiveHead", "ContrastiveHeadConfig", "csls_penalty", "fit_contrastive_head", "info_nce"]

CONFIG_NAME = "head_config.json"
WEIGHTS_NAME = "head.safetensors"


@dataclass(frozen=True)
class ContrastiveHeadConfig:
    """Shape of a :class:`ContrastiveHead`.

    Attributes:
        in_dim: width of the image features (EfficientNet-Lite0 pooled: 1280).
        out_dim: width of the text states (Gemma-3-270M: 640).
        hidden: ``0`` for a linear map (measured best on cached features), else an MLP's hidden width.
        dropout: dropout on the input features while training.
    """

    in_dim: int
    out_dim: int
    hidden: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.in_dim < 1 or self.out_dim < 1 or self.hidden < 0:
            raise ValueError(f"bad head shape: {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class ContrastiveHead(nn.Module):
    """``[B, in_dim]`` image features -> ``[B, out_dim]`` unit vectors in the text-state space."""

    def __init__(self, config: ContrastiveHeadConfig) -> None:
        super().__init__()
        self.config = config
        self.dropout = nn.Dropout(config.dropout)
        self.net: nn.Module
        if config.hidden:
            self.net = nn.Sequential(
                nn.Linear(config.in_dim, config.hidden), nn.GELU(), nn.Linear(config.hidden, config.out_dim)
            )
        else:
            self.net = nn.Linear(config.in_dim, config.out_dim)
        self.feature_mean: torch.Tensor
        self.register_buffer("feature_mean", torch.zeros(config.in_dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(1 / 0.07)))))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.config.in_dim:
            raise ValueError(
                f"features must be [B, {self.config.in_dim}], got {list(features.shape)} "
                "(pooled encoder features; see VisionEncoder.pooled)"
            )
        x = self.dropout(features.float() - self.feature_mean)
        return F.normalize(self.net(x), dim=-1)

    def similarity(
        self, features: torch.Tensor, text_states: torch.Tensor, *, centre: bool = True
    ) -> torch.Tensor:
        """Cosine similarities ``[B, N]`` of images to text states. ``centre``: subtract the mean of
        ``text_states`` first (removes the language's common direction; pass a whole gallery)."""
        return self.forward(features) @ normalize_states(text_states, centre=centre).T

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``head_config.json`` and ``head.safetensors`` (atomically, each via a temp file)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (WEIGHTS_NAME + ".tmp")
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(tmp))
        os.replace(tmp, out / WEIGHTS_NAME)
        tmpc = out / (CONFIG_NAME + ".tmp")
        tmpc.write_text(json.dumps(asdict(self.config), indent=1), encoding="utf-8")
        os.replace(tmpc, out / CONFIG_NAME)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> ContrastiveHead:
        """Load what :meth:`save_pretrained` wrote (safetensors only)."""
        d = Path(directory)
        if not (d / CONFIG_NAME).is_file() or not (d / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{d} holds no contrastive head (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        head = cls(ContrastiveHeadConfig(**json.loads((d / CONFIG_NAME).read_text(encoding="utf-8"))))
        head.load_state_dict(load_file(str(d / WEIGHTS_NAME)))
        return head.eval()


def normalize_states(states: torch.Tensor, *, centre: bool = True) -> torch.Tensor:
    """Unit text states, optionally centred on their mean first."""
    s = states.float()
    if centre and s.shape[0] > 1:
        s = s - s.mean(0, keepdim=True)
    return F.normalize(s, dim=-1)


def info_nce(
    image_emb: torch.Tensor, text_emb: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """InfoNCE from images to a text gallery: image ``i`` should pick ``text_emb[targets[i]]``.

    Every image is scored against the whole gallery (all training concepts), so there are no
    in-batch false negatives when two views of one concept share a batch.
    """
    logits = scale.exp().clamp(max=100.0) * image_emb @ text_emb.T
    return F.cross_entropy(logits, targets)


def csls_penalty(text_emb: torch.Tensor, reference_images: torch.Tensor, k: int = 10) -> torch.Tensor:
    """CSLS hubness term of each text: the mean of its ``k`` best cosines to reference image embeddings
    (training images, not the evaluated ones). Subtracting it from image->text scores demotes "hub"
    texts that are close to everything."""
    sims = text_emb @ reference_images.T
    k = max(1, min(int(k), reference_images.shape[0]))
    return sims.topk(k, dim=1).values.mean(1)


def fit_contrastive_head(
    head: ContrastiveHead,
    features: torch.Tensor,
    targets: torch.Tensor,
    text_states: torch.Tensor,
    *,
    steps: int = 400,
    batch_size: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    centre: bool = True,
    seed: int = 0,
    progress: bool = False,
    desc: str = "contrastive head",
) -> list[float]:
    """Train ``head`` in place on cached features; returns the loss of every step.

    Args:
        features: ``[M, in_dim]`` pooled image features (several augmented views per concept).
        targets: ``[M]`` long, the row of ``text_states`` that each feature belongs to.
        text_states: ``[N, out_dim]`` the frozen text states of the N training concepts.
        centre: centre the text states on their mean (as :meth:`ContrastiveHead.similarity` does).
    """
    if features.ndim != 2 or targets.shape != (features.shape[0],):
        raise ValueError(
            f"features [M, D] and targets [M] expected, got {list(features.shape)} / {list(targets.shape)}"
        )
    if text_states.ndim != 2 or text_states.shape[1] != head.config.out_dim:
        raise ValueError(f"text_states must be [N, {head.config.out_dim}], got {list(text_states.shape)}")
    if int(targets.max()) >= text_states.shape[0] or int(targets.min()) < 0:
        raise ValueError("a target indexes outside text_states")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} / {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    feats = features.float()
    head.feature_mean.copy_(feats.mean(0))
    gallery = normalize_states(text_states, centre=centre)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, leave=False)
    losses: list[float] = []
    head.train()
    for _ in range(steps):
        idx = torch.randint(0, feats.shape[0], (min(batch_size, feats.shape[0]),), generator=gen)
        loss = info_nce(head(feats[idx]), gallery, targets[idx], head.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if bar is not None:
        bar.close()
    head.eval()
    return losses
