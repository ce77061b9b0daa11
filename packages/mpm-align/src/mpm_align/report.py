"""``align_report``: every metric at every layer for every language pair (and every encoder variant).

>>> report = align_report(encoder, corpora)              # or {"plain/mean": enc1, "translate/last": enc2}
>>> report.best_layers()["en-zh"]["retrieval_csls"]      # {"variant": ..., "layer": 17, "value": 0.63}
>>> report.save("out/")                                  # report.json, report.md, heatmaps, curves

Variants of one :class:`~mpm_align.encoders.TransformersEncoder` that differ only in pooling share their
forward passes, so a template x pooling x layer sweep costs one pass per template.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mpm_align.interfaces import Encoder, LayeredEmbeddings, ParallelCorpus
from mpm_align.metrics import (
    bitext_retrieval,
    check_finite,
    isotropy,
    language_probe_accuracy,
    linear_cka,
    paired_cosine,
)

__all__ = [
    "LAYER_METRICS",
    "LOWER_IS_BETTER",
    "PAIR_METRICS",
    "AlignmentReport",
    "AlignmentRow",
    "align_report",
]

PAIR_METRICS = (
    "retrieval_cosine",
    "retrieval_csls",
    "retrieval_margin",
    "retrieval_cosine_x2y",
    "retrieval_cosine_y2x",
    "retrieval_csls_x2y",
    "retrieval_csls_y2x",
    "retrieval_margin_x2y",
    "retrieval_margin_y2x",
    "xsim_error",
    "paired_cosine",
    "random_cosine",
    "cosine_gap",
    "cka",
    "cka_debiased",
)
LAYER_METRICS = ("language_probe", "isotropy_partition", "isotropy_mean_cosine", "isotropy_effective_rank")
#: For these a lower value means better cross-lingual alignment.
LOWER_IS_BETTER = frozenset({"xsim_error", "random_cosine", "language_probe", "isotropy_mean_cosine"})
HEADLINE = "retrieval_csls"


@dataclass(frozen=True)
class AlignmentRow:
    """The metrics of one (variant, corpus, layer)."""

    variant: str
    corpus: str
    src_lang: str
    tgt_lang: str
    layer: int
    n: int
    metrics: dict[str, float]

    @property
    def pair(self) -> str:
        return f"{self.src_lang}-{self.tgt_lang}"


@dataclass(frozen=True)
class LayerRow:
    """Metrics of one (variant, layer) over all languages at once (language probe, isotropy)."""

    variant: str
    layer: int
    metrics: dict[str, float]


@dataclass
class AlignmentReport:
    """Result of :func:`align_report`; serialisable with :meth:`to_json` / :meth:`from_json`."""

    model: str
    variants: dict[str, dict[str, Any]]
    layers: list[int]
    rows: list[AlignmentRow]
    layer_rows: list[LayerRow] = field(default_factory=list)
    corpus_stats: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    _names_cache: tuple[int, dict[str, int]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    # ------------------------------------------------------------------ access
    @property
    def pairs(self) -> list[str]:
        """Corpus labels in first-seen order (``"en-zh"``, or ``"emoji en-zh"`` when a pair has several)."""
        out: list[str] = []
        for r in self.rows:
            label = self._label(r)
            if label not in out:
                out.append(label)
        return out

    def _label(self, r: AlignmentRow) -> str:
        key = len(self.rows)
        cache = getattr(self, "_names_cache", None)
        if cache is None or cache[0] != key:
            names: dict[str, set[str]] = {}
            for x in self.rows:
                names.setdefault(x.pair, set()).add(x.corpus)
            cache = (key, {p: len(v) for p, v in names.items()})
            self._names_cache = cache
        return r.pair if cache[1][r.pair] == 1 else f"{r.corpus} {r.pair}"

    def value(self, metric: str, *, variant: str, pair: str, layer: int) -> float:
        for r in self.rows:
            if r.variant == variant and r.layer == layer and self._label(r) == pair:
                return r.metrics[metric]
        raise KeyError(f"no result for variant={variant!r} pair={pair!r} layer={layer}")

    def table(self, metric: str, variant: str | None = None) -> dict[int, dict[str, float]]:
        """``{layer: {pair: value}}`` of one metric for one variant (default: the first)."""
        variant = variant or next(iter(self.variants))
        if metric not in PAIR_METRICS:
            raise ValueError(f"unknown pair metric {metric!r}; choose from {PAIR_METRICS}")
        out: dict[int, dict[str, float]] = {}
        for r in self.rows:
            if r.variant == variant:
                out.setdefault(r.layer, {})[self._label(r)] = r.metrics[metric]
        return dict(sorted(out.items()))

    def layer_table(self, metric: str) -> dict[str, dict[int, float]]:
        """``{variant: {layer: value}}`` of a per-layer metric (``language_probe``, ``isotropy_*``)."""
        out: dict[str, dict[int, float]] = {}
        for r in self.layer_rows:
            if metric in r.metrics:
                out.setdefault(r.variant, {})[r.layer] = r.metrics[metric]
        return out

    def best_layers(
        self, metrics: Sequence[str] = PAIR_METRICS, *, variant: str | None = None
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """``{pair: {metric: {"variant", "layer", "value"}}}``: the best setting per pair and metric.

        Searches every variant (template x pooling) and layer unless ``variant`` is given; "best" is the
        maximum, or the minimum for :data:`LOWER_IS_BETTER` metrics.
        """
        best: dict[str, dict[str, dict[str, Any]]] = {}
        for r in self.rows:
            if variant is not None and r.variant != variant:
                continue
            slot = best.setdefault(self._label(r), {})
            for m in metrics:
                v = r.metrics.get(m)
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    continue
                cur = slot.get(m)
                better = cur is None or (v < cur["value"] if m in LOWER_IS_BETTER else v > cur["value"])
                if better:
                    slot[m] = {"variant": r.variant, "layer": r.layer, "value": v}
        return best

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "variants": self.variants,
            "layers": self.layers,
            "rows": [asdict(r) for r in self.rows],
            "layer_rows": [asdict(r) for r in self.layer_rows],
            "corpus_stats": self.corpus_stats,
            "timings": self.timings,
            "best_layers": self.best_layers(),
        }

    def to_json(self, *, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> AlignmentReport:
        d = json.loads(text)
        return cls(
            model=d["model"],
            variants=d["variants"],
            layers=[int(x) for x in d["layers"]],
            rows=[AlignmentRow(**r) for r in d["rows"]],
            layer_rows=[LayerRow(**r) for r in d.get("layer_rows", [])],
            corpus_stats=d.get("corpus_stats", []),
            timings=d.get("timings", {}),
        )

    # ------------------------------------------------------------------ Markdown
    def to_markdown(self, *, headline: str = HEADLINE, images: Mapping[str, str] | None = None) -> str:
        """A readable report: settings, data, the best setting per pair, per-layer tables."""
        lines = [f"# Cross-lingual alignment: {self.model}", ""]
        lines += ["## Encoder variants", "", "| variant | pooling | template |", "|---|---|---|"]
        for name, v in self.variants.items():
            tmpl = v.get("template")
            lines.append(
                f"| {name} | {v.get('pooling', '')} | {'`' + tmpl + '`' if tmpl else '(plain text)'} |"
            )
        if self.corpus_stats:
            keys = [
                k
                for k in ("raw", "non_empty", "not_identical", "unique", "kept", "used")
                if any(k in s for s in self.corpus_stats)
            ]
            lines += [
                "",
                "## Data (pairs per corpus)",
                "",
                "| corpus | pair | " + " | ".join(keys) + " |",
                "|---|---|" + "---|" * len(keys),
            ]
            for s in self.corpus_stats:
                lines.append(
                    f"| {s['corpus']} | {s['pair']} | " + " | ".join(str(s.get(k, "")) for k in keys) + " |"
                )
        best = self.best_layers()
        show = ["retrieval_csls", "retrieval_cosine", "retrieval_margin", "xsim_error", "cosine_gap", "cka"]
        lines += [
            "",
            "## Best setting per language pair",
            "",
            "Each cell: value (variant, layer). Retrieval = top-1 accuracy, mean of both directions.",
            "",
            "| pair | " + " | ".join(show) + " |",
            "|---|" + "---|" * len(show),
        ]
        for pair, per in best.items():
            cells = [
                f"{per[m]['value']:.3f} ({per[m]['variant']}, L{per[m]['layer']})" if m in per else ""
                for m in show
            ]
            lines.append(f"| {pair} | " + " | ".join(cells) + " |")
        lines += ["", f"## {headline} per layer", ""]
        pairs = self.pairs
        for variant in self.variants:
            tab = self.table(headline, variant)
            lines += [
                f"### {variant}",
                "",
                "| layer | " + " | ".join(pairs) + " | mean |",
                "|---|" + "---|" * (len(pairs) + 1),
            ]
            for layer, vals in tab.items():
                nums = [vals.get(p, float("nan")) for p in pairs]
                mean = sum(nums) / len(nums) if nums else float("nan")
                lines.append(f"| {layer} | " + " | ".join(f"{x:.3f}" for x in nums) + f" | **{mean:.3f}** |")
            lines.append("")
        if self.layer_rows:
            lines += [
                "## Per layer, all languages together",
                "",
                "language_probe: held-out accuracy of a linear language-ID probe (lower = more language-neutral); "
                "isotropy_mean_cosine: mean cosine of two random phrases (0 = isotropic).",
                "",
            ]
            for variant in self.variants:
                rows = [r for r in self.layer_rows if r.variant == variant]
                if not rows:
                    continue
                ms = [m for m in LAYER_METRICS if m in rows[0].metrics]
                lines += [
                    f"### {variant}",
                    "",
                    "| layer | " + " | ".join(ms) + " |",
                    "|---|" + "---|" * len(ms),
                ]
                for r in rows:
                    lines.append(f"| {r.layer} | " + " | ".join(f"{r.metrics[m]:.3f}" for m in ms) + " |")
                lines.append("")
        if images:
            lines += ["## Figures", ""]
            for title, path in images.items():
                lines += [f"![{title}]({path})", ""]
        if self.timings:
            lines += ["## Timings (s)", "", ", ".join(f"{k}: {v:.1f}" for k, v in self.timings.items()), ""]
        return "\n".join(lines)

    # ------------------------------------------------------------------ figures
    def save_heatmap(
        self, path: str | Path, *, metric: str = HEADLINE, variants: Sequence[str] | None = None
    ) -> Path:
        """A layer x language-pair heatmap of ``metric``, one panel per variant."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        variants = list(variants or self.variants)
        pairs = self.pairs
        ncol = min(3, len(variants))
        nrow = math.ceil(len(variants) / ncol)
        fig, axes = plt.subplots(
            nrow,
            ncol,
            figsize=(1.0 + 0.75 * len(pairs) * ncol, 0.8 + 0.32 * len(self.layers) * nrow),
            squeeze=False,
        )
        cmap = "viridis_r" if metric in LOWER_IS_BETTER else "viridis"
        vals_all = [r.metrics[metric] for r in self.rows if r.variant in variants]
        vmin, vmax = (min(vals_all), max(vals_all)) if vals_all else (0.0, 1.0)
        im = None
        for k, variant in enumerate(variants):
            ax = axes[k // ncol][k % ncol]
            tab = self.table(metric, variant)
            layers = list(tab)
            mat = [[tab[layer].get(p, float("nan")) for p in pairs] for layer in layers]
            im = ax.imshow(mat, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
            ax.set_xticks(range(len(pairs)), pairs, rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
            ax.set_title(variant, fontsize=9)
            ax.set_ylabel("layer", fontsize=8)
            for i, row in enumerate(mat):
                for j, v in enumerate(row):
                    if not math.isnan(v):
                        ax.text(
                            j,
                            i,
                            f"{v:.2f}",
                            ha="center",
                            va="center",
                            fontsize=5,
                            color="white" if (v - vmin) < 0.5 * (vmax - vmin + 1e-12) else "black",
                        )
        for k in range(len(variants), nrow * ncol):
            axes[k // ncol][k % ncol].axis("off")
        if im is not None:
            fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=metric)
        fig.suptitle(f"{self.model}: {metric}", fontsize=10)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return out

    def save_curves(
        self,
        path: str | Path,
        *,
        metrics: Sequence[str] = (
            "retrieval_csls",
            "retrieval_cosine",
            "cosine_gap",
            "cka",
            "xsim_error",
            "language_probe",
        ),
    ) -> Path:
        """Per-layer curves, one panel per metric: the mean over pairs per variant, with a min-max band."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ncol = min(3, len(metrics))
        nrow = math.ceil(len(metrics) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False)
        for k, metric in enumerate(metrics):
            ax = axes[k // ncol][k % ncol]
            for variant in self.variants:
                if metric in LAYER_METRICS:
                    series = self.layer_table(metric).get(variant, {})
                    if series:
                        ax.plot(list(series), list(series.values()), marker=".", label=variant)
                    continue
                tab = self.table(metric, variant)
                xs = list(tab)
                vals = [list(tab[x].values()) for x in xs]
                mean = [sum(v) / len(v) for v in vals]
                (line,) = ax.plot(xs, mean, marker=".", label=variant)
                ax.fill_between(
                    xs, [min(v) for v in vals], [max(v) for v in vals], alpha=0.15, color=line.get_color()
                )
            ax.set_title(metric + (" (lower = better)" if metric in LOWER_IS_BETTER else ""), fontsize=9)
            ax.set_xlabel("layer", fontsize=8)
            ax.grid(alpha=0.3)
        for k in range(len(metrics), nrow * ncol):
            axes[k // ncol][k % ncol].axis("off")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(
            handles,
            labels,
            loc="lower center",
            ncol=min(4, max(1, len(labels))),
            fontsize=8,
            bbox_to_anchor=(0.5, -0.02),
        )
        fig.suptitle(
            f"{self.model}: per-layer alignment (mean over language pairs, band = min-max)", fontsize=10
        )
        fig.tight_layout(rect=(0, 0.06, 1, 0.96))
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out

    def save(
        self,
        out_dir: str | Path,
        *,
        prefix: str = "",
        heatmap_metrics: Sequence[str] = (HEADLINE, "cosine_gap"),
    ) -> dict[str, Path]:
        """Write ``report.json``, heatmap and curve PNGs and ``report.md`` (linking them) into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files: dict[str, Path] = {}
        images: dict[str, str] = {}
        for m in heatmap_metrics:
            p = self.save_heatmap(out / f"{prefix}heatmap_{m}.png", metric=m)
            files[f"heatmap_{m}"] = p
            images[f"{m} heatmap (layer x pair)"] = p.name
        p = self.save_curves(out / f"{prefix}curves.png")
        files["curves"] = p
        images["per-layer curves"] = p.name
        (out / f"{prefix}report.json").write_text(self.to_json(), encoding="utf-8")
        files["json"] = out / f"{prefix}report.json"
        (out / f"{prefix}report.md").write_text(self.to_markdown(images=images), encoding="utf-8")
        files["markdown"] = out / f"{prefix}report.md"
        return files


# ----------------------------------------------------------------------------------------------------


def _variant_info(enc: Any) -> dict[str, Any]:
    return {
        "encoder": type(enc).__name__,
        "name": getattr(enc, "name", ""),
        "pooling": getattr(enc, "pooling", "st"),
        "template": getattr(enc, "template", None),
        "skip_special_tokens": getattr(enc, "skip_special_tokens", None),
    }


def _pair_metrics(x: torch.Tensor, y: torch.Tensor, csls_k: int, margin_k: int) -> dict[str, float]:
    ret = bitext_retrieval(x, y, csls_k=min(csls_k, x.shape[0]), margin_k=min(margin_k, x.shape[0]))
    m: dict[str, float] = {}
    for method, d in ret.items():
        m[f"retrieval_{method}_x2y"] = d["x2y"]
        m[f"retrieval_{method}_y2x"] = d["y2x"]
        m[f"retrieval_{method}"] = (d["x2y"] + d["y2x"]) / 2
    m["xsim_error"] = 1.0 - ret["margin"]["x2y"]
    pc = paired_cosine(x, y)
    m["paired_cosine"], m["random_cosine"], m["cosine_gap"] = pc.paired, pc.random, pc.gap
    m["cka"] = linear_cka(x, y)
    m["cka_debiased"] = linear_cka(x, y, debiased=True) if x.shape[0] >= 4 else float("nan")
    return m


def align_report(
    encoder: Encoder | Mapping[str, Encoder],
    corpora: Sequence[ParallelCorpus],
    layers: Sequence[int] | None = None,
    *,
    batch_size: int = 32,
    csls_k: int = 10,
    margin_k: int = 4,
    probe: bool = True,
    probe_method: str = "ridge",
    probe_max_per_language: int = 1000,
    isotropy_max: int = 1000,
    model_name: str | None = None,
    progress: bool = True,
    seed: int = 0,
) -> AlignmentReport:
    """Encode every phrase of ``corpora`` once per encoder variant and compute every metric at every layer.

    Args:
        encoder: one encoder, or ``{variant_name: encoder}`` (e.g. ``TransformersEncoder.variants(...)``).
        corpora: parallel corpora (see :func:`mpm_align.data.load_corpora`).
        layers: layer indices (negative counts from the end); ``None`` = every layer of each encoder.
        probe: also fit the language-ID probe (``probe_method``: ``"ridge"``, closed form, or
            ``"logistic"``) and isotropy per layer over all languages.
    """
    if not corpora:
        raise ValueError("no corpora given")
    for c in corpora:
        if len(c) == 0:
            raise ValueError(f"corpus {c.name!r} ({c.pair}) is empty")
        if len(c) < 2:
            raise ValueError(f"corpus {c.name!r} ({c.pair}) has only {len(c)} pair; need at least 2")
    encoders: dict[str, Encoder] = dict(encoder) if isinstance(encoder, Mapping) else {"default": encoder}
    if not encoders:
        raise ValueError("no encoder given")
    texts: list[str] = []
    index: dict[str, int] = {}
    by_lang: dict[str, list[str]] = {}
    for c in corpora:
        for lang, side in ((c.src_lang, c.src), (c.tgt_lang, c.tgt)):
            bucket = by_lang.setdefault(lang, [])
            for t in side:
                if t not in index:
                    index[t] = len(texts)
                    texts.append(t)
                bucket.append(t)
    by_lang = {lang: list(dict.fromkeys(ts)) for lang, ts in by_lang.items()}

    # group variants that share forward passes (same model + template; only the pooling differs)
    groups: dict[Any, list[str]] = {}
    for name, enc in encoders.items():
        key = (
            enc.forward_key()
            if hasattr(enc, "forward_key") and hasattr(enc, "encode_multi")
            else ("solo", name)
        )
        groups.setdefault(key, []).append(name)

    rows: list[AlignmentRow] = []
    layer_rows: list[LayerRow] = []
    timings: dict[str, float] = {}
    all_layers: set[int] = set()
    g = torch.Generator().manual_seed(seed)
    for names in groups.values():
        first: Any = encoders[names[0]]
        t0 = time.perf_counter()
        embs: dict[str, LayeredEmbeddings]
        if len(names) > 1 or hasattr(first, "encode_multi"):
            pools = [getattr(encoders[n], "pooling", "mean") for n in names]
            multi = first.encode_multi(
                texts, poolings=sorted(set(pools)), layers=layers, batch_size=batch_size
            )
            embs = {n: multi[p] for n, p in zip(names, pools)}
        else:
            embs = {names[0]: first.encode(texts, layers=layers, batch_size=batch_size)}
        timings[f"encode {'+'.join(names)}"] = time.perf_counter() - t0
        for n in names:  # name the phrases, before any metric turns a NaN into a plausible number
            for layer in embs[n].layers:
                check_finite(embs[n][layer], f"variant {n!r} layer {layer}", labels=texts)
        t0 = time.perf_counter()
        work = [(n, layer) for n in names for layer in embs[n].layers]
        for n, layer in tqdm(work, desc="metrics", disable=not progress):
            all_layers.add(layer)
            e = embs[n][layer]
            for c in corpora:
                x = e[torch.tensor([index[t] for t in c.src])]
                y = e[torch.tensor([index[t] for t in c.tgt])]
                rows.append(
                    AlignmentRow(
                        n,
                        c.name,
                        c.src_lang,
                        c.tgt_lang,
                        layer,
                        len(c),
                        _pair_metrics(x, y, csls_k, margin_k),
                    )
                )
            if probe:
                per_lang = {}
                for lang, ts in by_lang.items():
                    idx = torch.tensor([index[t] for t in ts])
                    if len(idx) > probe_max_per_language:
                        idx = idx[torch.randperm(len(idx), generator=g)[:probe_max_per_language]]
                    per_lang[lang] = e[idx]
                lm: dict[str, float] = {}
                if len(per_lang) >= 2 and all(v.shape[0] >= 2 for v in per_lang.values()):
                    lm["language_probe"] = language_probe_accuracy(per_lang, method=probe_method, seed=seed)
                sample = (
                    e
                    if e.shape[0] <= isotropy_max
                    else e[torch.randperm(e.shape[0], generator=g)[:isotropy_max]]
                )
                iso = isotropy(sample)
                lm["isotropy_partition"] = iso.partition_ratio
                lm["isotropy_mean_cosine"] = iso.mean_cosine
                lm["isotropy_effective_rank"] = iso.effective_rank
                layer_rows.append(LayerRow(n, layer, lm))
        timings[f"metrics {'+'.join(names)}"] = time.perf_counter() - t0
        del embs
    name = model_name or str(getattr(next(iter(encoders.values())), "name", "encoder"))
    stats = [{"corpus": c.name, "pair": c.pair, **c.stats, "used": len(c)} for c in corpora]
    return AlignmentReport(
        model=name,
        variants={n: _variant_info(e) for n, e in encoders.items()},
        layers=sorted(all_layers),
        rows=rows,
        layer_rows=layer_rows,
        corpus_stats=stats,
        timings=timings,
    )
