"""mpm-align: per-layer cross-lingual alignment metrics for any encoder or LLM.

Does a model put "红苹果" near "red apple"? At which layer, with which prompt template and pooling?
mpm-align answers with metrics on real parallel phrases (CLDR, emoji names, pycountry, your files):

>>> from mpm_align import TransformersEncoder, load_corpora, align_report
>>> enc = TransformersEncoder.from_pretrained("path/to/model", pooling="last",
...                                           template='"{text}" in English is "')
>>> corpora = load_corpora("cldr:territories,emoji", ["en", "zh", "de"])
>>> report = align_report(enc, corpora)          # every layer
>>> report.best_layers()["en-zh"]["retrieval_csls"]
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from mpm_align.data import (
    SOURCES,
    corpus_stats,
    load_cldr,
    load_corpora,
    load_emoji,
    load_line_files,
    load_pair_file,
    load_pycountry,
    merge_corpora,
    validate_language,
)
from mpm_align.encoders import POOLINGS, TEMPLATES, SentenceTransformerEncoder, TransformersEncoder
from mpm_align.interfaces import (
    Encoder,
    IsotropyResult,
    LayeredEmbeddings,
    PairedCosine,
    ParallelCorpus,
)
from mpm_align.metrics import (
    RETRIEVAL_METHODS,
    bitext_retrieval,
    isotropy,
    language_probe_accuracy,
    linear_cka,
    paired_cosine,
    retrieval_accuracy,
    xsim_error,
)
from mpm_align.report import AlignmentReport, AlignmentRow, align_report

try:
    __version__ = version("mpm-align")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "POOLINGS",
    "RETRIEVAL_METHODS",
    "SOURCES",
    "TEMPLATES",
    "AlignmentReport",
    "AlignmentRow",
    "Encoder",
    "IsotropyResult",
    "LayeredEmbeddings",
    "PairedCosine",
    "ParallelCorpus",
    "SentenceTransformerEncoder",
    "TransformersEncoder",
    "__version__",
    "align_report",
    "bitext_retrieval",
    "corpus_stats",
    "isotropy",
    "language_probe_accuracy",
    "linear_cka",
    "load_cldr",
    "load_corpora",
    "load_emoji",
    "load_line_files",
    "load_pair_file",
    "load_pycountry",
    "merge_corpora",
    "paired_cosine",
    "retrieval_accuracy",
    "validate_language",
    "xsim_error",
]
