"""Leaderboards: merge result files, render Markdown / self-contained HTML, plot per-language bars
and transfer ratios (language score / English score), every number with its 95 % interval.

Results JSON schema ``mpm-bench/results/v2`` (v1 files, which have no per-item data, still load)::

    {"schema": "mpm-bench/results/v2",
     "results": [{"model": str, "task": str, "language": str, "metric": str, "value": float,
                  "n": int, "config_hash": str, "versions": {dist: version}, "time": ISO-8601 UTC,
                  "dataset": str, "config": {...},
                  "interval": {"low", "high", "level", "n_boot", "seed", "n_clusters"} | null,
                  "chance": float | null,
                  "items": {"keys": [...], "clusters": [...], "values": [...], "aggregate": str} | null},
                 ...]}

One row per line, so files diff well.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mpm_bench.interfaces import Result
from mpm_bench.stats import (
    DEFAULT_LEVEL,
    DEFAULT_N_BOOT,
    DEFAULT_SEED,
    Interval,
    ItemValues,
    bootstrap_interval,
    paired_difference_interval,
    paired_replicates,
)

__all__ = [
    "LOWER_IS_BETTER",
    "SCHEMA",
    "SCHEMAS_READ",
    "Estimate",
    "Leaderboard",
    "load_results",
    "save_results",
]

SCHEMA = "mpm-bench/results/v2"
#: Schemas :func:`load_results` reads (v1: no intervals, no per-item data).
SCHEMAS_READ = ("mpm-bench/results/v1", SCHEMA)
#: Metrics where a smaller value is better (the transfer ratio is inverted for them).
LOWER_IS_BETTER = frozenset({"fd"})
#: Marks a number indistinguishable from the random baseline on the boards.
CHANCE_MARK = "≈"


def _compact(value: Any) -> Any:
    """Integral floats as ints (``1`` for ``1.0``): most per-item values are hits, 0 or 1."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [_compact(v) for v in value]
    return value


def save_results(results: Iterable[Result], path: str | Path) -> Path:
    """Write results as a schema ``mpm-bench/results/v2`` JSON file (one row per line, atomically).

    The item keys and cluster ids that many rows share (every metric and language of one run) are
    stored once, under ``"item_sets"``; a row's ``items`` then holds ``{"set": id, "values": [...],
    "aggregate": ...}``. :func:`load_results` restores the full form.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    item_sets: dict[str, dict[str, list[str]]] = {}
    rows = []
    for r in results:
        row = r.to_dict()
        items = row.get("items")
        if items:
            ident = hashlib.sha256(
                json.dumps([items["keys"], items["clusters"]], ensure_ascii=False).encode()
            ).hexdigest()[:12]
            item_sets.setdefault(ident, {"keys": items["keys"], "clusters": items["clusters"]})
            row["items"] = {
                "set": ident,
                "values": _compact(items["values"]),
                "aggregate": items["aggregate"],
            }
        rows.append(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
    sets = [
        f"{json.dumps(k)}:{json.dumps(v, ensure_ascii=False, separators=(',', ':'))}"
        for k, v in item_sets.items()
    ]
    text = (
        '{"schema": "' + SCHEMA + '", "results": [\n' + ",\n".join(rows) + "\n],\n"
        + '"item_sets": {\n' + ",\n".join(sets) + "\n}}\n"
    )  # fmt: skip
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


def load_results(path: str | Path) -> list[Result]:
    """Read a results file of schema v1 or v2 (raises ``FileNotFoundError``/``ValueError`` naming the file)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"results file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{p} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or data.get("schema") not in SCHEMAS_READ:
        raise ValueError(f"{p} is not a mpm-bench results file (schema {' or '.join(SCHEMAS_READ)})")
    item_sets = data.get("item_sets") or {}
    out = []
    try:
        for row in data["results"]:
            items = row.get("items")
            if isinstance(items, dict) and "set" in items:
                if items["set"] not in item_sets:
                    raise ValueError(
                        f"row of {row.get('model')!r} refers to unknown item set {items['set']!r}"
                    )
                row = {**row, "items": {**item_sets[items["set"]], **items}}
            out.append(Result.from_dict(row))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{p}: {err}") from err
    return out


def _fmt(value: float, metric: str) -> str:
    if value is None or math.isnan(value):
        return "–"
    if metric in ("bleu", "chrf") or metric in LOWER_IS_BETTER:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _fmt_interval(interval: Interval | None, metric: str) -> str:
    return "" if interval is None else f"[{_fmt(interval.low, metric)}, {_fmt(interval.high, metric)}]"


@dataclass(frozen=True)
class Estimate:
    """A number with its bootstrap interval (``None`` when it has none)."""

    value: float
    interval: Interval | None = None


def _is_baseline_name(model: str, baseline: str | None) -> bool:
    return baseline is not None and (model == baseline or model.startswith(baseline + "("))


class Leaderboard:
    """A set of results, de-duplicated on (model, task, language, metric, config_hash, dataset).

    When two runs report the same key, the later ``time`` wins (so re-running a model replaces its
    old numbers and merging several files is order-independent).

    Args:
        results: rows to start with.
        baseline: name of the chance-level model (``"random"`` matches ``random`` and
            ``random(seed=0)``); a result is marked indistinguishable from it when the 95 %
            interval of the paired difference (same items, same resampled clusters) contains 0. When
            the board has no baseline row for a number, the number's interval is compared with its
            closed-form ``chance`` level instead. ``None`` disables the marks.
        n_boot, level: the bootstrap behind the transfer-ratio intervals and the baseline test
            (each number's own interval comes with the result); the seed is fixed
            (:data:`~mpm_bench.stats.DEFAULT_SEED`).
    """

    def __init__(
        self,
        results: Iterable[Result] = (),
        *,
        baseline: str | None = "random",
        n_boot: int = DEFAULT_N_BOOT,
        level: float = DEFAULT_LEVEL,
    ) -> None:
        self._rows: dict[tuple[str, ...], Result] = {}
        self.baseline, self.n_boot, self.level = baseline, n_boot, level
        self._table: list[dict[str, Any]] | None = None  # computed once per set of rows
        self.add(results)

    @staticmethod
    def _key(r: Result) -> tuple[str, ...]:
        return (r.model, r.task, r.language, r.metric, r.config_hash, r.dataset)

    def add(self, results: Iterable[Result]) -> Leaderboard:
        """Add results (later timestamps replace earlier ones); returns ``self``."""
        self._table = None
        for r in results:
            key = self._key(r)
            old = self._rows.get(key)
            if old is None or r.time >= old.time:
                self._rows[key] = r
        return self

    @classmethod
    def from_files(cls, paths: Sequence[str | Path], **kwargs: Any) -> Leaderboard:
        """Merge several results files (``kwargs`` go to the constructor)."""
        if not paths:
            raise ValueError("no results files given")
        board = cls(**kwargs)
        for path in paths:
            board.add(load_results(path))
        return board

    def merge(self, other: Leaderboard) -> Leaderboard:
        """A new board with the rows of both (this board's settings)."""
        return Leaderboard(
            [*self.results, *other.results], baseline=self.baseline, n_boot=self.n_boot, level=self.level
        )

    @property
    def results(self) -> list[Result]:
        """All rows, sorted by task, metric, model, language."""
        return sorted(self._rows.values(), key=lambda r: (r.task, r.metric, r.model, r.language))

    def __len__(self) -> int:
        return len(self._rows)

    def languages(self) -> list[str]:
        """Languages present, English first then alphabetical."""
        langs = {r.language for r in self._rows.values()}
        return sorted(langs, key=lambda lang: (lang != "en", lang))

    # ------------------------------------------------------------------------ uncertainty
    def interval(self, r: Result) -> Interval | None:
        """The 95 % interval of one result: the stored one, else bootstrapped from its items."""
        if r.interval is not None:
            return r.interval
        if r.items is not None and self.n_boot > 0:
            return bootstrap_interval(r.items, n_boot=self.n_boot, level=self.level)
        return None

    def _baseline_row(self, r: Result) -> Result | None:
        if self.baseline is None or _is_baseline_name(r.model, self.baseline):
            return None
        for other in self._rows.values():
            if _is_baseline_name(other.model, self.baseline) and (
                other.task,
                other.metric,
                other.language,
                other.dataset,
                other.config_hash,
            ) == (r.task, r.metric, r.language, r.dataset, r.config_hash):
                return other
        return None

    def indistinguishable(self, r: Result) -> bool | None:
        """Whether ``r`` cannot be told apart from the random baseline (``None``: cannot say).

        With a baseline row on the board over the same items: the paired bootstrap interval of the
        difference contains 0. With a baseline row without per-item data: ``r``'s interval contains
        the baseline's value. Without a baseline row: ``r``'s interval contains ``r.chance``.
        Baseline rows themselves give ``None``.
        """
        if self.baseline is None or _is_baseline_name(r.model, self.baseline):
            return None
        base = self._baseline_row(r)
        own = self.interval(r)
        if base is not None:
            if r.items is not None and base.items is not None and self.n_boot > 0:
                try:
                    diff = paired_difference_interval(
                        r.items, base.items, n_boot=self.n_boot, level=self.level
                    )
                except ValueError:  # different items: fall back to the unpaired comparison
                    diff = None
                if diff is not None:
                    return diff.contains(0.0)
            return None if own is None else own.contains(base.value)
        if r.chance is not None and own is not None:
            return own.contains(r.chance)
        return None

    @staticmethod
    def _ratio(en: float | None, value: float, metric: str) -> float | None:
        if en is None:
            return None
        if metric in LOWER_IS_BETTER:
            return en / value if value else None
        return value / en if en else None

    def _ratio_replicates(self, en: ItemValues, other: ItemValues, metric: str) -> np.ndarray | None:
        try:
            r_en, r_x = paired_replicates([en, other], self.n_boot, DEFAULT_SEED)
        except ValueError:  # not the same items
            return None
        num, den = (r_en, r_x) if metric in LOWER_IS_BETTER else (r_x, r_en)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)

    def _interval_of(self, reps: np.ndarray | None, n_clusters: int) -> Interval | None:
        if reps is None:
            return None
        finite = reps[np.isfinite(reps)]
        if finite.size == 0 or finite.size < 0.95 * reps.size:
            return None
        alpha = (1 - self.level) / 2
        low, high = np.quantile(finite, [alpha, 1 - alpha])
        return Interval(float(low), float(high), self.level, self.n_boot, DEFAULT_SEED, n_clusters)

    def _transfer_of(self, by_lang: dict[str, Result]) -> tuple[dict[str, Estimate], Estimate]:
        """Per-language ratio to English with paired intervals, and their mean with its interval."""
        en = by_lang.get("en")
        ratios: dict[str, Estimate] = {}
        reps: list[np.ndarray] = []
        if en is None:
            return ratios, Estimate(float("nan"))
        for lang, r in by_lang.items():
            ratio = self._ratio(en.value, r.value, r.metric)
            if ratio is None:
                continue
            interval = None
            if lang != "en" and en.items is not None and r.items is not None and self.n_boot > 0:
                rep = self._ratio_replicates(en.items, r.items, r.metric)
                interval = self._interval_of(rep, en.items.n_clusters)
                if rep is not None:
                    reps.append(rep)
            ratios[lang] = Estimate(ratio, interval)
        others = [e.value for lang, e in ratios.items() if lang != "en"]
        mean = sum(others) / len(others) if others else float("nan")
        mean_interval = None
        if others and len(reps) == len(others) and en.items is not None:
            mean_interval = self._interval_of(np.mean(np.stack(reps), axis=0), en.items.n_clusters)
        return ratios, Estimate(mean, mean_interval)

    def table(self) -> list[dict[str, Any]]:
        """One row per (task, metric, model, dataset, config).

        Keys: ``values`` / ``intervals`` / ``chance_like`` (``{lang: ...}``; ``chance_like`` is
        :meth:`indistinguishable`), ``mean``, ``ratios`` (``{lang: Estimate}``, ratio to English with
        its paired interval), ``transfer`` (mean ratio over non-English languages) and
        ``transfer_interval``, ``n``. For lower-is-better metrics the ratio is inverted, so 1.0
        always means parity with English.
        """
        if self._table is not None:
            return self._table
        groups: dict[tuple[str, ...], dict[str, Result]] = {}
        for r in self._rows.values():
            groups.setdefault((r.task, r.metric, r.model, r.dataset, r.config_hash), {})[r.language] = r
        rows = []
        for (task, metric, model, dataset, chash), by_lang in sorted(groups.items()):
            values = {lang: r.value for lang, r in by_lang.items()}
            ratios, transfer = self._transfer_of(by_lang)
            rows.append({
                "task": task, "metric": metric, "model": model, "dataset": dataset, "config_hash": chash,
                "values": values,
                "intervals": {lang: self.interval(r) for lang, r in by_lang.items()},
                "chance_like": {lang: self.indistinguishable(r) for lang, r in by_lang.items()},
                "mean": sum(values.values()) / len(values),
                "ratios": ratios,
                "transfer": transfer.value, "transfer_interval": transfer.interval,
                "n": max(r.n for r in by_lang.values()),
            })  # fmt: skip
        self._table = rows
        return rows

    def transfer(self, task: str, metric: str) -> dict[str, dict[str, float]]:
        """``{model: {lang: ratio to English}}`` for one task and metric (models that report English)."""
        return {
            model: {lang: e.value for lang, e in per.items()}
            for model, per in self.transfer_estimates(task, metric).items()
        }

    def transfer_estimates(self, task: str, metric: str) -> dict[str, dict[str, Estimate]]:
        """``{model: {lang: Estimate(ratio, paired 95 % interval)}}`` for one task and metric.

        The interval resamples the same clusters for the language and for English (paired), so it
        reflects the uncertainty of the ratio, not of the two numbers separately. ``None`` intervals
        where a result lacks per-item data (v1 files, ``fd``).
        """
        out: dict[str, dict[str, Estimate]] = {}
        for row in self.table():
            if row["task"] == task and row["metric"] == metric and "en" in row["values"]:
                out[row["model"]] = dict(row["ratios"])
        return out

    # ---------------------------------------------------------------- renderers
    def to_json(self, path: str | Path) -> Path:
        """Write the merged rows as a results file (intervals filled in where they were computable)."""
        import dataclasses

        rows = [
            r if r.interval is not None else dataclasses.replace(r, interval=self.interval(r))
            for r in self.results
        ]
        return save_results(rows, path)

    def _cell(self, row: dict[str, Any], lang: str) -> str:
        if lang not in row["values"]:
            return "–"
        metric = row["metric"]
        text = _fmt(row["values"][lang], metric)
        interval = row["intervals"].get(lang)
        if interval is not None:
            text += " " + _fmt_interval(interval, metric)
        if row["chance_like"].get(lang):
            text += " " + CHANCE_MARK
        return text

    def to_markdown(self) -> str:
        """A Markdown table per task: models x languages with 95 % intervals, mean and transfer ratio,
        then the per-language transfer ratios with their paired intervals."""
        langs = self.languages()
        lines: list[str] = []
        rows = self.table()
        for task in sorted({r["task"] for r in rows}):
            lines += [f"### {task}", ""]
            # one task evaluated on several datasets (e.g. seen-aug, seen-style, unseen): say which
            many = len({r["dataset"] for r in rows if r["task"] == task}) > 1
            ds_head, ds_rule = ("dataset | ", "---|") if many else ("", "")
            lines.append(f"| {ds_head}metric | model | " + " | ".join(langs) + " | mean | transfer | n |")
            lines.append(f"|{ds_rule}---|---|" + "---:|" * (len(langs) + 3))
            for r in (r for r in rows if r["task"] == task):
                cells = [self._cell(r, lang) for lang in langs]
                transfer = _fmt(r["transfer"], "ratio")
                if r["transfer_interval"] is not None:
                    transfer += " " + _fmt_interval(r["transfer_interval"], "ratio")
                ds = f"{r['dataset']} | " if many else ""
                lines.append(
                    f"| {ds}{r['metric']} | {r['model']} | " + " | ".join(cells)
                    + f" | {_fmt(r['mean'], r['metric'])} | {transfer} | {r['n']} |"
                )  # fmt: skip
            lines.append("")
            others = [lang for lang in langs if lang != "en"]
            with_en = [r for r in rows if r["task"] == task and "en" in r["values"] and len(r["values"]) > 1]
            if with_en and others:
                lines += [f"#### {task}: transfer (language / English, paired 95 % interval)", ""]
                lines.append(f"| {ds_head}metric | model | " + " | ".join(others) + " |")
                lines.append(f"|{ds_rule}---|---|" + "---:|" * len(others))
                for r in with_en:
                    cells = []
                    for lang in others:
                        e = r["ratios"].get(lang)
                        cells.append(
                            "–"
                            if e is None
                            else (_fmt(e.value, "ratio") + " " + _fmt_interval(e.interval, "ratio")).strip()
                        )
                    ds = f"{r['dataset']} | " if many else ""
                    lines.append(f"| {ds}{r['metric']} | {r['model']} | " + " | ".join(cells) + " |")
                lines.append("")
        lines.append(
            "Each number: value [95 % cluster-bootstrap interval]. "
            f"{CHANCE_MARK} = indistinguishable from the random baseline (the paired interval of the "
            "difference contains 0, or the interval contains the chance level). "
            "transfer = mean over languages of (language / English); for fd, English / language."
        )
        return "\n".join(lines) + "\n"

    def to_html(self, *, title: str = "mpm-bench leaderboard") -> str:
        """A self-contained HTML page (inline CSS/JS, no network): one sortable table with 95 %
        intervals (numbers indistinguishable from the random baseline greyed and marked), and one
        table of per-language transfer ratios with their paired intervals."""
        langs = self.languages()
        rows = self.table()
        # a board of several datasets (e.g. seen-aug, seen-style, unseen) says which one each row is
        keys = ("task", "metric", "model", "dataset") if len({r["dataset"] for r in rows}) > 1 else (
            "task", "metric", "model")  # fmt: skip

        def key_tds(r: dict[str, Any]) -> str:
            return "".join(f"<td>{html.escape(str(r[k]))}</td>" for k in keys)

        head = [*keys, *langs, "mean", "transfer", "n"]
        body = []
        for r in rows:
            tds = key_tds(r)
            for lang in langs:
                v = r["values"].get(lang, float("nan"))
                interval = r["intervals"].get(lang)
                chance = bool(r["chance_like"].get(lang))
                tds += _num_td(v, r["metric"], interval, chance)
            tds += _num_td(r["mean"], r["metric"], None, False)
            tds += _num_td(r["transfer"], "ratio", r["transfer_interval"], False)
            tds += f'<td class="num" data-v="{r["n"]}">{r["n"]}</td>'
            body.append(f"<tr>{tds}</tr>")
        ths = "".join(
            f"<th onclick=\"sortBy('board', {i})\">{html.escape(h)}</th>" for i, h in enumerate(head)
        )
        others = [lang for lang in langs if lang != "en"]
        t_rows = []
        for r in rows:
            if "en" not in r["values"] or len(r["values"]) < 2:
                continue
            tds = key_tds(r)
            for lang in others:
                e = r["ratios"].get(lang)
                tds += _num_td(
                    float("nan") if e is None else e.value, "ratio", None if e is None else e.interval, False
                )
            t_rows.append(f"<tr>{tds}</tr>")
        t_head = [*keys, *others]
        t_ths = "".join(
            f"<th onclick=\"sortBy('transfer', {i})\">{html.escape(h)}</th>" for i, h in enumerate(t_head)
        )
        return _HTML.format(
            title=html.escape(title), ths=ths, rows="\n".join(body), t_ths=t_ths, t_rows="\n".join(t_rows),
            mark=CHANCE_MARK,
        )  # fmt: skip

    def plot(self, out_dir: str | Path) -> list[Path]:
        """Per (task, metric): a per-language bar chart and a transfer-ratio chart (PNG files), with
        95 % intervals as error bars; bars indistinguishable from the random baseline are hatched."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        rows = self.table()
        langs = self.languages()
        for task, metric in sorted({(r["task"], r["metric"]) for r in rows}):
            sel = [r for r in rows if r["task"] == task and r["metric"] == metric]
            for kind in ("bars", "transfer"):
                fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(langs) * max(1, len(sel)) ** 0.5), 3.6))
                width = 0.8 / len(sel)
                shown = langs if kind == "bars" else [lang for lang in langs if lang != "en"]
                any_chance = False
                for i, r in enumerate(sel):
                    ys, lo, hi, hatches = [], [], [], []
                    for lang in shown:
                        if kind == "bars":
                            v = r["values"].get(lang, float("nan"))
                            interval = r["intervals"].get(lang)
                            chance = bool(r["chance_like"].get(lang))
                        else:
                            e = r["ratios"].get(lang)
                            v = float("nan") if e is None else e.value
                            interval = None if e is None else e.interval
                            chance = False
                        ys.append(v)
                        lo.append(0.0 if interval is None or math.isnan(v) else max(0.0, v - interval.low))
                        hi.append(0.0 if interval is None or math.isnan(v) else max(0.0, interval.high - v))
                        hatches.append("//" if chance else "")
                        any_chance |= chance
                    xs = [j + (i - (len(sel) - 1) / 2) * width for j in range(len(shown))]
                    bars = ax.bar(xs, ys, width=width, label=r["model"], yerr=[lo, hi], capsize=2,
                                  error_kw={"elinewidth": 0.8, "ecolor": "black"})  # fmt: skip
                    for bar, hatch in zip(bars, hatches, strict=True):
                        if hatch:
                            bar.set_hatch(hatch)
                            bar.set_alpha(0.55)
                ax.set_xticks(range(len(shown)), shown)
                if kind == "transfer":
                    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
                    ax.set_ylabel(f"{metric}: ratio to English")
                else:
                    ax.set_ylabel(metric)
                note = " (hatched: indistinguishable from random)" if any_chance else ""
                ax.set_title(
                    f"{task} / {metric}"
                    + (" — transfer to each language" if kind == "transfer" else "")
                    + f", 95 % intervals{note}",
                    fontsize=9,
                )
                ax.legend(fontsize=7)
                fig.tight_layout()
                safe_metric = metric.replace("@", "at")
                path = out / f"{task}_{safe_metric}_{kind}.png"
                fig.savefig(path, dpi=100)
                plt.close(fig)
                written.append(path)
        return written

    def write(self, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
        """Write ``results.json``, ``leaderboard.md``, ``leaderboard.html`` and PNG plots to ``out_dir``."""
        if not self._rows:
            raise ValueError("empty leaderboard: no results to write")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "json": self.to_json(out / "results.json"),
            "markdown": out / "leaderboard.md",
            "html": out / "leaderboard.html",
        }
        paths["markdown"].write_text(self.to_markdown(), encoding="utf-8")
        paths["html"].write_text(self.to_html(), encoding="utf-8")
        if plots:
            for p in self.plot(out / "plots"):
                paths[f"plot:{p.stem}"] = p
        return paths


def _num_td(value: float, metric: str, interval: Interval | None, chance: bool) -> str:
    sort_key = "" if value is None or math.isnan(value) else repr(float(value))
    text = html.escape(_fmt(value, metric))
    attrs = f'class="num{" chance" if chance else ""}" data-v="{sort_key}"'
    if interval is not None:
        text += f' <span class="ci">{html.escape(_fmt_interval(interval, metric))}</span>'
        level = round(interval.level * 100)
        attrs += (
            f' title="{level} % interval {html.escape(_fmt_interval(interval, metric))}, '
            f'{interval.n_clusters} clusters, {interval.n_boot} replicates"'
        )
    if chance:
        text += f" {CHANCE_MARK}"
    return f"<td {attrs}>{text}</td>"


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 14px; margin-bottom: 2em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; }}
th {{ background: #f0f0f0; cursor: pointer; user-select: none; }}
th.asc::after {{ content: " \\25B2"; }} th.desc::after {{ content: " \\25BC"; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
td.chance {{ color: #888; font-style: italic; }}
span.ci {{ color: #666; font-size: 11px; }}
tr:nth-child(even) {{ background: #fafafa; }}
</style></head><body>
<h1>{title}</h1>
<p>Click a column header to sort. Each number: value [95 % cluster-bootstrap interval]; hover for the
number of clusters and replicates. {mark} (grey): indistinguishable from the random baseline. transfer =
mean ratio of each language to English (fd: English / language).</p>
<table id="board"><thead><tr>{ths}</tr></thead><tbody>
{rows}
</tbody></table>
<h2>Transfer: language / English (paired 95 % interval over the same items)</h2>
<table id="transfer"><thead><tr>{t_ths}</tr></thead><tbody>
{t_rows}
</tbody></table>
<script>
const state = {{}};
function cellKey(td) {{
  if (td.classList.contains("num")) {{
    const v = td.getAttribute("data-v");
    return v === "" ? NaN : parseFloat(v);
  }}
  return td.textContent;
}}
function sortBy(id, col) {{
  const tbody = document.querySelector("#" + id + " tbody");
  const rows = Array.from(tbody.rows);
  const st = state[id] || {{current: -1, asc: true}};
  st.asc = (col === st.current) ? !st.asc : true; st.current = col; state[id] = st;
  rows.sort((a, b) => {{
    const x = cellKey(a.cells[col]), y = cellKey(b.cells[col]);
    if (typeof x === "number" || typeof y === "number") {{
      if (isNaN(x)) return 1; if (isNaN(y)) return -1;
      return st.asc ? x - y : y - x;
    }}
    return st.asc ? x.localeCompare(y) : y.localeCompare(x);
  }});
  rows.forEach(r => tbody.appendChild(r));
  document.querySelectorAll("#" + id + " th").forEach((th, i) => {{
    th.classList.remove("asc", "desc");
    if (i === col) th.classList.add(st.asc ? "asc" : "desc");
  }});
}}
</script></body></html>
"""
