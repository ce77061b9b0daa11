"""End to end across all five packages: `mpm demo --preset smoke` (tiny models, real EmojiCap), then the
trained run used by `mpm chat`, `mpm paint`, `mpm eval`, resumed, refused when a finished stage changed."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mpm")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `mpm demo --preset smoke` run for the whole module (the chain the suite must run in seconds)."""
    import torch

    from mpm.cli import main

    out = tmp_path_factory.mktemp("smoke") / "run"
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    rc = main(["demo", "--preset", "smoke", f"run.out_dir={out}", "run.progress=false"])
    elapsed = time.perf_counter() - t0
    torch.set_num_threads(threads)
    assert rc == 0
    print(f"\nmpm demo --preset smoke: {elapsed:.1f} s")
    return {"out": out, "elapsed": elapsed}


def _result(out: Path, stage: str) -> dict[str, Any]:
    return json.loads((out / "stages" / stage / "result.json").read_text())


def test_smoke_preset_runs_the_whole_chain(smoke: dict[str, Any]) -> None:
    out: Path = smoke["out"]
    # stage 1, stage 2 (whose mixture holds a translated share), paint
    for stage, steps in (("align", 3), ("instruct", 3), ("paint", 2)):
        assert _result(out, stage)["final_step"] == steps
    instruct = _result(out, "instruct")
    by_source = instruct["data"]["samples_by_source"]
    assert set(by_source) == {"instructions/en", "instructions/zh"} and by_source["instructions/zh"] > 0
    assert instruct["fingerprint"]["stage"]["trainable"] == {"encoder": False, "bridge": True, "lm": "lora"}
    # eval and board
    results = json.loads((out / "board" / "results.json").read_text())
    rows = results["results"] if isinstance(results, dict) else results
    tasks = {(r["model"], r["task"]) for r in rows}
    assert {
        ("mpm-tiny-llama", "classification"),
        ("mpm-tiny-llama", "captioning"),
        ("mpm-tiny-llama", "t2i"),
    } <= tasks
    assert ("random", "classification") in tasks
    assert {r["language"] for r in rows if r["task"] == "classification"} == {"en", "zh", "de"}
    assert (out / "board" / "leaderboard.md").is_file() and (out / "paint-grid.png").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["alignment_en_to_x_p1"]["mpm-tiny-llama"]) == {"zh", "de"}
    # what each model said to each fidelity question, beside the reference name; the oracle says it
    answers = json.loads((out / "answers.json").read_text(encoding="utf-8"))
    assert answers["format"] == "mpm-answers" and answers["items"]
    first = answers["items"][0]
    assert {"mpm-tiny-llama", "oracle"} <= set(first["answers"])
    for item in answers["items"]:
        assert item["answers"]["oracle"] == {lang: item["names"][lang] for lang in item["answers"]["oracle"]}
    fidelity_n = {r["n"] for r in rows if r["task"] == "captioning" and r["model"] == "mpm-tiny-llama"}
    assert fidelity_n == {len(answers["items"])}
    # the resolved config is in the run, and loading it gives the same config back
    from mpm.config import load_config

    stored = load_config(out / "config.toml")
    assert stored.run.out_dir == str(out) and stored.data.root == str(out / "emojicap")
    assert stored == load_config("smoke", [f"run.out_dir={out}", "run.progress=false"]).resolved()


def test_paint_conditions_on_the_chosen_pivot_space(smoke: dict[str, Any]) -> None:
    """``paint.conditioning.space = "pivot"``: paint trains on stage 1a's space and cache, and the stage's
    fingerprint holds what the space is chosen from, not the layer filled in at run time."""
    from mpm.contrastive import PivotStates
    from mpm.recipe import load_run

    out: Path = smoke["out"]
    space = json.loads((out / "alignment.json").read_text(encoding="utf-8"))["space"]
    run = load_run(out, need=("paint",))
    c = run.config.paint.conditioning
    assert c.space == "pivot" and (c.template, c.pooling, c.layer) == (
        space["template"],
        space["pooling"],
        space["layer"],
    )
    assert isinstance(run.paint_states, PivotStates) and run.paint_states.space.layer == space["layer"]
    names = run.paint_states.encode(["dog"])
    assert names.shape[0] == 1 and "dog" in run.paint_states  # stored in the shared cache
    context = _result(out, "paint")["fingerprint"]["context"]
    assert "align" in context and "layer" not in context["paint"]["conditioning"]


def test_rerunning_resumes_and_a_changed_finished_stage_is_refused(
    smoke: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from mpm.cli import main

    out: Path = smoke["out"]
    before = {s: _result(out, s) for s in ("align", "instruct", "paint")}
    args = ["train", "smoke", f"run.out_dir={out}", "run.progress=false"]
    assert main(args) == 0
    assert "finished earlier" in capsys.readouterr().out
    assert {s: _result(out, s) for s in before} == before  # nothing was trained again
    assert main([*args, "stages.instruct.lr.bridge=1e-4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "stages.instruct (stage.part_lr.bridge)" in err and "--fresh" in err
    assert main([*args, "stages.align.steps=4"]) == 2
    err = capsys.readouterr().err
    assert "stages.align (stage.steps)" in err and "stages.instruct (upstream)" in err
    assert {s: _result(out, s) for s in before} == before  # the refused run wrote nothing


def test_chat_one_shot_and_interactive(
    smoke: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mpm.cli import main

    out: Path = smoke["out"]
    img = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(img)
    assert (
        main(["chat", str(out), "--image", str(img), "--question", "这是什么？", "--max-new-tokens", "4"])
        == 0
    )
    one_shot = capsys.readouterr().out
    assert one_shot.strip()  # the streamed answer
    session = f"/image {img}\nWhat is this?\nQu'est-ce que c'est ?\n/image {tmp_path / 'missing.png'}\n/reset\nWas ist das?\n/quit\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(session))
    assert main(["chat", str(out), "--max-new-tokens", "3"]) == 0
    text = capsys.readouterr().out
    assert "attached to the next question" in text and "does not exist" in text and "history cleared" in text
    assert text.count("> ") >= 6

    from mpm.commands import chat_session
    from mpm.recipe import load_run

    run = load_run(out)
    buf = io.StringIO()
    answers = chat_session(
        run.vlm, ["red apple?", "和中文？"], out=buf, images=[Image.open(img)], max_new_tokens=3
    )
    assert len(answers) == 2 and buf.getvalue().count("\n") >= 2  # two turns, streamed


def test_paint_writes_an_image(
    smoke: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mpm.cli import main

    target = tmp_path / "apple.png"
    assert (
        main(
            [
                "paint",
                str(smoke["out"]),
                "pomme rouge",
                "-o",
                str(target),
                "--steps",
                "2",
                "--num-images",
                "2",
            ]
        )
        == 0
    )
    assert Image.open(target).size == (32, 16)
    assert "pomme rouge" in capsys.readouterr().out


def test_eval_rewrites_the_board(smoke: dict[str, Any]) -> None:
    from mpm.cli import main

    out: Path = smoke["out"]
    board = out / "board" / "results.json"
    board.unlink()
    assert main(["eval", str(out), "eval.caption=false", "eval.paint_items=0"]) == 0
    rows = json.loads(board.read_text())
    rows = rows["results"] if isinstance(rows, dict) else rows
    assert {r["task"] for r in rows} == {"classification"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["chat", "{out}", "--image", "{missing}"], "image '{missing}' does not exist"),
        (["chat", "{tmp}/nowhere"], "run directory {tmp}/nowhere does not exist"),
        (["chat", "{tmp}"], "is not a run directory: no config.toml"),
        (["paint", "{out}", "x", "-o", "{tmp}/x.txt"], "use an image file name"),
        (["paint", "{out}", " ", "-o", "{tmp}/x.png"], "the prompt is empty"),
        (["paint", "{out}", "x", "-o", "{tmp}/no/dir/x.png"], "does not exist"),
        (
            ["paint", "{out}", "x", "-o", "{tmp}/x.png", "--guidance", "nan"],
            "--guidance must be a finite number",
        ),
        (["eval", "{tmp}/nowhere"], "does not exist"),
        (["demo", "--preset", "smoke", "--config", "x.toml"], "give one config"),
        (["train", "smoke", "stages.align.stepz=3"], "stages.align.stepz: unknown key"),
    ],
)
def test_cli_errors_are_one_line_before_any_model_loads(
    smoke: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    from mpm.cli import main

    fill = {"out": str(smoke["out"]), "tmp": str(tmp_path), "missing": str(tmp_path / "missing.png")}
    assert main([a.format(**fill) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.format(**fill) in err, err


def test_a_run_without_paint_is_refused_by_mpm_paint(
    smoke: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mpm.cli import main

    out = tmp_path / "chat-only"
    data = smoke["out"] / "emojicap"
    base = ["train", "smoke", f"run.out_dir={out}", f"data.root={data}", "run.progress=false"]
    assert main([*base, "stages.paint.enabled=false", "stages.instruct.enabled=false"]) == 0
    assert main(["paint", str(out), "x", "-o", str(tmp_path / "x.png")]) == 2
    assert "this run has no paint model" in capsys.readouterr().err


def test_bad_languages_fail_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mpm demo --langs en,xx` used to fail after 20 s of work; now before anything is written."""
    from mpm.cli import main

    t0 = time.perf_counter()
    assert main(["demo", "--langs", "en,xx", "--out", str(tmp_path / "run")]) == 2
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "run.langs: unknown language(s) ['xx']" in err
    assert not (tmp_path / "run").exists()


def test_an_empty_evaluation_split_fails_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mpm demo --limit 10` used to train, then crash on the empty test split."""
    from mpm.cli import main

    out = tmp_path / "run"
    assert main(["demo", "--preset", "smoke", "--limit", "10", "--out", str(out), "run.progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.splitlines() == [err]
        and "eval.split: EmojiCap split 'test' (openmoji) holds" in err
        and "raise data.limit" in err
    )
    assert (out / "emojicap" / "manifest.json").is_file()  # the data was built ...
    assert not (out / "stages").exists() and not (out / "alignment.json").exists()  # ... no model was
