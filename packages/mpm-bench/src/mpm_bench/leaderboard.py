"""Leaderboards: merge result files, render Markdown / self-contained HTML, plot per-language bars
and transfer ratios (language score / English score).

Results JSON schema ``mpm-bench/results/v1``::

    {"schema": "mpm-bench/results/v1",
     "results": [{"model": str, "task": str, "language": str, "metric": str, "value": float,
                  "n": int, "config_hash": str, "versions": {dist: version}, "time": ISO-8601 UTC,
                  "dataset": str, "config": {...}}, ...]}
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mpm_bench.interfaces import Result

__all__ = ["LOWER_IS_BETTER", "SCHEMA", "Leaderboard", "load_results", "save_results"]

SCHEMA = "mpm-bench/results/v1"
#: Metrics where a smaller value is better (the transfer ratio is inverted for them).
LOWER_IS_BETTER = frozenset({"fd"})


def save_results(results: Iterable[Result], path: str | Path) -> Path:
    """Write results as a schema ``mpm-bench/results/v1`` JSON file."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"schema": SCHEMA, "results": [r.to_dict() for r in results]}
    out.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
    return out


def load_results(path: str | Path) -> list[Result]:
    """Read a results file (raises ``FileNotFoundError``/``ValueError`` naming the file)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"results file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{p} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{p} is not a {SCHEMA} results file")
    return [Result.from_dict(row) for row in data["results"]]


def _fmt(value: float, metric: str) -> str:
    if math.isnan(value):
        return "–"
    if metric in ("bleu", "chrf") or metric in LOWER_IS_BETTER:
        return f"{value:.2f}"
    return f"{value:.3f}"


class Leaderboard:
    """A set of results, de-duplicated on (model, task, language, metric, config_hash, dataset).

    When two runs report the same key, the later ``time`` wins (so re-running a model replaces its
    old numbers and merging several files is order-independent).
    """

    def __init__(self, results: Iterable[Result] = ()) -> None:
        self._rows: dict[tuple[str, ...], Result] = {}
        self.add(results)

    @staticmethod
    def _key(r: Result) -> tuple[str, ...]:
        return (r.model, r.task, r.language, r.metric, r.config_hash, r.dataset)

    def add(self, results: Iterable[Result]) -> Leaderboard:
        """Add results (later timestamps replace earlier ones); returns ``self``."""
        for r in results:
            key = self._key(r)
            old = self._rows.get(key)
            if old is None or r.time >= old.time:
                self._rows[key] = r
        return self

    @classmethod
    def from_files(cls, paths: Sequence[str | Path]) -> Leaderboard:
        """Merge several results files."""
        if not paths:
            raise ValueError("no results files given")
        board = cls()
        for path in paths:
            board.add(load_results(path))
        return board

    def merge(self, other: Leaderboard) -> Leaderboard:
        """A new board with the rows of both."""
        return Leaderboard([*self.results, *other.results])

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

    def table(self) -> list[dict[str, Any]]:
        """One row per (task, metric, model, dataset, config): ``{lang: value}``, mean and transfer.

        ``transfer`` is the mean over non-English languages of the ratio to English (inverted for
        lower-is-better metrics, so 1.0 always means parity with English).
        """
        groups: dict[tuple[str, ...], dict[str, Result]] = {}
        for r in self._rows.values():
            groups.setdefault((r.task, r.metric, r.model, r.dataset, r.config_hash), {})[r.language] = r
        rows = []
        for (task, metric, model, dataset, chash), by_lang in sorted(groups.items()):
            values = {lang: r.value for lang, r in by_lang.items()}
            ratios = [self._ratio(values.get("en"), v, metric) for lang, v in values.items() if lang != "en"]
            ratios_ok = [x for x in ratios if x is not None]
            rows.append({
                "task": task, "metric": metric, "model": model, "dataset": dataset, "config_hash": chash,
                "values": values, "mean": sum(values.values()) / len(values),
                "transfer": sum(ratios_ok) / len(ratios_ok) if ratios_ok else float("nan"),
                "n": max(r.n for r in by_lang.values()),
            })  # fmt: skip
        return rows

    @staticmethod
    def _ratio(en: float | None, value: float, metric: str) -> float | None:
        if en is None:
            return None
        if metric in LOWER_IS_BETTER:
            return en / value if value else None
        return value / en if en else None

    def transfer(self, task: str, metric: str) -> dict[str, dict[str, float]]:
        """``{model: {lang: ratio to English}}`` for one task and metric (models that report English)."""
        out: dict[str, dict[str, float]] = {}
        for row in self.table():
            if row["task"] != task or row["metric"] != metric:
                continue
            en = row["values"].get("en")
            ratios = {lang: self._ratio(en, v, metric) for lang, v in row["values"].items()}
            out[row["model"]] = {k: v for k, v in ratios.items() if v is not None}
        return out

    # ---------------------------------------------------------------- renderers
    def to_json(self, path: str | Path) -> Path:
        """Write the merged rows as a results file."""
        return save_results(self.results, path)

    def to_markdown(self) -> str:
        """A Markdown table per task: models x languages, mean and transfer ratio."""
        langs = self.languages()
        lines: list[str] = []
        rows = self.table()
        for task in sorted({r["task"] for r in rows}):
            lines += [f"### {task}", ""]
            lines.append("| metric | model | " + " | ".join(langs) + " | mean | transfer | n |")
            lines.append("|---|---|" + "---:|" * (len(langs) + 3))
            for r in (r for r in rows if r["task"] == task):
                cells = [
                    _fmt(r["values"][lang], r["metric"]) if lang in r["values"] else "–" for lang in langs
                ]
                lines.append(
                    f"| {r['metric']} | {r['model']} | " + " | ".join(cells)
                    + f" | {_fmt(r['mean'], r['metric'])} | {_fmt(r['transfer'], 'ratio')} | {r['n']} |"
                )  # fmt: skip
            lines.append("")
        lines.append("transfer = mean over languages of (language / English); for fd, English / language.")
        return "\n".join(lines) + "\n"

    def to_html(self, *, title: str = "mpm-bench leaderboard") -> str:
        """A self-contained HTML page (inline CSS/JS, no network) with one sortable table."""
        langs = self.languages()
        head = ["task", "metric", "model", *langs, "mean", "transfer", "n"]
        body = []
        for r in self.table():
            cells = [r["task"], r["metric"], r["model"]]
            nums = [r["values"].get(lang, float("nan")) for lang in langs] + [r["mean"], r["transfer"]]
            tds = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
            for v, m in zip(nums, [r["metric"]] * len(langs) + [r["metric"], "ratio"]):
                sort_key = "" if math.isnan(v) else repr(float(v))
                tds += f'<td class="num" data-v="{sort_key}">{_fmt(v, m)}</td>'
            tds += f'<td class="num" data-v="{r["n"]}">{r["n"]}</td>'
            body.append(f"<tr>{tds}</tr>")
        ths = "".join(f'<th onclick="sortBy({i})">{html.escape(h)}</th>' for i, h in enumerate(head))
        return _HTML.format(title=html.escape(title), ths=ths, rows="\n".join(body))

    def plot(self, out_dir: str | Path) -> list[Path]:
        """Per (task, metric): a per-language bar chart and a transfer-ratio chart (PNG files)."""
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
                for i, r in enumerate(sel):
                    en = r["values"].get("en")
                    ys = []
                    for lang in shown:
                        v = r["values"].get(lang, float("nan"))
                        if kind == "transfer":
                            ratio = self._ratio(en, v, metric) if not math.isnan(v) else None
                            v = float("nan") if ratio is None else ratio
                        ys.append(v)
                    xs = [j + (i - (len(sel) - 1) / 2) * width for j in range(len(shown))]
                    ax.bar(xs, ys, width=width, label=r["model"])
                ax.set_xticks(range(len(shown)), shown)
                if kind == "transfer":
                    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
                    ax.set_ylabel(f"{metric}: ratio to English")
                else:
                    ax.set_ylabel(metric)
                ax.set_title(
                    f"{task} / {metric}" + (" — transfer to each language" if kind == "transfer" else "")
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


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; }}
th {{ background: #f0f0f0; cursor: pointer; user-select: none; }}
th.asc::after {{ content: " \\25B2"; }} th.desc::after {{ content: " \\25BC"; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr:nth-child(even) {{ background: #fafafa; }}
</style></head><body>
<h1>{title}</h1>
<p>Click a column header to sort. transfer = mean ratio of each language to English (fd: English / language).</p>
<table id="board"><thead><tr>{ths}</tr></thead><tbody>
{rows}
</tbody></table>
<script>
let current = -1, asc = true;
function cellKey(td) {{
  if (td.classList.contains("num")) {{
    const v = td.getAttribute("data-v");
    return v === "" ? NaN : parseFloat(v);
  }}
  return td.textContent;
}}
function sortBy(col) {{
  const tbody = document.querySelector("#board tbody");
  const rows = Array.from(tbody.rows);
  asc = (col === current) ? !asc : true; current = col;
  rows.sort((a, b) => {{
    const x = cellKey(a.cells[col]), y = cellKey(b.cells[col]);
    if (typeof x === "number" || typeof y === "number") {{
      if (isNaN(x)) return 1; if (isNaN(y)) return -1;
      return asc ? x - y : y - x;
    }}
    return asc ? x.localeCompare(y) : y.localeCompare(x);
  }});
  rows.forEach(r => tbody.appendChild(r));
  document.querySelectorAll("#board th").forEach((th, i) => {{
    th.classList.remove("asc", "desc");
    if (i === col) th.classList.add(asc ? "asc" : "desc");
  }});
}}
</script></body></html>
"""
