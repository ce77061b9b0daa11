"""Encoders: turn texts into pooled hidden states at every layer of any transformers or sentence-transformers model.

:class:`TransformersEncoder` wraps any transformers model (``AutoModel`` or ``AutoModelForCausalLM``: the
LM head is never run, so a 262k-vocabulary LLM costs no logits) and returns every hidden layer from one
forward pass, pooled over the non-padding tokens with ``mean``, ``last`` or ``first`` pooling. A prompt
``template`` such as ``'"{text}" in English is "'`` is part of the encoder: on decoder LLMs a translation
or PromptEOL template with ``last`` pooling is often far better aligned than the plain phrase.

:class:`SentenceTransformerEncoder` wraps a ``sentence_transformers.SentenceTransformer`` (the ``st`` extra)
and exposes its final (pooled) output.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mpm_align.interfaces import LayeredEmbeddings

__all__ = [
    "POOLINGS",
    "TEMPLATES",
    "SentenceTransformerEncoder",
    "TransformersEncoder",
    "apply_template",
]

POOLINGS = ("mean", "last", "first")

#: Ready-made prompt templates (``{text}`` is replaced by the phrase).
TEMPLATES: dict[str, str | None] = {
    "plain": None,
    "translate-en": '"{text}" in English is "',
    "prompteol": 'This word: "{text}" means in one word: "',
    "e5-query": "query: {text}",
}

# Models that derive position ids from input_ids themselves (padding-aware, offset by padding_idx + 1):
# passing our own position ids would break their offset.
_SELF_POSITIONING = {
    "roberta",
    "xlm-roberta",
    "camembert",
    "xlm-roberta-xl",
    "longformer",
    "mpnet",
    "data2vec-text",
}


def apply_template(template: str | None, text: str) -> str:
    """``template`` with ``{text}`` replaced by ``text`` (``None`` = the text itself)."""
    if template is None:
        return text
    return template.replace("{text}", text)


def _check_template(template: str | None) -> None:
    if template is not None and "{text}" not in template:
        raise ValueError(f"prompt template must contain '{{text}}', got {template!r}")


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {POOLINGS}")


def _normalize_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    out = []
    for layer in layers:
        idx = layer + num_layers if layer < 0 else layer
        if not 0 <= idx < num_layers:
            raise ValueError(f"layer {layer} out of range: this encoder has layers 0..{num_layers - 1}")
        out.append(idx)
    return sorted(set(out))


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``hidden [B, T, D]`` over the positions where ``mask [B, T]`` is 1.

    ``last`` and ``first`` take the last/first such position, so left and right padding give the same
    result. Rows whose mask is empty pool to zeros.
    """
    m = mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if pooling == "last":
        idx = torch.where(mask.bool(), positions, -1).amax(1)
    elif pooling == "first":
        idx = torch.where(mask.bool(), positions, mask.shape[1]).amin(1)
    else:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {POOLINGS}")
    out = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx.clamp(0, mask.shape[1] - 1)]
    return out * mask.any(1, keepdim=True).to(hidden.dtype)


class TransformersEncoder:
    """Per-layer pooled embeddings from any transformers model.

    Args:
        model: an ``AutoModel`` or ``AutoModelForCausalLM`` (its ``base_model`` is run; no LM head).
        tokenizer: the matching tokenizer (a fast one if ``skip_special_tokens`` is used).
        pooling: ``"mean"``, ``"last"`` or ``"first"`` over the non-padding tokens.
        template: a prompt with ``{text}``, e.g. ``'"{text}" in English is "'``; ``None`` = plain text.
        skip_special_tokens: leave BOS/CLS/SEP out of the pooling (decoder LLMs put a huge-norm
            "attention sink" state on BOS that dominates a mean).
        padding_side: ``"left"`` or ``"right"`` (default: the tokenizer's); both give the same embeddings
            (position ids are derived from the attention mask).
        max_length: truncate longer inputs.
        name: a label for reports (default: the model's ``name_or_path``).
        progress: show a tqdm bar while encoding.

    Texts are sorted by token length before batching (little padding), run under
    ``torch.inference_mode`` in the model's dtype (keep fp32 on CPU), and returned in input order.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        pooling: str = "mean",
        template: str | None = None,
        skip_special_tokens: bool = False,
        padding_side: str | None = None,
        max_length: int = 256,
        name: str | None = None,
        progress: bool = True,
    ) -> None:
        _check_pooling(pooling)
        _check_template(template)
        side = padding_side or getattr(tokenizer, "padding_side", "right") or "right"
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.template = template
        self.skip_special_tokens = skip_special_tokens
        self.padding_side = side
        self.max_length = max_length
        self.progress = progress
        cfg = getattr(model, "config", None)
        self.name = name or str(getattr(cfg, "name_or_path", "") or type(model).__name__)
        self._base = getattr(model, "base_model", model)
        text_cfg = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
        n_hidden = getattr(text_cfg, "num_hidden_layers", None) or getattr(text_cfg, "n_layer", None)
        if n_hidden is None:
            raise ValueError(f"cannot tell how many layers {type(model).__name__} has (no num_hidden_layers)")
        self._num_layers = int(n_hidden) + 1
        params = inspect.signature(self._base.forward).parameters
        model_type = getattr(text_cfg, "model_type", "")
        self._pass_positions = "position_ids" in params and model_type not in _SELF_POSITIONING
        self._pass_use_cache = "use_cache" in params
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        self._pad_id = int(pad) if pad is not None else 0

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> TransformersEncoder:
        """Load a local transformers directory (``config.json`` + weights) in fp32 on the CPU."""
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"model path does not exist: {p}")
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p} is not a transformers model directory (no config.json)")
        try:
            model = AutoModel.from_pretrained(p, dtype=torch.float32)
        except ValueError:  # a config that only maps to a causal-LM class
            model = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(p)
        kwargs.setdefault("name", p.name)
        return cls(model.eval(), tokenizer, **kwargs)

    def with_options(self, **changes: Any) -> TransformersEncoder:
        """A sibling encoder on the same model with some options changed (``pooling``, ``template``...)."""
        opts: dict[str, Any] = {
            "pooling": self.pooling,
            "template": self.template,
            "skip_special_tokens": self.skip_special_tokens,
            "padding_side": self.padding_side,
            "max_length": self.max_length,
            "name": self.name,
            "progress": self.progress,
        }
        opts.update(changes)
        return TransformersEncoder(self.model, self.tokenizer, **opts)

    def variants(
        self,
        *,
        templates: Mapping[str, str | None] | Sequence[str] = ("plain",),
        poolings: Sequence[str] = POOLINGS,
    ) -> dict[str, TransformersEncoder]:
        """Encoders for every template x pooling, named ``"<template>/<pooling>"``.

        ``templates`` maps names to templates, or lists names from :data:`TEMPLATES`. Variants that share
        a template share one forward pass in :func:`~mpm_align.report.align_report`.
        """
        if not isinstance(templates, Mapping):
            unknown = [t for t in templates if t not in TEMPLATES]
            if unknown:
                raise ValueError(f"unknown template name(s) {unknown}; known: {sorted(TEMPLATES)}")
            templates = {t: TEMPLATES[t] for t in templates}
        return {
            f"{tname}/{pool}": self.with_options(template=tmpl, pooling=pool)
            for tname, tmpl in templates.items()
            for pool in poolings
        }

    @property
    def num_layers(self) -> int:
        """Number of hidden states (embedding output + one per block)."""
        return self._num_layers

    def forward_key(self) -> tuple[Any, ...]:
        """Encoders with equal keys produce the same hidden states (only the pooling may differ)."""
        return (id(self.model), self.template, self.skip_special_tokens, self.padding_side, self.max_length)

    # ------------------------------------------------------------------ encoding
    def _tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
        prompts = [apply_template(self.template, t) for t in texts]
        enc = self.tokenizer(
            prompts,
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_length,
            return_special_tokens_mask=self.skip_special_tokens,
        )
        ids = [list(x) for x in enc["input_ids"]]
        if self.skip_special_tokens:
            keep = [[1 - s for s in row] for row in enc["special_tokens_mask"]]
        else:
            keep = [[1] * len(row) for row in ids]
        return ids, keep

    def _batch(self, ids: list[list[int]], keep: list[list[int]]) -> tuple[torch.Tensor, ...]:
        width = max(len(r) for r in ids)
        input_ids = torch.full((len(ids), width), self._pad_id, dtype=torch.long)
        attn = torch.zeros(len(ids), width, dtype=torch.long)
        pool_mask = torch.zeros(len(ids), width, dtype=torch.long)
        for b, (row, k) in enumerate(zip(ids, keep)):
            n = len(row)
            sl = slice(width - n, width) if self.padding_side == "left" else slice(0, n)
            input_ids[b, sl] = torch.tensor(row, dtype=torch.long)
            attn[b, sl] = 1
            pool_mask[b, sl] = torch.tensor(k, dtype=torch.long)
        # a row with nothing left to pool (only special tokens) falls back to all its tokens
        empty = pool_mask.sum(1) == 0
        pool_mask[empty] = attn[empty]
        return input_ids, attn, pool_mask

    def encode_multi(
        self,
        texts: Sequence[str],
        *,
        poolings: Sequence[str] | None = None,
        layers: Sequence[int] | None = None,
        batch_size: int = 32,
    ) -> dict[str, LayeredEmbeddings]:
        """Several poolings of the same forward passes: ``{pooling: LayeredEmbeddings}``."""
        pools = list(poolings) if poolings is not None else [self.pooling]
        for p in pools:
            _check_pooling(p)
        texts = list(texts)
        if not texts:
            raise ValueError("nothing to encode: the list of texts is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        wanted = _normalize_layers(layers, self._num_layers)
        ids, keep = self._tokenize(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
        out: dict[str, dict[int, list[torch.Tensor]]] = {p: {layer: [] for layer in wanted} for p in pools}
        device = next(self._base.parameters()).device
        n_batches = (len(texts) + batch_size - 1) // batch_size
        bar = tqdm(total=len(texts), desc=f"encode {self.name}", unit="text", disable=not self.progress)
        with torch.inference_mode():
            for b in range(n_batches):
                idx = order[b * batch_size : (b + 1) * batch_size]
                input_ids, attn, pool_mask = self._batch([ids[i] for i in idx], [keep[i] for i in idx])
                kwargs: dict[str, Any] = {
                    "input_ids": input_ids.to(device),
                    "attention_mask": attn.to(device),
                    "output_hidden_states": True,
                    "return_dict": True,
                }
                if self._pass_positions:
                    kwargs["position_ids"] = (attn.cumsum(1) - 1).clamp_min(0).to(device)
                if self._pass_use_cache:
                    kwargs["use_cache"] = False
                hidden = self._base(**kwargs).hidden_states
                pm = pool_mask.to(device)
                for layer in wanted:
                    h = hidden[layer].float()
                    for p in pools:
                        out[p][layer].append(pool_hidden(h, pm, p).cpu())
                bar.update(len(idx))
        bar.close()
        inverse = torch.empty(len(texts), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(texts))
        return {
            p: LayeredEmbeddings(
                by_layer={layer: torch.cat(chunks)[inverse] for layer, chunks in by_layer.items()},
                num_texts=len(texts),
                pooling=p,
                template=self.template,
            )
            for p, by_layer in out.items()
        }

    def encode(
        self, texts: Sequence[str], *, layers: Sequence[int] | None = None, batch_size: int = 32
    ) -> LayeredEmbeddings:
        """Pooled embeddings of ``texts`` at ``layers`` (default: all), ``{layer: Tensor[N, D]}``."""
        return self.encode_multi(texts, poolings=[self.pooling], layers=layers, batch_size=batch_size)[
            self.pooling
        ]

    def __repr__(self) -> str:
        return (
            f"TransformersEncoder(name={self.name!r}, pooling={self.pooling!r}, template={self.template!r}, "
            f"layers={self._num_layers})"
        )


class SentenceTransformerEncoder:
    """The final embedding of any sentence-transformers model (its own pooling and normalisation).

    Its one layer is reported under the index of the underlying transformer's last hidden state, so it
    lines up with a :class:`TransformersEncoder` of the same model. Needs the ``st`` extra.
    """

    def __init__(
        self,
        model: Any,
        *,
        template: str | None = None,
        name: str | None = None,
        normalize: bool = False,
        progress: bool = True,
    ) -> None:
        _check_template(template)
        self.model = model
        self.template = template
        self.normalize = normalize
        self.progress = progress
        self.name = name or str(
            (getattr(model, "model_card_data", None) and model.model_card_data.base_model) or ""
        )
        if not self.name:
            self.name = type(model).__name__
        n = None
        try:
            first = model[0]
            cfg = first.auto_model.config
            n = int(cfg.num_hidden_layers)
        except (AttributeError, IndexError, KeyError, TypeError):
            n = None
        self._layer = n if n is not None else 0

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> SentenceTransformerEncoder:
        """Load a local sentence-transformers directory on the CPU."""
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("SentenceTransformerEncoder needs `pip install mpm-align[st]`") from e
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"model path does not exist: {p}")
        kwargs.setdefault("name", p.name)
        return cls(SentenceTransformer(str(p), device="cpu"), **kwargs)

    @property
    def num_layers(self) -> int:
        return self._layer + 1

    @property
    def layer(self) -> int:
        """The layer index this encoder reports its (only) output under."""
        return self._layer

    def encode(
        self, texts: Sequence[str], *, layers: Sequence[int] | None = None, batch_size: int = 32
    ) -> LayeredEmbeddings:
        texts = list(texts)
        if not texts:
            raise ValueError("nothing to encode: the list of texts is empty")
        if layers is not None:
            wanted = _normalize_layers(layers, self.num_layers)
            if wanted != [self._layer]:
                raise ValueError(
                    f"a sentence-transformers encoder only has its final output (layer {self._layer}); "
                    f"asked for {list(layers)}. Use TransformersEncoder on its transformer for other layers."
                )
        prompts = [apply_template(self.template, t) for t in texts]
        emb = self.model.encode(
            prompts,
            batch_size=batch_size,
            convert_to_tensor=True,
            normalize_embeddings=self.normalize,
            show_progress_bar=self.progress,
        )
        return LayeredEmbeddings(
            by_layer={self._layer: emb.float().cpu()},
            num_texts=len(texts),
            pooling="st",
            template=self.template,
        )

    def __repr__(self) -> str:
        return f"SentenceTransformerEncoder(name={self.name!r}, template={self.template!r})"
