"""The chat (VisCPM-Chat) side of the recipe: feature cache, warm start, branch stages, evaluation.

    cache = feature_cache(vlm, cfg)                 # frozen encoder: train on stored features
    warm_start(vlm, cfg, data_root, cache)          # stage 1b's start: bridge -> the names' embeddings
    ... mpm-train runs the chat stages (stage 1b, generative align; stage 2, instruct) ...
    branches = train_branches(vlm, cfg, collate)    # stage-2 variants sharing stage 1b
    results = evaluate_chat(run, data_root)         # generative head + answer-language fidelity

- **Warm start** (``[model.warm_start]``): before the first chat stage, the bridge is regressed
  onto the LM's input embeddings of every training image's English name
  (:func:`mpm_vision.regress_bridge`; no LM forward pass). It is stored in
  ``<run>/stages/warm-start`` and re-used while its settings match.
- **Branches** (``stages.<name>.start_from``): a stage that starts from an earlier stage of the
  main chain instead of the previous one, e.g. stage 2 with ``translated_share = 0`` beside the
  main chain's stage 2 at 5 %. Each branch is its own mpm-train plan whose first stages are the
  main chain's (same directories and fingerprints), so they are loaded, never trained twice.
- **Evaluation**: the generative head classifies (the mean log-probability per token of each
  candidate name in language X, asked the model's prompt) on a named mpm-bench set, among
  ``eval.num_candidates`` and among all names of ``eval.chat_all`` images; then every model (the
  main chain and each branch) is asked "what is this emoji called?" in each language and the
  language of its answers is identified, beside the oracle's answers (the detector's ceiling).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mpm.config import RecipeConfig

__all__ = [
    "ANSWERS_FILE",
    "WARM_START_DIR",
    "branch_states",
    "evaluate_chat",
    "feature_cache",
    "load_state",
    "snapshot",
    "train_branches",
    "warm_start",
    "write_answers",
]

WARM_START_DIR = "warm-start"
#: Every model's answers to the fidelity questions, item by item (:func:`write_answers`), in the run.
ANSWERS_FILE = "answers.json"


def _say(msg: str) -> None:
    from mpm.recipe import say

    say(msg)


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def feature_cache(vlm: Any, cfg: RecipeConfig) -> Any:
    """A :class:`mpm_vision.FeatureCache` of the frozen encoder under ``<run>/cache/features``, or
    ``None`` when the encoder may train or ``model.feature_cache`` is off."""
    from mpm_vision import FeatureCache

    if not (cfg.model.feature_cache and cfg.model.encoder.frozen):
        return None
    return FeatureCache(Path(cfg.run.out_dir) / "cache" / "features", vlm.encoder, batch_size=32)


def _encode(vlm: Any, images: list[Any], cache: Any) -> torch.Tensor:
    if cache is not None:
        return cache.features(images)
    with torch.no_grad():
        was = vlm.encoder.training
        vlm.encoder.eval()
        try:
            return torch.cat(
                [vlm.encoder(vlm.preprocess(images[i : i + 32])) for i in range(0, len(images), 32)]
            )
        finally:
            vlm.encoder.train(was)


def warm_start(vlm: Any, cfg: RecipeConfig, data_root: Path, cache: Any = None) -> dict[str, Any] | None:
    """Regress ``vlm.bridge`` onto the LM's input embeddings of the training images' names (in place).

    Skipped (``None``) when ``model.warm_start.steps`` is 0 or the first chat stage has finished or
    started (its checkpoint holds the bridge). A stored warm start with the same settings is loaded
    instead of being recomputed. Returns its record: settings, losses, seconds.
    """
    import time

    from safetensors.torch import load_file, save_file

    from mpm.builders import build_plan
    from mpm_bench import load_emojicap
    from mpm_vision import regress_bridge

    ws = cfg.model.warm_start
    if ws.steps == 0:
        return None
    stages = Path(cfg.run.out_dir) / "stages"
    first = build_plan(cfg, "vlm").stages[0].name
    if (stages / first / "result.json").is_file() or any((stages / first / "checkpoints").glob("*")):
        return None
    where = stages / WARM_START_DIR
    settings = {"model": cfg.model.to_dict(), "data": cfg.data.to_dict(), "seed": cfg.run.seed}
    record_path, weights = where / "record.json", where / "bridge.safetensors"
    if record_path.is_file() and weights.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("settings") == settings:
            vlm.bridge.load_state_dict(load_file(str(weights)))
            _say(f"warm start: loaded from {where}")
            return dict(record)
    t0 = time.perf_counter()
    examples = load_emojicap(data_root, ws.split, langs=[ws.lang], styles=ws.style)
    names = [ex.names[ws.lang] for ex in examples]
    feats = _encode(vlm, [ex.image for ex in examples], cache)
    t_feat = time.perf_counter() - t0
    losses = regress_bridge(
        vlm, feats, names, steps=ws.steps, lr=ws.lr, batch_size=ws.batch_size, seed=cfg.run.seed
    )
    elapsed = time.perf_counter() - t0
    where.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in vlm.bridge.state_dict().items()}, str(weights))
    record = {
        "settings": settings,
        "images": len(examples),
        "losses": losses[:: max(1, len(losses) // 50)] + losses[-1:],
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "feature_s": t_feat,
        "elapsed_s": elapsed,
    }
    record_path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    _say(
        f"warm start: bridge regressed onto the LM's embeddings of {len(examples)} {ws.lang} names, "
        f"{ws.steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f} ({elapsed:.0f} s, features {t_feat:.0f} s)"
    )
    return record


def _keeps_lm(cfg: RecipeConfig) -> bool:
    """Whether any chat stage trains the LM's own weights (not only LoRA adapters)."""
    return any(s.trainable.get("lm", False) not in (False, "lora") for s in cfg.stages_of("vlm").values())


def snapshot(vlm: Any, cfg: RecipeConfig) -> dict[str, torch.Tensor]:
    """A copy of every weight a chat stage may change (all but the frozen LM's own weights)."""
    full = _keeps_lm(cfg)
    return {
        n: p.detach().clone()
        for n, p in vlm.named_parameters()
        if full or not n.startswith("language_model.") or "lora_" in n
    }


def load_state(vlm: Any, state: dict[str, torch.Tensor]) -> None:
    """Put a :func:`snapshot` back."""
    params = dict(vlm.named_parameters())
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def _fresh_lora(vlm: Any, seed: int) -> None:
    """LoRA adapters back to a fresh start (A drawn as peft draws it, from ``seed``; B = 0: a no-op)."""
    import math

    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for n, p in vlm.named_parameters():
            if "lora_A" in n:
                torch.nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=gen)
            elif "lora_B" in n:
                p.zero_()


def train_branches(
    vlm: Any,
    cfg: RecipeConfig,
    collate_fn: Any,
    *,
    if_changed: str = "error",
) -> tuple[dict[str, dict[str, torch.Tensor]], list[Any]]:
    """Train every branch stage (``start_from``) after the main chain; ``vlm`` ends holding the main
    chain's weights again. Returns ``({branch: weights}, [StageResult of each branch])``.

    A branch starts from its shared stage's final weights; LoRA adapters that a later main-chain
    stage trained start fresh again (B = 0, so the branch starts exactly as that stage ended).
    Branches must add the same LoRA adapters as the main chain (or none): a model has one set."""
    from mpm.builders import build_branch_plans, plan_context
    from mpm_train import run_plan

    plans = build_branch_plans(cfg, "vlm")
    if not plans:
        return {}, []
    main = snapshot(vlm, cfg)
    out: dict[str, dict[str, torch.Tensor]] = {}
    results = []
    try:
        for name, plan in plans.items():
            _fresh_lora(vlm, cfg.run.seed)  # the main chain's later stages may have trained adapters
            r = run_plan(
                vlm,
                plan,
                collate_fn=collate_fn,
                output_dir=Path(cfg.run.out_dir) / "stages",
                context=plan_context(cfg, "vlm"),
                if_changed=if_changed,
                progress=cfg.run.progress,
            )
            out[name] = snapshot(vlm, cfg)
            results.append(r.stages[-1])
    finally:
        load_state(vlm, main)
    return out, results


def branch_states(vlm: Any, cfg: RecipeConfig, stages_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The finished branches' weights of a trained run (``vlm`` ends holding its own weights again)."""
    from mpm.builders import build_branch_plans, plan_context
    from mpm_train import restore_plan

    plans = build_branch_plans(cfg, "vlm")
    if not plans:
        return {}
    main = snapshot(vlm, cfg)
    out = {}
    try:
        for name, plan in plans.items():
            restore_plan(vlm, plan, stages_dir, context=plan_context(cfg, "vlm"))
            out[name] = snapshot(vlm, cfg)
    finally:
        load_state(vlm, main)
    return out


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
def chat_eval_set(cfg: RecipeConfig, data_root: Path, limit: int, langs: list[str]) -> tuple[list[Any], str]:
    """``(examples, dataset name)`` of the chat evaluation: ``eval.chat_set`` or ``eval.split``."""
    from mpm_bench import emojicap_eval_set, load_emojicap

    ev = cfg.eval
    if ev.chat_set:
        es = emojicap_eval_set(data_root, ev.chat_set, langs=langs, limit=limit)
        return es.examples, es.dataset_name
    return (
        load_emojicap(data_root, ev.split, langs=langs, limit=limit, styles=ev.style),
        f"emojicap/{ev.split}",
    )


def evaluate_chat(
    run: Any, data_root: Path, *, predictions: dict[str, dict[str, list[str]]] | None = None
) -> list[Any]:
    """The chat model's rows: generative-head classification, then (``eval.caption``) answers in each
    language with their BLEU/chrF and language fidelity, for the main model, every branch and the
    oracle; the answers are written to ``<run>/answers.json`` (:func:`write_answers`).
    ``predictions``: filled with ``{model: {lang: answers}}`` (the oracle's excepted)."""
    import time

    from mpm.adapters import CachedScorer, VLMCaptioner, VLMScorer
    from mpm_bench import OracleBaseline, run_captioning, run_classification

    cfg, ev = run.config, run.config.eval
    langs = list(ev.chat_langs or cfg.run.langs)
    n = ev.chat_items or ev.items
    f_langs = list(ev.fidelity_langs or langs)
    test, dataset = chat_eval_set(cfg, data_root, n, list(dict.fromkeys([*langs, *f_langs])))
    # among-all pairs repeat most among-k pairs: each (image, name) is scored once (for this call only)
    scorer = CachedScorer(VLMScorer(run.vlm, prompt=cfg.model.prompt))
    gallery = min(ev.chat_all, len(test)) if ev.chat_all else 0
    _say(
        f"eval {run.label}: generative head, {len(test)} {dataset} images x {len(langs)} languages, among "
        f"{ev.num_candidates}" + (f" and among all {gallery} names of the first {gallery}" if gallery else "")
    )
    t0 = time.perf_counter()
    results = run_classification(
        scorer,
        test,
        langs,
        num_candidates=ev.num_candidates,
        seed=cfg.run.seed,
        all_candidates=gallery or False,
        model_name=run.label,
        dataset_name=dataset,
    )
    run.timings["eval_classification_s"] = time.perf_counter() - t0
    _say(
        f"eval {run.label}: generative head scored {scorer.scored} (image, name) pairs in {run.timings['eval_classification_s']:.0f} s"
    )
    if not ev.caption:
        return results
    items = test[: ev.fidelity_items or n]
    models: list[tuple[str, Any]] = [(run.label, VLMCaptioner(run.vlm, max_new_tokens=ev.max_new_tokens))]
    branches = run.branches
    if not branches and any(s.start_from for s in cfg.stages_of("vlm").values()):
        branches = branch_states(run.vlm, cfg, Path(run.out_dir) / "stages")
    main = snapshot(run.vlm, cfg) if branches else None
    _say(
        f"eval {run.label}: answers in {len(f_langs)} languages to {len(items)} images, "
        f"models: main{''.join(', ' + b for b in branches)}, oracle"
    )
    t0 = time.perf_counter()
    answers_by_model: dict[str, dict[str, list[str]]] = {}
    try:
        for name, state in [(None, None), *branches.items()]:
            if state is not None:
                load_state(run.vlm, state)
            label = run.label if name is None else f"{run.label}/{name}"
            answers: dict[str, list[str]] = {}
            results += run_captioning(
                models[0][1],
                items,
                f_langs,
                fidelity=True,
                model_name=label,
                dataset_name=dataset,
                predictions=answers,
            )
            answers_by_model[label] = answers
    finally:
        if main is not None:
            load_state(run.vlm, main)
    oracle: dict[str, list[str]] = {}
    results += run_captioning(
        OracleBaseline(items), items, f_langs, fidelity=True, model_name="oracle", dataset_name=dataset,
        predictions=oracle,
    )  # fmt: skip
    run.timings["eval_answers_s"] = time.perf_counter() - t0
    path = write_answers(
        Path(run.out_dir) / ANSWERS_FILE, items, f_langs, {**answers_by_model, "oracle": oracle}
    )
    _say(f"eval {run.label}: the answers are in {path}")
    if predictions is not None:
        predictions.update(answers_by_model)
    return results


def write_answers(
    path: Path, items: list[Any], langs: list[str], answers: dict[str, dict[str, list[str]]]
) -> Path:
    """Write every model's answers beside the asked question and the reference name (atomically).

    ``answers``: ``{model: {lang: one answer per item}}``. The file (``answers.json``) reads
    ``{"format": "mpm-answers", "version": 1, "prompts": {lang: question}, "items": [{"key", "names":
    {lang: reference}, "answers": {model: {lang: answer}}}]}``: what each model said, item by item.
    """
    from mpm_bench.tasks import CAPTION_PROMPTS
    from mpm_train.checkpoint import write_text_atomic

    for model, by_lang in answers.items():
        for lang, got in by_lang.items():
            if len(got) != len(items):
                raise ValueError(f"answers of {model!r} in {lang!r}: {len(got)} for {len(items)} items")
    doc = {
        "format": "mpm-answers",
        "version": 1,
        "prompts": {lang: CAPTION_PROMPTS.get(lang, "") for lang in langs},
        "items": [
            {
                "key": ex.key,
                "names": {lang: ex.names.get(lang, "") for lang in langs},
                "answers": {m: {lang: a[i] for lang, a in by_lang.items()} for m, by_lang in answers.items()},
            }
            for i, ex in enumerate(items)
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(doc, indent=1, ensure_ascii=False))
