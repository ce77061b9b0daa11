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


# ------------------------------------------------------------------ one-line errors, before loading
@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a command gets as far as loading data or a model, or building anything."""
    import mpm_bench.cli as cli
    import mpm_bench.harness as harness

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("loaded data or a model before validating the arguments")

    for mod, name in [(cli, "load_emojicap"), (cli, "build_emojicap"), (cli, "_resolve_model"),
                      (harness, "export_lmms_eval"), (harness, "export_vlmevalkit"),
                      (harness, "import_lmms_eval"), (harness, "import_vlmevalkit")]:  # fmt: skip
        monkeypatch.setattr(mod, name, boom)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "ec"
    assert main(["data", "emojicap", "--size", "16", "--out", str(out), "--limit", "24", "--langs", "en,zh",
                 "--shard-size", "4", "--quiet"]) == 0  # fmt: skip
    return out


def _bad_cases(data: Path, tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "afile").write_text("x")
    busy = tmp / "busy"
    busy.mkdir(exist_ok=True)
    (busy / "x.txt").write_text("x")
    d, out = str(data), str(tmp / "r.json")
    run = ["run", "--data", d, "--out", out]
    return [
        ([*run, "--model", "my_pkg.adapters"], "--model must be 'random', 'oracle' or 'package.module:factory'"),
        ([*run, "--model", "random", "--model-args", "{bad"], "--model-args is not valid JSON"),
        ([*run, "--model", "random", "--model-args", "[1]"], "--model-args must be a JSON object"),
        ([*run, "--model", "random", "--tasks", "vqa"], "--tasks must be a comma-separated subset"),
        ([*run, "--model", "random", "--limit", "0"], "--limit must be >= 1"),
        ([*run, "--model", "random", "--limit", "ten"], "argument --limit: invalid int value: 'ten'"),
        ([*run, "--model", "random", "--num-candidates", "1"], "--num-candidates must be >= 2"),
        ([*run, "--model", "random", "--all-candidates", "1"], "--all-candidates gallery size must be >= 2"),
        ([*run, "--model", "random", "--langs", "en,xx"], "unknown language code 'xx'"),
        ([*run, "--model", "random", "--langs", "fr"], "not available in this dataset"),
        ([*run, "--model", "random", "--judge", "nope"], "--judge must be"),
        ([*run, "--model", "random", "--n-boot", "-1"], "--n-boot must be >= 0"),
        (["run", "--data", d, "--model", "random", "--out", str(tmp)], "is a folder; give a file path"),
        (["run", "--data", str(tmp / "nowhere"), "--model", "random", "--out", out], "is not a folder"),
        (["run", "--data", d, "--out", out], "the following arguments are required: --model"),
        (["data", "emojicap", "--out", str(tmp / "x"), "--size", "4"], "size must be between 8 and 1024"),
        (["data", "emojicap", "--out", str(tmp / "x"), "--limit", "0"], "--limit must be >= 1"),
        (["data", "emojicap", "--out", str(tmp / "afile")], "exists and is a file"),
        (["data", "emojicap", "--out", str(tmp / "x"), "--langs", "en,xx"], "unknown language code 'xx'"),
        (["board", str(tmp / "none.json"), "--out", str(tmp / "b")], "results file not found"),
        (["board", str(tmp / "afile"), "--out", str(tmp / "afile")], "exists and is a file"),
        (["export", "lmms", str(tmp / "e"), "--data", d], "invalid choice: 'lmms'"),
        (["export", "lmms-eval", str(tmp / "e"), "--data", d, "--num-candidates", "30"], "between 2 and 26"),
        (["export", "vlmevalkit", str(tmp / "e"), "--data", d, "--sets", ","], "--sets must name at least one"),
        (["export", "vlmevalkit", str(busy), "--data", d], "is not empty and holds no earlier export"),
        (["export", "lmms-eval", str(tmp / "e"), "--data", d, "--langs", "xx"], "unknown language code 'xx'"),
        (["import", "lmms-eval", str(tmp), "--export", str(tmp), "--name", "m", "--out", out], "holds no mpm_bench_export.json"),
        (["import", "vlmevalkit", str(tmp / "nope"), "--export", str(tmp), "--out", out], "holds no mpm_bench_export.json"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ]  # fmt: skip


def test_every_subcommand_validates_before_loading_and_fails_in_one_line(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_loading: None
) -> None:
    for argv, message in _bad_cases(tiny_data, tmp_path):
        with pytest.raises(SystemExit) as exc:  # argparse errors exit; ours return 2
            raise SystemExit(main(argv))
        err = capsys.readouterr().err
        assert exc.value.code == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1, (argv, err)
        assert message in err, (argv, err)
        assert err.startswith("mpm-bench"), err


def test_import_needs_a_name_for_lmms_eval(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "lmms"
    assert main(["export", "lmms-eval", str(export), "--data", str(tiny_data), "--sets", "train", "--langs", "en",
                 "--num-candidates", "4", "--all-candidates", "none"]) == 0  # fmt: skip
    capsys.readouterr()
    assert (
        main(
            ["import", "lmms-eval", str(tmp_path), "--export", str(export), "--out", str(tmp_path / "r.json")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--name is required" in err and len(err.strip().splitlines()) == 1


def test_a_corrupt_or_truncated_shard_is_named_in_one_line(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil
    import tarfile

    manifest = json.loads((tiny_data / "manifest.json").read_text())
    shard = manifest["styles"]["openmoji"]["splits"]["train"]["shards"][1]
    for how in ("garbage", "cut"):
        copy = tmp_path / how
        shutil.copytree(tiny_data, copy)
        raw = bytearray((copy / shard).read_bytes())
        if how == "garbage":  # overwrite the middle of the shard: a PNG that cannot decode
            raw[1500:2500] = b"\x00" * 1000
        else:  # cut at the header of the third member: tarfile silently stops there
            with tarfile.open(copy / shard) as tar:
                raw = raw[: tar.getmembers()[2].offset]
        (copy / shard).write_bytes(bytes(raw))
        code = main(["run", "--data", str(copy), "--split", "train", "--model", "random", "--tasks", "retrieval",
                     "--out", str(tmp_path / f"{how}.json")])  # fmt: skip
        cap = capsys.readouterr()
        err = cap.err
        assert code == 2 and len(err.strip().splitlines()) == 1, (how, cap.out[:300], err)
        assert shard in err and "rebuild with `mpm-bench data emojicap" in err, err


def test_export_import_board_from_the_command_line(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """export vlmevalkit -> predictions (a model that always answers "A") -> import -> board with the
    random baseline run by mpm-bench itself."""
    import csv

    export = tmp_path / "vlm"
    common = ["--data", str(tiny_data), "--sets", "train", "--num-candidates", "4"]
    assert main(["export", "vlmevalkit", str(export), *common]) == 0
    assert main(["export", "lmms-eval", str(tmp_path / "lmms"), *common]) == 0
    assert "lmms-eval --include_path" in capsys.readouterr().out
    preds = tmp_path / "preds"
    preds.mkdir()
    for tsv in sorted(export.glob("*.tsv")):
        with tsv.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        with (preds / f"always-a_{tsv.stem}.tsv").open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t")
            header = [h for h in rows[0] if h != "image"] + ["prediction"]
            w.writerow(header)
            for r in rows:
                w.writerow([r[h] for h in header[:-1]] + ["A" if "A" in r else "a face"])
    assert (
        main(["import", "vlmevalkit", str(preds), "--export", str(export), "--out", str(tmp_path / "a.json")])
        == 0
    )
    assert main(["run", "--data", str(tiny_data), "--split", "train", "--model", "random", "--tasks",
                 "classification,captioning", "--num-candidates", "4", "--out", str(tmp_path / "r.json")]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["board", str(tmp_path / "a.json"), str(tmp_path / "r.json"), "--out", str(tmp_path / "board"),
                 "--no-plots"]) == 0  # fmt: skip
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    assert (
        "| acc@1 | always-a |" in md
        and "| bleu | always-a |" in md
        and "| acc_all@1 | random(seed=0) |" in md
    )


def test_mpm_bench_imports_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, mpm_bench, mpm_bench.cli, mpm_bench.harness, mpm_bench.stats, mpm_bench.leaderboard; "
            "bad = [m for m in ('torch', 'lmms_eval', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)
