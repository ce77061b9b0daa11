"""Vision encoders: any timm model as a patch-token feature extractor ``[B, N, C]`` and a pooled
feature ``[B, C]``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .interfaces import EncoderConfig, ImagePreprocessing
from .processing import ImageProcessor

ImageLike = Any  # PIL.Image.Image | np.ndarray (uint8, HW / HWC) | torch.Tensor (uint8 CHW / HWC)


class VisionEncoder(nn.Module):
    """A timm backbone returning patch-token features ``[B, N, C]``.

    ViT-like models give their tokens (prefix/CLS tokens dropped unless ``keep_prefix_tokens``);
    CNN feature maps ``[B, C, H, W]`` are flattened to ``[B, H*W, C]``. ``feature_layer=-1`` uses
    the model's ``forward_features`` (final norm applied); any other index takes that block's
    output through timm's ``forward_intermediates`` (as LLaVA takes the penultimate layer).
    :meth:`pooled` gives one vector per image (timm's own head pooling: global average for CNNs,
    the class token or average for ViTs).

    Build it with :func:`create_encoder`.
    """

    def __init__(self, model: nn.Module, config: EncoderConfig, preprocessing: ImagePreprocessing) -> None:
        super().__init__()
        self.model: Any = model
        self.config = config
        self.preprocessing = preprocessing
        self._processor: ImageProcessor | None = None
        # CNNs run in channels-last memory: on the CPU, PyTorch's depthwise and 1x1 convolutions are
        # faster in NHWC (EfficientNet-Lite0 at 224 px, 2 threads: 1.6x, measured by
        # benchmarks/vision/bench_channels_last.py); the numbers are the same up to float rounding.
        self.channels_last: bool = not self._fixed_size()
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        # Probe once so that feature_dim/num_tokens are known before a bridge is built.
        h, w = preprocessing.image_size
        was_training = model.training
        model.eval()
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, 3, h, w))
            pooled_probe = self.pooled(torch.zeros(1, 3, h, w))
        model.train(was_training)
        self.num_tokens: int = int(probe.shape[1])
        """Tokens per image (``N``)."""
        self.feature_dim: int = int(probe.shape[2])
        """Feature width (``C``)."""
        self.pooled_dim: int = int(pooled_probe.shape[1])
        """Width of :meth:`pooled` (equal to ``feature_dim`` for CNNs and most ViTs)."""

    # ------------------------------------------------------------------------------------------
    def _tokens(self, out: torch.Tensor, from_intermediates: bool) -> torch.Tensor:
        if out.ndim == 4:
            fmt = getattr(self.model, "output_fmt", "NCHW")
            if not from_intermediates and str(fmt) == "NHWC":
                return out.flatten(1, 2)
            return out.flatten(2).transpose(1, 2)
        if out.ndim != 3:
            raise ValueError(f"timm model {self.config.name!r} returned features of shape {list(out.shape)}")
        if not from_intermediates and not self.config.keep_prefix_tokens:
            out = out[:, int(getattr(self.model, "num_prefix_tokens", 0)) :]
        return out

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must have shape [B, 3, H, W], got {list(pixel_values.shape)}")
        expected = tuple(self.preprocessing.image_size)
        got = tuple(pixel_values.shape[-2:])
        if got != expected and not getattr(self.model, "dynamic_img_size", False) and self._fixed_size():
            raise ValueError(
                f"pixel_values are {got[0]}x{got[1]} but encoder {self.config.name!r} expects "
                f"{expected[0]}x{expected[1]}; use encoder.preprocess(images) to resize"
            )

    def _layout(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return pixel_values.contiguous(memory_format=torch.channels_last)
        return pixel_values

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised pixels -> ``[B, N, C]`` features (patch tokens; a CNN's last
        feature map flattened)."""
        self._check_pixels(pixel_values)
        pixel_values = self._layout(pixel_values)
        if self.config.feature_layer == -1:
            return self._tokens(self.model.forward_features(pixel_values), from_intermediates=False)
        feats = self.model.forward_intermediates(
            pixel_values, indices=[self.config.feature_layer], intermediates_only=True, stop_early=True
        )
        return self._tokens(feats[-1], from_intermediates=True)

    def pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised pixels -> ``[B, pooled_dim]``, one feature vector per image.

        With ``feature_layer=-1`` this is timm's ``forward_head(..., pre_logits=True)`` on the final
        features (global average pooling for CNNs such as EfficientNet, the class token or token
        average for ViTs, as the model was trained); for an intermediate layer, the mean of its
        tokens.
        """
        self._check_pixels(pixel_values)
        pixel_values = self._layout(pixel_values)
        if self.config.feature_layer == -1 and hasattr(self.model, "forward_head"):
            return self.model.forward_head(self.model.forward_features(pixel_values), pre_logits=True)
        return self.forward(pixel_values).mean(1)

    def _fixed_size(self) -> bool:
        # ViT-like models have a fixed position-embedding grid; CNNs accept any size.
        return hasattr(self.model, "pos_embed") or hasattr(self.model, "patch_embed")

    # ------------------------------------------------------------------------------------------
    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """PIL images or uint8 arrays (any mode, any size) -> ``[B, 3, H, W]`` float pixels.

        Images are converted to RGB (transparency composited onto the configured background),
        resized on the shortest edge and centre-cropped to ``image_size``, then normalised, with
        timm's own eval transform (see :class:`~mpm_vision.processing.ImageProcessor`).
        """
        if self._processor is None:
            self._processor = ImageProcessor(self.preprocessing)
        return self._processor(images)


def _pretrained_cfg_of(checkpoint: str | os.PathLike[str]) -> tuple[Path, dict[str, Any] | None]:
    """``(weights file, timm config or None)`` for a checkpoint file or a timm model directory."""
    path = Path(checkpoint)
    if not path.is_dir():
        return path, None
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(
            f"checkpoint directory {path} has no config.json (a timm model directory holds config.json "
            "and model.safetensors)"
        )
    weights = path / "model.safetensors"
    if not weights.is_file():
        found = sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"checkpoint directory {path} needs model.safetensors (found {[p.name for p in found]})"
            )
        weights = found[0]
    config = json.loads(cfg_file.read_text(encoding="utf-8"))
    if not isinstance(config, dict) or "architecture" not in config:
        raise ValueError(f"{cfg_file} is not a timm model config (no 'architecture')")
    return weights, config


_PREPROCESSING_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")


def _resolve_preprocessing(model: nn.Module, image_size: int | None) -> ImagePreprocessing:
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    _, h, w = cfg["input_size"]
    if image_size is not None:
        h = w = int(image_size)
    mean = tuple(float(x) for x in cfg["mean"])
    std = tuple(float(x) for x in cfg["std"])
    interp = str(cfg.get("interpolation", "bicubic"))
    return ImagePreprocessing(image_size=(int(h), int(w)), mean=mean, std=std, interpolation=interp)  # type: ignore[arg-type]


def load_safetensors_into(module: nn.Module, path: str | os.PathLike[str], *, what: str) -> None:
    """Load a safetensors file into ``module``; missing weights are an error, extra ones (a
    classifier head, say) are ignored. A common ``model.``/``module.`` prefix is stripped."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} checkpoint not found: {path}")
    state = load_file(path)
    own = module.state_dict()
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ValueError(
            f"{what} checkpoint {path} lacks {len(result.missing_keys)} weights, e.g. {result.missing_keys[:5]}"
        )


def create_encoder(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    feature_layer: int = -1,
    keep_prefix_tokens: bool = False,
    **model_kwargs: Any,
) -> VisionEncoder:
    """Create a :class:`VisionEncoder` from any timm model name.

    Args:
        name: a timm model name, e.g. ``"vit_tiny_patch16_224"``, ``"resnet18"``, ``"beitv2_base_patch16_224"``.
        pretrained: passed to timm (downloads weights; needs network or a populated cache).
        checkpoint: a local ``.safetensors`` file with the backbone weights, or a timm model
            directory (``config.json`` + ``model.safetensors``, as ``mpm.zoo.zoo_path`` and timm's
            ``save_for_hf`` write them): its weights are loaded and its preprocessing (mean, std,
            interpolation, input size) becomes ``encoder.preprocessing``.
        image_size: input resolution (square); passed to timm as ``img_size`` where the model takes it.
        feature_layer: ``-1`` for the final features, another index for that block's output.
        keep_prefix_tokens: keep CLS/register tokens of ViT-like models (final layer only).
        **model_kwargs: forwarded to ``timm.create_model`` (``patch_size``, ``depth``, ``embed_dim``...).
    """
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown timm model {name!r}; similar names: {close}")
    kwargs = dict(model_kwargs)
    kwargs["num_classes"] = 0
    weights: Path | None = None
    if checkpoint is not None:
        weights, ckpt_cfg = _pretrained_cfg_of(checkpoint)
        if ckpt_cfg is not None:
            pcfg = ckpt_cfg.get("pretrained_cfg") or {}
            overlay = {k: pcfg[k] for k in _PREPROCESSING_KEYS if k in pcfg}
            kwargs["pretrained_cfg_overlay"] = {**overlay, **kwargs.get("pretrained_cfg_overlay", {})}
    if image_size is not None:
        kwargs["img_size"] = int(image_size)
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err) or image_size is None:
            raise
        kwargs.pop("img_size")  # CNNs take any resolution; image_size only sets preprocessing
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    if weights is not None:
        load_safetensors_into(model, weights, what=f"encoder {name!r}")
    if feature_layer != -1 and not hasattr(model, "forward_intermediates"):
        raise ValueError(f"timm model {name!r} has no forward_intermediates; use feature_layer=-1")
    config = EncoderConfig(
        name=name,
        image_size=image_size,
        feature_layer=feature_layer,
        keep_prefix_tokens=keep_prefix_tokens,
        model_kwargs=dict(model_kwargs),
    )
    return VisionEncoder(model, config, _resolve_preprocessing(model, image_size))


def encoder_from_config(config: EncoderConfig) -> VisionEncoder:
    """Rebuild an encoder (random weights) from its :class:`EncoderConfig`."""
    return create_encoder(
        config.name,
        image_size=config.image_size,
        feature_layer=config.feature_layer,
        keep_prefix_tokens=config.keep_prefix_tokens,
        **config.model_kwargs,
    )
