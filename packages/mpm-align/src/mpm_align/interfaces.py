"""Public contracts of mpm-align: the protocols it consumes and the dataclasses it produces.

This package imports no other mpm package; ``integration/`` wires packages together through
these shapes.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "Encoder",
    "IsotropyResult",
    "LayeredEmbeddings",
    "PairedCosine",
    "ParallelCorpus",
]


@dataclass(frozen=True, eq=False)
class LayeredEmbeddings(Mapping[int, torch.Tensor]):
    """Pooled embeddings of ``N`` texts at several layers: ``{layer_index: Tensor[N, D]}``.

    Behaves like a read-only dict (``emb[17]``, ``list(emb)``, ``emb.items()``). Layer ``0`` is the
    embedding output and layer ``i`` the output of block ``i`` (transformers' ``hidden_states`` index).
    """

    by_layer: dict[int, torch.Tensor]
    num_texts: int
    pooling: str = ""
    template: str | None = None

    def __post_init__(self) -> None:
        for layer, t in self.by_layer.items():
            if t.ndim != 2 or t.shape[0] != self.num_texts:
                raise ValueError(
                    f"layer {layer}: expected a [{self.num_texts}, D] tensor, got {tuple(t.shape)}"
                )

    def __getitem__(self, layer: int) -> torch.Tensor:
        try:
            return self.by_layer[layer]
        except KeyError:
            raise KeyError(f"layer {layer} was not encoded; available: {sorted(self.by_layer)}") from None

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.by_layer))

    def __len__(self) -> int:
        return len(self.by_layer)

    @property
    def layers(self) -> list[int]:
        """The encoded layer indices, ascending."""
        return sorted(self.by_layer)


@runtime_checkable
class Encoder(Protocol):
    """Anything that turns texts into per-layer pooled embeddings.

    ``layers=None`` means every layer the encoder has; ``num_layers`` is the largest layer index + 1.
    """

    name: str

    @property
    def num_layers(self) -> int: ...

    def encode(
        self, texts: Sequence[str], *, layers: Sequence[int] | None = None, batch_size: int = 32
    ) -> LayeredEmbeddings: ...


def normalize_text(text: str) -> str:
    """NFC, strip, and collapse internal runs of whitespace to one space."""
    return " ".join(unicodedata.normalize("NFC", text).split())


@dataclass(frozen=True)
class ParallelCorpus:
    """Aligned phrases in two languages: ``src[i]`` translates ``tgt[i]``.

    Language codes are BCP-47-like (``en``, ``zh``, ``pt-BR``); ``name`` says where the pairs came from
    (``cldr:territories``, ``emoji``, a file path). ``stats`` records how many pairs each cleaning step
    kept (see :meth:`clean`).
    """

    name: str
    src_lang: str
    tgt_lang: str
    src: tuple[str, ...]
    tgt: tuple[str, ...]
    stats: dict[str, int] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.src, tuple):
            object.__setattr__(self, "src", tuple(self.src))
        if not isinstance(self.tgt, tuple):
            object.__setattr__(self, "tgt", tuple(self.tgt))
        if len(self.src) != len(self.tgt):
            raise ValueError(
                f"corpus {self.name!r} ({self.src_lang}-{self.tgt_lang}): unequal lengths, "
                f"{len(self.src)} source vs {len(self.tgt)} target phrases"
            )

    def __len__(self) -> int:
        return len(self.src)

    @property
    def pair(self) -> str:
        """``"en-zh"``."""
        return f"{self.src_lang}-{self.tgt_lang}"

    def clean(self, *, drop_identical: bool = False, dedupe: bool = True) -> ParallelCorpus:
        """Normalise (NFC, strip, collapse spaces), drop empty pairs and de-duplicate.

        With ``dedupe`` every source phrase and every target phrase occurs once (the first pair wins), so
        that retrieval has exactly one right answer. ``drop_identical`` removes pairs that read the same in
        both languages (``"Canada" / "Canada"``), which make retrieval trivially easy.
        """
        stats = {"raw": len(self)}
        pairs = [(normalize_text(s), normalize_text(t)) for s, t in zip(self.src, self.tgt)]
        pairs = [(s, t) for s, t in pairs if s and t]
        stats["non_empty"] = len(pairs)
        if drop_identical:
            pairs = [(s, t) for s, t in pairs if s.casefold() != t.casefold()]
            stats["not_identical"] = len(pairs)
        if dedupe:
            seen_s: set[str] = set()
            seen_t: set[str] = set()
            kept = []
            for s, t in pairs:
                if s in seen_s or t in seen_t:
                    continue
                seen_s.add(s)
                seen_t.add(t)
                kept.append((s, t))
            pairs = kept
            stats["unique"] = len(pairs)
        stats["kept"] = len(pairs)
        return ParallelCorpus(
            name=self.name,
            src_lang=self.src_lang,
            tgt_lang=self.tgt_lang,
            src=tuple(s for s, _ in pairs),
            tgt=tuple(t for _, t in pairs),
            stats=stats,
        )

    def subsample(self, n: int, *, seed: int = 0) -> ParallelCorpus:
        """At most ``n`` pairs, drawn without replacement with a fixed seed (order kept)."""
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = sorted(torch.randperm(len(self), generator=g)[:n].tolist())
        stats = {**self.stats, "subsampled": n}
        return ParallelCorpus(
            name=self.name,
            src_lang=self.src_lang,
            tgt_lang=self.tgt_lang,
            src=tuple(self.src[i] for i in idx),
            tgt=tuple(self.tgt[i] for i in idx),
            stats=stats,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ParallelCorpus:
        d: dict[str, Any] = json.loads(text)
        return cls(**d)


@dataclass(frozen=True)
class PairedCosine:
    """Mean cosine of aligned pairs, the expected cosine of a random (non-aligned) pair, and the gap."""

    paired: float
    random: float
    gap: float


@dataclass(frozen=True)
class IsotropyResult:
    """How evenly a set of vectors uses its space.

    ``partition_ratio``: Mu & Viswanath (2018) ``min_u Z(u) / max_u Z(u)`` over the principal directions
    ``u`` with ``Z(u) = sum_i exp(u . x_i)`` (1 = isotropic); ``mean_cosine``: the average cosine of two
    distinct vectors (Ethayarajh 2019; 0 = isotropic, near 1 = a narrow cone); ``effective_rank``:
    ``exp`` of the entropy of the normalised singular values (Roy & Vetterli 2007).
    """

    partition_ratio: float
    mean_cosine: float
    effective_rank: float
