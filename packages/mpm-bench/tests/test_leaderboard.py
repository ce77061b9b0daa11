from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from mpm_bench import Leaderboard, Result, load_results, save_results
from mpm_bench.stats import ItemValues, bootstrap_interval


def _r(model: str, lang: str, value: float, *, metric: str = "acc@1", task: str = "classification",
       time: str = "2026-11-28T00:00:00+00:00", chash: str = "abc123abc123") -> Result:  # fmt: skip
    return Result(model=model, task=task, language=lang, metric=metric, value=value, n=10, config_hash=chash,
                  versions={"mpm-bench": "0.1"}, time=time, dataset="emojicap/test", config={"k": 1})  # fmt: skip


def test_results_json_round_trip_and_schema(tmp_path: Path) -> None:
    rows = [_r("m", "en", 0.5), _r("m", "zh", 0.25)]
    path = save_results(rows, tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["schema"] == "mpm-bench/results/v2"
    assert set(data["results"][0]) == {
        "model", "task", "language", "metric", "value", "n", "config_hash", "versions", "time", "dataset", "config",
        "interval", "chance", "items",
    }  # fmt: skip
    assert load_results(path) == rows
    (tmp_path / "bad.json").write_text('{"results": []}')
    with pytest.raises(ValueError, match="is not a mpm-bench results file"):
        load_results(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="results file not found"):
        load_results(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"lacks required field\(s\) \['value'\]"):
        Result.from_dict(
            {"model": "m", "task": "t", "language": "en", "metric": "x", "n": 1, "config_hash": "h"}
        )


def test_merge_keeps_the_latest_run_and_computes_transfer() -> None:
    old = [_r("a", "en", 0.8), _r("a", "zh", 0.2)]
    new = [_r("a", "zh", 0.4, time="2026-11-29T00:00:00+00:00")]
    other = [_r("b", "en", 0.5), _r("b", "zh", 0.5), _r("b", "ja", 0.25)]
    board = Leaderboard(new).merge(Leaderboard(old)).merge(Leaderboard(other))
    assert len(board) == 5
    rows = {r["model"]: r for r in board.table()}
    assert rows["a"]["values"] == {"en": 0.8, "zh": 0.4}
    assert rows["a"]["transfer"] == pytest.approx(0.5)
    assert rows["b"]["transfer"] == pytest.approx((1.0 + 0.5) / 2)
    assert board.transfer("classification", "acc@1")["b"] == {"en": 1.0, "zh": 1.0, "ja": 0.5}
    assert board.languages() == ["en", "ja", "zh"]


def test_lower_is_better_metric_inverts_transfer() -> None:
    board = Leaderboard(
        [_r("p", "en", 10.0, metric="fd", task="t2i"), _r("p", "zh", 20.0, metric="fd", task="t2i")]
    )
    assert board.transfer("t2i", "fd")["p"]["zh"] == pytest.approx(0.5)


def test_markdown_html_and_plots(tmp_path: Path) -> None:
    rows = [_r("a", "en", 0.8), _r("a", "zh", 0.4), _r("b", "en", 0.6), _r("b", "zh", 0.6),
            _r("a", "en", 30.0, metric="bleu", task="captioning"), _r("a", "ja", 15.0, metric="bleu", task="captioning")]  # fmt: skip
    board = Leaderboard(rows)
    md = board.to_markdown()
    assert "### classification" in md and "### captioning" in md
    assert re.search(r"\| acc@1 \| a \| 0\.800 \| – \| 0\.400 \| 0\.600 \| 0\.500 \| 10 \|", md)
    assert "| bleu | a | 30.00 | 15.00 | – |" in md
    page = board.to_html()
    assert page.startswith("<!DOCTYPE html>") and "function sortBy" in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page  # self-contained
    assert page.count("<tr>") == (1 + 3) + (1 + 3)  # the board, then the per-language transfer table
    paths = board.write(tmp_path / "board")
    pngs = [p for k, p in paths.items() if k.startswith("plot:")]
    assert len(pngs) == 4  # (classification acc@1, captioning bleu) x (bars, transfer)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert load_results(paths["json"]) == board.results
    with pytest.raises(ValueError, match="empty leaderboard"):
        Leaderboard().write(tmp_path / "empty")


def test_html_names_the_dataset_when_the_board_holds_several() -> None:
    from dataclasses import replace

    one = [_r("a", "en", 0.8), _r("a", "zh", 0.4)]
    assert "<th onclick=\"sortBy('board', 3)\">dataset</th>" not in Leaderboard(one).to_html()
    two = [*one, *(replace(r, dataset="emojicap/unseen", value=r.value / 2) for r in one)]
    page = Leaderboard(two).to_html()
    # both tables get the column, and the two rows that looked alike now say which set they are
    assert page.count("<th onclick=\"sortBy('board', 3)\">dataset</th>") == 1
    assert page.count("<th onclick=\"sortBy('transfer', 3)\">dataset</th>") == 1
    assert page.count("<td>emojicap/test</td>") == 2 and page.count("<td>emojicap/unseen</td>") == 2


def _items_row(
    model: str, lang: str, hits: list[float], *, metric: str = "acc@1", chance: float | None = 0.1
) -> Result:
    keys = [f"k{i}" for i in range(len(hits))]
    items = ItemValues.build(keys, [f"c{i // 2}" for i in range(len(hits))], hits)
    return Result(model=model, task="classification", language=lang, metric=metric, value=items.statistic(),
                  n=len(hits), config_hash="h" * 12, dataset="emojicap/test", time="2026-11-28T00:00:00+00:00",
                  interval=bootstrap_interval(items), chance=chance, items=items)  # fmt: skip


def _hits(n: int, p: float, seed: int) -> list[float]:
    return [float(x) for x in (np.random.default_rng(seed).random(n) < p)]


def _board_rows() -> list[Result]:
    n = 120
    rows = [_items_row("random", lang, _hits(n, 0.1, s)) for s, lang in enumerate(("en", "zh", "ja"))]
    good_en = _hits(n, 0.8, 10)
    good_zh = [h if i % 5 else 0.0 for i, h in enumerate(good_en)]  # zh loses every 5th item English gets
    rows += [_items_row("good", "en", good_en), _items_row("good", "zh", good_zh)]
    rows += [_items_row("weak", lang, _hits(n, 0.12, 20 + s)) for s, lang in enumerate(("en", "zh"))]
    return rows


def test_boards_show_intervals_and_mark_chance_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    board = Leaderboard(_board_rows())
    rows = {r["model"]: r for r in board.table()}
    assert rows["weak"]["chance_like"] == {"en": True, "zh": True}  # paired difference to random contains 0
    assert rows["good"]["chance_like"] == {"en": False, "zh": False}
    assert rows["random"]["chance_like"] == {"en": None, "zh": None, "ja": None}  # the baseline itself
    md = board.to_markdown()
    good = rows["good"]
    iv = good["intervals"]["en"]
    assert f"| acc@1 | good | {good['values']['en']:.3f} [{iv.low:.3f}, {iv.high:.3f}] |" in md
    assert re.search(r"\| acc@1 \| weak \| 0\.\d+ \[0\.\d+, 0\.\d+\] ≈ \|", md)
    assert "transfer (language / English, paired 95 % interval)" in md
    page = board.to_html()
    assert (
        page.count('class="num chance"') == 2 and 'class="ci"' in page and "clusters, 1000 replicates" in page
    )

    import matplotlib.figure
    from matplotlib.container import ErrorbarContainer

    figures: dict[str, matplotlib.figure.Figure] = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def keep(fig: matplotlib.figure.Figure, path: Path, **kw: object) -> None:
        figures[Path(path).stem] = fig
        real_savefig(fig, path, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    board.plot(tmp_path / "plots")
    ax = figures["classification_acc@1_bars".replace("@", "at")].axes[0]
    bars = [c for c in ax.containers if not isinstance(c, ErrorbarContainer)]
    errs = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 3 and len(errs) == 3  # one error-bar set per model
    weak = next(b for b in bars if b.get_label() == "weak")
    assert board.languages() == ["en", "ja", "zh"]  # weak has no ja bar
    assert [weak.patches[i].get_hatch() for i in (0, 2)] == ["//", "//"]
    assert not any(patch.get_hatch() for patch in next(b for b in bars if b.get_label() == "good").patches)
    lines = errs[[b.get_label() for b in bars].index("good")].lines[2][0].get_segments()
    assert lines[0][0][1] == pytest.approx(iv.low) and lines[0][1][1] == pytest.approx(iv.high)
    tax = figures["classification_accat1_transfer"].axes[0]
    assert any(isinstance(c, ErrorbarContainer) for c in tax.containers)


def test_transfer_ratio_has_a_paired_interval() -> None:
    board = Leaderboard(_board_rows())
    est = board.transfer_estimates("classification", "acc@1")
    zh = est["good"]["zh"]
    assert zh.value == pytest.approx(board.transfer("classification", "acc@1")["good"]["zh"])
    assert zh.interval is not None and zh.interval.low <= zh.value <= zh.interval.high < 1.0
    rnd = est["random"]["zh"]  # noise: the ratio of two chance-level numbers is anything
    assert rnd.interval is not None and rnd.interval.low < 1.0 < rnd.interval.high
    assert est["good"]["en"].value == 1.0
    row = next(r for r in board.table() if r["model"] == "good")
    assert row["transfer_interval"] == zh.interval  # one other language: the mean is that ratio


def test_without_a_baseline_row_the_chance_level_decides() -> None:
    rows = [r for r in _board_rows() if r.model != "random"]
    board = Leaderboard(rows)
    marks = {r["model"]: r["chance_like"] for r in board.table()}
    assert marks["weak"]["en"] is True and marks["good"]["en"] is False  # chance 0.1 in / out of the interval
    assert Leaderboard(rows, baseline=None).table()[0]["chance_like"] == {"en": None, "zh": None}


def test_v1_results_files_still_load(tmp_path: Path) -> None:
    row = {"model": "m", "task": "classification", "language": "en", "metric": "acc@1", "value": 0.5, "n": 10,
           "config_hash": "abc123abc123", "versions": {}, "time": "", "dataset": "emojicap/test", "config": {}}  # fmt: skip
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"schema": "mpm-bench/results/v1", "results": [row]}))
    (old,) = load_results(path)
    assert old.interval is None and old.items is None and old.chance is None and old.value == 0.5
    board = Leaderboard([old, *_board_rows()])
    assert "| acc@1 | m | 0.500 | – |" in board.to_markdown()  # no interval to show, nothing invented
    saved = load_results(board.to_json(tmp_path / "merged.json"))
    assert next(r for r in saved if r.model == "m").interval is None
    assert next(r for r in saved if r.model == "good").items is not None
