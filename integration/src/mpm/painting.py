"""The paint part of the recipe: a UNet conditioned on the pivot's cached states of English names.

The pivot space of the reproduction is one pooled vector per name: the name inside a template
(``'"{text}" in English is "'``), the last token's hidden state at one layer of the frozen pivot
(:func:`pivot_states`, cached on disk). The paint model learns to draw an emoji from that vector of
its **English** name only; painting "in language X" feeds the same vector of the name in X,
zero-shot. Paintings are judged by :func:`judge_paintings`: nearest neighbour among candidate
concepts in an image-embedding space (frozen EfficientNet-Lite0 features of clean renders during
development, :func:`efficientnet_embedder`; the contrastive head once it exists).

    states = pivot_states(lm, tok, names, spec=cfg.paint.conditioning, model_name="gemma3-270m")
    paintings = paint_states(model, pipe, states_x, ...)
    correct = judge_paintings(paintings, embed_images, candidate_embeddings, candidates, targets)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "STATES_CACHE_VERSION",
    "PivotStates",
    "RenderJudge",
    "StatePainter",
    "candidate_sets",
    "efficientnet_embedder",
    "judge_paintings",
    "paint_from_states",
    "paint_grid",
    "pivot_states",
    "recipe_painter",
    "recipe_states",
    "resolve_paint_space",
    "states_cache_key",
    "train_paint",
]

STATES_CACHE_VERSION = 1
ImageEmbedder = Callable[[list[Any]], torch.Tensor]


# ------------------------------------------------------------------------------------------------
# the pivot's cached states
# ------------------------------------------------------------------------------------------------
def states_cache_key(model_name: str, template: str, layer: int, pooling: str, texts: Sequence[str]) -> str:
    """The cache key of a set of pivot states: a hash of everything they depend on."""
    h = hashlib.sha256()
    payload = {
        "v": STATES_CACHE_VERSION,
        "model": model_name,
        "template": template,
        "layer": layer,
        "pooling": pooling,
        "texts": list(texts),
    }
    h.update(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8"))
    return h.hexdigest()[:24]


def _cache_dir(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get("MPM_CACHE") or str(Path.home() / ".cache" / "mpm")
    return Path(root) / "pivot-states"


def pivot_states(
    lm: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    model_name: str,
    template: str = '"{text}" in English is "',
    layer: int = 16,
    pooling: str = "last",
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """``[N, D]`` pooled hidden states of ``texts`` at ``layer`` of the frozen pivot, cached on disk.

    Computed with ``mpm_align.TransformersEncoder`` (the same function the contrastive head is trained
    against), stored as ``<cache_dir>/<key>.safetensors`` where the key hashes the model name, template,
    layer, pooling and texts (:func:`states_cache_key`); ``cache_dir`` defaults to
    ``$MPM_CACHE/pivot-states`` (``~/.cache/mpm/pivot-states``). A second call with the same arguments
    reads the file and runs no model. Duplicate texts are encoded once.
    """
    from safetensors.torch import load_file, save_file

    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("pivot_states got no texts")
    unique = sorted(set(texts))
    key = states_cache_key(model_name, template, layer, pooling, unique)
    path = _cache_dir(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        table = load_file(str(path))["states"]
    else:
        from mpm_align import TransformersEncoder

        enc = TransformersEncoder(lm, tokenizer, pooling=pooling, template=template, progress=False)
        table = enc.encode(unique, layers=[layer], batch_size=batch_size)[layer].float().contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        save_file({"states": table}, str(tmp), metadata={"model": model_name, "layer": str(layer)})
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    index = {t: i for i, t in enumerate(unique)}
    return table[torch.tensor([index[t] for t in texts])]


class PivotStates:
    """``texts -> [N, D]`` pivot states with fixed settings, memoised in memory.

    :meth:`prefetch` computes (or reads from the disk cache, :func:`pivot_states`) every text a stage
    will need, once; a call with a text not prefetched computes it on the spot (no disk write).
    Used by the paint collate (training on English names) and the painter (names in any language).
    """

    def __init__(
        self,
        lm: Any,
        tokenizer: Any,
        *,
        model_name: str,
        template: str,
        layer: int,
        pooling: str = "last",
        cache_dir: str | Path | None = None,
    ) -> None:
        self.lm = lm
        self.tokenizer = tokenizer
        n_layers = _num_hidden_layers(lm)
        if not -(n_layers + 1) <= layer <= n_layers:
            raise ValueError(
                f"paint.conditioning.layer={layer}: the pivot has hidden states 0..{n_layers} "
                f"(or -{n_layers + 1}..-1)"
            )
        self.kwargs: dict[str, Any] = {
            "model_name": model_name,
            "template": template,
            "layer": layer % (n_layers + 1),
            "pooling": pooling,
            "cache_dir": cache_dir,
        }
        self.memo: dict[str, torch.Tensor] = {}

    def prefetch(self, texts: Sequence[str]) -> PivotStates:
        """Compute (or read from the disk cache) the states of ``texts`` and keep them in memory."""
        unique = sorted({str(t) for t in texts} - set(self.memo))
        if unique:
            table = pivot_states(self.lm, self.tokenizer, unique, **self.kwargs)
            self.memo.update(zip(unique, table))
        return self

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = [t for t in texts if t not in self.memo]
        if missing:
            self.prefetch(missing)
        return torch.stack([self.memo[t] for t in texts])


def _num_hidden_layers(lm: Any) -> int:
    config = getattr(lm, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    n = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if n is None:
        raise ValueError(f"cannot tell how many layers {type(lm).__name__} has (no num_hidden_layers)")
    return int(n)


# ------------------------------------------------------------------------------------------------
# painting
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def paint_from_states(
    model: Any,
    pipe: Any,
    states: torch.Tensor,
    *,
    num_inference_steps: int = 20,
    guidance_scale: float = 3.0,
    resolution: int,
    seed: int = 0,
    batch_size: int = 64,
) -> list[Any]:
    """PIL paintings from pivot states ``[N, D]`` with a paint model on a :class:`mpm_paint.StateConditioner`.

    ``model`` is the ``PaintTrainable`` (its conditioner projects the states), ``pipe`` its sampling
    pipeline; the negative branch of classifier-free guidance is the all-zero conditioning.
    """
    out: list[Any] = []
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(states), batch_size):
        cond = model.conditioner(states[start : start + batch_size])
        result = pipe(
            prompt_embeds=cond,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=resolution,
            width=resolution,
            generator=gen,
        )
        out.extend(result.images)
    return out


class StatePainter:
    """``mpm_bench.Painter``: a name in any language -> its pivot state -> a painting.

    Args:
        model: the ``PaintTrainable`` on a ``StateConditioner``.
        pipe: its sampling pipeline (``model.to_pipeline(...)``).
        states: ``texts -> [N, D]`` pivot states (e.g. :func:`pivot_states` with its arguments bound).
        resolution, num_inference_steps, guidance_scale: sampling settings.
    """

    def __init__(
        self,
        model: Any,
        pipe: Any,
        states: Callable[[list[str]], torch.Tensor],
        *,
        resolution: int,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
    ) -> None:
        self.model = model
        self.pipe = pipe
        self.states = states
        self.resolution = resolution
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale

    def paint(self, prompts: Sequence[str], lang: str, seed: int) -> list[Any]:
        """One painting per prompt (``lang`` is not needed: the pivot state carries the language)."""
        return paint_from_states(
            self.model,
            self.pipe,
            self.states(list(prompts)),
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            resolution=self.resolution,
            seed=seed,
        )


# ------------------------------------------------------------------------------------------------
# judging
# ------------------------------------------------------------------------------------------------
class RenderJudge:
    """``mpm_bench.Scorer``: how much a painting looks like each candidate concept's clean render.

    The score of (painting, name) is the cosine similarity of the painting's embedding and the
    embedding of the reference image of ``name`` (``references``), in ``embed_images``' space. With
    ``run_text_to_image(..., judge=RenderJudge(...), judge_lang="en")`` a painting is recognised when
    its own concept's render is its nearest among the candidates'.
    """

    def __init__(self, embed_images: ImageEmbedder, references: Mapping[str, Any]) -> None:
        if not references:
            raise ValueError("RenderJudge needs at least one reference image")
        self.embed_images = embed_images
        self.names = list(references)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.reference_embeddings = torch.nn.functional.normalize(
            embed_images(list(references.values())).float(), dim=-1
        )
        self.name = "render-nn"

    @torch.no_grad()
    def score(self, images: Sequence[Any], texts: Sequence[str]) -> Any:
        """``[len(images), len(texts)]`` cosine similarities (every text must name a reference)."""
        missing = [t for t in texts if t not in self.index]
        if missing:
            raise KeyError(
                f"no reference image for {missing[:3]} (RenderJudge knows {len(self.names)} names)"
            )
        emb = torch.nn.functional.normalize(self.embed_images(list(images)).float(), dim=-1)
        refs = self.reference_embeddings[torch.tensor([self.index[t] for t in texts])]
        return (emb @ refs.T).numpy()

    def score_candidates(self, images: Sequence[Any], candidates: Sequence[Sequence[str]]) -> list[Any]:
        """Per image, the scores of its own candidates (one embedding pass for all images)."""
        emb = torch.nn.functional.normalize(self.embed_images(list(images)).float(), dim=-1)
        out = []
        for e, cands in zip(emb, candidates):
            refs = self.reference_embeddings[torch.tensor([self.index[t] for t in cands])]
            out.append((refs @ e).numpy())
        return out


def candidate_sets(n: int, k: int, *, seed: int = 0) -> list[list[int]]:
    """For each of ``n`` items, ``k`` candidate item indices: itself plus ``k - 1`` others, shuffled."""
    if n < 2:
        raise ValueError(f"judging needs at least 2 items, got {n}")
    k = min(k, n)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        others = rng.sample([j for j in range(n) if j != i], k - 1)
        row = [i, *others]
        rng.shuffle(row)
        out.append(row)
    return out


@torch.no_grad()
def judge_paintings(
    paintings: Sequence[Any],
    embed_images: ImageEmbedder,
    candidate_embeddings: torch.Tensor,
    candidates: Sequence[Sequence[int]],
    targets: Sequence[int],
) -> list[bool]:
    """Is each painting recognised as its concept? Nearest candidate by cosine similarity.

    Args:
        paintings: the images (PIL), one per item.
        embed_images: ``list[PIL] -> Tensor[N, E]`` (frozen image features, or the contrastive head's
            image side).
        candidate_embeddings: ``[C, E]``, one row per concept, in the same space (clean renders' features,
            or the contrastive head's name states).
        candidates: per painting, the rows of ``candidate_embeddings`` it is judged among.
        targets: per painting, the row of its own concept (must be among its candidates).

    Returns one bool per painting: its most similar candidate is its own concept.
    """
    if not (len(paintings) == len(candidates) == len(targets)):
        raise ValueError(
            f"{len(paintings)} paintings, {len(candidates)} candidate lists, {len(targets)} targets: give one each"
        )
    emb = torch.nn.functional.normalize(embed_images(list(paintings)).float(), dim=-1)
    cand = torch.nn.functional.normalize(candidate_embeddings.float(), dim=-1)
    out = []
    for e, row, t in zip(emb, candidates, targets):
        if t not in row:
            raise ValueError(f"target {t} is not among its candidates {list(row)}")
        sims = cand[list(row)] @ e
        out.append(int(row[int(sims.argmax())]) == int(t))
    return out


def efficientnet_embedder(*, image_size: int = 224, batch_size: int = 64) -> ImageEmbedder:
    """``list[PIL] -> [N, 1280]``: frozen EfficientNet-Lite0 (the zoo's ImageNet weights) pooled features.

    Images are composited onto white, upscaled to ``image_size`` and normalised as the weights expect.
    """
    from mpm import zoo
    from mpm_vision import create_encoder

    encoder = create_encoder(
        "efficientnet_lite0", checkpoint=str(zoo.zoo_path("efficientnet-lite0")), image_size=image_size
    ).eval()

    @torch.no_grad()
    def embed(images: list[Any]) -> torch.Tensor:
        rows = []
        for start in range(0, len(images), batch_size):
            chunk = [_rgb(im) for im in images[start : start + batch_size]]
            rows.append(encoder.pooled(encoder.preprocess(chunk)))
        return torch.cat(rows)

    return embed


def _rgb(image: Any) -> Any:
    from PIL import Image

    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


# ------------------------------------------------------------------------------------------------
# the grid
# ------------------------------------------------------------------------------------------------
def paint_grid(
    references: Sequence[Any],
    rows: Mapping[str, Sequence[Any]],
    path: str | Path,
    *,
    cell: int = 64,
    label_width: int = 40,
    title: str | None = None,
) -> Path:
    """A PNG: the reference emoji on top, then one row per language (labelled with its code) of paintings.

    ``rows`` maps a language code to one painting per reference (columns = concepts).
    """
    from PIL import Image, ImageDraw

    n = len(references)
    for lang, images in rows.items():
        if len(images) != n:
            raise ValueError(f"row {lang!r} has {len(images)} paintings for {n} references")
    top = 16 if title else 0
    width = label_width + n * cell
    if title:  # wide enough for the title
        width = max(width, int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title)) + 8)
    grid = Image.new("RGB", (width, top + (len(rows) + 1) * cell), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((4, 2), title, fill="black")
    labels = ["ref", *rows]
    images_by_row = [list(references), *rows.values()]
    for r, (label, images) in enumerate(zip(labels, images_by_row)):
        y = top + r * cell
        draw.text((4, y + cell // 2 - 6), label, fill="black")
        for c, im in enumerate(images):
            tile = _rgb(im).resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(tile, (label_width + c * cell, y))
    draw.line([(label_width, top + cell), (grid.width, top + cell)], fill="gray")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


# ------------------------------------------------------------------------------------------------
# the recipe's paint stage and evaluation
# ------------------------------------------------------------------------------------------------
STATES_DIR = "pivot-states"


def resolve_paint_space(cfg: Any, lm: Any, tokenizer: Any, data_root: str | Path) -> Any:
    """``cfg`` with ``paint.conditioning``'s template, pooling and layer set to the recipe's chosen pivot
    space when ``paint.conditioning.space = "pivot"`` (unchanged otherwise).

    The space comes from :func:`mpm.contrastive.choose_pivot_space` (read from the run's
    ``alignment.json`` once stage 1a has chosen it), so the paint stage's config hash holds the
    layer it was trained on. ``lm`` must be the frozen pivot (no chat adapters).
    """
    import dataclasses

    c = cfg.paint.conditioning
    if c.source != "states" or c.space != "pivot" or not cfg.stages_of("paint"):
        return cfg
    from mpm.contrastive import choose_pivot_space

    space = choose_pivot_space(lm, tokenizer, cfg, Path(data_root), cfg.model.lm.name)
    cond = dataclasses.replace(c, template=space.template, pooling=space.pooling, layer=space.layer)
    return dataclasses.replace(cfg, paint=dataclasses.replace(cfg.paint, conditioning=cond))


def recipe_states(cfg: Any, lm: Any, tokenizer: Any, *, prefetch: bool = True) -> Any:
    """The pivot states of a recipe's paint model (``None`` when it conditions on the live LM): a
    ``texts -> [N, D]`` callable with ``prefetch(texts)``.

    ``paint.conditioning.space = "pivot"`` (after :func:`resolve_paint_space`): stage 1a's
    :class:`mpm.contrastive.PivotStates`, the one cache in ``$MPM_CACHE/pivot-states`` that the
    contrastive head and the judge read too. ``fixed``: a :class:`PivotStates` of the given settings,
    cached in ``<run.out_dir>/pivot-states``. With ``prefetch``, every name the paint stages train on
    (each mix entry's split, style and languages) is computed once, or read from the cache.
    """
    c = cfg.paint.conditioning
    if c.source != "states":
        return None
    states: Any
    if c.space == "pivot":
        from mpm.contrastive import PivotSpace
        from mpm.contrastive import PivotStates as SharedStates

        states = SharedStates(
            lm, tokenizer, PivotSpace(c.template, c.pooling, c.layer), name=cfg.model.lm.name
        )
    else:
        states = PivotStates(
            lm,
            tokenizer,
            model_name=cfg.model.lm.name,
            template=c.template,
            layer=c.layer,
            pooling=c.pooling,
            cache_dir=Path(cfg.run.out_dir) / STATES_DIR,
        )
    if prefetch:
        from mpm_bench import load_emojicap

        texts: list[str] = []
        for stage in cfg.stages_of("paint").values():
            for entry in stage.mix:
                examples = load_emojicap(
                    cfg.data_root, entry.split, langs=list(entry.langs), styles=entry.style
                )
                texts += [ex.names[lang] for ex in examples for lang in entry.langs]
        if texts:
            states.prefetch(texts)
    return states


def recipe_painter(run: Any, *, num_inference_steps: int, guidance_scale: float) -> Any:
    """The ``mpm_bench.Painter`` of a trained run's paint model (pivot states or live-LM prompts)."""
    from mpm.adapters import PipelinePainter
    from mpm.builders import paint_resolution

    res = paint_resolution(run.config)
    pipe = run.pipeline()
    if run.paint_states is None:
        return PipelinePainter(
            pipe,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=res,
            width=res,
        )
    return StatePainter(
        run.paint,
        pipe,
        run.paint_states,
        resolution=res,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
    )


def train_paint(
    cfg: Any,
    lm: Any,
    tokenizer: Any,
    *,
    stages_dir: str | Path,
    if_changed: str = "error",
    say: Callable[[str], None] = print,
    finished: set[str] | None = None,
) -> tuple[Any, PivotStates | None, list[Any]]:
    """Build the paint model and run its stages with mpm-train's ``run_plan`` (resumable).

    Returns ``(PaintTrainable in eval mode, its pivot states or None, the stage results)``.
    """
    from mpm.builders import build_paint, build_plan, paint_resolution, plan_context
    from mpm.data import PaintCollate
    from mpm_train import run_plan

    res = paint_resolution(cfg)
    model = build_paint(cfg.paint, lm, tokenizer, resolution=res, seed=cfg.run.seed)
    states = recipe_states(cfg, lm, tokenizer)
    on = "cached pivot states" if states is not None else "the frozen LM"
    for name, stage in cfg.stages_of("paint").items():
        steps = stage.train["steps"]
        batch = stage.train.get("batch_size", 8)
        done = " (finished earlier)" if finished and name in finished else ""
        say(f"paint stage {name!r}: {res}px UNet on {on}, {steps} steps x {batch}{done}")
    plan = run_plan(
        model,
        build_plan(cfg, "paint"),
        collate_fn=PaintCollate(
            tokenizer=tokenizer, resolution=res, max_length=cfg.paint.conditioning.max_length, states=states
        ),
        output_dir=Path(stages_dir),
        context=plan_context(cfg, "paint"),
        if_changed=if_changed,
        progress=cfg.run.progress,
    )
    model.eval()
    return model, states, list(plan.stages)
