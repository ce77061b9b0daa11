from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _mpm_train_toy import make_shards

from mpm_train import list_checkpoints
from mpm_train.cli import main

PLAN = """
output_dir = "{out}"
[model]
factory = "_mpm_train_toy:build_model"
kwargs = {{ nan_at_call = {nan} }}
collate = "_mpm_train_toy:collate"
[[stages]]
name = "align"
steps = 4
batch_size = 4
checkpoint_every = 2
[[stages.data.sources]]
name = "en"
shards = ["{glob}"]
"""


def test_check_shards_reports_skips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_shards(tmp_path / "data", n=20, per_shard=8, corrupt={"image": [4], "json": [6]})
    assert main(["check-shards", str(tmp_path / "data" / "en-*.tar")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shards"] == 3 and report["samples"] == 18
    assert report["skipped"]["image_decode"] == 1 and report["skipped"]["json_decode"] == 1
    assert main(["check-shards", "--strict", str(tmp_path / "data" / "en-*.tar")]) == 1


def test_run_plan_and_nan_exit_code(
    tmp_path: Path, shards: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    glob_ = str(tmp_path / "data" / "en-*.tar")
    ok = tmp_path / "ok.toml"
    ok.write_text(PLAN.format(out=tmp_path / "ok", nan=10**9, glob=glob_))
    assert main(["run", str(ok), "--no-progress"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["stage"] == "align" and line["final_step"] == 4
    bad = tmp_path / "bad.toml"
    bad.write_text(PLAN.format(out=tmp_path / "bad", nan=3, glob=glob_))
    assert main(["run", str(bad), "--no-progress"]) == 2
    assert "stopped at step 3: loss is nan" in capsys.readouterr().err
    # the step-2 weights gave the NaN of step 3: they are moved aside, not offered for resuming
    assert list_checkpoints(tmp_path / "bad" / "align") == []
    assert (tmp_path / "bad" / "align" / "checkpoints" / "rejected" / "step_00000002").is_dir()
    assert main(["run", str(ok), "--stage", "nope"]) == 2
    assert "--stage: unknown stage(s) ['nope']" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "ok")
