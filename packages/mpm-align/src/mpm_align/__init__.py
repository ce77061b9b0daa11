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

try:
    __version__ = version("mpm-align")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "RETRIEVAL_METHODS",
    "Encoder",
    "IsotropyResult",
    "LayeredEmbeddings",
    "PairedCosine",
    "ParallelCorpus",
    "__version__",
    "bitext_retrieval",
    "isotropy",
    "language_probe_accuracy",
    "linear_cka",
    "paired_cosine",
    "retrieval_accuracy",
    "xsim_error",
]
