"""Recipe configs: presets, base files, key=value overrides, strict errors with dotted paths, round trips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mpm.config import (
    ConfigError,
    RecipeConfig,
    StageSpec,
    apply_overrides,
    configs_dir,
    load_config,
    presets,
    read_config_file,
)


def test_presets_and_variants_exist_and_load() -> None:
    names = presets()
    assert {"smoke", "default", "full", "smollm2", "no-translation", "calibrated"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.stages_of("vlm"), name
    # a variant states only what differs, through `base`
    for variant in ("smoke", "full", "smollm2", "no-translation", "calibrated"):
        text = (configs_dir() / f"{variant}.toml").read_text()
        assert 'base = "default"' in text, variant
        assert "[model.encoder]" not in text or variant in ("smoke", "full")
    smollm2 = load_config("smollm2")
    assert smollm2.model == load_config("default").model
    assert smollm2.ablation("smollm2").model.lm.name == "smollm2-135m"
    assert smollm2.ablation("smollm2").run.out_dir == "outputs/demo-smollm2/ablations/smollm2"
    assert list(smollm2.ablation("smollm2").stages_of("vlm")) == ["align", "instruct"]
    assert not load_config("default").ablation("smollm2").stages_of("vlm")  # stage 1a only
    assert smollm2.ablation("smollm2").data_root == smollm2.data_root  # the same data
    assert not smollm2.ablation("smollm2").stages["paint"].enabled
    zero = load_config("no-translation").stages["instruct"].mix
    assert [(m.kind, m.langs) for m in zero] == [("instructions", ("en",))]
    # `calibrated` is the default with both stage-2 branches at 60 x 16: nothing else differs
    calibrated, default = load_config("calibrated"), load_config("default")
    for branch in ("instruct", "instruct_en"):
        st = calibrated.stages[branch]
        assert (st.train["steps"], st.train["batch_size"]) == (60, 16), branch
        assert st.mix == default.stages[branch].mix and st.lr == default.stages[branch].lr, branch
    same = calibrated.to_dict()
    ref = default.to_dict()
    for d in (same, ref):
        d["run"].pop("out_dir")
        for branch in ("instruct", "instruct_en"):
            d["stages"][branch].pop("steps")
            d["stages"][branch].pop("batch_size")
    assert same == ref


def test_default_instruct_stage_holds_a_translated_share() -> None:
    cfg = load_config("default")
    mix = cfg.stages["instruct"].mix
    translated = sum(m.weight for m in mix if m.langs != ("en",))
    assert translated == pytest.approx(0.05) and sum(m.weight for m in mix) == pytest.approx(1.0)
    assert list(cfg.stages) == ["align", "instruct", "instruct_en", "paint"]
    zero = cfg.stages["instruct_en"]  # the 0 % variant: a branch sharing stage 1b
    assert zero.start_from == "align" and [m.langs for m in zero.mix] == [("en",)]


@pytest.mark.parametrize("name", ["smoke", "default", "full", "smollm2"])
def test_toml_and_json_round_trips_are_equal(tmp_path: Path, name: str) -> None:
    cfg = load_config(name).resolved()
    assert load_config(cfg.save(tmp_path / "config.toml")) == cfg  # the run's config.toml reproduces it
    assert RecipeConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert hash(cfg) == hash(load_config(tmp_path / "config.toml"))


def test_none_round_trips_through_toml(tmp_path: Path) -> None:
    cfg = load_config("smoke", ["model.encoder.image_size=none", "stages.align.max_grad_norm=none"])
    assert cfg.model.encoder.image_size is None and cfg.stages["align"].train["max_grad_norm"] is None
    assert load_config(cfg.save(tmp_path / "c.toml")) == cfg


def test_overrides_are_read_as_the_fields_type() -> None:
    cfg = load_config(
        "smoke",
        [
            "model.bridge.kind=perceiver",
            "model.bridge.num_queries=16",
            "stages.align.trainable.encoder=false",
            "stages.instruct.lr.bridge=1e-4",
            "run.langs=en,ja",
            "model.lm.name=tiny:gpt2",
            "stages.instruct.mix.1.weight=0.5",
            "stages.instruct.mix.1.langs=ja",
            "model.encoder.options.depth=2",
            "stages.paint.enabled=false",
        ],
    )
    assert cfg.model.bridge.kind == "perceiver" and cfg.model.bridge.num_queries == 16
    assert cfg.stages["align"].trainable == {"encoder": False, "bridge": True, "lm": False}
    assert cfg.stages["instruct"].lr == {"default": 5e-4, "bridge": 1e-4}
    assert cfg.run.langs == ("en", "ja") and cfg.model.lm.name == "tiny:gpt2"
    assert cfg.stages["instruct"].mix[1].weight == 0.5 and cfg.stages["instruct"].mix[1].langs == ("ja",)
    assert cfg.model.encoder.options["depth"] == 2 and not cfg.stages_of("paint")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.bridge.knd=query"], r"^model\.bridge\.knd: unknown key"),
        (["stages.align.steps=ten"], r"^stages\.align\.steps: expected an integer, got 'ten'"),
        (["stages.align.batch_size=2.5"], r"^stages\.align\.batch_size: expected an integer"),
        (
            ["stages.align.trainable.unet=true"],
            r"^stages\.align\.trainable\.unet: a vlm stage has no part 'unet'",
        ),
        (
            ["stages.align.trainable.encoder=maybe("],
            r"^stages\.align\.trainable\.encoder: 'maybe\(' is not a valid regular expression",
        ),
        (["stages.align.lr.unet=1e-3"], r"^stages\.align\.lr\.unet: not a part of a vlm stage"),
        (["stages.align.lr.lm=1e-3"], r"^stages\.align\.lr\.lm: the part does not train"),
        (["stages.align.lr=1e-3"], r"^stages\.align\.lr: expected a table, got 0\.001"),
        (["stages.align.schedule=exp"], r"^stages\.align\.schedule: expected one of 'cosine'"),
        (
            ["stages.extra.steps=3"],
            r"^stages\.extra: no such stage \(stages are align, instruct, instruct_en, paint",
        ),
        (
            ["stages.align.mix.0.kind=captions"],
            r"^stages\.align\.mix\.0\.kind: 'captions' is not a vlm source",
        ),
        (
            ["stages.paint.mix.0.kind=instructions"],
            r"^stages\.paint\.mix\.0\.kind: 'instructions' is not a paint",
        ),
        (
            ["stages.align.mix.0.langs=en,xx"],
            r"^stages\.align\.mix\.0\.langs: unknown language\(s\) \['xx'\]",
        ),
        (["run.langs=en,xx"], r"^run\.langs: unknown language\(s\) \['xx'\]"),
        (["paint.conditioning.space=chosen"], r"^paint\.conditioning\.space: 'chosen' is not fixed or pivot"),
        (["run.seed=1.5"], r"^run\.seed: expected an integer, got 1\.5"),
        (["eval.judge_lang=ja"], r"^eval\.judge_lang: 'ja' is not one of run\.langs"),
        (["model.encoder.frozen=true"], r"^stages\.align\.trainable\.encoder: model\.encoder\.frozen = true"),
        (["model.prompt=What?"], r"^model\.prompt: must hold the image token"),
        (["stages.align.name=x"], r"^stages\.align\.name: unknown key \(mpm_train\.StageConfig sets 'name'"),
        (["stages.align.lora.rank=4"], r"^stages\.align\.lora\.rank: unknown key"),
        (["ablations.x.model.lm.nme=a"], r"^ablations\.x\.model\.lm\.nme: unknown key"),
        (
            ["data.styles=openmoji", "stages.align.mix.0.style=twemoji"],
            r"^stages\.align\.mix\.0\.style: 'twemoji' is not one of data\.styles",
        ),
        (
            ["data.styles=openmoji,klingon"],
            r"^data\.styles: give distinct styles among openmoji, twemoji, noto",
        ),
        (["data.styles=openmoji", "eval.style=noto"], r"^eval\.style: 'noto' is not one of data\.styles"),
        (["nothing"], r"expected key=value"),
    ],
)
def test_bad_keys_and_values_name_the_dotted_path(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("smoke", overrides)


def test_bad_files_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('base = "b.toml"\n[run]\nseed = 1\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\n')
    with pytest.raises(ConfigError, match="base files form a cycle"):
        load_config(tmp_path / "a.toml")
    (tmp_path / "c.toml").write_text('base = "default"\n[run]\nseed = 3\nlangs = "en"\n')
    with pytest.raises(ConfigError, match=r"run\.langs: expected a list, got 'en'"):
        load_config(tmp_path / "c.toml")
    (tmp_path / "d.toml").write_text("[run\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "d.toml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "e.toml").write_text('base = "default"\n[stages.align]\nsteps = 0\n')
    with pytest.raises(ConfigError, match=r"^stages\.align\.steps: must be >= 1, got 0"):
        load_config(tmp_path / "e.toml")


def test_a_variant_merges_tables_over_its_base(tmp_path: Path) -> None:
    (tmp_path / "v.toml").write_text(
        'base = "smoke"\n[model.bridge]\nkind = "mlp"\n[stages.instruct.lr]\nbridge = 2e-3\n'
        '[stages.second-align]\nmodel = "vlm"\nsteps = 2\ntrainable = { bridge = true }\n'
        'mix = [{ kind = "names", langs = ["de"] }]\n'
    )
    raw = read_config_file(tmp_path / "v.toml")
    assert raw["model"]["bridge"] == {"kind": "mlp", "num_queries": 3}  # num_queries kept from smoke
    cfg = load_config(tmp_path / "v.toml")
    assert cfg.stages["instruct"].lr == {"default": 5e-4, "bridge": 2e-3}
    assert list(cfg.stages_of("vlm")) == [
        "align",
        "instruct",
        "instruct_en",
        "second-align",
    ]  # any number, any name


def test_apply_overrides_does_not_touch_its_input() -> None:
    raw = read_config_file("smoke")
    before = json.dumps(raw, sort_keys=True)
    apply_overrides(raw, ["model.bridge.kind=mlp", "stages.instruct.mix.0.weight=0.1"])
    assert json.dumps(raw, sort_keys=True) == before


def test_stage_training_keys_pass_to_mpm_train(tmp_path: Path) -> None:
    from mpm.builders import build_plan

    cfg = load_config("smoke", [f"run.out_dir={tmp_path}", "stages.instruct.warmup_steps=0"])
    plan = build_plan(cfg, "vlm")
    align, instruct = plan.stages
    assert align.name == "align" and align.steps == 3 and align.warmup_steps == 1 and align.seed == 0
    assert instruct.warmup_steps == 0 and instruct.part_lr == {"bridge": 1e-3} and instruct.lr == 5e-4
    assert instruct.trainable == {"encoder": False, "bridge": True, "lm": "lora"}
    assert instruct.lora is not None and instruct.lora.r == 2
    sources = {s.name: s.weight for s in instruct.data.sources}
    assert sources == {"instructions/en": 0.8, "instructions/zh": 0.2}
    assert all(
        s.shards == (str(tmp_path / "emojicap" / "emojicap-openmoji-train-*.tar"),)
        for s in instruct.data.sources
    )
    spec: Any = cfg.stages["align"]
    assert isinstance(spec, StageSpec) and "steps" in spec.to_dict() and "train" not in spec.to_dict()
