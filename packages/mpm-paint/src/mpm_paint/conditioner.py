"""LLM hidden states as text conditioning for a diffusion UNet (VisCPM-Paint's text side).

A frozen transformers language model encodes the prompt; the hidden states of one layer go
through ``Linear(no bias) -> LayerNorm`` (VisCPM's ``trans_block``) into the UNet's
cross-attention width. Only that projection trains.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import load_file, save_file
from torch import nn

from .interfaces import Conditioning, TokenizerLike

PROJECTION_WEIGHTS = "projection.safetensors"
LM_SUBFOLDER = "language_model"
TOKENIZER_SUBFOLDER = "tokenizer"


def tokenize_prompts(
    tokenizer: TokenizerLike,
    prompts: list[str],
    *,
    max_length: int = 77,
    padding: str = "longest",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize prompts for an :class:`LLMConditioner`: truncated, **right**-padded, never empty.

    Right padding keeps a causal LM's hidden states of the real tokens identical to an unpadded
    run. A prompt that tokenizes to nothing (e.g. ``""`` with a tokenizer that adds no BOS) gets
    one BOS/EOS/pad token so that every row has at least one attended position.

    Args:
        tokenizer: any transformers tokenizer.
        prompts: the texts (non-empty list).
        max_length: truncation length.
        padding: ``"longest"`` (pad to the longest prompt) or ``"max_length"``.

    Returns:
        ``(input_ids, attention_mask)``, both ``long [B, L]``.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if len(prompts) == 0:
        raise ValueError("the prompt list is empty: give at least one prompt")
    if padding not in ("longest", "max_length"):
        raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
    enc = tokenizer(list(prompts), truncation=True, max_length=max_length, padding=False)
    rows: list[list[int]] = [list(ids) for ids in enc["input_ids"]]
    filler = next(
        (
            t
            for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
            if t is not None
        ),
        0,
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else filler
    rows = [r if r else [filler] for r in rows]
    length = max_length if padding == "max_length" else max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def _hidden_size(language_model: nn.Module) -> int:
    config: Any = getattr(language_model, "config", None)
    size = getattr(config, "hidden_size", None)
    if size is None and hasattr(config, "get_text_config"):
        size = getattr(config.get_text_config(), "hidden_size", None)
    if size is None:
        emb: Any = language_model.get_input_embeddings()  # type: ignore[operator]
        size = emb.embedding_dim
    return int(size)


def _num_layers(language_model: nn.Module) -> int | None:
    config: Any = getattr(language_model, "config", None)
    n = getattr(config, "num_hidden_layers", None)
    if n is None and hasattr(config, "get_text_config"):
        n = getattr(config.get_text_config(), "num_hidden_layers", None)
    return None if n is None else int(n)


class LLMConditioner(ModelMixin, ConfigMixin):
    """Frozen LM hidden states -> ``Linear(no bias) -> LayerNorm`` -> :class:`Conditioning`.

    Args:
        language_model: any transformers LM (causal LMs are run through their backbone, so the
            vocabulary-sized logits are never computed). It is frozen and kept in eval mode.
        tokenizer: its tokenizer.
        layer: which entry of ``hidden_states`` to use (``-1`` = last layer, ``0`` = embeddings).
        out_dim: the UNet's ``cross_attention_dim``.
        max_length: prompts are truncated to this many tokens.
        padding: ``"longest"`` or ``"max_length"`` (see :func:`tokenize_prompts`).
        language_model_path: a local path the LM (and tokenizer) can be reloaded from; when set,
            :meth:`save_pretrained` references it instead of writing the LM's weights.

    This is a diffusers ``ModelMixin`` so that ``DiffusionPipeline.save_pretrained`` /
    ``from_pretrained`` find its save/load methods; both are overridden here because the LM is a
    transformers model (not part of a diffusers state dict) and may be referenced by path instead
    of copied: ``projection.safetensors`` holds the projection, ``config.json`` the settings, and
    ``language_model/`` + ``tokenizer/`` the LM when it is saved.
    """

    config_name = "config.json"  # type: ignore[assignment]
    ignore_for_config = ["language_model", "tokenizer"]  # noqa: RUF012 (diffusers declares it so)
    _supports_gradient_checkpointing = False

    def __init__(
        self,
        language_model: nn.Module,
        tokenizer: TokenizerLike,
        *,
        layer: int = -1,
        out_dim: int,
        max_length: int = 77,
        padding: str = "longest",
        language_model_path: str | None = None,
        in_dim: int | None = None,
    ) -> None:
        super().__init__()
        hidden = _hidden_size(language_model)
        if in_dim is not None and in_dim != hidden:
            raise ValueError(f"in_dim={in_dim} does not match the language model's hidden size {hidden}")
        # Registered by hand: diffusers' @register_to_config decorator maps positional arguments by
        # position after dropping ``ignore_for_config`` names, which would misassign ``language_model``.
        self.register_to_config(
            layer=layer,
            out_dim=out_dim,
            max_length=max_length,
            padding=padding,
            language_model_path=None if language_model_path is None else str(language_model_path),
            in_dim=hidden,
        )
        n_layers = _num_layers(language_model)
        if n_layers is not None and not -(n_layers + 1) <= layer <= n_layers:
            raise ValueError(
                f"layer={layer} is out of range for a language model with {n_layers} layers "
                f"(valid: {-(n_layers + 1)}..{n_layers})"
            )
        if out_dim <= 0:
            raise ValueError(f"out_dim must be positive, got {out_dim}")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        self.language_model = language_model
        self.tokenizer = tokenizer
        # Default of save_pretrained(save_language_model=None); MPMPaintPipeline.save_pretrained sets it.
        self.save_language_model: bool | None = None
        self.language_model.requires_grad_(False)
        self.language_model.eval()
        # VisCPM-Paint's trans_block: Linear(hidden -> cross_attention_dim, bias=False) -> LayerNorm.
        self.projection = nn.Sequential(nn.Linear(hidden, out_dim, bias=False), nn.LayerNorm(out_dim))

    # ----------------------------------------------------------------------------------- properties
    @property
    def in_dim(self) -> int:
        return int(self.config["in_dim"])

    @property
    def out_dim(self) -> int:
        return int(self.config["out_dim"])

    @property
    def device(self) -> torch.device:
        return next(self.projection.parameters()).device

    def train(self, mode: bool = True) -> LLMConditioner:
        """Set train mode on the projection; the frozen LM always stays in eval mode."""
        super().train(mode)
        self.language_model.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The projection's parameters (the LM is frozen)."""
        return list(self.projection.parameters())

    # ------------------------------------------------------------------------------------ encoding
    def tokenize(self, prompts: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` for ``prompts`` (see :func:`tokenize_prompts`)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return tokenize_prompts(
            self.tokenizer, prompts, max_length=self.config["max_length"], padding=self.config["padding"]
        )

    @torch.no_grad()
    def lm_hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The frozen LM's hidden states at ``layer``: ``[B, L, in_dim]`` (no gradient)."""
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and attention_mask must both be [B, L], got {tuple(input_ids.shape)} "
                f"and {tuple(attention_mask.shape)}"
            )
        # Run the backbone of a *ForCausalLM so that no vocabulary-sized logits are computed.
        backbone = getattr(self.language_model, "base_model", self.language_model)
        lm_device = next(self.language_model.parameters()).device
        out = backbone(
            input_ids=input_ids.to(lm_device),
            attention_mask=attention_mask.to(lm_device),
            output_hidden_states=True,
            use_cache=False,
            return_dict=True,
        )
        return out.hidden_states[self.config["layer"]]

    def project(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> Conditioning:
        """Apply the trainable projection to LM hidden states."""
        if hidden_states.shape[-1] != self.in_dim:
            raise ValueError(
                f"hidden states have width {hidden_states.shape[-1]}, the projection expects {self.in_dim}"
            )
        p = next(self.projection.parameters())
        out = self.projection(hidden_states.to(device=p.device, dtype=p.dtype))
        return Conditioning(out, attention_mask.to(p.device))

    def encode_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Conditioning:
        """Conditioning from token ids (right-padded); gradients flow into the projection only."""
        hidden = self.lm_hidden_states(input_ids, attention_mask)
        return self.project(hidden, attention_mask)

    def forward(self, prompts: list[str] | str) -> Conditioning:
        """Encode prompts into a :class:`Conditioning` ``[B, L, out_dim]`` with its mask."""
        ids, mask = self.tokenize(prompts)
        return self.encode_ids(ids, mask)

    # ------------------------------------------------------------------------------ save and load
    def save_pretrained(  # type: ignore[override]
        self,
        save_directory: str | os.PathLike[str],
        *,
        safe_serialization: bool = True,
        save_language_model: bool | None = None,
        **kwargs: Any,
    ) -> None:
        """Write ``config.json``, ``projection.safetensors`` and (unless referenced) the LM.

        Args:
            save_directory: target folder (created).
            safe_serialization: must be ``True`` (only safetensors is written).
            save_language_model: ``True`` writes the LM and tokenizer into ``language_model/`` and
                ``tokenizer/``; ``False`` only records ``language_model_path``; ``None`` (default)
                saves unless ``language_model_path`` is set.
            kwargs: ignored (accepted for ``DiffusionPipeline.save_pretrained``).
        """
        if not safe_serialization:
            raise ValueError(
                "LLMConditioner saves safetensors only (safe_serialization=False is not supported)"
            )
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        path = self.config["language_model_path"]
        if save_language_model is None:
            save_language_model = self.save_language_model
        if save_language_model is None:
            save_language_model = path is None
        if not save_language_model and path is None:
            raise ValueError(
                "save_language_model=False needs language_model_path (where the LM can be reloaded from)"
            )
        if save_language_model:
            lm: Any = self.language_model
            if not hasattr(lm, "save_pretrained") or not hasattr(self.tokenizer, "save_pretrained"):
                raise TypeError("the language model and tokenizer must be transformers objects to be saved")
            lm.save_pretrained(out / LM_SUBFOLDER, safe_serialization=True)
            self.tokenizer.save_pretrained(out / TOKENIZER_SUBFOLDER)
        self.save_config(out)
        meta = {
            "language_model_class": type(self.language_model).__name__,
            "saved_language_model": save_language_model,
        }
        (out / "language_model.json").write_text(json.dumps(meta, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in self.projection.state_dict().items()}
        save_file(state, str(out / PROJECTION_WEIGHTS), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        language_model: nn.Module | None = None,
        tokenizer: TokenizerLike | None = None,
        torch_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> LLMConditioner:
        """Load a conditioner written by :meth:`save_pretrained` (safetensors only, offline).

        Args:
            pretrained_model_name_or_path: the folder.
            language_model, tokenizer: use these instead of loading them (e.g. one LM shared by
                several models).
            torch_dtype: dtype for the LM and the projection.
            kwargs: ignored (``DiffusionPipeline.from_pretrained`` passes its loading options).
        """
        folder = Path(pretrained_model_name_or_path)
        if not (folder / cls.config_name).is_file():
            raise FileNotFoundError(f"{folder} has no {cls.config_name}: not an LLMConditioner folder")
        config: dict[str, Any] = dict(cls.load_config(folder))  # type: ignore[arg-type]
        meta_file = folder / "language_model.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        saved = (folder / LM_SUBFOLDER).is_dir()
        lm_dir = folder / LM_SUBFOLDER if saved else config.get("language_model_path")
        tok_dir = folder / TOKENIZER_SUBFOLDER if (folder / TOKENIZER_SUBFOLDER).is_dir() else lm_dir
        if language_model is None:
            if lm_dir is None:
                raise ValueError(
                    f"{folder} holds no language model and references none; pass language_model="
                )
            lm_cls = (
                getattr(transformers, meta.get("language_model_class", ""), None) or transformers.AutoModel
            )
            lm_kwargs: dict[str, Any] = {"use_safetensors": True}
            if torch_dtype is not None:
                lm_kwargs["dtype"] = torch_dtype
            language_model = lm_cls.from_pretrained(str(lm_dir), **lm_kwargs)
        if tokenizer is None:
            if tok_dir is None:
                raise ValueError(f"{folder} holds no tokenizer and references none; pass tokenizer=")
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
        init = {
            k: config[k]
            for k in ("layer", "out_dim", "max_length", "padding", "language_model_path", "in_dim")
            if k in config
        }
        model = cls(language_model, tokenizer, **init)
        state = load_file(str(folder / PROJECTION_WEIGHTS))
        model.projection.load_state_dict(state)
        if torch_dtype is not None:
            model.projection.to(torch_dtype)
        return model.eval()
