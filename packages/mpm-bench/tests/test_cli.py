from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mpm_bench.cli import main


def test_data_run_board_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "ec"
    assert main(["data", "emojicap", "--size", "24", "--out", str(data), "--limit", "30", "--langs", "en,zh",
                 "--quiet"]) == 0  # fmt: skip
    assert "OpenMoji" in capsys.readouterr().out
    assert main(["data", "emojicap", "--size", "16", "--out", str(tmp_path / "nost"), "--limit", "10",
                 "--no-skin-tones", "--quiet"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "nost" / "manifest.json").read_text())["config"]["skin_tones"] is False
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["config"]["size"] == 24 and manifest["config"]["langs"] == ["en", "zh"]

    for model in ("random", "oracle"):
        code = main(["run", "--data", str(data), "--split", "train", "--model", model, "--tasks",
                     "classification,retrieval,t2i", "--num-candidates", "5", "--out", str(tmp_path / f"{model}.json")])  # fmt: skip
        assert code == 0
    out = capsys.readouterr().out
    assert "### retrieval" in out
    rows: list[dict[str, Any]] = json.loads((tmp_path / "oracle.json").read_text())["results"]
    assert {r["task"] for r in rows} == {"classification", "retrieval", "t2i"}
    assert all(r["value"] == 1.0 for r in rows if r["metric"] == "acc@1")

    board = tmp_path / "board"
    assert (
        main(["board", str(tmp_path / "random.json"), str(tmp_path / "oracle.json"), "--out", str(board)])
        == 0
    )
    assert (board / "leaderboard.html").is_file() and (board / "leaderboard.md").is_file()
    assert len(list((board / "plots").glob("*.png"))) > 4


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["board", str(tmp_path / "none.json"), "--out", str(tmp_path / "b")]) == 2
    assert "results file not found" in capsys.readouterr().err
    assert main(["run", "--data", str(tmp_path), "--model", "random", "--out", str(tmp_path / "r.json")]) == 2
    assert "no EmojiCap manifest" in capsys.readouterr().err
    assert main(["data", "emojicap", "--out", str(tmp_path / "x"), "--langs", "en,xx", "--quiet"]) == 2
    assert "unknown language code 'xx'" in capsys.readouterr().err
