"""The reproduction's own views of a board: the headline table, the alignment-vs-transfer scatter,
and the issue's targets checked against the numbers (all computed from mpm-bench results).

    files = write_headline(board, out_dir, models=..., alignment=...)

Everything here reads :class:`mpm_bench.Leaderboard` rows; nothing is typed in by hand.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HeadlineModels", "headline_table", "scatter", "targets", "write_headline"]

TARGET_SET = "emojicap/seen-style/twemoji"


@dataclass(frozen=True)
class HeadlineModels:
    """Board model names of the columns: the pivot's English-trained head, the ablation pivot's,
    the pivot's native-trained heads, the generative (chat) model and the paint model."""

    zero_shot: str
    ablation: str | None = None
    native: str | None = None
    generative: str | None = None
    fidelity: Mapping[str, str] | None = None
    """``{"0 %": model, "5 %": model}``: the chat models asked for answer-language fidelity."""
    calibrated: Sequence[str] = ()
    paint: str | None = None


def _row(
    board: Any, model: str | None, dataset: str, metric: str, task: str = "classification"
) -> dict[str, Any] | None:
    if model is None:
        return None
    for r in board.table():
        if r["model"] == model and r["dataset"] == dataset and r["metric"] == metric and r["task"] == task:
            return dict(r)
    return None


def _fmt(value: float | None, interval: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if interval is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def headline_table(
    board: Any, models: HeadlineModels, langs: Sequence[str], *, dataset: str = TARGET_SET
) -> str:
    """Markdown: languages x {pivot zero-shot, ablation zero-shot, pivot native-trained}, among 8 and
    among all N, each value with its 95 % bootstrap interval."""
    cols = [("zero-shot (English-trained)", models.zero_shot), ("ablation pivot, zero-shot", models.ablation),
            ("native-trained", models.native)]  # fmt: skip
    cols = [(t, m) for t, m in cols if m]
    out = []
    for metric, what in (("acc@1", "among 8"), ("acc_all@1", "among all N")):
        rows = {m: _row(board, m, dataset, metric) for _, m in cols}
        n = next((r["n"] for r in rows.values() if r), 0)
        out.append(f"**{dataset}, accuracy {what}** (n={n} images; 95 % cluster-bootstrap intervals)\n")
        out.append("| language | " + " | ".join(f"{t}: {m}" for t, m in cols) + " |")
        out.append("|---" * (len(cols) + 1) + "|")
        for lang in langs:
            cells = []
            for _, m in cols:
                r = rows[m]
                cells.append(
                    "–"
                    if r is None or lang not in r["values"]
                    else _fmt(r["values"][lang], r["intervals"][lang])
                )
            out.append(f"| {lang} | " + " | ".join(cells) + " |")
        out.append("")
    if models.fidelity:
        fid = {k: next((r for r in board.table() if r["model"] == m and r["metric"] == "fidelity"), None)
               for k, m in {**models.fidelity, "oracle (detector ceiling)": "oracle"}.items()}  # fmt: skip
        shown = [k for k, r in fid.items() if r]
        if shown:
            n = max(fid[k]["n"] for k in shown)  # type: ignore[index]
            out.append(f"**Answer-language fidelity** (share of answers in the asked language; n={n} per language; "
                       f"calibrated in the translated share: {', '.join(models.calibrated) or 'none'})\n")  # fmt: skip
            out.append(
                "| language | " + " | ".join(f"{k} translated" if "%" in k else k for k in shown) + " |"
            )
            out.append("|---" * (len(shown) + 1) + "|")
            fl = [x for x in langs if any(x in fid[k]["values"] for k in shown)]  # type: ignore[index]
            for lang in fl:
                cells = []
                for k in shown:
                    r = fid[k] or {}
                    cells.append(
                        "–" if lang not in r["values"] else _fmt(r["values"][lang], r["intervals"][lang])
                    )
                out.append(
                    f"| {lang}{' (calibrated)' if lang in models.calibrated else ''} | "
                    + " | ".join(cells)
                    + " |"
                )
            out.append("")
    return "\n".join(out)


def _ratios(board: Any, model: str | None, dataset: str, metric: str) -> dict[str, Any]:
    r = _row(board, model, dataset, metric)
    return {} if r is None else {k: v for k, v in r["ratios"].items() if k != "en"}


def scatter(
    board: Any,
    alignment: Mapping[str, Mapping[str, float]],
    models: Sequence[str],
    path: Path,
    *,
    dataset: str = TARGET_SET,
    metric: str = "acc_all@1",
) -> dict[str, dict[str, float]]:
    """PNG: the pivot's en->X alignment (x) against the transfer ratio X/en (y), one point per language
    and pivot, with each pivot's Spearman rho and p-value; returns ``{model: {rho, p, n}}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import spearmanr

    stats: dict[str, dict[str, float]] = {}
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for model, marker in zip(models, "os^D", strict=False):
        ratios = _ratios(board, model, dataset, metric)
        align = alignment.get(model, {})
        langs = [x for x in ratios if x in align]
        if len(langs) < 3:
            continue
        xs = [align[x] for x in langs]
        ys = [ratios[x].value for x in langs]
        rho, p = spearmanr(xs, ys)
        stats[model] = {"rho": float(rho), "p": float(p), "n": len(langs)}
        err = [
            [
                max(0.0, y - (e.interval.low if e.interval else y))
                for y, e in zip(ys, (ratios[x] for x in langs), strict=True)
            ],
            [
                max(0.0, (e.interval.high if e.interval else y) - y)
                for y, e in zip(ys, (ratios[x] for x in langs), strict=True)
            ],
        ]
        ax.errorbar(xs, ys, yerr=err, fmt=marker, capsize=2, alpha=0.8,
                    label=f"{model}: Spearman ρ={rho:.2f} (p={p:.3g}, n={len(langs)})")  # fmt: skip
        for x, y, lang in zip(xs, ys, langs, strict=True):
            ax.annotate(lang, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xlabel("pivot alignment: en→X CSLS P@1 of val names")
    ax.set_ylabel(f"transfer ratio X / en ({metric}, {dataset})")
    ax.axhline(1.0, color="grey", lw=0.5, ls="--")
    if stats:
        ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Does the pivot's text alignment predict zero-shot transfer?", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return stats


def _above_chance(r: dict[str, Any] | None, langs: Sequence[str], chance: float) -> list[str]:
    if r is None:
        return []
    return [x for x in langs if r["intervals"].get(x) is not None and r["intervals"][x].low > chance]


def targets(
    board: Any, models: HeadlineModels, langs: Sequence[str], spearman: Mapping[str, Mapping[str, float]]
) -> list[dict[str, Any]]:
    """Each target of the reproduction issue: the measured value, the threshold, and whether it is met."""
    others = [x for x in langs if x != "en"]
    out: list[dict[str, Any]] = []

    def add(name: str, value: Any, threshold: str, met: bool | None, **extra: Any) -> None:
        out.append({"target": name, "value": value, "threshold": threshold, "met": met, **extra})

    r8 = _row(board, models.zero_shot, TARGET_SET, "acc@1")
    en8 = None if r8 is None else r8["values"].get("en")
    add(
        "contrastive head, English, seen-style Twemoji, among 8",
        en8,
        ">= 0.75",
        None if en8 is None else en8 >= 0.75,
    )
    for metric, thr in (("acc@1", 0.75), ("acc_all@1", 0.5)):
        r = _row(board, models.zero_shot, TARGET_SET, metric)
        t = None if r is None else r["transfer"]
        add(f"contrastive head, mean transfer ratio over {len(others)} languages, {metric}", t, f">= {thr}",
            None if t is None else t >= thr,
            interval=None if r is None or r["transfer_interval"] is None else [r["transfer_interval"].low, r["transfer_interval"].high])  # fmt: skip
    if models.ablation:
        g = _ratios(board, models.zero_shot, TARGET_SET, "acc_all@1")
        s = _ratios(board, models.ablation, TARGET_SET, "acc_all@1")
        gap: dict[str, float | None] = {}
        for x in ("zh", "ja", "ru", "ar"):
            if x not in g or x not in s:
                gap[x] = None
            elif s[x].value:
                gap[x] = g[x].value / s[x].value
            else:  # the ablation transfers nothing: any transfer of the pivot's is an infinite gap
                gap[x] = math.inf if g[x].value > 0 else None
        add("ablation gap: Gemma / SmolLM2 transfer ratio among all N on zh, ja, ru, ar", gap, ">= 2 each",
            all(v is not None and v >= 2 for v in gap.values()) if g and s else None)  # fmt: skip
    sp = spearman.get(models.zero_shot)
    add(
        "Spearman rho(pivot alignment, transfer among all N)",
        sp,
        ">= 0.7",
        None if not sp else sp["rho"] >= 0.7,
    )
    ru = _row(board, models.zero_shot, "emojicap/unseen/openmoji+twemoji+noto", "acc@1")
    if ru is None:
        ru = next(
            (
                r
                for r in board.table()
                if r["model"] == models.zero_shot
                and r["dataset"].startswith("emojicap/unseen")
                and r["metric"] == "acc@1"
            ),
            None,
        )
    en_u = None if ru is None else ru["values"].get("en")
    add("unseen concepts, English among 8", en_u, ">= 0.5", None if en_u is None else en_u >= 0.5,
        transfer=None if ru is None else ru["transfer"])  # fmt: skip
    if models.generative:
        rg = next(
            (
                r
                for r in board.table()
                if r["model"] == models.generative
                and r["dataset"].startswith("emojicap/seen-aug")
                and r["metric"] == "acc@1"
                and r["task"] == "classification"
            ),
            None,
        )
        ok = _above_chance(rg, others, 1 / 8)
        add("generative head, seen-aug: interval above chance", {"languages": ok, "count": len(ok)}, f">= 10 of {len(others)}",
            None if rg is None else len(ok) >= 10)  # fmt: skip
    shared = next((k for k in (models.fidelity or {}) if k != "0 %"), None)
    if models.fidelity and shared:
        rf = next(
            (r for r in board.table() if r["model"] == models.fidelity[shared] and r["metric"] == "fidelity"),
            None,
        )
        vals = {} if rf is None else {x: rf["values"].get(x) for x in models.calibrated}
        add(f"fidelity at {shared} translated, calibrated languages", vals, ">= 0.9 each",
            None if not vals else all(v is not None and v >= 0.9 for v in vals.values()))  # fmt: skip
    if models.paint:
        rp = next(
            (
                r
                for r in board.table()
                if r["model"] == models.paint and r["task"] == "t2i" and r["metric"].startswith("judge_acc")
            ),
            None,
        )
        chance = (_chance_of(board, rp) if rp is not None else None) or 1 / 8
        ok = _above_chance(rp, others, chance)
        add("paint judged by the contrastive head: interval above chance", {"languages": ok, "count": len(ok)},
            f">= 10 of {len(others)}", None if rp is None else len(ok) >= 10)  # fmt: skip
    return out


def _chance_of(board: Any, row: Mapping[str, Any]) -> float | None:
    for r in board.results:
        if (
            r.model == row["model"]
            and r.metric == row["metric"]
            and r.dataset == row["dataset"]
            and r.chance is not None
        ):
            return float(r.chance)
    return None


def write_headline(
    board: Any,
    out_dir: Path,
    models: HeadlineModels,
    langs: Sequence[str],
    alignment: Mapping[str, Mapping[str, float]],
) -> dict[str, Path]:
    """``headline.md``, ``transfer-scatter.png`` and ``targets.json`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    md = headline_table(board, models, langs)
    (out_dir / "headline.md").write_text(md, encoding="utf-8")
    files["headline"] = out_dir / "headline.md"
    pivots = [m for m in (models.zero_shot, models.ablation) if m]
    stats = scatter(board, alignment, pivots, out_dir / "transfer-scatter.png")
    files["scatter"] = out_dir / "transfer-scatter.png"
    checked = targets(board, models, langs, stats)
    (out_dir / "targets.json").write_text(
        json.dumps({"spearman": stats, "targets": checked}, indent=1, ensure_ascii=False, default=str),
        encoding="utf-8",
    )
    files["targets"] = out_dir / "targets.json"
    return files


def rewrite_headline(run_dir: str | Path) -> dict[str, Path]:
    """Rebuild ``headline.md``, ``transfer-scatter.png`` and ``targets.json`` of a finished run from its
    stored board (``board/results.json``) and pivot alignments (``alignment.json`` of the run and its
    ablations), without evaluating anything again."""
    from mpm.recipe import _label, headline_models, load_run_config
    from mpm_bench import Leaderboard

    root = Path(run_dir)
    cfg = load_run_config(root)
    board = Leaderboard.from_files([root / "board" / "results.json"])
    alignment: dict[str, dict[str, float]] = {}
    for name, sub in [(None, root)] + [(n, root / "ablations" / n) for n in cfg.ablations]:
        path = sub / "alignment.json"
        if path.is_file():
            p1 = json.loads(path.read_text(encoding="utf-8"))["p1"]
            label = _label(name, cfg if name is None else cfg.ablation(name))
            alignment[label] = alignment[f"{label}/contrastive"] = p1
    return write_headline(board, root / "board", headline_models(cfg), list(cfg.run.langs), alignment)


if __name__ == "__main__":  # python -m mpm.headline RUN_DIR
    import sys

    for kind, path in rewrite_headline(sys.argv[1]).items():
        print(f"{kind}: {path}")
