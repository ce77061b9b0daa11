"""Export to transformers' ``LlavaForConditionalGeneration`` (same weights, same outputs).

Works when the model is LLaVA-shaped: a CLIP-style timm ViT (``pre_norm=True``, one class token,
no fc-norm, e.g. ``vit_base_patch16_clip_224`` or its ``_quickgelu`` variant), a 2-layer ``mlp``
bridge and a language model whose ``base_model`` + ``lm_head`` are the usual transformers pair.
Useful to serve a trained model with the HF/vLLM Llava stack, and to check this package against
transformers (see the tests and ``benchmarks/vision``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .model import VisionLanguageModel


def _clip_vision_state(timm_vit: nn.Module) -> dict[str, torch.Tensor]:
    sd = timm_vit.state_dict()
    out: dict[str, torch.Tensor] = {
        "embeddings.class_embedding": sd["cls_token"].reshape(-1),
        "embeddings.patch_embedding.weight": sd["patch_embed.proj.weight"],
        "embeddings.position_embedding.weight": sd["pos_embed"][0],
        "pre_layrnorm.weight": sd["norm_pre.weight"],
        "pre_layrnorm.bias": sd["norm_pre.bias"],
        "post_layernorm.weight": sd["norm.weight"],
        "post_layernorm.bias": sd["norm.bias"],
    }
    depth = len(timm_vit.blocks)  # type: ignore[arg-type]
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"encoder.layers.{i}."
        qw = sd[src + "attn.qkv.weight"].chunk(3, dim=0)
        qb = sd[src + "attn.qkv.bias"].chunk(3, dim=0)
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f"{dst}self_attn.{name}.weight"] = qw[j]
            out[f"{dst}self_attn.{name}.bias"] = qb[j]
        out[dst + "self_attn.out_proj.weight"] = sd[src + "attn.proj.weight"]
        out[dst + "self_attn.out_proj.bias"] = sd[src + "attn.proj.bias"]
        for a, b in (
            ("norm1", "layer_norm1"),
            ("norm2", "layer_norm2"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ):
            out[f"{dst}{b}.weight"] = sd[f"{src}{a}.weight"]
            out[f"{dst}{b}.bias"] = sd[f"{src}{a}.bias"]
    return out


def export_llava(model: VisionLanguageModel) -> Any:
    """A ``transformers.LlavaForConditionalGeneration`` holding ``model``'s weights.

    Raises ``ValueError`` naming the first thing that is not LLaVA-shaped.
    """
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    vit: Any = model.encoder.model
    bridge: Any = model.bridge
    enc_cfg = model.encoder.config
    problems = []
    if model.bridge.config.kind != "mlp" or getattr(bridge, "linear_2", None) is None:
        problems.append("the bridge must be a 2-layer 'mlp' bridge")
    if (
        not hasattr(vit, "blocks")
        or getattr(vit, "cls_token", None) is None
        or getattr(vit, "num_prefix_tokens", 0) != 1
    ):
        problems.append("the encoder must be a timm ViT with exactly one class token")
    elif isinstance(vit.norm_pre, nn.Identity) or not isinstance(
        getattr(vit, "fc_norm", nn.Identity()), nn.Identity
    ):
        problems.append("the ViT must be CLIP-style (pre_norm=True, no fc_norm)")
    if enc_cfg.feature_layer == -1 or enc_cfg.keep_prefix_tokens:
        problems.append(
            "feature_layer must be a block index (LLaVA reads a hidden layer, e.g. -2) without prefix tokens"
        )
    if problems:
        raise ValueError("cannot export to Llava: " + "; ".join(problems))
    lm = model.language_model
    text_config = lm.config
    if model.image_token_id >= text_config.vocab_size:
        raise ValueError(
            f"image token id {model.image_token_id} is outside the LM vocabulary ({text_config.vocab_size}); "
            "Llava embeds it, so resize the LM embeddings first"
        )
    block = vit.blocks[0]
    act = type(block.mlp.act).__name__.lower()
    h, _w = model.encoder.preprocessing.image_size
    vision_config = CLIPVisionConfig(
        hidden_size=vit.embed_dim,
        intermediate_size=block.mlp.fc1.out_features,
        num_hidden_layers=len(vit.blocks),
        num_attention_heads=block.attn.num_heads,
        image_size=h,
        patch_size=vit.patch_embed.patch_size[0],
        hidden_act="quick_gelu" if "quick" in act else "gelu",
        layer_norm_eps=vit.norm_pre.eps,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=model.image_token_id,
        vision_feature_layer=enc_cfg.feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        multimodal_projector_bias=bridge.linear_1.bias is not None,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    llava: Any = LlavaForConditionalGeneration(config)
    tower = llava.model.vision_tower
    tower = getattr(tower, "vision_model", tower)  # transformers 4.x nests it, 5.x does not
    tower.load_state_dict(_clip_vision_state(vit))
    llava.model.multi_modal_projector.load_state_dict(model.bridge.state_dict())
    llava.model.language_model.load_state_dict(lm.get_decoder().state_dict())
    llava.lm_head.load_state_dict(lm.get_output_embeddings().state_dict())
    return llava.to(dtype=model.dtype).eval()
