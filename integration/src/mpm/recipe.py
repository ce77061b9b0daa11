"""The MPM recipe, top to bottom: config -> data -> builders -> stages -> evaluation -> board.

    cfg = load_config("default", ["stages.align.steps=200"])   # mpm.config: TOML + key=value
    result = run_recipe(cfg)                                   # what `mpm demo` runs

1. **Run directory** (:func:`start_run`): ``<run.out_dir>/config.toml`` is the resolved config (pass it
   back with ``--config`` to reproduce the run). Runs are never deleted: re-running a config resumes
   it; a finished stage whose config changed is refused, naming the changed keys, before any work.
2. **Data** (:func:`build_data`): EmojiCap shards (mpm-bench), re-used when their settings match.
3. **Pivot** (:func:`measure_alignment`): how close the LM puts each language's emoji names to English.
4. **Stages** (:func:`train`): builders make the chat model (and the paint model); mpm-train runs each
   model's stages in order (``<run>/stages/<name>``), each starting from the previous one's weights,
   each with its per-part policy and learning rates, and resumes exactly where a run stopped.
5. **Evaluation** (:func:`evaluate`): zero-shot classification, captioning and text-to-image in every
   language through mpm-bench's protocols (thin adapters in ``mpm.adapters``).
6. **Board** (:func:`write_board`): leaderboard (JSON, Markdown, HTML, PNG), transfer ratios next to
   the pivot's alignment, ablations on the same board.

A trained run directory is used by :func:`load_run` (``mpm chat``, ``mpm paint``, ``mpm eval``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpm.builders import (
    build_lm,
    build_paint,
    build_plan,
    build_vlm,
    check_buildable,
    paint_pipeline,
    paint_resolution,
    plan_context,
    separate_lm,
)
from mpm.config import ConfigError, RecipeConfig, load_config
from mpm.data import VLMCollate

__all__ = [
    "RecipeResult",
    "TrainedRun",
    "build_data",
    "check_splits",
    "evaluate",
    "load_run",
    "measure_alignment",
    "run_recipe",
    "start_run",
    "train",
    "write_board",
]

CONFIG_FILE = "config.toml"
STAGES_DIR = "stages"
_T0 = time.perf_counter()


def say(msg: str) -> None:
    """One progress line, with the seconds since the process started."""
    print(f"[mpm {time.perf_counter() - _T0:6.0f}s] {msg}", flush=True)


@dataclass
class TrainedRun:
    """A run's models, trained (:func:`train`) or restored from its directory (:func:`load_run`)."""

    config: RecipeConfig
    out_dir: Path
    lm: Any
    tokenizer: Any
    vlm: Any | None = None
    paint: Any | None = None
    paint_states: Any | None = None
    """``texts -> [N, D]`` pivot states the paint model is conditioned on (``mpm.painting.PivotStates``)."""
    stage_results: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    """The ablation's name (``None`` for the run itself)."""
    branches: dict[str, Any] = field(default_factory=dict)
    """``{branch stage: chat weights}`` of the branch stages (``stages.*.start_from``)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds of the chat model's warm start, stages and evaluation (what ran in this process)."""

    @property
    def label(self) -> str:
        """The name of this run's model on the board: ``mpm-<ablation>`` or ``mpm-<LM name>``."""
        return _label(self.name, self.config)

    def pipeline(self) -> Any:
        """The sampling pipeline of the paint model (with pivot states: call it with ``prompt_embeds``)."""
        if self.paint is None:
            raise ValueError(f"{self.out_dir}: this run has no paint model")
        return paint_pipeline(self.paint, self.config.paint)

    def paint_prompts(
        self, prompts: list[str], *, num_inference_steps: int, guidance_scale: float, seed: int = 0
    ) -> list[Any]:
        """PIL paintings of ``prompts`` (names in any language) at the paint resolution."""
        from mpm.painting import recipe_painter

        painter = recipe_painter(self, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        return list(painter.paint(prompts, "", seed))


@dataclass
class RecipeResult:
    """What :func:`run_recipe` produced."""

    out_dir: Path
    results: list[Any]
    alignment: dict[str, dict[str, float]]
    transfer: dict[str, dict[str, float]]
    files: dict[str, Path] = field(default_factory=dict)
    elapsed_s: float = 0.0


def _label(name: str | None, cfg: RecipeConfig) -> str:
    return "mpm-" + (name or cfg.model.lm.name.removeprefix("zoo:").replace("tiny:", "tiny-"))


def _runs(cfg: RecipeConfig) -> list[tuple[str | None, RecipeConfig]]:
    """The run itself and its ablations: ``[(None, cfg), ("smollm2", ablation cfg), ...]``."""
    return [(None, cfg)] + [(name, cfg.ablation(name)) for name in cfg.ablations]


# ------------------------------------------------------------------------------------------------
# 1. the run directory
# ------------------------------------------------------------------------------------------------
def _set_aside(path: Path) -> Path:
    i = 1
    while (target := path.with_name(f"{path.name}.previous-{i}")).exists():
        i += 1
    path.rename(target)
    return target


def start_run(cfg: RecipeConfig, *, fresh: bool = False, if_changed: str = "error") -> RecipeConfig:
    """Create (or reopen) the run directory and write the resolved config into it; returns that config.

    Before anything is written, every finished stage (of the run and its ablations) is compared with
    ``cfg``; a changed one raises :class:`ConfigError` naming the keys unless ``if_changed="rerun"``.
    ``fresh``: an existing run directory is renamed to ``<dir>.previous-N`` (never deleted) first.
    """
    from mpm_train import check_plan

    check_buildable(cfg)
    out = Path(cfg.run.out_dir)
    if fresh and out.exists():
        say(f"--fresh: the earlier run is kept in {_set_aside(out)}")
    resolved = cfg.resolved()
    for name, run in _runs(resolved):
        for model in ("vlm", "paint"):
            if not run.stages_of(model):
                continue
            stages_dir = Path(run.run.out_dir) / STAGES_DIR
            changed = check_plan(build_plan(run, model), stages_dir, context=plan_context(run, model))
            if changed and if_changed == "error":
                what = "; ".join(f"stages.{s} ({', '.join(k[:6])})" for s, k in changed.items())
                where = f"ablation {name!r} in " if name else ""
                raise ConfigError(
                    f"{where}{stages_dir}: finished stage(s) were trained with another config: {what}. "
                    "Use --fresh (the old run is kept aside), another run.out_dir, or --rerun-changed"
                )
    for _, run in _runs(resolved):
        run.resolved().save(Path(run.run.out_dir) / CONFIG_FILE)
    return resolved


# ------------------------------------------------------------------------------------------------
# 2. data
# ------------------------------------------------------------------------------------------------
def build_data(cfg: RecipeConfig) -> Path:
    """EmojiCap shards under ``cfg.data_root`` (re-used when the manifest matches the settings)."""
    from mpm_bench import build_emojicap

    root = Path(cfg.data_root)
    limit = cfg.data.limit or None
    manifest = root / "manifest.json"
    if manifest.exists():
        old = json.loads(manifest.read_text(encoding="utf-8"))["config"]
        same = (old.get("size"), old.get("limit"), tuple(old.get("styles", ("openmoji",))))
        if same == (cfg.data.image_size, limit, cfg.data.styles):
            say(f"EmojiCap: re-using {root}")
            return root
    styles = ", ".join(cfg.data.styles)
    say(f"EmojiCap: rendering {limit or 'all'} emoji ({styles}) at {cfg.data.image_size}px -> {root}")
    info = build_emojicap(
        root, size=cfg.data.image_size, limit=limit, styles=cfg.data.styles, progress=cfg.run.progress
    )
    for style, s in info["styles"].items():
        counts = {split: v["count"] for split, v in s["splits"].items()}
        say(f"EmojiCap {style}: {counts} images, 14 languages each ({s['license']})")
    return root


def _split_counts(data_root: Path) -> dict[str, dict[str, int]]:
    """``{style: {split: images}}`` of a built EmojiCap."""
    from mpm_bench.emojicap import load_manifest

    manifest = load_manifest(data_root)
    return {
        style: {split: int(v["count"]) for split, v in s["splits"].items()}
        for style, s in manifest["styles"].items()
    }


def check_splits(cfg: RecipeConfig, data_root: Path) -> None:
    """Every split a stage trains on holds an emoji and the evaluation split at least 2 (else ConfigError)."""
    counts = _split_counts(data_root)
    for name, stage in cfg.stages.items():
        for i, entry in enumerate(stage.mix if stage.enabled else ()):
            splits = counts.get(entry.style, {})
            if splits.get(entry.split, 0) < 1:
                raise ConfigError(
                    f"stages.{name}.mix.{i}.split: EmojiCap split {entry.split!r} ({entry.style}) is empty "
                    f"with data.limit={cfg.data.limit} (splits: {splits}); raise data.limit"
                )
    splits = counts.get(cfg.eval.style, {})
    if splits.get(cfg.eval.split, 0) < 2:
        raise ConfigError(
            f"eval.split: EmojiCap split {cfg.eval.split!r} ({cfg.eval.style}) holds "
            f"{splits.get(cfg.eval.split, 0)} emoji with data.limit={cfg.data.limit} (splits: {splits}); "
            "evaluation needs at least 2: raise data.limit or evaluate on another split"
        )


# ------------------------------------------------------------------------------------------------
# 3. the pivot
# ------------------------------------------------------------------------------------------------
def measure_alignment(
    lm: Any, tokenizer: Any, cfg: RecipeConfig, data_root: Path, name: str
) -> dict[str, float]:
    """en->X bitext retrieval (CSLS P@1) of emoji names in the pivot space the recipe chose
    (:func:`mpm.contrastive.choose_pivot_space`: templates x poolings x layers on ``align.split``
    names, cached in the run)."""
    from mpm.contrastive import choose_pivot_space

    return dict(choose_pivot_space(lm, tokenizer, cfg, data_root, name).p1)


# ------------------------------------------------------------------------------------------------
# 4. stages
# ------------------------------------------------------------------------------------------------
def train(
    cfg: RecipeConfig,
    *,
    lm: Any = None,
    tokenizer: Any = None,
    if_changed: str = "error",
    data_root: Path | None = None,
) -> TrainedRun:
    """Build the models and run their stages (resuming finished and interrupted ones).

    ``data_root``: the built EmojiCap (default ``cfg.data_root``), read by the chat warm start.
    """
    from mpm_train import run_plan

    seed, out = cfg.run.seed, Path(cfg.run.out_dir)
    data_root = data_root or Path(cfg.data_root)
    if lm is None:
        lm, tokenizer = build_lm(cfg.model.lm, seed=seed)
    paint_lm = separate_lm(lm, cfg)  # before any chat stage may add LoRA adapters to the LM
    if cfg.stages_of("paint"):
        from mpm.painting import resolve_paint_space

        cfg = resolve_paint_space(cfg, paint_lm, tokenizer, data_root)
    vlm = build_vlm(cfg.model, lm, tokenizer, seed=seed)
    run = TrainedRun(config=cfg, out_dir=out, lm=lm, tokenizer=tokenizer, vlm=vlm)
    finished = {n for n in cfg.stages if (out / STAGES_DIR / n / "result.json").is_file()}
    for name, stage in cfg.stages_of("vlm").items():
        say(
            f"chat stage {name!r}: {_describe_stage(stage)}"
            + (" (finished earlier)" if name in finished else "")
        )
    from mpm.generative import feature_cache, train_branches, warm_start

    cache = feature_cache(vlm, cfg)
    t0 = time.perf_counter()
    if data_root is not None:
        warm_start(vlm, cfg, data_root, cache)
    run.timings["warm_start_s"] = time.perf_counter() - t0
    collate = VLMCollate(vlm, prompt=cfg.model.prompt, features=cache)
    t0 = time.perf_counter()
    plan = run_plan(
        vlm,
        build_plan(cfg, "vlm"),
        collate_fn=collate,
        output_dir=out / STAGES_DIR,
        context=plan_context(cfg, "vlm"),
        if_changed=if_changed,
        progress=cfg.run.progress,
    )
    run.branches, branch_results = train_branches(vlm, cfg, collate, if_changed=if_changed)
    run.timings["chat_stages_s"] = time.perf_counter() - t0
    for r in (*plan.stages, *branch_results):
        run.stage_results[r.stage] = r
        say(
            f"chat stage {r.stage!r}: loss {r.losses[0]:.3f} -> {r.final_loss:.3f}, {_how(r, r.stage in finished)}"
        )
    vlm.eval()
    if cfg.stages_of("paint"):
        from mpm.painting import train_paint

        run.paint, run.paint_states, results = train_paint(
            cfg,
            paint_lm,
            tokenizer,
            stages_dir=out / STAGES_DIR,
            if_changed=if_changed,
            say=say,
            finished=finished,
        )
        for r in results:
            run.stage_results[r.stage] = r
            say(
                f"paint stage {r.stage!r}: loss {r.losses[0]:.3f} -> {r.final_loss:.3f}, {_how(r, r.stage in finished)}"
            )
    return run


def _describe_stage(stage: Any) -> str:
    trains = ", ".join(f"{p} {str(v).lower()}" for p, v in stage.trainable.items())
    data = " + ".join(f"{m.weight:g} x {m.kind} {','.join(m.langs)}" for m in stage.mix)
    return f"{stage.train['steps']} steps x {stage.train.get('batch_size', 8)}, trains {trains}; data {data}"


def _how(r: Any, finished_before: bool) -> str:
    if finished_before:
        return "finished earlier (its weights loaded)"
    resumed = f", resumed from step {r.resumed_from}" if r.resumed_from else ""
    return f"{r.samples_per_s:.1f} samples/s{resumed}"


def load_run(
    run_dir: str | Path, *, need: tuple[str, ...] = ("vlm",), overrides: tuple[str, ...] = ()
) -> TrainedRun:
    """The trained models of a run directory: its ``config.toml``, builders, then every stage's structure
    and final weights (safetensors) in order. No training. ``need``: ``vlm`` and/or ``paint``.

    Raises :class:`ConfigError` when the run lacks a needed component or a stage has not finished.
    """
    from mpm_train import StageConfigChangedError, restore_plan

    root = Path(run_dir)
    cfg = load_run_config(root, overrides)
    for model in need:
        if not cfg.stages_of(model):
            what = {"vlm": "chat", "paint": "paint"}[model]
            raise ConfigError(
                f"{root}: this run has no {what} model (no enabled stage with model = {model!r})"
            )
        for name in cfg.stages_of(model):
            if not (root / STAGES_DIR / name / "result.json").is_file():
                raise ConfigError(
                    f"{root}: stage {name!r} has not finished; run `mpm train --config {root / CONFIG_FILE}`"
                )
    cfg = _relocated(cfg, root)
    lm, tok = build_lm(cfg.model.lm, seed=cfg.run.seed)
    paint_lm = separate_lm(lm, cfg)
    run = TrainedRun(config=cfg, out_dir=root, lm=lm, tokenizer=tok)
    try:
        if "vlm" in need:
            run.vlm = build_vlm(cfg.model, lm, tok, seed=cfg.run.seed)
            plan = restore_plan(
                run.vlm, build_plan(cfg, "vlm"), root / STAGES_DIR, context=plan_context(cfg, "vlm")
            )
            run.stage_results.update({r.stage: r for r in plan.stages})
            run.vlm.eval()
        if "paint" in need:
            from mpm.painting import recipe_states, resolve_paint_space

            cfg = resolve_paint_space(cfg, paint_lm, tok, cfg.data_root)
            run.config = cfg
            run.paint = build_paint(
                cfg.paint, paint_lm, tok, resolution=paint_resolution(cfg), seed=cfg.run.seed
            )
            run.paint_states = recipe_states(cfg, paint_lm, tok, prefetch=False)
            plan = restore_plan(
                run.paint, build_plan(cfg, "paint"), root / STAGES_DIR, context=plan_context(cfg, "paint")
            )
            run.stage_results.update({r.stage: r for r in plan.stages})
            run.paint.eval()
    except StageConfigChangedError as err:
        raise ConfigError(f"{root}: {err}") from None
    return run


def load_run_config(root: Path, overrides: tuple[str, ...] = ()) -> RecipeConfig:
    """The resolved config stored in a run directory (ConfigError naming the file when it is missing)."""
    path = root / CONFIG_FILE
    if not root.is_dir():
        raise ConfigError(f"run directory {root} does not exist")
    if not path.is_file():
        raise ConfigError(
            f"{root} is not a run directory: no {CONFIG_FILE} (runs are made by mpm train / mpm demo)"
        )
    return load_config(path, overrides)


def _relocated(cfg: RecipeConfig, root: Path) -> RecipeConfig:
    """The config with ``run.out_dir`` pointing at where the run is now (``data.root`` is kept as trained)."""
    import dataclasses

    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(root)))


# ------------------------------------------------------------------------------------------------
# 5. evaluation
# ------------------------------------------------------------------------------------------------
def evaluate(run: TrainedRun, data_root: Path) -> list[Any]:
    """Every task in every language through mpm-bench's protocols; writes the paint grid into the run."""
    from mpm.adapters import VLMScorer
    from mpm.generative import evaluate_chat
    from mpm_bench import load_emojicap

    cfg, ev = run.config, run.config.eval
    if run.vlm is None:
        raise ValueError(f"{run.out_dir}: evaluation needs the run's chat model")
    langs = list(cfg.run.langs)
    # the chat model: generative-head classification and answer-language fidelity (mpm.generative)
    results = evaluate_chat(run, data_root)
    scorer = VLMScorer(run.vlm, prompt=cfg.model.prompt)
    if run.paint is not None and ev.paint_items:
        items = load_emojicap(
            data_root, ev.paint_split, langs=langs, limit=ev.paint_items, styles=cfg.contrastive.style
        )
        results += _evaluate_paint(run, data_root, items, scorer, f"emojicap/{ev.paint_split}")
    return results


def _evaluate_paint(
    run: TrainedRun, data_root: Path, items: list[Any], scorer: Any, dataset: str
) -> list[Any]:
    """Text-to-image in every language, judged (``paint.judge``), and the language-labelled grid."""
    from mpm.painting import RenderJudge, efficientnet_embedder, recipe_painter
    from mpm_bench import run_text_to_image

    cfg, ev = run.config, run.config.eval
    painter = recipe_painter(
        run, num_inference_steps=ev.paint_inference_steps, guidance_scale=ev.guidance_scale
    )
    if cfg.paint.judge == "render":
        judge: Any = RenderJudge(efficientnet_embedder(), {ex.names["en"]: ex.image for ex in items})
        judge_lang, by = "en", "nearest clean render (EfficientNet-Lite0 features)"
    elif cfg.paint.judge == "contrastive":
        from mpm.contrastive import PivotStates, contrastive_judge

        # the paint model's states are stage 1a's when paint conditions on the chosen pivot space
        shared = run.paint_states if isinstance(run.paint_states, PivotStates) else None
        judge, judge_lang, by = (
            contrastive_judge(cfg, data_root, states=shared),
            "en",
            "the contrastive head (English names)",
        )
    else:
        judge, judge_lang, by = scorer, ev.judge_lang, "the chat model"
    n_cand = min(ev.num_candidates, len(items))
    say(f"eval {run.label}: text-to-image of {len(items)} emoji per language, judged by {by} among {n_cand}")
    painted: dict[str, list[Any]] = {}
    results = run_text_to_image(
        painter,
        items,
        list(cfg.run.langs),
        judge=judge,
        judge_lang=judge_lang,
        num_candidates=n_cand,
        seed=cfg.run.seed,
        model_name=run.label,
        dataset_name=dataset,
        images_out=painted,
    )
    save_paint_grid(
        items,
        painted,
        run.out_dir / "paint-grid.png",
        title=f"{run.label}: painted from the name in each language",
    )
    return results


def save_paint_grid(
    items: list[Any],
    painted: dict[str, list[Any]],
    path: Path,
    *,
    columns: int = 12,
    title: str | None = None,
) -> Path:
    """A PNG grid: the reference emoji on top, then one row per language (labelled with its code) painted
    from the emoji's name in that language; columns are the first ``columns`` concepts."""
    from mpm.painting import paint_grid

    k = min(columns, len(items))
    return paint_grid(
        [ex.image for ex in items[:k]], {lang: ims[:k] for lang, ims in painted.items()}, path, title=title
    )


# ------------------------------------------------------------------------------------------------
# 6. board
# ------------------------------------------------------------------------------------------------
def write_board(
    cfg: RecipeConfig, results: list[Any], alignment: dict[str, dict[str, float]], data_root: Path
) -> tuple[dict[str, Path], dict[str, dict[str, float]]]:
    """Leaderboard (with a random baseline) and ``summary.json`` in the run; returns files and transfer ratios."""
    from mpm_bench import Leaderboard, RandomBaseline, load_emojicap, run_classification

    out = Path(cfg.run.out_dir)
    test = load_emojicap(
        data_root, cfg.eval.split, langs=cfg.run.langs, limit=cfg.eval.items, styles=cfg.eval.style
    )
    results = results + run_classification(
        RandomBaseline(seed=cfg.run.seed),
        test,
        list(cfg.run.langs),
        num_candidates=cfg.eval.num_candidates,
        seed=cfg.run.seed,
        model_name="random",
        dataset_name=f"emojicap/{cfg.eval.split}",
    )
    board = Leaderboard(results)
    files = dict(board.write(out / "board"))
    files.update(_write_headline(cfg, board, alignment, out / "board"))
    transfer = {m: r for m, r in board.transfer("classification", "acc@1").items() if r}
    summary = {"config": cfg.to_dict(), "alignment_en_to_x_p1": alignment, "transfer_ratio_acc@1": transfer}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    files["summary"] = out / "summary.json"
    print()
    print(board.to_markdown())
    print()
    say(
        "transfer ratio (classification acc@1, language / English) next to the pivot's alignment (en->X P@1):"
    )
    for model, ratios in transfer.items():
        if model == "random":
            continue
        align = alignment.get(model, {})
        print(
            f"  {model}: "
            + ", ".join(
                f"{lang} {ratios.get(lang, float('nan')):.2f} (align {align.get(lang, float('nan')):.2f})"
                for lang in cfg.run.langs
                if lang != "en"
            )
        )
    return files, transfer


def headline_models(cfg: RecipeConfig) -> Any:
    """The board models of the headline: this run's contrastive heads, the first ablation with another
    pivot (the paper's English-centric ablation), the chat and paint models."""
    from mpm.headline import HeadlineModels

    main = _label(None, cfg)
    ablation = next((n for n in cfg.ablations if cfg.ablation(n).model.lm.name != cfg.model.lm.name), None)
    return HeadlineModels(
        zero_shot=f"{main}/contrastive",
        ablation=None if ablation is None else f"{_label(ablation, cfg)}/contrastive",
        native=f"{main}/contrastive-native" if cfg.contrastive.native_langs else None,
        generative=main if cfg.stages_of("vlm") else None,
        fidelity=_fidelity_models(cfg, main),
        calibrated=_calibrated_langs(cfg),
        paint=main if cfg.stages_of("paint") else None,
    )


def _calibrated_langs(cfg: RecipeConfig) -> tuple[str, ...]:
    """The non-English languages of the main chain's instruction mixes (the translated share)."""
    langs: list[str] = []
    for stage in cfg.stages_of("vlm").values():
        if getattr(stage, "start_from", ""):
            continue
        for m in stage.mix:
            if m.kind == "instructions":
                langs += [x for x in m.langs if x != "en" and x not in langs]
    return tuple(langs)


def _fidelity_models(cfg: RecipeConfig, main: str) -> dict[str, str] | None:
    """``{"5 %": main, "0 %": main/<branch>}``: the chain with the translated share and its English-only
    branch (a stage with ``start_from`` whose instructions are English only)."""
    if not cfg.stages_of("vlm"):
        return None
    share = 0.0
    for stage in cfg.stages_of("vlm").values():
        total = sum(m.weight for m in stage.mix if m.kind == "instructions")
        if not getattr(stage, "start_from", "") and total:
            share = (
                sum(m.weight for m in stage.mix if m.kind == "instructions" and m.langs != ("en",)) / total
            )
    out = {f"{100 * share:g} %": main}
    for name, stage in cfg.stages_of("vlm").items():
        if getattr(stage, "start_from", "") and all(m.langs == ("en",) for m in stage.mix):
            out["0 %"] = f"{main}/{name}"
    return out


def _write_headline(
    cfg: RecipeConfig, board: Any, alignment: dict[str, dict[str, float]], out: Path
) -> dict[str, Path]:
    from mpm.headline import write_headline

    if not cfg.contrastive.enabled:
        return {}
    models = headline_models(cfg)
    files = write_headline(board, out, models, list(cfg.run.langs), alignment)
    print()
    print((out / "headline.md").read_text(encoding="utf-8"))
    for t in json.loads((out / "targets.json").read_text(encoding="utf-8"))["targets"]:
        mark = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        print(f"  target [{mark}] {t['target']}: {t['value']} ({t['threshold']})")
    return files


# ------------------------------------------------------------------------------------------------
def run_contrastive(
    cfg: RecipeConfig,
    lm: Any,
    tokenizer: Any,
    data_root: Path,
    label: str,
    alignment: dict[str, dict[str, float]],
    *,
    evaluation: bool = True,
) -> list[Any]:
    """Stage 1a (:mod:`mpm.contrastive`): the pivot space, the English (and native) heads, their
    zero-shot evaluation in every language. Adds the pivot's alignment to ``alignment``."""
    from mpm.contrastive import (
        PivotStates,
        _feature_cache,
        choose_pivot_space,
        evaluate_contrastive,
        train_contrastive,
    )

    space = choose_pivot_space(lm, tokenizer, cfg, data_root, cfg.model.lm.name)
    alignment[label] = dict(space.p1)
    if not cfg.contrastive.enabled:
        return []
    alignment[f"{label}/contrastive"] = dict(space.p1)
    states = PivotStates(lm, tokenizer, space, name=cfg.model.lm.name)
    cache = _feature_cache(cfg)
    heads = train_contrastive(cfg, states, data_root, feature_cache=cache)
    if not evaluation:
        return []
    results = evaluate_contrastive(cfg, heads, states, data_root, f"{label}/contrastive", feature_cache=cache)
    if states.computed:
        say(
            f"pivot states of {cfg.model.lm.name}: {states.computed} texts encoded in {states.seconds:.0f} s (cached)"
        )
    return results


# ------------------------------------------------------------------------------------------------
def run_recipe(
    cfg: RecipeConfig, *, fresh: bool = False, if_changed: str = "error", evaluation: bool = True
) -> RecipeResult:
    """The whole chain (what ``mpm demo`` runs; ``evaluation=False`` stops after the stages, as ``mpm train``)."""
    t0 = time.perf_counter()
    cfg = start_run(cfg, fresh=fresh, if_changed=if_changed)
    data_root = build_data(cfg)
    check_splits(cfg, data_root)
    results: list[Any] = []
    alignment: dict[str, dict[str, float]] = {}
    files: dict[str, Path] = {}
    for name, run_cfg in _runs(cfg):
        say(f"run {name or 'main'}: pivot {run_cfg.model.lm.name}, in {run_cfg.run.out_dir}")
        lm, tok = build_lm(run_cfg.model.lm, seed=run_cfg.run.seed)
        label = _label(name, run_cfg)
        results += run_contrastive(run_cfg, lm, tok, data_root, label, alignment, evaluation=evaluation)
        if not (run_cfg.stages_of("vlm") or run_cfg.stages_of("paint")):
            del lm
            continue
        run = train(run_cfg, lm=lm, tokenizer=tok, if_changed=if_changed, data_root=data_root)
        run.name = name
        if evaluation and run.config.stages_of("vlm"):
            results += evaluate(run, data_root)
            if (run.out_dir / "paint-grid.png").is_file():
                files[f"paint_grid_{name or 'main'}"] = run.out_dir / "paint-grid.png"
        del run, lm
    transfer: dict[str, dict[str, float]] = {}
    if evaluation:
        board_files, transfer = write_board(cfg, results, alignment, data_root)
        files.update(board_files)
    elapsed = time.perf_counter() - t0
    say(
        f"done in {elapsed:.0f} s; outputs in {cfg.run.out_dir}: "
        + ", ".join(sorted(p.name for p in files.values()))
    )
    return RecipeResult(
        out_dir=Path(cfg.run.out_dir),
        results=results,
        alignment=alignment,
        transfer=transfer,
        files=files,
        elapsed_s=elapsed,
    )


def evaluate_run_dir(run_dir: str | Path, overrides: tuple[str, ...] = ()) -> RecipeResult:
    """``mpm eval RUN_DIR``: restore the run (and its ablations), evaluate, write the board into it."""
    t0 = time.perf_counter()
    root = Path(run_dir)
    cfg = _relocated(load_run_config(root, overrides), root)
    data_root = Path(cfg.data_root)
    check_splits(cfg, data_root)
    results: list[Any] = []
    alignment: dict[str, dict[str, float]] = {}
    files: dict[str, Path] = {}
    for name, run_cfg in _runs(cfg):
        sub = root if name is None else root / "ablations" / name
        sub_cfg = _relocated(load_run_config(sub, overrides), sub)
        label = _label(name, sub_cfg)
        # stage 1a reads the frozen pivot (a chat stage may have put LoRA adapters into run.lm)
        lm, tok = build_lm(sub_cfg.model.lm, seed=sub_cfg.run.seed)
        results += run_contrastive(sub_cfg, lm, tok, data_root, label, alignment)  # heads are loaded
        del lm
        if not sub_cfg.stages_of("vlm"):
            continue
        need = ("vlm", "paint") if run_cfg.stages_of("paint") else ("vlm",)
        run = load_run(sub, need=need, overrides=overrides)
        run.name = name
        results += evaluate(run, data_root)
    board_files, transfer = write_board(cfg, results, alignment, data_root)
    files.update(board_files)
    return RecipeResult(
        out_dir=root,
        results=results,
        alignment=alignment,
        transfer=transfer,
        files=files,
        elapsed_s=time.perf_counter() - t0,
    )
