"""``MPMPaintPipeline``: text -> image with a UNet conditioned on multilingual LLM hidden states."""

from __future__ import annotations

import inspect
import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .conditioner import LLMConditioner
from .interfaces import Conditioning, PaintHooks


@dataclass
class MPMPaintPipelineOutput(BaseOutput):
    """What :class:`MPMPaintPipeline` returns.

    Attributes:
        images: PIL images, a ``[N, H, W, 3]`` numpy array, a ``[N, 3, H, W]`` tensor in ``[0, 1]``,
            or the final latents (``output_type="latent"``); ``N = len(prompts) * num_images_per_prompt``.
        nsfw_content_detected: per image, whether a prompt or image filter blocked it (``None``
            when no filter ran).
        scores: the reranker's score of each returned image (``None`` without reranking).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None = None
    scores: torch.Tensor | None = None


class MPMPaintPipeline(DiffusionPipeline):
    """VisCPM-Paint generalised: any transformers LM as the text side, any diffusers scheduler,
    pixel space (no ``vae``) or latent space (``vae``).

    Args:
        unet: a ``UNet2DConditionModel`` whose ``cross_attention_dim`` equals the conditioner's ``out_dim``.
        scheduler: any diffusers scheduler (DDPM, DDIM, DPMSolverMultistep, EulerDiscrete, ...).
        vae: an ``AutoencoderKL`` for latent diffusion, or ``None`` for pixel space (images in ``[-1, 1]``).
        conditioner: the :class:`LLMConditioner`; may be ``None`` when only ``prompt_embeds`` are used.

    Hooks (safety filters, reranker) are off by default; set :attr:`hooks` to a :class:`PaintHooks`.
    """

    model_cpu_offload_seq = "conditioner->unet->vae"  # type: ignore[assignment]
    _optional_components = ["vae", "conditioner"]  # noqa: RUF012 (diffusers declares it so)

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        vae: AutoencoderKL | None = None,
        conditioner: LLMConditioner | None = None,
    ) -> None:
        super().__init__()
        cross = unet.config["cross_attention_dim"]
        if conditioner is not None and int(cross) != conditioner.out_dim:
            raise ValueError(
                f"the UNet's cross_attention_dim is {cross} but the conditioner produces "
                f"{conditioner.out_dim}-wide vectors (LLMConditioner out_dim); they must be equal"
            )
        expected_in = vae.config["latent_channels"] if vae is not None else 3
        if unet.config["in_channels"] != expected_in:
            where = "the VAE's latent_channels" if vae is not None else "RGB pixels (no VAE)"
            raise ValueError(
                f"the UNet has in_channels={unet.config['in_channels']} but {where} gives {expected_in}"
            )
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae, conditioner=conditioner)
        self.vae_scale_factor = 2 ** (len(vae.config["block_out_channels"]) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=True)
        self.hooks = PaintHooks()

    # ------------------------------------------------------------------------------------ helpers
    @property
    def downsampling_factor(self) -> int:
        """Pixels per UNet-bottleneck cell: VAE factor times ``2 ** number of UNet downsamplers``."""
        unet_factor = 2 ** (len(self.unet.config["block_out_channels"]) - 1)
        return int(self.vae_scale_factor * unet_factor)

    @property
    def cross_attention_dim(self) -> int:
        return int(self.unet.config["cross_attention_dim"])

    def check_size(self, height: int, width: int) -> None:
        """Raise a clear error when ``height``/``width`` do not fit the UNet's downsampling."""
        f = self.downsampling_factor
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an integer number of pixels, got {value!r}")
            if value <= 0:
                raise ValueError(f"{name}={value}: the image size must be a positive multiple of {f}")
            if value % f != 0:
                raise ValueError(
                    f"{name}={value} is not divisible by {f}, the total downsampling factor of this model "
                    f"(VAE x{self.vae_scale_factor} times UNet x{f // self.vae_scale_factor}); "
                    f"use a multiple of {f}"
                )

    def _as_conditioning(self, embeds: Conditioning | torch.Tensor, name: str) -> Conditioning:
        cond = embeds if isinstance(embeds, Conditioning) else Conditioning.from_embeds(embeds)
        if cond.dim != self.cross_attention_dim:
            raise ValueError(
                f"{name} has width {cond.dim} but the UNet's cross_attention_dim is {self.cross_attention_dim}"
            )
        _check_finite(cond.hidden_states, name)
        return cond

    def encode_prompt(self, prompts: list[str]) -> Conditioning:
        """Conditioning of ``prompts`` through the pipeline's conditioner (no gradient)."""
        if self.conditioner is None:
            raise ValueError("this pipeline has no conditioner: pass prompt_embeds instead of prompt")
        with torch.no_grad():
            return self._as_conditioning(self.conditioner(prompts), "the conditioner output")

    def prepare_extra_step_kwargs(self, generator: Any, eta: float) -> dict[str, Any]:
        """``eta`` and ``generator`` for the schedulers whose ``step`` accepts them."""
        params = set(inspect.signature(self.scheduler.step).parameters)
        extra: dict[str, Any] = {}
        if "eta" in params:
            extra["eta"] = eta
        if "generator" in params:
            extra["generator"] = generator
        return extra

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in ``[-1, 1]`` (identity in pixel space)."""
        if self.vae is None:
            return latents
        scaling = getattr(self.vae.config, "scaling_factor", 1.0)
        return self.vae.decode(latents / scaling, return_dict=False)[0]

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any
    ) -> MPMPaintPipeline:
        """``DiffusionPipeline.from_pretrained`` with safetensors required (``use_safetensors=True``).

        A component saved only as a pickle (``diffusion_pytorch_model.bin``) is refused with the command
        that converts it once; diffusers would otherwise unpickle it (``weights_only=True`` narrows what
        a pickle can do but still runs the pickle machinery).
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError(
                "MPMPaintPipeline loads safetensors only; use_safetensors=False is not supported"
            )
        kwargs["use_safetensors"] = True
        root = Path(pretrained_model_name_or_path)
        if root.is_dir():
            _refuse_pickled_components(root)
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        assert isinstance(pipe, MPMPaintPipeline)
        return pipe

    def save_pretrained(  # type: ignore[override]
        self,
        save_directory: str | os.PathLike[str],
        *,
        save_language_model: bool | None = None,
        **kwargs: Any,
    ) -> None:
        """``DiffusionPipeline.save_pretrained`` (safetensors), with the LM saved or referenced by path.

        ``save_language_model``: see :meth:`LLMConditioner.save_pretrained` (``None`` saves the LM
        unless the conditioner has a ``language_model_path``).
        """
        kwargs.setdefault("safe_serialization", True)
        if self.conditioner is None or save_language_model is None:
            super().save_pretrained(save_directory, **kwargs)
            return
        # DiffusionPipeline calls each component's save_pretrained with fixed arguments only, so the
        # choice reaches the conditioner through its ``save_language_model`` attribute for this save.
        conditioner = self.conditioner
        previous = conditioner.save_language_model
        conditioner.save_language_model = save_language_model
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            conditioner.save_language_model = previous

    # --------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        prompt_embeds: Conditioning | torch.Tensor | None = None,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_embeds: Conditioning | torch.Tensor | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> MPMPaintPipelineOutput | tuple[Any, ...]:
        """Generate images.

        Args:
            prompt: one prompt or a list (any language the LM knows).
            prompt_embeds: precomputed conditioning instead of ``prompt`` (a :class:`Conditioning`
                or a ``[B, L, D]`` tensor, all positions attended).
            negative_prompt: the unconditional branch of classifier-free guidance (default ``""``);
                one string or one per prompt.
            negative_prompt_embeds: precomputed negative conditioning; without it and without a
                conditioner the negative branch is all-zero vectors.
            num_inference_steps: scheduler steps.
            guidance_scale: classifier-free guidance weight; ``<= 1`` disables guidance.
            height, width: output size in pixels (default: the UNet's ``sample_size`` times the
                VAE factor); must be divisible by :attr:`downsampling_factor`.
            num_images_per_prompt: images per prompt.
            generator: torch generator(s) for reproducible noise.
            latents: initial noise ``[N, C, h, w]`` (before ``init_noise_sigma`` scaling).
            eta: DDIM's eta (ignored by schedulers without it).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` (``[0, 1]``) or ``"latent"``.
            return_dict: return a :class:`MPMPaintPipelineOutput` (else a tuple).
        """
        hooks = self.hooks
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt and prompt_embeds")
        prompts: list[str] | None = None
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if len(prompts) == 0:
                raise ValueError("prompt is an empty list: give at least one prompt")
            if not all(isinstance(p, str) for p in prompts):
                raise TypeError("prompt must be a string or a list of strings")
        sample_size = self.unet.config["sample_size"]
        default = (sample_size if isinstance(sample_size, int) else sample_size[0]) * self.vae_scale_factor
        # `is None`, not `or`: height=0 is an error, not a request for the default size
        height = default if height is None else height
        width = default if width is None else width
        self.check_size(height, width)
        if (
            isinstance(guidance_scale, bool)
            or not isinstance(guidance_scale, numbers.Real)
            or not math.isfinite(guidance_scale)
        ):
            # NaN > 1 is False: a NaN scale would silently turn guidance off
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        if latents is not None:
            _check_finite(latents, "latents")
        device = self._execution_device
        do_cfg = guidance_scale > 1.0

        # ---- conditioning
        if prompts is not None:
            batch = len(prompts)
        else:
            assert prompt_embeds is not None
            cond_in = self._as_conditioning(prompt_embeds, "prompt_embeds")
            batch = len(cond_in)
            if batch == 0:
                raise ValueError("prompt_embeds has batch size 0")
        blocked = [False] * batch
        if hooks.prompt_filter is not None and prompts is not None:
            blocked = [bool(b) for b in hooks.prompt_filter(prompts)]
            if len(blocked) != batch:
                raise ValueError(f"prompt_filter returned {len(blocked)} flags for {batch} prompts")
        keep = [i for i in range(batch) if not blocked[i]]
        k = hooks.rerank_factor if hooks.scorer is not None else 1
        per_prompt = num_images_per_prompt * k

        candidates: torch.Tensor | None = None
        if keep:
            if prompts is not None:
                cond = self.encode_prompt([prompts[i] for i in keep])
            else:
                cond = cond_in if len(keep) == batch else cond_in.select(keep)
            cond = cond.to(device=device, dtype=self.unet.dtype)
            uncond: Conditioning | None = None
            if do_cfg:
                uncond = self._negative_conditioning(
                    negative_prompt, negative_prompt_embeds, keep, batch, cond
                ).to(device=device, dtype=self.unet.dtype)
            candidates = self._denoise(
                cond.repeat_interleave(per_prompt),
                None if uncond is None else uncond.repeat_interleave(per_prompt),
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
                generator=generator,
                latents=latents,
                eta=eta,
            )

        return self._finish(
            candidates,
            keep,
            batch,
            prompts,
            num_images_per_prompt,
            k,
            height,
            width,
            output_type,
            return_dict,
        )

    def _negative_conditioning(
        self,
        negative_prompt: str | list[str] | None,
        negative_prompt_embeds: Conditioning | torch.Tensor | None,
        keep: list[int],
        batch: int,
        cond: Conditioning,
    ) -> Conditioning:
        if negative_prompt_embeds is not None:
            neg = self._as_conditioning(negative_prompt_embeds, "negative_prompt_embeds")
            if len(neg) == 1:
                return Conditioning(
                    neg.hidden_states.expand(len(keep), -1, -1), neg.attention_mask.expand(len(keep), -1)
                )
            if len(neg) != batch:
                raise ValueError(f"negative_prompt_embeds has batch {len(neg)}, prompts have {batch}")
            return neg.select(keep)
        if self.conditioner is None:
            # No conditioner and no negative embeddings: the unconditional branch is zero vectors.
            return Conditioning(torch.zeros_like(cond.hidden_states[:, :1]), cond.attention_mask[:, :1])
        negs = (
            [""]
            if negative_prompt is None
            else ([negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt))
        )
        if len(negs) == 1:
            one = self.encode_prompt(negs)
            return Conditioning(
                one.hidden_states.expand(len(keep), -1, -1), one.attention_mask.expand(len(keep), -1)
            )
        if len(negs) != batch:
            raise ValueError(f"got {len(negs)} negative prompts for {batch} prompts; give 1 or {batch}")
        return self.encode_prompt([negs[i] for i in keep])

    def _denoise(
        self,
        cond: Conditioning,
        uncond: Conditioning | None,
        *,
        num_inference_steps: int,
        guidance_scale: float,
        height: int,
        width: int,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
        eta: float,
    ) -> torch.Tensor:
        """The sampling loop; returns the final latents (pixels in pixel space)."""
        device = self._execution_device
        n = len(cond)
        shape = (
            n,
            self.unet.config["in_channels"],
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        else:
            latents = latents.to(device=device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        extra = self.prepare_extra_step_kwargs(generator, eta)
        if uncond is not None:
            both = Conditioning.cat([uncond, cond])
            hidden, mask = both.hidden_states, both.attention_mask
        else:
            hidden, mask = cond.hidden_states, cond.attention_mask
        timesteps = self.scheduler.timesteps
        with self.progress_bar(total=len(timesteps)) as bar:
            for t in timesteps:
                model_in = torch.cat([latents, latents]) if uncond is not None else latents
                model_in = self.scheduler.scale_model_input(model_in, t)
                noise_pred = self.unet(
                    model_in, t, encoder_hidden_states=hidden, encoder_attention_mask=mask, return_dict=False
                )[0]
                if uncond is not None:
                    pred_uncond, pred_text = noise_pred.chunk(2)
                    noise_pred = pred_uncond + guidance_scale * (pred_text - pred_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]
                bar.update()
        return latents

    def _finish(
        self,
        candidates: torch.Tensor | None,
        keep: list[int],
        batch: int,
        prompts: list[str] | None,
        per_prompt: int,
        k: int,
        height: int,
        width: int,
        output_type: str,
        return_dict: bool,
    ) -> MPMPaintPipelineOutput | tuple[Any, ...]:
        """Decode, filter, rerank and convert; blocked prompts yield black images."""
        hooks = self.hooks
        filtered = hooks.prompt_filter is not None or hooks.image_filter is not None
        n_out = batch * per_prompt
        if output_type == "latent":
            if hooks.image_filter is not None or k > 1:
                raise ValueError("output_type='latent' cannot be combined with an image filter or a reranker")
            shape = (
                n_out,
                self.unet.config["in_channels"],
                height // self.vae_scale_factor,
                width // self.vae_scale_factor,
            )
            out = torch.zeros(shape, device=self._execution_device, dtype=self.unet.dtype)
            if candidates is not None:
                rows = torch.tensor(
                    [i * per_prompt + j for i in keep for j in range(per_prompt)], device=out.device
                )
                out[rows] = candidates
            flags = [i not in keep for i in range(batch) for _ in range(per_prompt)] if filtered else None
            self.maybe_free_model_hooks()
            return (
                MPMPaintPipelineOutput(images=out, nsfw_content_detected=flags)
                if return_dict
                else (out, flags)
            )

        images = torch.zeros((n_out, 3, height, width), device=self._execution_device, dtype=torch.float32)
        flags_t = torch.tensor([i not in keep for i in range(batch) for _ in range(per_prompt)])
        scores_out: torch.Tensor | None = torch.zeros(n_out) if k > 1 else None
        if candidates is not None:
            pix = (self._decode(candidates).float() / 2 + 0.5).clamp(
                0, 1
            )  # [len(keep)*per_prompt*k, 3, H, W]
            kept_prompts = (
                None if prompts is None else [prompts[i] for i in keep for _ in range(per_prompt * k)]
            )
            cand_blocked = torch.zeros(len(pix), dtype=torch.bool)
            if hooks.image_filter is not None:
                cand_blocked = torch.tensor([bool(b) for b in hooks.image_filter(pix, kept_prompts)])
                if len(cand_blocked) != len(pix):
                    raise ValueError(f"image_filter returned {len(cand_blocked)} flags for {len(pix)} images")
            if k > 1:
                assert hooks.scorer is not None
                scores = torch.as_tensor(hooks.scorer(pix, kept_prompts), dtype=torch.float32).flatten().cpu()
                if len(scores) != len(pix):
                    raise ValueError(f"scorer returned {len(scores)} scores for {len(pix)} images")
                # Blocked candidates rank last, so a safe candidate wins whenever there is one.
                ranked = torch.where(cand_blocked, torch.full_like(scores, -torch.inf), scores)
                ranked = ranked.view(len(keep), per_prompt * k)
                order = ranked.argsort(dim=1, descending=True, stable=True)[:, :per_prompt]
                pick = (order + torch.arange(len(keep))[:, None] * per_prompt * k).flatten()
                pix, cand_blocked = pix[pick.to(pix.device)], cand_blocked[pick]
                picked_scores = scores[pick]
            pix = torch.where(cand_blocked.to(pix.device)[:, None, None, None], torch.zeros_like(pix), pix)
            rows = torch.tensor([i * per_prompt + j for i in keep for j in range(per_prompt)])
            images[rows.to(images.device)] = pix
            flags_t[rows] = cand_blocked
            if scores_out is not None:
                scores_out[rows] = picked_scores
        flags = [bool(f) for f in flags_t] if filtered else None
        result = self.image_processor.postprocess(
            images, output_type=output_type, do_denormalize=[False] * n_out
        )
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result, flags, scores_out)
        return MPMPaintPipelineOutput(images=result, nsfw_content_detected=flags, scores=scores_out)


def _check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` naming the batch items of ``x`` that hold NaN or inf."""
    if x.is_meta or not x.is_floating_point():
        return
    ok = torch.isfinite(x.detach()).reshape(x.shape[0], -1).all(1)
    if not bool(ok.all()):
        bad = (~ok).nonzero().flatten().tolist()
        shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise ValueError(f"{name} holds NaN or inf values in item(s) {shown} of {x.shape[0]}")


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _refuse_pickled_components(root: Path) -> None:
    """Refuse a saved pipeline whose model components have pickled weights but no safetensors."""
    index = root / "model_index.json"
    if not index.is_file():
        return  # diffusers names the missing file
    components = json.loads(index.read_text(encoding="utf-8"))
    for name, spec in components.items():
        sub = root / name
        if name.startswith("_") or not isinstance(spec, list) or not sub.is_dir():
            continue
        if any(sub.glob("*.safetensors")):
            continue
        pickles = sorted(f.name for f in sub.iterdir() if f.suffix in _PICKLE_SUFFIXES)
        if pickles:
            library, cls_name = spec[0], spec[1]
            raise ValueError(
                f"{sub} has only pickled weights ({', '.join(pickles)}); MPMPaintPipeline loads "
                'safetensors only. If you trust the file, convert it once: python -c "from '
                f"{library} import {cls_name} as C; C.from_pretrained('{sub}', use_safetensors=False)"
                f".save_pretrained('{sub}', safe_serialization=True)\""
            )
