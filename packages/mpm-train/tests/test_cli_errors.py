"""Issue 13, point 9: every bad ``mpm-train`` config gives one line naming the key's dotted path, exit 2.

Validation happens before the model is built: the factory here fails the test if it is called.
Before the fix, 30 of these 34 configs printed a full traceback (``steps = "ten"``: a TypeError; two
of the 30 use keys added since), 2 were accepted silently (``batch_size = true``, a misspelt
``[model]`` key) and 8 built the model before failing.
"""

from __future__ import annotations

from pathlib import Path

import _mpm_train_toy
import pytest

from mpm_train.cli import main

BASE = """output_dir = "{out}"
[model]
factory = "_mpm_train_toy:build_model"
collate = "_mpm_train_toy:collate"
[[stages]]
name = "align"
steps = 4
batch_size = 4
[[stages.data.sources]]
name = "en"
shards = ["{glob}"]
"""
STAGE = "batch_size = 4\n"  # stage-level keys go after this line
DATA = "[[stages.data.sources]]\n"  # data-level keys go in a [stages.data] table before this
SOURCE = 'shards = ["{glob}"]\n'  # source-level keys after this

# (id, (old, new) edits of BASE, the start of the expected message after "mpm-train: <file>: ")
CASES: list[tuple[str, list[tuple[str, str]], str]] = [
    ("steps-str", [("steps = 4", 'steps = "ten"')], "stages[0].steps: expected an integer, got 'ten' (str)"),
    ("steps-zero", [("steps = 4", "steps = 0")], "stages[0].steps: must be >= 1, got 0"),
    ("steps-float", [("steps = 4", "steps = 2.5")], "stages[0].steps: expected an integer, got 2.5"),
    ("steps-missing", [("steps = 4\n", "")], "stages[0].steps: required key is missing"),
    ("lr-str", [(STAGE, STAGE + 'lr = "fast"\n')], "stages[0].lr: expected a number, got 'fast'"),
    ("lr-negative", [(STAGE, STAGE + "lr = -1.0\n")], "stages[0].lr: must be > 0"),
    ("schedule", [(STAGE, STAGE + 'schedule = "exp"\n')], "stages[0].schedule: expected one of ['cosine'"),
    ("precision", [(STAGE, STAGE + 'precision = "fp8"\n')], "stages[0].precision: expected one of"),
    ("unknown-key", [(STAGE, STAGE + "learning_rate = 0.1\n")], "stages[0].learning_rate: unknown key"),
    ("typo-key", [(STAGE, STAGE + "step = 4\n")], "stages[0].step: unknown key (did you mean 'steps'?)"),
    ("batch-bool", [("batch_size = 4", "batch_size = true")], "stages[0].batch_size: expected an integer"),
    ("betas", [(STAGE, STAGE + "betas = [0.9]\n")], "stages[0].betas: expected a list of 2 values"),
    ("keep-last", [(STAGE, STAGE + "keep_last = 0\n")], "stages[0].keep_last: must be >= 1"),
    (
        "grad-norm",
        [(STAGE, STAGE + 'max_grad_norm = "none"\n')],
        "stages[0].max_grad_norm: expected a number",
    ),
    (
        "divergence",
        [(STAGE, STAGE + "divergence_factor = 0.5\n")],
        "stages[0].divergence_factor: must be > 1",
    ),
    ("lora-r", [(DATA, "[stages.lora]\nr = 0\n" + DATA)], "stages[0].lora.r: must be >= 1, got 0"),
    (
        "buffer",
        [(DATA, "[stages.data]\nshuffle_buffer = -1\n" + DATA)],
        "stages[0].data.shuffle_buffer: must be >= 0",
    ),
    (
        "budget",
        [(DATA, "[stages.data]\nmax_skip_fraction = 2\n" + DATA)],
        "stages[0].data.max_skip_fraction: must be",
    ),
    (
        "weight-str",
        [(SOURCE, SOURCE + 'weight = "heavy"\n')],
        "stages[0].data.sources[0].weight: expected a number",
    ),
    ("weight-zero", [(SOURCE, SOURCE + "weight = 0\n")], "stages[0].data.sources[0].weight: must be > 0"),
    ("shards-missing", [(SOURCE, "")], "stages[0].data.sources[0].shards: required key is missing"),
    ("shards-nomatch", [("{glob}", "{glob}.nothing")], "stages[0].data.sources[0].shards: shard pattern"),
    (
        "data-str",
        [(DATA + 'name = "en"\n' + SOURCE, 'data = "x"\n')],
        "stages[0].data: expected a DataConfig table",
    ),
    (
        "streams",
        [(DATA, "[stages.data]\nnum_streams = 3\n" + DATA)],
        "stages[0].batch_size: 4 is not divisible",
    ),
    (
        "init-from",
        [(STAGE, STAGE + 'init_from = "/nonexistent/w.safetensors"\n')],
        "stages[0].init_from: no weights",
    ),
    ("duplicate-stage", [("", "")], "stages[1].name: 'align' is already the name of stages[0]"),
    ("no-stages", [("<cut>", "")], "stages: missing"),
    ("no-output-dir", [('output_dir = "{out}"\n', "")], "output_dir: missing"),
    ("no-model", [("[model]", "[other]")], "model: missing"),
    ("model-key", [("[model]\n", '[model]\ncolate = "x:y"\n')], "model.colate: unknown key"),
    (
        "factory-form",
        [("_mpm_train_toy:build_model", "nomodule")],
        "model.factory: 'nomodule' is not of the form",
    ),
    (
        "factory-module",
        [("_mpm_train_toy:build_model", "no_such_mod:f")],
        "model.factory: cannot import module",
    ),
    (
        "factory-attr",
        [("_mpm_train_toy:build_model", "_mpm_train_toy:nope")],
        "model.factory: module '_mpm_train_toy'",
    ),
    (
        "kwargs",  # checked against the factory's signature (a class here) before calling it
        [("[model]\n", "[model]\nkwargs = {{ sizee = 1 }}\n"), ("toy:build_model", "toy:ToyCaptioner")],
        "model.kwargs: do not fit _mpm_train_toy:ToyCaptioner: got an unexpected keyword argument 'sizee'",
    ),
]


@pytest.fixture
def no_model_build(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(**kw: object) -> None:
        raise AssertionError("the model was built before the config was validated")

    monkeypatch.setattr(_mpm_train_toy, "build_model", boom)


@pytest.mark.parametrize(("edits", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_gives_one_line_and_exit_2(
    tmp_path: Path,
    shards: list[Path],
    capsys: pytest.CaptureFixture[str],
    no_model_build: None,
    edits: list[tuple[str, str]],
    expected: str,
) -> None:
    text = BASE
    for old, new in edits:
        if old == "":  # "duplicate-stage": the stage twice
            text = text + text[text.index("[[stages]]") :]
            continue
        if old == "<cut>":  # "no-stages": no [[stages]] table at all
            text = text[: text.index("[[stages]]")]
            continue
        assert old in text, old
        text = text.replace(old, new)
    cfg = tmp_path / "plan.toml"
    cfg.write_text(text.format(out=tmp_path / "out", glob=tmp_path / "data" / "en-*.tar"))
    code = main(["run", str(cfg), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"mpm-train: {cfg}: {expected}"), lines[0]
    assert not (tmp_path / "out").exists()  # nothing written


def test_bad_files_and_arguments_give_one_line(
    tmp_path: Path, shards: list[Path], capsys: pytest.CaptureFixture[str], no_model_build: None
) -> None:
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert capsys.readouterr().err.strip() == f"mpm-train: config file not found: {tmp_path / 'missing.toml'}"
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3\n")
    assert main(["run", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"mpm-train: {bad}: not valid TOML: ")
    ok = tmp_path / "ok.toml"
    ok.write_text(BASE.format(out=tmp_path / "out", glob=tmp_path / "data" / "en-*.tar"))
    assert main(["run", str(ok), "--stage", "nope"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "mpm-train: --stage: unknown stage(s) ['nope']; the plan has ['align']"
    )
