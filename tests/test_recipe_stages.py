"""Recipe stages across packages: a SIGKILLed `mpm train` resumes to bit-identical weights; a VLM stage with
LoRA changes only the adapters and the bridge; swapping a part is one key=value."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("mpm")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mpm_bench import build_emojicap

    root = tmp_path_factory.mktemp("emojicap")
    build_emojicap(root, size=16, limit=40, progress=False)
    return root


def _weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    from mpm_train import StageResult, load_weights

    return load_weights(StageResult.load(stage_dir / "result.json").weights)


@pytest.fixture
def one_thread() -> Any:
    """Bit-identical needs the same float reduction order in every process: one thread here as in the child."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_killed_mpm_train_resumes_to_bit_identical_weights(
    tmp_path: Path, data_root: Path, one_thread: Any
) -> None:
    from mpm.cli import main
    from mpm_train import list_checkpoints

    keys = [
        f"data.root={data_root}",
        "run.progress=false",
        "stages.paint.enabled=false",
        "stages.instruct.steps=40",
        "stages.instruct.checkpoint_every=1",
        "stages.instruct.keep_last=2",
    ]
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "mpm.cli", "train", "smoke", f"run.out_dir={killed}", *keys],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    instruct = killed / "stages" / "instruct"
    try:
        deadline = time.monotonic() + 300
        while not any(step >= 2 for step, _ in list_checkpoints(instruct)):
            assert child.poll() is None, child.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "the child never reached step 2 of the instruct stage"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    written = [s for s, _ in list_checkpoints(instruct)]
    assert written and max(written) < 40 and not (instruct / "result.json").exists()  # killed mid-stage
    assert (killed / "stages" / "align" / "result.json").is_file()  # ... after stage 1 had finished

    assert main(["train", "smoke", f"run.out_dir={killed}", *keys]) == 0  # the same command resumes
    from mpm_train import StageResult

    assert StageResult.load(instruct / "result.json").resumed_from == max(written)
    assert main(["train", "smoke", f"run.out_dir={tmp_path / 'ref'}", *keys]) == 0  # uninterrupted
    for stage in ("align", "instruct"):
        got, ref = _weights(killed / "stages" / stage), _weights(tmp_path / "ref" / "stages" / stage)
        assert got.keys() == ref.keys() and any("lora_" in k for k in got) == (stage == "instruct")
        for name in ref:
            assert torch.equal(got[name], ref[name]), f"{stage}: {name}"


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("how", ["policy", "preset"])
def test_a_vlm_lora_stage_changes_only_the_adapters_and_the_bridge(
    tmp_path: Path, data_root: Path, how: str
) -> None:
    """`trainable = {bridge = true, lm = "lora"}` (and the preset stage "instruct" with a lora spec, where the
    old code unfroze the whole LM): the encoder and every LM weight stay bit-identical."""
    pytest.importorskip("peft")
    from mpm.builders import build_lm, build_stage, build_vlm
    from mpm.config import load_config
    from mpm.data import VLMCollate
    from mpm_train import LoraSpec, run_stage

    keys = [f"run.out_dir={tmp_path}", f"data.root={data_root}", "stages.instruct.steps=2"]
    if how == "preset":  # the preset trains the encoder unless it is frozen
        keys += ["model.encoder.frozen=true", "stages.align.trainable.encoder=false"]
    cfg = load_config("smoke", keys)
    lm, tok = build_lm(cfg.model.lm)
    vlm = build_vlm(cfg.model, lm, tok)
    stage = build_stage("instruct", cfg.stages["instruct"], cfg)
    if how == "preset":  # no policy: the stage name picks VisionLanguageModel.stage_parameters("instruct")
        stage = stage.replace(
            trainable={}, part_lr={}, lora=LoraSpec(r=2, alpha=4, target_modules=("q_proj", "v_proj"))
        )
    before = _params(vlm)
    run_stage(
        vlm,
        stage,
        collate_fn=VLMCollate(vlm, prompt=cfg.model.prompt),
        output_dir=tmp_path / how,
        progress=False,
    )
    after = _params(vlm)
    adapters = {n for n in after if "lora_" in n}
    assert adapters and all(n.startswith("language_model.") for n in adapters)
    # peft wraps each target in a LoRA layer: its original weight is now "<target>.base_layer.weight"
    original = {n: n.replace(".base_layer.", ".") for n in after if n not in adapters}
    assert set(original.values()) == set(before)
    changed = {n for n, o in original.items() if not torch.equal(before[o], after[n])}
    assert changed and all(n.startswith("bridge.") for n in changed), changed - {
        n for n in changed if n.startswith("bridge.")
    }
    assert any(not torch.equal(after[n], torch.zeros_like(after[n])) for n in adapters if "lora_B" in n)


def test_swapping_a_part_is_one_key_value(tmp_path: Path, data_root: Path) -> None:
    """model.bridge.kind=perceiver model.bridge.num_queries=16, stages.align.trainable.encoder=false,
    stages.instruct.lr.bridge=1e-4: each lands in the trained run."""
    import json

    from mpm.cli import main

    out = tmp_path / "swapped"
    args = [
        "train",
        "smoke",
        f"run.out_dir={out}",
        f"data.root={data_root}",
        "run.progress=false",
        "stages.paint.enabled=false",
        "model.bridge.kind=perceiver",
        "model.bridge.num_queries=16",
        "stages.align.trainable.encoder=false",
        "stages.instruct.lr.bridge=1e-4",
    ]
    assert main(args) == 0
    align = _weights(out / "stages" / "align")
    assert {n.split(".")[0] for n in align} == {"bridge"}  # the encoder did not train
    assert align["bridge.latents"].shape[0] == 16  # a perceiver with 16 latents
    ckpt = sorted((out / "stages" / "instruct" / "checkpoints").iterdir())[-1]
    groups = json.loads((ckpt / "optimizer.json").read_text())["param_groups"]
    lrs = {(g["part"], g["initial_lr"]) for g in groups}
    assert lrs == {("bridge", 1e-4), ("lm", 5e-4)}  # per-part learning rates are optimizer groups

    default = tmp_path / "default"
    assert (
        main(
            [
                "train",
                "smoke",
                f"run.out_dir={default}",
                f"data.root={data_root}",
                "run.progress=false",
                "stages.paint.enabled=false",
            ]
        )
        == 0
    )
    assert any(n.startswith("encoder.") for n in _weights(default / "stages" / "align"))  # trained there


def test_write_answers_is_item_by_item_and_refuses_a_short_list(tmp_path: Path) -> None:
    import json

    from PIL import Image

    from mpm.generative import write_answers
    from mpm_bench import Example

    items = [Example(k, Image.new("RGB", (4, 4)), {"en": n, "zh": z}) for k, n, z in (("1F436", "dog", "狗"), ("1F431", "cat", "猫"))]  # fmt: skip
    path = write_answers(
        tmp_path / "answers.json", items, ["en", "zh"], {"m": {"en": ["dog", ""], "zh": ["dog", "猫"]}}
    )
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["prompts"]["zh"] == "这个表情符号叫什么？" and [i["key"] for i in doc["items"]] == [
        "1F436",
        "1F431",
    ]
    assert doc["items"][1] == {
        "key": "1F431",
        "names": {"en": "cat", "zh": "猫"},
        "answers": {"m": {"en": "", "zh": "猫"}},
    }
    with pytest.raises(ValueError, match="answers of 'm' in 'zh': 1 for 2 items"):
        write_answers(tmp_path / "bad.json", items, ["en", "zh"], {"m": {"zh": ["狗"]}})
    assert not (tmp_path / "bad.json").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "answers.json"
    ]
