"""Stage 1a of the MPM recipe, top to bottom: the pivot space, the contrastive head, its evaluation.

    space = choose_pivot_space(lm, tok, cfg, data_root, name)   # template, pooling, layer (on val)
    states = PivotStates(lm, tok, space, name=name)              # cached pivot states of any text
    heads = train_contrastive(cfg, states, data_root)            # {"en": head, "zh": native head...}
    results = evaluate_contrastive(cfg, heads, states, data_root, label)

1. **Pivot space** (:func:`choose_pivot_space`): the names of the ``align.split`` concepts (``val``,
   never an evaluation set) in every language, through each template and pooling at every layer;
   the (template, pooling, layer) with the best mean en->X CSLS P@1 wins. Its per-language P@1 is
   the "pivot alignment" axis of the board's scatter.
2. **States** (:class:`PivotStates`): the pivot's hidden state of a text in that space, computed once
   and kept on disk (``$MPM_CACHE/pivot-states``), so training and evaluation never run the LLM twice
   on a name.
3. **Training** (:func:`train_contrastive`): the frozen encoder's pooled features (cached by
   ``mpm_vision.FeatureCache``) of each training concept, clean, in ``views`` augmented views and in
   ``style_views`` style views (:class:`StyleView`: outlines thinned away, hue rotated), are mapped by
   a head onto the pivot's state of the concept's **English** name (InfoNCE against all training
   names). With ``native_langs``, one more head per language learns that language's names
   instead (the native-data comparison). Each head is saved in ``<run>/stages/contrastive/<lang>``
   with the settings it was trained with; a re-run with the same settings loads it.
4. **Evaluation** (:func:`evaluate_contrastive`): mpm-bench classification on the named evaluation
   sets, in every language, among ``eval.num_candidates`` names and among all names of the set: an
   image's score for a name is its cosine to that name's state (centred on the language's mean,
   optionally CSLS-corrected).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mpm.config import RecipeConfig

__all__ = [
    "ContrastiveScorer",
    "PivotSpace",
    "PivotStates",
    "choose_pivot_space",
    "evaluate_contrastive",
    "train_contrastive",
]

STAGE_DIR = "contrastive"


def say(msg: str) -> None:
    from mpm.recipe import say as _say

    _say(msg)


def _cache_root() -> Path:
    from mpm import zoo

    return zoo.cache_dir()


def _lm_fingerprint(lm: Any, name: str) -> str:
    """The model's name, its config and a digest of its input embeddings (tiny random LMs differ)."""
    emb = lm.get_input_embeddings().weight.detach()
    h = hashlib.sha256()
    h.update(name.encode())
    h.update(json.dumps(lm.config.to_dict(), sort_keys=True, default=str).encode())
    h.update(emb[: min(64, emb.shape[0])].float().contiguous().numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# 1. the pivot space
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PivotSpace:
    """Where a pivot's text states are read: ``template`` around the text, ``pooling``, ``layer``
    (``hidden_states`` index), with the en->X CSLS P@1 of each language that chose it."""

    template: str
    pooling: str
    layer: int
    p1: dict[str, float] = dataclasses.field(default_factory=dict)
    n: int = 0
    table: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _encoder(lm: Any, tok: Any, template: str, pooling: str) -> Any:
    from mpm_align import TransformersEncoder

    return TransformersEncoder(
        lm, tok, pooling=pooling, template=None if template == "{text}" else template, progress=False
    )


def choose_pivot_space(lm: Any, tokenizer: Any, cfg: RecipeConfig, data_root: Path, name: str) -> PivotSpace:
    """Sweep ``align.templates`` x ``align.poolings`` x layers on the ``align.split`` names; keep the best
    mean en->X CSLS P@1 (cached in ``<run>/alignment.json`` under its settings)."""
    from mpm_align import retrieval_accuracy
    from mpm_bench import load_emojicap

    al = cfg.align
    langs = [x for x in cfg.run.langs if x != "en"]
    if not al.enabled or not langs or "en" not in cfg.run.langs:
        return PivotSpace(al.template, al.pooling, al.layer)
    path = Path(cfg.run.out_dir) / "alignment.json"
    settings = {
        "lm": cfg.model.lm.to_dict(),
        "align": al.to_dict(),
        "langs": list(cfg.run.langs),
        "data": str(data_root),
    }
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("settings") == settings and "space" in stored:
            return PivotSpace(**stored["space"])
    examples = load_emojicap(data_root, al.split, langs=cfg.run.langs, limit=al.items or None)
    if len(examples) < 2:
        from mpm.config import ConfigError

        raise ConfigError(
            f"align.split: EmojiCap split {al.split!r} holds {len(examples)} concept(s) with "
            f"data.limit={cfg.data.limit}; retrieval needs 2: raise data.limit or use another split"
        )
    t0 = time.perf_counter()
    table: list[dict[str, Any]] = []
    for template in al.templates:
        enc = _encoder(lm, tokenizer, template, al.poolings[0])
        states = {
            lang: enc.encode_multi(
                [ex.names[lang] for ex in examples], poolings=list(al.poolings), batch_size=64
            )
            for lang in cfg.run.langs
        }
        for pooling in al.poolings:
            for layer in states["en"][pooling]:
                p1 = {
                    x: retrieval_accuracy(
                        states["en"][pooling][layer], states[x][pooling][layer], method="csls"
                    )["x2y"]
                    for x in langs
                }
                table.append(
                    {"template": template, "pooling": pooling, "layer": int(layer), "p1": p1,
                     "mean": sum(p1.values()) / len(p1)}
                )  # fmt: skip
    best = max(table, key=lambda r: r["mean"])
    space = PivotSpace(best["template"], best["pooling"], best["layer"], best["p1"], len(examples), table)
    say(
        f"pivot space of {name}: template {space.template!r}, {space.pooling} pooling, layer {space.layer} "
        f"(best mean en->X CSLS P@1 {best['mean']:.2f} of {len(table)} settings, n={len(examples)} "
        f"{al.split} names, {time.perf_counter() - t0:.0f} s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in space.p1.items())
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(
        json.dumps(
            {"settings": settings, "space": space.to_dict(), "layer": space.layer, "p1": space.p1},
            indent=1,
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    os.replace(tmp, path)
    return space


# ------------------------------------------------------------------------------------------------
# 2. cached pivot states
# ------------------------------------------------------------------------------------------------
class PivotStates:
    """The pivot's state of any text in one :class:`PivotSpace`, computed once and cached on disk.

    Args:
        lm, tokenizer: the frozen pivot.
        space: template, pooling and layer.
        name: the pivot's name (part of the cache key, with its config and an embedding digest).
        cache_dir: default ``$MPM_CACHE/pivot-states``.
    """

    def __init__(
        self,
        lm: Any,
        tokenizer: Any,
        space: PivotSpace,
        *,
        name: str,
        cache_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
    ) -> None:
        self.space = space
        self.name = name
        self.batch_size = batch_size
        self._enc = _encoder(lm, tokenizer, space.template, space.pooling)
        key = json.dumps([_lm_fingerprint(lm, name), space.template, space.pooling, space.layer])
        self.fingerprint = hashlib.sha256(key.encode()).hexdigest()
        self.directory = Path(cache_dir or _cache_root() / "pivot-states") / self.fingerprint[:16]
        self.directory.mkdir(parents=True, exist_ok=True)
        self._rows: dict[str, torch.Tensor] = {}
        self.computed = 0
        self.seconds = 0.0
        self._scan()

    def _scan(self) -> None:
        from safetensors import safe_open

        for path in sorted(self.directory.glob("chunk-*.safetensors")):
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
                    if meta.get("fingerprint") != self.fingerprint:
                        continue
                    states = f.get_tensor("states")
            except Exception:  # a torn or foreign file: ignore it, its texts are recomputed
                continue
            for i, text in enumerate(json.loads(meta["texts"])):
                self._rows[text] = states[i]

    def __contains__(self, text: object) -> bool:
        return text in self._rows

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """Same as :meth:`encode` (the ``texts -> [N, D]`` callable that paint's collate and painter take)."""
        return self.encode(texts)

    def prefetch(self, texts: Sequence[str]) -> PivotStates:
        """Compute (and store) the states of ``texts`` not cached yet, in one batch."""
        if texts:
            self.encode(texts)
        return self

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), D]`` states, computing (and storing) the texts not cached yet."""
        from safetensors.torch import save_file

        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._rows))
        if missing:
            t0 = time.perf_counter()
            got = self._enc.encode(missing, layers=[self.space.layer], batch_size=self.batch_size)
            states = got[self.space.layer].float().contiguous()
            self.seconds += time.perf_counter() - t0
            self.computed += len(missing)
            digest = hashlib.sha256("\n".join(missing).encode()).hexdigest()[:16]
            path = self.directory / f"chunk-{digest}.safetensors"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            meta = {"fingerprint": self.fingerprint, "texts": json.dumps(missing, ensure_ascii=False)}
            save_file({"states": states}, str(tmp), metadata=meta)
            os.replace(tmp, path)
            for text, row in zip(missing, states, strict=True):
                self._rows[text] = row
        if not texts:
            raise ValueError("no texts to encode")
        return torch.stack([self._rows[t] for t in texts])


# ------------------------------------------------------------------------------------------------
# 3. training
# ------------------------------------------------------------------------------------------------
def _feature_cache(cfg: RecipeConfig) -> Any:
    from mpm.builders import build_encoder
    from mpm_vision import FeatureCache

    torch.manual_seed(cfg.run.seed)  # a from-scratch encoder must be the same one on every run
    encoder = build_encoder(cfg.model.encoder).eval()
    return FeatureCache(_cache_root() / "features", encoder, pooled=True, batch_size=32)


class StyleView:
    """A training view aimed at art styles never trained on (an ``mpm_vision.ImageView``).

    ``augmentation(image, seed)`` (mpm-bench's :class:`~mpm_bench.Augmentation`), then PIL's
    ``MaxFilter(max_filter)``, which thins thin dark lines away (OpenMoji outlines its drawings in black;
    Twemoji and Noto do not), then a hue rotation drawn from ``seed``. Deterministic in ``(image,
    seed)``; ``cache_id`` names the augmentation and these settings.

    Chosen on val concepts (``benchmarks/integration/select_style_views.py``): with 4 such views beside
    the 4 usual ones, English among 8 on the val concepts' Twemoji + Noto drawings went 0.576 -> 0.627
    (0.610 with other seeds), the other languages 0.390 -> 0.404; the filter alone or the hue alone
    did not help.
    """

    def __init__(self, augmentation: Any, *, max_filter: int = 3, hue: bool = True) -> None:
        if max_filter < 1 or max_filter % 2 == 0:
            raise ValueError(f"max_filter must be an odd size >= 1, got {max_filter}")
        self.augmentation = augmentation
        self.max_filter = max_filter
        self.hue = hue
        self.cache_id = f"{augmentation.cache_id}+mpm-style/v1/max{max_filter}" + ("+hue" if hue else "")

    def __call__(self, image: Any, seed: int) -> Any:
        import numpy as np
        from PIL import Image, ImageFilter

        out = self.augmentation(image, seed)
        if self.max_filter > 1:
            out = out.filter(ImageFilter.MaxFilter(self.max_filter))
        if self.hue:
            shift = int(np.random.Generator(np.random.PCG64(int(seed) + 1)).integers(0, 256))
            h, s, v = out.convert("HSV").split()
            out = Image.merge("HSV", (h.point(lambda x: (x + shift) % 256), s, v)).convert("RGB")
        return out


def _train_features(
    cfg: RecipeConfig, cache: Any, examples: Sequence[Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of every training concept, clean and in ``views`` training-seed augmentations,
    with the concept index of each row."""
    from mpm_bench import Augmentation
    from mpm_bench.augment import train_seed

    c = cfg.contrastive
    images = [ex.image for ex in examples]
    feats = [cache.features(images)]
    rows = [torch.arange(len(examples))]
    aug = Augmentation()
    style = StyleView(aug)
    for v in range(c.views + c.style_views):  # style views take the seeds after the usual views'
        seeds = [train_seed(f"{c.style}/{ex.meta.get('concept', ex.key)}", v) for ex in examples]
        feats.append(cache.features(images, seeds=seeds, view=aug if v < c.views else style))
        rows.append(torch.arange(len(examples)))
    return torch.cat(feats), torch.cat(rows)


def _head_settings(cfg: RecipeConfig, states: PivotStates, lang: str, n: int) -> dict[str, Any]:
    c = cfg.contrastive
    keys: tuple[str, ...] = (
        "style",
        "views",
        "steps",
        "batch_size",
        "lr",
        "weight_decay",
        "hidden",
        "centre",
    )
    if c.style_views:  # absent at 0, so that heads trained before style views existed stay valid
        keys += ("style_views",)
    return {
        "lang": lang,
        "pivot": states.fingerprint,
        "encoder": cfg.model.encoder.to_dict(),
        "data": cfg.data.to_dict() | {"root": ""},
        "seed": cfg.run.seed,
        "concepts": n,
        **{k: getattr(c, k) for k in keys},
    }


def train_contrastive(
    cfg: RecipeConfig, states: PivotStates, data_root: Path, *, feature_cache: Any = None
) -> dict[str, Any]:
    """Train (or load) the English head and one native head per ``contrastive.native_langs``; returns
    ``{lang: ContrastiveHead}`` and writes each into ``<run>/stages/contrastive/<lang>``."""
    from mpm_bench import load_emojicap
    from mpm_vision.contrastive import ContrastiveHead, ContrastiveHeadConfig, fit_contrastive_head

    c = cfg.contrastive
    langs = list(dict.fromkeys(("en", *c.native_langs)))
    examples = load_emojicap(data_root, "train", langs=langs, styles=c.style)
    cache = feature_cache or _feature_cache(cfg)
    root = Path(cfg.run.out_dir) / "stages" / STAGE_DIR
    heads: dict[str, Any] = {}
    feats: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    for lang in langs:
        out = root / lang
        settings = _head_settings(cfg, states, lang, len(examples))
        done = out / "result.json"
        if done.is_file() and json.loads(done.read_text(encoding="utf-8")).get("settings") == settings:
            heads[lang] = ContrastiveHead.from_pretrained(out)
            say(f"contrastive stage ({lang} names): finished earlier (its head loaded)")
            continue
        if feats is None:
            t0 = time.perf_counter()
            feats, rows = _train_features(cfg, cache, examples)
            say(
                f"contrastive stage: {feats.shape[0]} pooled features of {len(examples)} {c.style} training "
                f"concepts ({c.views} augmented views each"
                + (f", {c.style_views} style views" if c.style_views else "")
                + f" + the clean render) in {time.perf_counter() - t0:.0f} s"
            )
        assert rows is not None
        t0 = time.perf_counter()
        targets = states.encode([ex.names[lang] for ex in examples])
        t_states = time.perf_counter() - t0
        torch.manual_seed(cfg.run.seed)
        head = ContrastiveHead(
            ContrastiveHeadConfig(in_dim=feats.shape[1], out_dim=targets.shape[1], hidden=c.hidden)
        )
        t0 = time.perf_counter()
        losses = fit_contrastive_head(
            head, feats, rows, targets, steps=c.steps, batch_size=c.batch_size, lr=c.lr,
            weight_decay=c.weight_decay, centre=c.centre, seed=cfg.run.seed, progress=cfg.run.progress,
            desc=f"stage 1a ({lang} names)",
        )  # fmt: skip
        t_train = time.perf_counter() - t0
        head.save_pretrained(out)
        result = {
            "settings": settings,
            "losses": losses[:: max(1, len(losses) // 50)],
            "final_loss": losses[-1],
            "seconds": {"states": t_states, "train": t_train},
        }
        tmp = out / ".result.json.tmp"
        tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
        os.replace(tmp, done)
        say(
            f"contrastive stage ({lang} names): loss {losses[0]:.3f} -> {losses[-1]:.3f}, {c.steps} steps "
            f"in {t_train:.0f} s (+{t_states:.0f} s of pivot states)"
        )
        heads[lang] = head
    return heads


# ------------------------------------------------------------------------------------------------
# 4. evaluation
# ------------------------------------------------------------------------------------------------
class ContrastiveScorer:
    """An mpm-bench Scorer (with ``score_candidates``): cosine of the head's image embedding to each
    name's pivot state, centred on ``lang_mean`` and optionally CSLS-corrected against ``reference``
    (training-image embeddings)."""

    def __init__(
        self,
        head: Any,
        feature_cache: Any,
        states: PivotStates,
        *,
        lang_mean: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
        csls_k: int = 0,
        name: str = "contrastive",
    ) -> None:
        self.head = head
        self.cache = feature_cache
        self.states = states
        self.lang_mean = lang_mean
        self.reference = reference
        self.csls_k = csls_k
        self.name = name

    def _texts(self, texts: Sequence[str]) -> torch.Tensor:
        import torch.nn.functional as F

        s = self.states.encode(texts)
        if self.lang_mean is not None:
            s = s - self.lang_mean
        return F.normalize(s, dim=-1)

    def _images(self, images: Sequence[Any]) -> torch.Tensor:
        with torch.inference_mode():
            return self.head(self.cache.features(list(images)))

    def _penalty(self, t: torch.Tensor) -> torch.Tensor:
        from mpm_vision.contrastive import csls_penalty

        if not self.csls_k or self.reference is None:
            return torch.zeros(t.shape[0])
        return csls_penalty(t, self.reference, self.csls_k)

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> Any:
        t = self._texts(texts)
        return (self._images(images) @ t.T - self._penalty(t)[None, :]).numpy()

    def score_candidates(self, images: Sequence[Any], candidates: Sequence[Sequence[str]]) -> list[Any]:
        emb = self._images(images)
        # every distinct candidate once: the pivot encodes the missing ones in one length-sorted batch
        # (per-image calls of 8 texts ran it at half the throughput)
        texts = list(dict.fromkeys(t for cands in candidates for t in cands))
        index = {t: i for i, t in enumerate(texts)}
        table = self._texts(texts)
        penalty = self._penalty(table)
        out = []
        for e, cands in zip(emb, candidates, strict=True):
            rows = torch.tensor([index[t] for t in cands])
            out.append((table[rows] @ e - penalty[rows]).numpy())
        return out


def _eval_set(cfg: RecipeConfig, data_root: Path, spec: str) -> Any:
    from mpm_bench import emojicap_eval_set

    name, _, style = spec.partition(":")
    c = cfg.contrastive
    limit = c.eval_items or None if name != "unseen" else None
    return emojicap_eval_set(
        data_root, name, style=style or None, langs=list(cfg.run.langs), limit=limit, train_style=c.style
    )


def evaluate_contrastive(
    cfg: RecipeConfig,
    heads: dict[str, Any],
    states: PivotStates,
    data_root: Path,
    label: str,
    *,
    feature_cache: Any = None,
) -> list[Any]:
    """Classification results of the English head in every language (model ``<label>``) and of each
    native head in its own language (``<label>-native``) on every ``contrastive.eval_sets`` set."""
    from mpm_bench import load_emojicap, run_classification
    from mpm_bench.tasks import classification_config, config_hash, distractor_languages

    c, ev = cfg.contrastive, cfg.eval
    cache = feature_cache or _feature_cache(cfg)
    langs = list(cfg.run.langs)
    reference = None
    if c.csls_k:
        train = load_emojicap(data_root, "train", langs=["en"], styles=c.style)
        with torch.inference_mode():
            reference = heads["en"](cache.features([ex.image for ex in train]))
    results: list[Any] = []
    for spec in c.eval_sets:
        t0 = time.perf_counter()
        es = _eval_set(cfg, data_root, spec)
        data = es.examples
        cache.features([ex.image for ex in data])  # fill once, in batches
        states.prefetch([ex.names[lang] for ex in data for lang in langs])  # one batch of all names
        n_all = len(data) if c.among_all else 0
        n_cand = min(ev.num_candidates, len(data))
        common_cfg = classification_config(
            [ex.key for ex in data], langs, n_cand, (1, 5), cfg.run.seed, distractor_languages(data), n_all
        )
        common = config_hash(common_cfg)
        for model, pairs in (
            (label, [(lang, heads["en"]) for lang in langs]),
            (f"{label}-native", [(lang, heads[lang]) for lang in c.native_langs if lang in heads]),
        ):
            for lang, head in pairs:
                gallery = list(dict.fromkeys(ex.names[lang] for ex in data))
                mean = states.encode(gallery).mean(0) if c.centre else None
                scorer = ContrastiveScorer(
                    head, cache, states, lang_mean=mean, reference=reference, csls_k=c.csls_k, name=model
                )
                rows = run_classification(
                    scorer, data, [lang], num_candidates=n_cand, seed=cfg.run.seed, model_name=model,
                    dataset_name=es.dataset_name, all_candidates=n_all or False,
                )  # fmt: skip
                # one language per call (each needs its own centring), one board row per set: the
                # candidate sets do not depend on the language, so the all-language config applies
                results += [dataclasses.replace(r, config_hash=common, config=common_cfg) for r in rows]
        say(
            f"eval {label} (contrastive head): {es.dataset_name}, {len(data)} images x {len(langs)} languages "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    return results


def contrastive_judge(
    cfg: RecipeConfig, data_root: Path, *, states: PivotStates | None = None
) -> ContrastiveScorer:
    """The run's English contrastive head as an mpm-bench Scorer (a paint judge: is the painting
    recognised as its concept among candidate names). Loads the frozen pivot, the cached pivot space
    and states, and ``<run>/stages/contrastive/en``; raises ``ConfigError`` when stage 1a has not run.
    ``states``: the run's own :class:`PivotStates` in the chosen space (the paint model's, with
    ``paint.conditioning.space = "pivot"``), so that no second copy of the pivot is loaded."""
    from mpm.builders import build_lm
    from mpm.config import ConfigError
    from mpm_vision.contrastive import ContrastiveHead

    head_dir = Path(cfg.run.out_dir) / "stages" / STAGE_DIR / "en"
    if not (head_dir / "result.json").is_file():
        raise ConfigError(
            f"paint.judge = 'contrastive' needs stage 1a's head in {head_dir}: enable [contrastive]"
        )
    if states is None:
        lm, tok = build_lm(cfg.model.lm, seed=cfg.run.seed)
        space = choose_pivot_space(lm, tok, cfg, data_root, cfg.model.lm.name)
        states = PivotStates(lm, tok, space, name=cfg.model.lm.name)
    return ContrastiveScorer(
        ContrastiveHead.from_pretrained(head_dir), _feature_cache(cfg), states, name="contrastive"
    )
