"""Training the Paint model: the diffusion loss, the trainer-facing ``PaintTrainable`` and ``collate``.

VisCPM released no Paint training code; this follows its description (LM frozen, the projection
and the UNet's cross-attention train, eps-prediction MSE) plus the usual options of diffusers'
``train_text_to_image`` example (v-prediction, min-SNR-gamma weighting, conditioning dropout for
classifier-free guidance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.training_utils import compute_snr
from torch import nn

from .conditioner import LLMConditioner, tokenize_prompts
from .interfaces import Conditioning, PaintBatch, PaintTrainingConfig, TokenizerLike
from .pipeline import MPMPaintPipeline
from .states import StateConditioner

#: Stage names understood by :meth:`PaintTrainable.stage_parameters`.
STAGES = ("paint", "paint-full", "paint-projection")


def _training_scheduler(scheduler: SchedulerMixin) -> DDPMScheduler:
    """A DDPM scheduler with the same noise schedule (``add_noise``/``get_velocity`` need ``alphas_cumprod``
    indexed by training timestep, which inference schedulers such as Euler do not implement that way)."""
    if isinstance(scheduler, DDPMScheduler):
        return scheduler
    return DDPMScheduler.from_config(scheduler.config)  # type: ignore[attr-defined]


def diffusion_loss(
    unet: UNet2DConditionModel,
    scheduler: SchedulerMixin,
    images_or_latents: torch.Tensor,
    conditioning: Conditioning,
    *,
    prediction_type: str | None = None,
    snr_gamma: float | None = None,
    cond_dropout: float = 0.1,
    uncond: Conditioning | None = None,
    noise_offset: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The denoising loss of one batch (a scalar).

    Args:
        unet: the model being trained.
        scheduler: any diffusers scheduler; its config's noise schedule is used through a
            ``DDPMScheduler`` (its ``prediction_type`` is the default target).
        images_or_latents: ``x0``, ``[B, C, H, W]`` (pixels in ``[-1, 1]`` or scaled VAE latents).
        conditioning: ``[B, L, D]`` text conditioning.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"`` (``x0``; default: the
            scheduler's).
        snr_gamma: min-SNR-gamma weighting (Hang et al. 2023); ``None`` = plain MSE.
        cond_dropout: probability per sample of replacing its conditioning with ``uncond`` (trains
            the unconditional branch for classifier-free guidance).
        uncond: the unconditional conditioning (``[1, L', D]`` or ``[B, L', D]``), e.g. the empty
            prompt's; ``None`` = zero vectors.
        noise_offset: offset-noise strength (0 = off).
        generator: for reproducible noise, timesteps and dropout.
    """
    x0 = images_or_latents
    if x0.dim() != 4:
        raise ValueError(f"images_or_latents must be [B, C, H, W], got shape {tuple(x0.shape)}")
    if len(conditioning) != x0.shape[0]:
        raise ValueError(
            f"conditioning has batch {len(conditioning)} but the images have batch {x0.shape[0]}"
        )
    cross = int(unet.config["cross_attention_dim"])
    if conditioning.dim != cross:
        raise ValueError(
            f"conditioning has width {conditioning.dim} but the UNet's cross_attention_dim is {cross}"
        )
    if not 0.0 <= cond_dropout <= 1.0:
        raise ValueError(f"cond_dropout must be in [0, 1], got {cond_dropout}")
    sched = _training_scheduler(scheduler)
    ptype = prediction_type or sched.config["prediction_type"]
    if ptype not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {ptype!r}")
    b, device = x0.shape[0], x0.device
    gen_device = generator.device if generator is not None else device

    noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(device)
    if noise_offset:
        noise = noise + noise_offset * torch.randn(
            (b, x0.shape[1], 1, 1), generator=generator, device=gen_device, dtype=x0.dtype
        ).to(device)
    timesteps = torch.randint(
        0, sched.config["num_train_timesteps"], (b,), generator=generator, device=gen_device
    ).to(device)
    steps = cast(torch.IntTensor, timesteps)  # diffusers annotates timesteps as IntTensor
    noisy = sched.add_noise(x0, noise, steps)
    if ptype == "epsilon":
        target = noise
    elif ptype == "sample":
        target = x0
    else:
        target = sched.get_velocity(x0, noise, steps)

    cond = conditioning.to(device=device, dtype=unet.dtype)
    if cond_dropout > 0:
        drop = torch.rand((b,), generator=generator, device=gen_device).to(device) < cond_dropout
        if bool(drop.any()):
            if uncond is None:
                u = Conditioning(torch.zeros_like(cond.hidden_states[:, :1]), cond.attention_mask[:, :1])
            else:
                u = uncond.to(device=device, dtype=unet.dtype)
                if len(u) == 1:
                    u = Conditioning(u.hidden_states.expand(b, -1, -1), u.attention_mask.expand(b, -1))
                elif len(u) != b:
                    raise ValueError(f"uncond has batch {len(u)}; expected 1 or {b}")
            length = max(cond.length, u.length)
            cond, u = cond.pad_to(length), u.pad_to(length)
            sel = drop[:, None, None]
            cond = Conditioning(
                torch.where(sel, u.hidden_states, cond.hidden_states),
                torch.where(drop[:, None], u.attention_mask, cond.attention_mask),
            )

    pred = unet(
        noisy,
        timesteps,
        encoder_hidden_states=cond.hidden_states,
        encoder_attention_mask=cond.attention_mask,
        return_dict=False,
    )[0]
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    # min-SNR-gamma as in diffusers' train_text_to_image.py.
    snr = compute_snr(sched, timesteps)
    weights = torch.clamp(snr, max=snr_gamma)
    # the weight of an x0 loss is min(SNR, gamma) itself (Hang et al. 2023, eq. 8)
    if ptype == "epsilon":
        weights = weights / snr
    elif ptype == "v_prediction":
        weights = weights / (snr + 1)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()


def _cross_attention_parameters(unet: nn.Module) -> list[nn.Parameter]:
    """Parameters of every cross-attention layer (``attn2`` of diffusers' transformer blocks)."""
    params: list[nn.Parameter] = []
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            params.extend(module.parameters())
    return params


class PaintTrainable(nn.Module):
    """What mpm-train trains: a UNet, an :class:`LLMConditioner`, optional VAE, and the loss settings.

    Implements the trainer's ``Trainable`` protocol: :meth:`parts`, :meth:`stage_parameters` (a query)
    and :meth:`training_step` (the batch contract is :class:`mpm_paint.interfaces.PaintBatch`).

    Args:
        unet: ``UNet2DConditionModel`` (``cross_attention_dim`` = ``conditioner.out_dim``).
        conditioner: the text side: an :class:`LLMConditioner` (its LM stays frozen and runs at every
            step) or a :class:`StateConditioner` (batches carry precomputed ``prompt_embeds``; the
            unconditional branch is the all-zero conditioning).
        scheduler: the noise schedule (default ``DDPMScheduler()``); an inference scheduler's config
            is converted to DDPM for training.
        vae: ``AutoencoderKL`` for latent diffusion (frozen), or ``None`` for pixel space.
        config: loss settings (:class:`PaintTrainingConfig`).
    """

    def __init__(
        self,
        *,
        unet: UNet2DConditionModel,
        conditioner: LLMConditioner | StateConditioner,
        scheduler: SchedulerMixin | None = None,
        vae: AutoencoderKL | None = None,
        config: PaintTrainingConfig | None = None,
    ) -> None:
        super().__init__()
        cross = int(unet.config["cross_attention_dim"])
        if cross != conditioner.out_dim:
            raise ValueError(
                f"the UNet's cross_attention_dim is {cross} but the conditioner produces "
                f"{conditioner.out_dim}-wide vectors (LLMConditioner out_dim); they must be equal"
            )
        self.unet = unet
        self.conditioner = conditioner
        self.vae = vae
        if vae is not None:
            vae.requires_grad_(False)
            vae.eval()
        self.scheduler = _training_scheduler(scheduler if scheduler is not None else DDPMScheduler())
        self.config = config or PaintTrainingConfig()
        self._uncond_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_pipeline(
        cls, pipeline: MPMPaintPipeline, *, config: PaintTrainingConfig | None = None
    ) -> PaintTrainable:
        """Train the modules of an existing pipeline (shared, not copied)."""
        if pipeline.conditioner is None:
            raise ValueError("the pipeline has no conditioner to train")
        return cls(
            unet=pipeline.unet,
            conditioner=pipeline.conditioner,
            scheduler=pipeline.scheduler,
            vae=pipeline.vae,
            config=config,
        )

    def to_pipeline(self, scheduler: SchedulerMixin | None = None) -> MPMPaintPipeline:
        """A sampling pipeline sharing these modules (default scheduler: the training DDPM).

        With a :class:`StateConditioner` the pipeline has no text conditioner: call it with
        ``prompt_embeds=trainable.conditioner(states)`` (its negative branch is then all-zero, as in
        training).
        """
        text = self.conditioner if isinstance(self.conditioner, LLMConditioner) else None
        return MPMPaintPipeline(
            unet=self.unet,
            scheduler=scheduler if scheduler is not None else self.scheduler,
            vae=self.vae,
            conditioner=text,
        )

    def train(self, mode: bool = True) -> PaintTrainable:
        """Train mode for the UNet and projection; the LM and VAE stay in eval mode."""
        super().train(mode)
        self.conditioner.train(mode)
        if self.vae is not None:
            self.vae.eval()
        return self

    def parts(self) -> dict[str, nn.Module]:
        """The named parts a stage policy refers to: ``unet`` and ``projection`` (the LM and VAE never train)."""
        if isinstance(self.conditioner, StateConditioner):
            return {"unet": self.unet, "projection": self.conditioner}
        return {"unet": self.unet, "projection": self.conditioner.projection}

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        """The parameters trained in a preset ``stage`` (a query: it freezes and unfreezes nothing; the
        trainer sets ``requires_grad``, e.g. mpm-train's ``policy.freeze``).

        Stages: ``"paint"`` (VisCPM: the UNet's cross-attention + the projection), ``"paint-full"``
        (the whole UNet + the projection), ``"paint-projection"`` (the projection only).
        """
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; mpm-paint trains {', '.join(STAGES)}")
        proj = self.conditioner.trainable_parameters()
        if stage == "paint":
            chosen = _cross_attention_parameters(self.unet)
            if not chosen:
                raise ValueError("stage 'paint' found no cross-attention (attn2) layers in the UNet")
            return chosen + proj
        if stage == "paint-full":
            return list(self.unet.parameters()) + proj
        return list(proj)

    def _device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def _uncond(self) -> Conditioning | None:
        """The empty prompt's conditioning (the frozen LM part cached, the projection re-applied);
        ``None`` (all-zero) with a :class:`StateConditioner`."""
        if not isinstance(self.conditioner, LLMConditioner):
            return None
        key = str(self._device())
        if key not in self._uncond_cache:
            ids, mask = self.conditioner.tokenize([""])
            hidden = self.conditioner.lm_hidden_states(ids, mask)
            self._uncond_cache[key] = (hidden, mask)
        hidden, mask = self._uncond_cache[key]
        return self.conditioner.project(hidden, mask)

    def encode_batch(self, batch: PaintBatch | dict[str, Any]) -> Conditioning:
        """The conditioning of a batch (``prompt_embeds``, ``input_ids``/``attention_mask`` or ``prompts``)."""
        if isinstance(self.conditioner, StateConditioner):
            if "prompt_embeds" not in batch:
                raise KeyError(
                    "a StateConditioner trains on precomputed states: the batch needs 'prompt_embeds' "
                    "([B, D] or [B, L, D], + optional 'prompt_embeds_mask') next to 'pixel_values'"
                )
            return self.conditioner(batch["prompt_embeds"], batch.get("prompt_embeds_mask"))
        if "prompt_embeds" in batch:
            raise KeyError(
                "the batch has 'prompt_embeds' but this model's conditioner is an LLMConditioner, which "
                "reads text; build the PaintTrainable with a StateConditioner for precomputed states"
            )
        if "input_ids" in batch:
            ids = batch["input_ids"]
            mask = batch.get("attention_mask")
            if mask is None:
                mask = torch.ones_like(ids)
            return self.conditioner.encode_ids(ids, mask)
        if "prompts" in batch:
            return self.conditioner(list(batch["prompts"]))
        raise KeyError("the batch needs 'input_ids' (+ 'attention_mask') or 'prompts' next to 'pixel_values'")

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` pixels -> what the UNet denoises (scaled VAE latents, or the pixels)."""
        if self.vae is None:
            return pixel_values
        latents = self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist.sample()
        return latents * getattr(self.vae.config, "scaling_factor", 1.0)

    def training_step(self, batch: PaintBatch | dict[str, Any]) -> torch.Tensor:
        """Loss of one batch (see :class:`mpm_paint.interfaces.PaintBatch`); call ``backward()`` on it."""
        if "pixel_values" not in batch:
            raise KeyError("the batch needs 'pixel_values' ([B, 3, H, W] floats in [-1, 1])")
        pixel_values = batch["pixel_values"]
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be [B, 3, H, W], got shape {tuple(pixel_values.shape)}")
        device = self._device()
        x0 = self.encode_images(pixel_values.to(device=device, dtype=torch.float32)).to(self.unet.dtype)
        factor = 2 ** (len(self.unet.config["block_out_channels"]) - 1)
        if x0.shape[-1] % factor or x0.shape[-2] % factor:
            raise ValueError(
                f"the UNet input is {x0.shape[-2]}x{x0.shape[-1]}, not divisible by the UNet's downsampling "
                f"factor {factor}; resize the images"
            )
        cond = self.encode_batch(batch)
        if len(cond) != x0.shape[0]:
            raise ValueError(f"{len(cond)} captions for {x0.shape[0]} images")
        c = self.config
        uncond = self._uncond() if c.cond_dropout > 0 else None
        return diffusion_loss(
            self.unet,
            self.scheduler,
            x0,
            cond,
            prediction_type=c.prediction_type,
            snr_gamma=c.snr_gamma,
            cond_dropout=c.cond_dropout if self.training else 0.0,
            uncond=uncond,
            noise_offset=c.noise_offset,
        )

    def forward(self, batch: PaintBatch | dict[str, Any]) -> torch.Tensor:
        """Same as :meth:`training_step` (lets DDP/FSDP wrap this module)."""
        return self.training_step(batch)


# ------------------------------------------------------------------------------------------ collate
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _to_rgb(image: PIL.Image.Image, background: tuple[int, int, int]) -> PIL.Image.Image:
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
            image = PIL.Image.fromarray(np.stack([gray, alpha], axis=-1), mode="LA")
        else:
            return PIL.Image.fromarray(gray, mode="L").convert("RGB")
    elif image.mode == "RGB" and transparency is None:
        return image
    if image.mode in _ALPHA_MODES or transparency is not None:
        rgba = image.convert("RGBA")
        canvas = PIL.Image.new("RGBA", rgba.size, (*background, 255))
        return PIL.Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _resize_center_crop(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    w, h = image.size
    if (w, h) == (size, size):
        return image
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), PIL.Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def collate(
    samples: Sequence[dict[str, Any]],
    *,
    resolution: int | None = None,
    tokenizer: TokenizerLike | None = None,
    max_length: int = 77,
    background: tuple[int, int, int] = (255, 255, 255),
) -> dict[str, Any]:
    """Turn ``[{"image": PIL.Image, "caption": str}, ...]`` into a :class:`PaintBatch`.

    Images are made RGB (transparency over ``background``, 16-bit scaled: see :func:`_to_rgb`), resized and centre-cropped to
    ``resolution`` (when given; otherwise all must share one size) and scaled to ``[-1, 1]``.
    Returns ``pixel_values`` and ``prompts``, plus ``input_ids``/``attention_mask`` when a
    ``tokenizer`` (the conditioner's) is given.
    """
    if len(samples) == 0:
        raise ValueError("collate got an empty list of samples")
    if resolution is not None and (
        isinstance(resolution, bool) or int(resolution) != resolution or resolution < 1
    ):
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution!r}")
    arrays: list[np.ndarray] = []
    prompts: list[str] = []
    for i, s in enumerate(samples):
        if "image" not in s or "caption" not in s:
            raise KeyError(f"sample {i} needs 'image' and 'caption', has {sorted(s)}")
        img = s["image"]
        if not isinstance(img, PIL.Image.Image):
            raise TypeError(f"sample {i}: 'image' must be a PIL.Image, got {type(img).__name__}")
        if img.width == 0 or img.height == 0:  # the resize would divide by zero
            key = f" ({s['__key__']!r})" if s.get("__key__") is not None else ""
            raise ValueError(
                f"sample {i}{key}: the image is empty ({img.width}x{img.height} pixels); every image needs "
                "at least 1x1"
            )
        img = _to_rgb(img, background)
        if resolution is not None:
            img = _resize_center_crop(img, resolution)
        arrays.append(np.asarray(img, dtype=np.float32))
        prompts.append(str(s["caption"]))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images have different sizes {sorted(shapes)}; pass resolution= to resize them")
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
    batch: dict[str, Any] = {"pixel_values": pixels.contiguous(), "prompts": prompts}
    if tokenizer is not None:
        batch["input_ids"], batch["attention_mask"] = tokenize_prompts(
            tokenizer, prompts, max_length=max_length
        )
    return batch


def make_collate(
    *,
    resolution: int | None = None,
    tokenizer: TokenizerLike | None = None,
    max_length: int = 77,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Callable[[Sequence[dict[str, Any]]], dict[str, Any]]:
    """:func:`collate` with its options bound (a ``collate_fn`` for a DataLoader or the trainer)."""

    def _collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return collate(
            samples, resolution=resolution, tokenizer=tokenizer, max_length=max_length, background=background
        )

    return _collate
