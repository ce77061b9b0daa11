"""mpm-bench: multilingual tasks, metrics, the EmojiCap dataset and leaderboards.

Evaluate any model through three small protocols (``Captioner``, ``Scorer``, ``Painter``) on
EmojiCap (emoji named in 14 languages, drawn in the OpenMoji, Twemoji and Noto styles; named
evaluation sets ``seen-aug``, ``seen-style``, ``unseen``) or any list of :class:`Example`, then merge
the results into Markdown / HTML / PNG leaderboards.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from mpm_bench.augment import (
    Augmentation,
    AugmentConfig,
    augment,
    heldout_seed,
    is_heldout_seed,
    train_seed,
)
from mpm_bench.baselines import OracleBaseline, RandomBaseline
from mpm_bench.emojicap import (
    EVAL_SETS,
    STYLES,
    CorruptShardError,
    EmojiCapConfig,
    EmojiRenderer,
    EmojiStyle,
    EvalSet,
    build_emojicap,
    emojicap_eval_set,
    emojicap_shards,
    iter_emojicap,
    load_emojicap,
)
from mpm_bench.features import ColorHistogramFeatures, LangidIdentifier, PixelFeatures
from mpm_bench.interfaces import (
    CandidateScorer,
    Captioner,
    EmojiCapMeta,
    EmojiCapRecord,
    Example,
    FeatureExtractor,
    LanguageIdentifier,
    Painter,
    Result,
    Scorer,
)
from mpm_bench.langs import EMOJICAP_LANGS, bleu_tokenizer, normalize_lang
from mpm_bench.leaderboard import Leaderboard, load_results, save_results
from mpm_bench.metrics import corpus_bleu, corpus_chrf, frechet_distance, recall_at_k, topk_accuracy
from mpm_bench.tasks import (
    evaluate,
    run_captioning,
    run_classification,
    run_language_fidelity,
    run_retrieval,
    run_text_to_image,
)

try:
    __version__ = version("mpm-bench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "EMOJICAP_LANGS",
    "EVAL_SETS",
    "STYLES",
    "AugmentConfig",
    "Augmentation",
    "CandidateScorer",
    "Captioner",
    "ColorHistogramFeatures",
    "CorruptShardError",
    "EmojiCapConfig",
    "EmojiCapMeta",
    "EmojiCapRecord",
    "EmojiRenderer",
    "EmojiStyle",
    "EvalSet",
    "Example",
    "FeatureExtractor",
    "LangidIdentifier",
    "LanguageIdentifier",
    "Leaderboard",
    "OracleBaseline",
    "Painter",
    "PixelFeatures",
    "RandomBaseline",
    "Result",
    "Scorer",
    "__version__",
    "augment",
    "bleu_tokenizer",
    "build_emojicap",
    "corpus_bleu",
    "corpus_chrf",
    "emojicap_eval_set",
    "emojicap_shards",
    "evaluate",
    "frechet_distance",
    "heldout_seed",
    "is_heldout_seed",
    "iter_emojicap",
    "load_emojicap",
    "load_results",
    "normalize_lang",
    "recall_at_k",
    "run_captioning",
    "run_classification",
    "run_language_fidelity",
    "run_retrieval",
    "run_text_to_image",
    "save_results",
    "topk_accuracy",
    "train_seed",
]
