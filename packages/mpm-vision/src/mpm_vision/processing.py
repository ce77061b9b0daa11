"""Turning samples (images + prompts/answers or conversations) into model inputs.

:class:`ImageProcessor` converts images to pixels; :class:`VisionCollator` tokenises prompts,
expands each image placeholder to the bridge's ``K`` tokens, masks the labels so that only answer
tokens carry loss, and pads. Both hold no model, so they pickle into DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from .interfaces import IGNORE_INDEX, ImagePreprocessing, VisionBatch, VisionLanguageConfig

Segment = tuple[str, bool]  # (text, carries loss)
ImageLike = Any  # PIL.Image.Image | np.ndarray (uint8) | torch.Tensor (uint8)


def _to_pil(image: ImageLike, background: tuple[int, int, int]) -> Image.Image:
    """Convert a PIL image / uint8 array / uint8 tensor of any mode to an RGB PIL image.

    PIL images follow :func:`_pil_to_rgb`: transparent pixels composited onto ``background``
    (emoji and icons are mostly transparent; a plain ``convert("RGB")`` would turn them black),
    16-bit images scaled to 8 bits rather than clipped.
    """
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)
        image = t.numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(
                f"image arrays must be uint8 (0-255), got dtype {image.dtype}; "
                "pass already-normalised float tensors as pixel_values instead"
            )
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
            raise ValueError(
                f"image array must have shape [H, W], [H, W, 3] or [H, W, 4], got {list(image.shape)}"
            )
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, uint8 array or uint8 tensor, got {type(image).__name__}")
    return _pil_to_rgb(image, background)


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _pil_to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any PIL image as 8-bit RGB, by the one conversion rule that training and inference share.

    - 16-bit modes (``I;16*``, and ``I``, how 16-bit PNGs also open) are *scaled*: ``v / 257``
      (0..65535 -> 0..255, rounded; ``I`` is clipped to 0..65535 first). PIL's ``convert`` would
      clip everything above 255 to white. ``F`` is on PIL's 0..255 scale, clipped and rounded.
    - Transparency (an alpha channel, or a ``transparency`` colour/palette entry) is composited
      onto ``background``: a plain ``convert("RGB")`` turns transparent pixels black, which emoji
      and icons are mostly made of.
    - Everything else goes through ``convert("RGB")`` (L, 1, P, CMYK, YCbCr, ...).

    A copy of mpm-train's ``data.to_rgb`` (packages do not import each other);
    ``tests/test_pixel_rule.py`` at the repository root proves the copies agree.
    """
    transparency = image.info.get("transparency")
    if image.mode in _HIGH_DEPTH_MODES:
        values = np.asarray(image).astype(np.float64)
        scaled = values if image.mode == "F" else np.clip(values, 0, 65535) / 257.0
        gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        if isinstance(transparency, int | float) and not isinstance(transparency, bool):
            alpha = np.where(values == transparency, 0, 255).astype(np.uint8)
            image = Image.fromarray(np.stack([gray, alpha], axis=-1), mode="LA")
        else:
            return Image.fromarray(gray, mode="L").convert("RGB")
    elif image.mode == "RGB" and transparency is None:
        return image
    if image.mode in _ALPHA_MODES or transparency is not None:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


class ImageProcessor:
    """Images (PIL, uint8 arrays/tensors; any mode and size) -> normalised ``[B, 3, H, W]`` pixels,
    with timm's eval transform (shortest-edge resize, centre crop, normalise)."""

    def __init__(self, preprocessing: ImagePreprocessing) -> None:
        from timm.data import create_transform

        self.preprocessing = preprocessing
        self._transform = create_transform(
            input_size=(3, *preprocessing.image_size),
            interpolation=preprocessing.interpolation,
            mean=preprocessing.mean,
            std=preprocessing.std,
            crop_pct=1.0,
        )

    def __call__(self, images: Any) -> torch.Tensor:
        images = as_image_list(images)
        if not images:
            raise ValueError("no images to preprocess (got an empty list)")
        bg = tuple(self.preprocessing.background)
        pixels = []
        for i, img in enumerate(images):
            pil = _to_pil(img, bg)  # type: ignore[arg-type]
            if pil.width == 0 or pil.height == 0:  # the resize would divide by zero
                raise EmptyImageError(i, pil.width, pil.height)
            pixels.append(self._transform(pil))
        return torch.stack(pixels)


class EmptyImageError(ValueError):
    """An image with no pixels (width or height 0); ``index`` is its position in the batch."""

    def __init__(self, index: int, width: int, height: int, *, where: str | None = None) -> None:
        self.index, self.width, self.height = index, width, height
        super().__init__(
            f"{where or f'image {index}'} is empty ({width}x{height} pixels); every image needs at least 1x1"
        )


def as_image_list(images: Any) -> list[Any]:
    """``None`` -> ``[]``; one image -> ``[image]``; a sequence of images -> a list."""
    if images is None:
        return []
    if isinstance(images, (Image.Image, np.ndarray)) or (
        isinstance(images, torch.Tensor) and images.ndim == 3
    ):
        return [images]
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images.unbind(0))
    if isinstance(images, (str, bytes)):
        raise TypeError("images must be PIL images or uint8 arrays, not paths or strings")
    return list(images)


class VisionCollator:
    """Builds :class:`~mpm_vision.interfaces.VisionBatch` es from samples.

    A sample is a mapping with ``"image"`` or ``"images"`` (one image, a list, or absent) -- or, for
    training on stored features of a frozen encoder, ``"image_features"`` (one ``[N, C]`` tensor, a
    ``[num_images, N, C]`` tensor or a list) -- and either
    ``"prompt"`` + ``"answer"`` (``answer`` may be omitted for inference) or ``"conversation"`` /
    ``"messages"``: a list of ``{"role": "user"|"assistant", "content": str}``. Loss is taken on
    answer (assistant) tokens only, plus the EOS after each answer.

    Image placeholders: each ``image_token`` in the prompt text stands for one image, in order. A
    prompt without any placeholder gets one per image prepended; otherwise the counts must match.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        image_processor: ImageProcessor | None,
        image_token_id: int,
        num_image_tokens: int,
        config: VisionLanguageConfig,
        pad_token_id: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token_id = int(image_token_id)
        self.num_image_tokens = int(num_image_tokens)
        self.config = config
        self.pad_token_id = int(pad_token_id)
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_token_id: int | None = None if eos is None else int(eos)
        # Special tokens the tokenizer puts before a text (BOS for Llama/Gemma, nothing for GPT-2).
        self.prefix_ids: list[int] = list(tokenizer("", add_special_tokens=True)["input_ids"])
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(self._cache) < 65536:
                self._cache[text] = ids
        return ids

    def _use_chat_template(self) -> bool:
        return bool(self.config.use_chat_template and getattr(self.tokenizer, "chat_template", None))

    def render(self, sample: Mapping[str, Any], num_images: int, *, for_generation: bool) -> list[Segment]:
        """The sample as text segments ``(text, is_answer)``, placeholders inserted if needed."""
        cfg = self.config
        if "conversation" in sample or "messages" in sample:
            messages = [dict(m) for m in (sample.get("conversation") or sample.get("messages") or [])]
        elif "prompt" in sample:
            messages = [{"role": "user", "content": str(sample["prompt"])}]
            if sample.get("answer") is not None:
                messages.append({"role": "assistant", "content": str(sample["answer"])})
        else:
            raise ValueError(
                f"a sample needs 'prompt' (+ 'answer') or 'conversation'; got keys {sorted(sample)}"
            )
        for m in messages:
            if m.get("role") not in ("user", "assistant", "system"):
                raise ValueError(
                    f"message role must be 'user', 'assistant' or 'system', got {m.get('role')!r}"
                )
        users = [m for m in messages if m["role"] == "user"]
        if not users:
            raise ValueError("a conversation needs at least one user message")
        for j, m in enumerate(messages):
            if m["role"] == "assistant" and cfg.image_token in str(m["content"]):
                # The image's vectors would be spliced into the answer (and taken out of its loss).
                raise ValueError(
                    f"message {j} (assistant) holds the image placeholder {cfg.image_token!r}: images "
                    "belong in user messages; remove it from the answer"
                )
        n_placeholders = sum(str(m["content"]).count(cfg.image_token) for m in messages)
        if n_placeholders == 0 and num_images:
            users[0]["content"] = (
                cfg.image_token * num_images + cfg.image_separator + str(users[0]["content"])
            )
        elif n_placeholders != num_images:
            raise ValueError(
                f"the prompt has {n_placeholders} image placeholder(s) {cfg.image_token!r} "
                f"but {num_images} image(s) were given"
            )
        if for_generation and messages[-1]["role"] == "assistant":
            raise ValueError("for generation the conversation must end with a user message")
        if self._use_chat_template():
            return self._render_chat_template(messages, for_generation)
        segments: list[Segment] = []
        for i, m in enumerate(messages):
            if m["role"] in ("user", "system"):
                sep = cfg.turn_separator if segments else ""
                segments.append((sep + cfg.prompt_template.format(prompt=m["content"]), False))
            else:
                segments.append((cfg.answer_template.format(answer=m["content"]), True))
            del i
        return segments

    def _render_chat_template(self, messages: list[dict[str, Any]], for_generation: bool) -> list[Segment]:
        tok = self.tokenizer
        segments: list[Segment] = []
        done = ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            after = tok.apply_chat_template(messages[: i + 1], tokenize=False)
            if not before.startswith(done) or not after.startswith(before):
                raise ValueError(
                    "the tokenizer's chat template is not prefix-stable; set use_chat_template=False"
                )
            segments.append((before[len(done) :], False))
            segments.append((after[len(before) :], True))
            done = after
        if for_generation or messages[-1]["role"] != "assistant":
            full = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            segments.append((full[len(done) :], False))
        return segments

    def tokenize(self, segments: Sequence[Segment], *, num_images: int) -> tuple[list[int], list[int]]:
        """Segments -> ``(input_ids, labels)`` with every placeholder expanded to ``K`` tokens."""
        ids: list[int] = list(self.prefix_ids)
        labels: list[int] = [IGNORE_INDEX] * len(ids)
        add_eos = self.config.add_eos_to_answer and self.eos_token_id is not None
        for text, is_answer in segments:
            piece = self._encode(text)
            if is_answer and add_eos:
                piece = [*piece, int(self.eos_token_id)]  # type: ignore[arg-type]
            ids.extend(piece)
            labels.extend(piece if is_answer else [IGNORE_INDEX] * len(piece))
        found = sum(1 for t in ids if t == self.image_token_id)
        if found != num_images:
            raise ValueError(
                f"tokenised prompt holds {found} image placeholder token(s) but {num_images} image(s) were given "
                "(does the tokenizer split the image token?)"
            )
        if found and self.num_image_tokens != 1:
            k = self.num_image_tokens
            out_ids: list[int] = []
            out_labels: list[int] = []
            for t, lab in zip(ids, labels):
                if t == self.image_token_id:
                    out_ids.extend([t] * k)
                    out_labels.extend([IGNORE_INDEX] * k)
                else:
                    out_ids.append(t)
                    out_labels.append(lab)
            ids, labels = out_ids, out_labels
        max_len = self.config.max_length
        if max_len is not None and len(ids) > max_len:
            last_image = max((i for i, t in enumerate(ids) if t == self.image_token_id), default=-1)
            if last_image >= max_len:
                raise ValueError(
                    f"sequence of {len(ids)} tokens would be cut at max_length={max_len} inside image tokens"
                )
            ids, labels = ids[:max_len], labels[:max_len]
        return ids, labels

    # ------------------------------------------------------------------------------------------
    def __call__(
        self,
        samples: Sequence[Mapping[str, Any]],
        *,
        padding_side: str = "right",
        for_generation: bool = False,
    ) -> VisionBatch:
        """Collate samples into a padded :class:`VisionBatch` (right padding for training)."""
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        all_images: list[Any] = []
        all_features: list[torch.Tensor] = []
        owners: list[int] = []  # the sample each image belongs to
        rows: list[tuple[list[int], list[int]]] = []
        counts: list[int] = []
        for i, sample in enumerate(samples):
            try:
                images = as_image_list(sample.get("images", sample.get("image")))
                features = _feature_list(sample.get("image_features"))
                if images and features:
                    raise ValueError("a sample holds both images and image_features; pass one of them")
                n = len(images) or len(features)
                segments = self.render(sample, n, for_generation=for_generation)
                rows.append(self.tokenize(segments, num_images=n))
            except ValueError as e:
                raise ValueError(f"{_sample_name(i, sample)}: {e}") from e
            counts.append(n)
            all_images.extend(images)
            all_features.extend(features)
            owners.extend([i] * len(images))
        if all_images and all_features:
            raise ValueError("a batch mixes samples with images and samples with image_features")
        pixel_values = None
        if all_images:
            if self.image_processor is None:
                raise ValueError("this collator has no image processor but the samples hold images")
            try:
                pixel_values = self.image_processor(all_images)
            except EmptyImageError as e:
                i = owners[e.index]
                where = f"{_sample_name(i, samples[i])}, image {e.index - owners.index(i)}"
                raise EmptyImageError(e.index, e.width, e.height, where=where) from e
        batch = pad_rows(
            rows, counts, pixel_values, pad_token_id=self.pad_token_id, padding_side=padding_side
        )
        if all_features:
            shapes = {tuple(f.shape) for f in all_features}
            if len(shapes) != 1:
                raise ValueError(f"image_features of one batch must share a shape, got {sorted(shapes)}")
            batch.image_features = torch.stack(all_features)
        return batch


def _feature_list(features: Any) -> list[torch.Tensor]:
    """``None`` -> ``[]``; ``[N, C]`` -> one image; ``[num_images, N, C]`` or a list -> one per image."""
    if features is None:
        return []
    if isinstance(features, torch.Tensor):
        if features.ndim == 2:
            return [features]
        if features.ndim == 3:
            return list(features.unbind(0))
        raise ValueError(f"image_features must be [N, C] or [num_images, N, C], got {list(features.shape)}")
    out = [f for f in features]
    if not all(isinstance(f, torch.Tensor) and f.ndim == 2 for f in out):
        raise ValueError("a list of image_features must hold [N, C] tensors")
    return out


def _sample_name(index: int, sample: Mapping[str, Any]) -> str:
    """``sample 3`` or, for webdataset samples, ``sample 3 ('000123')``."""
    key = sample.get("__key__") if isinstance(sample, Mapping) else None
    return f"sample {index}" + (f" ({key!r})" if key is not None else "")


def pad_rows(
    rows: Sequence[tuple[list[int], list[int]]],
    counts: list[int],
    pixel_values: torch.Tensor | None,
    *,
    pad_token_id: int,
    padding_side: str,
) -> VisionBatch:
    """Pad ``(ids, labels)`` rows into tensors on the given side."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(len(ids) for ids, _ in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    has_labels = False
    for i, (ids, labs) in enumerate(rows):
        sl = slice(0, len(ids)) if padding_side == "right" else slice(width - len(ids), width)
        input_ids[i, sl] = torch.tensor(ids, dtype=torch.long)
        labels[i, sl] = torch.tensor(labs, dtype=torch.long)
        mask[i, sl] = 1
        has_labels = has_labels or any(lab != IGNORE_INDEX for lab in labs)
    return VisionBatch(
        input_ids=input_ids,
        attention_mask=mask,
        pixel_values=pixel_values,
        labels=labels if has_labels else None,
        image_counts=counts,
    )
