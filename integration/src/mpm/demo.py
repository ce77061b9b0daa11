"""``mpm demo``: the main job — an end-to-end MPM smoke run on real data with a real pivot LLM.

What it runs, top to bottom (every step prints what it does and writes its output under ``--out``):

1. **Data**: renders EmojiCap (OpenMoji emoji named in 14 languages, mpm-bench) as webdataset shards.
2. **Pivot**: loads the pivot LLM from the offline zoo (default: the multilingual Gemma-3-270M) and
   measures, with mpm-align, how close its hidden states put each language's emoji names to English.
3. **Chat, stage 1 (align)**: a small ViT (from scratch: no vision weights are available offline) and a
   VisCPM ``query`` bridge learn to name emoji **in English only** (mpm-train on the shards; LLM frozen).
4. **Paint**: a small pixel-space UNet learns to draw emoji from the LLM's hidden states of their
   **English** names (mpm-paint, trained by mpm-train).
5. **Evaluation in every language** (mpm-bench): zero-shot classification among candidate names in
   that language (log-likelihood scorer), English captioning, text-to-image judged by the chat model,
   against a random baseline; optionally the same pipeline on the English-only ablation pivot.
6. **Leaderboard**: JSON, Markdown, HTML and PNG plots, plus the transfer ratio (language / English)
   next to the pivot's alignment for that language.

This is the toolkit's smoke on the reproduction's data and models, sized to finish in minutes on a
laptop CPU; the step counts are far too small for the paper's numbers, and the board says so by
showing the random baseline next to the models. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

DEMO_LANGS = ("en", "zh", "de", "fr", "es", "ja", "ru", "ar")
PROMPT = "<image>\nWhat is this?"
ALIGN_TEMPLATE = '"{text}" in English is "'


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo run (JSON round-trip through :meth:`to_dict` / :meth:`from_dict`)."""

    out_dir: str = "outputs/demo"
    pivot: str = "gemma3-270m"
    """Zoo name of the multilingual pivot LLM."""
    ablation: str | None = None
    """Zoo name of an English-only pivot to compare with (e.g. ``smollm2-135m``); ``None`` = skip."""
    langs: tuple[str, ...] = DEMO_LANGS
    image_size: int = 32
    emoji_limit: int | None = 600
    """How many emoji to render (``None`` = all ~3,900)."""
    align_items: int = 120
    """How many emoji names per language mpm-align compares with English."""
    chat_steps: int = 80
    paint_steps: int = 80
    batch_size: int = 8
    lr: float = 1e-3
    num_queries: int = 8
    eval_items: int = 24
    eval_split: str = "test"
    """EmojiCap split to evaluate on. ``"test"``: emoji never seen in training (zero-shot in concept and
    language). ``"train"``: the emoji trained on in English, asked about in every language (isolates the
    language transfer from visual generalisation, which a from-scratch vision tower cannot reach here)."""
    num_candidates: int = 8
    paint_items: int = 6
    paint_inference_steps: int = 20
    seed: int = 0
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DemoConfig:
        d = dict(data)
        if "langs" in d:
            d["langs"] = tuple(d["langs"])
        return cls(**d)


@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    out_dir: Path
    results: list[Any]
    alignment: dict[str, dict[str, float]]
    transfer: dict[str, dict[str, float]]
    files: dict[str, Path] = field(default_factory=dict)
    elapsed_s: float = 0.0


_T0 = time.perf_counter()


def _fresh(run_dir: Path) -> Path:
    """An empty run directory: a demo run always trains from scratch (its settings may have changed)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return run_dir


def _say(msg: str) -> None:
    print(f"[mpm demo {time.perf_counter() - _T0:6.0f}s] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------
# steps
def build_data(cfg: DemoConfig) -> Path:
    """Step 1: EmojiCap shards (re-used when the manifest matches the settings)."""
    from mpm_bench import build_emojicap

    root = Path(cfg.out_dir) / "emojicap"
    manifest = root / "manifest.json"
    if manifest.exists():
        old = json.loads(manifest.read_text())["config"]
        if old.get("size") == cfg.image_size and old.get("limit") == cfg.emoji_limit:
            _say(f"EmojiCap: re-using {root}")
            return root
    _say(f"EmojiCap: rendering {cfg.emoji_limit or 'all'} OpenMoji emoji at {cfg.image_size}px -> {root}")
    info = build_emojicap(root, size=cfg.image_size, limit=cfg.emoji_limit, progress=cfg.progress)
    counts = {s: v["count"] for s, v in info["splits"].items()}
    _say(f"EmojiCap: {counts} images, 14 languages each (CC BY-SA 4.0, OpenMoji)")
    return root


def measure_alignment(
    lm: Any, tokenizer: Any, data_root: Path, cfg: DemoConfig, name: str
) -> dict[str, float]:
    """Step 2: en->X bitext retrieval (CSLS P@1) of emoji names, at the pivot's best layer.

    One forward pass per language gives every hidden layer; the layer with the best mean P@1 over
    the languages is reported (mpm-align's full report sweeps templates and poolings too).
    """
    from mpm_align import TransformersEncoder, retrieval_accuracy
    from mpm_bench import load_emojicap

    examples = load_emojicap(data_root, "train", langs=cfg.langs, limit=cfg.align_items)
    enc = TransformersEncoder(
        lm, tokenizer, pooling="last", template=ALIGN_TEMPLATE, progress=False, name=name
    )
    texts = {lang: [ex.names[lang] for ex in examples] for lang in cfg.langs}
    en = enc.encode(texts["en"])
    others = [lang for lang in cfg.langs if lang != "en"]
    scores: dict[int, dict[str, float]] = {layer: {} for layer in en}
    for lang in others:
        x = enc.encode(texts[lang])
        for layer in en:
            scores[layer][lang] = retrieval_accuracy(en[layer], x[layer], method="csls")["x2y"]
    best = max(scores, key=lambda layer: sum(scores[layer].values()))
    _say(
        f"alignment of {name} (en->X retrieval P@1, best layer {best} of {len(scores) - 1}, "
        f"n={len(examples)}): " + ", ".join(f"{k} {v:.2f}" for k, v in scores[best].items())
    )
    return scores[best]


def english_stage(name: str, steps: int, data_root: Path, cfg: DemoConfig) -> Any:
    """A training stage on the EmojiCap train shards (their collate functions read English only)."""
    from mpm_train import DataConfig, DataSource, StageConfig

    shards = (str(data_root / "emojicap-openmoji-train-*.tar"),)
    return StageConfig(
        name=name,
        data=DataConfig(sources=(DataSource("emojicap-en", shards),), shuffle_buffer=500),
        steps=steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup_steps=max(1, steps // 10),
        seed=cfg.seed,
        log_every=max(1, steps // 8),
    )


def train_chat(lm: Any, tokenizer: Any, data_root: Path, cfg: DemoConfig, run_dir: Path) -> Any:
    """Step 3: stage 1 (align) on English names only; returns the VisionLanguageModel."""
    from mpm_train import run_stage
    from mpm_vision import VisionLanguageModel, create_bridge, create_encoder

    torch.manual_seed(cfg.seed)
    encoder = create_encoder(
        "vit_tiny_patch16_224", image_size=cfg.image_size, patch_size=8, depth=2, embed_dim=96, num_heads=3
    )
    hidden = int(lm.get_input_embeddings().weight.shape[1])
    bridge = create_bridge("query", in_dim=encoder.feature_dim, out_dim=hidden, num_queries=cfg.num_queries)
    vlm = VisionLanguageModel(encoder, bridge, lm, tokenizer, train_encoder=True)

    def english_only(samples: Sequence[Mapping[str, Any]]) -> Any:
        return vlm.collate(
            [{"image": s["image"], "prompt": PROMPT, "answer": s["json"]["names"]["en"]} for s in samples]
        )

    stage = english_stage("align", cfg.chat_steps, data_root, cfg)
    n_train = sum(p.numel() for p in vlm.stage_parameters("align"))
    _say(
        f"chat stage 1 (align, English only): {cfg.chat_steps} steps x {cfg.batch_size}, "
        f"{n_train / 1e6:.2f}M trainable parameters, LLM frozen"
    )
    res = run_stage(
        vlm, stage, collate_fn=english_only, output_dir=_fresh(run_dir), progress=cfg.progress, resume=False
    )
    _say(
        f"chat stage 1: loss {res.losses[0]:.3f} -> {res.final_loss:.3f}, {res.samples_per_s:.1f} samples/s, "
        f"skipped {res.skipped or 0}"
    )
    vlm.eval()
    return vlm


def train_paint(lm: Any, tokenizer: Any, data_root: Path, cfg: DemoConfig, run_dir: Path) -> Any:
    """Step 4: a pixel-space UNet conditioned on the LLM (English captions only); returns the pipeline."""
    from diffusers.models import UNet2DConditionModel
    from diffusers.schedulers import DDIMScheduler, DDPMScheduler

    from mpm_paint import LLMConditioner, MPMPaintPipeline, PaintTrainable, collate
    from mpm_train import run_stage

    torch.manual_seed(cfg.seed)
    cond_dim = 64
    conditioner = LLMConditioner(lm, tokenizer, layer=-1, out_dim=cond_dim, max_length=16)
    unet = UNet2DConditionModel(
        sample_size=cfg.image_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64),
        # Cross-attention at half resolution only: full-resolution self-attention would cost most of the
        # CPU time (1,024 tokens at 32 px) for little gain on emoji.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cond_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    # diffusers' classes are not seen as their base classes by mypy; the values are what they say.
    train_scheduler: Any = DDPMScheduler(num_train_timesteps=1000)
    sample_scheduler: Any = DDIMScheduler(num_train_timesteps=1000)
    model = PaintTrainable(unet=unet, conditioner=conditioner, scheduler=train_scheduler)

    def english_only(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return collate(
            [{"image": s["image"], "caption": s["json"]["names"]["en"]} for s in samples],
            resolution=cfg.image_size,
            tokenizer=tokenizer,
            max_length=16,
        )

    stage = english_stage("paint-full", cfg.paint_steps, data_root, cfg)
    _say(
        f"paint (English only): {cfg.paint_steps} steps x {cfg.batch_size}, UNet + projection train, LLM frozen"
    )
    res = run_stage(
        model, stage, collate_fn=english_only, output_dir=_fresh(run_dir), progress=cfg.progress, resume=False
    )
    _say(f"paint: loss {res.losses[0]:.3f} -> {res.final_loss:.3f}, {res.samples_per_s:.1f} samples/s")
    pipe: Any = MPMPaintPipeline(unet=model.unet, scheduler=sample_scheduler, conditioner=model.conditioner)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def evaluate(vlm: Any, pipe: Any | None, data_root: Path, cfg: DemoConfig, model_name: str) -> list[Any]:
    """Step 5: every task in every language through mpm-bench's protocols."""
    from mpm.adapters import PipelinePainter, VLMCaptioner, VLMScorer
    from mpm_bench import load_emojicap, run_captioning, run_classification, run_text_to_image

    test = load_emojicap(data_root, cfg.eval_split, langs=cfg.langs, limit=cfg.eval_items)
    scorer = VLMScorer(vlm, prompt=PROMPT)
    _say(
        f"eval {model_name}: zero-shot classification among {cfg.num_candidates} names, "
        f"{len(test)} {cfg.eval_split} emoji x {len(cfg.langs)} languages"
    )
    results = run_classification(
        scorer,
        test,
        list(cfg.langs),
        num_candidates=cfg.num_candidates,
        seed=cfg.seed,
        model_name=model_name,
        dataset_name=f"emojicap/{cfg.eval_split}",
    )
    _say(f"eval {model_name}: English captioning of {len(test)} {cfg.eval_split} emoji")
    results += run_captioning(
        VLMCaptioner(vlm),
        test,
        ["en"],
        prompts={"en": "What is this?"},
        fidelity=True,
        model_name=model_name,
        dataset_name=f"emojicap/{cfg.eval_split}",
    )
    if pipe is not None:
        items = test[: cfg.paint_items]
        _say(f"eval {model_name}: text-to-image of {len(items)} emoji per language, judged by the chat model")
        painter = PipelinePainter(
            pipe, num_inference_steps=cfg.paint_inference_steps, height=cfg.image_size, width=cfg.image_size
        )
        results += run_text_to_image(
            painter,
            items,
            list(cfg.langs),
            judge=scorer,
            judge_lang="en",
            num_candidates=min(cfg.num_candidates, len(items)),
            seed=cfg.seed,
            model_name=model_name,
            dataset_name=f"emojicap/{cfg.eval_split}",
        )
    return results


def save_sample_grid(pipe: Any, cfg: DemoConfig, data_root: Path, path: Path) -> Path:
    """A PNG grid: rows = languages, columns = test emoji, painted from the name in that language."""
    from PIL import Image

    from mpm_bench import load_emojicap

    items = load_emojicap(data_root, cfg.eval_split, langs=cfg.langs, limit=min(cfg.paint_items, 6))
    s = cfg.image_size
    grid = Image.new("RGB", ((len(items) + 1) * s, (len(cfg.langs) + 1) * s), "white")
    for j, ex in enumerate(items):
        grid.paste(ex.image.convert("RGB").resize((s, s)), ((j + 1) * s, 0))
    for i, lang in enumerate(cfg.langs):
        gen = torch.Generator().manual_seed(cfg.seed)
        out = pipe(
            [ex.names[lang] for ex in items],
            num_inference_steps=cfg.paint_inference_steps,
            guidance_scale=3.0,
            height=s,
            width=s,
            generator=gen,
        )
        for j, im in enumerate(out.images):
            grid.paste(im, ((j + 1) * s, (i + 1) * s))
    grid = grid.resize((grid.width * 2, grid.height * 2), Image.Resampling.NEAREST)
    grid.save(path)
    return path


# ------------------------------------------------------------------------------------------------
def run_demo(
    cfg: DemoConfig,
    *,
    load_lm: Callable[[str], tuple[Any, Any]] | None = None,
) -> DemoResult:
    """Run the whole demo. ``load_lm(name) -> (model, tokenizer)`` defaults to the offline zoo
    (tests pass a loader of tiny random models)."""
    from mpm_bench import Leaderboard, RandomBaseline, load_emojicap, run_classification

    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if load_lm is None:
        from mpm.zoo import load_causal_lm

        load_lm = load_causal_lm

    data_root = build_data(cfg)
    results: list[Any] = []
    alignment: dict[str, dict[str, float]] = {}
    files: dict[str, Path] = {}
    pivots = [cfg.pivot] + ([cfg.ablation] if cfg.ablation else [])
    for i, name in enumerate(pivots):
        _say(f"pivot {name}: loading from the offline zoo")
        lm, tok = load_lm(name)
        alignment[name] = measure_alignment(lm, tok, data_root, cfg, name)
        vlm = train_chat(lm, tok, data_root, cfg, out / "runs" / name / "chat-align")
        pipe = train_paint(lm, tok, data_root, cfg, out / "runs" / name / "paint") if i == 0 else None
        if pipe is not None:
            files["paint_grid"] = save_sample_grid(pipe, cfg, data_root, out / f"paint-{name}.png")
        results += evaluate(vlm, pipe, data_root, cfg, f"mpm-{name}")
        del vlm, pipe, lm

    test = load_emojicap(data_root, cfg.eval_split, langs=cfg.langs, limit=cfg.eval_items)
    results += run_classification(
        RandomBaseline(seed=cfg.seed),
        test,
        list(cfg.langs),
        num_candidates=cfg.num_candidates,
        seed=cfg.seed,
        model_name="random",
        dataset_name=f"emojicap/{cfg.eval_split}",
    )
    board = Leaderboard(results)
    files.update(board.write(out / "board"))
    # {model: {lang: acc@1 / English acc@1}}, models without an English score left out
    transfer = {m: r for m, r in board.transfer("classification", "acc@1").items() if r}
    summary = {
        "config": cfg.to_dict(),
        "alignment_en_to_x_p1": alignment,
        "transfer_ratio_acc@1": transfer,
        "elapsed_s": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    files["summary"] = out / "summary.json"

    print()
    print(board.to_markdown())
    print()
    _say(
        "transfer ratio (classification acc@1, language / English) next to the pivot's alignment (en->X P@1):"
    )
    for name in pivots:
        ratios = transfer.get(f"mpm-{name}", {})
        print(
            "  "
            + name
            + ": "
            + ", ".join(
                f"{lang} {ratios.get(lang, float('nan')):.2f} (align {alignment[name].get(lang, float('nan')):.2f})"
                for lang in cfg.langs
                if lang != "en"
            )
        )
    elapsed = time.perf_counter() - t0
    _say(
        f"done in {elapsed:.0f} s; outputs in {out}: "
        + ", ".join(sorted(str(p.name) for p in files.values()))
    )
    return DemoResult(
        out_dir=out, results=results, alignment=alignment, transfer=transfer, files=files, elapsed_s=elapsed
    )


def _run_cli(args: argparse.Namespace) -> int:
    cfg = DemoConfig()
    overrides = {
        k: v
        for k, v in {
            "out_dir": args.out,
            "pivot": args.pivot,
            "ablation": args.ablation,
            "emoji_limit": args.limit,
            "chat_steps": args.chat_steps,
            "paint_steps": args.paint_steps,
            "eval_items": args.eval_items,
            "image_size": args.image_size,
            "eval_split": args.eval_split,
        }.items()
        if v is not None
    }
    if args.langs:
        overrides["langs"] = tuple(x.strip() for x in args.langs.split(",") if x.strip())
    if args.no_ablation:
        overrides["ablation"] = None
    cfg = replace(cfg, **overrides)
    run_demo(cfg)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: an end-to-end MPM run on EmojiCap with the packaged pivot LLM",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", help="output directory (default outputs/demo)")
    p.add_argument("--pivot", help="zoo name of the multilingual pivot (default gemma3-270m)")
    p.add_argument("--ablation", help="zoo name of an English-only pivot to compare with, e.g. smollm2-135m")
    p.add_argument("--no-ablation", action="store_true", help="skip the ablation pivot")
    p.add_argument("--langs", help="comma-separated language codes (default en,zh,de,fr,es,ja,ru,ar)")
    p.add_argument("--limit", type=int, help="how many emoji to render (default 600)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--chat-steps", type=int)
    p.add_argument("--paint-steps", type=int)
    p.add_argument("--eval-items", type=int)
    p.add_argument(
        "--eval-split",
        choices=["train", "val", "test"],
        help="test (default): unseen emoji; train: the emoji trained on in English, asked in every language",
    )
    p.set_defaults(func=_run_cli)
