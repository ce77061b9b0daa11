"""The vision-language model: a vision encoder and a bridge feeding any transformers causal LM.

Each image placeholder token in a prompt is expanded to the bridge's ``K`` output tokens; their
embeddings are replaced by that image's bridge outputs before the LM runs (as LLaVA does). The LM
runs through its own ``forward`` / ``generate`` (KV cache, beam search, sampling all come from
transformers); logits are only computed where a loss or a next token needs them.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .bridges import Bridge, bridge_from_config
from .encoders import VisionEncoder, encoder_from_config, load_safetensors_into
from .interfaces import (
    IGNORE_INDEX,
    AnswerLogprobs,
    BridgeConfig,
    ChatHistory,
    ChatOutput,
    EncoderConfig,
    ImagePreprocessing,
    VisionBatch,
    VisionGenerationOutput,
    VisionLanguageConfig,
    VisionLanguageOutput,
)
from .processing import ImageProcessor, VisionCollator, as_image_list, pad_rows

CONFIG_NAME = "mpm_vision_config.json"
ENCODER_WEIGHTS = "encoder.safetensors"
BRIDGE_WEIGHTS = "bridge.safetensors"
STAGES = ("align", "instruct")


LORA_DIR = "lora"
LORA_CONFIG = "adapter_config.json"
LORA_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


def _is_peft(model: Any) -> bool:
    """A peft ``PeftModel`` wrapper (what ``peft.get_peft_model`` returns)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _has_lora(model: nn.Module) -> bool:
    """LoRA adapters inside the model (injected with peft, or a ``PeftModel``)."""
    return any("lora_" in n for n, _ in model.named_parameters())


class VisionLanguageModel(nn.Module):
    """A vision encoder + bridge + causal LM.

    Args:
        encoder: a :class:`~mpm_vision.VisionEncoder` (from :func:`~mpm_vision.create_encoder`).
        bridge: a :class:`~mpm_vision.Bridge` mapping ``encoder.feature_dim`` to the LM hidden size.
        language_model: any transformers causal LM (``AutoModelForCausalLM``), optionally with peft
            LoRA adapters (injected with ``peft.inject_adapter_in_model``, as mpm-train's
            ``trainable = {lm = "lora"}`` does, or wrapped by ``peft.get_peft_model``).
        tokenizer: its tokenizer; the image placeholder token is added to it if missing.
        config: prompt format and training settings (:class:`VisionLanguageConfig`).
        image_token: shortcut overriding ``config.image_token``.
        train_encoder: shortcut overriding ``config.train_encoder``.
    """

    def __init__(
        self,
        encoder: VisionEncoder,
        bridge: Bridge,
        language_model: Any,
        tokenizer: Any,
        *,
        config: VisionLanguageConfig | None = None,
        image_token: str | None = None,
        train_encoder: bool | None = None,
    ) -> None:
        super().__init__()
        cfg = config or VisionLanguageConfig()
        overrides: dict[str, Any] = {}
        if image_token is not None:
            overrides["image_token"] = image_token
        if train_encoder is not None:
            overrides["train_encoder"] = train_encoder
        if overrides:
            cfg = VisionLanguageConfig.from_dict({**cfg.to_dict(), **overrides})
        self.config = cfg
        self.encoder = encoder
        self.bridge = bridge
        self.language_model = language_model
        self.tokenizer = tokenizer

        hidden = int(language_model.get_input_embeddings().weight.shape[1])
        if bridge.config.out_dim != hidden:
            raise ValueError(
                f"bridge out_dim is {bridge.config.out_dim} but the language model's hidden size is {hidden}"
            )
        if bridge.config.in_dim != encoder.feature_dim:
            raise ValueError(
                f"bridge in_dim is {bridge.config.in_dim} but the encoder's feature_dim is {encoder.feature_dim}"
            )
        if cfg.image_token not in tokenizer.get_added_vocab():
            # Register it as an added special token even if the vocabulary has it already, so that
            # the text "<image>" always becomes exactly one id.
            tokenizer.add_tokens([cfg.image_token], special_tokens=True)
        self.image_token_id = int(tokenizer.convert_tokens_to_ids(cfg.image_token))
        pad = tokenizer.pad_token_id
        if pad is None:  # a tokenizer without a pad token: pad with EOS (masked out anyway)
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_token_id = int(pad)
        self.num_image_tokens = int(bridge.num_output_tokens(encoder.num_tokens))
        """``K``: LM positions per image."""
        self.collator = VisionCollator(
            tokenizer,
            image_processor=ImageProcessor(encoder.preprocessing),
            image_token_id=self.image_token_id,
            num_image_tokens=self.num_image_tokens,
            config=cfg,
            pad_token_id=self.pad_token_id,
        )
        self._lm_takes_logits_to_keep: bool | None = None

    # ------------------------------------------------------------------------------------------
    # basics
    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.bridge.parameters()).dtype

    @property
    def preprocessing(self) -> ImagePreprocessing:
        return self.encoder.preprocessing

    def preprocess(self, images: Any) -> torch.Tensor:
        """Images -> ``[B, 3, H, W]`` pixels (see :meth:`VisionEncoder.preprocess`)."""
        return self.collator.image_processor(images)  # type: ignore[misc]

    def collate(
        self,
        samples: Sequence[Mapping[str, Any]],
        *,
        padding_side: str = "right",
        for_generation: bool = False,
    ) -> VisionBatch:
        """Samples -> a padded :class:`VisionBatch` (see :class:`~mpm_vision.processing.VisionCollator`).

        Each sample: ``{"image": img | [imgs], "prompt": str, "answer": str}`` or
        ``{"images": [...], "conversation": [{"role": ..., "content": ...}, ...]}``.
        ``model.collator`` is the same callable without the model (picklable for DataLoader workers).
        """
        return self.collator(samples, padding_side=padding_side, for_generation=for_generation)

    # ------------------------------------------------------------------------------------------
    # images -> LM embeddings
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[num_images, 3, H, W]`` -> bridge outputs ``[num_images, K, hidden]``."""
        param = next(self.encoder.parameters(), None)
        if param is not None:
            pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
        return self.bridge(self.encoder(pixel_values))

    def bridge_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Encoder outputs ``[num_images, N, C]`` (e.g. cached) -> bridge outputs ``[num_images, K, hidden]``."""
        if image_features.ndim != 3 or tuple(image_features.shape[1:]) != (
            self.encoder.num_tokens,
            self.encoder.feature_dim,
        ):
            raise ValueError(
                f"image_features must have shape [num_images, {self.encoder.num_tokens}, "
                f"{self.encoder.feature_dim}] (the encoder's tokens), got {list(image_features.shape)}"
            )
        param = next(self.bridge.parameters(), None)
        if param is not None:
            image_features = image_features.to(device=param.device, dtype=param.dtype)
        return self.bridge(image_features)

    def embed_inputs(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with every placeholder position replaced by the image embeddings
        (images in row-major placeholder order)."""
        is_image = input_ids == self.image_token_id
        n_positions = int(is_image.sum())
        embedding = self.language_model.get_input_embeddings()
        # The placeholder id may lie outside the LM vocabulary: look up id 0 there instead.
        embeds = embedding(input_ids.masked_fill(is_image, 0))
        n_images = 0 if image_embeds is None else int(image_embeds.shape[0])
        k = self.num_image_tokens
        if n_positions != n_images * k:
            raise ValueError(
                f"input_ids hold {n_positions} image placeholder positions ({n_positions / k:g} images of {k} tokens) "
                f"but {n_images} image(s) were given"
            )
        if image_embeds is None or n_images == 0:
            return embeds
        flat = image_embeds.reshape(-1, image_embeds.shape[-1]).to(embeds.dtype)
        return embeds.masked_scatter(is_image.unsqueeze(-1), flat)

    def _supports_logits_to_keep(self) -> bool:
        if self._lm_takes_logits_to_keep is None:
            lm = (
                self.language_model.get_base_model() if _is_peft(self.language_model) else self.language_model
            )
            self._lm_takes_logits_to_keep = "logits_to_keep" in inspect.signature(lm.forward).parameters
        return self._lm_takes_logits_to_keep

    def _lm_logits(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        keep: int | torch.Tensor,
    ) -> torch.Tensor:
        """Run the LM and return logits only at ``keep`` (transformers' ``logits_to_keep``: an int,
        a position vector or a boolean ``[B, T]`` mask, the latter giving ``[n_true, V]``)."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        kwargs: dict[str, Any] = {
            "inputs_embeds": embeds,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "use_cache": False,
        }
        fits = self._supports_logits_to_keep()
        if fits:
            kwargs["logits_to_keep"] = keep
        logits = self.language_model(**kwargs).logits
        if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool and logits.ndim == 3:
            logits = logits[keep]  # an LM that ignored the mask: select afterwards
        elif not fits and isinstance(keep, int) and keep > 0:
            logits = logits[:, -keep:]
        return logits

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        image_embeds: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor | None = None,
    ) -> VisionLanguageOutput:
        """Loss on answer tokens and/or next-token logits.

        Args:
            pixel_values: ``[num_images, 3, H, W]``, all images of the batch in placeholder order.
            input_ids: ``[B, T]`` with ``K`` placeholder ids per image (from :meth:`collate`).
            attention_mask: ``[B, T]`` (1 = real token); left or right padding both work.
            labels: ``[B, T]``, ``-100`` where no loss is taken; the loss is the mean next-token
                cross-entropy over the other positions.
            image_embeds: precomputed bridge outputs instead of ``pixel_values``.
            image_features: precomputed encoder outputs ``[num_images, N, C]`` instead of
                ``pixel_values`` (e.g. from a :class:`~mpm_vision.FeatureCache` of the frozen
                encoder): the bridge runs on them and the encoder does not run at all.
            logits_to_keep: which logits to return. Default: with labels, the ``[N, V]`` logits
                of the loss positions only; without labels, ``[B, 1, V]`` at each row's last real
                token. ``0`` = every position (``[B, T, V]``), as transformers does.
        """
        if input_ids is None:
            raise ValueError("forward() needs input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if input_ids.shape != attention_mask.shape:
            raise ValueError(
                f"input_ids {list(input_ids.shape)} and attention_mask {list(attention_mask.shape)} differ in shape"
            )
        given = [n for n, v in (("pixel_values", pixel_values), ("image_embeds", image_embeds),
                                ("image_features", image_features)) if v is not None]  # fmt: skip
        if len(given) > 1:
            raise ValueError(f"pass one of pixel_values, image_features, image_embeds; got {given}")
        if pixel_values is not None:
            image_embeds = self.encode_images(pixel_values)
        elif image_features is not None:
            image_embeds = self.bridge_features(image_features)
        embeds = self.embed_inputs(input_ids, image_embeds)

        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"labels {list(labels.shape)} and input_ids {list(input_ids.shape)} differ in shape"
                )
            targets_2d = labels[:, 1:]
            valid = targets_2d != IGNORE_INDEX
            keep_mask = torch.zeros_like(labels, dtype=torch.bool)
            keep_mask[:, :-1] = valid
            targets = targets_2d[valid]
            n = int(targets.numel())
            if logits_to_keep is None:
                if n == 0:
                    loss = embeds.sum() * 0.0  # no answer tokens: a zero that still has a graph
                    return VisionLanguageOutput(
                        loss=loss, logits=None, num_loss_tokens=0, image_embeds=image_embeds
                    )
                logits = self._lm_logits(embeds, attention_mask, keep_mask)
                loss = F.cross_entropy(logits.float(), targets)
                return VisionLanguageOutput(
                    loss=loss, logits=logits, num_loss_tokens=n, image_embeds=image_embeds
                )
            logits = self._lm_logits(embeds, attention_mask, logits_to_keep)
            if logits.ndim != 3 or logits.shape[1] != labels.shape[1]:
                raise ValueError(
                    "with labels, logits_to_keep must be None (loss positions) or 0 (all positions)"
                )
            loss = F.cross_entropy(logits[:, :-1][valid].float(), targets) if n else embeds.sum() * 0.0
            return VisionLanguageOutput(
                loss=loss, logits=logits, num_loss_tokens=n, image_embeds=image_embeds
            )

        if logits_to_keep is None:
            last = attention_mask.long().cumsum(-1).argmax(-1)  # index of each row's last real token
            keep = torch.zeros_like(attention_mask, dtype=torch.bool)
            keep[torch.arange(keep.shape[0], device=keep.device), last] = True
            logits = self._lm_logits(embeds, attention_mask, keep).unsqueeze(1)
        else:
            logits = self._lm_logits(embeds, attention_mask, logits_to_keep)
        return VisionLanguageOutput(loss=None, logits=logits, num_loss_tokens=0, image_embeds=image_embeds)

    def train(self, mode: bool = True) -> VisionLanguageModel:
        """Set training mode; a frozen encoder (``config.train_encoder=False``) stays in eval mode, so
        its BatchNorm statistics and dropout behave as at inference (and equal cached features)."""
        super().train(mode)
        if not self.config.train_encoder:
            self.encoder.eval()
        return self

    # ------------------------------------------------------------------------------------------
    # training hooks (the mpm-train ``Trainable`` protocol, without importing it)
    def parts(self) -> dict[str, nn.Module]:
        """The named parts a stage policy refers to: ``encoder``, ``bridge`` and ``lm``."""
        return {"encoder": self.encoder, "bridge": self.bridge, "lm": self.language_model}

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        """The parameters that train in a preset stage (a query: nothing is frozen or unfrozen here).

        ``"align"``: the bridge (and the encoder if ``config.train_encoder``); the LM is frozen.
        ``"instruct"``: the bridge, the LM (only its LoRA adapters when it has any), and the encoder
        if ``config.train_encoder``. Stages with a per-part policy (mpm-train's ``trainable``
        table) do not ask this; the trainer does the freezing.
        """
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")
        chosen: list[nn.Parameter] = list(self.bridge.parameters())
        if self.config.train_encoder:
            chosen += list(self.encoder.parameters())
        if stage == "instruct":
            lm = self.language_model
            if _has_lora(lm):
                chosen += [p for n, p in lm.named_parameters() if "lora_" in n]
            else:
                chosen += list(lm.parameters())
        # Deduplicate (tied weights appear once).
        return list({id(p): p for p in chosen}.values())

    def training_step(self, batch: VisionBatch | Mapping[str, Any]) -> torch.Tensor:
        """Mean answer-token cross-entropy of a batch from :meth:`collate` (moved to the model's device)."""
        if isinstance(batch, VisionBatch):
            batch = batch.to(self.device)
            fields = {k: batch[k] for k in batch.keys()}
        else:
            fields = {
                k: (v.to(self.device) if isinstance(v, torch.Tensor) else v)
                for k, v in batch.items()
                if k
                in ("pixel_values", "input_ids", "attention_mask", "labels", "image_embeds", "image_features")
            }
        if fields.get("labels") is None:
            raise ValueError("training_step needs a batch with labels (samples with answers)")
        out = self.forward(**fields)
        assert out.loss is not None
        return out.loss

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        """Alias of :meth:`gradient_checkpointing_enable` (the transformers 5 name)."""
        self.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Activation checkpointing in the LM (transformers' own switch); saves memory on long prompts."""
        lm = self.language_model
        fn = getattr(lm, "activation_checkpointing_enable", None) or lm.gradient_checkpointing_enable
        fn(**kwargs)

    # ------------------------------------------------------------------------------------------
    # scoring
    @torch.no_grad()
    def answer_logprobs(
        self,
        images: Sequence[Any],
        prompts: str | Sequence[str],
        answers: Sequence[str],
        *,
        pairs: Sequence[tuple[int, int]] | None = None,
        batch_size: int = 32,
        use_prefix_cache: bool = True,
    ) -> AnswerLogprobs:
        """Log-probabilities of ``answers`` as the model's answer to each image and its prompt.

        Args:
            images: one image per entry.
            prompts: one prompt for every image, or one per image (formatted like :meth:`collate`;
                the image token at most once, prepended when absent).
            answers: candidate answers.
            pairs: ``(image index, answer index)`` pairs to score; default every image x answer.
            batch_size: (image, answer) rows per forward pass.
            use_prefix_cache: run each image's prefix (image tokens + prompt) through the LM once and
                reuse its key/value cache for every answer (same numbers, about 2x faster; see
                ``mpm_vision.scoring``); ``False`` scores every pair as a whole row.

        Returns:
            :class:`AnswerLogprobs` of shape ``[len(images), len(answers)]`` (or ``[len(pairs)]``):
            ``total``, ``num_tokens`` and ``mean`` (what ``-forward(labels=...).loss`` is for one pair).
        """
        from .scoring import answer_logprobs

        return answer_logprobs(
            self,
            images,
            prompts,
            answers,
            pairs=pairs,
            batch_size=batch_size,
            use_prefix_cache=use_prefix_cache,
        )

    # ------------------------------------------------------------------------------------------
    # generation
    def _generation_inputs(
        self, samples: Sequence[Mapping[str, Any]], image_embeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = self.collate(samples, padding_side="left", for_generation=True)
        if image_embeds is None and batch.pixel_values is not None:
            image_embeds = self.encode_images(batch.pixel_values.to(self.device))
        ids = batch.input_ids.to(self.device)
        return ids, self.embed_inputs(ids, image_embeds), batch.attention_mask.to(self.device)

    def _lm_generate(
        self, input_ids: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """The LM's own ``generate`` on the merged embeddings; returns the new tokens only.

        The prompt ids go along (placeholders replaced by the pad id, which may lie outside the
        vocabulary otherwise) so that logits processors such as ``repetition_penalty`` see the
        prompt text, as with transformers' Llava.
        """
        kwargs = dict(kwargs)
        kwargs.setdefault("max_new_tokens", 32)
        kwargs.setdefault("pad_token_id", self.pad_token_id)
        if self.tokenizer.eos_token_id is not None:
            kwargs.setdefault("eos_token_id", self.tokenizer.eos_token_id)
        ids = input_ids.masked_fill(input_ids == self.image_token_id, self.pad_token_id)
        out = self.language_model.generate(input_ids=ids, inputs_embeds=embeds, attention_mask=mask, **kwargs)
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        return sequences[:, ids.shape[1] :]

    @torch.no_grad()
    def generate(
        self,
        images: Any,
        prompts: str | Sequence[str],
        **generation_kwargs: Any,
    ) -> VisionGenerationOutput:
        """Answer prompts about images with the LM's own ``generate`` (KV cache, greedy /
        sampling / beam search: every transformers generation kwarg works).

        Args:
            images: for one prompt, an image or a list of images; for a list of prompts, a list
                with one entry (an image, a list of images, or ``None``) per prompt.
            prompts: user prompts; formatted with ``config.prompt_template`` (or the chat
                template). Placeholders mark where images go; without any, images are prepended.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
            images = [images]
        if images is None:
            images = [None] * len(prompts)
        images = list(images)
        if len(images) != len(prompts):
            raise ValueError(
                f"got {len(prompts)} prompts but {len(images)} image entries; pass one entry per prompt"
            )
        samples = [{"images": as_image_list(im), "prompt": p} for im, p in zip(images, prompts)]
        ids, embeds, mask = self._generation_inputs(samples)
        sequences = self._lm_generate(ids, embeds, mask, generation_kwargs)
        texts = [t.strip() for t in self.tokenizer.batch_decode(sequences, skip_special_tokens=True)]
        return VisionGenerationOutput(texts=texts, sequences=sequences)

    @torch.no_grad()
    def generate_from_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        *,
        image_embeds: torch.Tensor | None = None,
        **generation_kwargs: Any,
    ) -> torch.Tensor:
        """Generate from an already collated (left-padded) batch, e.g.
        ``model.collate(samples, padding_side="left", for_generation=True)``; returns the new
        token ids ``[B, new_tokens]``."""
        if pixel_values is not None and image_embeds is not None:
            raise ValueError("pass pixel_values or image_embeds, not both")
        input_ids = input_ids.to(self.device)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)
        if pixel_values is not None:
            image_embeds = self.encode_images(pixel_values)
        embeds = self.embed_inputs(input_ids, image_embeds)
        return self._lm_generate(input_ids, embeds, mask, generation_kwargs)

    @torch.no_grad()
    def chat(
        self,
        images: Any,
        question: str,
        history: ChatHistory | None = None,
        **generation_kwargs: Any,
    ) -> ChatOutput:
        """One turn of a multi-turn conversation.

        ``images`` are the images new in this turn (or ``None``); earlier images are reused from
        ``history.image_embeds`` without running the encoder again. Returns the answer and the new
        history (pass it to the next call).
        """
        history = history if history is not None else ChatHistory()
        new_images = as_image_list(images)
        token = self.config.image_token
        n_marked = question.count(token)
        if n_marked == 0 and new_images:
            question = token * len(new_images) + self.config.image_separator + question
        elif n_marked != len(new_images):
            raise ValueError(
                f"the question has {n_marked} image placeholder(s) but {len(new_images)} new image(s) were given"
            )
        embeds_cache = history.image_embeds
        if new_images:
            new_embeds = self.encode_images(self.preprocess(new_images).to(self.device))
            embeds_cache = (
                new_embeds if embeds_cache is None else torch.cat([embeds_cache, new_embeds], dim=0)
            )
        messages: list[dict[str, Any]] = []
        for q, a in history.turns:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": question})
        n_images = 0 if embeds_cache is None else int(embeds_cache.shape[0])
        segments = self.collator.render({"conversation": messages}, n_images, for_generation=True)
        row = self.collator.tokenize(segments, num_images=n_images)
        batch = pad_rows([row], [n_images], None, pad_token_id=self.pad_token_id, padding_side="left")
        ids = batch.input_ids.to(self.device)
        embeds = self.embed_inputs(ids, embeds_cache)
        generation_kwargs.setdefault("max_new_tokens", 64)
        sequences = self._lm_generate(ids, embeds, batch.attention_mask.to(self.device), generation_kwargs)
        answer = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)[0].strip()
        return ChatOutput(
            answer=answer, history=ChatHistory([*history.turns, (question, answer)], embeds_cache)
        )

    # ------------------------------------------------------------------------------------------
    # persistence
    def save_pretrained(
        self, save_directory: str | os.PathLike[str], *, save_language_model: bool = True
    ) -> None:
        """Write encoder and bridge (safetensors) and a JSON config; the LM and tokenizer go to
        ``language_model/`` and ``tokenizer/`` (or, with ``save_language_model=False``, are
        referenced by their ``name_or_path``). LoRA adapters are saved under ``lora/`` in peft's format
        (``adapter_config.json`` + ``adapter_model.safetensors``) and the LM without them."""
        from safetensors.torch import save_file

        root = Path(save_directory)
        root.mkdir(parents=True, exist_ok=True)
        save_file(_contiguous(self.encoder.model.state_dict()), str(root / ENCODER_WEIGHTS))
        save_file(_contiguous(self.bridge.state_dict()), str(root / BRIDGE_WEIGHTS))
        lm = self.language_model
        lora = _has_lora(lm)
        base = lm.get_base_model() if _is_peft(lm) else lm
        if save_language_model:
            lm_ref = "language_model"
            if lora:
                state = {
                    k.replace(".base_layer.", "."): v
                    for k, v in base.state_dict().items()
                    if "lora_" not in k
                }
                base.save_pretrained(root / lm_ref, state_dict=state)
            else:
                base.save_pretrained(root / lm_ref)
            self.tokenizer.save_pretrained(root / "tokenizer")
            tok_ref = "tokenizer"
        else:
            lm_ref = str(getattr(base.config, "_name_or_path", "") or getattr(base, "name_or_path", ""))
            tok_ref = str(getattr(self.tokenizer, "name_or_path", "") or lm_ref)
        if lora:
            _save_lora(lm, root / LORA_DIR)
        meta = {
            "format": "mpm-vision",
            "format_version": 1,
            "vision_language": self.config.to_dict(),
            "encoder": self.encoder.config.to_dict(),
            "preprocessing": self.encoder.preprocessing.to_dict(),
            "bridge": self.bridge.config.to_dict(),
            "language_model": lm_ref,
            "tokenizer": tok_ref,
            "lora": LORA_DIR if lora else None,
        }
        (root / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        *,
        language_model: Any | None = None,
        tokenizer: Any | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> VisionLanguageModel:
        """Load what :meth:`save_pretrained` wrote. ``language_model`` / ``tokenizer`` objects
        override the saved or referenced ones (LoRA adapters, if saved, are injected on top)."""
        root = Path(directory)
        cfg_path = root / CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(
                f"no {CONFIG_NAME} in {root}; was it written by VisionLanguageModel.save_pretrained?"
            )
        meta = json.loads(cfg_path.read_text())
        encoder = encoder_from_config(EncoderConfig.from_dict(meta["encoder"]))
        load_safetensors_into(encoder.model, root / ENCODER_WEIGHTS, what="encoder")
        if "preprocessing" in meta:
            encoder.preprocessing = ImagePreprocessing.from_dict(meta["preprocessing"])
        bridge = bridge_from_config(BridgeConfig.from_dict(meta["bridge"]))
        load_safetensors_into(bridge, root / BRIDGE_WEIGHTS, what="bridge")

        def resolve(ref: str) -> str:
            local = root / ref
            return str(local) if ref and local.exists() else ref

        if language_model is None:
            from transformers import AutoModelForCausalLM

            ref = resolve(meta["language_model"])
            if not ref:
                raise ValueError("the saved model references no language model; pass language_model=")
            kw: dict[str, Any] = {} if torch_dtype is None else {"dtype": torch_dtype}
            _refuse_pickles(Path(ref), "language model")
            # use_safetensors=True: transformers would otherwise fall back to pytorch_model.bin (a pickle)
            language_model = AutoModelForCausalLM.from_pretrained(ref, use_safetensors=True, **kw)
            if meta.get("lora"):
                _refuse_pickles(root / meta["lora"], "LoRA adapter", required=LORA_WEIGHTS)
                _load_lora(language_model, root / meta["lora"])
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(resolve(meta["tokenizer"]))
        vl_cfg = VisionLanguageConfig.from_dict(meta["vision_language"])
        model = cls(encoder, bridge, language_model, tokenizer, config=vl_cfg)
        if torch_dtype is not None:
            model.encoder.to(torch_dtype)
            model.bridge.to(torch_dtype)
        return model.eval()

    def trainable_parameter_count(self, parameters: Iterable[nn.Parameter] | None = None) -> int:
        """Number of elements in ``parameters`` (default: those with ``requires_grad``)."""
        params = (
            list(parameters) if parameters is not None else [p for p in self.parameters() if p.requires_grad]
        )
        return sum(p.numel() for p in {id(p): p for p in params}.values())


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _refuse_pickles(directory: Path, what: str, *, required: str | None = None) -> None:
    """Refuse a local weight directory that holds only pickled weights (``pytorch_model.bin``...).

    Weights load from safetensors only: unpickling runs code, and ``weights_only=True`` narrows that
    but is still the pickle machinery. The error says how to convert once (for a trusted file).
    """
    if not directory.is_dir():
        return  # a hub name: use_safetensors=True refuses pickles there
    if any(directory.glob("*.safetensors")) and (required is None or (directory / required).is_file()):
        return
    pickles = sorted(f.name for f in directory.iterdir() if f.suffix in _PICKLE_SUFFIXES)
    if not pickles:
        return  # nothing to refuse; the loader names what is missing
    if required == "adapter_model.safetensors":
        convert = (
            f'python -c "import torch; from safetensors.torch import save_file; save_file(torch.load('
            f"'{directory / pickles[0]}', weights_only=True), '{directory / required}')\""
        )
    else:
        convert = (
            'python -c "from transformers import AutoModelForCausalLM as M; '
            f"M.from_pretrained('{directory}', use_safetensors=False).save_pretrained('{directory}')\""
        )
    raise ValueError(
        f"the {what} in {directory} has only pickled weights ({', '.join(pickles)}); mpm loads "
        f"safetensors only. If you trust the file, convert it once: {convert}"
    )


def _save_lora(lm: nn.Module, directory: Path) -> None:
    """LoRA adapters of ``lm`` in peft's on-disk format, keys relative to the transformers model."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    config: Any = getattr(lm, "peft_config", {}).get("default")
    if config is None:
        raise ValueError("the language model has LoRA parameters but no peft_config['default'] to save")
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(directory))
    state = {k.removeprefix(_PEFT_PREFIX): v for k, v in get_peft_model_state_dict(lm).items()}
    save_file(_contiguous(state), str(directory / LORA_WEIGHTS))


def _load_lora(lm: nn.Module, directory: Path) -> None:
    """Inject the adapters :func:`_save_lora` wrote into ``lm`` and load their weights (safetensors)."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = directory / LORA_WEIGHTS
    if not (directory / LORA_CONFIG).is_file() or not weights.is_file():
        raise FileNotFoundError(f"{directory} lacks {LORA_CONFIG} or {LORA_WEIGHTS} (LoRA adapters)")
    config = LoraConfig.from_pretrained(str(directory))
    config.inference_mode = False
    inject_adapter_in_model(config, lm)
    state = {k.removeprefix(_PEFT_PREFIX): v for k, v in load_file(str(weights)).items()}
    result = set_peft_model_state_dict(lm, state)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"{weights} lacks {len(missing)} LoRA weights, e.g. {missing[:3]}")


def _contiguous(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for k, v in state.items():
        ptr = v.data_ptr()
        # safetensors refuses shared storage: store a copy of a tensor seen under another name.
        out[k] = v.detach().clone().contiguous() if ptr in seen else v.detach().contiguous()
        seen.setdefault(ptr, k)
    return out
