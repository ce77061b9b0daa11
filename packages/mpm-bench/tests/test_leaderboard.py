from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mpm_bench import Leaderboard, Result, load_results, save_results


def _r(model: str, lang: str, value: float, *, metric: str = "acc@1", task: str = "classification",
       time: str = "2026-11-28T00:00:00+00:00", chash: str = "abc123abc123") -> Result:  # fmt: skip
    return Result(model=model, task=task, language=lang, metric=metric, value=value, n=10, config_hash=chash,
                  versions={"mpm-bench": "0.1"}, time=time, dataset="emojicap/test", config={"k": 1})  # fmt: skip


def test_results_json_round_trip_and_schema(tmp_path: Path) -> None:
    rows = [_r("m", "en", 0.5), _r("m", "zh", 0.25)]
    path = save_results(rows, tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["schema"] == "mpm-bench/results/v1"
    assert set(data["results"][0]) == {
        "model", "task", "language", "metric", "value", "n", "config_hash", "versions", "time", "dataset", "config",
    }  # fmt: skip
    assert load_results(path) == rows
    (tmp_path / "bad.json").write_text('{"results": []}')
    with pytest.raises(ValueError, match="is not a mpm-bench/results/v1 results file"):
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
    assert page.count("<tr>") == 1 + 3
    paths = board.write(tmp_path / "board")
    pngs = [p for k, p in paths.items() if k.startswith("plot:")]
    assert len(pngs) == 4  # (classification acc@1, captioning bleu) x (bars, transfer)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert load_results(paths["json"]) == board.results
    with pytest.raises(ValueError, match="empty leaderboard"):
        Leaderboard().write(tmp_path / "empty")
