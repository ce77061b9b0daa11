"""mpm-vision: vision encoders (timm), bridges into an LLM and a vision-language model over any causal LM.

>>> from mpm_vision import create_encoder, create_bridge, VisionLanguageModel
>>> enc = create_encoder("vit_tiny_patch16_224", image_size=32, patch_size=8, depth=4)   # doctest: +SKIP
>>> enc = create_encoder("efficientnet_lite0", checkpoint="path/to/timm_dir", image_size=64)  # doctest: +SKIP
>>> enc(pixels).shape, enc.pooled(pixels).shape      # [B, N, C] tokens, [B, C] pooled      # doctest: +SKIP
>>> bridge = create_bridge("query", in_dim=enc.feature_dim, out_dim=640, num_queries=16)  # doctest: +SKIP
>>> vlm = VisionLanguageModel(enc, bridge, language_model, tokenizer)                     # doctest: +SKIP
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .bridges import (
    BRIDGES,
    Bridge,
    MLPBridge,
    PerceiverBridge,
    PooledBridge,
    QFormerBridge,
    QueryBridge,
    bridge_from_config,
    create_bridge,
    register_bridge,
)
from .encoders import VisionEncoder, create_encoder, encoder_from_config
from .feature_cache import FeatureCache, ImageView, encoder_fingerprint, image_digest
from .interfaces import (
    IGNORE_INDEX,
    AnswerLogprobs,
    BridgeConfig,
    CausalLanguageModel,
    ChatHistory,
    ChatOutput,
    EncoderConfig,
    ImagePreprocessing,
    Tokenizer,
    VisionBatch,
    VisionGenerationOutput,
    VisionLanguageConfig,
    VisionLanguageOutput,
)
from .llava import export_llava
from .model import VisionLanguageModel
from .processing import ImageProcessor, VisionCollator
from .warmstart import name_embedding_targets, regress_bridge

try:
    __version__ = version("mpm-vision")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "BRIDGES",
    "IGNORE_INDEX",
    "AnswerLogprobs",
    "Bridge",
    "BridgeConfig",
    "CausalLanguageModel",
    "ChatHistory",
    "ChatOutput",
    "EncoderConfig",
    "FeatureCache",
    "ImagePreprocessing",
    "ImageProcessor",
    "ImageView",
    "MLPBridge",
    "PerceiverBridge",
    "PooledBridge",
    "QFormerBridge",
    "QueryBridge",
    "Tokenizer",
    "VisionBatch",
    "VisionCollator",
    "VisionEncoder",
    "VisionGenerationOutput",
    "VisionLanguageConfig",
    "VisionLanguageModel",
    "VisionLanguageOutput",
    "__version__",
    "bridge_from_config",
    "create_bridge",
    "create_encoder",
    "encoder_fingerprint",
    "encoder_from_config",
    "export_llava",
    "image_digest",
    "name_embedding_targets",
    "register_bridge",
    "regress_bridge",
]
